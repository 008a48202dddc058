using System.Text.Json;

namespace TaskiqPg.Tests;

/// <summary>
/// The benchmark in its smoke mode (tiny sizes, a few seconds), so it never rots. No thresholds: it asserts that every
/// workload ran and reported a real figure, never how fast.
/// </summary>
[Collection(RunsAlone.Name)]
public sealed class BenchmarkSmokeTests(PostgresServerFixture server)
{
    [Fact]
    public async Task Benchmark_smoke_mode_runs_every_workload_and_writes_its_report()
    {
        var run = await ToolRun.RunAsync("TaskiqPg.Bench.dll", ["--smoke"], TimeSpan.FromMinutes(3),
            new Dictionary<string, string> { ["TASKIQPG_BENCH_CONNECTION"] = server.AdminConnectionString }); // not on the command line
        var output = run.ReportPath;
        Assert.True(run.ExitCode == 0, $"benchmark exited with {run.ExitCode}: {run.Error}\n{run.Output}");

        try
        {
            using var report = JsonDocument.Parse(await File.ReadAllTextAsync(output));
            var rows = report.RootElement.EnumerateArray()
                .ToDictionary(r => r.GetProperty("Measure").GetString()!, r => r.GetProperty("Value").GetDouble());
            foreach (var measure in new[]
                     {
                         "bulk kick (KickManyAsync, 5k per call)", "burn-down (1 worker process, results stored)",
                         "worker process peak RSS during burn-down", "single kick (8 concurrent producers)",
                         "single kick (16 concurrent producers)", "single kick (8 concurrent producers, NotifyTaskIds: a NOTIFY per row)", "steady: completed (1 worker process)", "kick → task start p50",
                         "kick → WaitForResultAsync returns p99", "raw limit: claim+delete 100 rows per statement, 4 connections",
                         "burn-down ratio TaskiqPg / Hangfire.PostgreSql",
                         "burn-down, 4 worker processes (results stored)", "  database CPU per task, 4 worker processes",
                         "single kicks (KickAsync), 8 producer processes", "single kicks, 8 producers / raw INSERT limit, 8 producers",
                     })
            {
                Assert.True(rows.TryGetValue(measure, out var value), $"the report lacks '{measure}'");
                Assert.True(value > 0, $"'{measure}' is {value}");
            }

            // The backlog rows carry their sizes in their names (3,000 beside 1,000 in smoke mode): found by their ends.
            foreach (var ending in new[] { "-task backlog: burn-down (1 worker process, results stored)", "-task backlog: table / indexes after the kick", " backlog (target ≤ 1.25)" })
            {
                Assert.True(rows.Count(r => r.Key.EndsWith(ending, StringComparison.Ordinal) && r.Value > 0) >= 1, $"the report lacks a row ending '{ending}'");
            }

            Assert.DoesNotContain(new Npgsql.NpgsqlConnectionStringBuilder(server.AdminConnectionString).Password ?? "\0", run.Output + run.Error);
        }
        finally
        {
            File.Delete(output);
            File.Delete(Path.ChangeExtension(output, ".svg")); // the chart the benchmark writes beside its report
        }
    }
}
