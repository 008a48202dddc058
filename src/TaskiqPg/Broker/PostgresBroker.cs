using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;
using NpgsqlTypes;
using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// The queue on PostgreSQL: kicks tasks (one, many, or inside the caller's transaction), and lets workers claim
/// them under leases, renew, ack, fail (retry with backoff or dead-letter), release and rescue them.
/// Built from a connection string it owns its <see cref="NpgsqlDataSource"/>; built from a data source it borrows it
/// and never disposes it.
/// </summary>
public sealed class PostgresBroker : IAsyncDisposable
{
    private readonly BrokerSql _sql;
    private readonly ILogger _logger;
    private readonly ComponentResources _resources;
    private readonly Subscribers _subscribers = new();

    /// <summary>Creates a broker that owns a data source built from <paramref name="connectionString"/>.</summary>
    public PostgresBroker(string connectionString, PostgresBrokerOptions? options = null, ILoggerFactory? loggerFactory = null)
        : this(NpgsqlDataSource.Create(connectionString), ownsDataSource: true, options, listenConnection: null, loggerFactory)
    {
    }

    /// <summary>
    /// Creates a broker on a borrowed data source (never disposed here). <paramref name="listenConnection"/>, when given,
    /// is used for LISTEN and never closed here; otherwise the broker opens one physical connection outside the pool.
    /// </summary>
    public PostgresBroker(NpgsqlDataSource dataSource, PostgresBrokerOptions? options = null,
        NpgsqlConnection? listenConnection = null, ILoggerFactory? loggerFactory = null)
        : this(dataSource, ownsDataSource: false, options, listenConnection, loggerFactory)
    {
    }

    private PostgresBroker(NpgsqlDataSource dataSource, bool ownsDataSource, PostgresBrokerOptions? options,
        NpgsqlConnection? listenConnection, ILoggerFactory? loggerFactory)
    {
        Options = (options ?? new PostgresBrokerOptions()) with { }; // a copy: later edits to the caller's object change nothing
        ComponentResources.ValidateOrDispose(dataSource, ownsDataSource, Options.Validate);
        DataSource = dataSource;
        _sql = new BrokerSql(Options);
        _logger = (loggerFactory ?? NullLoggerFactory.Instance).CreateLogger<PostgresBroker>();
        _resources = new ComponentResources(dataSource, ownsDataSource, new NotificationListener(dataSource, listenConnection, [Options.Channel],
            (_, payload) => OnNotification(payload), WakeSubscribers, _logger, "broker"));
    }

    /// <summary>The data source every query runs on.</summary>
    public NpgsqlDataSource DataSource { get; }

    /// <summary>The settings.</summary>
    public PostgresBrokerOptions Options { get; }

    /// <summary>True while the LISTEN connection is up.</summary>
    public bool IsListening => _resources.Listener.IsConnected;

    /// <summary>Backend process id of the LISTEN connection (0 while disconnected); for diagnostics and tests.</summary>
    public int ListenerProcessId => _resources.Listener.BackendProcessId;

    /// <summary>Completes once the LISTEN connection is up.</summary>
    public Task ListenerConnected => _resources.Listener.Connected;

    /// <summary>Runs the migrations (unless <see cref="PostgresBrokerOptions.RunMigrations"/> is false). Idempotent.</summary>
    public Task StartAsync(CancellationToken cancellationToken = default)
        => _resources.Start.RunOnceAsync(ct => Options.RunMigrations ? MigrateAsync(ct) : Task.CompletedTask, cancellationToken);

    /// <summary>Creates or upgrades the messages table and its indexes. Safe to call from many processes at once.</summary>
    public Task MigrateAsync(CancellationToken cancellationToken = default)
        => SchemaMigrator.MigrateAndLogAsync(DataSource, Options.Schema, Options.MessagesTable, _sql.Migrations, _logger, cancellationToken);

