namespace TaskiqPg;

/// <summary>A task claimed by a worker under a lease.</summary>
public sealed record ClaimedTask
{
    /// <summary>Row id in the messages table.</summary>
    public required long Id { get; init; }

    /// <summary>The task id.</summary>
    public required string TaskId { get; init; }

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

    /// <summary>The lease identity used to renew, ack, fail or release this claim.</summary>
    public LeaseRef Lease => new(Id, Attempt);
}

/// <summary>Identifies one claim of a task: the row and the attempt number. A later claim of the same row has another attempt.</summary>
public readonly record struct LeaseRef(long Id, int Attempt);

/// <summary>A failed attempt to report.</summary>
/// <param name="Lease">The claim.</param>
/// <param name="Error">Reason kept in <c>last_error</c>.</param>
/// <param name="Retry">False dead-letters at once (poison input); true retries while attempts remain.</param>
public readonly record struct TaskFailure(LeaseRef Lease, string Error, bool Retry);

/// <summary>The stored state of a task that is still in the messages table.</summary>
/// <param name="Status">pending, processing or dead.</param>
/// <param name="Attempts">Attempts used so far.</param>
/// <param name="MaxAttempts">Attempts allowed.</param>
/// <param name="RunAt">When it is or was due.</param>
/// <param name="LastError">The last failure reason.</param>
/// <param name="LockedBy">The worker holding its lease.</param>
public sealed record TaskState(string Status, int Attempts, int MaxAttempts, DateTimeOffset RunAt, string? LastError, string? LockedBy);

/// <summary>Outcome of rescuing one task whose lease expired.</summary>
/// <param name="TaskId">The task id.</param>
/// <param name="TaskName">The task name.</param>
/// <param name="DeadLettered">True when its attempts were exhausted.</param>
public sealed record RescuedTask(string TaskId, string TaskName, bool DeadLettered);
