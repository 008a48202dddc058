using System.Diagnostics;
using System.Globalization;
using Npgsql;

namespace TaskiqPg.Bench;

/// <summary>
/// Schedulers side by side, 3 nodes each, same server, same run: TaskiqPg's scheduler (3 processes of this benchmark in
/// <c>--scheduler-node</c> mode, default options) and Quartz.NET's clustered ADO.NET job store (3 processes of
/// <c>bench/TaskiqPg.Bench.Quartz</c>). Each serves S schedules firing every second for T seconds. Measured over a
/// window that starts 3 s after the last node is up: instants fired, missed, fired twice, and how late each fire was
/// (TaskiqPg: the kick's commit time, <c>created_at</c>, against the instant; Quartz: the job's start, which is its
/// fire, against the scheduled fire time).
/// </summary>
internal static class SchedulerBench
{
    public const string NodeFlag = "--scheduler-node";

    public static async Task RunAsync(string adminConnectionString, int schedules, int seconds, BenchReport report)
    {
        // TaskiqPg: the schedules stored first (runtime schedules), then the nodes started.
        var ours = new NpgsqlConnectionStringBuilder(adminConnectionString) { Database = await BenchDatabase.CreateAsync(adminConnectionString, "sched_taskiqpg") }.ConnectionString;
        await using (var dataSource = NpgsqlDataSource.Create(ours))
        {
            await using (var source = new PostgresScheduleSource(dataSource))
            {
                await source.MigrateAsync();
                for (var i = 0; i < schedules; i++)
                {
                    await source.AddScheduleAsync(new ScheduleDefinition { TaskName = "tick", Cron = "* * * * * *" });
                }
            }

            await using (var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = "ticks" }))
            {
                await broker.MigrateAsync();
            }

