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
    private readonly ListSql _list;
    private readonly ILogger _logger;
    private readonly ComponentResources _resources;
    private readonly Subscribers _subscribers = new();
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, Subscribers> _queueSubscribers = new(StringComparer.Ordinal);
    private readonly Subscribers _cancelSubscribers = new();
    private readonly CoalescingNotifier _notifier;

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
        _list = new ListSql(PgIdentifier.QualifiedName(Options.Schema, nameof(Options.Schema), Options.MessagesTable, nameof(Options.MessagesTable)));
        _logger = (loggerFactory ?? NullLoggerFactory.Instance).CreateLogger<PostgresBroker>();
        _resources = new ComponentResources(dataSource, ownsDataSource, new NotificationListener(dataSource, listenConnection, [Options.Channel],
            (_, payload) => OnNotification(payload), WakeSubscribers, _logger, "broker"));
        _notifier = new CoalescingNotifier(dataSource, Options.Channel, Options.Queue, _logger);
        CanPrepare = PreparedStatements.AreSupported(dataSource);
    }

    /// <summary>The data source every query runs on.</summary>
    public NpgsqlDataSource DataSource { get; }

    /// <summary>The settings.</summary>
    public PostgresBrokerOptions Options { get; }

    /// <summary>Whether the hot statements run prepared on this data source (not with multiplexing).</summary>
    internal bool CanPrepare { get; }

    /// <summary>True while the LISTEN connection is up.</summary>
    public bool IsListening => _resources.Listener.IsConnected;

    /// <summary>Backend process id of the LISTEN connection (0 while disconnected); for diagnostics and tests.</summary>
    public int ListenerProcessId => _resources.Listener.BackendProcessId;

    /// <summary>Completes once the LISTEN connection is up.</summary>
    public Task ListenerConnected => _resources.Listener.Connected;

    /// <summary>
    /// Runs the migrations (unless <see cref="PostgresBrokerOptions.RunMigrations"/> is false; then only checks that the
    /// schema is not newer than this code in a way it cannot run against). Idempotent.
    /// </summary>
    /// <exception cref="SchemaVersionException">The database's schema is newer and not compatible with this code.</exception>
    public Task StartAsync(CancellationToken cancellationToken = default)
        => _resources.Start.RunOnceAsync(ct => Options.RunMigrations
            ? MigrateAsync(ct)
            : SchemaMigrator.VerifyAsync(DataSource, Options.Schema, Options.MessagesTable, _sql.Migrations.Count, ct), cancellationToken);

    /// <summary>Creates or upgrades the messages table and its indexes. Safe to call from many processes at once.</summary>
    public Task MigrateAsync(CancellationToken cancellationToken = default)
        => SchemaMigrator.MigrateAndLogAsync(DataSource, Options.Schema, Options.MessagesTable, _sql.Migrations, _logger, cancellationToken);

    /// <summary>
    /// Kicks one task. It is committed when this returns; workers are notified right after, by one NOTIFY per burst
    /// of kicks from this broker (sent in the background; awaited by <see cref="DisposeAsync"/>; workers also poll).
    /// </summary>
    /// <returns>The row id and task id; for a unique kick that found its duplicate, the existing task's, with
    /// <see cref="KickResult.Duplicate"/> set.</returns>
    public async Task<KickResult> KickAsync(TaskMessage message, KickOptions? options = null, CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var connection = await DataSource.OpenConnectionAsync(cancellationToken);
        var result = await KickCoreAsync(connection, null, message, options, pooledConnection: true, cancellationToken);
        if (!result.Duplicate && !Options.NotifyTaskIds) // with NotifyTaskIds the statement notified its row
        {
            NotifierOf(options?.Queue).Signal();
        }

        return result;
    }

    /// <summary>
    /// Kicks one task inside the caller's connection and transaction: it becomes visible (and workers are notified)
    /// only when the caller commits, and vanishes on rollback. The connection is never closed here.
    /// </summary>
    /// <returns>See <see cref="KickAsync(TaskMessage, KickOptions?, CancellationToken)"/>.</returns>
    public async Task<KickResult> KickAsync(TaskMessage message, NpgsqlConnection connection, NpgsqlTransaction? transaction,
        KickOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        await StartAsync(cancellationToken);
        return await KickCoreAsync(connection, transaction, message, options, pooledConnection: false, cancellationToken);
    }

    /// <summary>
    /// Kicks many tasks in one transaction: one binary COPY and one notification. All are inserted or none. With
    /// <see cref="KickOptions.Unique"/>, one INSERT that skips every duplicate (of a queued task, or within the list).
    /// </summary>
    /// <returns>The number of tasks inserted (duplicates not counted).</returns>
    public async Task<int> KickManyAsync(IReadOnlyCollection<TaskMessage> messages, KickOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        return await KickManyCoreAsync(messages, callerConnection: null, transaction: null, options, cancellationToken);
    }

    /// <summary>
    /// Kicks many tasks inside the caller's connection and transaction (visible on commit, gone on rollback). With no
    /// transaction given, the tasks get one of their own on that connection (all or none).
    /// </summary>
    public async Task<int> KickManyAsync(IReadOnlyCollection<TaskMessage> messages, NpgsqlConnection connection,
        NpgsqlTransaction? transaction, KickOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        await StartAsync(cancellationToken);
        return await KickManyCoreAsync(messages, connection, transaction, options, cancellationToken);
    }

    /// <summary>Claims up to <paramref name="maxCount"/> due tasks for <paramref name="workerId"/>, highest priority first,
    /// leasing each for <see cref="PostgresBrokerOptions.LeaseDuration"/> (database clock). Scheduled and retryable tasks
    /// that have come due are made available first.</summary>
    internal async Task<IReadOnlyList<ClaimedTask>> ClaimAsync(string workerId, int maxCount, CancellationToken cancellationToken = default)
        => (await ClaimWithNextDueAsync(workerId, maxCount, cancellationToken)).Claimed;

    /// <summary>How long until the next scheduled or retryable task of this broker's queue is due (null: none).</summary>
    internal Task<TimeSpan?> GetNextDueAsync(CancellationToken cancellationToken) => GetNextDueAsync([Options.Queue], cancellationToken);

    /// <summary>How long until the next scheduled or retryable task of any of <paramref name="queues"/> is due (null: none).</summary>
    internal async Task<TimeSpan?> GetNextDueAsync(IReadOnlyList<string> queues, CancellationToken cancellationToken)
    {
        await using var command = DataSource.CreateCommand(_sql.NextDue);
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = queues.ToArray() });
        return await command.ExecuteScalarAsync(cancellationToken) is TimeSpan due ? due : null;
    }

    /// <summary>Most scheduled or retryable rows made available per claim (the rest by the next claims).</summary>
    internal const int PromoteBatchSize = 1000;

    /// <summary>
    /// <see cref="ClaimAsync"/>, and how long until the queue's next scheduled or retryable task is due (null: none), so a
    /// worker can wake exactly then. One round trip: promote, claim, next due.
    /// </summary>
    /// <param name="workerId">The claiming worker.</param>
    /// <param name="maxCount">Most rows claimed.</param>
    /// <param name="promote">Make due scheduled and retryable rows available first. A caller that knows (from the last
    /// next-due time) that none is due skips it: its planning alone costs about a millisecond per claim.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <param name="readNextDue">Also read the next due time (else <c>NextDue</c> is null and <c>NextDueRead</c> false).</param>
    internal Task<(IReadOnlyList<ClaimedTask> Claimed, TimeSpan? NextDue)> ClaimWithNextDueAsync(string workerId, int maxCount,
        CancellationToken cancellationToken, bool promote = true, bool readNextDue = true)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxCount, 1);
        return ClaimWithNextDueAsync(workerId, [(Options.Queue, maxCount)], readNextDue ? [Options.Queue] : null, cancellationToken, promote);
    }

    /// <summary>
    /// Claims from several queues of this table in one round trip: up to each entry's limit from its queue (each
    /// promoting its due scheduled and retryable rows first when <paramref name="promote"/>), and reads how long until
    /// the next scheduled or retryable task of <paramref name="nextDueOf"/> is due (null: not read).
    /// </summary>
    internal async Task<(IReadOnlyList<ClaimedTask> Claimed, TimeSpan? NextDue)> ClaimWithNextDueAsync(string workerId,
        IReadOnlyList<(string Queue, int Limit)> claims, IReadOnlyList<string>? nextDueOf, CancellationToken cancellationToken, bool promote = true)
    {
        ArgumentException.ThrowIfNullOrEmpty(workerId);
        await StartAsync(cancellationToken);
        await using var batch = DataSource.CreateBatch();
        var maxCount = 0;
        foreach (var (queue, limit) in claims)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(limit, 1);
            maxCount += limit;
            if (promote)
            {
                var promotion = new NpgsqlBatchCommand(_sql.Promote);
                promotion.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
                promotion.Parameters.Add(new NpgsqlParameter<int> { TypedValue = PromoteBatchSize });
                promotion.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
                batch.BatchCommands.Add(promotion);
            }

            var claim = new NpgsqlBatchCommand(_sql.Claim);
            claim.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
            claim.Parameters.Add(new NpgsqlParameter<int> { TypedValue = limit });
            claim.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
            claim.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = Options.LeaseDuration });
            batch.BatchCommands.Add(claim);
        }

        if (nextDueOf is not null)
        {
            var nextDue = new NpgsqlBatchCommand(_sql.NextDue);
            nextDue.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = nextDueOf.ToArray() });
            batch.BatchCommands.Add(nextDue);
        }

        var claimed = new List<ClaimedTask>(maxCount);
        TimeSpan? due = null;
        await using (var reader = await batch.ExecuteReaderAsync(cancellationToken))
        {
            for (var i = 0; i < claims.Count; i++)
            {
                if (i > 0)
                {
                    await reader.NextResultAsync(cancellationToken);
                }

                if (promote)
                {
                    while (await reader.ReadAsync(cancellationToken))
                    {
                        // promoted queues: their NOTIFY wakes other workers; this one claims right below
                    }

                    await reader.NextResultAsync(cancellationToken);
                }

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
                        Claim = reader.GetInt32(10),
                        Queue = reader.GetString(11),
                    });
                }
            }

            if (nextDueOf is not null && await reader.NextResultAsync(cancellationToken) && await reader.ReadAsync(cancellationToken) && !reader.IsDBNull(0))
            {
                due = reader.GetFieldValue<TimeSpan>(0);
            }
        }

        // UPDATE ... RETURNING does not keep the CTE's order.
        foreach (var task in claimed)
        {
            TaskiqDiagnostics.QueueWait.Record(Math.Max(0, (task.ClaimedAt - task.RunAt).TotalSeconds),
                new KeyValuePair<string, object?>(MessagingTags.Destination, task.Queue));
        }

        // In the order of the queues asked for, then as the claim orders them.
        var order = claims.Count == 1 ? null : claims.Select((c, i) => (c.Queue, i)).ToDictionary(c => c.Queue, c => c.i);
        claimed.Sort((a, b) => order is not null && a.Queue != b.Queue ? order[a.Queue].CompareTo(order[b.Queue])
            : a.Priority != b.Priority ? b.Priority.CompareTo(a.Priority)
            : a.RunAt != b.RunAt ? a.RunAt.CompareTo(b.RunAt) : a.Id.CompareTo(b.Id));
        return (claimed, due);
    }

    /// <summary>Completes claims (deletes their rows) if each lease is still this worker's.</summary>
    /// <returns>The row ids that were completed; a missing id means the lease was lost (e.g. rescued and rerun).</returns>
    internal Task<IReadOnlySet<long>> AckAsync(string workerId, IReadOnlyCollection<LeaseRef> leases, CancellationToken cancellationToken = default)
        => LeaseCommandAsync(_sql.Ack, workerId, leases, withLease: false, cancellationToken);

    /// <summary>
    /// Completes a claim inside the caller's connection and transaction (see <see cref="TaskContext.CompleteInTransactionAsync{T}"/>):
    /// the row becomes completed (or is deleted without a completed retention) only if the caller commits.
    /// </summary>
    /// <returns>False when the lease is no longer <paramref name="workerId"/>'s: the caller must roll back.</returns>
    internal async Task<bool> CompleteInTransactionAsync(string workerId, LeaseRef lease, NpgsqlConnection connection, NpgsqlTransaction? transaction,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        await using var command = new NpgsqlCommand(_sql.Ack, connection, transaction);
        command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = [lease.Id] });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = [lease.Claim] });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken);
    }

    /// <summary><see cref="AckAsync"/> by claim: which leases (row and attempt) were completed.</summary>
    internal async Task<IReadOnlySet<LeaseRef>> AckLeasesAsync(string workerId, IReadOnlyCollection<LeaseRef> leases, CancellationToken cancellationToken)
        => await LeaseRefCommandAsync(_sql.Ack, workerId, leases, withLease: false, cancellationToken);

    /// <summary>
    /// The ack at receipt (<see cref="AckMode.WhenReceived"/>), safe to repeat after a failure: with
    /// <paramref name="afterFailure"/> it also returns the claims an earlier attempt acked although its reply was lost.
    /// </summary>
    internal async Task<IReadOnlySet<LeaseRef>> AckOnReceiptAsync(string workerId, IReadOnlyCollection<LeaseRef> leases, bool afterFailure,
        CancellationToken cancellationToken)
    {
        var refs = new HashSet<LeaseRef>();
        await using var command = DataSource.CreateCommand(_sql.AckOnReceipt);
        command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = leases.Select(l => l.Id).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = leases.Select(l => l.Claim).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        command.Parameters.Add(new NpgsqlParameter<bool> { TypedValue = afterFailure });
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            refs.Add(new LeaseRef(reader.GetInt64(0), reader.GetInt32(1)));
        }

        return refs;
    }

    /// <summary><see cref="RenewLeasesAsync"/> by claim: which leases (row and attempt) are still this worker's, now extended.</summary>
    internal async Task<IReadOnlySet<LeaseRef>> RenewLeaseRefsAsync(string workerId, IReadOnlyCollection<LeaseRef> leases, CancellationToken cancellationToken)
        => await LeaseRefCommandAsync(_sql.Renew, workerId, leases, withLease: true, cancellationToken);

    /// <summary>Extends the leases that are still this worker's.</summary>
    /// <returns>The row ids renewed; a missing id means that lease was lost.</returns>
    internal Task<IReadOnlySet<long>> RenewLeasesAsync(string workerId, IReadOnlyCollection<LeaseRef> leases, CancellationToken cancellationToken = default)
        => LeaseCommandAsync(_sql.Renew, workerId, leases, withLease: true, cancellationToken);

    /// <summary>
    /// Synchronous <see cref="RenewLeasesAsync"/> for the worker's dedicated renewal thread: blocking I/O on its own
    /// thread keeps leases alive even when handlers starve the thread pool (which async continuations need).
    /// </summary>
    /// <remarks>
    /// With <paramref name="everythingOfWorker"/>, every row leased to <paramref name="workerId"/> is renewed, held or
    /// not, except <paramref name="givenUp"/>: while a claim is in flight its rows are leased in the database before the
    /// worker has registered them (under thread-pool starvation that gap can outlast a lease).
    /// </remarks>
    internal IReadOnlySet<LeaseRef> RenewLeases(NpgsqlConnection connection, string workerId, IReadOnlyCollection<LeaseRef> leases,
        IReadOnlyCollection<bool> started, bool everythingOfWorker = false, IReadOnlyCollection<LeaseRef>? givenUp = null)
        => RenewLeases(connection, workerId, leases, started, everythingOfWorker, givenUp, out _);

    /// <summary><see cref="RenewLeases(NpgsqlConnection, string, IReadOnlyCollection{LeaseRef}, IReadOnlyCollection{bool}, bool, IReadOnlyCollection{LeaseRef}?)"/>,
    /// and which of the renewed claims have a cancel request (null: none). <paramref name="queues"/>: the worker's queues
    /// (null: this broker's), whose rows <paramref name="everythingOfWorker"/> renews.</summary>
    internal IReadOnlySet<LeaseRef> RenewLeases(NpgsqlConnection connection, string workerId, IReadOnlyCollection<LeaseRef> leases,
        IReadOnlyCollection<bool> started, bool everythingOfWorker, IReadOnlyCollection<LeaseRef>? givenUp, out HashSet<LeaseRef>? cancelRequested,
        IReadOnlyList<string>? queues = null)
    {
        cancelRequested = null;
        if (leases.Count == 0 && !everythingOfWorker)
        {
            return new HashSet<LeaseRef>();
        }

        using var batch = new NpgsqlBatch(connection);
        if (everythingOfWorker)
        {
            var command = new NpgsqlBatchCommand(_sql.RenewAllOfWorker);
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
            command.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = Options.LeaseDuration });
            command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = queues?.ToArray() ?? [Options.Queue] });
            command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = givenUp?.Select(g => g.Id).ToArray() ?? [] });
            command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = givenUp?.Select(g => g.Claim).ToArray() ?? [] });
            batch.BatchCommands.Add(command);
        }
        else
        {
            batch.BatchCommands.Add(CreateLeaseCommand(_sql.Renew, workerId, leases, withLease: true, started));
        }

        using var reader = batch.ExecuteReader();
        var renewed = new HashSet<LeaseRef>();
        while (reader.Read())
        {
            var lease = new LeaseRef(reader.GetInt64(0), reader.GetInt32(1));
            renewed.Add(lease);
            if (reader.GetBoolean(2))
            {
                (cancelRequested ??= []).Add(lease);
            }
        }

        return renewed;
    }

    /// <summary>
    /// Returns to the queue every row leased to <paramref name="workerId"/> that it does not hold: rows whose claim
    /// committed on the server while the connection died before the worker read them (a restart, a network cut).
    /// Without this they would wait out their lease. Only the claiming loop may call it, between claims.
    /// <paramref name="queues"/>: the worker's queues (null: this broker's).
    /// </summary>
    internal async Task<int> ReleaseOrphansAsync(string workerId, IReadOnlyCollection<long> held, CancellationToken cancellationToken,
        IReadOnlyList<string>? queues = null)
    {
        await using var command = DataSource.CreateCommand(_sql.ReleaseOrphans);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = held.ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = queues?.ToArray() ?? [Options.Queue] });
        return await command.ExecuteNonQueryAsync(cancellationToken);
    }

    /// <summary>Returns claimed but unstarted tasks to the queue at once, without using up an attempt.</summary>
    internal Task<IReadOnlySet<long>> ReleaseAsync(string workerId, IReadOnlyCollection<LeaseRef> leases, CancellationToken cancellationToken = default)
        => LeaseCommandAsync(_sql.Release, workerId, leases, withLease: false, cancellationToken);

    /// <summary>
    /// Records failed attempts: a retryable failure with attempts left becomes <see cref="TaskState.Retryable"/>, due
    /// after an exponential backoff with jitter (computed in SQL); otherwise the task is <see cref="TaskState.Discarded"/>.
    /// The reason is kept in <c>last_error</c>.
    /// </summary>
    /// <returns>For each row whose lease was still ours, its new state.</returns>
    internal async Task<IReadOnlyDictionary<long, TaskState>> FailAsync(string workerId, IReadOnlyCollection<TaskFailure> failures,
        CancellationToken cancellationToken = default)
    {
        if (failures.Count == 0)
        {
            return new Dictionary<long, TaskState>();
        }

        await using var batch = DataSource.CreateBatch();
        batch.BatchCommands.Add(CreateFailCommand(workerId, failures));
        await using var reader = await batch.ExecuteReaderAsync(cancellationToken);
        var outcome = new Dictionary<long, TaskState>();
        while (await reader.ReadAsync(cancellationToken))
        {
            outcome[reader.GetInt64(0)] = TaskStates.FromStored(reader.GetString(1));
        }

        return outcome;
    }

    /// <summary><see cref="FailAsync"/> by claim: the new status of each lease (row and attempt) that was still ours.</summary>
    internal async Task<IReadOnlyDictionary<LeaseRef, TaskState>> FailLeasesAsync(string workerId, IReadOnlyCollection<TaskFailure> failures,
        CancellationToken cancellationToken)
    {
        var outcome = new Dictionary<LeaseRef, TaskState>();
        if (failures.Count == 0)
        {
            return outcome;
        }

        await using var batch = DataSource.CreateBatch();
        batch.BatchCommands.Add(CreateFailCommand(workerId, failures));
        await using var reader = await batch.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            outcome[new LeaseRef(reader.GetInt64(0), reader.GetInt32(2))] = TaskStates.FromStored(reader.GetString(1));
        }

        return outcome;
    }

    /// <summary>
    /// Hands back tasks acked at claim (<see cref="AckMode.WhenReceived"/>) that never started: their rows become available
    /// again (or are inserted again when they were deleted), so a stopping worker loses none. The attempt they were claimed
    /// for is not counted.
    /// </summary>
    internal async Task<long> RequeueAsync(IReadOnlyCollection<ClaimedTask> tasks, CancellationToken cancellationToken)
    {
        if (tasks.Count == 0)
        {
            return 0;
        }

        await using var command = DataSource.CreateCommand(_sql.Requeue);
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = tasks.Select(t => t.Queue).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = tasks.Select(t => t.TaskId).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = tasks.Select(t => t.TaskName).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = tasks.Select(t => t.Message).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = tasks.Select(t => LabelsOf(t.Message)).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = tasks.Select(t => t.Priority).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = tasks.Select(t => t.MaxAttempts).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = tasks.Select(t => t.Attempt - 1).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = tasks.Select(t => t.Id).ToArray() });
        return (long)(await command.ExecuteScalarAsync(cancellationToken))!;

        static string LabelsOf(string message)
        {
            try
            {
                return JsonSerializer.Serialize(TaskMessage.FromJson(message).Labels, LabelsJsonContext.Default.DictionaryStringString);
            }
            catch (Exception ex) when (ex is JsonException or NotSupportedException or InvalidOperationException)
            {
                return "{}"; // malformed: the worker that claims it dead-letters it with the reason
            }
        }
    }

    internal NpgsqlBatchCommand CreateFailCommand(string workerId, IReadOnlyCollection<TaskFailure> failures)
    {
        var command = new NpgsqlBatchCommand(_sql.Fail);
        command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = failures.Select(f => f.Lease.Id).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = failures.Select(f => f.Lease.Claim).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = failures.Select(f => f.Error).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<bool[]> { TypedValue = failures.Select(f => f.Retry).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        command.Parameters.Add(new NpgsqlParameter<double> { TypedValue = Options.RetryBaseDelay.TotalSeconds });
        command.Parameters.Add(new NpgsqlParameter<double> { TypedValue = Options.RetryMaxDelay.TotalSeconds });
        AddFailureDetails(command.Parameters, failures);
        return command;
    }

    /// <summary>The per-failure arrays of <see cref="BrokerSql.FailuresUnnest"/>: snooze, max attempts, base and max delay.</summary>
    internal static void AddFailureDetails(NpgsqlParameterCollection parameters, IReadOnlyCollection<TaskFailure> failures)
    {
        parameters.Add(new NpgsqlParameter<double?[]> { TypedValue = failures.Select(f => f.SnoozeFor?.TotalSeconds).ToArray() });
        parameters.Add(new NpgsqlParameter<int?[]> { TypedValue = failures.Select(f => f.MaxAttempts).ToArray() });
        parameters.Add(new NpgsqlParameter<double?[]> { TypedValue = failures.Select(f => f.RetryBaseDelay?.TotalSeconds).ToArray() });
        parameters.Add(new NpgsqlParameter<double?[]> { TypedValue = failures.Select(f => f.RetryMaxDelay?.TotalSeconds).ToArray() });
    }

    /// <summary>
    /// How many times at least a rescue gives back the attempt of a claim that was never seen to start (a prefetched
    /// task of a worker that died); <c>max_attempts</c> when that is larger. Past it the attempts count, so a task that
    /// kills its worker before the first renewal still ends dead-lettered.
    /// </summary>
    internal const int MinUnstartedRefunds = 3;

    /// <summary>
    /// Returns tasks whose lease expired (their worker died or hung), or whose worker's heartbeat is older than
    /// <see cref="PostgresBrokerOptions.WorkerStaleAfter"/>, to available, or discards them when their
    /// attempts are used up. A claim that was never seen to start (no renewal recorded its start) gets its attempt back. Any worker may call this; rows are locked with SKIP LOCKED so callers never collide.
    /// </summary>
    internal async Task<IReadOnlyList<RescuedTask>> RescueExpiredLeasesAsync(int maxCount = 1000, CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Rescue);
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = maxCount });
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = MinUnstartedRefunds });
        command.Parameters.Add(new NpgsqlParameter<bool> { TypedValue = Options.WorkerStaleAfter is not null });
        var rescued = new List<RescuedTask>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            rescued.Add(new RescuedTask(reader.GetString(0), reader.GetString(1), reader.GetString(2) == TaskStates.Discarded)
            {
                Cancelled = reader.GetString(2) == TaskStates.Cancelled,
            });
        }

        return rescued;
    }

    /// <summary>
    /// The newest row of <paramref name="taskId"/>: its state, attempts, message, worker and last error. Null when there is
    /// no row (never kicked, or pruned after its retention; with <see cref="PostgresBrokerOptions.CompletedRetention"/>
    /// zero a completed task's row is deleted at once).
    /// </summary>
    public async Task<TaskRecord?> GetTaskAsync(string taskId, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(taskId);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.State);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken) ? ReadRecord(reader) : null;
    }

    /// <summary>Reads the columns of <see cref="BrokerSql.RecordColumns"/>.</summary>
    internal static TaskRecord ReadRecord(NpgsqlDataReader reader) => new()
    {
        Id = reader.GetInt64(0),
        TaskId = reader.GetString(1),
        TaskName = reader.GetString(2),
        Queue = reader.GetString(3),
        State = TaskStates.FromStored(reader.GetString(4)),
        Priority = reader.GetInt32(5),
        Attempts = reader.GetInt32(6),
        MaxAttempts = reader.GetInt32(7),
        RunAt = reader.GetFieldValue<DateTimeOffset>(8),
        CreatedAt = reader.GetFieldValue<DateTimeOffset>(9),
        FinishedAt = reader.IsDBNull(10) ? null : reader.GetFieldValue<DateTimeOffset>(10),
        LastError = reader.IsDBNull(11) ? null : reader.GetString(11),
        Worker = reader.IsDBNull(12) ? null : reader.GetString(12),
        MessageJson = reader.GetString(13),
        Labels = ReadLabels(reader.GetString(14)),
        History = ReadHistory(reader.GetString(15)),
    };

    private static List<TaskAttempt> ReadHistory(string json)
    {
        var history = new List<TaskAttempt>();
        using var document = JsonDocument.Parse(json);
        foreach (var entry in document.RootElement.EnumerateArray())
        {
            history.Add(new TaskAttempt(
                entry.TryGetProperty("attempt", out var a) ? a.GetInt32() : 0,
                entry.TryGetProperty("worker", out var w) ? w.GetString() : null,
                entry.TryGetProperty("started", out var s) ? s.GetDateTimeOffset() : null,
                entry.GetProperty("ended").GetDateTimeOffset(),
                entry.GetProperty("outcome").GetString()!,
                entry.TryGetProperty("error", out var e) ? e.GetString() : null));
        }

        return history;
    }

    /// <summary>Labels as stored (other producers may store numbers or booleans: given as their JSON text).</summary>
    private static Dictionary<string, string> ReadLabels(string json)
    {
        var labels = new Dictionary<string, string>();
        using var document = JsonDocument.Parse(json);
        if (document.RootElement.ValueKind == JsonValueKind.Object)
        {
            foreach (var property in document.RootElement.EnumerateObject())
            {
                labels[property.Name] = property.Value.ValueKind == JsonValueKind.String ? property.Value.GetString()! : property.Value.GetRawText();
            }
        }

        return labels;
    }

    /// <summary>
    /// Lists the tasks of one queue in one state, a page at a time (see <see cref="TaskQuery"/>): on the state's partial
    /// index, in its order, from a keyset cursor, so every page is cheap on a table of any size. A task-name filter
    /// reads at most <see cref="TaskQuery.MaxScan"/> index entries per page and may return a short page with a cursor.
    /// </summary>
    /// <exception cref="ArgumentException">A limit outside 1 to <see cref="TaskQuery.MaxLimit"/>, an invalid queue name, or a
    /// cursor that is not one this method returned.</exception>
    public async Task<TaskPage> ListTasksAsync(TaskQuery query, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(query);
        if (query.Limit is < 1 or > TaskQuery.MaxLimit)
        {
            throw new ArgumentException($"{nameof(TaskQuery)}.{nameof(TaskQuery.Limit)} must be 1 to {TaskQuery.MaxLimit}.", nameof(query));
        }

        var queue = QueueOf(query.Queue);
        var cursor = query.Cursor is null ? ((int, DateTimeOffset?, long)?)null : DecodeCursor(query.Cursor);
        await StartAsync(cancellationToken);
        var scanLimit = query.TaskName is null ? query.Limit + 1 : Math.Max(TaskQuery.MaxScan, query.Limit + 1);
        var scanned = new List<(long Id, int Priority, DateTimeOffset? At, bool Matches)>();
        await using (var command = DataSource.CreateCommand(_list.Scan(query.State, query.Order, cursor is not null)))
        {
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
            command.Parameters.Add(NullableText(query.TaskName));
            command.Parameters.Add(new NpgsqlParameter { Value = (object?)query.From?.ToUniversalTime() ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.TimestampTz });
            command.Parameters.Add(new NpgsqlParameter { Value = (object?)query.To?.ToUniversalTime() ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.TimestampTz });
            command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = scanLimit });
            if (cursor is { } c)
            {
                command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = c.Item1 });
                command.Parameters.Add(new NpgsqlParameter { Value = (object?)c.Item2 ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.TimestampTz });
                command.Parameters.Add(new NpgsqlParameter<long> { TypedValue = c.Item3 });
            }

            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            while (await reader.ReadAsync(cancellationToken))
            {
                scanned.Add((reader.GetInt64(0), reader.GetInt32(1), reader.IsDBNull(2) ? null : reader.GetFieldValue<DateTimeOffset>(2), reader.GetBoolean(3)));
            }
        }

        var hits = new List<(long Id, int Priority, DateTimeOffset? At, bool Matches)>();
        var last = -1;
        for (var i = 0; i < scanned.Count && hits.Count < query.Limit; i++)
        {
            last = i;
            if (scanned[i].Matches)
            {
                hits.Add(scanned[i]);
            }
        }

        // More may follow when rows were scanned past the last one looked at, or the scan stopped at its bound.
        var more = last < scanned.Count - 1 || scanned.Count == scanLimit;
        var next = more && last >= 0 ? EncodeCursor(scanned[last].Priority, scanned[last].At, scanned[last].Id) : null;
        var records = new Dictionary<long, TaskRecord>();
        if (hits.Count > 0)
        {
            await using var command = DataSource.CreateCommand(_list.Records);
            command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = hits.Select(h => h.Id).ToArray() });
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            while (await reader.ReadAsync(cancellationToken))
            {
                var record = ReadRecord(reader);
                records[record.Id] = record;
            }
        }

        // A row that changed state between the two reads is left out of this page (the cursor already passed it).
        return new TaskPage(hits.Where(h => records.TryGetValue(h.Id, out var r) && r.State == query.State).Select(h => records[h.Id]).ToArray(), next);
    }

    private static string EncodeCursor(int priority, DateTimeOffset? at, long id)
        => Convert.ToBase64String(Encoding.UTF8.GetBytes(string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"1|{priority}|{(at is { } t ? t.UtcTicks.ToString(System.Globalization.CultureInfo.InvariantCulture) : "")}|{id}")));

    private static (int, DateTimeOffset?, long) DecodeCursor(string cursor)
    {
        try
        {
            var parts = Encoding.UTF8.GetString(Convert.FromBase64String(cursor)).Split('|');
            if (parts is ["1", var p, var t, var i])
            {
                var inv = System.Globalization.CultureInfo.InvariantCulture;
                return (int.Parse(p, inv), t.Length == 0 ? null : new DateTimeOffset(long.Parse(t, inv), TimeSpan.Zero), long.Parse(i, inv));
            }
        }
        catch (Exception ex) when (ex is FormatException or OverflowException or ArgumentException)
        {
        }

        throw new ArgumentException("The cursor is not one ListTasksAsync returned.", nameof(cursor));
    }

    /// <summary>Number of tasks of this broker's queue in each state, counted exactly (reads every row counted).</summary>
    public async Task<IReadOnlyDictionary<TaskState, long>> GetQueueCountsAsync(CancellationToken cancellationToken = default)
        => (await CountAsync(Options.Queue, limit: null, cancellationToken)).ToDictionary(kv => kv.Key, kv => kv.Value.Count);

    /// <summary>Counts past this many rows per state are the planner's estimate (the worker's depth gauge uses the same bound).</summary>
    public const int StatisticsExactUpTo = 10_000;

    /// <summary>
    /// A queue's statistics: tasks per state (exact up to <see cref="StatisticsExactUpTo"/>, estimated beyond), the age of
    /// its oldest available task, and whether it is paused. Every part reads a partial index with a bounded scan, so it
    /// is cheap enough to poll every few seconds on a table of any size (the worker's depth gauge reads the same counts).
    /// </summary>
    /// <param name="queue">The queue; default: this broker's.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    public async Task<QueueStatistics> GetQueueStatisticsAsync(string? queue = null, CancellationToken cancellationToken = default)
    {
        var name = QueueOf(queue);
        await StartAsync(cancellationToken);
        var counts = await CountAsync(name, StatisticsExactUpTo, cancellationToken);
        var depth = new Dictionary<TaskState, long>();
        var estimated = new HashSet<TaskState>();
        foreach (var (state, (count, capped)) in counts)
        {
            depth[state] = capped ? Math.Max(count, await EstimateAsync(name, TaskStates.ToStored(state), cancellationToken)) : count;
            if (capped)
            {
                estimated.Add(state);
            }
        }

        await using var oldest = DataSource.CreateCommand(_sql.OldestAvailable);
        oldest.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
        var age = await oldest.ExecuteScalarAsync(cancellationToken) is TimeSpan a ? a : (TimeSpan?)null;
        var finished = new Dictionary<TaskState, long>();
        await using (var recent = DataSource.CreateCommand(_sql.FinishedLastMinute))
        {
            recent.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
            recent.Parameters.Add(new NpgsqlParameter<int> { TypedValue = StatisticsExactUpTo });
            await using var reader = await recent.ExecuteReaderAsync(cancellationToken);
            while (await reader.ReadAsync(cancellationToken))
            {
                finished[TaskStates.FromStored(reader.GetString(0))] = reader.GetInt64(1);
            }
        }

        return new QueueStatistics(name, depth, estimated, age, await GetQueuePausedAtAsync(name, cancellationToken)) { FinishedLastMinute = finished };
    }

    /// <summary>
    /// The queue's depth by state, cheap at any table size: each state is counted exactly up to
    /// <paramref name="exactUpTo"/> rows (a bounded index scan); past that the planner's estimate is given instead.
    /// </summary>
    internal async Task<IReadOnlyDictionary<TaskState, long>> GetQueueDepthAsync(string queue, int exactUpTo, CancellationToken cancellationToken)
    {
        var counts = await CountAsync(queue, exactUpTo, cancellationToken);
        var depth = new Dictionary<TaskState, long>();
        foreach (var (state, (count, capped)) in counts)
        {
            depth[state] = capped ? Math.Max(count, await EstimateAsync(queue, TaskStates.ToStored(state), cancellationToken)) : count;
        }

        return depth;
    }

    /// <summary>
    /// Deletes finished rows of this broker's queue older than their retention (<see cref="PostgresBrokerOptions.CompletedRetention"/>,
    /// <see cref="PostgresBrokerOptions.CancelledRetention"/>, <see cref="PostgresBrokerOptions.DiscardedRetention"/>), at
    /// most <paramref name="maxCount"/> per state, oldest first. Workers call it periodically.
    /// </summary>
    /// <returns>Rows deleted.</returns>
    public Task<long> PruneFinishedAsync(int maxCount = 1000, CancellationToken cancellationToken = default)
        => PruneFinishedAsync(Options.Queue, maxCount, cancellationToken);

    /// <summary><see cref="PruneFinishedAsync(int, CancellationToken)"/> for another queue of this table.</summary>
    internal async Task<long> PruneFinishedAsync(string queue, int maxCount, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxCount, 1);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Prune);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
        command.Parameters.Add(RetentionParameter(Options.CompletedRetention));
        command.Parameters.Add(RetentionParameter(Options.CancelledRetention));
        command.Parameters.Add(RetentionParameter(Options.DiscardedRetention));
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = maxCount });
        return (long)(await command.ExecuteScalarAsync(cancellationToken))!;

        static NpgsqlParameter RetentionParameter(TimeSpan retention)
            => new() { Value = retention == Timeout.InfiniteTimeSpan ? DBNull.Value : retention, NpgsqlDbType = NpgsqlDbType.Interval };
    }

    private async Task<Dictionary<TaskState, (long Count, bool Capped)>> CountAsync(string queue, int? limit, CancellationToken cancellationToken)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Counts);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
        command.Parameters.Add(new NpgsqlParameter { Value = (object?)limit ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.Bigint });
        var counts = new Dictionary<TaskState, (long, bool)>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            var count = reader.GetInt64(1);
            counts[TaskStates.FromStored(reader.GetString(0))] = (count, limit is { } l && count >= l);
        }

        return counts;
    }

    private async Task<long> EstimateAsync(string queue, string status, CancellationToken cancellationToken)
    {
        await using var command = DataSource.CreateCommand(_sql.EstimateCount);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = status });
        var plan = (string)(await command.ExecuteScalarAsync(cancellationToken))!;
        using var json = JsonDocument.Parse(plan);
        return (long)json.RootElement[0].GetProperty("Plan").GetProperty("Plan Rows").GetDouble();
    }

    /// <summary>The reason stored with a task cancelled by <see cref="CancelAsync"/> or <see cref="CancelManyAsync(TaskFilter?, CancellationToken)"/>.</summary>
    public const string CancelledReason = "Cancelled by request.";

    /// <summary>
    /// Cancels a task by id (its newest row). A queued task (available, scheduled, retryable) is cancelled at once. A running
    /// task's handler gets its <see cref="CancellationToken"/> cancelled on whichever worker runs it (a NOTIFY, with
    /// that worker's next lease renewal as the fallback), and the task then ends <see cref="TaskState.Cancelled"/>. A
    /// finished task is left as it is (<see cref="CancelOutcome.AlreadyFinished"/>).
    /// </summary>
    /// <remarks>Waiters of a task cancelled while queued get <see cref="CancelledTaskException"/> when the cancel goes
    /// through <see cref="TaskiqClient.CancelAsync"/>, which also stores the cancelled result.</remarks>
    public async Task<CancelResult> CancelAsync(string taskId, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(taskId);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Cancel);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = CancelledTaskException.ErrorType + ": " + CancelledReason });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        if (!await reader.ReadAsync(cancellationToken))
        {
            return new CancelResult(CancelOutcome.NotFound, null);
        }

        var state = TaskStates.FromStored(reader.GetString(0));
        return new CancelResult(state switch
        {
            TaskState.Running => CancelOutcome.Requested,
            _ when TaskStates.IsFinished(state) => CancelOutcome.AlreadyFinished,
            _ => CancelOutcome.Cancelled,
        }, state);
    }

    /// <summary>Rows changed per statement by the bulk operations (each batch is its own short transaction).</summary>
    internal const int BulkBatchSize = 5_000;

    /// <summary>
    /// Cancels every task of a queue that matches <paramref name="filter"/>: queued ones at once, running ones by a cancel
    /// request to their workers (see <see cref="CancelAsync"/>). Works in batches of 5,000 rows, so a large queue is never
    /// locked whole.
    /// </summary>
    /// <exception cref="ArgumentException">The filter names a finished state (cancel applies to unfinished tasks only).</exception>
    public Task<BulkCancelResult> CancelManyAsync(TaskFilter? filter = null, CancellationToken cancellationToken = default)
        => CancelManyAsync(filter, onCancelled: null, cancellationToken);

    /// <summary><see cref="CancelManyAsync(TaskFilter?, CancellationToken)"/>, handing each batch's cancelled task ids to <paramref name="onCancelled"/>.</summary>
    internal async Task<BulkCancelResult> CancelManyAsync(TaskFilter? filter, Func<IReadOnlyList<string>, CancellationToken, Task>? onCancelled,
        CancellationToken cancellationToken)
    {
        var queue = QueueOf(filter);
        var states = filter?.States ?? [TaskState.Available, TaskState.Scheduled, TaskState.Retryable, TaskState.Running];
        if (states.FirstOrDefault(TaskStates.IsFinished) is var finished && TaskStates.IsFinished(finished) && states.Contains(finished))
        {
            throw new ArgumentException($"A {finished} task cannot be cancelled; filter on unfinished states only.", nameof(filter));
        }

        await StartAsync(cancellationToken);
        long cancelled = 0, requested = 0;
        if (states.Contains(TaskState.Running))
        {
            await using var command = DataSource.CreateCommand(_sql.CancelRunning);
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
            command.Parameters.Add(NullableText(filter?.TaskName));
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
            requested = (long)(await command.ExecuteScalarAsync(cancellationToken))!;
        }

        foreach (var state in states.Where(s => s != TaskState.Running).Distinct())
        {
            while (true)
            {
                await using var command = DataSource.CreateCommand(_sql.CancelQueued[TaskStates.ToStored(state)]);
                command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
                command.Parameters.Add(NullableText(filter?.TaskName));
                command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = CancelledTaskException.ErrorType + ": " + CancelledReason });
                command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = BulkBatchSize });
                var ids = new List<string>();
                await using (var reader = await command.ExecuteReaderAsync(cancellationToken))
                {
                    while (await reader.ReadAsync(cancellationToken))
                    {
                        ids.Add(reader.GetString(0));
                    }
                }

                cancelled += ids.Count;
                if (onCancelled is not null && ids.Count > 0)
                {
                    await onCancelled(ids, cancellationToken);
                }

                if (ids.Count < BulkBatchSize)
                {
                    break;
                }
            }
        }

        return new BulkCancelResult(cancelled, requested);
    }

    /// <summary>
    /// Pauses a queue for every worker of every process: no worker claims from it (checked by each claim, so within
    /// one claim of each worker), kicks are still accepted, and it stays paused across restarts until
    /// <see cref="ResumeQueueAsync"/>. Tasks already running finish.
    /// </summary>
    /// <param name="queue">The queue; default: this broker's.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    public Task PauseQueueAsync(string? queue = null, CancellationToken cancellationToken = default)
        => SetPausedAsync(queue, paused: true, cancellationToken);

    /// <summary>Resumes a paused queue and wakes its workers. Resuming a queue that is not paused does nothing.</summary>
    /// <param name="queue">The queue; default: this broker's.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    public Task ResumeQueueAsync(string? queue = null, CancellationToken cancellationToken = default)
        => SetPausedAsync(queue, paused: false, cancellationToken);

    /// <summary>When the queue was paused; null while it is not paused.</summary>
    /// <param name="queue">The queue; default: this broker's.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    public async Task<DateTimeOffset?> GetQueuePausedAtAsync(string? queue = null, CancellationToken cancellationToken = default)
    {
        var name = QueueOf(queue);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Paused);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
        return await command.ExecuteScalarAsync(cancellationToken) is DateTime at ? new DateTimeOffset(at, TimeSpan.Zero) : null;
    }

    private async Task SetPausedAsync(string? queue, bool paused, CancellationToken cancellationToken)
    {
        var name = QueueOf(queue);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.SetPaused);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
        command.Parameters.Add(new NpgsqlParameter<bool> { TypedValue = paused });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    /// <summary>
    /// Puts a discarded (dead-lettered) task back in its queue, available at once. With <paramref name="resetAttempts"/>
    /// (default) it gets its full <c>max_attempts</c> again; otherwise its attempts are kept and it gets one more.
    /// Its last error stays readable until it runs again.
    /// </summary>
    /// <returns>True when the task was discarded and is available again; false when it was not discarded (or not found).</returns>
    public async Task<bool> RetryDiscardedAsync(string taskId, bool resetAttempts = true, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(taskId);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.RetryOne);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
        command.Parameters.Add(new NpgsqlParameter<bool> { TypedValue = resetAttempts });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        return (long)(await command.ExecuteScalarAsync(cancellationToken))! > 0;
    }

    /// <summary>
    /// The queues of this broker's table: those holding tasks that are available, scheduled, retryable or finished, those
    /// paused at some time, and those of registered workers (running tasks), in name order. One index probe per queue,
    /// so it stays cheap on a table of millions of rows.
    /// </summary>
    /// <param name="maxCount">Most queue names returned (1 to 10,000).</param>
    /// <param name="cancellationToken">Cancels the statement.</param>
    /// <returns>Queue names, ordered.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxCount"/> is out of range.</exception>
    public async Task<IReadOnlyList<string>> ListQueuesAsync(int maxCount = 1000, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxCount, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(maxCount, 10_000);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.ListQueues);
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = maxCount });
        var names = new List<string>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            names.Add(reader.GetString(0));
        }

        return names;
    }

    /// <summary>
    /// Makes a <see cref="TaskState.Scheduled"/> or <see cref="TaskState.Retryable"/> task available at once (its delay or
    /// backoff skipped; no attempt is used) and wakes the queue's workers.
    /// </summary>
    /// <param name="taskId">The task's id.</param>
    /// <param name="cancellationToken">Cancels the statement.</param>
    /// <returns>True when the task was waiting and is available now; false when it was in another state or not found.</returns>
    /// <exception cref="ArgumentException"><paramref name="taskId"/> is null or empty.</exception>
    public async Task<bool> RunNowAsync(string taskId, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(taskId);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.RunNow);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        return (long)(await command.ExecuteScalarAsync(cancellationToken))! > 0;
    }

    /// <summary>
    /// Deletes a finished task's row (completed, cancelled or discarded) before its retention ends. Unfinished tasks are
    /// left alone: cancel them first (<see cref="CancelAsync"/>), so that nothing waiting for them is left hanging. The
    /// stored result, if any, stays in the result backend until it expires.
    /// </summary>
    /// <param name="taskId">The task's id.</param>
    /// <param name="cancellationToken">Cancels the statement.</param>
    /// <returns>True when a finished row was deleted; false when the task is unfinished or not found.</returns>
    /// <exception cref="ArgumentException"><paramref name="taskId"/> is null or empty.</exception>
    public async Task<bool> DeleteFinishedTaskAsync(string taskId, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(taskId);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.DeleteFinished);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
        return await command.ExecuteNonQueryAsync(cancellationToken) > 0;
    }

    /// <summary>
    /// Puts every discarded task of a queue that matches <paramref name="filter"/> (queue, task name) back, available at
    /// once, in batches of 5,000, oldest dead letters first. See <see cref="RetryDiscardedAsync(string, bool, CancellationToken)"/>.
    /// </summary>
    /// <returns>How many tasks are available again.</returns>
    public async Task<long> RetryDiscardedAsync(TaskFilter? filter, bool resetAttempts = true, CancellationToken cancellationToken = default)
    {
        var queue = QueueOf(filter);
        await StartAsync(cancellationToken);
        var total = await InBatchesAsync(_sql.RetryDiscarded, p =>
        {
            p.Add(new NpgsqlParameter<string> { TypedValue = queue });
            p.Add(NullableText(filter?.TaskName));
            p.Add(new NpgsqlParameter<bool> { TypedValue = resetAttempts });
            p.Add(new NpgsqlParameter<int> { TypedValue = BulkBatchSize });
        }, cancellationToken);

        if (total > 0)
        {
            await NotifyAsync(queue, cancellationToken);
        }

        return total;
    }

    /// <summary>Deletes every discarded task of a queue that matches <paramref name="filter"/> (queue, task name), in batches of 5,000.</summary>
    /// <returns>How many rows were deleted.</returns>
    public async Task<long> DeleteDiscardedAsync(TaskFilter? filter = null, CancellationToken cancellationToken = default)
    {
        var queue = QueueOf(filter);
        await StartAsync(cancellationToken);
        return await InBatchesAsync(_sql.DeleteDiscarded, p =>
        {
            p.Add(new NpgsqlParameter<string> { TypedValue = queue });
            p.Add(NullableText(filter?.TaskName));
            p.Add(new NpgsqlParameter<int> { TypedValue = BulkBatchSize });
        }, cancellationToken);
    }

    /// <summary>Runs a bulk statement of <see cref="BulkBatchSize"/> rows until a batch comes back short.</summary>
    /// <returns>Rows changed in all.</returns>
    private async Task<long> InBatchesAsync(string sql, Action<NpgsqlParameterCollection> parameters, CancellationToken cancellationToken)
    {
        long total = 0;
        int batch;
        do
        {
            await using var command = DataSource.CreateCommand(sql);
            parameters(command.Parameters);
            batch = await command.ExecuteNonQueryAsync(cancellationToken);
            total += batch;
        }
        while (batch == BulkBatchSize);

        return total;
    }


    /// <summary>The workers registered in the workers table, live or stale. Each worker registers its own
    /// <see cref="PostgresBrokerOptions.WorkerStaleAfter"/>: it is stale (taken for dead) once silent for longer, and its
    /// entry is deleted after ten times that (a day without a bound); a stopped worker deregisters itself.</summary>
    public async Task<IReadOnlyList<WorkerInfo>> GetWorkersAsync(CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Workers);
        var workers = new List<WorkerInfo>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            workers.Add(new WorkerInfo(reader.GetString(0), reader.GetString(1), reader.GetInt32(2), reader.GetFieldValue<string[]>(3),
                reader.GetFieldValue<DateTimeOffset>(4), reader.GetFieldValue<DateTimeOffset>(5), reader.GetInt32(6), reader.GetInt32(7), reader.GetBoolean(8)));
        }

        return workers;
    }

    /// <summary>Registers or heartbeats a worker (synchronous: the worker's renewal thread runs it on its own connection).</summary>
    internal void Heartbeat(NpgsqlConnection connection, string workerId, IReadOnlyList<string> queues, int inFlight, int capacity)
    {
        using var command = new NpgsqlCommand(_sql.Heartbeat, connection);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Environment.MachineName });
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = Environment.ProcessId });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = queues.ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = inFlight });
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = capacity });
        command.Parameters.Add(StaleParameter());
        command.ExecuteNonQuery();
    }

    /// <summary>Removes a stopping worker's entry.</summary>
    internal async Task DeregisterWorkerAsync(string workerId, CancellationToken cancellationToken)
    {
        await using var command = DataSource.CreateCommand(_sql.Deregister);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    /// <summary>Deletes the entries of workers silent for ten times <see cref="PostgresBrokerOptions.WorkerStaleAfter"/> (after their tasks were rescued).</summary>
    internal async Task<int> ForgetDeadWorkersAsync(CancellationToken cancellationToken)
    {
        await using var command = DataSource.CreateCommand(_sql.ForgetWorkers);
        command.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = ForgetUnboundedWorkersAfter });
        return await command.ExecuteNonQueryAsync(cancellationToken);
    }

    /// <summary>How long the entry of a silent worker that registered no stale bound is kept.</summary>
    private static readonly TimeSpan ForgetUnboundedWorkersAfter = TimeSpan.FromDays(1);

    private NpgsqlParameter StaleParameter()
        => new() { Value = (object?)Options.WorkerStaleAfter ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.Interval };

    /// <summary>Calls <paramref name="onRequest"/> when a cancel request for running tasks arrives on the broker's channel.</summary>
    internal IDisposable SubscribeCancelRequests(Action onRequest)
    {
        var subscription = _cancelSubscribers.Add(onRequest);
        _resources.Listener.Start();
        return subscription;
    }

    private async Task NotifyAsync(string queue, CancellationToken cancellationToken)
    {
        await using var command = DataSource.CreateCommand(BrokerSql.Notify);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    private string QueueOf(TaskFilter? filter) => QueueOf(filter?.Queue);

    private string QueueOf(string? queue) => queue is null ? Options.Queue : PgIdentifier.Validate(queue, "queue");

    private static NpgsqlParameter NullableText(string? value) => new() { Value = (object?)value ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.Text };

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

    /// <summary>
    /// <see cref="Subscribe(Action)"/> for several queues of this table (a worker serving them): <paramref name="onWake"/>
    /// runs on a NOTIFY for any of them, over this broker's one listener.
    /// </summary>
    internal IDisposable Subscribe(IReadOnlyCollection<string> queues, Action onWake)
    {
        ArgumentNullException.ThrowIfNull(onWake);
        if (queues.Count == 1 && queues.First() == Options.Queue)
        {
            return Subscribe(onWake);
        }

        var removals = queues.Distinct().Select(q => _queueSubscribers.GetOrAdd(q, _ => new Subscribers()).Add(onWake)).ToArray();
        _resources.Listener.Start();
        return new Subscriptions(removals);
    }

    private sealed class Subscriptions(IDisposable[] removals) : IDisposable
    {
        public void Dispose()
        {
            foreach (var removal in removals)
            {
                removal.Dispose();
            }
        }
    }

    /// <summary>Stops the listener; disposes the data source only if this broker created it.</summary>
    public async ValueTask DisposeAsync()
    {
        await _notifier.DisposeAsync(); // the last kicks' wake-up goes out before the pool can go away
        foreach (var notifier in _otherQueueNotifiers.Values)
        {
            await notifier.DisposeAsync();
        }

        await _resources.DisposeAsync();
    }

    /// <summary>Attempts of a unique kick whose duplicate finished between its insert and its look-up.</summary>
    private const int UniqueKickAttempts = 5;

    private async Task<KickResult> KickCoreAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, TaskMessage message,
        KickOptions? options, bool pooledConnection, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(message);
        var writesLabels = WritesLabels(options);
        var outgoing = PrepareCopy(message, options, writesLabels);
        var runAt = RunAtOf(options);
        var queue = options?.Queue ?? Options.Queue;
        using var activity = MessagingTags.StartSend(queue, [outgoing], injectTraceContext: writesLabels);
        try
        {
            var (json, labels) = Serialize(outgoing);
            message = outgoing;
            var unique = options?.Unique;
            for (var attempt = 1; ; attempt++)
            {
                await using var command = new NpgsqlCommand(null, connection, transaction);
                // On a pooled connection of ours: insert only, prepared, and the notifier wakes workers after the commit. In
                // the caller's connection: the NOTIFY rides in the statement, so it is delivered exactly when the caller commits.
                command.CommandText = Options.NotifyTaskIds
                    ? unique is null ? _sql.KickAndNotifyId : _sql.KickUniqueAndNotifyId
                    : unique is null
                        ? pooledConnection ? _sql.Kick : _sql.KickAndNotify
                        : pooledConnection ? _sql.KickUnique : _sql.KickUniqueAndNotify;
                command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = message.TaskId });
                command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = message.TaskName });
                command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = json });
                command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = labels });
                command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
                command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = options?.Priority ?? 0 });
                command.Parameters.Add(new NpgsqlParameter { Value = (object?)runAt ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.TimestampTz });
                command.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = DelayOf(options) });
                command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = MaxAttemptsOf(options) });
                string? key = null;
                if (unique is not null)
                {
                    key = unique.KeyOf(queue, message);
                    command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = key });
                    command.Parameters.Add(PeriodParameter(unique));
                    command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = unique.StatesMask() });
                }

                if (!pooledConnection || Options.NotifyTaskIds)
                {
                    command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
                }

                if (pooledConnection && !Options.NotifyTaskIds)
                {
                    await command.PrepareIfSupportedAsync(CanPrepare, cancellationToken);
                }

                if (await command.ExecuteScalarAsync(cancellationToken) is long id)
                {
                    TaskiqDiagnostics.Kicked.Add(1, new KeyValuePair<string, object?>(MessagingTags.Destination, queue));
                    return new KickResult(id, message.TaskId, Duplicate: false);
                }

                // A duplicate: the task that holds the key. It may have finished in between (then the key is free again).
                await using var find = new NpgsqlCommand(_sql.FindUnique, connection, transaction);
                find.Parameters.Add(new NpgsqlParameter<string> { TypedValue = key! });
                find.Parameters.Add(PeriodParameter(unique!));
                await using (var reader = await find.ExecuteReaderAsync(cancellationToken))
                {
                    if (await reader.ReadAsync(cancellationToken))
                    {
                        return new KickResult(reader.GetInt64(0), reader.GetString(1), Duplicate: true);
                    }
                }

                if (attempt == UniqueKickAttempts)
                {
                    throw new InvalidOperationException($"The unique kick of '{message.TaskName}' met a duplicate that was gone at each of {UniqueKickAttempts} look-ups.");
                }
            }
        }
        catch (Exception ex)
        {
            MessagingTags.RecordError(activity, ex.GetType().Name, ex.Message);
            throw;
        }
    }

    private static NpgsqlParameter PeriodParameter(UniqueOptions unique)
        => new() { Value = unique.Period is { } p ? p.TotalSeconds : DBNull.Value, NpgsqlDbType = NpgsqlDbType.Double };

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, CoalescingNotifier> _otherQueueNotifiers = new();

    /// <summary>The coalescing notifier of a queue this broker kicks to (its own, or one named by <see cref="KickOptions.Queue"/>).</summary>
    private CoalescingNotifier NotifierOf(string? queue)
        => queue is null || queue == Options.Queue ? _notifier
            : _otherQueueNotifiers.GetOrAdd(queue, q => new CoalescingNotifier(DataSource, Options.Channel, q, _logger));

    private TaskMessage[] PrepareCopies(IReadOnlyCollection<TaskMessage> messages, KickOptions? options, bool writesLabels)
    {
        var copies = new TaskMessage[messages.Count];
        var i = 0;
        foreach (var message in messages)
        {
            if (message is null)
            {
                throw new ArgumentException("A message in the list is null.", nameof(messages));
            }

            copies[i++] = PrepareCopy(message, options, writesLabels);
        }

        return copies;
    }

    private async Task<int> KickManyCoreAsync(IReadOnlyCollection<TaskMessage> messages, NpgsqlConnection? callerConnection,
        NpgsqlTransaction? transaction, KickOptions? options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0)
        {
            return 0;
        }

        var writesLabels = WritesLabels(options);
        var copies = PrepareCopies(messages, options, writesLabels);
        var runAt = RunAtOf(options);
        var queue = options?.Queue ?? Options.Queue;
        // The span before serializing: it injects the trace context into the (copied) labels.
        using var activity = MessagingTags.StartSend(queue, copies, injectTraceContext: writesLabels);
        NpgsqlConnection? connection = null;
        NpgsqlTransaction? own = null;
        try
        {
            var rows = copies.Select(c => (Message: c, Serialize(c))).Select(r => (r.Message, r.Item2.Json, r.Item2.Labels)).ToArray(); // before taking a connection
            connection = callerConnection ?? await DataSource.OpenConnectionAsync(cancellationToken);
            own = transaction is null ? await connection.BeginTransactionAsync(cancellationToken) : null;
            var status = TaskStates.Available;
            if (runAt is not null || DelayOf(options) > TimeSpan.Zero)
            {
                // The transaction's now(): run_at = now() + delay as in SQL, and scheduled only when due later than it.
                await using var now = new NpgsqlCommand(BrokerSql.TransactionNow, connection, transaction ?? own);
                var transactionNow = new DateTimeOffset((DateTime)(await now.ExecuteScalarAsync(cancellationToken))!, TimeSpan.Zero);
                runAt ??= transactionNow + DelayOf(options);
                status = runAt > transactionNow ? TaskStates.Scheduled : TaskStates.Available;
            }

            var priority = options?.Priority ?? 0;
            var maxAttempts = MaxAttemptsOf(options);
            int inserted;
            if (options?.Unique is { } unique)
            {
                // COPY cannot skip conflicts: one INSERT ... SELECT FROM unnest ... ON CONFLICT DO NOTHING.
                await using var command = new NpgsqlCommand(_sql.KickManyUnique, connection, transaction ?? own);
                command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = rows.Select(r => r.Message.TaskId).ToArray() });
                command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = rows.Select(r => r.Message.TaskName).ToArray() });
                command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = rows.Select(r => r.Json).ToArray() });
                command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = rows.Select(r => r.Labels).ToArray() });
                command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
                command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = priority });
                command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = maxAttempts });
                command.Parameters.Add(new NpgsqlParameter { Value = (object?)runAt ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.TimestampTz });
                command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = rows.Select(r => unique.KeyOf(queue, r.Message)).ToArray() });
                command.Parameters.Add(PeriodParameter(unique));
                command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = unique.StatesMask() });
                inserted = (int)(long)(await command.ExecuteScalarAsync(cancellationToken))!;
            }
            else
            {
                await using (var importer = await connection.BeginBinaryImportAsync(runAt is null ? _sql.KickManyCopyAtNow : _sql.KickManyCopy, cancellationToken))
                {
                    foreach (var (message, json, labels) in rows)
                    {
                        await importer.StartRowAsync(cancellationToken);
                        await importer.WriteAsync(message.TaskId, NpgsqlDbType.Text, cancellationToken);
                        await importer.WriteAsync(message.TaskName, NpgsqlDbType.Text, cancellationToken);
                        await importer.WriteAsync(json, NpgsqlDbType.Text, cancellationToken);
                        await importer.WriteAsync(labels, NpgsqlDbType.Jsonb, cancellationToken);
                        await importer.WriteAsync(queue, NpgsqlDbType.Text, cancellationToken);
                        await importer.WriteAsync(priority, NpgsqlDbType.Integer, cancellationToken);
                        await importer.WriteAsync(maxAttempts, NpgsqlDbType.Integer, cancellationToken);
                        if (runAt is { } at)
                        {
                            await importer.WriteAsync(at, NpgsqlDbType.TimestampTz, cancellationToken);
                            await importer.WriteAsync(status, NpgsqlDbType.Text, cancellationToken);
                        }
                    }

                    await importer.CompleteAsync(cancellationToken);
                }

                inserted = rows.Length;
            }

            await using (var notify = new NpgsqlCommand(Options.NotifyTaskIds ? _sql.NotifyIds : BrokerSql.Notify, connection, transaction ?? own))
            {
                notify.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
                if (Options.NotifyTaskIds)
                {
                    notify.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = rows.Select(r => r.Message.TaskId).ToArray() });
                }
                else
                {
                    notify.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
                }

                await notify.ExecuteNonQueryAsync(cancellationToken);
            }

            if (own is not null)
            {
                await own.CommitAsync(cancellationToken);
            }

            TaskiqDiagnostics.Kicked.Add(inserted, new KeyValuePair<string, object?>(MessagingTags.Destination, queue));
            return inserted;
        }
        catch (Exception ex)
        {
            MessagingTags.RecordError(activity, ex.GetType().Name, ex.Message);
            throw;
        }
        finally
        {
            if (own is not null)
            {
                await own.DisposeAsync();
            }

            if (callerConnection is null && connection is not null)
            {
                await connection.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// Validates a message and its kick options and returns a copy with the options' labels and timeout merged in; the
    /// caller's message is never changed (one message may be kicked from many threads).
    /// </summary>
    private TaskMessage PrepareCopy(TaskMessage message, KickOptions? options, bool writesLabels)
    {
        ArgumentException.ThrowIfNullOrEmpty(message.TaskId, nameof(message.TaskId));
        ArgumentException.ThrowIfNullOrEmpty(message.TaskName, nameof(message.TaskName));
        if (message.TaskName.Length > Options.MaxTaskNameLength)
        {
            throw new InvalidTaskMessageException("task_name",
                $"Task name '{Shorten(message.TaskName)}' is {message.TaskName.Length} characters, more than {nameof(PostgresBrokerOptions.MaxTaskNameLength)} ({Options.MaxTaskNameLength}).");
        }

        if (options is not null)
        {
            KickOptions.Validate(options);
        }

        // Copied only when something will be written into the labels (the options, or the trace context when tracing).
        var copy = message;
        if (writesLabels)
        {
            var labels = new Dictionary<string, string>(message.Labels);
            foreach (var (key, value) in options?.Labels ?? EmptyLabels)
            {
                labels[key] = value ?? throw new InvalidTaskMessageException("labels", $"The value of label '{Shorten(key)}' in {nameof(KickOptions)}.{nameof(KickOptions.Labels)} is null.");
            }

            if (options?.Timeout is { } timeout)
            {
                labels[TaskLabels.Timeout] = timeout.TotalSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
            }

            copy = message.WithLabels(labels);
        }

        if (MessageChecks.FindProblem(copy) is { } problem)
        {
            throw new InvalidTaskMessageException(problem.Field, MessageChecks.Describe(problem) + " It cannot be stored in PostgreSQL.");
        }

        return copy;
    }

    private (string Json, string Labels) Serialize(TaskMessage message)
    {
        var json = message.ToJson();
        var size = Encoding.UTF8.GetByteCount(json);
        if (size > Options.MaxMessageBytes)
        {
            throw new MessageTooLargeException(message.TaskName, size, Options.MaxMessageBytes);
        }

        return (json, JsonSerializer.Serialize(message.Labels, LabelsJsonContext.Default.DictionaryStringString));
    }

    private static readonly IReadOnlyDictionary<string, string> EmptyLabels = new Dictionary<string, string>();

    /// <summary>Whether a kick writes into the labels: options' labels or timeout, or a trace context to propagate.</summary>
    private static bool WritesLabels(KickOptions? options)
        => options?.Labels is { Count: > 0 } || options?.Timeout is not null
           || TaskiqDiagnostics.Source.HasListeners() || System.Diagnostics.Activity.Current is not null;

    private static string Shorten(string text) => text.Length <= 40 ? text : text[..40] + "…";

    /// <summary>The kick's explicit run time in UTC (Npgsql writes <c>timestamptz</c> only from UTC values).</summary>
    private static DateTimeOffset? RunAtOf(KickOptions? options) => options?.RunAt?.ToUniversalTime();

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

    private async Task<HashSet<LeaseRef>> LeaseRefCommandAsync(string sql, string workerId, IReadOnlyCollection<LeaseRef> leases,
        bool withLease, CancellationToken cancellationToken)
    {
        var refs = new HashSet<LeaseRef>();
        if (leases.Count == 0)
        {
            return refs;
        }

        await using var batch = DataSource.CreateBatch();
        batch.BatchCommands.Add(CreateLeaseCommand(sql, workerId, leases, withLease));
        await using var reader = await batch.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            refs.Add(new LeaseRef(reader.GetInt64(0), reader.GetInt32(1)));
        }

        return refs;
    }

    private NpgsqlBatchCommand CreateLeaseCommand(string sql, string workerId, IReadOnlyCollection<LeaseRef> leases, bool withLease,
        IEnumerable<bool>? started = null)
    {
        var command = new NpgsqlBatchCommand(sql);
        command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = leases.Select(l => l.Id).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = leases.Select(l => l.Claim).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        if (withLease)
        {
            command.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = Options.LeaseDuration });
            command.Parameters.Add(new NpgsqlParameter<bool[]> { TypedValue = started?.ToArray() ?? new bool[leases.Count] });
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
        if (payload == Options.Queue || _queueSubscribers.ContainsKey(payload))
        {
            if (payload == Options.Queue)
            {
                _subscribers.Invoke();
            }

            if (_queueSubscribers.TryGetValue(payload, out var subscribers))
            {
                subscribers.Invoke();
            }
        }
        else if (payload.StartsWith(BrokerSql.CancelPayloadPrefix, StringComparison.Ordinal))
        {
            _cancelSubscribers.Invoke();
        }
        else if (payload.Length > 0 && payload.All(char.IsAsciiDigit))
        {
            // Python's taskiq-postgres notifies the new row's id (a queue name never starts with a digit): its row has
            // the table's default queue, but waking every subscriber is cheap and needs no look-up.
            WakeSubscribers();
        }
    }

    /// <summary>The listener (re)connected: notifications may have been missed, so every subscriber looks.</summary>
    private void WakeSubscribers()
    {
        _subscribers.Invoke();
        foreach (var subscribers in _queueSubscribers.Values)
        {
            subscribers.Invoke();
        }
    }
}

[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, string>))]
internal sealed partial class LabelsJsonContext : System.Text.Json.Serialization.JsonSerializerContext;
