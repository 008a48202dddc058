using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;
using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// Stores schedules in PostgreSQL: static ones declared in code (stable ids, replaced on every start) and runtime
/// ones added through this API (kept across restarts). Built from a connection string it owns its
/// <see cref="NpgsqlDataSource"/>; built from a data source it borrows it and never disposes it.
/// </summary>
public sealed class PostgresScheduleSource : IAsyncDisposable
{
    private readonly ScheduleSql _sql;
    private readonly ILogger _logger;
    private readonly ComponentResources _resources;
    private readonly Subscribers _subscribers = new();

    /// <summary>Creates a schedule source that owns a data source built from <paramref name="connectionString"/>.</summary>
    /// <param name="connectionString">An Npgsql connection string.</param>
    /// <param name="options">The source's options; default: <see cref="PostgresScheduleSourceOptions"/> defaults.</param>
    /// <param name="loggerFactory">Where the source logs; default: nowhere.</param>
    /// <exception cref="ArgumentException">The connection string cannot be parsed, or an option is invalid (table or channel name).</exception>
    public PostgresScheduleSource(string connectionString, PostgresScheduleSourceOptions? options = null, ILoggerFactory? loggerFactory = null)
        : this(NpgsqlDataSource.Create(connectionString), ownsDataSource: true, options, loggerFactory)
    {
    }

    /// <summary>Creates a schedule source on a borrowed data source (never disposed here).</summary>
    /// <param name="dataSource">The data source every statement runs on; the caller keeps owning it.</param>
    /// <param name="options">The source's options; default: <see cref="PostgresScheduleSourceOptions"/> defaults.</param>
    /// <param name="loggerFactory">Where the source logs; default: nowhere.</param>
    /// <exception cref="ArgumentException">An option is invalid (table or channel name).</exception>
    public PostgresScheduleSource(NpgsqlDataSource dataSource, PostgresScheduleSourceOptions? options = null, ILoggerFactory? loggerFactory = null)
        : this(dataSource, ownsDataSource: false, options, loggerFactory)
    {
    }

    private PostgresScheduleSource(NpgsqlDataSource dataSource, bool ownsDataSource, PostgresScheduleSourceOptions? options, ILoggerFactory? loggerFactory)
    {
        Options = (options ?? new PostgresScheduleSourceOptions()) with { };
        ComponentResources.ValidateOrDispose(dataSource, ownsDataSource, Options.Validate);
        DataSource = dataSource;
        _sql = new ScheduleSql(Options);
        _logger = (loggerFactory ?? NullLoggerFactory.Instance).CreateLogger<PostgresScheduleSource>();
        _resources = new ComponentResources(dataSource, ownsDataSource,
            new NotificationListener(dataSource, null, [Options.Channel], (_, _) => Wake(), Wake, _logger, "schedules", Options.Listen));
    }

    /// <summary>The data source every query runs on.</summary>
    public NpgsqlDataSource DataSource { get; }

    /// <summary>The settings.</summary>
    public PostgresScheduleSourceOptions Options { get; }

    /// <summary>JSON settings for schedule arguments.</summary>
    public JsonSerializerOptions SerializerOptions { get; init; } = TaskiqSerializer.DefaultOptions;

    /// <summary>Runs the migrations (unless disabled). Idempotent.</summary>
    /// <param name="cancellationToken">Cancels the wait; the start itself goes on for other callers.</param>
    /// <returns>Completes once the schema is ready.</returns>
    /// <exception cref="SchemaVersionException">The database's schema is newer and not compatible with this code.</exception>
    public Task StartAsync(CancellationToken cancellationToken = default)
        => _resources.Start.RunOnceAsync(ct => Options.RunMigrations
            ? MigrateAsync(ct)
            : SchemaMigrator.VerifyAsync(DataSource, Options.Schema, Options.SchedulesTable, _sql.Migrations.Count, ct), cancellationToken);

    /// <summary>Creates or upgrades the schedule tables. Safe to call from many processes at once.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>Completes once the tables are at this code's schema version.</returns>
    /// <exception cref="SchemaVersionException">The database's schema is newer and not compatible with this code.</exception>
    public Task MigrateAsync(CancellationToken cancellationToken = default)
        => SchemaMigrator.MigrateAndLogAsync(DataSource, Options.Schema, Options.SchedulesTable, _sql.Migrations, _logger, cancellationToken);

