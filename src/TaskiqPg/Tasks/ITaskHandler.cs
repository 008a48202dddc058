namespace TaskiqPg;

/// <summary>
/// A typed task handler. Register it with <see cref="TaskRegistry.AddHandler{THandler, TArgs, TResult}"/>; name it with
/// <see cref="TaskNameAttribute"/>. The arguments travel as the message's first positional argument.
/// </summary>
/// <typeparam name="TArgs">The argument type (JSON-serializable).</typeparam>
/// <typeparam name="TResult">The result type (JSON-serializable).</typeparam>
public interface ITaskHandler<in TArgs, TResult>
{
    /// <summary>Runs the task. <paramref name="cancellationToken"/> fires on timeout, lost lease or hard shutdown.</summary>
    ValueTask<TResult> HandleAsync(TArgs args, TaskContext context, CancellationToken cancellationToken);
}
