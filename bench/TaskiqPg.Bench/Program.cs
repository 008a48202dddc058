using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.Json;
using Npgsql;
using TaskiqPg;
using TaskiqPg.Bench;
using TaskiqPg.LocalServer;

// TaskiqPg benchmark: run by hand (never in the test suite), prints a table and writes a JSON file.
//   dotnet run -c Release --project bench/TaskiqPg.Bench -- [--connection "<conn>"] [--tasks 200000] [--latency 1000]
//       [--hangfire 5000] [--graphile 100000] [--pgboss 100000] [--wolverine 20000]
//       [--schedules 50 [--schedule-seconds 60]] [--runs 3] [--steady 30] [--single 5] [--scheduled 300000] [--scale 100000]
//       [--backlog 10000000 [--backlog-baseline 200000]] [--pg name=value ...] [--out file.json]
//       (0 skips a peer)
//   --smoke: tiny sizes (a few seconds in all), run by the test suite so the benchmark never rots; no thresholds.
// Without --connection it starts a throwaway local PostgreSQL server with default (durable) settings.
if (args is [DrainWorker.Flag, var sharedQueue, DrainWorker.Shared])
{
    return await DrainWorker.MainAsync(sharedQueue, shared: true);
}

if (args is [DrainWorker.Flag, var drainQueue, ..])
{
    return await DrainWorker.MainAsync(drainQueue, args.Length > 2 ? TimeSpan.FromSeconds(int.Parse(args[2])) : null);
}

if (args is [SchedulerBench.NodeFlag])
{
    return await SchedulerBench.NodeMainAsync();
}

if (args is [ScalingBench.ProducerFlag, var producerQueue, var seconds, var mode])
{
    return await ScalingBench.ProducerMainAsync(producerQueue, int.Parse(seconds), mode);
}

var arguments = BenchArguments.Parse(args);
// pg_stat_statements: the backlog rows read the claim statement's server time from it.
await using var server = arguments.Connection is null
    ? await LocalPostgresServer.StartAsync(new LocalPostgresServerOptions
    {
        Settings = new Dictionary<string, string>(arguments.ServerSettings) { ["shared_preload_libraries"] = "pg_stat_statements" },
    })
    : null;
var admin = arguments.Connection ?? server!.GetConnectionString();
var runs = new List<BenchReport>();
for (var run = 1; run <= arguments.Runs; run++)
{
    Console.WriteLine($"run {run} of {arguments.Runs} ...");
    runs.Add(await MeasureAsync());
}

var report = BenchReport.Median(runs);
if (arguments.Runs > 1)
{
    Console.WriteLine($"medians of {arguments.Runs} runs (ratios are computed within each run, then their median taken):");
}

report.Print();
var output = arguments.Output ?? Path.Combine("bench", "results", $"taskiqpg-{DateTime.UtcNow:yyyyMMdd-HHmmss}.json");
Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);
await File.WriteAllTextAsync(output, JsonSerializer.Serialize(report.Rows, new JsonSerializerOptions { WriteIndented = true }));
Console.WriteLine($"JSON: {output}");
var chart = Path.ChangeExtension(output, ".svg");
BenchChart.Write(report, chart, $"{DateTime.UtcNow:yyyy-MM-dd}, {Environment.ProcessorCount} cores, {(arguments.Runs > 1 ? $"medians of {arguments.Runs} runs" : "one run")}, " +
    $"{arguments.Tasks:N0} tasks, durable local PostgreSQL; Hangfire.PostgreSql 1.21.1 (16 workers, poll 200 ms), graphile-worker 0.17.3 and 0.18.0, pg-boss 12.38.0, Wolverine 6.64.2");
Console.WriteLine($"chart: {chart}");
return 0;


