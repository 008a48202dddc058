using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Npgsql;

namespace TaskiqPg.Bench;

/// <summary>
/// Scale-out on one server, in one run: the burn-down with 1, 2 and 4 worker processes on one queue, and single kicks
/// from 1, 4 and 8 producer processes beside the raw single-row INSERT rate of the same processes. Each row also
/// carries the CPU it cost: the processes' own (from their <c>TotalProcessorTime</c>) and the database's (every
/// <c>postgres</c> process's user + system time from <c>/proc</c>, with exited backends' time from their postmaster's
/// children's time, before and after), per task — the figures the
/// README's Sizing section is computed from.
/// </summary>
internal static class ScalingBench
{
    public const string ProducerFlag = "--kick-producer";

    public static async Task RunAsync(string connectionString, int tasks, int producerSeconds, BenchReport report)
    {
        await using var dataSource = NpgsqlDataSource.Create(connectionString);
        await using (var create = dataSource.CreateCommand(
                         "CREATE TABLE IF NOT EXISTS bench_raw (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, task_id text NOT NULL, task_name text NOT NULL, message text NOT NULL, queue text NOT NULL)"))
        {
            await create.ExecuteNonQueryAsync();
        }

        foreach (var workers in new[] { 1, 2, 4 })
        {
            var queue = $"scale{workers}";
            await using (var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = queue }))
            {
                for (var sent = 0; sent < tasks; sent += 5_000)
                {
                    await broker.KickManyAsync(Enumerable.Range(0, Math.Min(5_000, tasks - sent)).Select(_ => TaskMessage.Create("noop")).ToArray());
                }
            }

            await CheckpointAsync(dataSource);
            var dbBefore = DatabaseCpuSeconds();
            var watch = Stopwatch.StartNew();
            var runs = await Task.WhenAll(Enumerable.Range(0, workers)
                .Select(_ => DrainWorker.RunProcessAsync(connectionString, queue, runFor: null, completedRetention: null, shared: true)));
            var seconds = watch.Elapsed.TotalSeconds;
            var dbCpu = DatabaseCpuSeconds() - dbBefore;
            var clientCpu = runs.Sum(r => r.CpuSeconds);
            // The drain itself, on the database clock: first claim to last ack (process start-up and stop excluded).
            double drainSeconds;
            await using (var span = dataSource.CreateCommand("SELECT extract(epoch FROM max(finished_at) - min(attempted_at))::float8 FROM taskiq_messages WHERE queue = $1"))
            {
                span.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
                drainSeconds = (double)(await span.ExecuteScalarAsync())!;
            }

