using Microsoft.Extensions.Logging;
using Npgsql;

namespace TaskiqPg.Internal;

/// <summary>
/// LISTENs on channels over one dedicated connection and reconnects with backoff after any failure
/// (<c>pg_terminate_backend</c>, server restart, network loss). The connection is either borrowed (never closed
/// here; after it fails an owned one takes over) or a physical connection opened outside the pool's limits, with the
/// data source's settings or with <see cref="ListenSettings.ConnectionString"/>. In poll-only mode it never starts.
/// A connection can be up and still receive nothing (LISTEN through a transaction-mode pooler lands on a server session
/// the pooler hands to other clients), so each new connection is verified: a probe NOTIFY sent through the data source,
/// as producers send theirs, on a channel of this listener's own, must arrive on it; until one does, the listener does
/// not count as connected.
/// </summary>
internal sealed class NotificationListener : IAsyncDisposable
{
    private static readonly TimeSpan MaxBackoff = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan ErrorLogInterval = TimeSpan.FromSeconds(30);

    /// <summary>How long a probe NOTIFY may take to arrive before the connection is taken for deaf.</summary>
    internal static readonly TimeSpan ProbeTimeout = TimeSpan.FromSeconds(5);

    private readonly NpgsqlDataSource _dataSource;
    private readonly IReadOnlyList<string> _channels;
    private readonly Action<string, string> _onNotification;
    private readonly Action _onConnected;
    private readonly ILogger _logger;
    private readonly string _purpose;
    private readonly ListenSettings _settings;
    private readonly string _probeChannel = "taskiqpg_probe_" + Guid.NewGuid().ToString("N")[..16];
    private readonly Lock _probeGate = new();
    private TaskCompletionSource<bool>? _probe; // the probe in flight: completes true when its payload arrives
    private string? _probePayload;
    private volatile bool _listening;
    private volatile bool _deaf; // the last probe on this connection did not arrive
    private readonly CancellationTokenSource _stop = new();
    private NpgsqlConnection? _borrowed;
    private Task? _loop;
    private TaskCompletionSource _connected = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private DateTime _lastErrorLog = DateTime.MinValue;
    private int _suppressedErrors;

    public NotificationListener(NpgsqlDataSource dataSource, NpgsqlConnection? borrowedConnection,
        IReadOnlyList<string> channels, Action<string, string> onNotification, Action onConnected, ILogger logger,
        string purpose, ListenSettings? settings = null)
    {
        _settings = settings ?? new ListenSettings(null, PollOnly: false);
        _dataSource = dataSource;
        _borrowed = borrowedConnection;
        _channels = channels;
        _onNotification = onNotification;
        _onConnected = onConnected;
        _logger = logger;
        _purpose = purpose;
    }

    /// <summary>True while LISTEN is active on a live connection whose notifications arrive (its probe came back).</summary>
    public bool IsConnected => _listening && !_deaf;

    /// <summary>True while LISTEN is active on a connection that did not receive its probe: notifications are lost.</summary>
    public bool IsDeaf => _listening && _deaf;

    /// <summary>Poll-only: no LISTEN connection is ever opened.</summary>
    public bool PollOnly => _settings.PollOnly;

    /// <summary>How many times the listener connected (1 after the first connection).</summary>
    public int ConnectionCount { get; private set; }

    /// <summary>Backend process id of the current LISTEN connection (0 when disconnected).</summary>
    public int BackendProcessId { get; private set; }

    /// <summary>Completes when the listener is connected (now or next).</summary>
    public Task Connected => Volatile.Read(ref _connected).Task;

    public void Start()
    {
        if (!_settings.PollOnly)
        {
            _loop ??= Task.Run(() => RunAsync(_stop.Token));
        }
    }

