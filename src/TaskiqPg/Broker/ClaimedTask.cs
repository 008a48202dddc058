namespace TaskiqPg;

/// <summary>A task claimed by a worker under a lease.</summary>
internal sealed record ClaimedTask
{
    /// <summary>Row id in the messages table.</summary>
    public required long Id { get; init; }

    /// <summary>The task id.</summary>
    public required string TaskId { get; init; }

    /// <summary>The queue the task was claimed from.</summary>
    public required string Queue { get; init; }

    /// <summary>The task name column (readable even when the message body is malformed).</summary>
    public required string TaskName { get; init; }

    /// <summary>The message body as stored (taskiq JSON).</summary>
    public required string Message { get; init; }

    /// <summary>This attempt's number, 1 for the first run.</summary>
    public required int Attempt { get; init; }

    /// <summary>Attempts the task may use.</summary>
    public required int MaxAttempts { get; init; }

    /// <summary>Priority of the task.</summary>
    public required int Priority { get; init; }

    /// <summary>When the task became due.</summary>
    public required DateTimeOffset RunAt { get; init; }

    /// <summary>When the task was kicked.</summary>
    public required DateTimeOffset CreatedAt { get; init; }

    /// <summary>When it was claimed (database clock).</summary>
    public required DateTimeOffset ClaimedAt { get; init; }

    /// <summary>This claim's number: 1 for the row's first claim, one more for each claim after it (released, rescued or retried).</summary>
    public required int Claim { get; init; }

    /// <summary>The lease identity used to renew, ack, fail or release this claim.</summary>
    public LeaseRef Lease => new(Id, Claim);
}
