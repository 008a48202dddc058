using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>Documented modes do what they say and every stop ends cleanly (issue 10).</summary>
public sealed class StopAndAckModeEdgeTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task WhenReceived_task_running_longer_than_three_renewal_intervals_is_not_cancelled()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("slow", async (CancellationToken ct) =>
        {
            await Task.Delay(TimeSpan.FromSeconds(1), ct);
            return "finished";
        }));
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions { AckMode = AckMode.WhenReceived, LeaseRenewInterval = TimeSpan.FromMilliseconds(200) });
        var handle = await harness.Client.KickAsync<string>("slow");

        Assert.Equal("finished", await handle.WaitForResultAsync(Bound));
        Assert.Equal(0, worker.ActiveTasks);
    }

    [Fact]
    public async Task WhenReceived_stop_runs_the_prefetched_tasks_instead_of_losing_them()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("gated", async (int i) => { await gate.Task; return i; }));
        var messages = Enumerable.Range(0, 4).Select(i => TaskMessage.Create("gated", [i])).ToArray();
        await harness.Broker.KickManyAsync(messages);
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions { AckMode = AckMode.WhenReceived, MaxConcurrentTasks = 1, PrefetchCount = 3 });
        await Eventually.TrueAsync(() => worker.ActiveTasks == 4, Bound, "one runs, three are prefetched");
        var counts = await harness.Broker.GetQueueCountsAsync();
        Assert.Equal((4L, 4L), (counts[TaskState.Completed], counts.Values.Sum())); // acked at receipt

        var stopping = harness.StopWorkerAsync(worker);
        gate.SetResult();
        await stopping.WaitAsync(Bound);

        for (var i = 0; i < 4; i++)
        {
            Assert.Equal(i, (await harness.Results.GetResultAsync(messages[i].TaskId)).GetReturnValue<int>());
        }
    }

    [Fact]
    public async Task WhenReceived_hard_stop_hands_unstarted_tasks_back_to_the_queue()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var runs = 0;
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("stuck", async (int i) =>
        {
            Interlocked.Increment(ref runs);
            await gate.Task; // ignores cancellation: still running at the shutdown timeout
            return i;
        }));
        var messages = Enumerable.Range(0, 4).Select(i => TaskMessage.Create("stuck", [i])).ToArray();
        await harness.Broker.KickManyAsync(messages);
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions
        {
            AckMode = AckMode.WhenReceived, MaxConcurrentTasks = 1, PrefetchCount = 3, ShutdownTimeout = TimeSpan.FromMilliseconds(300),
        });
        await Eventually.TrueAsync(() => worker.ActiveTasks == 4, Bound, "one runs, three are prefetched");

        var stopping = harness.StopWorkerAsync(worker);
        await Eventually.TrueAsync(async () => (await harness.Broker.GetQueueCountsAsync())[TaskState.Available] == 3, Bound,
            "the three unstarted tasks are back in the queue");
        gate.SetResult();
        await stopping.WaitAsync(Bound);
        Assert.Equal(1, runs);
        var states = new List<(TaskState, int)>();
        foreach (var message in messages)
        {
            var state = (await harness.Broker.GetTaskAsync(message.TaskId))!;
            states.Add((state.State, state.Attempts));
        }

        // The one that started stays completed (acked at receipt); the three others are their own rows again, available,
        // with no attempt spent on them.
        Assert.Equal([(TaskState.Available, 0), (TaskState.Available, 0), (TaskState.Available, 0), (TaskState.Completed, 1)], states.Order());
        Assert.Equal(4L, await harness.ScalarAsync<long>("SELECT count(*) FROM taskiq_messages WHERE queue = $1", harness.Broker.Options.Queue));

        await harness.StartWorkerAsync(new TaskiqWorkerOptions { AckMode = AckMode.WhenReceived });
        await Eventually.TrueAsync(() => Volatile.Read(ref runs) == 4, Bound, "another worker runs the handed-back tasks");
    }

    [Theory]
    [InlineData(AckMode.WhenReceived)]
    [InlineData(AckMode.WhenExecuted)]
    [InlineData(AckMode.WhenSaved)]
    public async Task Stopping_workers_at_random_moments_under_load_loses_nothing_and_leaves_nothing_leased(AckMode mode)
    {
        var runs = new System.Collections.Concurrent.ConcurrentDictionary<int, int>();
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("work", async (int i, CancellationToken ct) =>
        {
            runs.AddOrUpdate(i, 1, (_, n) => n + 1);
            await Task.Delay(Random.Shared.Next(0, 3), ct);
            return i;
        }));
        var messages = Enumerable.Range(0, 2000).Select(i => TaskMessage.Create("work", [i])).ToArray();
        await harness.Broker.KickManyAsync(messages);

        var options = new TaskiqWorkerOptions
        {
            AckMode = mode, MaxConcurrentTasks = 8, PrefetchCount = 16, PollInterval = TimeSpan.FromMilliseconds(20),
            LeaseRenewInterval = TimeSpan.FromMilliseconds(10), ShutdownTimeout = TimeSpan.FromSeconds(5),
        };
        for (var round = 0; round < 12; round++)
        {
            var worker = await harness.StartWorkerAsync(options);
            await Task.Delay(Random.Shared.Next(0, 120)); // a random moment, not a synchronisation
            await harness.StopWorkerAsync(worker).WaitAsync(Bound);
            Assert.Equal(0L, await harness.ScalarAsync<long>(
                "SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND status = 'processing'", harness.Broker.Options.Queue));
        }

        await harness.StartWorkerAsync(options with { PollInterval = TimeSpan.FromMilliseconds(50) });
        foreach (var message in messages)
        {
            await harness.Results.WaitForResultAsync(message.TaskId, Bound);
        }

        Assert.Equal(2000, runs.Count);
        // One row per task, each completed.
        Assert.Equal(2000L, await harness.ScalarAsync<long>("SELECT count(*) FROM taskiq_messages WHERE queue = $1", harness.Broker.Options.Queue));
        await Eventually.TrueAsync(async () => (await harness.Broker.GetQueueCountsAsync())[TaskState.Completed] == 2000, Bound, "every row is completed");
    }

    [Fact]
    public async Task WhenReceived_ack_that_fails_transiently_is_retried_and_its_tasks_run_long_before_their_lease_ends()
    {
        // A deadlock between the ack at receipt and a lease renewal over the same rows (the renewal covers every row of
        // the worker while a claim is in flight) once left the claimed rows leased and unheld until the lease ran out.
        var table = "ackfail_" + Guid.NewGuid().ToString("N")[..8];
        var ran = new System.Collections.Concurrent.ConcurrentDictionary<int, int>();
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("work", (int i) => { ran.AddOrUpdate(i, 1, (_, n) => n + 1); return i; }),
            broker: new PostgresBrokerOptions { MessagesTable = table, LeaseDuration = TimeSpan.FromMinutes(2) });
        await ExecuteAsync(harness, $"CREATE SEQUENCE {table}_n");
        await ExecuteAsync(harness, $$"""
            CREATE FUNCTION {{table}}_f() RETURNS trigger LANGUAGE plpgsql AS $f$
            BEGIN
                IF nextval('{{table}}_n') = 1 THEN RAISE EXCEPTION 'injected deadlock' USING ERRCODE = '40P01'; END IF;
                RETURN NEW;
            END $f$
            """);
        await ExecuteAsync(harness, $"""
            CREATE TRIGGER {table}_t BEFORE UPDATE ON {table} FOR EACH ROW
            WHEN (OLD.status = 'processing' AND NEW.status = 'completed') EXECUTE FUNCTION {table}_f()
            """);
        var messages = Enumerable.Range(0, 20).Select(i => TaskMessage.Create("work", [i])).ToArray();
        await harness.Broker.KickManyAsync(messages);

        await harness.StartWorkerAsync(new TaskiqWorkerOptions { AckMode = AckMode.WhenReceived, PollInterval = TimeSpan.FromMilliseconds(50) });
        foreach (var message in messages)
        {
            await harness.Results.WaitForResultAsync(message.TaskId, Bound); // the bound is a quarter of the lease
        }

        Assert.True(await harness.ScalarAsync<long>($"SELECT nextval('{table}_n')") > 1, "the injected failure happened");
        Assert.Equal(20, ran.Count);
        Assert.All(ran.Values, n => Assert.Equal(1, n));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)] // no completed retention: the ack deletes the rows
    public async Task WhenReceived_ack_whose_reply_is_lost_after_it_committed_still_runs_its_tasks(bool deleteAtAck)
    {
        // The ack commits on the server, then the connection dies before its reply arrives: the rows are completed,
        // so nothing would ever run them again. The worker must find out they were acked and run them.
        var table = "acklost_" + Guid.NewGuid().ToString("N")[..8];
        await using var proxy = ProxyToServer();
        await using var proxied = ProxiedDataSource(proxy, table);
        var ran = new System.Collections.Concurrent.ConcurrentDictionary<int, int>();
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("work", (int i) => { ran.AddOrUpdate(i, 1, (_, n) => n + 1); return i; }),
            broker: new PostgresBrokerOptions
            {
                MessagesTable = table, LeaseDuration = TimeSpan.FromMinutes(2), CompletedRetention = deleteAtAck ? TimeSpan.Zero : TimeSpan.FromDays(1),
            });
        await using var workerBroker = new PostgresBroker(proxied, harness.Broker.Options);
        await HoldFirstCompletionAsync(harness, table, deleteAtAck);
        var messages = Enumerable.Range(0, 5).Select(i => TaskMessage.Create("work", [i])).ToArray();
        await harness.Broker.KickManyAsync(messages);

        await harness.StartWorkerAsync(new TaskiqWorkerOptions { AckMode = AckMode.WhenReceived, PollInterval = TimeSpan.FromMilliseconds(50) }, workerBroker);
        await CutWhileCompletingAsync(harness, proxy, table, "ack");
        // The premise: the ack committed although its reply never reached the worker.
        Assert.Equal(deleteAtAck ? 0L : 5L, await harness.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE status = 'completed'"));
        Assert.Equal(0L, await harness.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE status <> 'completed'"));
        proxy.Restore();

        foreach (var message in messages)
        {
            await harness.Results.WaitForResultAsync(message.TaskId, Bound);
        }

        Assert.Equal(5, ran.Count);
        Assert.All(ran.Values, n => Assert.Equal(1, n));
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)] // no completed retention: the settle deletes the rows
    [InlineData(false, true)] // results on another data source: the ack first (WhenExecuted), the results after it
    [InlineData(true, true)]
    public async Task A_settle_whose_reply_is_lost_after_it_committed_counts_its_tasks_completed_on_the_retry(bool deleteAtAck, bool separateResults)
    {
        // The settle (acks and results in one statement) commits, then the connection dies before its reply arrives.
        // Its retry finds the rows already completed: they were completed by this worker under these claims, so they
        // are acked (completed metric, no "completion rejected" warning), not taken for claims another worker won.
        // With the results on another data source the ack goes first and the results are stored for the claims it
        // acked: taken for lost, those tasks would have been completed with no result at all.
        var table = "settlelost_" + Guid.NewGuid().ToString("N")[..8];
        await using var proxy = ProxyToServer();
        await using var proxied = ProxiedDataSource(proxy, table);
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("work", (int i) => i),
            broker: new PostgresBrokerOptions
            {
                MessagesTable = table, LeaseDuration = TimeSpan.FromMinutes(2), CompletedRetention = deleteAtAck ? TimeSpan.Zero : TimeSpan.FromDays(1),
            });
        await using var workerBroker = new PostgresBroker(proxied, harness.Broker.Options);
        // One data source: the combined settle statement; else the acks, then the results on the harness's own.
        await using var workerResults = separateResults ? null : new PostgresResultBackend(proxied);
        await HoldFirstCompletionAsync(harness, table, deleteAtAck);
        using var completed = new QueueCounter("taskiqpg.tasks.completed", harness.Broker.Options.Queue);
        var messages = Enumerable.Range(0, 5).Select(i => TaskMessage.Create("work", [i])).ToArray();
        await harness.Broker.KickManyAsync(messages);

        using var worker = await StartReplyLossWorkerAsync(harness, workerBroker, workerResults);
        await CutWhileCompletingAsync(harness, proxy, table, "settle");
        // The premise: the settle committed (its rows, and with one statement their results) although its reply never
        // reached the worker.
        var settled = deleteAtAck
            ? 5 - await harness.ScalarAsync<long>($"SELECT count(*) FROM {table}")
            : await harness.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE status = 'completed'");
        Assert.InRange(settled, 1, 5);
        Assert.Equal(separateResults ? 0 : settled, await harness.ScalarAsync<long>("SELECT count(*) FROM taskiq_results WHERE task_id = ANY($1)",
            (object)messages.Select(m => m.TaskId).ToArray()));

        proxy.Restore();
        foreach (var message in messages)
        {
            await harness.Results.WaitForResultAsync(message.TaskId, Bound);
        }

        await Eventually.TrueAsync(() => worker.UnreportedCompletions == 0, Bound, "the worker wrote its outcomes");
        Assert.Equal(5L, completed.Count);
        await worker.StopAsync(CancellationToken.None);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)] // results on another data source (WhenExecuted): the failure first, the error results after it
    public async Task A_failure_whose_reply_is_lost_after_it_committed_counts_as_failed_on_the_retry(bool separateResults)
    {
        // As above for failed attempts: the settle dead-letters them and commits, its reply is lost; the retry finds the
        // rows failed by this worker under these claims (its history entry) and counts them failed, not rejected —
        // and, with the results elsewhere, stores their error results.
        var table = "faillost_" + Guid.NewGuid().ToString("N")[..8];
        await using var proxy = ProxyToServer();
        await using var proxied = ProxiedDataSource(proxy, table);
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("broken", (int i) => i < 0 ? i : throw new InvalidOperationException("broken " + i)),
            broker: new PostgresBrokerOptions { MessagesTable = table, LeaseDuration = TimeSpan.FromMinutes(2), DefaultMaxAttempts = 1 });
        await using var workerBroker = new PostgresBroker(proxied, harness.Broker.Options);
        await using var workerResults = separateResults ? null : new PostgresResultBackend(proxied);
        await HoldFirstAsync(harness, table, "UPDATE", "OLD.status = 'processing' AND NEW.status = 'discarded'");
        using var deadLettered = new QueueCounter("taskiqpg.tasks.dead_lettered", harness.Broker.Options.Queue);
        var messages = Enumerable.Range(0, 5).Select(i => TaskMessage.Create("broken", [i])).ToArray();
        await harness.Broker.KickManyAsync(messages);

        using var worker = await StartReplyLossWorkerAsync(harness, workerBroker, workerResults);
        await CutWhileCompletingAsync(harness, proxy, table, "settle");
        Assert.InRange(await harness.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE status = 'discarded'"), 1, 5); // the premise
        proxy.Restore();
        foreach (var message in messages)
        {
            Assert.True((await harness.Results.WaitForResultAsync(message.TaskId, Bound)).IsError);
        }

        await Eventually.TrueAsync(async () => await harness.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE status = 'discarded'") == 5,
            Bound, "every task is dead-lettered");
        await Eventually.TrueAsync(() => worker.UnreportedCompletions == 0, Bound, "the worker wrote its outcomes");
        Assert.Equal(5L, deadLettered.Count);
        await worker.StopAsync(CancellationToken.None);
    }

    /// <summary>Sums one TaskiqPg counter for one queue.</summary>
    private sealed class QueueCounter : IDisposable
    {
        private readonly System.Diagnostics.Metrics.MeterListener _listener;
        private long _count;

        public QueueCounter(string instrumentName, string queue)
        {
            _listener = new System.Diagnostics.Metrics.MeterListener
            {
                InstrumentPublished = (instrument, l) =>
                {
                    if (instrument.Meter.Name == TaskiqDiagnostics.MeterName && instrument.Name == instrumentName)
                    {
                        l.EnableMeasurementEvents(instrument);
                    }
                },
            };
            _listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
            {
                foreach (var tag in tags)
                {
                    if (tag.Key == MessagingTags.Destination && (string?)tag.Value == queue)
                    {
                        Interlocked.Add(ref _count, value);
                    }
                }
            });
            _listener.Start();
        }

        public long Count => Interlocked.Read(ref _count);

        public void Dispose() => _listener.Dispose();
    }

    /// <summary>A worker on <paramref name="broker"/>; with <paramref name="results"/> null its results go to the harness's
    /// own data source, the outcomes first and the results after them (<see cref="AckMode.WhenExecuted"/>).</summary>
    private static async Task<TaskiqWorker> StartReplyLossWorkerAsync(QueueHarness harness, PostgresBroker broker, PostgresResultBackend? results)
    {
        var worker = new TaskiqWorker(broker, harness.Registry, results ?? harness.Results, new TaskiqWorkerOptions
        {
            PollInterval = TimeSpan.FromMilliseconds(50), AckMode = results is null ? AckMode.WhenExecuted : AckMode.WhenSaved,
        });
        await worker.StartAsync(CancellationToken.None);
        return worker;
    }

    private TcpProxy ProxyToServer()
    {
        var target = new NpgsqlConnectionStringBuilder(db.ConnectionString);
        return new TcpProxy(target.Host!, target.Port);
    }

    /// <summary>A data source through <paramref name="proxy"/>, its connections named <paramref name="table"/> (to find them in pg_stat_activity).</summary>
    private NpgsqlDataSource ProxiedDataSource(TcpProxy proxy, string table)
        => NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(db.ConnectionString) { Port = proxy.Port, Timeout = 2, ApplicationName = table }.ConnectionString);

    /// <summary>The first completion of a running row of <paramref name="table"/> (to completed, or its delete) sleeps 1 s inside its transaction.</summary>
    private static Task HoldFirstCompletionAsync(QueueHarness harness, string table, bool deleteAtAck)
        => HoldFirstAsync(harness, table, deleteAtAck ? "DELETE" : "UPDATE", deleteAtAck ? "OLD.status = 'processing'" : "OLD.status = 'processing' AND NEW.status = 'completed'");

    /// <summary>The first <paramref name="operation"/> of a row of <paramref name="table"/> matching <paramref name="when"/> sleeps 1 s inside its transaction.</summary>
    private static async Task HoldFirstAsync(QueueHarness harness, string table, string operation, string when)
    {
        await ExecuteAsync(harness, $"CREATE SEQUENCE {table}_n");
        await ExecuteAsync(harness, $$"""
            CREATE FUNCTION {{table}}_f() RETURNS trigger LANGUAGE plpgsql AS $f$
            BEGIN
                IF nextval('{{table}}_n') = 1 THEN PERFORM pg_sleep(1); END IF;
                RETURN NULL;
            END $f$
            """);
        await ExecuteAsync(harness, $"""
            CREATE TRIGGER {table}_t AFTER {operation} ON {table} FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION {table}_f()
            """);
    }

    /// <summary>Cuts the proxy while the held completion sleeps, then waits until its backend has finished (and committed).</summary>
    private static async Task CutWhileCompletingAsync(QueueHarness harness, TcpProxy proxy, string table, string what)
    {
        var sleeper = 0;
        await Eventually.TrueAsync(async () => (sleeper = await harness.ScalarAsync<int>(
            "SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE application_name = $1 AND wait_event = 'PgSleep'", table)) != 0,
            Bound, $"the {what} is inside its transaction");
        proxy.Cut();
        await Eventually.TrueAsync(async () => !await harness.ScalarAsync<bool>("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", sleeper),
            Bound, $"the {what}'s backend has finished");
    }

    private static async Task ExecuteAsync(QueueHarness harness, string sql)
    {
        await using var command = harness.DataSource.CreateCommand(sql);
        await command.ExecuteNonQueryAsync();
    }

    [Fact]
    public async Task A_claim_cancelled_by_the_stop_leaves_no_row_leased_to_the_stopped_worker()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("noop", () => 1));
        // A claim that commits while the worker stops: row leased to a worker id that no longer claims anything.
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 50).Select(_ => TaskMessage.Create("noop")).ToArray());
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions { WorkerId = "stopped-worker", MaxConcurrentTasks = 1, PrefetchCount = 0 });
        await harness.Broker.ClaimAsync("stopped-worker", 10); // as if the stop had cancelled this claim after its commit
        await harness.StopWorkerAsync(worker);

        Assert.Equal(0L, await harness.ScalarAsync<long>(
            "SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND status = 'processing' AND locked_by = 'stopped-worker'", harness.Broker.Options.Queue));
        // (a completed row keeps the worker that ran it in locked_by: under load the worker runs a few tasks before the stop)
        Assert.Equal(0L, await harness.ScalarAsync<long>(
            "SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND status = 'pending' AND attempts > 0", harness.Broker.Options.Queue));
    }
}
