using System.Text.Json;

namespace TaskiqPg;

/// <summary>A kicked task: its id and access to its result.</summary>
public class TaskHandle
{
    /// <summary>Default wait for <see cref="WaitForResultAsync(TimeSpan?, CancellationToken)"/>: 1 minute.</summary>
    public static readonly TimeSpan DefaultWaitTimeout = TimeSpan.FromMinutes(1);

    private readonly PostgresResultBackend? _results;

    internal TaskHandle(string taskId, PostgresResultBackend? results, JsonSerializerOptions serializerOptions)
    {
        TaskId = taskId;
        _results = results;
        SerializerOptions = serializerOptions;
    }

    /// <summary>The task id.</summary>
    public string TaskId { get; }

    /// <summary>True when a unique kick (<see cref="KickOptions.Unique"/>) found a task with the same key: this handle is that task's.</summary>
    public bool IsDuplicate { get; init; }

    /// <summary>JSON settings for the result.</summary>
    protected JsonSerializerOptions SerializerOptions { get; }

    /// <summary>True when a result is stored.</summary>
    /// <param name="cancellationToken">Cancels the read.</param>
    /// <returns>Whether the task's result (success or failure) is stored.</returns>
    /// <exception cref="InvalidOperationException">The client that kicked it has no result backend.</exception>
    public Task<bool> IsReadyAsync(CancellationToken cancellationToken = default) => Results.IsResultReadyAsync(TaskId, cancellationToken);

    /// <summary>Waits for the stored result, success or failure (see <see cref="PostgresResultBackend.WaitForResultAsync"/>).</summary>
    /// <param name="timeout">How long to wait; null: <see cref="DefaultWaitTimeout"/>.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>The stored result as taskiq writes it (<see cref="TaskResult.IsError"/> tells a failure).</returns>
    /// <exception cref="TaskResultTimeoutException">No result within the timeout (default 1 minute).</exception>
    /// <exception cref="InvalidOperationException">The client that kicked it has no result backend.</exception>
    public Task<TaskResult> WaitForRawResultAsync(TimeSpan? timeout = null, CancellationToken cancellationToken = default)
        => Results.WaitForResultAsync(TaskId, timeout ?? DefaultWaitTimeout, cancellationToken);

    /// <summary>Waits for the task and throws <see cref="TaskExecutionException"/> if it failed, <see cref="CancelledTaskException"/> if it was cancelled.</summary>
    /// <param name="timeout">How long to wait; null: <see cref="DefaultWaitTimeout"/>.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>Completes when the task succeeded.</returns>
    /// <exception cref="TaskExecutionException">The task failed; carries the remote error.</exception>
    /// <exception cref="CancelledTaskException">The task was cancelled.</exception>
    /// <exception cref="TaskResultTimeoutException">No result within the timeout (default 1 minute).</exception>
    public async Task WaitForResultAsync(TimeSpan? timeout = null, CancellationToken cancellationToken = default)
        => ThrowIfError(await WaitForRawResultAsync(timeout, cancellationToken));

    /// <summary>Throws <see cref="TaskExecutionException"/> when <paramref name="result"/> is a failure, <see cref="CancelledTaskException"/> when the task was cancelled.</summary>
    protected TaskResult ThrowIfError(TaskResult result)
        => !result.IsError ? result
            : result.Error?.Type == CancelledTaskException.ErrorType ? throw new CancelledTaskException(TaskId, result.Error.Message)
            : throw new TaskExecutionException(TaskId, result.Error ?? new TaskError("Unknown", "no error details"), result.StackTrace);

    private PostgresResultBackend Results
        => _results ?? throw new InvalidOperationException("This client has no result backend; pass one to TaskiqClient to read results.");
}

/// <summary>A kicked task whose result is a <typeparamref name="TResult"/>.</summary>
public sealed class TaskHandle<TResult> : TaskHandle
{
    internal TaskHandle(string taskId, PostgresResultBackend? results, JsonSerializerOptions serializerOptions)
        : base(taskId, results, serializerOptions)
    {
    }

    /// <summary>Waits for the task and returns its result.</summary>
    /// <param name="timeout">How long to wait; null: <see cref="TaskHandle.DefaultWaitTimeout"/>.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>The task's return value, read as <typeparamref name="TResult"/>.</returns>
    /// <exception cref="TaskExecutionException">The task failed; carries the remote error.</exception>
    /// <exception cref="CancelledTaskException">The task was cancelled.</exception>
    /// <exception cref="TaskResultTimeoutException">No result within the timeout (default 1 minute).</exception>
    public new async Task<TResult> WaitForResultAsync(TimeSpan? timeout = null, CancellationToken cancellationToken = default)
        => ThrowIfError(await WaitForRawResultAsync(timeout, cancellationToken)).GetReturnValue<TResult>(SerializerOptions)!;
}
