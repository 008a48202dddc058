using Microsoft.Extensions.Logging;
using Npgsql;

namespace TaskiqPg.Internal;

/// <summary>
/// Sends the NOTIFY for kicks committed outside a caller's transaction, coalesced: at most one <c>pg_notify</c> is in
/// flight per broker, and every kick committed while it runs is covered by the next one.
/// </summary>
/// <remarks>
/// Why not <c>pg_notify</c> inside each kick's own transaction: PostgreSQL serializes the commits of notifying
/// transactions on one global lock held across the commit's WAL flush, which halves the single-kick rate of
/// concurrent producers (see docs/ARCHITECTURE.md, "Measured"). The notification is only a
/// wake-up hint: the rows are committed before it is sent, and workers also poll, so a notification lost with the
/// producer process (crash before it was sent) delays a task by at most the worker's poll interval, never loses it.
/// </remarks>
internal sealed class CoalescingNotifier : IAsyncDisposable
{
    private const int Idle = 0, Sending = 1, SendingWithMore = 2;
    private readonly NpgsqlDataSource _dataSource;
    private readonly string _channel;
    private readonly string _payload;
    private readonly ILogger _logger;
    private int _state;
    private Task _sender = Task.CompletedTask;

    public CoalescingNotifier(NpgsqlDataSource dataSource, string channel, string payload, ILogger logger)
    {
        _dataSource = dataSource;
        _channel = channel;
        _payload = payload;
        _logger = logger;
    }

    /// <summary>Asks for a notification after the caller's (already committed) rows. Never blocks, never throws.</summary>
    public void Signal()
    {
        while (true)
        {
            switch (Volatile.Read(ref _state))
            {
                case Idle when Interlocked.CompareExchange(ref _state, Sending, Idle) == Idle:
                    _sender = Task.Run(SendAsync);
                    return;
                case Sending when Interlocked.CompareExchange(ref _state, SendingWithMore, Sending) == Sending:
                case SendingWithMore:
                    return;
            }
        }
    }

    /// <summary>
    /// Takes the next notification for the caller to send in its own kick's round trip (after the kick's commit, as a
    /// transaction of its own). True when no notification was on its way: the caller must then call
    /// <see cref="Release"/> once its statement has run; signals meanwhile wait for it and are sent after.
    /// </summary>
    public bool TryClaim() => Interlocked.CompareExchange(ref _state, Sending, Idle) == Idle;

    /// <summary>This notifier's notification as a batch command, for a caller that <see cref="TryClaim"/>ed it.</summary>
    public NpgsqlBatchCommand CreateCommand()
    {
        var command = new NpgsqlBatchCommand(BrokerSql.Notify);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = _channel });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = _payload });
        return command;
    }

    /// <summary>Ends a <see cref="TryClaim"/>: signals that arrived while the caller's notification ran get one of their own.</summary>
    public void Release()
    {
        if (!TryGoIdle())
        {
            _sender = Task.Run(SendAsync);
        }
    }

    /// <summary>Waits until every signalled notification was sent (or failed).</summary>
    public async ValueTask DisposeAsync()
    {
        while (Volatile.Read(ref _state) != Idle || !_sender.IsCompleted)
        {
            await _sender.ConfigureAwait(false);
            await Task.Yield(); // a Signal may be between claiming the state and publishing its sender
        }
    }

    private async Task SendAsync()
    {
        BackgroundWork.Enter(); // the wake-up after a committed kick is not part of the kick's trace
        do
        {
            try
            {
                await using var batch = _dataSource.CreateBatch();
                batch.BatchCommands.Add(CreateCommand());
                await batch.ExecuteNonQueryAsync().ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is NpgsqlException or InvalidOperationException or TimeoutException)
            {
                // A hint only: the rows are committed and workers poll. Logged, never thrown at the producer.
                Log.NotifyFailed(_logger, _channel, ex);
            }
        }
        while (!TryGoIdle());
    }

    /// <summary>Goes idle unless signals arrived while sending: then they get one more round (state back to Sending).</summary>
    private bool TryGoIdle()
    {
        if (Interlocked.CompareExchange(ref _state, Idle, Sending) == Sending)
        {
            return true;
        }

        Volatile.Write(ref _state, Sending); // was SendingWithMore: only this sender leaves that state
        return false;
    }
}
