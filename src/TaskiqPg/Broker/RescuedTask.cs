namespace TaskiqPg;

/// <summary>Outcome of rescuing one task whose lease expired (or whose worker stopped heartbeating).</summary>
/// <param name="TaskId">The task id.</param>
/// <param name="TaskName">The task name.</param>
/// <param name="DeadLettered">True when its attempts were exhausted.</param>
internal sealed record RescuedTask(string TaskId, string TaskName, bool DeadLettered)
{
    /// <summary>True when a cancel had been requested: the task ends cancelled instead of running again.</summary>
    public bool Cancelled { get; init; }
}
