using System.Diagnostics;
using System.Globalization;
using Npgsql;

namespace TaskiqPg.Faults;

/// <summary>
/// The scenarios of the fault suite. Each kicks a known set of tasks (noted in <c>fault_kicked</c>), injects its fault,
/// waits until the queue is drained (or a bound passes), and reconciles against <c>fault_ledger</c>: every kicked task
/// completed exactly once, or at least once where a lease expired, with each duplicate explained.
/// </summary>
internal sealed class Scenarios(Rig rig, bool smoke) : IDisposable
{
    private readonly List<Child> _children = [];
    private int _workerSerial;

    public Task<ScenarioResult> RunAsync(string name) => name switch
    {
        "kill9" => Kill9Async(),
        "restart" => RestartAsync(),
        "listener" => ListenerAsync(),
        "producer" => ProducerAsync(),
        "poison" => PoisonAsync(),
        "pool" => PoolAsync(),
        "starvation" => StarvationAsync(),
        "graceful" => GracefulAsync(),
        "scheduler" => SchedulerAsync(),
        "soak" => SoakAsync(),
        "poison_completion" => PoisonCompletionAsync(),
        "renewal_stall" => RenewalStallAsync(),
        "control" => ControlAsync(),
        "pgbouncer" => PgBouncerRestartAsync(),
        "failover" => FailoverAsync(),
        _ => throw new ArgumentException($"Unknown scenario {name}", nameof(name)),
    };

    public void Dispose()
    {
        foreach (var child in _children)
        {
            child.Dispose();
        }
    }

    // 1. Real worker processes killed with SIGKILL every few seconds and replaced. Lost must be 0; a duplicate is
    //    explained when one of its runs was by a killed worker (it ran, the kill came before its ack).
    private async Task<ScenarioResult> Kill9Async()
    {
        const string queue = "kill9";
        var tasks = smoke ? 4_000 : 100_000;
        var every = TimeSpan.FromSeconds(smoke ? 1 : 10);
        // 3 workers × 8 handlers × 10–20 ms: the run lasts long enough for several kills (~3 s smoke, ~45 s full).
        var settings = new Dictionary<string, int> { ["leasems"] = smoke ? 2_000 : 5_000, ["concurrency"] = 8 };
        var workers = new List<Child>();
        for (var i = 0; i < 3; i++)
        {
            workers.Add(await StartWorkerAsync(queue, settings));
        }

        await KickAsync(queue, tasks, "record", workMs: smoke ? 20 : 10);
        var killed = new List<string>();
        var random = new Random(42);
        var watch = Stopwatch.StartNew();
        while (await PendingAsync(queue) > 0 && watch.Elapsed < TimeSpan.FromMinutes(smoke ? 2 : 20))
        {
            await WaitOrDrainedAsync(queue, every);
            if (await PendingAsync(queue) == 0)
            {
                break;
            }

            var victim = workers[random.Next(workers.Count)];
            victim.Kill9();
            killed.Add(victim.Name);
            workers.Remove(victim);
            workers.Add(await StartWorkerAsync(queue, settings));
        }

        var r = await ReconcileAsync(queue, TimeSpan.FromMinutes(2));
        var explained = await rig.ScalarAsync<long>(
            """
            SELECT count(*) FROM (SELECT task_id FROM fault_ledger l JOIN fault_kicked k USING (task_id)
                                  WHERE k.scenario = $1 GROUP BY task_id HAVING count(*) > 1) d
            WHERE EXISTS (SELECT 1 FROM fault_ledger l WHERE l.task_id = d.task_id AND l.worker = ANY($2))
            """, queue, killed.ToArray());
        var duplicateTasks = await DuplicateTasksAsync(queue);
        var unexplained = explained == duplicateTasks ? "" : await rig.ScalarAsync<string>(
            """
            SELECT coalesce(string_agg(runs, '; '), '') FROM (
                SELECT string_agg(l.worker || ':' || l.attempt || '@' || to_char(l.at, 'HH24:MI:SS.MS'), ', ' ORDER BY l.at) AS runs
                FROM fault_ledger l JOIN fault_kicked k USING (task_id) WHERE k.scenario = $1
                GROUP BY l.task_id HAVING count(*) > 1 AND NOT bool_or(l.worker = ANY($2)) LIMIT 5) d
            """, queue, killed.ToArray());
        var lines = explained == duplicateTasks ? "" : "; live workers' warnings: " + string.Join(" | ", workers.Select(w => w.Name + ": " + w.Errors));
        return r.Result(queue, r.Lost == 0 && explained == duplicateTasks,
            $"{killed.Count} SIGKILLs; {duplicateTasks} task(s) ran twice, {explained} of them explained by a killed worker (ran, killed before its ack)"
            + (unexplained.Length > 0 ? $"; unexplained (worker:attempt@time): {unexplained}{lines}" : ""));
    }

    // 2. PostgreSQL stopped and started three times mid-run (fast, immediate, fast). Workers reconnect pool and listener;
    //    delivery resumes within a bound.
    private async Task<ScenarioResult> RestartAsync()
    {
        const string queue = "restart";
        var tasks = smoke ? 6_000 : 60_000;
        var settings = new Dictionary<string, int> { ["leasems"] = 30_000, ["concurrency"] = 8 };
        var workers = new List<Child>();
        for (var i = 0; i < 2; i++)
        {
            workers.Add(await StartWorkerAsync(queue, settings));
        }

        await KickAsync(queue, tasks, "record", workMs: smoke ? 20 : 5); // long enough for all three restarts
        var resumes = new List<double>();
        foreach (var mode in new[] { "fast", "immediate", "fast" })
        {
            await Task.Delay(TimeSpan.FromSeconds(smoke ? 1 : 4));
            await rig.RestartServerAsync(mode, TimeSpan.FromSeconds(1));
            var back = await rig.ScalarAsync<DateTime>("SELECT clock_timestamp()");
            if (await PendingAsync(queue) == 0)
            {
                break;
            }

            resumes.Add(await SecondsUntilExecutionAfterAsync(back));
        }

        var r = await ReconcileAsync(queue, TimeSpan.FromMinutes(3));
        var runs = await DuplicateRunsAsync(queue);
        // A duplicate is explained when its runs are successive attempts: the handler's own write (its ledger row)
        // committed but the reply died with the server, so the attempt failed and was retried. Two runs of the same
        // attempt would mean a lease was lost while its worker was alive: never acceptable.
        var sameAttempt = await SameAttemptRunsAsync(queue);
        var bound = 15.0;
        var resumed = resumes.Count > 0 && resumes.All(s => s < bound);
        return r.Result(queue, r.Lost == 0 && sameAttempt == 0 && resumed,
            $"{resumes.Count} restarts measured (fast, immediate, fast); first execution after the server was back: " +
            string.Join(", ", resumes.Select(s => s.ToString("0.0", CultureInfo.InvariantCulture) + " s")) + $" (bound {bound} s)" +
            (runs.Length > 0 ? $"; runs of duplicated tasks (worker:attempt@time): {runs}; {sameAttempt} ran twice in one attempt; " +
                               "workers' lines about them: " + string.Join(" / ", (await DuplicateTaskIdsAsync(queue)).Append("could not report")
                                   .SelectMany(id => workers.SelectMany(w => w.ErrorLinesContaining(id).Select(l => $"{w.Name}: {l}")))) : ""));
    }

