using Npgsql;

namespace TaskiqPg;

/// <summary>A handler's outcome on its way to the database: written by the completion flusher, in batches.</summary>
internal sealed record Completion(ClaimedTask Task, TaskResult? Result, TaskError? Error, bool Retry, Exception? Exception, int RefusedCount = 0)
{
    public bool Succeeded => Error is null && Snooze is null;

    /// <summary>Set when the handler snoozed: back to the queue after this delay, no attempt used.</summary>
    public TimeSpan? Snooze { get; init; }

    /// <summary>The handler completed the task in its own transaction: a missing row at the ack is that commit, not a lost lease.</summary>
    public bool CompletedInTransaction { get; init; }

    /// <summary>The task's retry policy from its registration, if any.</summary>
    public TaskRetryPolicy? Policy { get; init; }

    /// <summary>No attempt follows this one.</summary>
    public bool IsFinal => Snooze is null && (Succeeded || !Retry || Task.Attempt >= (Policy?.MaxAttempts ?? Task.MaxAttempts));

    /// <summary>This outcome as a failure to write (a snooze is written as one).</summary>
    public TaskFailure ToFailure() => new(Task.Lease, Snooze is null ? FailureText : "snoozed", Retry)
    {
        SnoozeFor = Snooze,
        MaxAttempts = Policy?.MaxAttempts,
        RetryBaseDelay = Policy?.BaseDelay,
        RetryMaxDelay = Policy?.MaxDelay,
    };

    public static Completion Snoozed(ClaimedTask task, TimeSpan delay) => new(task, null, null, true, null) { Snooze = delay };

    /// <summary>The text kept in <c>last_error</c>.</summary>
    public string FailureText => Error is null ? "snoozed" : Error.Type + ": " + Error.Message;

    public static Completion Success(ClaimedTask task, TaskResult result) => new(task, result, null, false, null);

    /// <summary>Cancelled by request: no retry; the row's cancel request makes the settle statement end it cancelled.</summary>
    public static Completion Cancelled(ClaimedTask task, TaskMessage message, TimeSpan elapsed = default)
        => Failure(task, message, CancelledTaskException.ErrorType, PostgresBroker.CancelledReason, null, retry: false, elapsed);

    public static Completion Failure(ClaimedTask task, TaskMessage? message, string type, string reason, string? stackTrace,
        bool retry, TimeSpan elapsed = default, Exception? exception = null)
    {
        var result = TaskiqWorker.ErrorResult(type, reason, stackTrace, elapsed, message?.Labels);
        return new(task, result, result.Error, retry, exception);
    }

    /// <summary>
    /// What to write instead after PostgreSQL refused this outcome: first a dead letter with the database's reason
    /// and an error result, then the dead letter alone; null when both were refused too.
    /// </summary>
    public Completion? Refused(Exception ex)
    {
        var reason = ex is PostgresException pg ? $"{pg.SqlState}: {pg.MessageText}" : $"{ex.GetType().Name}: {ex.Message}";
        var failure = Failure(Task, null, "OutcomeRefused", $"PostgreSQL refused to store this task's outcome ({reason}).", null, retry: false)
            with { RefusedCount = RefusedCount + 1 };
        return RefusedCount switch
        {
            0 => failure,
            1 => failure with { Result = null },
            _ => null,
        };
    }
}
