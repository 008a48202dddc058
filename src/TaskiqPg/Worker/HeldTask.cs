namespace TaskiqPg;

/// <summary>One claim held by this worker: the handler's cancellation and whether the lease was lost.</summary>
internal sealed class HeldTask(ClaimedTask task)
{
    private readonly Lock _gate = new();
    private CancellationTokenSource? _cancellation;
    private bool _leaseLost;

    public ClaimedTask Task { get; } = task;

    /// <summary>Its outcome is being written (or it is being handed back): the renewal no longer judges its lease.</summary>
    public volatile bool Settling;

    /// <summary>Its handler has started; the next renewal records it, so a rescue counts this claim's attempt.</summary>
    public volatile bool Started;

    private bool _cancelRequested;

    /// <summary>A cancel was requested for this task (seen by a renewal).</summary>
    public bool CancelRequested
    {
        get
        {
            lock (_gate)
            {
                return _cancelRequested;
            }
        }
    }

    /// <summary>Records a cancel request and cancels a running handler (on the thread pool: never on the renewal thread).</summary>
    /// <returns>True the first time.</returns>
    public bool RequestCancel()
    {
        CancellationTokenSource? running;
        lock (_gate)
        {
            if (_cancelRequested)
            {
                return false;
            }

            _cancelRequested = true;
            running = _cancellation;
        }

        if (running is not null)
        {
            ThreadPool.UnsafeQueueUserWorkItem(static cts =>
            {
                try
                {
                    cts.Cancel();
                }
                catch (ObjectDisposedException)
                {
                    // the handler has just finished
                }
            }, running, preferLocal: false);
        }

        return true;
    }

    public bool LeaseLost
    {
        get
        {
            lock (_gate)
            {
                return _leaseLost;
            }
        }
    }

    /// <summary>Publishes the run's cancellation before the lost flag is read, so a concurrent loss is never missed.</summary>
    /// <returns>False when the lease is already lost: the task must not start.</returns>
    public bool TryStart(CancellationTokenSource cancellation)
    {
        lock (_gate)
        {
            if (_leaseLost)
            {
                return false;
            }

            _cancellation = cancellation;
            Started = true;
            if (_cancelRequested)
            {
                cancellation.Cancel(); // requested between the caller's check and now: the handler starts cancelled
            }

            return true;
        }
    }

    public void Finish()
    {
        lock (_gate)
        {
            _cancellation = null;
        }
    }

    /// <summary>Marks the lease lost and cancels a running handler.</summary>
    /// <returns>True the first time.</returns>
    public bool MarkLost()
    {
        CancellationTokenSource? running;
        lock (_gate)
        {
            if (_leaseLost)
            {
                return false;
            }

            _leaseLost = true;
            running = _cancellation;
        }

        try
        {
            running?.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // the handler has just finished
        }

        return true;
    }
}
