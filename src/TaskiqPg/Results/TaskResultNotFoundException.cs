namespace TaskiqPg;

/// <summary>No result is stored for the task (not finished yet, never kicked, expired, or already read with KeepResults off).</summary>
/// <param name="taskId">The task id looked up.</param>
public sealed class TaskResultNotFoundException(string taskId)
    : KeyNotFoundException($"No result is stored for task '{taskId}': it has not finished, expired, or was already read with KeepResults = false.")
{
    /// <summary>The task id.</summary>
    public string TaskId { get; } = taskId;
}
