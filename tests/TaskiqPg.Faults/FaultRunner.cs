using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Npgsql;
using TaskiqPg.LocalServer;

namespace TaskiqPg.Faults;

/// <summary>One line of the summary table.</summary>
internal sealed record ScenarioResult(string Scenario, long Tasks, long Completed, long Lost, long Duplicates, long DeadLettered,
    double Seconds, bool Passed, string Notes);

/// <summary>
/// Runs the scenarios against a PostgreSQL server it owns (so it can restart it), with real worker, producer and
/// scheduler processes, and reconciles every kicked task against the ledger the handlers write.
/// </summary>
internal static class FaultRunner
{
    private static readonly string[] AllScenarios =
        ["kill9", "restart", "listener", "producer", "poison", "pool", "starvation", "graceful", "scheduler", "soak", "poison_completion", "renewal_stall", "control", "pgbouncer", "failover"];

    public static async Task<int> MainAsync(string[] args)
    {
        string? Value(string name) => args.SkipWhile(a => a != name).Skip(1).FirstOrDefault();
        var smoke = args.Contains("--smoke");
        var only = Value("--only")?.Split(',', StringSplitOptions.RemoveEmptyEntries) ?? AllScenarios;
        var unknown = only.Except(AllScenarios).ToArray();
        if (unknown.Length > 0)
        {
            await Console.Error.WriteLineAsync($"Unknown scenario(s): {string.Join(", ", unknown)}. Known: {string.Join(", ", AllScenarios)}.");
            return 2;
        }

        await using var rig = await Rig.StartAsync();
        var results = new List<ScenarioResult>();
        foreach (var name in AllScenarios.Where(only.Contains))
        {
            Console.WriteLine($"--- {name} ({(smoke ? "smoke" : "full")})");
            var scenarios = new Scenarios(rig, smoke);
            var watch = Stopwatch.StartNew();
            ScenarioResult result;
            try
            {
                result = await scenarios.RunAsync(name);
            }
            catch (Exception ex)
            {
                // Where it came from, for the notes: a runner error is the runner's own query failing, not a verdict.
                var origin = ex.StackTrace?.Split('\n').FirstOrDefault(l => l.Contains("Scenarios", StringComparison.Ordinal))?.Trim();
                result = new ScenarioResult(name, 0, 0, 0, 0, 0, watch.Elapsed.TotalSeconds, false,
                    "runner error: " + ex.Message.ReplaceLineEndings(" ") + (origin is null ? "" : " (" + origin + ")"));
            }
            finally
            {
                scenarios.Dispose();
            }

            results.Add(result with { Seconds = Math.Round(watch.Elapsed.TotalSeconds, 1) });
            Console.WriteLine($"    {(result.Passed ? "PASS" : "FAIL")} {result.Notes}");
        }

        Print(results);
        var output = Value("--out");
        if (output is not null)
        {
            await File.WriteAllTextAsync(output, JsonSerializer.Serialize(results, new JsonSerializerOptions { WriteIndented = true }));
        }

        return results.All(r => r.Passed) ? 0 : 1;
    }

    private static void Print(List<ScenarioResult> results)
    {
        Console.WriteLine();
        Console.WriteLine("| scenario | tasks | completed | lost | duplicates | dead-lettered | time | result | notes |");
        Console.WriteLine("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |");
        foreach (var r in results)
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {r.Scenario} | {r.Tasks:N0} | {r.Completed:N0} | {r.Lost:N0} | {r.Duplicates:N0} | {r.DeadLettered:N0} | {r.Seconds:0.0} s | {(r.Passed ? "pass" : "FAIL")} | {r.Notes} |"));
        }
    }
}

/// <summary>The server (restartable), the runner's own pool, and the ledger.</summary>
internal sealed class Rig : IAsyncDisposable
{
    private readonly string _root;
    private readonly LocalPostgresServerOptions _serverOptions;

    private Rig(string root, LocalPostgresServerOptions serverOptions, LocalPostgresServer server)
    {
        _root = root;
        _serverOptions = serverOptions;
        Server = server;
        ConnectionString = new NpgsqlConnectionStringBuilder(server.GetConnectionString("faults")) { MaxPoolSize = 20, CommandTimeout = 120 }.ConnectionString;
        DataSource = NpgsqlDataSource.Create(ConnectionString);
    }

