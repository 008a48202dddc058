using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// Waiting for results: waiters registered per task id are woken by the NOTIFY of a stored result (or of a batch of
/// them), re-check on a short period while the LISTEN connection is down, and are all woken when it reconnects.
/// </summary>
public sealed partial class PostgresResultBackend
{
    /// <summary>
    /// Waits for the task's result: woken by the NOTIFY sent when it is stored (a slow re-check guards against a lost
    /// notification; while the LISTEN connection is down or deaf, and in <see cref="PostgresResultBackendOptions.PollOnly"/>
    /// mode, waiters re-check every 200 ms).
    /// </summary>
    /// <exception cref="TaskResultTimeoutException">No result within <paramref name="timeout"/>.</exception>
    /// <param name="taskId">The task id the kick returned.</param>
    /// <param name="timeout">How long to wait; <see cref="Timeout.InfiniteTimeSpan"/> waits until cancelled.</param>
    /// <param name="cancellationToken">Cancels the wait (not the task).</param>
    /// <returns>The stored result, successful or not (see <see cref="TaskResult.IsError"/>).</returns>
    public async Task<TaskResult> WaitForResultAsync(string taskId, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(taskId);
        await StartAsync(cancellationToken);
        _resources.Listener.Start();
        var signal = new WakeSignal();
        AddWaiter(taskId, signal);
        try
        {
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            deadline.CancelAfter(timeout);
            try
            {
                // Registered before the first check, so a result stored in between still wakes us.
                await WaitBrieflyForListenerAsync(deadline.Token);
                while (true)
                {
                    var recheck = _resources.Listener.IsConnected ? Options.WaitRecheckInterval : DisconnectedRecheck;
                    try
                    {
                        if (await TryGetResultAsync(taskId, deadline.Token) is { } result)
                        {
                            return result;
                        }
                    }
                    catch (Exception ex) when (TransientErrors.IsConnectionFailure(ex))
                    {
                        // The database is restarting or unreachable: keep waiting until the deadline, re-checking soon.
                        recheck = DisconnectedRecheck;
                    }

                    await signal.WaitAsync(recheck, deadline.Token);
                }
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                throw new TaskResultTimeoutException(taskId, timeout);
            }
        }
        finally
        {
            RemoveWaiter(taskId, signal);
        }
    }

    private async Task WaitBrieflyForListenerAsync(CancellationToken cancellationToken)
    {
        if (_resources.Listener.IsConnected || _resources.Listener.PollOnly)
        {
            return;
        }

        try
        {
            await _resources.Listener.Connected.WaitAsync(TimeSpan.FromSeconds(1), cancellationToken);
        }
        catch (TimeoutException)
        {
            // the database may be down: fall back to re-checking until the listener is back
        }
    }

    private void AddWaiter(string taskId, WakeSignal signal)
    {
        lock (_waiters)
        {
            if (!_waiters.TryGetValue(taskId, out var list))
            {
                _waiters[taskId] = list = [];
            }

            list.Add(signal);
        }
    }

    private void RemoveWaiter(string taskId, WakeSignal signal)
    {
        lock (_waiters)
        {
            if (_waiters.TryGetValue(taskId, out var list) && list.Remove(signal) && list.Count == 0)
            {
                _waiters.Remove(taskId);
            }
        }
    }

    private void OnResultsStored(string payload)
    {
        lock (_waiters)
        {
            if (_waiters.Count == 0)
            {
                return;
            }

            foreach (var range in payload.AsSpan().Split(','))
            {
                var id = payload[range];
                if (_waiters.TryGetValue(id, out var list))
                {
                    list.ForEach(s => s.Set());
                }
            }
        }
    }

    private void WakeAllWaiters()
    {
        lock (_waiters)
        {
            foreach (var list in _waiters.Values)
            {
                list.ForEach(s => s.Set());
            }
        }
    }
}
