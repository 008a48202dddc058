namespace TaskiqPg;

/// <summary>
/// A task's retry policy, given at registration (<see cref="TaskRegistry.Add"/>): it wins over the kick's
/// <see cref="KickOptions.MaxAttempts"/> and the broker's retry delays for every run of that task on this worker.
/// Unset values keep the kick's and the broker's.
/// </summary>
public sealed record TaskRetryPolicy
{
    /// <summary>Attempts in all, the first run included (at least 1).</summary>
    public int? MaxAttempts { get; init; }

    /// <summary>Delay after the first failed attempt; doubles per attempt, with 50–100 % jitter (positive).</summary>
    public TimeSpan? BaseDelay { get; init; }

    /// <summary>Upper bound of the delay (positive).</summary>
    public TimeSpan? MaxDelay { get; init; }

    internal void Validate(string taskName)
    {
        if (MaxAttempts is < 1)
        {
            throw new ArgumentException($"The retry policy of task '{taskName}' must allow at least 1 attempt.");
        }

        if (BaseDelay <= TimeSpan.Zero || MaxDelay <= TimeSpan.Zero)
        {
            throw new ArgumentException($"The retry delays of task '{taskName}' must be positive.");
        }
    }
}

/// <summary>Thrown by a handler to fail its task for good: no retry, the task is discarded with this message.</summary>
/// <param name="message">Why the task cannot succeed; stored as its error.</param>
/// <param name="inner">The error behind it, if any.</param>
public class PermanentTaskFailureException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// Thrown by <see cref="TaskContext.Snooze"/>: the task goes back to the queue, due after <see cref="Delay"/>, without
/// using an attempt.
/// </summary>
/// <param name="delay">How long until the task is due again.</param>
public sealed class TaskSnoozedException(TimeSpan delay) : Exception($"The task snoozed for {delay}.")
{
    /// <summary>How long until the task is due again.</summary>
    public TimeSpan Delay { get; } = delay;
}
