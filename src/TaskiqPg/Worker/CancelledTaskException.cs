namespace TaskiqPg;

/// <summary>The task was cancelled (<see cref="PostgresBroker.CancelAsync"/>) before it finished; thrown to its waiters.</summary>
/// <param name="taskId">The cancelled task's id.</param>
/// <param name="reason">The reason stored with the cancel, if any.</param>
public sealed class CancelledTaskException(string taskId, string? reason)
    : Exception($"Task '{taskId}' was cancelled{(string.IsNullOrEmpty(reason) ? "." : ": " + reason)}")
{
    /// <summary>The error type stored in a cancelled task's result (taskiq's <c>error.type</c>).</summary>
    public const string ErrorType = "TaskCancelled";

    /// <summary>The task id.</summary>
    public string TaskId { get; } = taskId;

    /// <summary>The stored reason.</summary>
    public string? Reason { get; } = reason;
}