    /// <summary>Kicks one task. It is committed (and workers are notified) when this returns.</summary>
    /// <returns>The row id.</returns>
    public async Task<long> KickAsync(TaskMessage message, KickOptions? options = null, CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand();
        return await KickCoreAsync(command, message, options, cancellationToken);
    }

    /// <summary>
    /// Kicks one task inside the caller's connection and transaction: it becomes visible (and workers are notified)
    /// only when the caller commits, and vanishes on rollback. The connection is never closed here.
    /// </summary>
    public async Task<long> KickAsync(TaskMessage message, NpgsqlConnection connection, NpgsqlTransaction? transaction,
        KickOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        await StartAsync(cancellationToken);
        await using var command = new NpgsqlCommand(null, connection, transaction);
        return await KickCoreAsync(command, message, options, cancellationToken);
    }

    /// <summary>Kicks many tasks in one statement (one round trip) and one notification.</summary>
    /// <returns>The number of tasks inserted.</returns>
    public async Task<int> KickManyAsync(IReadOnlyCollection<TaskMessage> messages, KickOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand();
        return await KickManyCoreAsync(command, messages, options, cancellationToken);
    }

    /// <summary>Kicks many tasks inside the caller's connection and transaction (visible on commit, gone on rollback).</summary>
    public async Task<int> KickManyAsync(IReadOnlyCollection<TaskMessage> messages, NpgsqlConnection connection,
        NpgsqlTransaction? transaction, KickOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        await StartAsync(cancellationToken);
        await using var command = new NpgsqlCommand(null, connection, transaction);
        return await KickManyCoreAsync(command, messages, options, cancellationToken);
    }

