using System.Text.Json;
using Npgsql;

namespace TaskiqPg;

/// <summary>The producer API: kick tasks by name or by handler type and get a handle to their results.</summary>
public sealed class TaskiqClient
{
    /// <summary>Creates a client. Without a result backend, handles cannot read results.</summary>
    public TaskiqClient(PostgresBroker broker, PostgresResultBackend? resultBackend = null, JsonSerializerOptions? serializerOptions = null)
    {
        Broker = broker ?? throw new ArgumentNullException(nameof(broker));
        ResultBackend = resultBackend;
        SerializerOptions = serializerOptions ?? TaskiqSerializer.DefaultOptions;
    }

    /// <summary>The broker tasks are kicked to.</summary>
    public PostgresBroker Broker { get; }

    /// <summary>The result backend handles read from.</summary>
    public PostgresResultBackend? ResultBackend { get; }

    /// <summary>JSON settings for arguments and results.</summary>
    public JsonSerializerOptions SerializerOptions { get; }

    /// <summary>Kicks a task by name.</summary>
    public async Task<TaskHandle<TResult>> KickAsync<TResult>(string taskName, IEnumerable<object?>? args = null,
        IReadOnlyDictionary<string, object?>? kwargs = null, KickOptions? options = null, CancellationToken cancellationToken = default)
    {
        var message = TaskMessage.Create(taskName, args, kwargs, SerializerOptions);
        var kicked = await Broker.KickAsync(message, options, cancellationToken);
        return new TaskHandle<TResult>(kicked.TaskId, ResultBackend, SerializerOptions) { IsDuplicate = kicked.Duplicate };
    }

    /// <summary>Kicks a task by name whose result is not needed as a value.</summary>
    public async Task<TaskHandle> KickAsync(string taskName, IEnumerable<object?>? args = null,
        IReadOnlyDictionary<string, object?>? kwargs = null, KickOptions? options = null, CancellationToken cancellationToken = default)
        => await KickAsync<JsonElement>(taskName, args, kwargs, options, cancellationToken);

    /// <summary>Kicks the task handled by <typeparamref name="THandler"/>; the compiler checks argument and result types.</summary>
    public Task<TaskHandle<TResult>> KickAsync<THandler, TArgs, TResult>(TArgs args, KickOptions? options = null,
        CancellationToken cancellationToken = default)
        where THandler : ITaskHandler<TArgs, TResult>
        => KickAsync<TResult>(TaskNameAttribute.Of<THandler>(), [args], null, options, cancellationToken);

    /// <summary>
    /// Kicks a task by name inside the caller's transaction: it becomes visible when the caller commits and vanishes
    /// on rollback. The connection must be on the same database as the broker.
    /// </summary>
    public async Task<TaskHandle<TResult>> KickAsync<TResult>(string taskName, NpgsqlConnection connection, NpgsqlTransaction? transaction,
        IEnumerable<object?>? args = null, IReadOnlyDictionary<string, object?>? kwargs = null, KickOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        var message = TaskMessage.Create(taskName, args, kwargs, SerializerOptions);
        var kicked = await Broker.KickAsync(message, connection, transaction, options, cancellationToken);
        return new TaskHandle<TResult>(kicked.TaskId, ResultBackend, SerializerOptions) { IsDuplicate = kicked.Duplicate };
    }

    /// <summary>
    /// The task's whole record: its row (state, attempts, history, worker, message with its arguments, labels) and, with
    /// a result backend, its stored <see cref="TaskRecord.Result"/> and last <see cref="TaskRecord.Progress"/>.
    /// </summary>
    /// <returns>The newest row of the task id, or null when there is none (never kicked, or pruned after its retention).</returns>
    /// <exception cref="JsonException">The stored result is not valid taskiq JSON.</exception>
    public async Task<TaskRecord?> GetTaskAsync(string taskId, CancellationToken cancellationToken = default)
    {
        var record = await Broker.GetTaskAsync(taskId, cancellationToken);
        if (record is null || ResultBackend is null)
        {
            return record;
        }

        return record with
        {
            Result = await ResultBackend.TryGetResultAsync(taskId, cancellationToken),
            Progress = await ResultBackend.GetProgressAsync<JsonElement?>(taskId, cancellationToken: cancellationToken),
        };
    }

    /// <summary>
    /// Cancels a task (see <see cref="PostgresBroker.CancelAsync"/>) and, when it was queued, stores its cancelled result,
    /// so its waiters get <see cref="CancelledTaskException"/> at once. A running task's result is stored by its worker.
    /// </summary>
    public async Task<CancelResult> CancelAsync(string taskId, CancellationToken cancellationToken = default)
    {
        var result = await Broker.CancelAsync(taskId, cancellationToken);
        if (result.Outcome == CancelOutcome.Cancelled && ResultBackend is not null)
        {
            await StoreCancelledAsync([taskId], cancellationToken);
        }

        return result;
    }

    /// <summary>
    /// Cancels every matching task (see <see cref="PostgresBroker.CancelManyAsync(TaskFilter?, CancellationToken)"/>) and
    /// stores the cancelled result of each queued one, batch by batch.
    /// </summary>
    public Task<BulkCancelResult> CancelManyAsync(TaskFilter? filter = null, CancellationToken cancellationToken = default)
        => Broker.CancelManyAsync(filter, ResultBackend is null ? null : StoreCancelledAsync, cancellationToken);

    private Task StoreCancelledAsync(IReadOnlyList<string> taskIds, CancellationToken cancellationToken)
    {
        var result = TaskiqWorker.ErrorResult(CancelledTaskException.ErrorType, PostgresBroker.CancelledReason, null, TimeSpan.Zero, null);
        return ResultBackend!.SetResultsAsync(taskIds.Select(id => new KeyValuePair<string, TaskResult>(id, result)).ToArray(), cancellationToken);
    }
}