    // 2b. Workers behind PgBouncer in transaction mode (5 server connections; statements unprepared, LISTEN on a direct
    //     connection, as the README recommends), the pooler killed and restarted three times under load: every client
    //     connection through it drops mid-claim, mid-handler and mid-settle. Lost must be 0; a duplicate is explained
    //     as in the server restart (successive attempts after a lost reply), never two runs of one attempt.
    private async Task<ScenarioResult> PgBouncerRestartAsync()
    {
        const string queue = "pgbouncer";
        var tasks = smoke ? 4_000 : 40_000;
        await using var bouncer = await PgBouncer.StartAsync(rig.ConnectionString, serverConnections: 5);
        var settings = new Dictionary<string, int> { ["leasems"] = 10_000, ["concurrency"] = 8, ["noprepare"] = 1 };
        var workers = new List<Child>();
        for (var i = 0; i < 3; i++)
        {
            workers.Add(await StartWorkerAsync(queue, settings, bouncer));
        }

        await KickAsync(queue, tasks, "record", workMs: smoke ? 20 : 5);
        var resumes = new List<double>();
        for (var restart = 0; restart < 3; restart++)
        {
            await Task.Delay(TimeSpan.FromSeconds(smoke ? 1 : 4));
            if (await PendingAsync(queue) == 0)
            {
                break;
            }

            await bouncer.RestartAsync();
            var back = await rig.ScalarAsync<DateTime>("SELECT clock_timestamp()");
            resumes.Add(await SecondsUntilExecutionAfterAsync(back));
        }

        var r = await ReconcileAsync(queue, TimeSpan.FromMinutes(3));
        var sameAttempt = await SameAttemptRunsAsync(queue);
        var bound = 15.0;
        var resumed = resumes.Count > 0 && resumes.All(s => s < bound);
        // A protocol violation (08P01, e.g. "invalid frontend message type") means a client's messages reached two server
        // connections: the other one then waits for the rest of a message, held from the pool until its client gives up.
        var violations = workers.SelectMany(w => w.ErrorLinesContaining("08P01").Select(l => $"{w.Name}: {l}")).ToArray();
        return r.Result(queue, r.Lost == 0 && sameAttempt == 0 && resumed && violations.Length == 0,
            $"{resumes.Count} pgbouncer restarts; first execution after each: " +
            string.Join(", ", resumes.Select(s => s.ToString("0.0", CultureInfo.InvariantCulture) + " s")) + $" (bound {bound} s); " +
            $"{violations.Length} protocol violations (08P01){(violations.Length > 0 ? ", first: " + violations[0] : "")}; " +
            $"{sameAttempt} ran twice in one attempt" +
            (sameAttempt > 0 ? $"; runs of duplicated tasks (worker:attempt@time): {await DuplicateRunsAsync(queue)}; workers' lines about them: " +
                               string.Join(" / ", (await DuplicateTaskIdsAsync(queue)).Take(3).SelectMany(id => workers.SelectMany(w => w.ErrorLinesContaining(id).Take(2).Select(l => $"{w.Name}: {l}")))) : ""));
    }

    // 15. A PostgreSQL failover, twice, under load: a primary with a streaming standby, workers and a producer on a
    //     multi-host connection string (Target Session Attributes=read-write). The primary is killed (immediate stop: a
    //     crash) and the standby promoted. First with asynchronous replication (acknowledged kicks the standby had not
    //     received are lost: counted and reported), then, from a second standby of the new primary, with synchronous
    //     replication (no acknowledged kick may be lost). The producer prints each acknowledged task id to stdout, outside
    //     the database. Must run last: the runner's own server is gone afterwards.
    private async Task<ScenarioResult> FailoverAsync()
    {
        const string asyncQueue = "failover_async", syncQueue = "failover_sync";
        var perPhase = smoke ? 1_500 : 15_000;
        var binaries = rig.Server.Cluster.Binaries;
        var password = rig.Server.Password;
        var root = Path.GetDirectoryName(rig.Server.Cluster.DataDirectory)!;
        var ports = new[] { rig.Server.Port, Ports.Free(), Ports.Free() };
        var multiHost = new NpgsqlConnectionStringBuilder(rig.ConnectionString)
        {
            Host = string.Join(',', ports.Select(p => $"127.0.0.1:{p}")),
            TargetSessionAttributes = "read-write",
            HostRecheckSeconds = 1, // a host seen down or read-only is tried again after a second: the standby is promoted meanwhile
            Timeout = 5,
        }.ConnectionString;
        var settings = new Dictionary<string, string> { ["max_connections"] = "300" };
        await using var first = await Standby.StartAsync(binaries, ports[0], password, Path.Combine(root, "standby1"), ports[1], settings);
        await WaitStreamingAsync(rig.ConnectionString, synchronous: false);

        var workerSettings = new Dictionary<string, int> { ["leasems"] = 10_000, ["concurrency"] = 8 };
        var workers = new List<Child>();
        for (var i = 0; i < 2; i++)
        {
            workers.Add(await StartWorkerAsync($"{syncQueue},{asyncQueue}", workerSettings, connectionString: multiHost));
        }

        // Phase 1: asynchronous replication.
        var (ackedAsync, resumeAsync) = await FailOverUnderLoadAsync(asyncQueue, multiHost, perPhase, () => rig.Server.Cluster.StopAsync("immediate"), first);
        await rig.FollowAsync(multiHost);
        var lostAsync = await MissingAsync(ackedAsync);

        // Phase 2: synchronous replication to a standby of the new primary.
        await using var second = await Standby.StartAsync(binaries, ports[1], password, Path.Combine(root, "standby2"), ports[2], settings);
        await using (var primary = new NpgsqlConnection(first.ConnectionString("postgres")))
        {
            await primary.OpenAsync();
            await new NpgsqlCommand("ALTER SYSTEM SET synchronous_standby_names = '*'", primary).ExecuteNonQueryAsync();
            await new NpgsqlCommand("SELECT pg_reload_conf()", primary).ExecuteNonQueryAsync();
        }

        await WaitStreamingAsync(first.ConnectionString("faults"), synchronous: true);
        var (ackedSync, resumeSync) = await FailOverUnderLoadAsync(syncQueue, multiHost, perPhase, first.KillAsync, second);
        rig.DataSource.Clear();
        var lostSync = await MissingAsync(ackedSync);

        // The workers' LISTEN connections follow the primary too.
        var listening = Stopwatch.StartNew();
        while (await rig.ScalarAsync<long>("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'taskiqpg-broker'") < workers.Count
               && listening.Elapsed < TimeSpan.FromSeconds(30))
        {
            await Task.Delay(200);
        }

        var listeners = await rig.ScalarAsync<long>("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'taskiqpg-broker'");
        var rAsync = await ReconcileAsync(asyncQueue, TimeSpan.FromMinutes(3));
        var r = await ReconcileAsync(syncQueue, TimeSpan.FromMinutes(3));
        var sameAttemptAsync = await SameAttemptRunsAsync(asyncQueue);
        var sameAttempt = await SameAttemptRunsAsync(syncQueue);
        const double bound = 30;
        // Synchronous replication: nothing acknowledged is lost, nothing runs twice in one attempt. Asynchronous: what
        // the standby had not received is gone (counted); every kick that survived still runs.
        var passed = r.Lost == 0 && lostSync == 0 && sameAttempt == 0 && rAsync.Lost == 0
                     && resumeAsync < bound && resumeSync < bound && listeners >= workers.Count;
        return new ScenarioResult("failover", r.Tasks + rAsync.Tasks, r.Completed + rAsync.Completed, r.Lost + rAsync.Lost,
            r.Duplicates + rAsync.Duplicates, r.DeadLettered + rAsync.DeadLettered, 0, passed,
            $"asynchronous replication: {ackedAsync.Count} acknowledged kicks, {lostAsync} of them lost in the failover, " +
            $"{rAsync.Duplicates} duplicate runs ({sameAttemptAsync} in one attempt); " +
            $"synchronous: {ackedSync.Count} acknowledged, {lostSync} lost, {r.Duplicates} duplicate runs ({sameAttempt} in one attempt); " +
            $"first execution after each promotion: {resumeAsync.ToString("0.0", CultureInfo.InvariantCulture)} s, " +
            $"{resumeSync.ToString("0.0", CultureInfo.InvariantCulture)} s (bound {bound} s); {listeners} of {workers.Count} workers' listeners on the last primary" +
            (sameAttempt > 0 ? $"; synchronous runs of duplicated tasks (worker:attempt@time): {await DuplicateRunsAsync(syncQueue)}; workers' lines about them: " +
                               string.Join(" / ", (await DuplicateTaskIdsAsync(syncQueue)).SelectMany(id => workers.SelectMany(w => w.ErrorLinesContaining(id).Select(l => $"{w.Name}: {l}")))) : ""));
    }

