namespace TaskiqPg;

/// <summary>The task ran and failed (or was dead-lettered); carries the remote error.</summary>
/// <param name="taskId">The failed task's id.</param>
/// <param name="error">The error the task stored (type, message, arguments).</param>
/// <param name="remoteStackTrace">The stack trace stored with it, if any.</param>
public sealed class TaskExecutionException(string taskId, TaskError error, string? remoteStackTrace)
    : Exception($"Task '{taskId}' failed with {error.Type}: {error.Message}")
{
    /// <summary>The task id.</summary>
    public string TaskId { get; } = taskId;

    /// <summary>The remote exception's type name (e.g. <c>InvalidOperationException</c>, <c>UnknownTask</c>).</summary>
    public string RemoteType { get; } = error.Type;

    /// <summary>The remote exception's message.</summary>
    public string RemoteMessage { get; } = error.Message;

    /// <summary>The remote stack trace, when stored.</summary>
    public string? RemoteStackTrace { get; } = remoteStackTrace;
}
