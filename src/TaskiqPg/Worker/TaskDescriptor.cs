namespace TaskiqPg;

/// <summary>A registered task: its name, optional timeout and how to run it.</summary>
public sealed class TaskDescriptor
{
    internal TaskDescriptor(string name, TimeSpan? timeout, Func<TaskContext, CancellationToken, ValueTask<(object? Value, Type Type)>> invoke)
    {
        Name = name;
        Timeout = timeout;
        Invoke = invoke;
    }

    /// <summary>The stable task name.</summary>
    public string Name { get; }

    /// <summary>Handler timeout for this task (the task's <c>timeout</c> label wins).</summary>
    public TimeSpan? Timeout { get; }

    internal Func<TaskContext, CancellationToken, ValueTask<(object? Value, Type Type)>> Invoke { get; }
}