    /// <summary>Seconds until a handler writes its ledger row after <paramref name="back"/> (database clock), at most 60.</summary>
    private async Task<double> SecondsUntilExecutionAfterAsync(DateTime back)
    {
        var watch = Stopwatch.StartNew();
        while (!await rig.ScalarAsync<bool>("SELECT EXISTS (SELECT 1 FROM fault_ledger WHERE at > $1)", back) && watch.Elapsed < TimeSpan.FromSeconds(60))
        {
            await Task.Delay(50);
        }

        return watch.Elapsed.TotalSeconds;
    }

    /// <summary>Tasks of <paramref name="queue"/> that ran more than once within one attempt (a lease lost while its worker lived, or an attempt refunded after it ran).</summary>
    private Task<long> SameAttemptRunsAsync(string queue) => rig.ScalarAsync<long>(
        """
        SELECT count(*) FROM (SELECT task_id FROM fault_ledger JOIN fault_kicked USING (task_id) WHERE scenario = $1
                              GROUP BY task_id HAVING count(*) > count(DISTINCT attempt)) d
        """, queue);

    /// <summary>
    /// Starts an acknowledging producer, kills the primary once a third of its kicks are acknowledged, promotes
    /// <paramref name="standby"/>, and waits for the producer to finish.
    /// </summary>
    /// <returns>The acknowledged task ids and the seconds from the promotion to the first execution after it.</returns>
    private async Task<(IReadOnlyList<string> Acked, double ResumeSeconds)> FailOverUnderLoadAsync(string queue, string multiHost, int count,
        Func<Task> killPrimary, Standby standby)
    {
        var producer = Child.Start(multiHost, $"{queue}-producer-{standby.Port}", "--acked-producer", queue, count.ToString(CultureInfo.InvariantCulture), "2");
        _children.Add(producer);
        try
        {
            await producer.WaitReadyAsync();
        }
        catch (TimeoutException)
        {
            throw new InvalidOperationException($"The producer did not start within 60 s: {producer.Errors}");
        }

        var watch = Stopwatch.StartNew();
        while (producer.Acked.Count < count / 3 && !producer.HasExited && watch.Elapsed < TimeSpan.FromMinutes(2))
        {
            await Task.Delay(50);
        }

        await killPrimary();
        await Task.Delay(TimeSpan.FromSeconds(1)); // the detection delay of a real failover manager, shortened
        await standby.PromoteAsync();
        DateTime promoted;
        await using (var clock = new NpgsqlConnection(standby.ConnectionString("faults")))
        {
            await clock.OpenAsync();
            promoted = (DateTime)(await new NpgsqlCommand("SELECT clock_timestamp()", clock).ExecuteScalarAsync())!;
        }

        var resume = Stopwatch.StartNew();
        await using (var ledger = new NpgsqlConnection(standby.ConnectionString("faults")))
        {
            await ledger.OpenAsync();
            while (resume.Elapsed < TimeSpan.FromSeconds(60))
            {
                await using var check = new NpgsqlCommand("SELECT EXISTS (SELECT 1 FROM fault_ledger WHERE at > $1)", ledger);
                check.Parameters.Add(new NpgsqlParameter<DateTime> { TypedValue = promoted });
                if ((bool)(await check.ExecuteScalarAsync())!)
                {
                    break;
                }

                await Task.Delay(50);
            }
        }

        var resumed = resume.Elapsed.TotalSeconds;
        await producer.WaitForExitAsync(TimeSpan.FromMinutes(5));
        return (producer.Acked, resumed);
    }

    /// <summary>How many of <paramref name="acked"/> have no <c>fault_kicked</c> row on the current primary: acknowledged kicks the failover lost.</summary>
    private async Task<long> MissingAsync(IReadOnlyList<string> acked)
        => await rig.ScalarAsync<long>("SELECT count(*) FROM unnest($1::text[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM fault_kicked k WHERE k.task_id = a.id)",
            new object[] { acked.ToArray() }); // one text[] parameter, not params

    private static async Task WaitStreamingAsync(string primaryConnectionString, bool synchronous)
    {
        await using var connection = new NpgsqlConnection(primaryConnectionString);
        await connection.OpenAsync();
        var watch = Stopwatch.StartNew();
        while (true)
        {
            await using var state = new NpgsqlCommand("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND ($1 = false OR sync_state = 'sync')", connection);
            state.Parameters.Add(new NpgsqlParameter<bool> { TypedValue = synchronous });
            if ((long)(await state.ExecuteScalarAsync())! > 0)
            {
                return;
            }

            if (watch.Elapsed > TimeSpan.FromSeconds(60))
            {
                throw new InvalidOperationException($"No {(synchronous ? "synchronous " : "")}standby streams from the primary after 60 s.");
            }

            await Task.Delay(100);
        }
    }

