using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace TaskiqPg.Tests;

public sealed class BrokerDeliveryTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Kicked_task_runs_and_its_result_is_returned()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("add", (int a, int b) => a + b));
        var worker = await harness.StartWorkerAsync();

        var handle = await harness.Client.KickAsync<int>("add", [2, 3]);

        Assert.Equal(5, await handle.WaitForResultAsync(Bound));
        var record = await harness.Broker.GetTaskAsync(handle.TaskId); // kept for CompletedRetention (24 h by default)
        Assert.Equal((TaskState.Completed, 1, worker.WorkerId), (record!.State, record.Attempts, record.Worker));
        Assert.NotNull(record.FinishedAt);
    }

    [Fact]
    public async Task Tasks_are_delivered_through_notify_while_polling_is_rare()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("ping", (int i) => i));
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMinutes(10) });

        // One at a time: after each task the worker claims again, finds nothing and sleeps until woken. With a
        // 10-minute poll only a NOTIFY can bring the next task in within the bound.
        for (var i = 0; i < 5; i++)
        {
            var handle = await harness.Client.KickAsync<int>("ping", [i]);
            Assert.Equal(i, await handle.WaitForResultAsync(Bound));
        }
    }

    [Fact]
    public async Task An_idle_worker_claims_once_per_task_kicked_and_not_again_when_the_task_ends()
    {
        // The worker's claims are counted on its data source; kicks come from another broker, so only NOTIFY wakes it.
        using var claims = new CommandCounter(sql => sql.Contains("WITH next AS", StringComparison.Ordinal));
        await using var dataSource = claims.CreateDataSource(db.ConnectionString);
        var queue = "idle" + Guid.NewGuid().ToString("N")[..8];
        await using var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = queue });
        await using var results = new PostgresResultBackend(dataSource);
        await broker.StartAsync();
        await results.StartAsync();
        using var worker = new TaskiqWorker(broker, new TaskRegistry().Add("ping", (int i) => i), results,
            new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMinutes(10) });
        await worker.StartAsync(CancellationToken.None);
        await broker.ListenerConnected;
        await Eventually.TrueAsync(() => Task.FromResult(claims.Count >= 1), Bound, "the worker's first claim at start");

        await using var producerSource = db.CreateDataSource();
        await using var producer = new PostgresBroker(producerSource, new PostgresBrokerOptions { Queue = queue });
        var client = new TaskiqClient(producer, new PostgresResultBackend(producerSource));
        var before = claims.Count;
        const int kicks = 10;
        for (var i = 0; i < kicks; i++)
        {
            var handle = await client.KickAsync<int>("ping", [i]);
            Assert.Equal(i, await handle.WaitForResultAsync(Bound));
        }

        // One claim per NOTIFY finds the task; a finished task frees a slot, which must not send the idle worker to
        // claim again (it used to: two or three claims per task, finding nothing, beside the task's own settle).
        Assert.InRange(claims.Count - before, kicks, kicks + 1);
        await worker.StopAsync(CancellationToken.None);
    }

    [Fact]
    public async Task Task_kicked_while_no_worker_listens_is_run_when_one_starts()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("echo", (string s) => s));
        var handle = await harness.Client.KickAsync<string>("echo", ["hello"]);

        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMinutes(10) });

        Assert.Equal("hello", await handle.WaitForResultAsync(Bound));
    }

    [Fact]
    public async Task Exactly_one_of_several_competing_workers_runs_each_task()
    {
        var runs = new ConcurrentBag<(string TaskId, string Worker)>();
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("record", async (TaskContext ctx) =>
        {
            runs.Add((ctx.TaskId, ctx.Labels["w"]));
            await Task.Yield();
        }));

        // Three workers, each on its own broker instance (own LISTEN connection), same queue.
        var workers = new List<TaskiqWorker>();
        for (var i = 0; i < 3; i++)
        {
            var broker = new PostgresBroker(harness.DataSource, harness.Broker.Options);
            workers.Add(await harness.StartWorkerAsync(new TaskiqWorkerOptions { MaxConcurrentTasks = 4, PollInterval = TimeSpan.FromMilliseconds(200) }, broker));
        }

        var handles = new List<TaskHandle>();
        for (var i = 0; i < 300; i++)
        {
            handles.Add(await harness.Client.KickAsync("record", options: new KickOptions { Labels = new Dictionary<string, string> { ["w"] = "?" } }));
        }

        foreach (var handle in handles)
        {
            await handle.WaitForResultAsync(TimeSpan.FromSeconds(30));
        }

        Assert.Equal(300, runs.Count);
        Assert.Equal(300, runs.Select(r => r.TaskId).Distinct().Count());
    }

    [Fact]
    public async Task Delayed_task_does_not_run_early_and_runs_after_its_time()
    {
        var ranAt = new TaskCompletionSource<DateTimeOffset>(TaskCreationOptions.RunContinuationsAsynchronously);
        QueueHarness? h = null;
        await using var harness = h = await QueueHarness.CreateAsync(db, r => r.Add("later", async () =>
        {
            ranAt.TrySetResult(await h!.ScalarAsync<DateTime>("SELECT clock_timestamp()"));
        }));
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(200) });

        var kickedAt = new DateTimeOffset(await harness.ScalarAsync<DateTime>("SELECT clock_timestamp()"));
        await harness.Client.KickAsync("later", options: new KickOptions { Delay = TimeSpan.FromSeconds(2) });

        var ran = await ranAt.Task.WaitAsync(Bound);
        Assert.True(ran - kickedAt >= TimeSpan.FromSeconds(2), $"ran {(ran - kickedAt).TotalMilliseconds} ms after the kick, before its delay");
    }

    [Fact]
    public async Task Higher_priority_tasks_run_first()
    {
        var order = new ConcurrentQueue<int>();
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("p", (int p) => order.Enqueue(p)));
        var handles = new List<TaskHandle>();
        foreach (var priority in new[] { 1, 5, 3, -2, 4 })
        {
            handles.Add(await harness.Client.KickAsync("p", [priority], options: new KickOptions { Priority = priority }));
        }

        await harness.StartWorkerAsync(new TaskiqWorkerOptions { MaxConcurrentTasks = 1, PrefetchCount = 0 });
        foreach (var handle in handles)
        {
            await handle.WaitForResultAsync(Bound);
        }

        Assert.Equal([5, 4, 3, 1, -2], order.ToArray());
    }

    [Fact]
    public async Task KickMany_inserts_ten_thousand_tasks_in_one_call()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        var messages = Enumerable.Range(0, 10_000).Select(i => TaskMessage.Create("n", [i])).ToArray();

        var inserted = await harness.Broker.KickManyAsync(messages);

        Assert.Equal(10_000, inserted);
        Assert.Equal(10_000, (await harness.Broker.GetQueueCountsAsync())[TaskState.Available]);
        var distinctIds = await harness.ScalarAsync<long>(
            "SELECT count(DISTINCT task_id) FROM taskiq_messages WHERE queue = $1", harness.Broker.Options.Queue);
        Assert.Equal(10_000, distinctIds);
    }

    [Fact]
    public async Task KickMany_tasks_are_all_executed()
    {
        var sum = 0L;
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("n", (int i) => Interlocked.Add(ref sum, i)));
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { MaxConcurrentTasks = 8 });
        var messages = Enumerable.Range(1, 2_000).Select(i => TaskMessage.Create("n", [i])).ToArray();

        await harness.Broker.KickManyAsync(messages);

        await Eventually.TrueAsync(async () => (await harness.Broker.GetQueueCountsAsync())[TaskState.Completed] == 2_000, TimeSpan.FromSeconds(60),
            "every kicked task completes");
        Assert.Equal(2_000, (await harness.Broker.GetQueueCountsAsync()).Values.Sum());
        Assert.Equal(2_000L * 2_001 / 2, Interlocked.Read(ref sum));
    }

    [Fact]
    public async Task KickMany_keeps_each_tasks_fields_and_computes_the_delay_on_the_database_clock()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        var messages = Enumerable.Range(0, 300).Select(i => TaskMessage.Create("n", [i])).ToArray();

        await harness.Broker.KickManyAsync(messages, new KickOptions
        {
            Delay = TimeSpan.FromHours(1), Priority = 7, MaxAttempts = 5, Labels = new Dictionary<string, string> { ["tenant"] = "a" },
        });

        // run_at = the transaction's now() + delay, exactly as an INSERT ... now() + $delay would store it.
        Assert.Equal(300L, await harness.ScalarAsync<long>(
            """
            SELECT count(*) FROM taskiq_messages
            WHERE queue = $1 AND run_at - created_at = interval '1 hour' AND priority = 7 AND max_attempts = 5
              AND labels ->> 'tenant' = 'a' AND status = 'scheduled' AND message::jsonb ->> 'task_name' = 'n'
            """, harness.Broker.Options.Queue));
        Assert.Equal(Enumerable.Range(0, 300).ToArray(), (await harness.ScalarAsync<int[]>(
            "SELECT array_agg((message::jsonb -> 'args' ->> 0)::int ORDER BY id) FROM taskiq_messages WHERE queue = $1", harness.Broker.Options.Queue)));
    }

    [Fact]
    public async Task KickMany_with_a_null_message_inserts_nothing()
    {
        await using var harness = await QueueHarness.CreateAsync(db);

        await Assert.ThrowsAsync<ArgumentException>(() => harness.Broker.KickManyAsync([TaskMessage.Create("n"), null!]));

        Assert.Equal(0, (await harness.Broker.GetQueueCountsAsync()).Values.Sum());
    }

    [Fact]
    public async Task Disposing_a_broker_right_after_a_kick_still_wakes_the_workers()
    {
        // The wake-up NOTIFY of a kick outside a transaction is sent after its commit, coalesced, in the background;
        // DisposeAsync must wait for it even when the broker owns (and then disposes) its pool.
        await using var listener = new NpgsqlConnection(db.ConnectionString);
        await listener.OpenAsync();
        var woken = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        listener.Notification += (_, e) => woken.TrySetResult(e.Payload);
        var options = new PostgresBrokerOptions { Queue = "dispose_" + Guid.NewGuid().ToString("N")[..8], Channel = "wake_" + Guid.NewGuid().ToString("N")[..8] };
        await using (var listen = new NpgsqlCommand($"LISTEN {options.Channel}", listener))
        {
            await listen.ExecuteNonQueryAsync();
        }

        var broker = new PostgresBroker(db.ConnectionString, options);
        await broker.KickAsync(TaskMessage.Create("n"));
        await broker.DisposeAsync();

        _ = listener.WaitAsync(Bound); // reads (and so delivers) pending notifications
        Assert.Equal(options.Queue, await woken.Task.WaitAsync(Bound));
    }
    [Fact]
    public async Task A_kick_has_sent_its_wake_up_when_it_returns()
    {
        // A listener receives notifications in the order their transactions committed. A marker NOTIFY sent right
        // after each KickAsync returns must therefore arrive after that kick's wake-up: the wake-up rides in the kick's
        // own round trip (a transaction of its own after the insert), not in a background send that may come later.
        await using var listener = new NpgsqlConnection(db.ConnectionString);
        await listener.OpenAsync();
        var received = new ConcurrentQueue<string>();
        listener.Notification += (_, e) => received.Enqueue(e.Channel + ":" + e.Payload);
        var options = new PostgresBrokerOptions { Queue = "inline_" + Guid.NewGuid().ToString("N")[..8], Channel = "wake_" + Guid.NewGuid().ToString("N")[..8] };
        var markers = "marker_" + Guid.NewGuid().ToString("N")[..8];
        await using (var listen = new NpgsqlCommand($"LISTEN {options.Channel}; LISTEN {markers}", listener))
        {
            await listen.ExecuteNonQueryAsync();
        }

        await using var broker = new PostgresBroker(db.ConnectionString, options);
        await using var other = NpgsqlDataSource.Create(db.ConnectionString);
        const int kicks = 20;
        for (var i = 0; i < kicks; i++)
        {
            await broker.KickAsync(TaskMessage.Create("n"));
            await using var marker = other.CreateCommand("SELECT pg_notify($1, $2)");
            marker.Parameters.Add(new NpgsqlParameter<string> { TypedValue = markers });
            marker.Parameters.Add(new NpgsqlParameter<string> { TypedValue = i.ToString(System.Globalization.CultureInfo.InvariantCulture) });
            await marker.ExecuteNonQueryAsync();
        }

        var last = $"{markers}:{kicks - 1}";
        using var timeout = new CancellationTokenSource(Bound);
        while (!received.Contains(last))
        {
            await listener.WaitAsync(timeout.Token);
        }

        // Before every marker, a wake-up of the queue that was not already counted before the previous marker.
        var wakeUpsSinceMarker = 0;
        var order = received.ToArray();
        foreach (var notification in order)
        {
            if (notification.StartsWith(markers, StringComparison.Ordinal))
            {
                Assert.True(wakeUpsSinceMarker > 0, $"No wake-up before {notification}: {string.Join(", ", order)}");
                wakeUpsSinceMarker = 0;
            }
            else
            {
                Assert.Equal($"{options.Channel}:{options.Queue}", notification);
                wakeUpsSinceMarker++;
            }
        }
    }

    [Fact]
    public async Task Concurrent_kicks_each_wake_a_worker_that_polls_rarely()
    {
        // Kicks from one broker share its wake-up: the first one not covered by a wake-up on its way sends it in its own
        // round trip, the others meanwhile get one after it. In bursts of concurrent kicks, a burst's last kick left
        // without a wake-up would wait for the 10-minute poll.
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("ping", (int i) => i));
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMinutes(10) });
        for (var burst = 0; burst < 10; burst++)
        {
            var handles = await Task.WhenAll(Enumerable.Range(0, 8).Select(i => harness.Client.KickAsync<int>("ping", [burst * 8 + i])));
            var results = await Task.WhenAll(handles.Select(h => h.WaitForResultAsync(Bound)));
            Assert.Equal(Enumerable.Range(burst * 8, 8), results.Order());
        }
    }
    [Fact]
    public async Task A_kick_whose_wake_up_fails_is_kicked_and_the_failure_logged()
    {
        // The wake-up runs after the insert's commit: its failure must neither fail the kick (a caller would kick again:
        // a duplicate) nor go unsaid. A database of its own whose search path puts a pg_notify that always raises ahead
        // of pg_catalog's.
        var connectionString = await db.Server.CreateDatabaseAsync("wake");
        await using (var setup = NpgsqlDataSource.Create(connectionString))
        {
            await using var command = setup.CreateCommand("""
                CREATE SCHEMA refuse;
                CREATE FUNCTION refuse.pg_notify(text, text) RETURNS void LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'notify refused'; END $$;
                """);
            await command.ExecuteNonQueryAsync();
        }

        var captured = new ConcurrentQueue<string>();
        using var loggerFactory = LoggerFactory.Create(b => b.AddProvider(new CapturingProvider(captured)));
        var refusing = new NpgsqlConnectionStringBuilder(connectionString) { SearchPath = "refuse,pg_catalog,public" }.ConnectionString;
        await using var broker = new PostgresBroker(refusing, new PostgresBrokerOptions(), loggerFactory);
        for (var i = 0; i < 3; i++)
        {
            var kicked = await broker.KickAsync(TaskMessage.Create("n"));
            Assert.Equal(TaskState.Available, (await broker.GetTaskAsync(kicked.TaskId))!.State);
        }

        await Eventually.TrueAsync(() => captured.Count(l => l.Contains("[1004]", StringComparison.Ordinal) && l.Contains("notify refused", StringComparison.Ordinal)) >= 1,
            Bound, "the failed wake-up is logged with the server's reason");
    }
    [Fact]
    public async Task Kicks_committed_while_a_kick_sends_its_own_wake_up_get_one_after_it()
    {
        // A kick that takes the wake-up (TryClaim) sends it in its own round trip; a kick committed meanwhile only
        // signals. Its commit may come after the first wake-up ran, so releasing the claim must send one more.
        await using var listener = new NpgsqlConnection(db.ConnectionString);
        await listener.OpenAsync();
        var received = new ConcurrentQueue<string>();
        listener.Notification += (_, e) => received.Enqueue(e.Payload);
        var channel = "claim_" + Guid.NewGuid().ToString("N")[..8];
        await using (var listen = new NpgsqlCommand($"LISTEN {channel}", listener))
        {
            await listen.ExecuteNonQueryAsync();
        }

        await using var dataSource = NpgsqlDataSource.Create(db.ConnectionString);
        var notifier = new TaskiqPg.Internal.CoalescingNotifier(dataSource, channel, "q", Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        Assert.True(notifier.TryClaim());
        Assert.False(notifier.TryClaim()); // one wake-up on its way at a time
        notifier.Signal(); // a kick committed while the claimed one runs
        notifier.Release();
        await notifier.DisposeAsync(); // waits for the follow-up

        using var timeout = new CancellationTokenSource(Bound);
        while (received.IsEmpty)
        {
            await listener.WaitAsync(timeout.Token);
        }

        Assert.Equal(["q"], received);
        Assert.True(notifier.TryClaim()); // idle again
        notifier.Release();
    }
}
