namespace TaskiqPg.Internal;

/// <summary>A copy-on-write list of wake-up callbacks; <see cref="Add"/> returns the handle that removes one.</summary>
internal sealed class Subscribers
{
    private readonly Lock _lock = new();
    private Action[] _callbacks = [];

    public IDisposable Add(Action callback)
    {
        ArgumentNullException.ThrowIfNull(callback);
        lock (_lock)
        {
            _callbacks = [.. _callbacks, callback];
        }

        return new Removal(this, callback);
    }

    public void Invoke()
    {
        foreach (var callback in Volatile.Read(ref _callbacks))
        {
            callback();
        }
    }

    private sealed class Removal(Subscribers owner, Action callback) : IDisposable
    {
        public void Dispose()
        {
            lock (owner._lock)
            {
                owner._callbacks = owner._callbacks.Where(c => c != callback).ToArray();
            }
        }
    }
}