    // 3. The LISTEN backends of the workers killed with pg_terminate_backend over and over while tasks are kicked one by
    //    one: delivery continues (poll fallback) and the listeners come back.
    private async Task<ScenarioResult> ListenerAsync()
    {
        const string queue = "listener";
        var settings = new Dictionary<string, int> { ["pollms"] = 1_000 };
        await StartWorkerAsync(queue, settings);
        await StartWorkerAsync(queue, settings);
        await using var broker = new PostgresBroker(rig.DataSource, new PostgresBrokerOptions { Queue = queue, RunMigrations = false });
        var count = smoke ? 40 : 400;
        var terminated = 0L;
        using var stop = new CancellationTokenSource();
        var killer = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                terminated += await rig.ScalarAsync<long>(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query ILIKE 'LISTEN %' AND pid <> pg_backend_pid()");
                await Task.Delay(TimeSpan.FromSeconds(smoke ? 1 : 3), CancellationToken.None);
            }
        });
        for (var i = 0; i < count; i++)
        {
            var message = TaskMessage.Create("record", [0]);
            await NoteKickedAsync(queue, [message.TaskId]);
            await broker.KickAsync(message);
            await Task.Delay(100);
        }

        await stop.CancelAsync();
        await killer;
        var r = await ReconcileAsync(queue, TimeSpan.FromSeconds(60));
        var watch = Stopwatch.StartNew();
        long listening;
        while ((listening = await rig.ScalarAsync<long>("SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN %' AND datname = 'faults'")) < 2
               && watch.Elapsed < TimeSpan.FromSeconds(30))
        {
            await Task.Delay(200);
        }

        var latency = await rig.ScalarAsync<double>(
            "SELECT coalesce(max(extract(epoch FROM l.at - k.due_at)), 0)::float8 FROM fault_ledger l JOIN fault_kicked k USING (task_id) WHERE k.scenario = $1",
            queue);
        return r.Result(queue, r.Lost == 0 && r.Duplicates == 0 && listening >= 2 && terminated > 0,
            $"{terminated} LISTEN backends terminated; {listening} listeners back afterwards; slowest kick→run {latency:0.00} s");
    }

    // 4. A producer process kicks delayed tasks and exits at once (no dispose): they all run, none before its time.
    private async Task<ScenarioResult> ProducerAsync()
    {
        const string queue = "producer";
        await StartWorkerAsync(queue, new Dictionary<string, int> { ["pollms"] = 1_000 });
        await StartWorkerAsync(queue, new Dictionary<string, int> { ["pollms"] = 1_000 });
        var count = smoke ? 200 : 2_000;
        const int delaySeconds = 3;
        var producer = Child.Start(rig.ConnectionString, "producer", "--producer", queue, count.ToString(CultureInfo.InvariantCulture),
            delaySeconds.ToString(CultureInfo.InvariantCulture));
        _children.Add(producer);
        await producer.WaitForExitAsync(TimeSpan.FromSeconds(60));
        var r = await ReconcileAsync(queue, TimeSpan.FromSeconds(delaySeconds + 60));
        var early = await rig.ScalarAsync<long>(
            "SELECT count(*) FROM fault_ledger l JOIN fault_kicked k USING (task_id) WHERE k.scenario = $1 AND l.at < k.due_at", queue);
        return r.Result(queue, producer.ExitCode == 0 && r.Tasks == count && r.Lost == 0 && r.Duplicates == 0 && early == 0,
            $"producer exited with {producer.ExitCode} right after kicking (half KickAsync, half KickManyAsync, {delaySeconds} s delay); {early} ran early");
    }

    // 5. Poison and bad input mixed with good tasks: malformed JSON, wrong argument types, unknown names, a throwing and
    //    a hanging handler → dead-lettered with the reason stored; oversized payloads refused at kick.
    private async Task<ScenarioResult> PoisonAsync()
    {
        const string queue = "poison";
        await StartWorkerAsync(queue, new Dictionary<string, int>());
        await StartWorkerAsync(queue, new Dictionary<string, int>());
        var n = smoke ? 20 : 100;
        await using var broker = new PostgresBroker(rig.DataSource, new PostgresBrokerOptions { Queue = queue, RunMigrations = false });
        var good = Enumerable.Range(0, n * 5).Select(_ => TaskMessage.Create("record", [0])).ToArray();
        var wrongTypes = Enumerable.Range(0, n).Select(_ => TaskMessage.Create("record", ["not a number"])).ToArray();
        var unknown = Enumerable.Range(0, n).Select(_ => TaskMessage.Create("no_such_task")).ToArray();
        var throwing = Enumerable.Range(0, n).Select(_ => TaskMessage.Create("fail")).ToArray();
        var hanging = Enumerable.Range(0, n).Select(_ => TaskMessage.Create("record", [600_000])).ToArray();
        await broker.KickManyAsync([.. good, .. wrongTypes, .. unknown], new KickOptions { MaxAttempts = 2 });
        await broker.KickManyAsync(throwing, new KickOptions { MaxAttempts = 2 });
        await broker.KickManyAsync(hanging, new KickOptions { MaxAttempts = 1, Timeout = TimeSpan.FromMilliseconds(300) });
        var malformed = Enumerable.Range(0, n).Select(i => "malformed-" + Guid.NewGuid().ToString("N")).ToArray();
        await rig.ExecuteAsync(
            "INSERT INTO taskiq_messages (task_id, task_name, message, queue) SELECT id, 'record', '{\"task_id\": ' || id || ', oops', $2 FROM unnest($1::text[]) AS id",
            malformed, queue);
        await NoteKickedAsync(queue, [.. good.Concat(wrongTypes).Concat(unknown).Concat(throwing).Concat(hanging).Select(m => m.TaskId), .. malformed]);
        var refused = 0;
        for (var i = 0; i < n; i++)
        {
            try
            {
                await broker.KickAsync(TaskMessage.Create("record", [new string('x', 2 * 1024 * 1024)]));
            }
            catch (MessageTooLargeException)
            {
                refused++;
            }
        }

        var r = await ReconcileAsync(queue, TimeSpan.FromSeconds(90));
        var goodDone = await rig.ScalarAsync<long>("SELECT count(DISTINCT task_id) FROM fault_ledger WHERE task_id = ANY($1)",
            (object)good.Select(m => m.TaskId).ToArray()); // one array parameter, not params
        var withReason = await rig.ScalarAsync<long>(
            "SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND status = 'discarded' AND coalesce(last_error, '') <> ''", queue);
        var expectedDead = 5 * n;
        return r.Result(queue, r.Lost == 0 && goodDone == good.Length && r.DeadLettered == expectedDead && withReason == expectedDead && refused == n,
            $"{goodDone}/{good.Length} good tasks done; {r.DeadLettered}/{expectedDead} bad ones dead-lettered, {withReason} with the reason stored; " +
            $"{refused}/{n} oversized (2 MiB) kicks refused with MessageTooLargeException");
    }

    // 6. A worker with a pool of 3 connections, 24 concurrent tasks, every handler also querying that pool.
    private async Task<ScenarioResult> PoolAsync()
    {
        const string queue = "pool";
        await StartWorkerAsync(queue, new Dictionary<string, int> { ["maxpool"] = 3, ["concurrency"] = 24, ["prefetch"] = 48 });
        var tasks = smoke ? 1_000 : 20_000;
        await KickAsync(queue, tasks, "record_db", workMs: 5);
        var watch = Stopwatch.StartNew();
        var r = await ReconcileAsync(queue, TimeSpan.FromMinutes(smoke ? 2 : 10));
        return r.Result(queue, r.Lost == 0 && r.Duplicates == 0 && r.Completed == tasks,
            $"Max Pool Size 3, 24 concurrent handlers each querying the same pool: drained in {watch.Elapsed.TotalSeconds:0.0} s, no deadlock");
    }

    // 7. Handlers that block their threads for 3 leases in a worker whose thread pool is capped at 4 threads; a second
    //    worker would rescue any lease that lapses. Renewal runs on its own thread, so no task runs twice.
    private async Task<ScenarioResult> StarvationAsync()
    {
        const string queue = "starvation";
        var lease = 1_500;
        var starved = await StartWorkerAsync(queue, new Dictionary<string, int> { ["leasems"] = lease, ["maxthreads"] = 4, ["concurrency"] = 8, ["prefetch"] = 8 });
        var tasks = smoke ? 16 : 64;
        await KickAsync(queue, tasks, "block", workMs: lease * 3);
        var other = await StartWorkerAsync(queue, new Dictionary<string, int> { ["leasems"] = lease, ["concurrency"] = 2, ["prefetch"] = 0 });
        var r = await ReconcileAsync(queue, TimeSpan.FromMinutes(smoke ? 2 : 6));
        var byOther = await rig.ScalarAsync<long>("SELECT count(*) FROM fault_ledger WHERE worker = $1", other.Name);
        return r.Result(queue, r.Lost == 0 && r.Duplicates == 0,
            $"{tasks} handlers each blocking a thread for {lease * 3} ms (3 leases) in a worker capped at 4 pool threads; " +
            $"{r.Duplicates} ran twice; the competing worker ran {byOther}" + (r.Duplicates > 0 ? $"; starved worker's warnings: {starved.Errors}" : ""));
    }

    // 8. SIGTERM to a busy worker: running tasks finish, prefetched ones are released at once (taken by the other
    //    worker well before their 30 s lease would have expired), nothing lost, nothing run twice.
    private async Task<ScenarioResult> GracefulAsync()
    {
        const string queue = "graceful";
        var settings = new Dictionary<string, int> { ["leasems"] = 30_000, ["concurrency"] = 8, ["prefetch"] = 32, ["shutdownms"] = 10_000 };
        var stopping = await StartWorkerAsync(queue, settings);
        var staying = await StartWorkerAsync(queue, settings);
        var tasks = smoke ? 300 : 3_000;
        await KickAsync(queue, tasks, "record", workMs: 200);
        await Task.Delay(TimeSpan.FromSeconds(1.5));
        var watch = Stopwatch.StartNew();
        stopping.Terminate();
        await stopping.WaitForExitAsync(TimeSpan.FromSeconds(30));
        var exitSeconds = watch.Elapsed.TotalSeconds;
        // Released at once: right after the exit, nothing is still leased to the stopped worker (a crash would leave
        // its prefetched tasks leased for 30 s).
        var stillLeased = await rig.ScalarAsync<long>(
            "SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND status = 'processing' AND locked_by = $2", queue, stopping.Name);
        var r = await ReconcileAsync(queue, TimeSpan.FromSeconds(tasks * 0.2 / 8 + 30));
        var byStopping = await rig.ScalarAsync<long>("SELECT count(*) FROM fault_ledger WHERE worker = $1", stopping.Name);
        return r.Result(queue, r.Lost == 0 && r.Duplicates == 0 && r.Completed == tasks && stopping.ExitCode == 0 && exitSeconds < 15 && stillLeased == 0,
            $"SIGTERM → exit code {stopping.ExitCode} after {exitSeconds:0.0} s (ShutdownTimeout 10 s); it completed {byStopping}; " +
            $"{stillLeased} rows still leased to it after its exit (its prefetched tasks were released, not left to the 30 s lease); " +
            $"the rest done by {staying.Name}");
    }

    // 9. Three scheduler processes with one every-second cron; one is SIGKILLed mid-run and restarted.
    private async Task<ScenarioResult> SchedulerAsync()
    {
        await StartWorkerAsync("sched", new Dictionary<string, int> { ["concurrency"] = 4 });
        var schedulers = new List<Child>();
        for (var i = 1; i <= 3; i++)
        {
            schedulers.Add(await StartSchedulerAsync($"scheduler-{i}"));
        }

        var start = await rig.ScalarAsync<DateTime>("SELECT clock_timestamp()");
        var duration = TimeSpan.FromSeconds(smoke ? 12 : 180);
        await Task.Delay(duration / 2);
        schedulers[1].Kill9();
        await Task.Delay(TimeSpan.FromSeconds(2));
        schedulers.Add(await StartSchedulerAsync("scheduler-2b"));
        await Task.Delay(duration / 2);
        var end = await rig.ScalarAsync<DateTime>("SELECT clock_timestamp()");
        foreach (var s in schedulers.Where(s => !s.HasExited))
        {
            s.Terminate();
        }

        await Task.Delay(TimeSpan.FromSeconds(3)); // the last fires' tasks run
        // Whole seconds strictly inside the window (start-up and shutdown edges left out), by the database clock.
        var from = new DateTimeOffset(start, TimeSpan.Zero).AddSeconds(3);
        var to = new DateTimeOffset(end, TimeSpan.Zero).AddSeconds(-2);
        var counts = new Dictionary<long, int>();
        await using (var command = rig.DataSource.CreateCommand("SELECT fire_at FROM fault_ledger WHERE fire_at IS NOT NULL"))
        await using (var reader = await command.ExecuteReaderAsync())
        {
            while (await reader.ReadAsync())
            {
                var second = DateTimeOffset.Parse(reader.GetString(0), CultureInfo.InvariantCulture).ToUnixTimeSeconds();
                counts[second] = counts.GetValueOrDefault(second) + 1;
            }
        }

        var instants = Enumerable.Range(0, (int)(to - from).TotalSeconds).Select(i => from.AddSeconds(i).ToUnixTimeSeconds()).ToArray();
        var missing = instants.Count(i => !counts.ContainsKey(i));
        var doubled = instants.Count(i => counts.GetValueOrDefault(i) > 1);
        var ran = instants.Sum(i => (long)counts.GetValueOrDefault(i));
        return new ScenarioResult("scheduler", instants.Length, instants.Length - missing, missing, ran - (instants.Length - missing), 0, 0,
            missing == 0 && doubled == 0,
            $"3 schedulers, one SIGKILLed at {duration.TotalSeconds / 2:0} s and restarted; {instants.Length} every-second instants checked: " +
            $"{missing} missing, {doubled} fired more than once");
    }

    // 10. Steady load for a while: dead tuples and size of the queue table stay bounded, the worker's memory stays flat.
    private async Task<ScenarioResult> SoakAsync()
    {
        const string queue = "soak";
        var worker = await StartWorkerAsync(queue, new Dictionary<string, int> { ["concurrency"] = 16 });
        var duration = TimeSpan.FromSeconds(smoke ? 20 : 600);
        var sampleEvery = TimeSpan.FromSeconds(smoke ? 2 : 30);
        await using var broker = new PostgresBroker(rig.DataSource, new PostgresBrokerOptions { Queue = queue, RunMigrations = false });
        using var stop = new CancellationTokenSource(duration);
        var kicked = 0L;
        var producers = Enumerable.Range(0, 4).Select(async _ =>
        {
            var ids = new List<string>();
            while (!stop.IsCancellationRequested)
            {
                var message = TaskMessage.Create("record", [0]);
                await broker.KickAsync(message);
                ids.Add(message.TaskId);
                Interlocked.Increment(ref kicked);
                if (ids.Count == 500)
                {
                    await NoteKickedAsync(queue, ids);
                    ids.Clear();
                }

                await Task.Delay(5); // ~150 kicks/s per producer: steady, not a burn-down
            }

            await NoteKickedAsync(queue, ids);
        }).ToArray();
        var samples = new List<(double Rss, long Dead, long SizeKb)>();
        while (!stop.IsCancellationRequested)
        {
            await Task.Delay(sampleEvery);
            samples.Add((worker.RssMb(),
                await rig.ScalarAsync<long>("SELECT coalesce(n_dead_tup, 0) FROM pg_stat_user_tables WHERE relname = 'taskiq_messages'"),
                await rig.ScalarAsync<long>("SELECT pg_total_relation_size('taskiq_messages') / 1024")));
        }

        await Task.WhenAll(producers);
        var r = await ReconcileAsync(queue, TimeSpan.FromSeconds(60));
        var third = samples.Skip(samples.Count / 3).First();
        var last = samples[^1];
        var flat = last.Rss <= third.Rss * 1.5;
        var bounded = samples.Max(s => s.Dead) < 200_000 && last.SizeKb <= Math.Max(third.SizeKb * 3, 8_192);
        return r.Result(queue, r.Lost == 0 && r.Duplicates == 0 && flat && bounded,
            $"{duration.TotalSeconds:0} s at ~{kicked / duration.TotalSeconds:0} kicks/s; worker RSS {samples[0].Rss:0} → {third.Rss:0} → {last.Rss:0} MB; " +
            $"dead tuples max {samples.Max(s => s.Dead):N0}, last {last.Dead:N0}; queue table {third.SizeKb:N0} → {last.SizeKb:N0} kB");
    }

    // 11. Outcomes PostgreSQL refuses, in a stream of good tasks: handler errors holding a NUL, rows another producer
    //     wrote with NUL escapes, results a trigger rejects. Each bad one is dead-lettered with its reason, every good
    //     one completes, nothing stays processing (before: one such outcome stalled every completion behind it).
    private async Task<ScenarioResult> PoisonCompletionAsync()
    {
        const string queue = "poison_completion";
        await rig.ExecuteAsync(
            """
            CREATE OR REPLACE FUNCTION fault_reject_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.result LIKE '%"return_value":"poison"%' THEN RAISE EXCEPTION 'poison results are refused' USING ERRCODE = '23514'; END IF;
                RETURN NEW;
            END $$;
            DROP TRIGGER IF EXISTS fault_reject_poison ON taskiq_results;
            CREATE TRIGGER fault_reject_poison BEFORE INSERT OR UPDATE ON taskiq_results FOR EACH ROW EXECUTE FUNCTION fault_reject_poison();
            """);
        try
        {
            await StartWorkerAsync(queue, new Dictionary<string, int> { ["concurrency"] = 8, ["pollms"] = 100 });
            await StartWorkerAsync(queue, new Dictionary<string, int> { ["concurrency"] = 8, ["pollms"] = 100 });
            var n = smoke ? 20 : 200;
            await using var broker = new PostgresBroker(rig.DataSource, new PostgresBrokerOptions { Queue = queue, RunMigrations = false });
            var good = Enumerable.Range(0, n * 20).Select(_ => TaskMessage.Create("record", [0])).ToArray();
            var nulErrors = Enumerable.Range(0, n).Select(_ => TaskMessage.Create("fail_nul")).ToArray();
            var refusedResults = Enumerable.Range(0, n).Select(_ => TaskMessage.Create("poison_result")).ToArray();
            var mixed = good.Concat(nulErrors).Concat(refusedResults).OrderBy(_ => Random.Shared.Next()).ToArray();
            await NoteKickedAsync(queue, mixed.Select(m => m.TaskId).ToArray());
            var nulRows = Enumerable.Range(0, n).Select(i => "nul-" + Guid.NewGuid().ToString("N")).ToArray();
            await NoteKickedAsync(queue, nulRows);
            await broker.KickManyAsync(mixed, new KickOptions { MaxAttempts = 1 });
            await rig.ExecuteAsync(
                """
                INSERT INTO taskiq_messages (task_id, task_name, message, queue, max_attempts)
                SELECT id, 'record', '{"task_id":"' || id || '","task_name":"rec\u0000ord","labels":{},"args":[0],"kwargs":{}}', $2, 1
                FROM unnest($1::text[]) AS id
                """, nulRows, queue);

            var r = await ReconcileAsync(queue, TimeSpan.FromMinutes(smoke ? 1 : 3));
            var goodDone = await rig.ScalarAsync<long>("SELECT count(DISTINCT task_id) FROM fault_ledger WHERE task_id = ANY($1)",
                (object)good.Select(m => m.TaskId).ToArray());
            var withReason = await rig.ScalarAsync<long>(
                "SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND status = 'discarded' AND (last_error LIKE '%NUL%' OR last_error LIKE '%23514%')",
                queue);
            var processing = await rig.ScalarAsync<long>("SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND status = 'processing'", queue);
            var reasons = await rig.ScalarAsync<string>(
                "SELECT coalesce(string_agg(reason || ' ×' || n, '; '), '') FROM (SELECT left(last_error, 90) AS reason, count(*) AS n FROM taskiq_messages WHERE queue = $1 AND status = 'discarded' GROUP BY 1 ORDER BY 2 DESC LIMIT 8) r",
                queue);
            var expectedDead = 3 * n;
            return r.Result(queue, r.Lost == 0 && r.Duplicates == 0 && goodDone == good.Length && r.DeadLettered == expectedDead
                                   && withReason == expectedDead && processing == 0,
                $"{goodDone}/{good.Length} good tasks done; {r.DeadLettered}/{expectedDead} poison outcomes dead-lettered ({n} NUL errors, {n} NUL rows, " +
                $"{n} results refused by a trigger), {withReason} with the database's or the sanitizer's reason; {processing} left processing"
                + (r.DeadLettered == expectedDead ? "" : $"; dead letters by reason: {reasons}"));
        }
        finally
        {
            await rig.ExecuteAsync("DROP TRIGGER IF EXISTS fault_reject_poison ON taskiq_results");
        }
    }

    // 12. Handlers hold every pooled connection for 3 leases (Max Pool Size 4, 4 handlers each in a pg_sleep); a second
    //     worker would rescue any lease that lapses. Renewals run on a connection of their own: nothing runs twice.
    private async Task<ScenarioResult> RenewalStallAsync()
    {
        const string queue = "renewal_stall";
        const int lease = 1_500;
        await StartWorkerAsync(queue, new Dictionary<string, int> { ["leasems"] = lease, ["maxpool"] = 4, ["concurrency"] = 4, ["prefetch"] = 0 });
        var tasks = smoke ? 8 : 40;
        await KickAsync(queue, tasks, "record_db", workMs: lease * 3);
        var other = await StartWorkerAsync(queue, new Dictionary<string, int> { ["leasems"] = lease, ["concurrency"] = 2, ["prefetch"] = 0 });
        var r = await ReconcileAsync(queue, TimeSpan.FromMinutes(smoke ? 2 : 6));
        var byOther = await rig.ScalarAsync<long>("SELECT count(*) FROM fault_ledger WHERE worker = $1", other.Name);
        return r.Result(queue, r.Lost == 0 && r.Duplicates == 0 && r.Completed == tasks,
            $"{tasks} handlers each holding a pooled connection for {lease * 3} ms (3 leases) with Max Pool Size 4; {r.Duplicates} ran twice; " +
            $"the competing worker ran {byOther}");
    }

    // 13. Control across processes: two worker processes each serving two queues ("control" and "control_hold"), steered
    //     from this process. Pause mid-backlog: no claim starts after the pause commits, kicks are still accepted, resume
    //     drains everything. Cancel tasks running in the other processes: each handler's token fires (NOTIFY), every one
    //     ends cancelled. Four producer processes race on the same unique tasks: exactly one row each.
    private async Task<ScenarioResult> ControlAsync()
    {
        const string queue = "control", hold = "control_hold", unique = "control_unique";
        // No prefetch: the eight held tasks below run four in each process.
        var settings = new Dictionary<string, int> { ["leasems"] = 5_000, ["concurrency"] = 4, ["prefetch"] = 0, ["pollms"] = 200 };
        for (var i = 0; i < 2; i++)
        {
            await StartWorkerAsync($"{queue},{hold}", settings);
        }

        await using var broker = new PostgresBroker(rig.DataSource, new PostgresBrokerOptions { Queue = queue, RunMigrations = false });
        var notes = new List<string>();
        var ok = true;

        // Pause mid-backlog.
        var tasks = smoke ? 2_000 : 20_000;
        await KickAsync(queue, tasks, "record", workMs: 5);
        var watch = Stopwatch.StartNew();
        while (await rig.ScalarAsync<long>("SELECT count(*) FROM fault_ledger l JOIN fault_kicked k USING (task_id) WHERE k.scenario = $1", queue) < tasks / 10
               && watch.Elapsed < TimeSpan.FromMinutes(1))
        {
            await Task.Delay(20);
        }

        await broker.PauseQueueAsync();
        // After the pause committed (its paused_at is its transaction's start: a claim starting before the commit rightly
        // claims). attempted_at is the claim transaction's start.
        var pausedAt = await rig.ScalarAsync<DateTime>("SELECT clock_timestamp()");
        watch.Restart();
        while (await rig.ScalarAsync<long>("SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND status = 'processing'", queue) > 0
               && watch.Elapsed < TimeSpan.FromSeconds(30))
        {
            await Task.Delay(20);
        }

        var drainedIn = watch.Elapsed.TotalSeconds;
        await KickAsync(queue, 10, "record", workMs: 5); // accepted while paused
        var ranBefore = await rig.ScalarAsync<long>("SELECT count(*) FROM fault_ledger l JOIN fault_kicked k USING (task_id) WHERE k.scenario = $1", queue);
        await Task.Delay(TimeSpan.FromSeconds(2)); // an observation window: nothing may be claimed during it
        var ranAfter = await rig.ScalarAsync<long>("SELECT count(*) FROM fault_ledger l JOIN fault_kicked k USING (task_id) WHERE k.scenario = $1", queue);
        var claimedAfterPause = await rig.ScalarAsync<long>("SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND attempted_at > $2", queue, pausedAt);
        var waiting = await PendingAsync(queue);
        var pauseOk = claimedAfterPause == 0 && ranAfter == ranBefore && waiting > 10;
        ok &= pauseOk;
        notes.Add($"pause: running tasks finished {drainedIn:0.00} s after it, {claimedAfterPause} claims started after it, " +
                  $"{ranAfter - ranBefore} ran in a 2 s window, {waiting} waited (10 kicked while paused)");
        await broker.ResumeQueueAsync();
        var r = await ReconcileAsync(queue, TimeSpan.FromMinutes(smoke ? 2 : 5));
        ok &= r.Lost == 0 && r.Duplicates == 0 && r.Completed == tasks + 10;

        // Cancel tasks running in the worker processes.
        var holders = Enumerable.Range(0, 8).Select(_ => TaskMessage.Create("hold")).ToArray(); // 2 workers × 4 slots
        await NoteKickedAsync(hold, holders.Select(m => m.TaskId).ToArray());
        await broker.KickManyAsync(holders, new KickOptions { Queue = hold });
        watch.Restart();
        while (await rig.ScalarAsync<long>("SELECT count(*) FROM fault_ledger WHERE task_id = ANY($1)", (object)holders.Select(m => m.TaskId).ToArray()) < holders.Length
               && watch.Elapsed < TimeSpan.FromSeconds(30))
        {
            await Task.Delay(20);
        }

        var latencies = new List<double>();
        var outcomes = new List<CancelOutcome>();
        foreach (var holder in holders)
        {
            var asked = Stopwatch.StartNew();
            outcomes.Add((await broker.CancelAsync(holder.TaskId)).Outcome);
            while ((await broker.GetTaskAsync(holder.TaskId))?.State != TaskState.Cancelled && asked.Elapsed < TimeSpan.FromSeconds(30))
            {
                await Task.Delay(5);
            }

            latencies.Add(asked.Elapsed.TotalMilliseconds);
        }

        var cancelled = await rig.ScalarAsync<long>("SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND status = 'cancelled'", hold);
        var byWorkers = await rig.ScalarAsync<long>("SELECT count(DISTINCT worker) FROM fault_ledger WHERE task_id = ANY($1)", (object)holders.Select(m => m.TaskId).ToArray());
        latencies.Sort();
        var cancelOk = cancelled == holders.Length && outcomes.All(o => o == CancelOutcome.Requested);
        ok &= cancelOk;
        notes.Add($"cancel: {cancelled}/{holders.Length} running tasks (in {byWorkers} worker processes) cancelled, " +
                  $"request to cancelled median {latencies[latencies.Count / 2]:0} ms, max {latencies[^1]:0} ms");

        // Unique kicks racing from four processes.
        var keys = smoke ? 300 : 3_000;
        var startAt = DateTimeOffset.UtcNow.AddSeconds(3).ToUnixTimeMilliseconds();
        var producers = Enumerable.Range(0, 4).Select(i => Child.Start(rig.ConnectionString, $"unique-{i}", "--unique-producer", unique, $"unique-{i}",
            keys.ToString(CultureInfo.InvariantCulture), startAt.ToString(CultureInfo.InvariantCulture), i % 2 == 0 ? "single" : "many")).ToArray();
        _children.AddRange(producers);
        foreach (var producer in producers)
        {
            await producer.WaitForExitAsync(TimeSpan.FromMinutes(2));
        }

        var rows = await rig.ScalarAsync<long>("SELECT count(*) FROM taskiq_messages WHERE queue = $1", unique);
        var distinct = await rig.ScalarAsync<long>("SELECT count(DISTINCT message::jsonb -> 'args') FROM taskiq_messages WHERE queue = $1", unique);
        var fresh = await rig.ScalarAsync<long>("SELECT coalesce(sum(fresh), 0) FROM fault_unique");
        var duplicates = await rig.ScalarAsync<long>("SELECT coalesce(sum(duplicates), 0) FROM fault_unique");
        var uniqueOk = producers.All(p => p.ExitCode == 0) && rows == keys && distinct == keys && fresh == keys && duplicates == 3L * keys;
        ok &= uniqueOk;
        notes.Add($"unique: 4 processes × {keys} kicks of the same tasks → {rows} rows ({distinct} distinct), {fresh} reported new, {duplicates} duplicates"
                  + (producers.All(p => p.ExitCode == 0) ? "" : "; a producer failed: " + string.Join(" | ", producers.Select(p => p.Errors))));

        return new ScenarioResult("control", r.Tasks + holders.Length + keys, r.Completed, r.Lost, r.Duplicates, 0, 0, ok,
            string.Join("; ", notes));
    }

    private async Task<Child> StartWorkerAsync(string queue, IReadOnlyDictionary<string, int> settings, PgBouncer? through = null,
        string? connectionString = null)
    {
        var name = $"{queue}-worker-{++_workerSerial}";
        var child = through is null
            ? Child.Start(connectionString ?? rig.ConnectionString, name, ["--worker", queue, name, .. Settings.Format(settings)])
            : Child.StartWithListenConnection(through.ConnectionString, rig.ConnectionString, name, ["--worker", queue, name, .. Settings.Format(settings)]);
        _children.Add(child);
        await child.WaitReadyAsync();
        return child;
    }

    private async Task<Child> StartSchedulerAsync(string name)
    {
        var child = Child.Start(rig.ConnectionString, name, "--scheduler", name);
        _children.Add(child);
        await child.WaitReadyAsync();
        return child;
    }

    /// <summary>Kicks <paramref name="count"/> tasks in batches, each batch in one transaction with its ledger note.</summary>
    private async Task KickAsync(string queue, int count, string taskName, int workMs)
    {
        await using var broker = new PostgresBroker(rig.DataSource, new PostgresBrokerOptions { Queue = queue, RunMigrations = false });
        for (var sent = 0; sent < count; sent += 5_000)
        {
            var messages = Enumerable.Range(0, Math.Min(5_000, count - sent)).Select(_ => TaskMessage.Create(taskName, [workMs])).ToArray();
            await using var connection = await rig.DataSource.OpenConnectionAsync();
            await using var transaction = await connection.BeginTransactionAsync();
            await using (var note = new NpgsqlCommand("INSERT INTO fault_kicked (scenario, task_id) SELECT $1, unnest($2::text[])", connection, transaction))
            {
                note.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
                note.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = messages.Select(m => m.TaskId).ToArray() });
                await note.ExecuteNonQueryAsync();
            }

            await broker.KickManyAsync(messages, connection, transaction);
            await transaction.CommitAsync();
        }
    }

    private Task NoteKickedAsync(string queue, IReadOnlyCollection<string> ids)
        => ids.Count == 0 ? Task.CompletedTask
            : rig.ExecuteAsync("INSERT INTO fault_kicked (scenario, task_id, due_at) SELECT $1, unnest($2::text[]), clock_timestamp()", queue, ids.ToArray());

    private Task<long> PendingAsync(string queue)
        => rig.ScalarAsync<long>("SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND status NOT IN ('completed', 'cancelled', 'discarded')", queue);

    private async Task WaitOrDrainedAsync(string queue, TimeSpan wait)
    {
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < wait && await PendingAsync(queue) > 0)
        {
            await Task.Delay(250);
        }
    }

    /// <summary>Each duplicated task's runs (worker:attempt@seconds), for the notes: what explains the duplicate.</summary>
    private Task<string> DuplicateRunsAsync(string queue) => rig.ScalarAsync<string>(
        """
        SELECT coalesce(string_agg(runs, '; '), '') FROM (
            SELECT string_agg(worker || ':' || attempt || '@' || to_char(at, 'HH24:MI:SS.MS'), ', ' ORDER BY at) AS runs
            FROM fault_ledger JOIN fault_kicked USING (task_id) WHERE scenario = $1
            GROUP BY task_id HAVING count(*) > 1 LIMIT 5) d
        """, queue);

    private async Task<string[]> DuplicateTaskIdsAsync(string queue)
        => await rig.ScalarAsync<string[]>(
            "SELECT coalesce(array_agg(task_id), '{}') FROM (SELECT task_id FROM fault_ledger JOIN fault_kicked USING (task_id) WHERE scenario = $1 GROUP BY task_id HAVING count(*) > 1) d",
            queue);

    private Task<long> DuplicateTasksAsync(string queue) => rig.ScalarAsync<long>(
        "SELECT count(*) FROM (SELECT task_id FROM fault_ledger JOIN fault_kicked USING (task_id) WHERE scenario = $1 GROUP BY task_id HAVING count(*) > 1) d",
        queue);

    /// <summary>Waits until nothing of <paramref name="queue"/> is pending or processing (or the bound), then counts.</summary>
    private async Task<Reconciliation> ReconcileAsync(string queue, TimeSpan bound)
    {
        await WaitOrDrainedAsync(queue, bound);
        await Task.Delay(500); // the last acks' ledger rows are committed before their acks; this is only for the stragglers' results
        await using var command = rig.DataSource.CreateCommand(
            """
            WITH k AS (SELECT task_id FROM fault_kicked WHERE scenario = $1),
                 l AS (SELECT l.task_id, count(*) AS runs FROM fault_ledger l JOIN k USING (task_id) GROUP BY l.task_id),
                 m AS (SELECT task_id, status FROM taskiq_messages WHERE queue = $1)
            SELECT count(*),
                   count(*) FILTER (WHERE l.task_id IS NOT NULL AND (m.task_id IS NULL OR m.status = 'completed')), -- ran, row settled
                   count(*) FILTER (WHERE l.task_id IS NULL AND m.status IS DISTINCT FROM 'discarded'), -- never ran, not discarded
                   coalesce(sum(l.runs - 1), 0)::bigint,
                   count(*) FILTER (WHERE m.status = 'discarded')
            FROM k LEFT JOIN l USING (task_id) LEFT JOIN m USING (task_id)
            """);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
        await using var reader = await command.ExecuteReaderAsync();
        await reader.ReadAsync();
        return new Reconciliation(reader.GetInt64(0), reader.GetInt64(1), reader.GetInt64(2), reader.GetInt64(3), reader.GetInt64(4));
    }

    private sealed record Reconciliation(long Tasks, long Completed, long Lost, long Duplicates, long DeadLettered)
    {
        public ScenarioResult Result(string scenario, bool passed, string notes)
            => new(scenario, Tasks, Completed, Lost, Duplicates, DeadLettered, 0, passed, notes);
    }
}
