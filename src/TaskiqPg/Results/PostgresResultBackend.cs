using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;
using NpgsqlTypes;
using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// Stores task results and progress in PostgreSQL. Waiters are woken by a NOTIFY when a result is stored.
/// Built from a connection string it owns its <see cref="NpgsqlDataSource"/>; built from a data source it borrows it
/// and never disposes it.
/// </summary>
public sealed partial class PostgresResultBackend : IAsyncDisposable
{
    // A NOTIFY payload must stay under 8000 bytes; results are announced in chunks below that.
    private const int MaxNotifyPayloadBytes = 7000;
    private static readonly TimeSpan DisconnectedRecheck = TimeSpan.FromMilliseconds(200);

    private readonly ResultSql _sql;
    private readonly ILogger _logger;
    private readonly ComponentResources _resources;
    private readonly Dictionary<string, List<WakeSignal>> _waiters = [];
    private readonly CancellationTokenSource _stop = new();
    private Task? _pruner;

    /// <summary>Creates a result backend that owns a data source built from <paramref name="connectionString"/>.</summary>
    /// <param name="connectionString">An Npgsql connection string.</param>
    /// <param name="options">The backend's options; default: <see cref="PostgresResultBackendOptions"/> defaults.</param>
    /// <param name="loggerFactory">Where the backend logs; default: nowhere.</param>
    /// <exception cref="ArgumentException">The connection string cannot be parsed, or an option is invalid (table or channel name).</exception>
    public PostgresResultBackend(string connectionString, PostgresResultBackendOptions? options = null, ILoggerFactory? loggerFactory = null)
        : this(NpgsqlDataSource.Create(connectionString), ownsDataSource: true, options, loggerFactory)
    {
    }

    /// <summary>Creates a result backend on a borrowed data source (never disposed here).</summary>
    /// <param name="dataSource">The data source every statement runs on; the caller keeps owning it.</param>
    /// <param name="options">The backend's options; default: <see cref="PostgresResultBackendOptions"/> defaults.</param>
    /// <param name="loggerFactory">Where the backend logs; default: nowhere.</param>
    /// <exception cref="ArgumentException">An option is invalid (table or channel name).</exception>
    public PostgresResultBackend(NpgsqlDataSource dataSource, PostgresResultBackendOptions? options = null, ILoggerFactory? loggerFactory = null)
        : this(dataSource, ownsDataSource: false, options, loggerFactory)
    {
    }

    private PostgresResultBackend(NpgsqlDataSource dataSource, bool ownsDataSource, PostgresResultBackendOptions? options,
        ILoggerFactory? loggerFactory)
    {
        Options = (options ?? new PostgresResultBackendOptions()) with { }; // a copy: later edits to the caller's object change nothing
        ComponentResources.ValidateOrDispose(dataSource, ownsDataSource, Options.Validate);
        DataSource = dataSource;
        _sql = new ResultSql(Options);
        _logger = (loggerFactory ?? NullLoggerFactory.Instance).CreateLogger<PostgresResultBackend>();
        _resources = new ComponentResources(dataSource, ownsDataSource, new NotificationListener(dataSource, null, [Options.Channel],
            (_, payload) => OnResultsStored(payload), WakeAllWaiters, _logger, "results", Options.Listen));
    }

    /// <summary>The data source every query runs on.</summary>
    public NpgsqlDataSource DataSource { get; }

    /// <summary>The settings.</summary>
    public PostgresResultBackendOptions Options { get; }

    /// <summary>True while the LISTEN connection for result notifications is up and its probe NOTIFY arrived (it starts with the first wait; never in poll-only mode).</summary>
    public bool IsListening => _resources.Listener.IsConnected;

    /// <summary>Runs the migrations (unless disabled) and starts the pruner. Idempotent.</summary>
    /// <param name="cancellationToken">Cancels the wait; the start itself goes on for other callers.</param>
    /// <returns>Completes once the schema is ready.</returns>
    /// <exception cref="SchemaVersionException">The database's schema is newer and not compatible with this code.</exception>
    public Task StartAsync(CancellationToken cancellationToken = default)
        => _resources.Start.RunOnceAsync(async ct =>
        {
            if (Options.RunMigrations)
            {
                await MigrateAsync(ct);
            }
            else
            {
                await SchemaMigrator.VerifyAsync(DataSource, Options.Schema, Options.ResultsTable, _sql.Migrations.Count, ct);
            }

            if (Options.PruneInterval is { } interval && interval > TimeSpan.Zero)
            {
                _pruner = Task.Run(() => PruneLoopAsync(interval, _stop.Token), CancellationToken.None);
            }
        }, cancellationToken);

