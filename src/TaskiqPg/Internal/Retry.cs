namespace TaskiqPg.Internal;

/// <summary>Backoff for background loops that retry database work.</summary>
internal static class Retry
{
    private const double MaxDelayMs = 5000;

    /// <summary>100 ms doubling per failure up to 5 s, with 50–100 % jitter.</summary>
    public static TimeSpan Backoff(int failures)
        => TimeSpan.FromMilliseconds(Math.Min(MaxDelayMs, 100 * Math.Pow(2, Math.Min(failures, 10))) * (0.5 + Random.Shared.NextDouble() / 2));

    /// <summary>Waits, returning early (without throwing) when <paramref name="cancellationToken"/> fires.</summary>
    public static async Task DelayAsync(TimeSpan delay, CancellationToken cancellationToken)
    {
        try
        {
            await Task.Delay(delay, cancellationToken);
        }
        catch (OperationCanceledException)
        {
        }
    }
}
