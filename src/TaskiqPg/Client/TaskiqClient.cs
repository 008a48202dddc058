using System.Text.Json;
using Npgsql;

namespace TaskiqPg;

/// <summary>The producer API: kick tasks by name or by handler type and get a handle to their results.</summary>
public sealed class TaskiqClient
{
    /// <summary>Creates a client. Without a result backend, handles cannot read results.</summary>
    /// <param name="broker">The broker tasks are kicked to.</param>
    /// <param name="resultBackend">Where handles read results; null: kick only.</param>
    /// <param name="serializerOptions">JSON settings for arguments and results; null: <see cref="TaskiqSerializer.DefaultOptions"/>.</param>
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
    /// <typeparam name="TResult">The type the task's result is read as.</typeparam>
    /// <param name="taskName">The registered task name the workers run.</param>
    /// <param name="args">Positional arguments, serialized with <see cref="SerializerOptions"/>.</param>
    /// <param name="kwargs">Keyword arguments, bound to the handler's parameters by name.</param>
    /// <param name="options">Delay or run time, priority, attempts, labels, timeout, uniqueness; null: the broker's defaults.</param>
    /// <param name="cancellationToken">Cancels the kick (the task may still have been committed).</param>
    /// <returns>A handle to the task (committed when this returns); for a unique kick that found its duplicate, the
    /// existing task's, with <see cref="TaskHandle.IsDuplicate"/> set.</returns>
    /// <exception cref="InvalidTaskMessageException">A field cannot be stored (a NUL character, a lone surrogate, a task id too long).</exception>
    /// <exception cref="MessageTooLargeException">The message exceeds <see cref="PostgresBrokerOptions.MaxMessageBytes"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range (attempts below 1, a delay or timeout too long).</exception>
    /// <exception cref="Npgsql.NpgsqlException">The database could not be reached or refused the statement.</exception>
    public async Task<TaskHandle<TResult>> KickAsync<TResult>(string taskName, IEnumerable<object?>? args = null,
        IReadOnlyDictionary<string, object?>? kwargs = null, KickOptions? options = null, CancellationToken cancellationToken = default)
    {
        var message = TaskMessage.Create(taskName, args, kwargs, SerializerOptions);
        var kicked = await Broker.KickAsync(message, options, cancellationToken);
        return new TaskHandle<TResult>(kicked.TaskId, ResultBackend, SerializerOptions) { IsDuplicate = kicked.Duplicate };
    }

    /// <summary>Kicks a task by name whose result is not needed as a value.</summary>
    /// <param name="taskName">The registered task name the workers run.</param>
    /// <param name="args">Positional arguments, serialized with <see cref="SerializerOptions"/>.</param>
    /// <param name="kwargs">Keyword arguments, bound to the handler's parameters by name.</param>
    /// <param name="options">Delay or run time, priority, attempts, labels, timeout, uniqueness; null: the broker's defaults.</param>
    /// <param name="cancellationToken">Cancels the kick (the task may still have been committed).</param>
    /// <returns>A handle to the task (see <see cref="KickAsync{TResult}(string, IEnumerable{object}, IReadOnlyDictionary{string, object}, KickOptions, CancellationToken)"/>).</returns>
    /// <exception cref="InvalidTaskMessageException">A field cannot be stored (a NUL character, a lone surrogate, a task id too long).</exception>
    /// <exception cref="MessageTooLargeException">The message exceeds <see cref="PostgresBrokerOptions.MaxMessageBytes"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range (attempts below 1, a delay or timeout too long).</exception>
    /// <exception cref="Npgsql.NpgsqlException">The database could not be reached or refused the statement.</exception>
    public async Task<TaskHandle> KickAsync(string taskName, IEnumerable<object?>? args = null,
        IReadOnlyDictionary<string, object?>? kwargs = null, KickOptions? options = null, CancellationToken cancellationToken = default)
        => await KickAsync<JsonElement>(taskName, args, kwargs, options, cancellationToken);