            var window = await RunNodesAsync(dataSource, seconds, _ => BenchProcess.Self(NodeFlag), new Dictionary<string, string> { [BenchProcess.ConnectionVariable] = ours });
            await ReportAsync(dataSource, "TaskiqPg scheduler", schedules, window,
                """
                SELECT labels->>'schedule_id', (labels->>'schedule_fire_at')::timestamptz, created_at
                FROM taskiq_messages WHERE queue = 'ticks'
                """, report);
        }

        // Quartz.NET: node 0 stores the triggers at its start; every execution writes a row.
        var quartz = new NpgsqlConnectionStringBuilder(adminConnectionString) { Database = await BenchDatabase.CreateAsync(adminConnectionString, "sched_quartz") }.ConnectionString;
        await using (var dataSource = NpgsqlDataSource.Create(quartz))
        {
            await using (var create = dataSource.CreateCommand(
                             "CREATE TABLE quartz_bench_fires (schedule text NOT NULL, fire_at timestamptz NOT NULL, fired_at timestamptz NOT NULL, node text NOT NULL)"))
            {
                await create.ExecuteNonQueryAsync();
            }

            var project = Path.Combine(BenchFolders.Find(), "TaskiqPg.Bench.Quartz");
            if (!await BuildAsync(project))
            {
                Console.WriteLine("Quartz.NET skipped: its program did not build");
                return;
            }

            var dll = Path.Combine(project, "bin", "Release", "net10.0", "TaskiqPg.Bench.Quartz.dll");
            var window = await RunNodesAsync(dataSource, seconds,
                i => ("dotnet", [dll, i.ToString(CultureInfo.InvariantCulture), schedules.ToString(CultureInfo.InvariantCulture)]),
                new Dictionary<string, string> { ["TASKIQPG_BENCH_PEER_CONNECTION"] = quartz }, firstAlone: true);
            await ReportAsync(dataSource, "Quartz.NET 4.7.3 clustered", schedules, window, "SELECT schedule, fire_at, fired_at FROM quartz_bench_fires", report);
        }
    }

    /// <summary>A TaskiqPg scheduler node: default options on queue <c>ticks</c>; "ready" once started; stops at the end of standard input.</summary>
    public static async Task<int> NodeMainAsync()
    {
        var connectionString = BenchProcess.ChildConnectionString();
        await using var dataSource = NpgsqlDataSource.Create(connectionString);
        await using var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = "ticks" });
        await using var source = new PostgresScheduleSource(dataSource);
        using var scheduler = new TaskiqScheduler(source, broker);
        await scheduler.StartAsync(CancellationToken.None);
        Console.WriteLine("ready");
        await Console.In.ReadToEndAsync();
        await scheduler.StopAsync(CancellationToken.None);
        return 0;
    }

    /// <summary>
    /// Starts 3 nodes (the first alone until it is up, when it creates what the others use), waits until all are up,
    /// then measures for <paramref name="seconds"/> and stops them. Returns the window on the database clock.
    /// </summary>
    private static async Task<(DateTime From, DateTime To)> RunNodesAsync(NpgsqlDataSource dataSource, int seconds,
        Func<int, (string File, string[] Args)> command, Dictionary<string, string> environment, bool firstAlone = false)
    {
        var nodes = new List<Process>();
        try
        {
            for (var i = 0; i < 3; i++)
            {
                var (file, args) = command(i);
                var node = BenchProcess.Start(file, args, environment, input: true);
                nodes.Add(node);
                _ = node.StandardError.ReadToEndAsync();
                if (i == 0 && firstAlone)
                {
                    await WaitReadyAsync(node);
                }
            }

            foreach (var node in nodes.Skip(firstAlone ? 1 : 0))
            {
                await WaitReadyAsync(node);
            }

            await Task.Delay(TimeSpan.FromSeconds(3)); // every node has loaded its schedules and taken part
            var from = await NowAsync(dataSource);
            await Task.Delay(TimeSpan.FromSeconds(seconds));
            var to = await NowAsync(dataSource);
            await Task.Delay(TimeSpan.FromSeconds(3)); // the window's last instants fired
            return (from, to);
        }
        finally
        {
            foreach (var node in nodes)
            {
                node.StandardInput.Close();
            }

            foreach (var node in nodes)
            {
                if (!node.WaitForExit(TimeSpan.FromSeconds(30)))
                {
                    node.Kill(entireProcessTree: true);
                }

                node.Dispose();
            }
        }
    }

    private static async Task WaitReadyAsync(Process node)
    {
        while (await node.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromMinutes(2)) is { } line)
        {
            if (line == "ready")
            {
                _ = node.StandardOutput.ReadToEndAsync();
                return;
            }
        }

        throw new InvalidOperationException("A scheduler node exited before it was ready.");
    }

    /// <summary>Fires whose instant lies in the window: count, distinct, missed, lateness percentiles.</summary>
    private static async Task ReportAsync(NpgsqlDataSource dataSource, string name, int schedules, (DateTime From, DateTime To) window, string fires,
        BenchReport report)
    {
        await using var command = dataSource.CreateCommand(
            $"""
             WITH f(schedule, fire_at, fired_at) AS ({fires}), w AS (SELECT * FROM f WHERE fire_at >= $1 AND fire_at < $2)
             SELECT count(*), count(DISTINCT (schedule, fire_at)),
                    coalesce(array_agg(extract(epoch FROM fired_at - fire_at)::float8 * 1000), ARRAY[]::float8[])
             FROM w
             """);
        command.Parameters.Add(new NpgsqlParameter<DateTime> { TypedValue = window.From });
        command.Parameters.Add(new NpgsqlParameter<DateTime> { TypedValue = window.To });
        await using var reader = await command.ExecuteReaderAsync();
        await reader.ReadAsync();
        var rows = reader.GetInt64(0);
        var distinct = reader.GetInt64(1);
        var lateness = reader.GetFieldValue<double[]>(2).ToList();
        // Whole-second instants in [from, to).
        var first = Math.Ceiling((window.From - DateTime.UnixEpoch).TotalSeconds);
        var last = Math.Ceiling((window.To - DateTime.UnixEpoch).TotalSeconds) - 1;
        var expected = (long)(last - first + 1) * schedules;
        report.Add($"{name}, 3 nodes, {schedules} every-second schedules: instants fired in {(window.To - window.From).TotalSeconds:0} s", distinct,
            $"of {expected:N0} (missed {expected - distinct:N0})");
        report.Add($"{name}: instants fired more than once", rows - distinct, "fires");
        if (lateness.Count > 0)
        {
            report.AddPercentiles($"{name}: fire lateness (instant → {(name.StartsWith("TaskiqPg", StringComparison.Ordinal) ? "kick committed" : "job started")})", lateness);
        }
    }

    private static async Task<DateTime> NowAsync(NpgsqlDataSource dataSource)
    {
        await using var now = dataSource.CreateCommand("SELECT clock_timestamp()");
        return (DateTime)(await now.ExecuteScalarAsync())!;
    }

    private static async Task<bool> BuildAsync(string project)
    {
        var build = await BenchProcess.RunAsync("dotnet", ["build", "-c", "Release", project]);
        if (build is { ExitCode: not 0 })
        {
            Console.WriteLine(build.Value.Output);
        }

        return build is { ExitCode: 0 };
    }
}
