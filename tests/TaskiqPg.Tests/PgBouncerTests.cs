using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>
/// TaskiqPg behind PgBouncer 1.18 in transaction mode (Debian 12's; no prepared-statement support in that mode), five
/// server connections: with <see cref="PostgresBrokerOptions.PrepareStatements"/> off, concurrent producers and a worker
/// with 50 concurrent handlers run everything through the pooler. (Prepared, the same kicks fail with
/// <c>42P05: prepared statement "_p1" already exists</c> or <c>26000: … does not exist</c>: each physical client
/// connection prepares once, and its Parse and later Binds reach different server connections.)
/// </summary>
public sealed class PgBouncerTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    [Fact]
    public async Task Fifty_concurrent_kicks_and_handlers_run_through_a_transaction_pooler_without_prepared_statements()
    {
        await using var bouncer = await PgBouncer.StartAsync(db.ConnectionString, serverConnections: 5);
        var queue = "pgb" + Guid.NewGuid().ToString("N")[..8];
        var options = new PostgresBrokerOptions { Queue = queue, PrepareStatements = false };
        await using var pooled = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(bouncer.ConnectionString) { MaxPoolSize = 60 }.ConnectionString);
        await using var broker = new PostgresBroker(pooled, options);
        await using var results = new PostgresResultBackend(pooled);
        await broker.StartAsync(); // migrations through the pooler too
        await results.StartAsync();

        var running = 0;
        var peak = 0;
        var registry = new TaskRegistry().Add("slow_add", async (int a, int b) =>
        {
            var now = Interlocked.Increment(ref running);
            InterlockedMax(ref peak, now);
            await Task.Delay(50);
            Interlocked.Decrement(ref running);
            return a + b;
        });
        using var worker = new TaskiqWorker(broker, registry, results, new TaskiqWorkerOptions
        {
            MaxConcurrentTasks = 50, PollInterval = TimeSpan.FromMilliseconds(100), // notifications do not cross a transaction pooler
        });
        await worker.StartAsync(CancellationToken.None);

        var client = new TaskiqClient(broker, results);
        var handles = new List<TaskHandle<int>>();
        for (var round = 0; round < 4; round++)
        {
            handles.AddRange(await Task.WhenAll(Enumerable.Range(0, 50).Select(i => client.KickAsync<int>("slow_add", [round, i]))));
        }

        Assert.Equal(200, handles.Select(h => h.TaskId).Distinct().Count());
        await using var direct = db.CreateDataSource();
        await using var directResults = new PostgresResultBackend(direct);
        await Eventually.TrueAsync(async () =>
        {
            await using var count = direct.CreateCommand("SELECT count(*) FROM taskiq_results WHERE task_id = ANY($1)");
            count.Parameters.AddWithValue(handles.Select(h => h.TaskId).ToArray());
            return (long)(await count.ExecuteScalarAsync())! == 200;
        }, TimeSpan.FromSeconds(60), "every result stored through the pooler");
        for (var i = 0; i < handles.Count; i++)
        {
            Assert.Equal(i / 50 + i % 50, (await directResults.GetResultAsync(handles[i].TaskId)).GetReturnValue<int>());
        }

        Assert.True(Volatile.Read(ref peak) > 5, $"handlers ran {peak} at a time: more than the pooler's 5 server connections");
        await worker.StopAsync(CancellationToken.None);
    }

    private static void InterlockedMax(ref int target, int value)
    {
        var current = Volatile.Read(ref target);
        while (value > current)
        {
            var seen = Interlocked.CompareExchange(ref target, value, current);
            if (seen == current)
            {
                return;
            }

            current = seen;
        }
    }
}
