using TaskiqPg.Internal;

namespace TaskiqPg.Tests;

public sealed class WakeSignalTests
{
    [Fact]
    public async Task Many_notifications_before_a_wait_end_that_wait_once()
    {
        var signal = new WakeSignal();
        for (var i = 0; i < 100_000; i++)
        {
            signal.Set(); // e.g. 100k kicks, each with its NOTIFY
        }

        Assert.True(await signal.WaitAsync(TimeSpan.FromSeconds(5), CancellationToken.None));
        Assert.False(await signal.WaitAsync(TimeSpan.FromMilliseconds(50), CancellationToken.None));
    }

    [Fact]
    public async Task A_set_during_a_wait_ends_it()
    {
        var signal = new WakeSignal();
        var wait = signal.WaitAsync(TimeSpan.FromMinutes(1), CancellationToken.None);
        Assert.False(wait.IsCompleted);

        signal.Set();

        Assert.True(await wait.WaitAsync(TimeSpan.FromSeconds(5)));
    }
}
