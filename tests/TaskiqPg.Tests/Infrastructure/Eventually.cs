namespace TaskiqPg.Tests;

/// <summary>Waits for a condition observed in the database or in process state, failing after a bound.</summary>
public static class Eventually
{
    public static async Task TrueAsync(Func<Task<bool>> condition, TimeSpan within, string because)
    {
        var deadline = DateTime.UtcNow + within;
        while (true)
        {
            if (await condition())
            {
                return;
            }

            if (DateTime.UtcNow > deadline)
            {
                Assert.Fail($"Not true within {within.TotalSeconds:0.#} s: {because}");
            }

            await Task.Delay(25);
        }
    }

    public static Task TrueAsync(Func<bool> condition, TimeSpan within, string because)
        => TrueAsync(() => Task.FromResult(condition()), within, because);
}
