namespace TaskiqPg;

/// <summary>A queue's statistics (see <see cref="PostgresBroker.GetQueueStatisticsAsync"/>), cheap at any table size.</summary>
/// <param name="Queue">The queue.</param>
/// <param name="Counts">Tasks per state: exact up to <see cref="PostgresBroker.StatisticsExactUpTo"/> per state, the planner's estimate past it.</param>
/// <param name="Estimated">The states whose count is an estimate.</param>
/// <param name="OldestAvailableAge">How long the oldest available task has been due; null when none is available.</param>
/// <param name="PausedAt">When the queue was paused; null while it runs.</param>
public sealed record QueueStatistics(string Queue, IReadOnlyDictionary<TaskState, long> Counts, IReadOnlySet<TaskState> Estimated,
    TimeSpan? OldestAvailableAge, DateTimeOffset? PausedAt)
{
    /// <summary>
    /// Tasks that ended in the last minute, per finished state (<see cref="TaskState.Completed"/>, <see cref="TaskState.Cancelled"/>,
    /// <see cref="TaskState.Discarded"/>), counted up to <see cref="PostgresBroker.StatisticsExactUpTo"/> each on the finished
    /// index. Rows deleted at their end (<see cref="PostgresBrokerOptions.CompletedRetention"/> = 0) are not counted.
    /// </summary>
    public IReadOnlyDictionary<TaskState, long> FinishedLastMinute { get; init; } = new Dictionary<TaskState, long>();
}
