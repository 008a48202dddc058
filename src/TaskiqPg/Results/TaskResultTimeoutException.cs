namespace TaskiqPg;

/// <summary>The task did not store a result within the wait's timeout.</summary>
/// <param name="taskId">The task id waited for.</param>
/// <param name="timeout">How long the wait lasted.</param>
public sealed class TaskResultTimeoutException(string taskId, TimeSpan timeout)
    : TimeoutException($"Task '{taskId}' stored no result within {timeout.TotalSeconds:0.###} s.")
{
    /// <summary>The task id.</summary>
    public string TaskId { get; } = taskId;

    /// <summary>How long was waited.</summary>
    public TimeSpan Timeout { get; } = timeout;
}
