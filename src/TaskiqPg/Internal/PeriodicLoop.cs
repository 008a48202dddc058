namespace TaskiqPg.Internal;

/// <summary>
/// The one "timer, catch, log" loop of the background services (the worker's pruner, rescuer and depth sampler, the
/// result backend's pruner): a round every interval, a failed round reported and the loop going on, the loop ending
/// only with its token. Whatever a round throws (not only database errors) must not end it silently: a maintenance
/// service that stopped would leave expired leases unrescued or finished rows unpruned with nothing in the logs.
/// </summary>
internal static class PeriodicLoop
{
    /// <param name="interval">Time between the starts of two rounds (a slow round delays the next, never overlaps it).</param>
    /// <param name="firstRoundAtOnce">Run the first round at once instead of after one interval.</param>
    /// <param name="round">One round of work.</param>
    /// <param name="failed">Reports a round that threw (the loop goes on).</param>
    /// <param name="stop">Ends the loop; a round cut short by it is not reported.</param>
    /// <returns>Completes when <paramref name="stop"/> is cancelled.</returns>
    public static async Task RunAsync(TimeSpan interval, bool firstRoundAtOnce, Func<CancellationToken, Task> round,
        Action<Exception> failed, CancellationToken stop)
    {
        using var timer = new PeriodicTimer(interval);
        if (!firstRoundAtOnce && !await TickAsync(timer, stop))
        {
            return;
        }

        do
        {
            try
            {
                await round(stop);
            }
            catch (Exception) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex)
            {
                failed(ex);
            }
        }
        while (await TickAsync(timer, stop));
    }

    private static async Task<bool> TickAsync(PeriodicTimer timer, CancellationToken stop)
    {
        try
        {
            return await timer.WaitForNextTickAsync(stop);
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }
}
