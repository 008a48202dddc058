using TaskiqPg.Internal;

namespace TaskiqPg.Tests;

/// <summary>The background services' shared loop: a failing round is reported and the loop goes on; only its token ends it.</summary>
public sealed class PeriodicLoopTests
{
    [Fact]
    public async Task A_round_that_throws_anything_is_reported_and_the_next_rounds_still_run()
    {
        using var stop = new CancellationTokenSource();
        var rounds = 0;
        var failures = new List<Exception>();
        var loop = PeriodicLoop.RunAsync(TimeSpan.FromMilliseconds(10), firstRoundAtOnce: true, _ =>
        {
            if (Interlocked.Increment(ref rounds) == 1)
            {
                throw new ArgumentException("not a database error");
            }

            if (Volatile.Read(ref rounds) == 3)
            {
                stop.Cancel();
            }

            return Task.CompletedTask;
        }, failures.Add, stop.Token);

        await loop.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(3, rounds);
        Assert.IsType<ArgumentException>(Assert.Single(failures));
    }

    [Fact]
    public async Task A_round_cut_short_by_the_stop_is_not_a_failure_and_the_first_round_may_wait_an_interval()
    {
        using var stop = new CancellationTokenSource();
        var failures = new List<Exception>();
        var started = new TaskCompletionSource();
        var loop = PeriodicLoop.RunAsync(TimeSpan.FromMilliseconds(20), firstRoundAtOnce: false, async ct =>
        {
            started.TrySetResult();
            await Task.Delay(Timeout.Infinite, ct);
        }, failures.Add, stop.Token);

        await started.Task.WaitAsync(TimeSpan.FromSeconds(30));
        await stop.CancelAsync();
        await loop.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Empty(failures);
    }
}