    private async Task RunAsync(CancellationToken stop)
    {
        BackgroundWork.Enter();
        var backoff = TimeSpan.FromMilliseconds(100);
        while (!stop.IsCancellationRequested)
        {
            var borrowed = _borrowed;
            NpgsqlConnection? connection = null;
            try
            {
                connection = borrowed ?? await OpenPhysicalConnectionAsync(stop);
                if (connection.State != System.Data.ConnectionState.Open)
                {
                    await connection.OpenAsync(stop);
                }

                connection.Notification += OnNotification;
                await using (var listen = connection.CreateCommand())
                {
                    listen.CommandText = string.Join(";", _channels.Append(_probeChannel).Select(c => "LISTEN " + PgIdentifier.Quote(c, "Channel")));
                    await listen.ExecuteNonQueryAsync(stop);
                }

                BackendProcessId = connection.ProcessID;
                _deaf = false;
                _listening = true;
                ConnectionCount++;
                _ = VerifyOnConnectAsync(connection, stop);
                backoff = TimeSpan.FromMilliseconds(100);
                if (ConnectionCount > 1)
                {
                    Log.ListenerReconnected(_logger, _purpose, _suppressedErrors);
                    _suppressedErrors = 0;
                }

                Volatile.Read(ref _connected).TrySetResult();
                _onConnected();
                while (!stop.IsCancellationRequested)
                {
                    await connection.WaitAsync(stop);
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                break;
            }
            catch (Exception ex)
            {
                ReportFailure(ex);
                if (borrowed is not null)
                {
                    _borrowed = null; // a broken borrowed connection is the owner's to close; continue on our own
                }
            }
            finally
            {
                MarkDisconnected();
                if (connection is not null)
                {
                    connection.Notification -= OnNotification;
                    if (connection == borrowed && _borrowed is not null)
                    {
                        await UnlistenQuietlyAsync(connection);
                    }
                    else if (connection != borrowed)
                    {
                        await connection.DisposeAsync();
                    }
                }
            }

            try
            {
                await Task.Delay(backoff + TimeSpan.FromMilliseconds(Random.Shared.Next(0, 100)), stop);
            }
            catch (OperationCanceledException)
            {
                break;
            }

            backoff = TimeSpan.FromTicks(Math.Min(MaxBackoff.Ticks, backoff.Ticks * 2));
        }
    }

    private void MarkDisconnected()
    {
        if (!_listening)
        {
            return;
        }

        _listening = false;
        BackendProcessId = 0;
        Interlocked.Exchange(ref _connected, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
    }

    private void ReportFailure(Exception ex)
    {
        // Log the first failure and then at most one line per interval, so a long outage does not flood the logs.
        var now = DateTime.UtcNow;
        if (now - _lastErrorLog >= ErrorLogInterval)
        {
            _lastErrorLog = now;
            Log.ListenerFailed(_logger, ex, _purpose, _suppressedErrors);
            _suppressedErrors = 0;
        }
        else
        {
            _suppressedErrors++;
        }
    }

    /// <summary>
    /// Sends a probe NOTIFY through the data source (as producers send theirs) and waits for it on the LISTEN
    /// connection. A probe that does not arrive marks the connection deaf (<see cref="IsConnected"/> turns false, so
    /// result waiters re-check on their short period); one that arrives clears that.
    /// </summary>
    /// <returns>True when the probe arrived; false when it did not, or when no LISTEN connection is up.</returns>
    /// <exception cref="NpgsqlException">The probe could not be sent (the database is unreachable).</exception>
    public async Task<bool> VerifyAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        if (!_listening)
        {
            return false;
        }

        TaskCompletionSource<bool> probe;
        string payload;
        var send = false;
        lock (_probeGate)
        {
            if (_probe is null)
            {
                _probe = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
                _probePayload = Guid.NewGuid().ToString("N");
                send = true;
            }

            probe = _probe;
            payload = _probePayload!;
        }

        if (send)
        {
            try
            {
                await using var notify = _dataSource.CreateCommand("SELECT pg_notify($1, $2)");
                notify.Parameters.Add(new NpgsqlParameter<string> { TypedValue = _probeChannel });
                notify.Parameters.Add(new NpgsqlParameter<string> { TypedValue = payload });
                await notify.ExecuteNonQueryAsync(cancellationToken);
            }
            catch
            {
                EndProbe(probe, result: null);
                throw;
            }

            _ = Task.Delay(timeout, CancellationToken.None).ContinueWith(_ => EndProbe(probe, result: false), TaskScheduler.Default);
        }

        var arrived = await probe.Task.WaitAsync(cancellationToken);
        if (_listening)
        {
            _deaf = !arrived;
        }

        return arrived;
    }

    private void EndProbe(TaskCompletionSource<bool> probe, bool? result)
    {
        lock (_probeGate)
        {
            if (_probe == probe)
            {
                _probe = null;
                _probePayload = null;
            }
        }

        if (result is { } value)
        {
            probe.TrySetResult(value);
        }
        else
        {
            probe.TrySetCanceled();
        }
    }

    private async Task VerifyOnConnectAsync(NpgsqlConnection connection, CancellationToken stop)
    {
        try
        {
            if (!await VerifyAsync(ProbeTimeout, stop) && _listening && connection.ProcessID == BackendProcessId)
            {
                Log.ListenerDeaf(_logger, _purpose, (int)ProbeTimeout.TotalSeconds);
            }
        }
        catch (Exception ex) when (ex is NpgsqlException or OperationCanceledException or InvalidOperationException or TimeoutException)
        {
            // the database is unreachable or the listener stops: the next connection verifies itself again
        }
    }

    private async Task<NpgsqlConnection> OpenPhysicalConnectionAsync(CancellationToken cancellationToken)
    {
        var connection = _settings.ConnectionString is { } own
            ? PhysicalConnection.Create(own, _purpose)
            : PhysicalConnection.Create(_dataSource, _purpose);
        try
        {
            await connection.OpenAsync(cancellationToken);
            return connection;
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    private async Task UnlistenQuietlyAsync(NpgsqlConnection connection)
    {
        try
        {
            if (connection.State == System.Data.ConnectionState.Open)
            {
                await using var unlisten = connection.CreateCommand();
                unlisten.CommandText = string.Join(";", _channels.Select(c => "UNLISTEN " + PgIdentifier.Quote(c, "Channel")));
                await unlisten.ExecuteNonQueryAsync();
            }
        }
        catch (Exception ex) when (ex is NpgsqlException or InvalidOperationException)
        {
            // the borrowed connection is unusable; its owner will find out
        }
    }

    private void OnNotification(object sender, NpgsqlNotificationEventArgs e)
    {
        if (e.Channel == _probeChannel)
        {
            TaskCompletionSource<bool>? arrived = null;
            lock (_probeGate)
            {
                if (_probe is not null && e.Payload == _probePayload)
                {
                    arrived = _probe;
                }
            }

            if (arrived is not null)
            {
                EndProbe(arrived, result: true);
            }

            return;
        }

        try
        {
            _onNotification(e.Channel, e.Payload);
        }
        catch (Exception ex)
        {
            Log.NotificationHandlerFailed(_logger, ex, _purpose);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_stop.IsCancellationRequested)
        {
            return;
        }

        await _stop.CancelAsync();
        if (_loop is not null)
        {
            try
            {
                await _loop;
            }
            catch (OperationCanceledException)
            {
            }
        }

        _stop.Dispose();
    }
}
