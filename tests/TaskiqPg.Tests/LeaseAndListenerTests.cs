using Npgsql;

namespace TaskiqPg.Tests;

public sealed class LeaseAndListenerTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(15);

    [Fact]
    public async Task Task_is_redelivered_after_its_worker_dies_mid_lease_and_the_zombies_late_completion_is_rejected()
    {
        var attempts = new List<int>();
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("job", (TaskContext ctx) => { lock (attempts) { attempts.Add(ctx.Attempt); } return ctx.Attempt; }),
            broker: new PostgresBrokerOptions { LeaseDuration = TimeSpan.FromSeconds(1) });
        var handle = await harness.Client.KickAsync<int>("job");

        // A "worker" that claims and then dies: it never renews its lease.
        var zombieClaim = Assert.Single(await harness.Broker.ClaimAsync("zombie", 10));
        Assert.Equal(TaskState.Running, (await harness.Broker.GetTaskAsync(handle.TaskId))!.State);

        await harness.StartWorkerAsync(new TaskiqWorkerOptions { RescueInterval = TimeSpan.FromMilliseconds(200), PollInterval = TimeSpan.FromMilliseconds(200) });

        // Rerun by the live worker. The zombie's claim was never seen to start (no renewal recorded it), so the rescue
        // gave its attempt back: the rerun is attempt 1 again.
        Assert.Equal(1, await handle.WaitForResultAsync(Bound));
        Assert.Equal([1], attempts);

        var acked = await harness.Broker.AckAsync("zombie", [zombieClaim.Lease]);
        Assert.Empty(acked);
        var failed = await harness.Broker.FailAsync("zombie", [new TaskFailure(zombieClaim.Lease, "late", Retry: true)]);
        Assert.Empty(failed);
    }

    [Fact]
    public async Task Expired_lease_on_the_last_attempt_dead_letters_the_task_with_the_reason()
    {
        await using var harness = await QueueHarness.CreateAsync(db, broker: new PostgresBrokerOptions { LeaseDuration = TimeSpan.FromMilliseconds(300) });
        var handle = await harness.Client.KickAsync("never_finishes", options: new KickOptions { MaxAttempts = 1 });
        Assert.Single(await harness.Broker.ClaimAsync("dies", 1));
        // Its handler started (what the worker's renewal records), then the worker died: the attempt counts.
        await harness.ScalarAsync<object>("UPDATE taskiq_messages SET started = true WHERE task_id = $1 RETURNING 1", handle.TaskId);

        await Eventually.TrueAsync(async () => (await harness.Broker.RescueExpiredLeasesAsync()).Count > 0, Bound, "the expired lease is rescued");

        var state = await harness.Broker.GetTaskAsync(handle.TaskId);
        Assert.Equal(TaskState.Discarded, state!.State);
        Assert.Contains("lease expired: worker dies", state.LastError);
    }

    [Fact]
    public async Task Running_task_keeps_its_lease_by_renewal_and_runs_once()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var runs = 0;
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("long", async () => { Interlocked.Increment(ref runs); await gate.Task; }),
            broker: new PostgresBrokerOptions { LeaseDuration = TimeSpan.FromMilliseconds(600) });
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { RescueInterval = TimeSpan.FromMilliseconds(100), PollInterval = TimeSpan.FromMilliseconds(100) });
        var handle = await harness.Client.KickAsync("long");
        await Eventually.TrueAsync(() => Volatile.Read(ref runs) == 1, Bound, "the task starts");

        // Several lease lengths pass while it runs; a second rescuer sweeps too. Renewal must keep it ours.
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(2);
        while (DateTime.UtcNow < until)
        {
            Assert.Empty(await harness.Broker.RescueExpiredLeasesAsync());
            await Task.Delay(100);
        }

        gate.SetResult();
        await handle.WaitForResultAsync(Bound);
        Assert.Equal(1, runs);
    }

    [Fact]
    public async Task Tasks_are_still_delivered_after_the_listen_backend_is_terminated()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("ping", (int i) => i));
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMinutes(10) });

        for (var round = 0; round < 3; round++)
        {
            var pid = harness.Broker.ListenerProcessId;
            Assert.NotEqual(0, pid);
            Assert.True(await harness.ScalarAsync<bool>("SELECT pg_terminate_backend($1)", pid));

            // Kicked during the outage: the reconnect triggers an immediate fetch.
            var duringOutage = await harness.Client.KickAsync<int>("ping", [round]);
            Assert.Equal(round, await duringOutage.WaitForResultAsync(Bound));

            await Eventually.TrueAsync(() => harness.Broker.IsListening && harness.Broker.ListenerProcessId != pid, Bound, "the listener reconnects");
            // After the reconnect, delivery is by NOTIFY again (the poll interval is 10 minutes).
            for (var i = 0; i < 3; i++)
            {
                var after = await harness.Client.KickAsync<int>("ping", [100 + i]);
                Assert.Equal(100 + i, await after.WaitForResultAsync(Bound));
            }
        }
    }

    [Fact]
    public async Task Borrowed_listen_connection_is_used_and_never_closed()
    {
        await using var listen = new NpgsqlConnection(db.ConnectionString);
        await listen.OpenAsync();
        var registry = new TaskRegistry().Add("ping", () => "pong");
        await using var harness = await QueueHarness.CreateAsync(db);
        await using (var broker = new PostgresBroker(harness.DataSource, harness.Broker.Options, listen))
        {
            await using var worker = new WorkerScope(new TaskiqWorker(broker, registry, harness.Results,
                new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMinutes(10) }));
            await broker.ListenerConnected.WaitAsync(Bound);
            Assert.Equal(listen.ProcessID, broker.ListenerProcessId);

            var handle = await harness.Client.KickAsync<string>("ping");
            Assert.Equal("pong", await handle.WaitForResultAsync(Bound));
        }

        Assert.Equal(System.Data.ConnectionState.Open, listen.State);
        await using var check = new NpgsqlCommand("SELECT 1", listen);
        Assert.Equal(1, await check.ExecuteScalarAsync());
    }
}

/// <summary>Starts a worker and stops it on dispose.</summary>
internal sealed class WorkerScope : IAsyncDisposable
{
    public WorkerScope(TaskiqWorker worker)
    {
        Worker = worker;
        worker.StartAsync(CancellationToken.None).GetAwaiter().GetResult();
    }

    public TaskiqWorker Worker { get; }

    public async ValueTask DisposeAsync()
    {
        await Worker.StopAsync(CancellationToken.None);
        Worker.Dispose();
    }
}
