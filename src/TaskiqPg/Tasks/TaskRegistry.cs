using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;

namespace TaskiqPg;

/// <summary>The tasks a worker can run, by name.</summary>
public sealed class TaskRegistry
{
    private readonly Dictionary<string, TaskDescriptor> _tasks = new(StringComparer.Ordinal);

    /// <summary>Creates an empty registry.</summary>
    /// <param name="serializerOptions">JSON settings for arguments and results; default <see cref="TaskiqSerializer.DefaultOptions"/>.</param>
    public TaskRegistry(JsonSerializerOptions? serializerOptions = null)
        => SerializerOptions = serializerOptions ?? TaskiqSerializer.DefaultOptions;

    /// <summary>JSON settings for arguments and results.</summary>
    public JsonSerializerOptions SerializerOptions { get; }

    /// <summary>The registered tasks.</summary>
    public IReadOnlyCollection<TaskDescriptor> Tasks => _tasks.Values;

    /// <summary>
    /// Registers a delegate, e.g. <c>Add("add", (int a, int b) => a + b)</c>. Its parameters bind to the positional
    /// arguments in order, then keyword arguments by name; <see cref="CancellationToken"/>, <see cref="TaskContext"/>
    /// and DI services are injected.
    /// </summary>
    /// <exception cref="ArgumentException">The name is empty or already registered.</exception>
    /// <param name="name">Task name.</param>
    /// <param name="handler">The delegate.</param>
    /// <param name="timeout">Handler timeout (the task's <c>timeout</c> label wins).</param>
    /// <param name="retry">Retry policy of this task on this worker (wins over the kick's and the broker's).</param>
    /// <returns>This registry.</returns>
    [System.Diagnostics.CodeAnalysis.RequiresUnreferencedCode("A delegate task's parameters are read with reflection-based JSON by their types; trimming may remove what they need. Use AddHandler with a source-generated JsonSerializerContext in TaskiqPgOptions.SerializerOptions when trimming.")]
    [System.Diagnostics.CodeAnalysis.RequiresDynamicCode("A delegate task's call is compiled at registration.")]
    public TaskRegistry Add(string name, Delegate handler, TimeSpan? timeout = null, TaskRetryPolicy? retry = null)
    {
        ArgumentNullException.ThrowIfNull(handler);
        var invoker = new DelegateInvoker(name, handler);
        return Register(new TaskDescriptor(name, timeout, invoker.InvokeAsync, retry));
    }

    /// <summary>Registers a typed handler, resolved from the task's DI scope (or constructed) for each run.</summary>
    /// <param name="name">Task name; default from <see cref="TaskNameAttribute"/> or the type's full name.</param>
    /// <param name="timeout">Handler timeout.</param>
    /// <param name="retry">Retry policy of this task on this worker (wins over the kick's and the broker's).</param>
    /// <typeparam name="THandler">The handler type.</typeparam>
    /// <typeparam name="TArgs">The argument type, read from the message's first positional argument.</typeparam>
    /// <typeparam name="TResult">The result type, stored as the task's return value.</typeparam>
    /// <returns>This registry.</returns>
    /// <exception cref="ArgumentException">The name is empty or already registered.</exception>
    public TaskRegistry AddHandler<THandler, TArgs, TResult>(string? name = null, TimeSpan? timeout = null, TaskRetryPolicy? retry = null)
        where THandler : class, ITaskHandler<TArgs, TResult>
    {
        var taskName = name ?? TaskNameAttribute.Of<THandler>();
        return Register(new TaskDescriptor(taskName, timeout, async (context, cancellationToken) =>
        {
            var args = ReadArgs<TArgs>(taskName, context);
            var handler = ActivatorUtilities.GetServiceOrCreateInstance<THandler>(context.Services);
            var result = await handler.HandleAsync(args, context, cancellationToken);
            return (result, typeof(TResult));
        }, retry));
    }

    /// <summary>Finds a task by name.</summary>
    /// <param name="name">The task name.</param>
    /// <param name="descriptor">The task, when found.</param>
    /// <returns>True when a task of that name is registered.</returns>
    public bool TryGet(string name, out TaskDescriptor descriptor) => _tasks.TryGetValue(name, out descriptor!);

    private TaskRegistry Register(TaskDescriptor descriptor)
    {
        ArgumentException.ThrowIfNullOrEmpty(descriptor.Name);
        if (!_tasks.TryAdd(descriptor.Name, descriptor))
        {
            throw new ArgumentException($"A task named '{descriptor.Name}' is already registered.", nameof(descriptor));
        }

        return this;
    }

    private static TArgs ReadArgs<TArgs>(string taskName, TaskContext context)
    {
        var message = context.Message;
        try
        {
            if (message.Args.Count > 0)
            {
                return message.Args[0].Deserialize<TArgs>(context.SerializerOptions)!;
            }

            // A producer that sent keyword arguments: read them as the argument object's properties.
            return JsonSerializer.SerializeToElement(message.Kwargs, context.SerializerOptions).Deserialize<TArgs>(context.SerializerOptions)!;
        }
        catch (Exception ex) when (ex is JsonException or NotSupportedException)
        {
            throw new TaskArgumentException($"Task '{taskName}': the arguments cannot be read as {typeof(TArgs).Name}: {ex.Message}", ex);
        }
    }
}
