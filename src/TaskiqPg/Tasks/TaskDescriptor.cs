namespace TaskiqPg;

/// <summary>A registered task: its name, optional timeout and how to run it.</summary>
public sealed class TaskDescriptor
{
    internal TaskDescriptor(string name, TimeSpan? timeout, Func<TaskContext, CancellationToken, ValueTask<(object? Value, Type Type)>> invoke,
        TaskRetryPolicy? retry = null)
    {
        retry?.Validate(name);
        Retry = retry;
        Name = name;
        Timeout = timeout;
        Invoke = invoke;
    }

    /// <summary>The stable task name.</summary>
    public string Name { get; }

    /// <summary>Handler timeout for this task (the task's <c>timeout</c> label wins).</summary>
    public TimeSpan? Timeout { get; }

    /// <summary>Retry policy given at registration; null: the kick's attempts and the broker's delays.</summary>
    public TaskRetryPolicy? Retry { get; }

    internal Func<TaskContext, CancellationToken, ValueTask<(object? Value, Type Type)>> Invoke { get; }
}
