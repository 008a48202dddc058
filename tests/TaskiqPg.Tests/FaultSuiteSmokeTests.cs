using System.Text.Json;

namespace TaskiqPg.Tests;

/// <summary>
/// The fault suite (tests/TaskiqPg.Faults) in its smoke mode: every scenario with small counts, real processes, its own
/// PostgreSQL server (restarted by the suite). Each scenario reconciles its tasks against the ledger; this asserts
/// that every one of them passed and reports its counts.
/// </summary>
[Collection(RunsAlone.Name)]
public sealed class FaultSuiteSmokeTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Every_fault_scenario_passes_in_smoke_mode()
    {
        var run = await ToolRun.RunAsync("TaskiqPg.Faults.dll", ["--smoke"], TimeSpan.FromMinutes(15));
        var summary = run.ReportPath;
        output.WriteLine(run.Output);
        try
        {
            Assert.True(File.Exists(summary), $"no summary written (exit code {run.ExitCode}): {run.Error}");
            using var json = JsonDocument.Parse(await File.ReadAllTextAsync(summary));
            var rows = json.RootElement.EnumerateArray().ToArray();
            Assert.Equal(["kill9", "restart", "listener", "producer", "poison", "pool", "starvation", "graceful", "scheduler", "soak", "poison_completion", "renewal_stall", "control", "pgbouncer", "failover"],
                rows.Select(r => r.GetProperty("Scenario").GetString()));
            foreach (var row in rows)
            {
                Assert.True(row.GetProperty("Passed").GetBoolean(), $"{row.GetProperty("Scenario")}: {row}");
                Assert.Equal(0, row.GetProperty("Lost").GetInt64());
                Assert.True(row.GetProperty("Tasks").GetInt64() > 0, $"{row.GetProperty("Scenario")} kicked nothing");
            }

            Assert.Equal(0, run.ExitCode);
        }
        finally
        {
            File.Delete(summary);
        }
    }
}