    /// <summary>Kicks the task handled by <typeparamref name="THandler"/>; the compiler checks argument and result types.</summary>
    /// <typeparam name="THandler">The handler; its task name comes from <see cref="TaskNameAttribute"/> or its full name.</typeparam>
    /// <typeparam name="TArgs">The handler's argument type (sent as the one positional argument).</typeparam>
    /// <typeparam name="TResult">The handler's result type.</typeparam>
    /// <param name="args">The argument.</param>
    /// <param name="options">Delay or run time, priority, attempts, labels, timeout, uniqueness; null: the broker's defaults.</param>
    /// <param name="cancellationToken">Cancels the kick (the task may still have been committed).</param>
    /// <returns>A handle to the task.</returns>
    /// <exception cref="InvalidTaskMessageException">A field cannot be stored (a NUL character, a lone surrogate, a task id too long).</exception>
    /// <exception cref="MessageTooLargeException">The message exceeds <see cref="PostgresBrokerOptions.MaxMessageBytes"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range (attempts below 1, a delay or timeout too long).</exception>
    /// <exception cref="Npgsql.NpgsqlException">The database could not be reached or refused the statement.</exception>
    public Task<TaskHandle<TResult>> KickAsync<THandler, TArgs, TResult>(TArgs args, KickOptions? options = null,
        CancellationToken cancellationToken = default)
        where THandler : ITaskHandler<TArgs, TResult>
        => KickAsync<TResult>(TaskNameAttribute.Of<THandler>(), [args], null, options, cancellationToken);

    /// <summary>
    /// Kicks a task by name inside the caller's transaction: it becomes visible when the caller commits and vanishes
    /// on rollback. The connection must be on the same database as the broker.
    /// </summary>
    /// <typeparam name="TResult">The type the task's result is read as.</typeparam>
    /// <param name="taskName">The registered task name the workers run.</param>
    /// <param name="connection">The caller's open connection; never closed here.</param>
    /// <param name="transaction">The caller's transaction on <paramref name="connection"/>, or null for none.</param>
    /// <param name="args">Positional arguments, serialized with <see cref="SerializerOptions"/>.</param>
    /// <param name="kwargs">Keyword arguments, bound to the handler's parameters by name.</param>
    /// <param name="options">Delay or run time, priority, attempts, labels, timeout, uniqueness; null: the broker's defaults.</param>
    /// <param name="cancellationToken">Cancels the kick.</param>
    /// <returns>A handle to the task, which exists once the caller commits.</returns>
    /// <exception cref="InvalidTaskMessageException">A field cannot be stored (a NUL character, a lone surrogate, a task id too long).</exception>
    /// <exception cref="MessageTooLargeException">The message exceeds <see cref="PostgresBrokerOptions.MaxMessageBytes"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range (attempts below 1, a delay or timeout too long).</exception>
    /// <exception cref="Npgsql.NpgsqlException">The database could not be reached or refused the statement.</exception>
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
    /// <param name="taskId">The task id.</param>
    /// <param name="cancellationToken">Cancels the read.</param>
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
    /// <param name="taskId">The task id (its newest row).</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>What the cancel found: queued (now cancelled), running (a cancel request sent to its worker), finished, or no task.</returns>
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
    /// <param name="filter">Which tasks (queue, task name, unfinished states, times); null: every unfinished task of the broker's queue.</param>
    /// <param name="cancellationToken">Cancels between batches (the batches done stay done).</param>
    /// <returns>How many queued tasks were cancelled and how many running ones were asked to stop.</returns>
    /// <exception cref="ArgumentException">The filter names a finished state (cancel applies to unfinished tasks only).</exception>
    public Task<BulkCancelResult> CancelManyAsync(TaskFilter? filter = null, CancellationToken cancellationToken = default)
        => Broker.CancelManyAsync(filter, ResultBackend is null ? null : StoreCancelledAsync, cancellationToken);

    private Task StoreCancelledAsync(IReadOnlyList<string> taskIds, CancellationToken cancellationToken)
    {
        var result = TaskiqWorker.ErrorResult(CancelledTaskException.ErrorType, PostgresBroker.CancelledReason, null, TimeSpan.Zero, null);
        return ResultBackend!.SetResultsAsync(taskIds.Select(id => new KeyValuePair<string, TaskResult>(id, result)).ToArray(), cancellationToken);
    }
}
