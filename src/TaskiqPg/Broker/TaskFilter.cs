namespace TaskiqPg;

/// <summary>Which tasks a bulk operation (cancel, retry, delete) acts on. Every criterion given must match.</summary>
public sealed record TaskFilter
{
    /// <summary>The queue. Default (null): the broker's own <see cref="PostgresBrokerOptions.Queue"/>.</summary>
    public string? Queue { get; init; }

    /// <summary>Only tasks of this name. Default (null): any.</summary>
    public string? TaskName { get; init; }

    /// <summary>
    /// Only tasks in these states. Default (null): every state the operation applies to (cancel: available, scheduled,
    /// retryable and running).
    /// </summary>
    public IReadOnlyCollection<TaskState>? States { get; init; }
}

/// <summary>What a cancel did.</summary>
public enum CancelOutcome
{
    /// <summary>The task was queued (available, scheduled or retryable) and is cancelled now.</summary>
    Cancelled,

    /// <summary>The task is running: its handler's cancellation token fires on the worker running it, then it ends cancelled
    /// (or completed, when its handler finishes first).</summary>
    Requested,

    /// <summary>The task had already ended (completed, cancelled or discarded): nothing changed.</summary>
    AlreadyFinished,

    /// <summary>No task has this id (never kicked, or its row was pruned).</summary>
    NotFound,
}

/// <summary>The outcome of cancelling one task.</summary>
/// <param name="Outcome">What the cancel did.</param>
/// <param name="PreviousState">The state the task was in; null when not found.</param>
public sealed record CancelResult(CancelOutcome Outcome, TaskState? PreviousState);

/// <summary>The outcome of a bulk cancel.</summary>
/// <param name="Cancelled">Queued tasks cancelled at once.</param>
/// <param name="Requested">Running tasks whose workers were asked to cancel them.</param>
public sealed record BulkCancelResult(long Cancelled, long Requested);
