namespace TaskiqPg;

/// <summary>A handler ran longer than its timeout; its cancellation token was fired and the attempt counts as failed.</summary>
public sealed class TaskTimeoutException(string taskName, TimeSpan timeout)
    : TimeoutException($"Task '{taskName}' exceeded its timeout of {timeout.TotalSeconds:0.###} s.");
