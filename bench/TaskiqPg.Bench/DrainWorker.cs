using System.Diagnostics;
using System.Text.Json;
using Npgsql;

namespace TaskiqPg.Bench;

/// <summary>
/// The burn-down's worker as a process of its own (so its peak RSS is the worker's alone): started by the benchmark
/// with <c>--drain-worker &lt;queue&gt;</c> and the connection string in <c>TASKIQPG_BENCH_CONNECTION</c> (never on
/// the command line, where <c>ps</c> would show the password). Prints one JSON line: drain rate and peak RSS.
/// </summary>
internal static class DrainWorker
{
    public const string Flag = "--drain-worker";
    private const string RetentionVariable = "TASKIQPG_BENCH_COMPLETED_RETENTION_SECONDS";

    /// <summary>The argument after the queue that makes a worker one of several on the queue (see <see cref="MainAsync"/>).</summary>
    public const string Shared = "shared";

    /// <summary>
    /// Drains <paramref name="queue"/>: alone (until this worker ran every task due at its start), for a fixed time
    /// (<paramref name="runFor"/>), or <paramref name="shared"/> with other processes (until the queue has no due or
    /// running task left).
    /// </summary>
    public static async Task<int> MainAsync(string queue, TimeSpan? runFor = null, bool shared = false)
    {
        var connectionString = BenchProcess.ChildConnectionString();
        await using var dataSource = NpgsqlDataSource.Create(connectionString);
        var retention = Environment.GetEnvironmentVariable(RetentionVariable) is { } seconds
            ? TimeSpan.FromSeconds(double.Parse(seconds, System.Globalization.CultureInfo.InvariantCulture))
            : new PostgresBrokerOptions().CompletedRetention;
        await using var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = queue, CompletedRetention = retention });
        await using var results = new PostgresResultBackend(dataSource);
        var total = (await broker.GetQueueCountsAsync())[TaskState.Available]; // due now; scheduled rows are not drained
        var completed = 0L;
        var registry = new TaskRegistry().Add("noop", () => { Interlocked.Increment(ref completed); });
        using var worker = new TaskiqWorker(broker, registry, results,
            new TaskiqWorkerOptions { MaxConcurrentTasks = 32, PrefetchCount = 512, ClaimBatchSize = 256, PollInterval = TimeSpan.FromMilliseconds(100) });
        var peakRss = 0L;
        using var sampler = new Timer(_ => peakRss = Math.Max(peakRss, Environment.WorkingSet), null, 0, 100);
        var watch = Stopwatch.StartNew();
        await worker.StartAsync(CancellationToken.None);
        if (runFor is { } duration)
        {
            await Task.Delay(duration); // steady mode: run alongside the producers for a fixed time
        }
        else
        {
            // Cheap checks only: a count(*) over the draining table every 50 ms would steal the server's CPU from the
            // worker being measured. First the handler count (in process), then the rows' absence (settled acks).
            while (!shared && Interlocked.Read(ref completed) < total)
            {
                await Task.Delay(20);
            }

            // Shared: first wait for the due rows to be gone (the claim index answers that); the check for running
            // rows, which reads the table's running rows, only runs at the end.
            if (shared)
            {
                await using var due = dataSource.CreateCommand("SELECT EXISTS (SELECT 1 FROM taskiq_messages WHERE queue = $1 AND status = 'pending')");
                due.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
                while ((bool)(await due.ExecuteScalarAsync())!)
                {
                    await Task.Delay(100);
                }
            }

            await using var left = dataSource.CreateCommand(
                "SELECT EXISTS (SELECT 1 FROM taskiq_messages WHERE queue = $1 AND status = 'pending') OR EXISTS (SELECT 1 FROM taskiq_messages WHERE queue = $1 AND status = 'processing')");
            left.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
            while ((bool)(await left.ExecuteScalarAsync())!)
            {
                await Task.Delay(20);
            }
        }

        var rate = (runFor is null && !shared ? total : Interlocked.Read(ref completed)) / watch.Elapsed.TotalSeconds;
        await worker.StopAsync(CancellationToken.None);
        Console.WriteLine(JsonSerializer.Serialize(new { rate, peakRssMb = Math.Max(peakRss, Environment.WorkingSet) / 1024.0 / 1024.0, cpuSeconds = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds }));
        return 0;
    }

    /// <summary>Runs this benchmark executable again in drain-worker mode and reads its result.</summary>
    public static async Task<(double Rate, double PeakRssMb)> RunAsync(string connectionString, string queue, TimeSpan? runFor = null,
        TimeSpan? completedRetention = null)
    {
        var (rate, peak, _) = await RunProcessAsync(connectionString, queue, runFor, completedRetention, shared: false);
        return (rate, peak);
    }

    /// <summary>Runs one drain-worker process; <paramref name="shared"/>: one of several on the queue, until it is empty.</summary>
    /// <returns>Its own drain rate, peak RSS and the CPU time it used.</returns>
    public static async Task<(double Rate, double PeakRssMb, double CpuSeconds)> RunProcessAsync(string connectionString, string queue,
        TimeSpan? runFor, TimeSpan? completedRetention, bool shared)
    {
        List<string> args = [Flag, queue];
        if (runFor is { } duration)
        {
            args.Add(((int)duration.TotalSeconds).ToString(System.Globalization.CultureInfo.InvariantCulture));
        }
        else if (shared)
        {
            args.Add(Shared);
        }

        var environment = new Dictionary<string, string> { [BenchProcess.ConnectionVariable] = connectionString };
        if (completedRetention is { } retention)
        {
            environment[RetentionVariable] = retention.TotalSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }

        var (file, selfArgs) = BenchProcess.Self([.. args]);
        var (exitCode, output, error) = (await BenchProcess.RunAsync(file, selfArgs, environment))!.Value;
        if (exitCode != 0)
        {
            throw new InvalidOperationException($"The drain worker failed: {error}");
        }

        using var json = JsonDocument.Parse(output.Trim().Split('\n')[^1]);
        return (json.RootElement.GetProperty("rate").GetDouble(), json.RootElement.GetProperty("peakRssMb").GetDouble(),
            json.RootElement.GetProperty("cpuSeconds").GetDouble());
    }
}
