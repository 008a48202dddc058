namespace TaskiqPg;

/// <summary>A failed attempt to report.</summary>
/// <param name="Lease">The claim.</param>
/// <param name="Error">Reason kept in <c>last_error</c>.</param>
/// <param name="Retry">False dead-letters at once (poison input); true retries while attempts remain.</param>
internal readonly record struct TaskFailure(LeaseRef Lease, string Error, bool Retry)
{
    /// <summary>Not a failure: the task goes back, due after this delay, its attempt not counted (<see cref="TaskContext.Snooze"/>).</summary>
    public TimeSpan? SnoozeFor { get; init; }

    /// <summary>Attempts in all for this task from now on (a registration's <see cref="TaskRetryPolicy"/>); null keeps the row's.</summary>
    public int? MaxAttempts { get; init; }

    /// <summary>Retry base delay for this failure; null: the broker's.</summary>
    public TimeSpan? RetryBaseDelay { get; init; }

    /// <summary>Retry delay cap for this failure; null: the broker's.</summary>
    public TimeSpan? RetryMaxDelay { get; init; }
}
