namespace TaskiqPg;

/// <summary>A handler ran longer than its timeout; its cancellation token was fired and the attempt counts as failed.</summary>
/// <param name="taskName">The task's name.</param>
/// <param name="timeout">The timeout it exceeded.</param>
public sealed class TaskTimeoutException(string taskName, TimeSpan timeout)
    : TimeoutException($"Task '{taskName}' exceeded its timeout of {timeout.TotalSeconds:0.###} s.");
