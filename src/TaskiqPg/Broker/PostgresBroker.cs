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
public sealed partial class PostgresBroker : IAsyncDisposable
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
    /// <param name="connectionString">An Npgsql connection string.</param>
    /// <param name="options">The broker's options; default: <see cref="PostgresBrokerOptions"/> defaults.</param>
    /// <param name="loggerFactory">Where the broker logs; default: nowhere.</param>
    /// <exception cref="ArgumentException">The connection string cannot be parsed, an option is invalid (table, channel or
    /// queue name), or statements are unprepared without <c>No Reset On Close=true</c> in the connection string.</exception>
    public PostgresBroker(string connectionString, PostgresBrokerOptions? options = null, ILoggerFactory? loggerFactory = null)
        : this(NpgsqlDataSource.Create(connectionString), ownsDataSource: true, options, listenConnection: null, loggerFactory)
    {
    }

    /// <summary>
    /// Creates a broker on a borrowed data source (never disposed here). <paramref name="listenConnection"/>, when given,
    /// is used for LISTEN and never closed here; otherwise the broker opens one physical connection outside the pool.
    /// </summary>
    /// <param name="dataSource">The data source every statement runs on; the caller keeps owning it.</param>
    /// <param name="options">The broker's options; default: <see cref="PostgresBrokerOptions"/> defaults.</param>
    /// <param name="listenConnection">An open connection to use for LISTEN, or null to open a dedicated one.</param>
    /// <param name="loggerFactory">Where the broker logs; default: nowhere.</param>
    /// <exception cref="ArgumentException">An option is invalid (table, channel or queue name), or statements are unprepared
    /// (<see cref="PostgresBrokerOptions.PrepareStatements"/> false: behind a transaction-mode pooler) on a pooled data source
    /// without <c>No Reset On Close=true</c>.</exception>
    public PostgresBroker(NpgsqlDataSource dataSource, PostgresBrokerOptions? options = null,
        NpgsqlConnection? listenConnection = null, ILoggerFactory? loggerFactory = null)
        : this(dataSource, ownsDataSource: false, options, listenConnection, loggerFactory)
    {
    }

    private PostgresBroker(NpgsqlDataSource dataSource, bool ownsDataSource, PostgresBrokerOptions? options,
        NpgsqlConnection? listenConnection, ILoggerFactory? loggerFactory)
    {
        Options = (options ?? new PostgresBrokerOptions()) with { }; // a copy: later edits to the caller's object change nothing
        ComponentResources.ValidateOrDispose(dataSource, ownsDataSource, () =>
        {
            Options.Validate();
            PreparedStatements.RequireNoResetWhenUnprepared(dataSource, Options.PrepareStatements);
        });
        DataSource = dataSource;
        _sql = new BrokerSql(Options);
        _list = new ListSql(PgIdentifier.QualifiedName(Options.Schema, nameof(Options.Schema), Options.MessagesTable, nameof(Options.MessagesTable)));
        _logger = (loggerFactory ?? NullLoggerFactory.Instance).CreateLogger<PostgresBroker>();
        _resources = new ComponentResources(dataSource, ownsDataSource, new NotificationListener(dataSource, listenConnection, [Options.Channel],
            (_, payload) => OnNotification(payload), WakeSubscribers, _logger, "broker", Options.Listen));
        _notifier = new CoalescingNotifier(dataSource, Options.Channel, Options.Queue, _logger);
        CanPrepare = Options.PrepareStatements && PreparedStatements.AreSupported(dataSource);
    }

    /// <summary>The data source every query runs on.</summary>
    public NpgsqlDataSource DataSource { get; }

    /// <summary>The settings.</summary>
    public PostgresBrokerOptions Options { get; }

    /// <summary>Whether the hot statements run prepared on this data source (not with multiplexing).</summary>
    internal bool CanPrepare { get; }

    /// <summary>
    /// True while the LISTEN connection is up and notifications arrive on it: each new connection is verified by a probe
    /// NOTIFY sent through the data source. Always false in <see cref="PostgresBrokerOptions.PollOnly"/> mode.
    /// </summary>
    public bool IsListening => _resources.Listener.IsConnected;

    /// <summary>
    /// True while the LISTEN connection is up but its last probe NOTIFY did not arrive: notifications are lost (LISTEN
    /// through a transaction-mode pooler). Set <see cref="PostgresBrokerOptions.ListenConnectionString"/> or
    /// <see cref="PostgresBrokerOptions.PollOnly"/>; workers meanwhile find tasks by polling.
    /// </summary>
    public bool IsListenerDeaf => _resources.Listener.IsDeaf;

    /// <summary>
    /// Sends a probe NOTIFY through the data source, on a channel of the LISTEN connection's own, and waits up to 5 s for
    /// it to arrive there: proves that producers' notifications reach this broker. Updates <see cref="IsListening"/>
    /// and <see cref="IsListenerDeaf"/>.
    /// </summary>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>True when the probe arrived; false when it did not or no LISTEN connection is up (or in poll-only mode).</returns>
    /// <exception cref="NpgsqlException">The probe could not be sent: the database is unreachable.</exception>
    public Task<bool> VerifyNotificationsAsync(CancellationToken cancellationToken = default)
        => _resources.Listener.VerifyAsync(NotificationListener.ProbeTimeout, cancellationToken);

    /// <summary>Backend process id of the LISTEN connection (0 while disconnected); for diagnostics and tests.</summary>
    public int ListenerProcessId => _resources.Listener.BackendProcessId;

    /// <summary>Completes once the LISTEN connection is up (never in <see cref="PostgresBrokerOptions.PollOnly"/> mode).</summary>
    public Task ListenerConnected => _resources.Listener.Connected;

    /// <summary>
    /// Runs the migrations (unless <see cref="PostgresBrokerOptions.RunMigrations"/> is false; then only checks that the
    /// schema is not newer than this code in a way it cannot run against). Idempotent.
    /// </summary>
    /// <exception cref="SchemaVersionException">The database's schema is newer and not compatible with this code.</exception>
    /// <param name="cancellationToken">Cancels the wait; the start itself goes on for other callers.</param>
    /// <returns>Completes once the schema is ready.</returns>
    public Task StartAsync(CancellationToken cancellationToken = default)
        => _resources.Start.RunOnceAsync(ct => Options.RunMigrations
            ? MigrateAsync(ct)
            : SchemaMigrator.VerifyAsync(DataSource, Options.Schema, Options.MessagesTable, _sql.Migrations.Count, ct), cancellationToken);

    /// <summary>Creates or upgrades the messages table and its indexes. Safe to call from many processes at once.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>Completes once the table is at this code's schema version.</returns>
    /// <exception cref="SchemaVersionException">The database's schema is newer and not compatible with this code.</exception>
    public Task MigrateAsync(CancellationToken cancellationToken = default)
        => SchemaMigrator.MigrateAndLogAsync(DataSource, Options.Schema, Options.MessagesTable, _sql.Migrations, _logger, cancellationToken);

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
    /// <param name="onWake">Called on the listener's thread; keep it short and non-blocking.</param>
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