    /// <summary>Creates or upgrades the results table. Safe to call from many processes at once.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>Completes once the table is at this code's schema version.</returns>
    /// <exception cref="SchemaVersionException">The database's schema is newer and not compatible with this code.</exception>
    public Task MigrateAsync(CancellationToken cancellationToken = default)
        => SchemaMigrator.MigrateAndLogAsync(DataSource, Options.Schema, Options.ResultsTable, _sql.Migrations, _logger, cancellationToken);

    /// <summary>Stores one result and wakes its waiters.</summary>
    /// <param name="taskId">The task id.</param>
    /// <param name="result">The result; it replaces any stored one.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>Completes once the result is committed.</returns>
    public Task SetResultAsync(string taskId, TaskResult result, CancellationToken cancellationToken = default)
        => SetResultsAsync([new KeyValuePair<string, TaskResult>(taskId, result)], cancellationToken);

    /// <summary>Stores many results in as few statements as the NOTIFY payload limit allows, and wakes their waiters.</summary>
    /// <param name="results">Task ids and their results; each replaces any stored one.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>Completes once every result is committed.</returns>
    public async Task SetResultsAsync(IReadOnlyCollection<KeyValuePair<string, TaskResult>> results, CancellationToken cancellationToken = default)
    {
        if (results.Count == 0)
        {
            return;
        }

        await StartAsync(cancellationToken);
        await using var batch = DataSource.CreateBatch();
        foreach (var command in CreateSetResultCommands(results))
        {
            batch.BatchCommands.Add(command);
        }

        await batch.ExecuteNonQueryAsync(cancellationToken);
    }

    /// <summary>
    /// Upsert statements for <paramref name="results"/>, split so each statement's NOTIFY payload stays under the
    /// limit. Each returns at most one row (the notify). Callers may run them in a batch with other statements.
    /// </summary>
    internal List<NpgsqlBatchCommand> CreateSetResultCommands(IReadOnlyCollection<KeyValuePair<string, TaskResult>> results)
    {
        // ON CONFLICT cannot touch one row twice per statement: the last result for an id wins.
        var latest = new Dictionary<string, TaskResult>(results.Count);
        foreach (var (taskId, result) in results)
        {
            ArgumentException.ThrowIfNullOrEmpty(taskId);
            latest[taskId] = result;
        }

        var commands = new List<NpgsqlBatchCommand>();
        var chunk = new List<KeyValuePair<string, TaskResult>>();
        var payloadBytes = 0;
        foreach (var entry in latest)
        {
            var idBytes = Encoding.UTF8.GetByteCount(entry.Key) + 1;
            if (chunk.Count > 0 && payloadBytes + idBytes > MaxNotifyPayloadBytes)
            {
                commands.Add(CreateChunkCommand(chunk));
                chunk.Clear();
                payloadBytes = 0;
            }

            chunk.Add(entry);
            payloadBytes += idBytes;
        }

        if (chunk.Count > 0)
        {
            commands.Add(CreateChunkCommand(chunk));
        }

        return commands;
    }

    /// <summary>The stored result of a task.</summary>
    /// <exception cref="TaskResultNotFoundException">No (unexpired) result is stored.</exception>
    /// <param name="taskId">The task id.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The result, successful or not (see <see cref="TaskResult.IsError"/>).</returns>
    public async Task<TaskResult> GetResultAsync(string taskId, CancellationToken cancellationToken = default)
        => await TryGetResultAsync(taskId, cancellationToken) ?? throw new TaskResultNotFoundException(taskId);

