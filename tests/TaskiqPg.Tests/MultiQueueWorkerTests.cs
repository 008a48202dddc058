using System.Collections.Concurrent;

namespace TaskiqPg.Tests;

/// <summary>One worker serves several queues of one table: strict order or weights, one pool and one listener (issue 11).</summary>
public sealed class MultiQueueWorkerTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    private static string[] NewQueues(params string[] names)
    {
        var prefix = "m" + Guid.NewGuid().ToString("N")[..8] + "_";
        return names.Select(n => prefix + n).ToArray();
    }

    /// <summary>A harness whose task "work"(queue, i) records the order in which tasks start.</summary>
    private static Task<QueueHarness> CreateAsync(DatabaseFixture db, ConcurrentQueue<(string Queue, int I)> runs, PostgresBrokerOptions? broker = null)
        => QueueHarness.CreateAsync(db, r => r.Add("work", (string queue, int i) =>
        {
            runs.Enqueue((queue, i));
            return i;
        }), broker: broker);

    private static async Task KickAsync(QueueHarness harness, string queue, int count)
        => await harness.Broker.KickManyAsync(Enumerable.Range(0, count).Select(i => TaskMessage.Create("work", [queue, i])).ToArray(),
            new KickOptions { Queue = queue });

    private static Task<long> CountAsync(QueueHarness harness, string queue, string status)
        => harness.ScalarAsync<long>("SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND status = $2", queue, status);

    [Fact]
    public async Task A_strict_worker_runs_a_queue_only_while_the_queues_before_it_are_empty()
    {
        var queues = NewQueues("high", "low");
        var runs = new ConcurrentQueue<(string Queue, int I)>();
        await using var harness = await CreateAsync(db, runs);
        await KickAsync(harness, queues[1], 30); // the low queue first: older tasks do not jump the order
        await KickAsync(harness, queues[0], 30);

        await harness.StartWorkerAsync(new TaskiqWorkerOptions { Queues = queues, MaxConcurrentTasks = 1, PrefetchCount = 0 });
        await Eventually.TrueAsync(() => runs.Count == 60, Bound, "both queues are drained");

        Assert.Equal(Enumerable.Repeat(queues[0], 30).Concat(Enumerable.Repeat(queues[1], 30)), runs.Select(r => r.Queue));
    }

    [Fact]
    public async Task A_weighted_worker_deals_slots_in_proportion_to_the_weights_while_every_queue_has_work()
    {
        var queues = NewQueues("a", "b");
        var runs = new ConcurrentQueue<(string Queue, int I)>();
        await using var harness = await CreateAsync(db, runs);
        await KickAsync(harness, queues[0], 300);
        await KickAsync(harness, queues[1], 300);

        await harness.StartWorkerAsync(new TaskiqWorkerOptions
        {
            Queues = queues, QueueOrder = QueueOrder.Weighted, QueueWeights = new Dictionary<string, int> { [queues[0]] = 3 },
            MaxConcurrentTasks = 4, PrefetchCount = 4,
        });
        await Eventually.TrueAsync(() => runs.Count == 600, Bound, "both queues are drained");

        // While both had work (the first 200 starts), a got three slots for each of b's.
        var first = runs.Take(200).Count(r => r.Queue == queues[0]);
        Assert.InRange(first, 140, 160);
        // And b was never starved: its tasks ran from the start.
        Assert.Contains(runs.Take(20), r => r.Queue == queues[1]);
    }

    [Fact]
    public async Task One_worker_wakes_on_a_kick_to_any_of_its_queues_over_the_brokers_one_listener()
    {
        var queues = NewQueues("x", "y", "z");
        var runs = new ConcurrentQueue<(string Queue, int I)>();
        await using var harness = await CreateAsync(db, runs);
        // A one-minute poll: only the NOTIFY of each queue can start its task within the bound.
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { Queues = queues, PollInterval = TimeSpan.FromMinutes(1) });
        var listener = harness.Broker.ListenerProcessId;

        foreach (var queue in queues)
        {
            var handle = await harness.Client.KickAsync<int>("work", [queue, 7], options: new KickOptions { Queue = queue });
            Assert.Equal(7, await handle.WaitForResultAsync(TimeSpan.FromSeconds(10)));
        }

        Assert.Equal(queues, runs.Select(r => r.Queue));
        Assert.Equal(listener, harness.Broker.ListenerProcessId);
        // Its heartbeat lists every queue it serves.
        var worker = Assert.Single(await harness.Broker.GetWorkersAsync(), w => w.Queues.Contains(queues[2]));
        Assert.Equal(queues, worker.Queues);
    }

    [Fact]
    public async Task Pausing_one_of_a_workers_queues_leaves_the_others_running()
    {
        var queues = NewQueues("paused", "open");
        var runs = new ConcurrentQueue<(string Queue, int I)>();
        await using var harness = await CreateAsync(db, runs);
        await harness.Broker.PauseQueueAsync(queues[0]);
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { Queues = queues, PollInterval = TimeSpan.FromMilliseconds(100) });
        await KickAsync(harness, queues[0], 5);
        await KickAsync(harness, queues[1], 5);

        await Eventually.TrueAsync(() => runs.Count(r => r.Queue == queues[1]) == 5, Bound, "the open queue runs");
        Assert.Equal(5L, await CountAsync(harness, queues[0], "pending"));

        await harness.Broker.ResumeQueueAsync(queues[0]);
        await Eventually.TrueAsync(() => runs.Count == 10, Bound, "the resumed queue runs");
    }

    [Fact]
    public async Task A_workers_stop_hands_back_what_it_claimed_from_every_queue()
    {
        var queues = NewQueues("one", "two");
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("gated", async (int i) => { await gate.Task; return i; }));
        foreach (var queue in queues)
        {
            await harness.Broker.KickManyAsync(Enumerable.Range(0, 3).Select(i => TaskMessage.Create("gated", [i])).ToArray(), new KickOptions { Queue = queue });
        }

        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions
        {
            WorkerId = "w-" + queues[0], Queues = queues, QueueOrder = QueueOrder.Weighted, MaxConcurrentTasks = 2, PrefetchCount = 4,
            ShutdownTimeout = TimeSpan.FromSeconds(10),
        });
        await Eventually.TrueAsync(() => worker.ActiveTasks == 6, Bound, "two run, four are prefetched, from both queues");
        // As if a claim cancelled by the stop had committed: rows of the second queue leased to the worker, never read.
        await harness.Broker.KickManyAsync([TaskMessage.Create("gated", [9])], new KickOptions { Queue = queues[1] });
        await harness.Broker.ClaimWithNextDueAsync(worker.WorkerId, [(queues[1], 5)], null, CancellationToken.None);

        var stopping = harness.StopWorkerAsync(worker);
        await Eventually.TrueAsync(async () => await CountAsync(harness, queues[0], "pending") + await CountAsync(harness, queues[1], "pending") == 5,
            Bound, "the four prefetched tasks and the orphan are back in their queues");
        gate.SetResult();
        await stopping.WaitAsync(Bound);

        foreach (var queue in queues)
        {
            Assert.Equal(0L, await CountAsync(harness, queue, "processing"));
        }

        Assert.Equal(2L, await CountAsync(harness, queues[0], "completed") + await CountAsync(harness, queues[1], "completed"));
    }

    [Fact]
    public async Task WhenReceived_hard_stop_hands_unstarted_tasks_back_to_their_own_queues()
    {
        var queues = NewQueues("first", "second");
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("stuck", async (int i) =>
        {
            await gate.Task; // ignores cancellation: still running at the shutdown timeout
            return i;
        }), broker: new PostgresBrokerOptions { CompletedRetention = TimeSpan.Zero }); // acked rows are deleted: handed back, they are inserted again
        await harness.Broker.KickManyAsync([TaskMessage.Create("stuck", [0])], new KickOptions { Queue = queues[0] });
        await harness.Broker.KickManyAsync(Enumerable.Range(1, 3).Select(i => TaskMessage.Create("stuck", [i])).ToArray(), new KickOptions { Queue = queues[1] });
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions
        {
            Queues = queues, AckMode = AckMode.WhenReceived, MaxConcurrentTasks = 1, PrefetchCount = 3, ShutdownTimeout = TimeSpan.FromMilliseconds(300),
        });
        await Eventually.TrueAsync(() => worker.ActiveTasks == 4, Bound, "one runs, three are prefetched");

        var stopping = harness.StopWorkerAsync(worker);
        await Eventually.TrueAsync(async () => await CountAsync(harness, queues[1], "pending") == 3, Bound, "the three unstarted tasks are back in the second queue");
        gate.SetResult();
        await stopping.WaitAsync(Bound);
        Assert.Equal(0L, await CountAsync(harness, queues[0], "pending"));
        Assert.Equal(0L, await harness.ScalarAsync<long>("SELECT count(*) FROM taskiq_messages WHERE queue = $1", harness.Broker.Options.Queue));
    }

    [Fact]
    public async Task A_long_task_of_a_second_queue_keeps_its_lease()
    {
        var queues = NewQueues("first", "second");
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("long", async () => { started.TrySetResult(); await gate.Task; return 1; }),
            broker: new PostgresBrokerOptions { LeaseDuration = TimeSpan.FromSeconds(1) });
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { Queues = queues, LeaseRenewInterval = TimeSpan.FromMilliseconds(100) });
        var handle = await harness.Client.KickAsync<int>("long", options: new KickOptions { Queue = queues[1] });
        await started.Task.WaitAsync(Bound);

        var until = DateTime.UtcNow + TimeSpan.FromSeconds(2.5); // several leases
        while (DateTime.UtcNow < until)
        {
            Assert.Empty(await harness.Broker.RescueExpiredLeasesAsync());
            await Task.Delay(100);
        }

        gate.SetResult();
        Assert.Equal(1, await handle.WaitForResultAsync(Bound));
    }

    [Theory]
    [InlineData("empty")]
    [InlineData("duplicate")]
    [InlineData("bad name")]
    [InlineData("weights without weighted")]
    [InlineData("weight of an unknown queue")]
    [InlineData("zero weight")]
    public async Task Invalid_queue_settings_are_refused_with_a_clear_error(string problem)
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        var options = problem switch
        {
            "empty" => new TaskiqWorkerOptions { Queues = [] },
            "duplicate" => new TaskiqWorkerOptions { Queues = ["a", "a"] },
            "bad name" => new TaskiqWorkerOptions { Queues = ["a", "x\0y"] },
            "weights without weighted" => new TaskiqWorkerOptions { Queues = ["a", "b"], QueueWeights = new Dictionary<string, int> { ["a"] = 2 } },
            "weight of an unknown queue" => new TaskiqWorkerOptions
            {
                Queues = ["a", "b"], QueueOrder = QueueOrder.Weighted, QueueWeights = new Dictionary<string, int> { ["c"] = 2 },
            },
            _ => new TaskiqWorkerOptions { Queues = ["a", "b"], QueueOrder = QueueOrder.Weighted, QueueWeights = new Dictionary<string, int> { ["a"] = 0 } },
        };

        var error = Assert.ThrowsAny<ArgumentException>(() => new TaskiqWorker(harness.Broker, harness.Registry, harness.Results, options));
        Assert.Contains(problem is "empty" or "duplicate" or "bad name" ? "Queues" : "QueueWeights", error.Message);
    }
}