    public LocalPostgresServer Server { get; private set; }

    public string ConnectionString { get; }

    public NpgsqlDataSource DataSource { get; private set; }

    /// <summary>The runner's own queries go to <paramref name="connectionString"/> from now on (e.g. a multi-host string after a failover).</summary>
    public async Task FollowAsync(string connectionString)
    {
        var previous = DataSource;
        DataSource = NpgsqlDataSource.Create(connectionString);
        await previous.DisposeAsync();
    }

    public static async Task<Rig> StartAsync()
    {
        var root = Path.Combine(Path.GetTempPath(), "taskiqpg-faults-" + Guid.NewGuid().ToString("N")[..8]);
        var options = new LocalPostgresServerOptions
        {
            DataDirectory = Path.Combine(root, "data"),
            Password = Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(12)),
            Settings = new Dictionary<string, string> { ["max_connections"] = "300" },
        };
        var server = await LocalPostgresServer.StartAsync(options);
        options = options with { Port = server.Port }; // restarts come back on the same port: clients' strings stay valid
        await using (var admin = new NpgsqlConnection(server.GetConnectionString()))
        {
            await admin.OpenAsync();
            await new NpgsqlCommand("CREATE DATABASE faults", admin).ExecuteNonQueryAsync();
        }

        var rig = new Rig(root, options, server);
        await using var broker = new PostgresBroker(rig.DataSource);
        await using var results = new PostgresResultBackend(rig.DataSource);
        await using var schedules = new PostgresScheduleSource(rig.DataSource);
        await broker.MigrateAsync();
        await results.MigrateAsync();
        await schedules.MigrateAsync();
        await rig.ExecuteAsync(
            """
            CREATE TABLE fault_kicked (scenario text NOT NULL, task_id text PRIMARY KEY, due_at timestamptz);
            CREATE TABLE fault_ledger (task_id text NOT NULL, attempt int NOT NULL, worker text NOT NULL, fire_at text,
                                       at timestamptz NOT NULL DEFAULT clock_timestamp());
            CREATE INDEX ON fault_ledger (task_id);
            CREATE TABLE fault_unique (producer text NOT NULL, fresh int NOT NULL, duplicates int NOT NULL);
            """);
        return rig;
    }

    /// <summary>Stops PostgreSQL with <c>pg_ctl stop -m <paramref name="mode"/></c> and starts it again on the same folder and port.</summary>
    public async Task RestartServerAsync(string mode, TimeSpan downFor)
    {
        await Server.Cluster.StopAsync(mode);
        await Task.Delay(downFor);
        // Not disposing the old instance: its process is gone, and its DisposeAsync would pg_ctl-stop the folder, which is
        // now the new server's.
        Server = await LocalPostgresServer.StartAsync(_serverOptions);
        // The runner's idle pooled connections died with the old server: drop them, or the next plain query (the
        // reconciliation's) meets "Exception while reading from stream" on one of them.
        DataSource.Clear();
    }

    public async Task ExecuteAsync(string sql, params object[] parameters)
    {
        await using var command = DataSource.CreateCommand(sql);
        foreach (var p in parameters)
        {
            command.Parameters.Add(new NpgsqlParameter { Value = p });
        }

        await command.ExecuteNonQueryAsync();
    }

    /// <summary>A scalar query that rides out a server restart (retries connection failures for up to a minute).</summary>
    public async Task<T> ScalarAsync<T>(string sql, params object[] parameters)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                await using var command = DataSource.CreateCommand(sql);
                foreach (var p in parameters)
                {
                    command.Parameters.Add(new NpgsqlParameter { Value = p });
                }

                return (T)(await command.ExecuteScalarAsync())!;
            }
            catch (Exception ex) when (ex is NpgsqlException or TimeoutException && deadline.Elapsed < TimeSpan.FromMinutes(1))
            {
                await Task.Delay(200);
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await DataSource.DisposeAsync();
        await Server.DisposeAsync();
        try
        {
            Directory.Delete(_root, recursive: true);
        }
        catch (IOException)
        {
            // left in /tmp
        }
    }
}