    /// <summary>True when a result is stored for the task.</summary>
    /// <param name="taskId">The task id.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>True when an unexpired result is stored.</returns>
    public async Task<bool> IsResultReadyAsync(string taskId, CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.IsReady);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
        return (bool)(await command.ExecuteScalarAsync(cancellationToken))!;
    }

    /// <summary>Stores progress for a running task (any JSON-serializable value).</summary>
    /// <typeparam name="T">The progress type.</typeparam>
    /// <param name="taskId">The task id.</param>
    /// <param name="progress">The progress; it replaces the previous one.</param>
    /// <param name="serializerOptions">JSON options; default: <see cref="TaskiqSerializer.DefaultOptions"/>.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>Completes once the progress is committed.</returns>
    public async Task SetProgressAsync<T>(string taskId, T progress, JsonSerializerOptions? serializerOptions = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(taskId);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.SetProgress);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
        command.Parameters.Add(new NpgsqlParameter<string>
        {
            TypedValue = JsonSerializer.Serialize(progress, serializerOptions ?? TaskiqSerializer.DefaultOptions),
        });
        command.Parameters.Add(TtlParameter());
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    /// <summary>The last progress stored for the task, or default when none.</summary>
    /// <typeparam name="T">The progress type.</typeparam>
    /// <param name="taskId">The task id.</param>
    /// <param name="serializerOptions">JSON options; default: <see cref="TaskiqSerializer.DefaultOptions"/>.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The last progress, or default when none is stored.</returns>
    public async Task<T?> GetProgressAsync<T>(string taskId, JsonSerializerOptions? serializerOptions = null,
        CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.GetProgress);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
        return await command.ExecuteScalarAsync(cancellationToken) is byte[] json
            ? JsonSerializer.Deserialize<T>(StoredJson(json, "progress"), serializerOptions ?? TaskiqSerializer.DefaultOptions)
            : default;
    }

    /// <summary>Stops the listener and pruner; disposes the data source only if this backend created it.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_stop.IsCancellationRequested)
        {
            return;
        }

        await _stop.CancelAsync();
        if (_pruner is not null)
        {
            await _pruner.ContinueWith(static _ => { }, TaskScheduler.Default);
        }

        await _resources.DisposeAsync();
        _stop.Dispose();
    }

    internal async Task<TaskResult?> TryGetResultAsync(string taskId, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrEmpty(taskId);
        await StartAsync(cancellationToken);
        string json;
        string? stackTrace;
        await using (var command = DataSource.CreateCommand(_sql.Get))
        {
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            if (!await reader.ReadAsync(cancellationToken))
            {
                return null;
            }

            json = StoredJson(reader.GetFieldValue<byte[]>(0), "result");
            stackTrace = reader.IsDBNull(1) ? null : reader.GetString(1);
        }

        var result = TaskResult.FromJson(json, stackTrace);
        if (!Options.KeepResults)
        {
            // Only after the result was read and deserialized: a failed read leaves it for the next try.
            await using var delete = DataSource.CreateCommand(_sql.Delete);
            delete.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
            await delete.ExecuteNonQueryAsync(cancellationToken);
        }

        return result;
    }

    /// <summary>
    /// The stored bytes as JSON text. They are UTF-8 JSON when TaskiqPg or Python's taskiq with its JSONSerializer wrote
    /// them; anything else (Python's default pickle serializer) is refused with what to change.
    /// </summary>
    private static string StoredJson(byte[] bytes, string what)
    {
        try
        {
            return StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            throw new JsonException($"The stored {what} is not UTF-8 JSON ({bytes.Length} bytes starting 0x{Convert.ToHexString(bytes, 0, Math.Min(bytes.Length, 4))}). " +
                                    "A Python taskiq producer sharing this table must use taskiq's JSONSerializer (its default is pickle).");
        }
    }

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private NpgsqlBatchCommand CreateChunkCommand(List<KeyValuePair<string, TaskResult>> chunk)
    {
        var command = new NpgsqlBatchCommand(_sql.SetMany);
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = chunk.Select(c => c.Key).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = chunk.Select(c => c.Value.ToJson()).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string?[]>
        {
            TypedValue = chunk.Select(c => Options.StoreStackTraces ? c.Value.StackTrace : null).ToArray(),
        });
        command.Parameters.Add(TtlParameter());
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        return command;
    }

    internal NpgsqlParameter TtlParameter()
        => new() { Value = Options.ResultTtl is { } ttl ? ttl : DBNull.Value, NpgsqlDbType = NpgsqlDbType.Interval };
}