            report.Add($"burn-down, {workers} worker process{(workers > 1 ? "es" : "")} (results stored)", tasks / drainSeconds, "tasks/s");
            report.Add($"  database CPU per task, {workers} worker process{(workers > 1 ? "es" : "")}", dbCpu / tasks * 1e6, "µs");
            report.Add($"  worker CPU per task, {workers} worker process{(workers > 1 ? "es" : "")}", clientCpu / tasks * 1e6, "µs");
            report.Add($"  database / worker CPU busy, {workers} worker process{(workers > 1 ? "es" : "")}", dbCpu / seconds * 100,
                $"% of one core (workers {clientCpu / seconds * 100:0} %, over {seconds:0.0} s with start-up and stop)");
        }

        foreach (var (mode, producers) in new[] { ("kick", 1), ("kick", 4), ("kick", 8), ("raw", 8) })
        {
            await CheckpointAsync(dataSource);
            var dbBefore = DatabaseCpuSeconds();
            var watch = Stopwatch.StartNew();
            var runs = await Task.WhenAll(Enumerable.Range(0, producers).Select(i => RunProducerAsync(connectionString, $"single{producers}", producerSeconds, mode)));
            var seconds = watch.Elapsed.TotalSeconds;
            var dbCpu = DatabaseCpuSeconds() - dbBefore;
            var kicked = runs.Sum(r => r.Count);
            var what = mode == "kick" ? "single kicks (KickAsync)" : "raw single-row INSERT (same columns, autocommit)";
            report.Add($"{what}, {producers} producer process{(producers > 1 ? "es" : "")}", kicked / (double)producerSeconds, "tasks/s");
            report.Add($"  database CPU per {(mode == "kick" ? "kick" : "insert")}, {producers} producer process{(producers > 1 ? "es" : "")}", dbCpu / kicked * 1e6, "µs");
            report.Add($"  producer CPU per {(mode == "kick" ? "kick" : "insert")}, {producers} producer process{(producers > 1 ? "es" : "")}", runs.Sum(r => r.CpuSeconds) / kicked * 1e6, "µs");
            _ = seconds;
        }

        var single8 = report.Rows.Single(r => r.Measure == "single kicks (KickAsync), 8 producer processes").Value;
        var raw8 = report.Rows.Single(r => r.Measure == "raw single-row INSERT (same columns, autocommit), 8 producer processes").Value;
        report.Add("single kicks, 8 producers / raw INSERT limit, 8 producers", single8 / raw8, "ratio");
    }

    /// <summary>A producer process: kicks one task at a time (or inserts one raw row) for <paramref name="seconds"/>, then prints its count and CPU time.</summary>
    public static async Task<int> ProducerMainAsync(string queue, int seconds, string mode)
    {
        var connectionString = BenchProcess.ChildConnectionString();
        await using var dataSource = NpgsqlDataSource.Create(connectionString);
        await using var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = queue });
        await broker.StartAsync();
        var message = TaskMessage.Create("noop").ToJson();
        var count = 0L;
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed.TotalSeconds < seconds)
        {
            if (mode == "kick")
            {
                await broker.KickAsync(TaskMessage.Create("noop"));
            }
            else
            {
                await using var insert = dataSource.CreateCommand("INSERT INTO bench_raw (task_id, task_name, message, queue) VALUES ($1, 'noop', $2, $3)");
                insert.Parameters.Add(new NpgsqlParameter<string> { TypedValue = TaskIds.New() });
                insert.Parameters.Add(new NpgsqlParameter<string> { TypedValue = message });
                insert.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
                await insert.ExecuteNonQueryAsync();
            }

            count++;
        }

        Console.WriteLine(JsonSerializer.Serialize(new { count, cpuSeconds = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds }));
        return 0;
    }

    private static async Task<(long Count, double CpuSeconds)> RunProducerAsync(string connectionString, string queue, int seconds, string mode)
    {
        var (file, args) = BenchProcess.Self(ProducerFlag, queue, seconds.ToString(CultureInfo.InvariantCulture), mode);
        var (exitCode, output, error) = (await BenchProcess.RunAsync(file, args, new Dictionary<string, string> { [BenchProcess.ConnectionVariable] = connectionString }))!.Value;
        if (exitCode != 0)
        {
            throw new InvalidOperationException($"The producer failed: {error}");
        }

        using var json = JsonDocument.Parse(output.Trim().Split('\n')[^1]);
        return (json.RootElement.GetProperty("count").GetInt64(), json.RootElement.GetProperty("cpuSeconds").GetDouble());
    }

    /// <summary>A checkpoint before each row, so one row's dirty pages are not written during the next.</summary>
    private static async Task CheckpointAsync(NpgsqlDataSource dataSource)
    {
        await using var checkpoint = dataSource.CreateCommand("CHECKPOINT");
        await checkpoint.ExecuteNonQueryAsync();
    }

    /// <summary>User + system CPU seconds of every process named <c>postgres</c> on this machine (the local server's).</summary>
    private static double DatabaseCpuSeconds()
    {
        var ticks = 0L;
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            try
            {
                var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                var open = stat.IndexOf('(');
                var close = stat.LastIndexOf(')');
                if (open < 0 || close < 0 || stat[(open + 1)..close] != "postgres")
                {
                    continue;
                }

                // utime, stime, and cutime, cstime: a backend that exited is counted in its postmaster's children's time.
                var fields = stat[(close + 2)..].Split(' ');
                ticks += long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)
                         + long.Parse(fields[13], CultureInfo.InvariantCulture) + long.Parse(fields[14], CultureInfo.InvariantCulture);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException)
            {
                // a process that ended meanwhile
            }
        }

        return ticks / 100.0; // USER_HZ
    }
}