    /// <summary>Validates and stores a runtime schedule; schedulers pick it up at once (NOTIFY) or within their refresh interval.</summary>
    /// <returns>The new schedule's id.</returns>
    /// <exception cref="ScheduleValidationException">A field is wrong (invalid cron, unknown time zone, interval below 1 s, unknown task).</exception>
    /// <param name="definition">The schedule: task, arguments, cron (and time zone), interval or one instant.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    public async Task<Guid> AddScheduleAsync(ScheduleDefinition definition, CancellationToken cancellationToken = default)
    {
        Compile(definition);
        var id = Guid.NewGuid();
        await UpsertAsync(id, definition, "runtime", cancellationToken);
        return id;
    }

    /// <summary>Deletes a schedule. Returns false when there was none with that id.</summary>
    /// <param name="id">The schedule's id.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>True when a schedule was deleted.</returns>
    public async Task<bool> DeleteScheduleAsync(Guid id, CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Delete);
        command.Parameters.Add(new NpgsqlParameter<Guid> { TypedValue = id });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        return (long)(await command.ExecuteScalarAsync(cancellationToken))! > 0;
    }

    /// <summary>Stops a schedule from firing until <see cref="ResumeScheduleAsync"/>. Returns false when there was none.</summary>
    /// <param name="id">The schedule's id.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>True when the schedule exists (paused now or already).</returns>
    public Task<bool> PauseScheduleAsync(Guid id, CancellationToken cancellationToken = default) => SetEnabledAsync(id, false, cancellationToken);

    /// <summary>Lets a paused (or disabled) schedule fire again. Returns false when there was none.</summary>
    /// <param name="id">The schedule's id.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>True when the schedule exists (resumed now or already running).</returns>
    public Task<bool> ResumeScheduleAsync(Guid id, CancellationToken cancellationToken = default) => SetEnabledAsync(id, true, cancellationToken);

    /// <summary>Every stored schedule. A schedule whose stored JSON no longer parses is listed with a null-free placeholder definition.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>Each schedule with its id, definition, origin (static or runtime), state and last fire.</returns>
    public async Task<IReadOnlyList<ScheduleInfo>> ListSchedulesAsync(CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.List);
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        var schedules = new List<ScheduleInfo>();
        while (await reader.ReadAsync(cancellationToken))
        {
            var taskName = reader.GetString(1);
            ScheduleDefinition definition;
            try
            {
                definition = StoredSchedule.FromJson(reader.GetString(2)).ToDefinition(taskName);
            }
            catch (JsonException)
            {
                definition = new ScheduleDefinition { TaskName = taskName };
            }

            schedules.Add(new ScheduleInfo(reader.GetGuid(0), definition, reader.GetString(3) == "static", reader.GetBoolean(4),
                reader.GetBoolean(5), reader.IsDBNull(6) ? null : reader.GetString(6),
                reader.IsDBNull(7) ? null : reader.GetFieldValue<DateTimeOffset>(7)));
        }

        return schedules;
    }

    /// <summary>The instants a schedule fired (within the fires retention) and the task id kicked for each.</summary>
    /// <param name="id">The schedule's id.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The recorded fires, oldest first; empty for an unknown id.</returns>
    public async Task<IReadOnlyList<(DateTimeOffset FireAt, string TaskId)>> GetFiresAsync(Guid id, CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Fires);
        command.Parameters.Add(new NpgsqlParameter<Guid> { TypedValue = id });
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        var fires = new List<(DateTimeOffset, string)>();
        while (await reader.ReadAsync(cancellationToken))
        {
            fires.Add((reader.GetFieldValue<DateTimeOffset>(0), reader.GetString(1)));
        }

        return fires;
    }

    /// <summary>
    /// Makes the stored static schedules equal to <paramref name="definitions"/>: each is upserted under a stable id
    /// derived from its definition, and static schedules no longer declared are deleted. Runtime schedules are untouched.
    /// </summary>
    /// <returns>The ids of the declared schedules, in order.</returns>
    /// <param name="definitions">Every static schedule the application declares.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <exception cref="ScheduleValidationException">A definition is wrong; every definition is checked before any is stored, so nothing is changed.</exception>
    public async Task<IReadOnlyList<Guid>> SyncStaticSchedulesAsync(IReadOnlyCollection<ScheduleDefinition> definitions, CancellationToken cancellationToken = default)
    {
        foreach (var definition in definitions)
        {
            Compile(definition); // all are checked before any is stored
        }

        var ids = new List<Guid>();
        foreach (var definition in definitions)
        {
            var id = StoredSchedule.StableId(definition.TaskName, StoredSchedule.From(definition, SerializerOptions).ToJson());
            await UpsertAsync(id, definition, "static", cancellationToken);
            ids.Add(id);
        }

        await using var command = DataSource.CreateCommand(_sql.DeleteStaleStatic);
        command.Parameters.Add(new NpgsqlParameter<Guid[]> { TypedValue = ids.ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        await command.ExecuteNonQueryAsync(cancellationToken);
        return ids;
    }

    /// <summary>Calls <paramref name="onChange"/> when schedules change (NOTIFY) or the listener reconnects. Starts the listener.</summary>
    /// <param name="onChange">Called on the listener's thread; keep it short and non-blocking.</param>
    /// <returns>Dispose to unsubscribe.</returns>
    public IDisposable Subscribe(Action onChange)
    {
        var subscription = _subscribers.Add(onChange);
        _resources.Listener.Start();
        return subscription;
    }

    /// <summary>Stops the listener; disposes the data source only if this source created it.</summary>
    public ValueTask DisposeAsync() => _resources.DisposeAsync();

    internal CompiledSchedule Compile(ScheduleDefinition definition)
    {
        var known = Options.KnownTaskNames;
        return CompiledSchedule.Compile(definition, known is null ? null : known.Contains);
    }

    /// <summary>The enabled, unfinished schedules and the database's clock, in one round trip.</summary>
    internal async Task<(DateTimeOffset Now, IReadOnlyList<ActiveSchedule> Schedules)> LoadActiveAsync(CancellationToken cancellationToken)
    {
        await StartAsync(cancellationToken);
        await using var batch = DataSource.CreateBatch();
        batch.BatchCommands.Add(new NpgsqlBatchCommand(_sql.Now));
        batch.BatchCommands.Add(new NpgsqlBatchCommand(_sql.Active));
        await using var reader = await batch.ExecuteReaderAsync(cancellationToken);
        await reader.ReadAsync(cancellationToken);
        var now = reader.GetFieldValue<DateTimeOffset>(0);
        await reader.NextResultAsync(cancellationToken);
        var schedules = new List<ActiveSchedule>();
        while (await reader.ReadAsync(cancellationToken))
        {
            schedules.Add(new ActiveSchedule(reader.GetGuid(0), reader.GetString(1), reader.GetString(2),
                reader.IsDBNull(3) ? null : reader.GetFieldValue<DateTimeOffset>(3), reader.GetFieldValue<DateTimeOffset>(4)));
        }

        return (now, schedules);
    }

    /// <summary>
    /// Fires many instants (of any schedules) in one transaction, each exactly once across all schedulers: the fire rows
    /// in one statement (sorted by schedule and instant, so schedulers firing the same set wait on each other in one
    /// order and never deadlock), the tasks of the rows this call inserted in one kick, the schedules' last fire in one
    /// update. All or nothing: a message the broker refuses fails the whole call (the caller then fires one by one, each
    /// through this call alone). The fire row's primary key (schedule, instant) is what makes a fire exactly-once: a second
    /// scheduler's insert of it conflicts and kicks nothing.
    /// </summary>
    /// <returns>The fires this call kicked (those another scheduler had not fired first).</returns>
    internal async Task<IReadOnlyList<ScheduledFire>> FireManyAsync(IReadOnlyList<ScheduledFire> fires, PostgresBroker broker,
        CancellationToken cancellationToken)
    {
        var ordered = fires.OrderBy(f => f.Schedule.Id).ThenBy(f => f.FireAt).ToArray();
        await using var connection = await DataSource.OpenConnectionAsync(cancellationToken);
        await using var transaction = await connection.BeginTransactionAsync(cancellationToken);
        var inserted = new HashSet<string>(StringComparer.Ordinal);
        await using (var claim = new NpgsqlCommand(_sql.ClaimFires, connection, transaction))
        {
            claim.Parameters.Add(new NpgsqlParameter<Guid[]> { TypedValue = ordered.Select(f => f.Schedule.Id).ToArray() });
            claim.Parameters.Add(new NpgsqlParameter<DateTimeOffset[]> { TypedValue = ordered.Select(f => f.FireAt).ToArray() });
            claim.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = ordered.Select(f => f.Message.TaskId).ToArray() });
            await using var reader = await claim.ExecuteReaderAsync(cancellationToken);
            while (await reader.ReadAsync(cancellationToken))
            {
                inserted.Add(reader.GetString(0));
            }
        }

        var claimed = ordered.Where(f => inserted.Contains(f.Message.TaskId)).ToArray();
        if (claimed.Length > 0)
        {
            await broker.KickManyAsync(claimed.Select(f => f.Message).ToArray(), connection, transaction, cancellationToken: cancellationToken);
        }

        await using (var record = new NpgsqlCommand(_sql.RecordFires, connection, transaction))
        {
            record.Parameters.Add(new NpgsqlParameter<Guid[]> { TypedValue = ordered.Select(f => f.Schedule.Id).ToArray() });
            record.Parameters.Add(new NpgsqlParameter<DateTimeOffset[]> { TypedValue = ordered.Select(f => f.FireAt).ToArray() });
            record.Parameters.Add(new NpgsqlParameter<bool[]> { TypedValue = ordered.Select(f => f.Definition.RunAt is not null).ToArray() });
            await record.ExecuteNonQueryAsync(cancellationToken);
        }

        await transaction.CommitAsync(cancellationToken);
        return claimed;
    }

    /// <summary>The task one instant of a schedule kicks: its definition's call and labels, and which schedule and instant.</summary>
    internal TaskMessage FireMessage(Guid scheduleId, ScheduleDefinition definition, DateTimeOffset fireAt)
    {
        var message = TaskMessage.Create(definition.TaskName, definition.Args, definition.Kwargs, SerializerOptions);
        foreach (var (key, value) in definition.Labels ?? new Dictionary<string, string>())
        {
            message.Labels[key] = value;
        }

        message.Labels[ScheduleLabels.ScheduleId] = scheduleId.ToString();
        message.Labels[ScheduleLabels.FireAt] = fireAt.ToUniversalTime().UtcDateTime.ToString("O");
        return message;
    }

    internal async Task DisableAsync(Guid id, string reason, CancellationToken cancellationToken)
    {
        await using var command = DataSource.CreateCommand(_sql.Disable);
        command.Parameters.Add(new NpgsqlParameter<Guid> { TypedValue = id });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = reason });
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    internal async Task PruneFiresAsync(TimeSpan retention, CancellationToken cancellationToken)
    {
        await using var batch = DataSource.CreateBatch();
        foreach (var sql in new[] { _sql.PruneFires, _sql.PruneDone })
        {
            var command = new NpgsqlBatchCommand(sql);
            command.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = retention });
            batch.BatchCommands.Add(command);
        }

        await batch.ExecuteNonQueryAsync(cancellationToken);
    }

    private async Task UpsertAsync(Guid id, ScheduleDefinition definition, string source, CancellationToken cancellationToken)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Upsert);
        command.Parameters.Add(new NpgsqlParameter<Guid> { TypedValue = id });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = definition.TaskName });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = StoredSchedule.From(definition, SerializerOptions).ToStoredJson() });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = source });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    private async Task<bool> SetEnabledAsync(Guid id, bool enabled, CancellationToken cancellationToken)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.SetEnabled);
        command.Parameters.Add(new NpgsqlParameter<Guid> { TypedValue = id });
        command.Parameters.Add(new NpgsqlParameter<bool> { TypedValue = enabled });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        return (long)(await command.ExecuteScalarAsync(cancellationToken))! > 0;
    }

    private void Wake() => _subscribers.Invoke();
}

/// <summary>A schedule row loaded for firing.</summary>
internal sealed record ActiveSchedule(Guid Id, string TaskName, string Json, DateTimeOffset? LastFireAt, DateTimeOffset CreatedAt);

/// <summary>One due instant of a schedule, with the task it kicks (<see cref="FireAt"/> in UTC).</summary>
internal sealed record ScheduledFire(ActiveSchedule Schedule, ScheduleDefinition Definition, DateTimeOffset FireAt, TaskMessage Message);
