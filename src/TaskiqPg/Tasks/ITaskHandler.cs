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
    /// <param name="args">The arguments, read from the message's first positional argument.</param>
    /// <param name="context">The running task: its id, message, attempt, labels, DI scope and progress.</param>
    /// <param name="cancellationToken">Fires on timeout, lost lease, a cancel request or hard shutdown.</param>
    /// <returns>The task's result, stored as its return value.</returns>
    ValueTask<TResult> HandleAsync(TArgs args, TaskContext context, CancellationToken cancellationToken);
}
