namespace TaskiqPg;

/// <summary>A task's row in the messages table: what was kicked and where it stands.</summary>
public sealed record TaskRecord
{
    /// <summary>Row id (unique per kick; a task id kicked twice has two rows).</summary>
    public required long Id { get; init; }

    /// <summary>The task id (taskiq's <c>task_id</c>).</summary>
    public required string TaskId { get; init; }

    /// <summary>The task name.</summary>
    public required string TaskName { get; init; }

    /// <summary>The queue it was kicked to.</summary>
    public required string Queue { get; init; }

    /// <summary>Where the task stands.</summary>
    public required TaskState State { get; init; }

    /// <summary>Higher runs first among due tasks.</summary>
    public int Priority { get; init; }

    /// <summary>Attempts used so far (a running task counts its current attempt).</summary>
    public int Attempts { get; init; }

    /// <summary>Attempts allowed, the first run included.</summary>
    public int MaxAttempts { get; init; }

    /// <summary>When it is (or was) due.</summary>
    public DateTimeOffset RunAt { get; init; }

    /// <summary>When it was kicked (database clock).</summary>
    public DateTimeOffset CreatedAt { get; init; }

    /// <summary>When it completed, was cancelled or discarded; null before.</summary>
    public DateTimeOffset? FinishedAt { get; init; }

    /// <summary>The reason of the last failure (or of the discard or cancel).</summary>
    public string? LastError { get; init; }

    /// <summary>The worker that holds (or last held) its lease.</summary>
    public string? Worker { get; init; }

    /// <summary>The stored message: taskiq's JSON (task_id, task_name, labels, args, kwargs).</summary>
    public required string MessageJson { get; init; }

    /// <summary>The message's labels as stored for queries.</summary>
    public IReadOnlyDictionary<string, string> Labels { get; init; } = new Dictionary<string, string>();

    /// <summary>Its ended attempts, oldest first (at most the last 50): worker, start, end, outcome and error of each.</summary>
    public IReadOnlyList<TaskAttempt> History { get; init; } = [];

    /// <summary>
    /// Its stored result (an error result for a failed or cancelled task), when read through
    /// <see cref="TaskiqClient.GetTaskAsync"/> with a result backend; null from <see cref="PostgresBroker.GetTaskAsync"/>
    /// (results may live in another database) or when none is stored.
    /// </summary>
    public TaskResult? Result { get; init; }

    /// <summary>The last progress its handler reported (as JSON), read like <see cref="Result"/>; null when none.</summary>
    public System.Text.Json.JsonElement? Progress { get; init; }

    /// <summary>Whether the task has ended (<see cref="TaskState.Completed"/>, <see cref="TaskState.Cancelled"/> or <see cref="TaskState.Discarded"/>).</summary>
    public bool IsFinished => TaskStates.IsFinished(State);
}

/// <summary>One ended attempt of a task.</summary>
/// <param name="Attempt">The attempt number (a snoozed or lost run that did not count repeats the number of the next).</param>
/// <param name="Worker">The worker that ran it.</param>
/// <param name="StartedAt">When it was claimed.</param>
/// <param name="EndedAt">When its outcome was written (or its lease was found lost).</param>
/// <param name="Outcome"><c>completed</c>, <c>failed</c>, <c>snoozed</c>, <c>cancelled</c> or <c>lost</c> (rescued: its worker died or stopped renewing).</param>
/// <param name="Error">The failure's reason (at most 1,000 characters).</param>
public sealed record TaskAttempt(int Attempt, string? Worker, DateTimeOffset? StartedAt, DateTimeOffset EndedAt, string Outcome, string? Error);
