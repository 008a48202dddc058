namespace TaskiqPg;

/// <summary>Which way a listing runs.</summary>
public enum TaskOrder
{
    /// <summary>Oldest first: by due time (available: the order workers claim in, priority first), or by end time.</summary>
    Oldest,

    /// <summary>Newest first: the reverse.</summary>
    Newest,
}

/// <summary>
/// One page of <see cref="PostgresBroker.ListTasksAsync"/>: the tasks of one queue in one state, in the order of that
/// state's index, from a cursor. Each state is read on its own partial index, so a page costs the same on a table of
/// ten rows or ten million.
/// </summary>
public sealed record TaskQuery
{
    /// <summary>Most tasks per page.</summary>
    public const int MaxLimit = 1000;

    /// <summary>Most index entries one page reads while filtering by <see cref="TaskName"/>: a rare name returns a short
    /// (even empty) page with a cursor to go on from, never a long scan.</summary>
    public const int MaxScan = 10_000;

    /// <summary>The queue. Default (null): the broker's own.</summary>
    public string? Queue { get; init; }

    /// <summary>The state listed.</summary>
    public TaskState State { get; init; } = TaskState.Available;

    /// <summary>Only tasks of this name. Default: any.</summary>
    public string? TaskName { get; init; }

    /// <summary>
    /// Only tasks whose state time is at or after this instant: the due time (<c>run_at</c>) for available, scheduled
    /// and retryable tasks, the kick time for running ones, the end time for finished ones.
    /// </summary>
    public DateTimeOffset? From { get; init; }

    /// <summary>Only tasks whose state time is before this instant (see <see cref="From"/>).</summary>
    public DateTimeOffset? To { get; init; }

    /// <summary>Oldest or newest first. Default: oldest.</summary>
    public TaskOrder Order { get; init; } = TaskOrder.Oldest;

    /// <summary>Tasks per page, 1 to <see cref="MaxLimit"/>. Default 50.</summary>
    public int Limit { get; init; } = 50;

    /// <summary>Where to go on from: the <see cref="TaskPage.NextCursor"/> of the previous page (same query otherwise).</summary>
    public string? Cursor { get; init; }
}

/// <summary>A page of tasks.</summary>
/// <param name="Tasks">The tasks, in the query's order.</param>
/// <param name="NextCursor">Pass as <see cref="TaskQuery.Cursor"/> for the next page; null when there is none.</param>
public sealed record TaskPage(IReadOnlyList<TaskRecord> Tasks, string? NextCursor);