async Task<BenchReport> MeasureAsync()
{
    var report = new BenchReport();
    var database = "bench_" + Guid.NewGuid().ToString("N")[..8];
    await using (var create = new NpgsqlConnection(admin))
    {
        await create.OpenAsync();
        await new NpgsqlCommand($"CREATE DATABASE \"{database}\"", create).ExecuteNonQueryAsync();
    }

    var settings = new NpgsqlConnectionStringBuilder(admin) { Database = database, MaxPoolSize = 50 };
    foreach (var (name, value) in arguments.ClientSettings)
    {
        settings[name] = value;
    }

    var connectionString = settings.ConnectionString;
    await using var dataSource = NpgsqlDataSource.Create(connectionString);
    Console.WriteLine($"TaskiqPg benchmark: {arguments.Tasks:N0} tasks, {Environment.ProcessorCount} cores, PostgreSQL {await Scalar<string>("SHOW server_version")}");

    // 1. Bulk kick: KickManyAsync in batches.
    var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = "burn" });
    var results = new PostgresResultBackend(dataSource);
    await broker.StartAsync();
    await results.StartAsync();
    var deadBefore = await DeadTuplesAsync();
    const int batch = 5_000;
    var batches = Enumerable.Range(0, (arguments.Tasks + batch - 1) / batch)
        .Select(b => Enumerable.Range(0, Math.Min(batch, arguments.Tasks - b * batch)).Select(_ => TaskMessage.Create("noop")).ToArray())
        .ToArray(); // built before the clock starts: the rate is KickManyAsync's (validation, serialization, COPY, commit)
    var watch = Stopwatch.StartNew();
    foreach (var messages in batches)
    {
        await broker.KickManyAsync(messages);
    }

    report.Add("bulk kick (KickManyAsync, 5k per call)", arguments.Tasks / watch.Elapsed.TotalSeconds, "tasks/s");

    // 1b. The same from 2 concurrent callers (each call is one transaction; the server inserts on both cores). These
    //     rows go to a queue of their own that nothing drains (no dead tuples added): they only measure the insert rate.
    var parallel = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = "bulk2" });
    var parallelBatches = Enumerable.Range(0, batches.Length)
        .Select(b => batches[b].Select(_ => TaskMessage.Create("noop")).ToArray()).ToArray();
    var next = -1;
    watch.Restart();
    await Task.WhenAll(Enumerable.Range(0, 2).Select(async _ =>
    {
        int b;
        while ((b = Interlocked.Increment(ref next)) < parallelBatches.Length)
        {
            await parallel.KickManyAsync(parallelBatches[b]);
        }
    }));
    report.Add("bulk kick (KickManyAsync, 5k per call, 2 concurrent callers)", arguments.Tasks / watch.Elapsed.TotalSeconds, "tasks/s");

    // 2. Burn-down: one worker process (this executable again, in drain-worker mode) drains them, results stored.
    var (drain, peakRssMb) = await DrainWorker.RunAsync(connectionString, "burn");
    report.Add("burn-down (1 worker process, results stored)", drain, "tasks/s");
    report.Add("worker process peak RSS during burn-down", peakRssMb, "MB");
    report.Add("dead tuples on the queue table before → after", await DeadTuplesAsync() - deadBefore, "rows (delta)");

    // 2b. The same burn-down with CompletedRetention = 0 (rows deleted at the ack, nothing to prune later), on the rows
    //     step 1b kicked to a queue of their own.
    var (drainNoRetention, _) = await DrainWorker.RunAsync(connectionString, "bulk2", completedRetention: TimeSpan.Zero);
    report.Add("burn-down, CompletedRetention = 0 (rows deleted at the ack)", drainNoRetention, "tasks/s");
    report.Add("burn-down retention on (24 h) / off", drain / drainNoRetention, "ratio");

    // 2c. Claiming due work past a backlog of future work: 1,000 due tasks drained from an empty queue, then from a
    //     queue holding 300,000 (--scheduled) rows due in an hour at a higher priority (priority 5). Three rounds each,
    //     alternating, each by a fresh worker in this process (a child process's start-up would dominate 1,000 tasks);
    //     the medians are compared. VACUUM ANALYZE before each drain: otherwise autovacuum, woken by the 300,000
    //     inserts, competes with the drain for the two cores and the figure measures that instead.
    var dueBroker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = "due_empty" });
    var backlogBroker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = "due_backlog" });
    for (var kickedLater = 0; kickedLater < arguments.Scheduled; kickedLater += batch)
    {
        await backlogBroker.KickManyAsync(Enumerable.Range(0, Math.Min(batch, arguments.Scheduled - kickedLater)).Select(_ => TaskMessage.Create("noop")).ToArray(),
            new KickOptions { Delay = TimeSpan.FromHours(1), Priority = 5 });
    }

    var dueEmpty = new List<double>();
    var dueBacklog = new List<double>();
    for (var round = 0; round < 3; round++)
    {
        dueEmpty.Add(await DrainDueAsync(dueBroker));
        dueBacklog.Add(await DrainDueAsync(backlogBroker));
    }

    report.Add("drain 1,000 due tasks, empty queue (median of 3)", Median(dueEmpty), "tasks/s");
    report.Add($"drain 1,000 due tasks past {arguments.Scheduled:N0} scheduled priority-5 rows (median of 3)", Median(dueBacklog), "tasks/s");
    report.Add("due drain: empty / with scheduled backlog (target ≤ 1.2)", Median(dueEmpty) / Median(dueBacklog), "ratio");
    await dueBroker.DisposeAsync();
    await backlogBroker.DisposeAsync();
    await Scalar<object>("VACUUM ANALYZE taskiq_messages"); // the next phases start from a settled table, as before 2b/2c existed

    // 3. Single kicks (KickAsync, one task per call) from 8 and from 16 concurrent producers; and from 8 with
    // NotifyTaskIds (a NOTIFY with the row id in every kick's statement, for Python taskiq-postgres workers).
    var single = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = "single" });
    await using var singleWithIds = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = "single_ids", NotifyTaskIds = true });
    var kicked = 0.0;
    foreach (var (producers, kicker) in new[] { (8, single), (16, single), (8, singleWithIds) })
    {
        var count = 0L;
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(arguments.SingleKickSeconds));
        watch.Restart();
        await Task.WhenAll(Enumerable.Range(0, producers).Select(async _ =>
        {
            while (!stop.IsCancellationRequested)
            {
                await kicker.KickAsync(TaskMessage.Create("noop"));
                Interlocked.Increment(ref count);
            }
        }));
        var rate = count / watch.Elapsed.TotalSeconds;
        if (kicker == singleWithIds)
        {
            report.Add("single kick (8 concurrent producers, NotifyTaskIds: a NOTIFY per row)", rate, "tasks/s");
            report.Add("single kick NotifyTaskIds / default (8 producers)", rate / kicked, "ratio");
            continue;
        }

        kicked = producers == 8 ? rate : kicked;
        report.Add($"single kick ({producers} concurrent producers)", rate, "tasks/s");
    }

    // 3b. Steady: 30 s (--steady) of concurrent kicks (8 producers) while a worker process executes; queue depth every second.
    var steady = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = "steady" });
    await steady.StartAsync();
    var steadyKicked = 0L;
    var depths = new List<long>();
    var steadyWorker = DrainWorker.RunAsync(connectionString, "steady", TimeSpan.FromSeconds(arguments.SteadySeconds + 1));
    await Task.Delay(TimeSpan.FromSeconds(1)); // let the worker process start
    using (var stop = new CancellationTokenSource(TimeSpan.FromSeconds(arguments.SteadySeconds)))
    {
        var producers = Enumerable.Range(0, 8).Select(async _ =>
        {
            while (!stop.IsCancellationRequested)
            {
                await steady.KickAsync(TaskMessage.Create("noop"));
                Interlocked.Increment(ref steadyKicked);
            }
        }).ToArray();
        while (!stop.IsCancellationRequested)
        {
            await Task.Delay(1000);
            var counts = await steady.GetQueueCountsAsync();
            depths.Add(counts[TaskState.Available] + counts[TaskState.Running]);
        }

        await Task.WhenAll(producers);
    }

    var (steadyRate, _) = await steadyWorker;
    report.Add("steady: kicked (8 producers)", steadyKicked / (double)arguments.SteadySeconds, "tasks/s");
    report.Add("steady: completed (1 worker process)", steadyRate, "tasks/s");
    report.Add("steady: max queue depth (sampled each second)", depths.Count > 0 ? depths.Max() : 0, "tasks");
    report.Add("steady: final queue depth", depths.Count > 0 ? depths[^1] : 0, "tasks");
    Console.WriteLine("steady queue depth per second: " + string.Join(" ", depths));

    // 4. Latency at idle: kick → handler start, and kick → WaitForResultAsync returns.
    var started = new ConcurrentDictionary<string, long>();
    var startedAt = new ConcurrentDictionary<string, DateTime>();
    var latencyRegistry = new TaskRegistry().Add("ping", (TaskContext ctx) =>
    {
        started[ctx.TaskId] = Stopwatch.GetTimestamp();
        startedAt[ctx.TaskId] = DateTime.UtcNow;
    });
    var latencyBroker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = "latency" });
    var latencyWorker = new TaskiqWorker(latencyBroker, latencyRegistry, results, new TaskiqWorkerOptions { PollInterval = TimeSpan.FromSeconds(30) });
    await latencyWorker.StartAsync(CancellationToken.None);
    await latencyBroker.ListenerConnected;
    var client = new TaskiqClient(latencyBroker, results);
    var toStart = new List<double>();
    var toResult = new List<double>();
    for (var i = 0; i < arguments.Latency; i++)
    {
        var t0 = Stopwatch.GetTimestamp();
        var handle = await client.KickAsync("ping");
        await handle.WaitForRawResultAsync(TimeSpan.FromSeconds(10));
        var t1 = Stopwatch.GetTimestamp();
        toStart.Add(Stopwatch.GetElapsedTime(t0, started[handle.TaskId]).TotalMilliseconds);
        toResult.Add(Stopwatch.GetElapsedTime(t0, t1).TotalMilliseconds);
    }

    if (Environment.GetEnvironmentVariable("TASKIQPG_BENCH_TIMELINE_SAMPLES") is not null)
    {
        // Where in the run the slowest kicks fell (a cluster at the start would be warm-up, not the steady path).
        Console.WriteLine("slowest idle kicks → start (kick number: ms): " + string.Join(", ",
            toStart.Select((ms, n) => (ms, n)).OrderByDescending(x => x.ms).Take(10).Select(x => $"#{x.n + 1}: {x.ms:0.00}")));
    }

    // Then, traced (outside the measured kicks: listening to Npgsql's activities costs a little), where the time goes.
    using (var timeline = new IdleTimeline())
    {
        var serverTimes = await BacklogBench.TryEnableStatementsAsync(dataSource) && await IdleTimeline.ResetServerTimesAsync(dataSource);
        var timelineKicks = Math.Max(20, arguments.Latency / 5);
        for (var i = 0; i < timelineKicks; i++)
        {
            var kickAt = DateTime.UtcNow;
            var handle = await client.KickAsync("ping");
            await handle.WaitForRawResultAsync(TimeSpan.FromSeconds(10));
            timeline.Kick(kickAt, startedAt[handle.TaskId], DateTime.UtcNow);
        }

        timeline.Print();
        if (serverTimes)
        {
            await IdleTimeline.PrintServerTimesAsync(dataSource, timelineKicks);
        }
    }

    await latencyWorker.StopAsync(CancellationToken.None);
    report.AddPercentiles("kick → task start", toStart);
    report.AddPercentiles("kick → WaitForResultAsync returns", toResult);

    // 5. The machine's limit for the same SQL shape: claim 100 rows, delete them, 4 connections, raw Npgsql.
    await broker.KickManyAsync(Enumerable.Range(0, Math.Min(100_000, arguments.Tasks * 5)).Select(_ => TaskMessage.Create("noop")).ToArray());
    var claimedRaw = 0L;
    watch.Restart();
    await Task.WhenAll(Enumerable.Range(0, 4).Select(async _ =>
    {
        await using var connection = await dataSource.OpenConnectionAsync();
        while (true)
        {
            await using var command = new NpgsqlCommand(
                """
                WITH next AS (SELECT id FROM taskiq_messages WHERE status = 'pending' AND queue = 'burn' AND run_at <= now()
                              ORDER BY priority DESC, run_at, id LIMIT 100 FOR UPDATE SKIP LOCKED)
                DELETE FROM taskiq_messages m USING next WHERE m.id = next.id
                """, connection);
            var n = await command.ExecuteNonQueryAsync();
            if (n == 0)
            {
                break;
            }

            Interlocked.Add(ref claimedRaw, n);
        }
    }));
    report.Add("raw limit: claim+delete 100 rows per statement, 4 connections", claimedRaw / watch.Elapsed.TotalSeconds, "rows/s");
    report.Add("burn-down / raw limit", drain / (claimedRaw / watch.Elapsed.TotalSeconds), "ratio");

    // 6. Hangfire.PostgreSql side by side (smaller N: it drains a few hundred jobs per second).
    if (arguments.HangfireJobs > 0)
    {
        var (hangfireEnqueue, hangfireDrain) = await HangfireBench.RunAsync(connectionString, arguments.HangfireJobs);
        report.Add($"Hangfire.PostgreSql enqueue ({arguments.HangfireJobs:N0} jobs, one at a time)", hangfireEnqueue, "jobs/s");
        report.Add($"Hangfire.PostgreSql drain ({HangfireBench.WorkerCount} workers, QueuePollInterval {HangfireBench.QueuePollInterval.TotalMilliseconds} ms)", hangfireDrain, "jobs/s");
        report.Add("burn-down ratio TaskiqPg / Hangfire.PostgreSql", drain / hangfireDrain, "ratio");
        report.Add("single kick ratio TaskiqPg (8 producers) / Hangfire enqueue (1 producer)", kicked / hangfireEnqueue, "ratio");
        report.AddPercentiles("Hangfire.PostgreSql kick → job start", await HangfireBench.LatencyAsync(connectionString, PeerLatencySamples()));
    }

    // 7. graphile-worker side by side: 0.17.3 and 0.18.0, default and batched configurations.
    if (arguments.GraphileJobs > 0)
    {
        foreach (var version in new[] { "0.17", "0.18" })
        {
            foreach (var mode in new[] { "default", "batched" })
            {
                if (await PeerProcesses.GraphileAsync(admin, arguments.GraphileJobs, version, mode, PeerLatencySamples()) is { } graphile)
                {
                    var name = $"graphile-worker {(version == "0.17" ? "0.17.3" : "0.18.0")} {mode}";
                    report.AddPercentiles($"{name}: kick → job start", graphile.Latencies);
                    report.Add($"{name}: add_jobs ({arguments.GraphileJobs:N0} jobs)", graphile.AddRate, "jobs/s");
                    report.Add($"{name}: drain (runOnce, 24 concurrent, no results)", graphile.DrainRate, "jobs/s");
                    report.Add($"burn-down ratio TaskiqPg / {name}", drain / graphile.DrainRate, "ratio");
                }
            }
        }
    }

    // 7b. pg-boss side by side (its outputs stored, like our results).
    if (arguments.PgBossJobs > 0 && await PeerProcesses.PgBossAsync(admin, arguments.PgBossJobs, PeerLatencySamples()) is { } pgBoss)
    {
        report.AddPercentiles("pg-boss 12.38.0: kick → job start (LISTEN/NOTIFY on)", pgBoss.Latencies);
        report.Add($"pg-boss 12.38.0: insert ({arguments.PgBossJobs:N0} jobs, 5,000 per call)", pgBoss.AddRate, "jobs/s");
        report.Add("pg-boss 12.38.0: drain (work(), batches of 100, 4 local workers, output stored)", pgBoss.DrainRate, "jobs/s");
        report.Add("burn-down ratio TaskiqPg / pg-boss", drain / pgBoss.DrainRate, "ratio");
    }

    // 7c. Wolverine's PostgreSQL transport (durable queues, polled: it does not LISTEN).
    if (arguments.WolverineMessages > 0 && await PeerProcesses.WolverineAsync(admin, arguments.WolverineMessages, PeerLatencySamples()) is { } wolverine)
    {
        report.AddPercentiles("Wolverine 6.64.2 PostgreSQL queue: publish → handler start (PollingInterval 100 ms)", wolverine.Latencies);
        report.Add($"Wolverine 6.64.2: publish ({arguments.WolverineMessages:N0} messages, 8 concurrent publishers)", wolverine.AddRate, "messages/s");
        report.Add("Wolverine 6.64.2: drain (durable listener, MaximumMessagesToReceive 500, no results)", wolverine.DrainRate, "messages/s");
        report.Add("burn-down ratio TaskiqPg / Wolverine", drain / wolverine.DrainRate, "ratio");
        report.Add("single kick ratio TaskiqPg (8 producers) / Wolverine publish (8 publishers)", kicked / wolverine.AddRate, "ratio");
    }

    async Task<double> DrainDueAsync(PostgresBroker queueBroker)
    {
        await queueBroker.KickManyAsync(Enumerable.Range(0, 1_000).Select(_ => TaskMessage.Create("noop")).ToArray());
        await Scalar<object>("VACUUM ANALYZE taskiq_messages");
        var ran = 0;
        var registry = new TaskRegistry().Add("noop", () => { Interlocked.Increment(ref ran); });
        using var worker = new TaskiqWorker(queueBroker, registry, results,
            new TaskiqWorkerOptions { MaxConcurrentTasks = 32, PrefetchCount = 512, ClaimBatchSize = 256, PollInterval = TimeSpan.FromMilliseconds(100) });
        var clock = Stopwatch.StartNew();
        await worker.StartAsync(CancellationToken.None);
        while (Volatile.Read(ref ran) < 1_000)
        {
            await Task.Delay(5);
        }

        await using (var left = dataSource.CreateCommand(
            "SELECT EXISTS (SELECT 1 FROM taskiq_messages WHERE queue = $1 AND status = 'pending') OR EXISTS (SELECT 1 FROM taskiq_messages WHERE queue = $1 AND status = 'processing')"))
        {
            left.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queueBroker.Options.Queue });
            while ((bool)(await left.ExecuteScalarAsync())!)
            {
                await Task.Delay(5);
            }
        }

        var rate = 1_000 / clock.Elapsed.TotalSeconds;
        await worker.StopAsync(CancellationToken.None);
        return rate;
    }

    static double Median(List<double> values) => values.Order().ElementAt(values.Count / 2);

    // Peers' idle latency: fewer samples (Hangfire polls every 200 ms, so 1,000 sequential samples would take minutes).
    int PeerLatencySamples() => Math.Max(10, arguments.Latency / 5);

    async Task<T> Scalar<T>(string sql)
    {
        await using var command = dataSource.CreateCommand(sql);
        return (T)(await command.ExecuteScalarAsync())!;
    }

    async Task<long> DeadTuplesAsync()
    {
        await using var command = dataSource.CreateCommand("SELECT coalesce(sum(n_dead_tup), 0)::bigint FROM pg_stat_user_tables WHERE relname = 'taskiq_messages'");
        return (long)(await command.ExecuteScalarAsync())!;
    }

    foreach (var component in new IAsyncDisposable[] { broker, results, parallel, single, steady, latencyBroker })
    {
        await component.DisposeAsync();
    }

    // 9. Scale-out: 1, 2, 4 worker processes; 1, 4, 8 producer processes and the raw INSERT limit (ScalingBench).
    if (arguments.ScaleTasks > 0)
    {
        await ScalingBench.RunAsync(connectionString, arguments.ScaleTasks, arguments.SingleKickSeconds, report);
    }

    // 9b. Schedulers, 3 nodes each: TaskiqPg and Quartz.NET clustered (SchedulerBench).
    if (arguments.Schedules > 0)
    {
        await SchedulerBench.RunAsync(admin, arguments.Schedules, arguments.ScheduleSeconds, report);
    }

    // 10. A large backlog (--backlog, off unless asked: 10 million tasks take half an hour here) beside a small one.
    if (arguments.Backlog > 0)
    {
        await BacklogBench.RunAsync(connectionString, arguments.BacklogBaseline, arguments.Backlog, report);
    }

    return report;
}
