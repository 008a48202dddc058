using Microsoft.Extensions.Logging;
using Npgsql;

namespace TaskiqPg.Internal;

/// <summary>
/// LISTENs on channels over one dedicated connection and reconnects with backoff after any failure
/// (<c>pg_terminate_backend</c>, server restart, network loss). The connection is either borrowed (never closed
/// here; after it fails an owned one takes over) or a physical connection opened outside the pool's limits.
/// </summary>
internal sealed class NotificationListener : IAsyncDisposable
{
    private static readonly TimeSpan MaxBackoff = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan ErrorLogInterval = TimeSpan.FromSeconds(30);

    private readonly NpgsqlDataSource _dataSource;
    private readonly IReadOnlyList<string> _channels;
    private readonly Action<string, string> _onNotification;
    private readonly Action _onConnected;
    private readonly ILogger _logger;
    private readonly string _purpose;
    private readonly CancellationTokenSource _stop = new();
    private NpgsqlConnection? _borrowed;
    private Task? _loop;
    private TaskCompletionSource _connected = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private DateTime _lastErrorLog = DateTime.MinValue;
    private int _suppressedErrors;

    public NotificationListener(NpgsqlDataSource dataSource, NpgsqlConnection? borrowedConnection,
        IReadOnlyList<string> channels, Action<string, string> onNotification, Action onConnected, ILogger logger,
        string purpose)
    {
        _dataSource = dataSource;
        _borrowed = borrowedConnection;
        _channels = channels;
        _onNotification = onNotification;
        _onConnected = onConnected;
        _logger = logger;
        _purpose = purpose;
    }

    /// <summary>True while LISTEN is active on a live connection.</summary>
    public bool IsConnected { get; private set; }

    /// <summary>How many times the listener connected (1 after the first connection).</summary>
    public int ConnectionCount { get; private set; }

    /// <summary>Backend process id of the current LISTEN connection (0 when disconnected).</summary>
    public int BackendProcessId { get; private set; }

    /// <summary>Completes when the listener is connected (now or next).</summary>
    public Task Connected => Volatile.Read(ref _connected).Task;

    public void Start() => _loop ??= Task.Run(() => RunAsync(_stop.Token));

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
                    listen.CommandText = string.Join(";", _channels.Select(c => "LISTEN " + PgIdentifier.Quote(c, "Channel")));
                    await listen.ExecuteNonQueryAsync(stop);
                }

                BackendProcessId = connection.ProcessID;
                IsConnected = true;
                ConnectionCount++;
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
        if (!IsConnected)
        {
            return;
        }

        IsConnected = false;
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

    private async Task<NpgsqlConnection> OpenPhysicalConnectionAsync(CancellationToken cancellationToken)
    {
        var connection = PhysicalConnection.Create(_dataSource, _purpose);
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
