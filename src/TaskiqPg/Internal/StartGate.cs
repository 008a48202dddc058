namespace TaskiqPg.Internal;

/// <summary>Runs a component's start-up work once, however many callers race to it; a failed start is retried by the next caller.</summary>
internal sealed class StartGate : IDisposable
{
    private readonly SemaphoreSlim _lock = new(1, 1);
    private volatile bool _done;

    public async Task RunOnceAsync(Func<CancellationToken, Task> start, CancellationToken cancellationToken)
    {
        if (_done)
        {
            return;
        }

        await _lock.WaitAsync(cancellationToken);
        try
        {
            if (!_done)
            {
                await start(cancellationToken);
                _done = true;
            }
        }
        finally
        {
            _lock.Release();
        }
    }

    public void Dispose() => _lock.Dispose();
}
