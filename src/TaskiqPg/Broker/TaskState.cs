namespace TaskiqPg;

/// <summary>
/// The stage a task is in. Stored in the messages table's <c>status</c> column (see <see cref="TaskStates"/> for the
/// stored values). A task moves <see cref="Scheduled"/> → <see cref="Available"/> → <see cref="Running"/> →
/// <see cref="Completed"/>, with <see cref="Retryable"/> between failed attempts and <see cref="Cancelled"/> or
/// <see cref="Discarded"/> as the other ends.
/// </summary>
public enum TaskState
{
    /// <summary>Due now: waiting for a worker to claim it.</summary>
    Available,

    /// <summary>Due later (a delay or a run time in the future); it becomes <see cref="Available"/> when due.</summary>
    Scheduled,

    /// <summary>An attempt failed and the task waits for its backoff; it becomes <see cref="Available"/> when due.</summary>
    Retryable,

    /// <summary>Claimed by a worker under a lease.</summary>
    Running,

    /// <summary>Finished successfully (kept for <see cref="PostgresBrokerOptions.CompletedRetention"/>).</summary>
    Completed,

    /// <summary>Cancelled before it finished (kept for <see cref="PostgresBrokerOptions.CancelledRetention"/>).</summary>
    Cancelled,

    /// <summary>Dead-lettered: attempts used up, a permanent failure or poison input; the reason is kept
    /// (for <see cref="PostgresBrokerOptions.DiscardedRetention"/>).</summary>
    Discarded,
}

/// <summary>The values of the messages table's <c>status</c> column, one per <see cref="TaskState"/>.</summary>
/// <remarks>
/// <c>pending</c> and <c>processing</c> are taskiq-postgres's own values for a due and a claimed task, kept so a table
/// stays readable by (and shareable with) Python taskiq workers.
/// </remarks>
public static class TaskStates
{
    /// <summary>Stored value of <see cref="TaskState.Available"/>.</summary>
    public const string Available = "pending";

    /// <summary>Stored value of <see cref="TaskState.Scheduled"/>.</summary>
    public const string Scheduled = "scheduled";

    /// <summary>Stored value of <see cref="TaskState.Retryable"/>.</summary>
    public const string Retryable = "retryable";

    /// <summary>Stored value of <see cref="TaskState.Running"/>.</summary>
    public const string Running = "processing";

    /// <summary>Stored value of <see cref="TaskState.Completed"/>.</summary>
    public const string Completed = "completed";

    /// <summary>Stored value of <see cref="TaskState.Cancelled"/>.</summary>
    public const string Cancelled = "cancelled";

    /// <summary>Stored value of <see cref="TaskState.Discarded"/>.</summary>
    public const string Discarded = "discarded";

    /// <summary>Every state, in lifecycle order.</summary>
    public static IReadOnlyList<TaskState> All { get; } = Enum.GetValues<TaskState>();

    /// <summary>The stored value of <paramref name="state"/>.</summary>
    /// <param name="state">The state.</param>
    /// <returns>The text stored in the <c>state</c> column.</returns>
    public static string ToStored(TaskState state) => state switch
    {
        TaskState.Available => Available,
        TaskState.Scheduled => Scheduled,
        TaskState.Retryable => Retryable,
        TaskState.Running => Running,
        TaskState.Completed => Completed,
        TaskState.Cancelled => Cancelled,
        TaskState.Discarded => Discarded,
        _ => throw new ArgumentOutOfRangeException(nameof(state), state, "Not a task state."),
    };

    /// <summary>The state a stored value stands for.</summary>
    /// <exception cref="ArgumentException">The value is not one of ours.</exception>
    /// <param name="value">The text of the <c>state</c> column.</param>
    /// <returns>The state.</returns>
    public static TaskState FromStored(string value) => value switch
    {
        Available => TaskState.Available,
        Scheduled => TaskState.Scheduled,
        Retryable => TaskState.Retryable,
        Running => TaskState.Running,
        Completed => TaskState.Completed,
        Cancelled => TaskState.Cancelled,
        Discarded => TaskState.Discarded,
        _ => throw new ArgumentException($"'{value}' is not a stored task state.", nameof(value)),
    };

    /// <summary>Whether a task in <paramref name="state"/> has ended (completed, cancelled or discarded).</summary>
    /// <param name="state">The state.</param>
    /// <returns>True for completed, cancelled and discarded.</returns>
    public static bool IsFinished(TaskState state) => state is TaskState.Completed or TaskState.Cancelled or TaskState.Discarded;
}
