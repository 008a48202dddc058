using System.Diagnostics;
using System.Text.Json;
using Npgsql;

namespace TaskiqPg.Bench;

/// <summary>
/// graphile-worker 0.17.3 on the same server, same run: bulk add_jobs then one runOnce() process with 24 concurrent
/// jobs, in its default configuration and in the batched one its authors publish (localQueue.size 500,
/// completeJobBatchDelay 0, maxPoolSize 25). No results are stored by graphile-worker.
/// </summary>
internal static class GraphileBench
{
    public static async Task<(double AddRate, double DrainRate, List<double> Latencies)?> RunAsync(string adminConnectionString, int jobs, string mode,
        int latencySamples)
    {
        var folder = Path.Combine(FindBenchFolder(), "graphile");
        if (!Directory.Exists(Path.Combine(folder, "node_modules", "graphile-worker")))
        {
            // The benchmark's own setup step.
            if (await RunAsync("npm", ["install", "--no-audit", "--no-fund", "--silent"], folder) is not { ExitCode: 0 })
            {
                Console.WriteLine("graphile-worker skipped: 'npm install' failed (is Node.js installed?)");
                return null;
            }
        }

        // A database of its own per mode.
        var database = $"graphile_{mode}_{Guid.NewGuid():N}"[..30];
        await using (var admin = new NpgsqlConnection(adminConnectionString))
        {
            await admin.OpenAsync();
            await new NpgsqlCommand($"CREATE DATABASE \"{database}\"", admin).ExecuteNonQueryAsync();
        }

        var csb = new NpgsqlConnectionStringBuilder(adminConnectionString);
        var url = $"postgres://{Uri.EscapeDataString(csb.Username!)}:{Uri.EscapeDataString(csb.Password ?? "")}@{csb.Host}:{csb.Port}/{database}";
        var result = await RunAsync("node", ["bench.mjs", jobs.ToString(System.Globalization.CultureInfo.InvariantCulture), mode,
            latencySamples.ToString(System.Globalization.CultureInfo.InvariantCulture)], folder, new Dictionary<string, string> { ["TASKIQPG_BENCH_GRAPHILE_URL"] = url });
        if (result is not { ExitCode: 0 })
        {
            Console.WriteLine($"graphile-worker ({mode}) failed: {result?.Error}");
            return null;
        }

        using var json = JsonDocument.Parse(result.Value.Output.Trim().Split('\n')[^1]);
        return (json.RootElement.GetProperty("addRate").GetDouble(), json.RootElement.GetProperty("drainRate").GetDouble(),
            json.RootElement.GetProperty("latencies").EnumerateArray().Select(e => e.GetDouble()).ToList());
    }

    private static string FindBenchFolder()
    {
        var folder = new DirectoryInfo(AppContext.BaseDirectory);
        while (folder is not null && !Directory.Exists(Path.Combine(folder.FullName, "bench", "graphile")))
        {
            folder = folder.Parent;
        }

        return Path.Combine(folder?.FullName ?? Directory.GetCurrentDirectory(), "bench");
    }

    private static async Task<(int ExitCode, string Output, string Error)?> RunAsync(string file, string[] args, string folder,
        Dictionary<string, string>? environment = null)
    {
        var info = new ProcessStartInfo(file) { WorkingDirectory = folder, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var (name, value) in environment ?? [])
        {
            info.Environment[name] = value;
        }

        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        try
        {
            using var process = Process.Start(info)!;
            var output = process.StandardOutput.ReadToEndAsync();
            var error = process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync();
            return (process.ExitCode, await output, await error);
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null;
        }
    }
}
