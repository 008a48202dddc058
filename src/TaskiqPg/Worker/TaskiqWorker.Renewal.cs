using Npgsql;
using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// The renewal thread: a dedicated thread with a connection of its own renews the leases of held claims, heartbeats the
/// worker, and reads cancel requests, so blocked handlers or a starved thread pool never let a live task's lease expire.
/// </summary>
public sealed partial class TaskiqWorker
{
    /// <summary>Renewal statements tried per tick when they fail transiently (deadlocks, a reconnect).</summary>
    private const int RenewAttemptsPerTick = 3;

    /// <summary>
    /// Lease renewal runs on a dedicated thread with synchronous database calls over a connection of its own (outside
    /// the pool): handlers that block threads, starve the thread pool or hold every pooled connection would otherwise
    /// delay the renewals past the lease, and another worker would run a task whose worker is alive and running it.
    /// </summary>
    private Task StartRenewalThread(CancellationToken stop)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            try
            {
                RenewLoop(stop);
            }
            catch (Exception ex)
            {
                // Never let an exception escape: on a thread of its own it would end the process.
                Log.LoopFailed(_logger, ex, WorkerId, "lease renewal");
            }
            finally
            {
                done.TrySetResult();
            }
        })
        {
            IsBackground = true,
            Name = "taskiq lease renewal",
        };
        thread.Start();
        return done.Task;
    }

    private void RenewLoop(CancellationToken stop)
    {
        var interval = _options.LeaseRenewInterval ?? _broker.Options.LeaseDuration / 3;
        NpgsqlConnection? connection = null;
        var queues = _queues;
        try
        {
            for (var failures = 1; !_renewalReady.Task.IsCompleted && !stop.IsCancellationRequested; failures++)
            {
                try
                {
                    connection ??= OpenRenewalConnection();
                    _broker.RenewLeases(connection, WorkerId, [new LeaseRef(-1, 0)], [false]); // matches no row: warms the path
                    _broker.Heartbeat(connection, WorkerId, queues, ActiveTasks, _capacity); // registers the worker
                    _renewalReady.TrySetResult();
                }
                catch (Exception ex)
                {
                    connection?.Dispose();
                    connection = null;
                    Log.LoopFailed(_logger, ex, WorkerId, "lease renewal start");
                    stop.WaitHandle.WaitOne(Retry.Backoff(failures));
                }
            }

            // One thread for both: the heartbeat every HeartbeatInterval, the renewal every interval (or at once when a
            // cancel request arrives). Both stay off the thread pool, so a busy process neither loses leases nor looks dead.
            WaitHandle[] wakeUps = [stop.WaitHandle, _renewNow];
            var heartbeat = _options.HeartbeatInterval;
            var nextRenew = Environment.TickCount64 + (long)interval.TotalMilliseconds;
            var nextBeat = Environment.TickCount64 + (long)heartbeat.TotalMilliseconds;
            while (true)
            {
                var wait = Math.Max(0, Math.Min(nextRenew, nextBeat) - Environment.TickCount64);
                var woken = WaitHandle.WaitAny(wakeUps, TimeSpan.FromMilliseconds(wait));
                if (woken == 0)
                {
                    break;
                }

                var now = Environment.TickCount64;
                if (now >= nextBeat)
                {
                    nextBeat = now + (long)heartbeat.TotalMilliseconds;
                    try
                    {
                        connection ??= OpenRenewalConnection();
                        _broker.Heartbeat(connection, WorkerId, queues, ActiveTasks, _capacity);
                    }
                    catch (Exception ex)
                    {
                        DropIfBroken(ref connection, ex);
                        if (!stop.IsCancellationRequested)
                        {
                            Log.LoopFailed(_logger, ex, WorkerId, "heartbeat");
                        }
                    }
                }

                if (woken == 1 || now >= nextRenew)
                {
                    nextRenew = now + (long)interval.TotalMilliseconds;
                    RenewHeld(ref connection, stop);
                }
            }
        }
        finally
        {
            connection?.Dispose();
        }
    }

    /// <summary>One renewal round: every held claim (every row leased to us while a claim is in flight).</summary>
    private void RenewHeld(ref NpgsqlConnection? connection, CancellationToken stop)
    {
        var claimInFlight = _held.ClaimInFlight;
        // With WhenReceived the rows are acked at claim: there is no lease left to renew.
        var held = _options.AckMode == AckMode.WhenReceived ? [] : _held.NotLost();
        if (held.Length == 0 && !claimInFlight)
        {
            return;
        }

        _held.ForgetGivenUpOlderThan(_broker.Options.LeaseDuration * 2); // their leases have long expired: rescued by now

        // A transient failure (a broken connection, replaced) is retried at once, not a tick later: ticks lost in a
        // row would let the leases lapse. Rows another transaction holds (a settle) come back busy, not renewed: the
        // renewal never waits for a row lock (BrokerSql.RenewHeld).
        for (var attempt = 1; attempt <= RenewAttemptsPerTick && !stop.IsCancellationRequested; attempt++)
        {
            try
            {
                connection ??= OpenRenewalConnection();
                var renewed = _broker.RenewLeases(connection, WorkerId, held.Select(h => h.Task.Lease).ToArray(),
                    held.Select(h => h.Started).ToArray(), everythingOfWorker: claimInFlight, givenUp: _held.GivenUp(),
                    out var cancelRequested, out var busy, _queues);
                foreach (var lease in cancelRequested ?? [])
                {
                    if (_held.TryGet(lease, out var target) && target.RequestCancel())
                    {
                        Log.TaskCancelRequested(_logger, target.Task.TaskId, target.Task.TaskName);
                    }
                }

                foreach (var lost in held.Where(h => !renewed.Contains(h.Task.Lease) && busy?.Contains(h.Task.Lease) != true && !h.Settling
                                                && _held.Contains(h.Task.Lease)))
                {
                    // Rescued by another worker after we failed to renew in time: stop the handler, its outcome is void.
                    if (lost.MarkLost())
                    {
                        Log.LeaseLost(_logger, lost.Task.TaskId, lost.Task.TaskName);
                    }
                }

                Interlocked.Increment(ref _renewalRounds);
                return;
            }
            catch (Exception ex)
            {
                DropIfBroken(ref connection, ex);
                if (!stop.IsCancellationRequested && (attempt == RenewAttemptsPerTick || !TransientErrors.IsTransient(ex)))
                {
                    Log.LoopFailed(_logger, ex, WorkerId, "lease renewal");
                    return;
                }
            }
        }
    }

    private static void DropIfBroken(ref NpgsqlConnection? connection, Exception ex)
    {
        if (TransientErrors.IsConnectionFailure(ex) || connection?.State != System.Data.ConnectionState.Open)
        {
            connection?.Dispose();
            connection = null;
        }
    }

    private NpgsqlConnection OpenRenewalConnection()
    {
        var connection = PhysicalConnection.Create(_broker.DataSource, "lease renewal");
        try
        {
            connection.Open();
            return connection;
        }
        catch
        {
            connection.Dispose();
            throw;
        }
    }
}
