using Microsoft.Extensions.Diagnostics.HealthChecks;
using Npgsql;
using TaskiqPg.Faults;

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
    public async Task Unprepared_statements_on_a_pool_that_resets_connections_on_close_are_refused_with_the_setting_to_add()
    {
        // Npgsql's default (reset on close) sends DISCARD ALL ahead of a reused connection's next command, which a
        // transaction-mode pooler can route apart from it: the fault scenario "pgbouncer" saw 08P01 and stuck server connections.
        await using var resetting = NpgsqlDataSource.Create(db.ConnectionString);
        var refused = Assert.Throws<ArgumentException>(() => new PostgresBroker(resetting, new PostgresBrokerOptions { PrepareStatements = false }));
        Assert.Contains("No Reset On Close=true", refused.Message);
        Assert.Throws<ArgumentException>(() => new PostgresBroker(db.ConnectionString, new PostgresBrokerOptions { PrepareStatements = false }));

        await using var notResetting = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(db.ConnectionString) { NoResetOnClose = true }.ConnectionString);
        await using var accepted = new PostgresBroker(notResetting, new PostgresBrokerOptions { PrepareStatements = false });
        await using var prepared = new PostgresBroker(resetting); // prepared statements: a direct connection, nothing to check
        await using var unpooled = new PostgresBroker(new NpgsqlConnectionStringBuilder(db.ConnectionString) { Pooling = false }.ConnectionString,
            new PostgresBrokerOptions { PrepareStatements = false });
    }

    [Fact]
    public async Task Fifty_concurrent_kicks_and_handlers_run_through_a_transaction_pooler_without_prepared_statements()
    {
        await using var bouncer = await PgBouncer.StartAsync(db.ConnectionString, serverConnections: 5);
        var queue = "pgb" + Guid.NewGuid().ToString("N")[..8];
        // The recommended setup: statements through the pooler, unprepared; LISTEN on a direct connection.
        var options = new PostgresBrokerOptions { Queue = queue, PrepareStatements = false, ListenConnectionString = db.ConnectionString };
        await using var pooled = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(bouncer.ConnectionString) { MaxPoolSize = 60 }.ConnectionString);
        await using var broker = new PostgresBroker(pooled, options);
        await using var results = new PostgresResultBackend(pooled, new PostgresResultBackendOptions { ListenConnectionString = db.ConnectionString });
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
            MaxConcurrentTasks = 50,
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

    [Fact]
    public async Task A_listener_behind_the_pooler_is_found_deaf_and_a_direct_listen_connection_wakes_the_worker()
    {
        await using var bouncer = await PgBouncer.StartAsync(db.ConnectionString, serverConnections: 3);
        await using var pooled = NpgsqlDataSource.Create(bouncer.ConnectionString);
        var queue = "pgb" + Guid.NewGuid().ToString("N")[..8];

        // LISTEN through the pooler: the connection is up, the probe NOTIFY never arrives.
        await using var deaf = new PostgresBroker(pooled, new PostgresBrokerOptions { Queue = queue, PrepareStatements = false });
        await deaf.StartAsync();
        using var subscription = deaf.Subscribe(() => { });
        await deaf.ListenerConnected.WaitAsync(TimeSpan.FromSeconds(20));
        await Eventually.TrueAsync(() => Task.FromResult(deaf.IsListenerDeaf), TimeSpan.FromSeconds(20), "the connect-time probe finds the listener deaf");
        Assert.False(deaf.IsListening);
        Assert.False(await deaf.VerifyNotificationsAsync());
        var health = await new TaskiqListenerHealthCheck(deaf, hasWorker: true).CheckHealthAsync(new HealthCheckContext());
        Assert.Equal(HealthStatus.Unhealthy, health.Status);
        Assert.Contains("receives no notifications", health.Description);
        Assert.Contains("ListenConnectionString", health.Description);

        // The same pooled data source with a direct LISTEN connection: a worker that would poll only every ten minutes
        // starts a kick at once, so the kick's NOTIFY (sent through the pooler) reached it.
        await using var broker = new PostgresBroker(pooled, new PostgresBrokerOptions
        {
            Queue = queue, PrepareStatements = false, ListenConnectionString = db.ConnectionString,
        });
        await using var results = new PostgresResultBackend(pooled, new PostgresResultBackendOptions { ListenConnectionString = db.ConnectionString });
        using var worker = new TaskiqWorker(broker, new TaskRegistry().Add("double", (int x) => 2 * x), results,
            new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMinutes(10) });
        await worker.StartAsync(CancellationToken.None);
        await broker.ListenerConnected.WaitAsync(TimeSpan.FromSeconds(20));
        Assert.True(await broker.VerifyNotificationsAsync(), "the probe arrives on the direct LISTEN connection");
        Assert.True(broker.IsListening);
        health = await new TaskiqListenerHealthCheck(broker, hasWorker: true).CheckHealthAsync(new HealthCheckContext());
        Assert.Equal(HealthStatus.Healthy, health.Status);
        await Eventually.TrueAsync(() => Task.FromResult(worker.LastLoopActivity != default), TimeSpan.FromSeconds(20), "the worker's first claim ran");

        var handle = await new TaskiqClient(broker, results).KickAsync<int>("double", [21]);
        Assert.Equal(42, await handle.WaitForResultAsync(TimeSpan.FromSeconds(60)));
        await worker.StopAsync(CancellationToken.None);
    }

    [Fact]
    public async Task Poll_only_mode_runs_kick_result_and_schedule_fire_through_the_pooler_with_no_listen_connection()
    {
        await using var bouncer = await PgBouncer.StartAsync(db.ConnectionString, serverConnections: 3);
        await using var pooled = NpgsqlDataSource.Create(bouncer.ConnectionString);
        var suffix = Guid.NewGuid().ToString("N")[..8];
        await using var broker = new PostgresBroker(pooled, new PostgresBrokerOptions { Queue = "pgb" + suffix, PrepareStatements = false, PollOnly = true });
        await using var results = new PostgresResultBackend(pooled, new PostgresResultBackendOptions { PollOnly = true });
        await using var source = new PostgresScheduleSource(pooled, new PostgresScheduleSourceOptions
        {
            SchedulesTable = "s" + suffix, FiresTable = "f" + suffix, Channel = "c" + suffix, PollOnly = true,
        });
        using var worker = new TaskiqWorker(broker, new TaskRegistry().Add("echo", (string text) => text), results,
            new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(200) });
        using var scheduler = new TaskiqScheduler(source, broker, new TaskiqSchedulerOptions { RefreshInterval = TimeSpan.FromMilliseconds(500) });
        await worker.StartAsync(CancellationToken.None);
        await scheduler.StartAsync(CancellationToken.None);

        var handle = await new TaskiqClient(broker, results).KickAsync<string>("echo", ["kicked"]);
        Assert.Equal("kicked", await handle.WaitForResultAsync(TimeSpan.FromSeconds(60)));

        // A schedule added after the scheduler started is seen by its refresh (no NOTIFY), fires, runs, stores its result.
        var schedule = await source.AddScheduleAsync(new ScheduleDefinition { TaskName = "echo", Args = ["fired"], Interval = TimeSpan.FromSeconds(1) });
        string? fired = null;
        await Eventually.TrueAsync(async () => (fired = (await source.GetFiresAsync(schedule)).FirstOrDefault().TaskId) is not null,
            TimeSpan.FromSeconds(30), "the schedule fired");
        var result = await results.WaitForResultAsync(fired!, TimeSpan.FromSeconds(60));
        Assert.Equal("fired", result.GetReturnValue<string>());

        // No component opened a LISTEN connection.
        Assert.Equal(0, broker.ListenerProcessId);
        Assert.False(broker.ListenerConnected.IsCompleted);
        Assert.False(broker.IsListening || broker.IsListenerDeaf || results.IsListening);
        var health = await new TaskiqListenerHealthCheck(broker, hasWorker: true).CheckHealthAsync(new HealthCheckContext());
        Assert.Equal(HealthStatus.Healthy, health.Status);
        Assert.Contains("Poll-only", health.Description);
        await scheduler.StopAsync(CancellationToken.None);
        await worker.StopAsync(CancellationToken.None);
    }

    [Fact]
    public async Task A_pooler_restart_mid_run_loses_no_task_and_no_result()
    {
        await using var bouncer = await PgBouncer.StartAsync(db.ConnectionString, serverConnections: 5);
        await using var pooled = NpgsqlDataSource.Create(bouncer.ConnectionString);
        var queue = "pgb" + Guid.NewGuid().ToString("N")[..8];
        await using var broker = new PostgresBroker(pooled, new PostgresBrokerOptions
        {
            Queue = queue, PrepareStatements = false, ListenConnectionString = db.ConnectionString,
        });
        await using var results = new PostgresResultBackend(pooled);
        var registry = new TaskRegistry().Add("slow_square", async (int x) =>
        {
            await Task.Delay(20);
            return x * x;
        });
        using var worker = new TaskiqWorker(broker, registry, results, new TaskiqWorkerOptions { MaxConcurrentTasks = 10 });
        var client = new TaskiqClient(broker, results);
        await broker.StartAsync();
        var ids = new List<string>();
        for (var i = 0; i < 300; i++)
        {
            ids.Add((await client.KickAsync<int>("slow_square", [i])).TaskId);
        }

        await worker.StartAsync(CancellationToken.None);
        await using var direct = db.CreateDataSource();
        async Task<long> StoredAsync()
        {
            await using var count = direct.CreateCommand("SELECT count(*) FROM taskiq_results WHERE task_id = ANY($1)");
            count.Parameters.AddWithValue(ids.ToArray());
            return (long)(await count.ExecuteScalarAsync())!;
        }

        await Eventually.TrueAsync(async () => await StoredAsync() >= 30, TimeSpan.FromSeconds(60), "the run is under way");
        await bouncer.RestartAsync(); // every connection through the pooler drops mid-claim, mid-handler and mid-settle
        var storedAtRestart = await StoredAsync();
        Assert.True(storedAtRestart < ids.Count, $"the restart came mid-run ({storedAtRestart} of {ids.Count} stored)");

        await Eventually.TrueAsync(async () => await StoredAsync() == ids.Count, TimeSpan.FromSeconds(120), "every result stored after the restart");
        await using var directResults = new PostgresResultBackend(direct);
        for (var i = 0; i < ids.Count; i++)
        {
            Assert.Equal(i * i, (await directResults.GetResultAsync(ids[i])).GetReturnValue<int>());
        }

        await using var states = direct.CreateCommand("SELECT status, count(*) FROM taskiq_messages WHERE queue = $1 GROUP BY status");
        states.Parameters.AddWithValue(queue);
        await using var reader = await states.ExecuteReaderAsync();
        var byState = new Dictionary<string, long>();
        while (await reader.ReadAsync())
        {
            byState[reader.GetString(0)] = reader.GetInt64(1);
        }

        Assert.Equal(new Dictionary<string, long> { ["completed"] = ids.Count }, byState);
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
