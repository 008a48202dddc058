namespace TaskiqPg.Bench;

/// <summary>Command line of the benchmark.</summary>
internal sealed record BenchArguments(string? Connection, int Tasks, int Latency, string? Output, int HangfireJobs, int GraphileJobs, int Runs,
    int SteadySeconds, int SingleKickSeconds, int Scheduled, int ScaleTasks, int Backlog, int BacklogBaseline, int PgBossJobs, int WolverineMessages, int Schedules, int ScheduleSeconds,
    IReadOnlyDictionary<string, string> ServerSettings, IReadOnlyDictionary<string, string> ClientSettings)
{
    public static BenchArguments Parse(string[] args)
    {
        string? Value(string name) => args.SkipWhile(a => a != name).Skip(1).FirstOrDefault();
        int Number(string name, int full, int smoke) => Value(name) is { } v ? int.Parse(v, System.Globalization.CultureInfo.InvariantCulture)
            : args.Contains("--smoke") ? smoke : full;
        // --smoke: every workload at a tiny size (seconds, not minutes) so CI keeps the benchmark running; no thresholds.
        return new BenchArguments(Value("--connection") ?? Environment.GetEnvironmentVariable(BenchProcess.ConnectionVariable), Number("--tasks", 200_000, 2_000), Number("--latency", 1_000, 20), Value("--out"),
            Number("--hangfire", 5_000, 100), Number("--graphile", 100_000, 0), Number("--runs", 1, 1),
            Number("--steady", 30, 2), Number("--single", 5, 1), Number("--scheduled", 300_000, 2_000), Number("--scale", 100_000, 1_000),
            Number("--backlog", 0, 3_000), Number("--backlog-baseline", BacklogBench.Baseline, 1_000),
            Number("--pgboss", 100_000, 0), Number("--wolverine", 20_000, 0),
            Number("--schedules", 50, 0), Number("--schedule-seconds", 60, 10),
            // --pg name=value (repeatable): a setting of the benchmark's own server, e.g. shared_buffers=6GB.
            Pairs("--pg"),
            // --npgsql name=value (repeatable): a connection-string setting of every TaskiqPg process, e.g. "No Reset On Close=true".
            Pairs("--npgsql"));

        Dictionary<string, string> Pairs(string flag) => args.Select((a, i) => (a, i)).Where(p => p.a == flag && p.i + 1 < args.Length)
            .Select(p => args[p.i + 1].Split('=', 2))
            .ToDictionary(kv => kv[0], kv => kv.Length > 1 ? kv[1] : throw new ArgumentException($"{flag} {kv[0]}: expected name=value"));
    }
}

/// <summary>The rows of one run, printed as a table and saved as JSON.</summary>
internal sealed class BenchReport
{
    public List<BenchRow> Rows { get; } = [];

    public void Add(string measure, double value, string unit) => Rows.Add(new BenchRow(measure, Math.Round(value, 2), unit));

    public void AddPercentiles(string measure, List<double> samples)
    {
        samples.Sort();
        double At(double q) => samples[Math.Min(samples.Count - 1, (int)Math.Ceiling(q * samples.Count) - 1)];
        Add(measure + " p50", At(0.50), "ms");
        Add(measure + " p95", At(0.95), "ms");
        Add(measure + " p99", At(0.99), "ms");
        Add(measure + " max", samples[^1], "ms");
    }

    /// <summary>Per measure, the median over runs (measures missing from a run are left out of its median).</summary>
    public static BenchReport Median(IReadOnlyList<BenchReport> runs)
    {
        var median = new BenchReport();
        foreach (var measure in runs.SelectMany(r => r.Rows).Select(r => r.Measure).Distinct())
        {
            var values = runs.SelectMany(r => r.Rows).Where(r => r.Measure == measure).Select(r => r.Value).Order().ToArray();
            var unit = runs.SelectMany(r => r.Rows).First(r => r.Measure == measure).Unit;
            var middle = values.Length % 2 == 1 ? values[values.Length / 2] : (values[values.Length / 2 - 1] + values[values.Length / 2]) / 2;
            median.Add(measure, middle, unit);
        }

        return median;
    }

    public void Print()
    {
        var width = Rows.Max(r => r.Measure.Length);
        Console.WriteLine();
        foreach (var row in Rows)
        {
            Console.WriteLine($"{row.Measure.PadRight(width)}  {row.Value,12:N2} {row.Unit}");
        }
    }
}

internal sealed record BenchRow(string Measure, double Value, string Unit);

/// <summary>Where the benchmark's sources are (the peers' programs and scripts live beside it).</summary>
internal static class BenchFolders
{
    /// <summary>The repository's <c>bench</c> folder, found upwards from the running executable.</summary>
    public static string Find()
    {
        var folder = new DirectoryInfo(AppContext.BaseDirectory);
        while (folder is not null && !Directory.Exists(Path.Combine(folder.FullName, "bench", "node")))
        {
            folder = folder.Parent;
        }

        return Path.Combine(folder?.FullName ?? Directory.GetCurrentDirectory(), "bench");
    }
}

/// <summary>The databases the peers and the scheduler rows each get on the benchmark's server.</summary>
internal static class BenchDatabase
{
    /// <summary>Creates a database named <paramref name="prefix"/> plus a random suffix (at most 30 characters) and returns its name.</summary>
    public static async Task<string> CreateAsync(string adminConnectionString, string prefix)
    {
        var database = $"{prefix}_{Guid.NewGuid():N}"[..30];
        await using var admin = new Npgsql.NpgsqlConnection(adminConnectionString);
        await admin.OpenAsync();
        await using var create = new Npgsql.NpgsqlCommand($"CREATE DATABASE \"{database}\"", admin);
        await create.ExecuteNonQueryAsync();
        return database;
    }
}

/// <summary>The child processes of the benchmark: this executable again in a role, the peers' programs, builds.</summary>
internal static class BenchProcess
{
    /// <summary>
    /// The connection string a child role (drain worker, producer, scheduler node) gets, and the benchmark's own
    /// <c>--connection</c> default: by environment, never on a command line where <c>ps</c> would show the password.
    /// </summary>
    public const string ConnectionVariable = "TASKIQPG_BENCH_CONNECTION";

    /// <summary>The connection string of a child role, from <see cref="ConnectionVariable"/>.</summary>
    public static string ChildConnectionString()
        => Environment.GetEnvironmentVariable(ConnectionVariable) ?? throw new InvalidOperationException($"{ConnectionVariable} is not set.");

    /// <summary>This executable again (through <c>dotnet</c> when it runs as a dll) with <paramref name="args"/>.</summary>
    public static (string File, string[] Args) Self(params string[] args)
        => Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet"
            ? (Environment.ProcessPath!, [typeof(BenchProcess).Assembly.Location, .. args])
            : (Environment.ProcessPath!, args);

    /// <summary>Starts a process with its output and error redirected (and its input, when asked).</summary>
    public static System.Diagnostics.Process Start(string file, IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment = null,
        string? folder = null, bool input = false)
    {
        var info = new System.Diagnostics.ProcessStartInfo(file)
        {
            RedirectStandardInput = input, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            WorkingDirectory = folder ?? "",
        };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            info.Environment[name] = value;
        }

        return System.Diagnostics.Process.Start(info)!;
    }

    /// <summary>Runs a process to its end; null when the program is not there (e.g. no Node.js).</summary>
    public static async Task<(int ExitCode, string Output, string Error)?> RunAsync(string file, IEnumerable<string> args,
        IReadOnlyDictionary<string, string>? environment = null, string? folder = null)
    {
        try
        {
            using var process = Start(file, args, environment, folder);
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