    /// <summary>Claims up to <paramref name="maxCount"/> due tasks for <paramref name="workerId"/>, highest priority first,
    /// leasing each for <see cref="PostgresBrokerOptions.LeaseDuration"/> (database clock).</summary>
    public async Task<IReadOnlyList<ClaimedTask>> ClaimAsync(string workerId, int maxCount, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(workerId);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxCount, 1);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Claim);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Queue });
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = maxCount });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        command.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = Options.LeaseDuration });
        var claimed = new List<ClaimedTask>(maxCount);
        await using (var reader = await command.ExecuteReaderAsync(cancellationToken))
        {
            while (await reader.ReadAsync(cancellationToken))
            {
                claimed.Add(new ClaimedTask
                {
                    Id = reader.GetInt64(0),
                    TaskId = reader.GetString(1),
                    TaskName = reader.GetString(2),
                    Message = reader.GetString(3),
                    Attempt = reader.GetInt32(4),
                    MaxAttempts = reader.GetInt32(5),
                    Priority = reader.GetInt32(6),
                    RunAt = reader.GetFieldValue<DateTimeOffset>(7),
                    CreatedAt = reader.GetFieldValue<DateTimeOffset>(8),
                    ClaimedAt = reader.GetFieldValue<DateTimeOffset>(9),
                });
            }
        }

        // UPDATE ... RETURNING does not keep the CTE's order.
        foreach (var task in claimed)
        {
            TaskiqDiagnostics.QueueWait.Record(Math.Max(0, (task.ClaimedAt - task.RunAt).TotalSeconds),
                new KeyValuePair<string, object?>(MessagingTags.Destination, Options.Queue));
        }

        claimed.Sort(static (a, b) => a.Priority != b.Priority ? b.Priority.CompareTo(a.Priority)
            : a.RunAt != b.RunAt ? a.RunAt.CompareTo(b.RunAt) : a.Id.CompareTo(b.Id));
        return claimed;
    }

    /// <summary>Completes claims (deletes their rows) if each lease is still this worker's.</summary>
    /// <returns>The row ids that were completed; a missing id means the lease was lost (e.g. rescued and rerun).</returns>
    public Task<IReadOnlySet<long>> AckAsync(string workerId, IReadOnlyCollection<LeaseRef> leases, CancellationToken cancellationToken = default)
        => LeaseCommandAsync(_sql.Ack, workerId, leases, withLease: false, cancellationToken);

    /// <summary>Extends the leases that are still this worker's.</summary>
    /// <returns>The row ids renewed; a missing id means that lease was lost.</returns>
    public Task<IReadOnlySet<long>> RenewLeasesAsync(string workerId, IReadOnlyCollection<LeaseRef> leases, CancellationToken cancellationToken = default)
        => LeaseCommandAsync(_sql.Renew, workerId, leases, withLease: true, cancellationToken);

    /// <summary>Returns claimed but unstarted tasks to the queue at once, without using up an attempt.</summary>
    public Task<IReadOnlySet<long>> ReleaseAsync(string workerId, IReadOnlyCollection<LeaseRef> leases, CancellationToken cancellationToken = default)
        => LeaseCommandAsync(_sql.Release, workerId, leases, withLease: false, cancellationToken);

    /// <summary>
    /// Records failed attempts: a retryable failure with attempts left goes back to pending after an exponential
    /// backoff with jitter (computed in SQL); otherwise the task is dead-lettered. The reason is kept in <c>last_error</c>.
    /// </summary>
    /// <returns>For each row whose lease was still ours, its new status (<see cref="TaskStatuses"/>).</returns>
    public async Task<IReadOnlyDictionary<long, string>> FailAsync(string workerId, IReadOnlyCollection<TaskFailure> failures,
        CancellationToken cancellationToken = default)
    {
        if (failures.Count == 0)
        {
            return new Dictionary<long, string>();
        }

        await using var batch = DataSource.CreateBatch();
        batch.BatchCommands.Add(CreateFailCommand(workerId, failures));
        await using var reader = await batch.ExecuteReaderAsync(cancellationToken);
        return await ReadFailOutcomeAsync(reader, cancellationToken);
    }

    internal NpgsqlBatchCommand CreateFailCommand(string workerId, IReadOnlyCollection<TaskFailure> failures)
    {
        var command = new NpgsqlBatchCommand(_sql.Fail);
        command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = failures.Select(f => f.Lease.Id).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = failures.Select(f => f.Lease.Attempt).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = failures.Select(f => f.Error).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<bool[]> { TypedValue = failures.Select(f => f.Retry).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        command.Parameters.Add(new NpgsqlParameter<double> { TypedValue = Options.RetryBaseDelay.TotalSeconds });
        command.Parameters.Add(new NpgsqlParameter<double> { TypedValue = Options.RetryMaxDelay.TotalSeconds });
        return command;
    }

    internal static async Task<Dictionary<long, string>> ReadFailOutcomeAsync(NpgsqlDataReader reader, CancellationToken cancellationToken)
    {
        var outcome = new Dictionary<long, string>();
        while (await reader.ReadAsync(cancellationToken))
        {
            outcome[reader.GetInt64(0)] = reader.GetString(1);
        }

        return outcome;
    }

    /// <summary>
    /// Returns tasks whose lease expired (their worker died or hung) to pending, or dead-letters them when their
    /// attempts are used up. Any worker may call this; rows are locked with SKIP LOCKED so callers never collide.
    /// </summary>
    public async Task<IReadOnlyList<RescuedTask>> RescueExpiredLeasesAsync(int maxCount = 1000, CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Rescue);
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = maxCount });
        var rescued = new List<RescuedTask>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            rescued.Add(new RescuedTask(reader.GetString(0), reader.GetString(1), reader.GetString(2) == TaskStatuses.Dead));
        }

        return rescued;
    }

    /// <summary>The stored state of a task still in the messages table (pending, processing or dead); null once completed.</summary>
    public async Task<TaskState?> GetTaskStateAsync(string taskId, CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.State);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        if (!await reader.ReadAsync(cancellationToken))
        {
            return null;
        }

        return new TaskState(reader.GetString(0), reader.GetInt32(1), reader.GetInt32(2), reader.GetFieldValue<DateTimeOffset>(3),
            reader.IsDBNull(4) ? null : reader.GetString(4), reader.IsDBNull(5) ? null : reader.GetString(5));
    }

    /// <summary>Number of tasks of this broker's queue by status (<see cref="TaskStatuses"/>).</summary>
    public async Task<IReadOnlyDictionary<string, long>> GetQueueCountsAsync(CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Counts);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Queue });
        var counts = new Dictionary<string, long> { [TaskStatuses.Pending] = 0, [TaskStatuses.Processing] = 0, [TaskStatuses.Dead] = 0 };
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            counts[reader.GetString(0)] = reader.GetInt64(1);
        }

        return counts;
    }

    /// <summary>
    /// Calls <paramref name="onWake"/> whenever tasks may be available: a NOTIFY on this broker's queue, or the LISTEN
    /// connection (re)connecting. Wake-ups carry no data and are cheap; callers coalesce them. Starts the listener.
    /// </summary>
    /// <returns>Dispose to unsubscribe.</returns>
    public IDisposable Subscribe(Action onWake)
    {
        ArgumentNullException.ThrowIfNull(onWake);
        var subscription = _subscribers.Add(onWake);
        _resources.Listener.Start();
        return subscription;
    }

    /// <summary>Stops the listener; disposes the data source only if this broker created it.</summary>
    public ValueTask DisposeAsync() => _resources.DisposeAsync();

    private async Task<long> KickCoreAsync(NpgsqlCommand command, TaskMessage message, KickOptions? options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(message);
        using var activity = MessagingTags.StartSend(Options.Queue, [message]);
        try
        {
            var (json, labels) = Prepare(message, options);
            command.CommandText = _sql.Kick;
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = message.TaskId });
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = message.TaskName });
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = json });
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = labels });
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Queue });
            command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = options?.Priority ?? 0 });
            command.Parameters.Add(new NpgsqlParameter { Value = (object?)options?.RunAt ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.TimestampTz });
            command.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = DelayOf(options) });
            command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = MaxAttemptsOf(options) });
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
            var id = (long)(await command.ExecuteScalarAsync(cancellationToken))!;
            TaskiqDiagnostics.Kicked.Add(1, new KeyValuePair<string, object?>(MessagingTags.Destination, Options.Queue));
            return id;
        }
        catch (Exception ex)
        {
            MessagingTags.RecordError(activity, ex.GetType().Name, ex.Message);
            throw;
        }
    }

    private async Task<int> KickManyCoreAsync(NpgsqlCommand command, IReadOnlyCollection<TaskMessage> messages, KickOptions? options,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0)
        {
            return 0;
        }

        var list = messages as IReadOnlyList<TaskMessage> ?? messages.ToList();
        using var activity = MessagingTags.StartSend(Options.Queue, list);
        try
        {
            var n = list.Count;
            var ids = new string[n];
            var names = new string[n];
            var bodies = new string[n];
            var labels = new string[n];
            for (var i = 0; i < n; i++)
            {
                var message = list[i] ?? throw new ArgumentException("A message in the list is null.", nameof(messages));
                (bodies[i], labels[i]) = Prepare(message, options);
                ids[i] = message.TaskId;
                names[i] = message.TaskName;
            }

            command.CommandText = _sql.KickMany;
            command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = ids });
            command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = names });
            command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = bodies });
            command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = labels });
            command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = Enumerable.Repeat(options?.Priority ?? 0, n).ToArray() });
            command.Parameters.Add(new NpgsqlParameter<DateTimeOffset?[]> { TypedValue = Enumerable.Repeat(options?.RunAt, n).ToArray() });
            command.Parameters.Add(new NpgsqlParameter<TimeSpan[]> { TypedValue = Enumerable.Repeat(DelayOf(options), n).ToArray() });
            command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = Enumerable.Repeat(MaxAttemptsOf(options), n).ToArray() });
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Queue });
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
            var inserted = (int)(long)(await command.ExecuteScalarAsync(cancellationToken))!;
            TaskiqDiagnostics.Kicked.Add(inserted, new KeyValuePair<string, object?>(MessagingTags.Destination, Options.Queue));
            return inserted;
        }
        catch (Exception ex)
        {
            MessagingTags.RecordError(activity, ex.GetType().Name, ex.Message);
            throw;
        }
    }

    private (string Json, string Labels) Prepare(TaskMessage message, KickOptions? options)
    {
        ArgumentException.ThrowIfNullOrEmpty(message.TaskId, nameof(message.TaskId));
        ArgumentException.ThrowIfNullOrEmpty(message.TaskName, nameof(message.TaskName));
        if (message.TaskName.Length > Options.MaxTaskNameLength)
        {
            throw new ArgumentException(
                $"Task name '{message.TaskName[..40]}…' is {message.TaskName.Length} characters, more than {nameof(PostgresBrokerOptions.MaxTaskNameLength)} ({Options.MaxTaskNameLength}).",
                nameof(message));
        }

        if (options?.MaxAttempts is < 1)
        {
            throw new ArgumentException($"{nameof(KickOptions.MaxAttempts)} must be at least 1.", nameof(options));
        }

        if (options?.Labels is { Count: > 0 } || options?.Timeout is not null)
        {
            foreach (var (key, value) in options.Labels ?? new Dictionary<string, string>())
            {
                message.Labels[key] = value;
            }

            if (options.Timeout is { } timeout)
            {
                message.Labels[TaskLabels.Timeout] = timeout.TotalSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
            }
        }

        var json = message.ToJson();
        var size = Encoding.UTF8.GetByteCount(json);
        if (size > Options.MaxMessageBytes)
        {
            throw new MessageTooLargeException(message.TaskName, size, Options.MaxMessageBytes);
        }

        return (json, JsonSerializer.Serialize(message.Labels, LabelsJsonContext.Default.DictionaryStringString));
    }

    private static TimeSpan DelayOf(KickOptions? options) => options?.Delay is { } d && d > TimeSpan.Zero ? d : TimeSpan.Zero;

    private int MaxAttemptsOf(KickOptions? options) => options?.MaxAttempts ?? Options.DefaultMaxAttempts;

    private async Task<IReadOnlySet<long>> LeaseCommandAsync(string sql, string workerId, IReadOnlyCollection<LeaseRef> leases,
        bool withLease, CancellationToken cancellationToken)
    {
        if (leases.Count == 0)
        {
            return new HashSet<long>();
        }

        await using var batch = DataSource.CreateBatch();
        batch.BatchCommands.Add(CreateLeaseCommand(sql, workerId, leases, withLease));
        await using var reader = await batch.ExecuteReaderAsync(cancellationToken);
        return await ReadIdsAsync(reader, cancellationToken);
    }

    internal NpgsqlBatchCommand CreateAckCommand(string workerId, IReadOnlyCollection<LeaseRef> leases)
        => CreateLeaseCommand(_sql.Ack, workerId, leases, withLease: false);

    private NpgsqlBatchCommand CreateLeaseCommand(string sql, string workerId, IReadOnlyCollection<LeaseRef> leases, bool withLease)
    {
        var command = new NpgsqlBatchCommand(sql);
        command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = leases.Select(l => l.Id).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = leases.Select(l => l.Attempt).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        if (withLease)
        {
            command.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = Options.LeaseDuration });
        }

        return command;
    }

    internal static async Task<HashSet<long>> ReadIdsAsync(NpgsqlDataReader reader, CancellationToken cancellationToken)
    {
        var ids = new HashSet<long>();
        while (await reader.ReadAsync(cancellationToken))
        {
            ids.Add(reader.GetInt64(0));
        }

        return ids;
    }

    private void OnNotification(string payload)
    {
        if (payload == Options.Queue)
        {
            WakeSubscribers();
        }
    }

    private void WakeSubscribers() => _subscribers.Invoke();
}

[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, string>))]
internal sealed partial class LabelsJsonContext : System.Text.Json.Serialization.JsonSerializerContext;
