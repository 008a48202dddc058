namespace TaskiqPg.Tests;

/// <summary>The workers table: registration, heartbeats, deregistration, and the rescue of a dead worker's tasks.</summary>
public sealed class LiveWorkerTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task A_worker_registers_with_its_host_process_and_queue_heartbeats_its_tasks_in_flight_and_deregisters_on_stop()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("wait", async () => { await gate.Task; return 1; }));
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions
        {
            MaxConcurrentTasks = 3, PrefetchCount = 2, HeartbeatInterval = TimeSpan.FromMilliseconds(100), PollInterval = TimeSpan.FromMilliseconds(50),
        });

        await Eventually.TrueAsync(async () => (await Mine(harness, worker)) is not null, Bound, "the worker registers");
        var info = (await Mine(harness, worker))!;
        Assert.Equal((Environment.MachineName, Environment.ProcessId, 5, false), (info.Host, info.ProcessId, info.Capacity, info.IsStale));
        Assert.Equal([harness.Broker.Options.Queue], info.Queues);

        var handles = new List<TaskHandle<int>>();
        for (var i = 0; i < 2; i++)
        {
            handles.Add(await harness.Client.KickAsync<int>("wait"));
        }

        await Eventually.TrueAsync(async () => (await Mine(harness, worker))?.InFlight == 2, Bound, "the heartbeat carries the tasks in flight");
        var before = (await Mine(harness, worker))!.HeartbeatAt;
        await Eventually.TrueAsync(async () => (await Mine(harness, worker))!.HeartbeatAt > before, Bound, "the heartbeat moves on");
        gate.SetResult();
        foreach (var handle in handles)
        {
            Assert.Equal(1, await handle.WaitForResultAsync(Bound));
        }

        await harness.StopWorkerAsync(worker);
        Assert.Null(await Mine(harness, worker));
    }

    [Fact]
    public async Task The_tasks_of_a_worker_that_stopped_heartbeating_are_rescued_before_their_leases_expire()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("add", (int a, int b) => a + b),
            broker: new PostgresBrokerOptions { LeaseDuration = TimeSpan.FromHours(1), WorkerStaleAfter = TimeSpan.FromSeconds(3) });
        var handle = await harness.Client.KickAsync<int>("add", [2, 3]);
        // A worker that claimed the task under an hour's lease, then died: its registry row stops at an old heartbeat.
        Assert.Single(await harness.Broker.ClaimAsync("dead-pod", 1));
        await harness.ScalarAsync<int>(
            "WITH i AS (INSERT INTO taskiq_workers (id, host, pid, queues, heartbeat_at, stale_after) VALUES ('dead-pod', 'gone', 1, ARRAY[$1], now() - interval '1 minute', interval '3 seconds') RETURNING 1) SELECT count(*)::int FROM i",
            harness.Broker.Options.Queue);

        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50), RescueInterval = TimeSpan.FromMilliseconds(100), HeartbeatInterval = TimeSpan.FromMilliseconds(500) });
        Assert.Equal(5, await handle.WaitForResultAsync(Bound)); // an hour's lease, rescued within seconds
        var record = (await harness.Broker.GetTaskAsync(handle.TaskId))!;
        Assert.Equal(TaskState.Completed, record.State);
        Assert.Equal(1, record.Attempts); // the dead worker's claim never started: its attempt was given back
    }

    [Fact]
    public async Task A_live_workers_long_running_task_is_never_rescued_while_it_heartbeats()
    {
        var runs = 0;
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("slow", async (CancellationToken ct) =>
        {
            Interlocked.Increment(ref runs);
            await Task.Delay(TimeSpan.FromSeconds(3), ct); // more than the stale bound
            return "done";
        }), broker: new PostgresBrokerOptions { LeaseDuration = TimeSpan.FromHours(1), WorkerStaleAfter = TimeSpan.FromSeconds(1.5) });
        var options = new TaskiqWorkerOptions
        {
            PollInterval = TimeSpan.FromMilliseconds(50), RescueInterval = TimeSpan.FromMilliseconds(100), HeartbeatInterval = TimeSpan.FromMilliseconds(200),
        };
        await harness.StartWorkerAsync(options);
        await using var otherBroker = new PostgresBroker(db.CreateDataSource(), harness.Broker.Options);
        await harness.StartWorkerAsync(options, otherBroker); // rescues every 100 ms
        var handle = await harness.Client.KickAsync<string>("slow");

        Assert.Equal("done", await handle.WaitForResultAsync(Bound));
        Assert.Equal(1, runs);
        Assert.Equal((TaskState.Completed, 1), ((await harness.Broker.GetTaskAsync(handle.TaskId))!.State, (await harness.Broker.GetTaskAsync(handle.TaskId))!.Attempts));
    }

    [Fact]
    public async Task A_rescuer_with_a_short_bound_never_takes_the_task_of_a_worker_registered_with_a_longer_one()
    {
        var runs = 0;
        Func<CancellationToken, Task<string>> slow = async ct =>
        {
            Interlocked.Increment(ref runs);
            await Task.Delay(TimeSpan.FromSeconds(4), ct); // two of its default 2 s heartbeats: "stale" by a 1 s bound
            return "done";
        };
        // The runner: default bound (15 s) and heartbeat (2 s), a lease of an hour.
        await using var runner = await QueueHarness.CreateAsync(db, r => r.Add("slow", slow), broker: new PostgresBrokerOptions { LeaseDuration = TimeSpan.FromHours(1) });
        await runner.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50), MaxConcurrentTasks = 1, PrefetchCount = 0 });
        var handle = await runner.Client.KickAsync<string>("slow");
        await Eventually.TrueAsync(() => Task.FromResult(Volatile.Read(ref runs) == 1), Bound, "the task runs");
        // The rescuer, configured with a 1 s bound, on another queue, rescuing every 100 ms (rescues see every queue).
        await using var rescuer = await QueueHarness.CreateAsync(db, broker: new PostgresBrokerOptions { WorkerStaleAfter = TimeSpan.FromSeconds(1) });
        await rescuer.StartWorkerAsync(new TaskiqWorkerOptions { RescueInterval = TimeSpan.FromMilliseconds(100), HeartbeatInterval = TimeSpan.FromMilliseconds(300) });

        Assert.Equal("done", await handle.WaitForResultAsync(Bound));
        Assert.Equal(1, runs);
        Assert.Equal((TaskState.Completed, 1), ((await runner.Broker.GetTaskAsync(handle.TaskId))!.State, (await runner.Broker.GetTaskAsync(handle.TaskId))!.Attempts));
    }

    [Fact]
    public async Task Entries_of_long_dead_workers_are_forgotten_and_a_heartbeat_faster_than_a_third_of_the_bound_is_required()
    {
        await using var harness = await QueueHarness.CreateAsync(db, broker: new PostgresBrokerOptions { WorkerStaleAfter = TimeSpan.FromSeconds(1) });
        await harness.ScalarAsync<int>(
            "WITH i AS (INSERT INTO taskiq_workers (id, host, pid, queues, heartbeat_at, stale_after) VALUES ($1, 'gone', 1, ARRAY['x'], now() - interval '1 hour', interval '1 second') RETURNING 1) SELECT count(*)::int FROM i",
            "long-dead-" + harness.Broker.Options.Queue);
        Assert.Contains(await harness.Broker.GetWorkersAsync(), w => w.Id == "long-dead-" + harness.Broker.Options.Queue && w.IsStale);

        await harness.StartWorkerAsync(new TaskiqWorkerOptions { RescueInterval = TimeSpan.FromMilliseconds(100), HeartbeatInterval = TimeSpan.FromMilliseconds(300) });
        await Eventually.TrueAsync(async () => (await harness.Broker.GetWorkersAsync()).All(w => w.Id != "long-dead-" + harness.Broker.Options.Queue), Bound,
            "the long-dead entry is deleted");

        var error = Assert.Throws<ArgumentException>(() => new TaskiqWorker(harness.Broker, harness.Registry, options: new TaskiqWorkerOptions { HeartbeatInterval = TimeSpan.FromMilliseconds(400) }));
        Assert.Contains("WorkerStaleAfter", error.Message);
    }

    private static async Task<WorkerInfo?> Mine(QueueHarness harness, TaskiqWorker worker)
        => (await harness.Broker.GetWorkersAsync()).SingleOrDefault(w => w.Id == worker.WorkerId);
}
