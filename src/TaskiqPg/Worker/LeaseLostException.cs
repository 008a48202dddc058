namespace TaskiqPg;

/// <summary>
/// The task's lease is no longer this worker's: it expired and the task was rescued (it may already run elsewhere). Work
/// done in a transaction for it must roll back.
/// </summary>
/// <param name="taskId">The task whose lease was lost.</param>
public sealed class LeaseLostException(string taskId)
    : Exception($"The lease of task '{taskId}' is no longer this worker's: it was rescued and may run elsewhere. Roll back.")
{
    /// <summary>The task id.</summary>
    public string TaskId { get; } = taskId;
}
