namespace TaskiqPg;

/// <summary>The task ran and failed (or was dead-lettered); carries the remote error.</summary>
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
