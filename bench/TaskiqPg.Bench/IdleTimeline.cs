using System.Collections.Concurrent;
using System.Diagnostics;

namespace TaskiqPg.Bench;

/// <summary>
/// Where an idle kick's milliseconds go: every database command of the process (Npgsql's own activities: start and end),
/// the handler's start and the moment <c>WaitForRawResultAsync</c> returns, per kick relative to the kick's start; printed
/// as the median of each step over all kicks (steps in the order they happen, named by their SQL).
/// </summary>
internal sealed class IdleTimeline : IDisposable
{
    private readonly ActivityListener _listener;
    private readonly ConcurrentQueue<(DateTime Start, DateTime End, string What)> _commands = new();
    private readonly List<List<(string What, double StartMs, double EndMs)>> _kicks = [];

    public IdleTimeline()
    {
        _listener = new ActivityListener
        {
            ShouldListenTo = source => source.Name == "Npgsql",
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = a => _commands.Enqueue((a.StartTimeUtc, a.StartTimeUtc + a.Duration, Name(a))),
        };
        ActivitySource.AddActivityListener(_listener);
    }

    /// <summary>Files the commands that started between <paramref name="kickAt"/> and <paramref name="resultAt"/> under one kick.</summary>
    public void Kick(DateTime kickAt, DateTime startedAt, DateTime resultAt)
    {
        var steps = new List<(string, double, double)>();
        while (_commands.TryPeek(out var c) && c.Start <= resultAt)
        {
            _commands.TryDequeue(out c);
            if (c.Start >= kickAt)
            {
                steps.Add((c.What, (c.Start - kickAt).TotalMilliseconds, (c.End - kickAt).TotalMilliseconds));
            }
        }

        steps.Add(("handler starts", (startedAt - kickAt).TotalMilliseconds, (startedAt - kickAt).TotalMilliseconds));
        steps.Add(("WaitForRawResultAsync returns", (resultAt - kickAt).TotalMilliseconds, (resultAt - kickAt).TotalMilliseconds));
        // The n-th run of one statement within a kick is a step of its own ("… #2": e.g. the claim that comes back empty).
        _kicks.Add(steps.OrderBy(s => s.Item2).GroupBy(s => s.Item1)
            .SelectMany(g => g.Select((s, n) => (n == 0 ? s.Item1 : $"{s.Item1} #{n + 1}", s.Item2, s.Item3))).ToList());
    }

    /// <summary>Clears pg_stat_statements (loaded and created: see <see cref="BacklogBench.TryEnableStatementsAsync"/>) before the traced kicks.</summary>
    public static async Task<bool> ResetServerTimesAsync(Npgsql.NpgsqlDataSource dataSource)
    {
        await using var reset = dataSource.CreateCommand("SELECT pg_stat_statements_reset()");
        await reset.ExecuteNonQueryAsync();
        return true;
    }

    /// <summary>
    /// The server's side of the traced kicks: each statement's calls per kick and its mean planning and execution time
    /// (planning only when <c>pg_stat_statements.track_planning</c> is on), so the wall times above can be split into
    /// server work and the rest (round trips, waiting for a core, client CPU).
    /// </summary>
    public static async Task PrintServerTimesAsync(Npgsql.NpgsqlDataSource dataSource, int kicks)
    {
        await using var top = dataSource.CreateCommand(
            """
            SELECT calls, mean_plan_time, mean_exec_time, left(regexp_replace(query, '\s+', ' ', 'g'), 80)
            FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND query NOT LIKE '%pg_stat_statements%'
            ORDER BY total_exec_time + total_plan_time DESC LIMIT 12
            """);
        Console.WriteLine($"idle kicks, server side (pg_stat_statements over {kicks} kicks): calls per kick, mean plan / execution ms");
        await using var reader = await top.ExecuteReaderAsync();
        while (await reader.ReadAsync())
        {
            Console.WriteLine($"  {reader.GetInt64(0) / (double)kicks,6:0.00}  {reader.GetDouble(1),7:0.000}  {reader.GetDouble(2),7:0.000}  {reader.GetString(3)}");
        }
    }

    /// <summary>The steps seen in most kicks, each with its median start and end (ms after the kick started).</summary>
    public void Print()
    {
        var steps = _kicks.SelectMany(k => k.Select((s, i) => (s.What, Position: i, s.StartMs, s.EndMs)))
            .GroupBy(s => s.What)
            .Where(g => g.Count() >= _kicks.Count / 2)
            .Select(g => (What: g.Key, Count: g.Count(), Start: Median(g.Select(s => s.StartMs)), End: Median(g.Select(s => s.EndMs))))
            .OrderBy(s => s.Start);
        if (Environment.GetEnvironmentVariable("TASKIQPG_BENCH_TIMELINE_SAMPLES") is not null)
        {
            // Three from the middle, then the three slowest to start their handler (where the tail's time goes).
            var slowest = _kicks.OrderByDescending(k => k.First(s => s.What == "handler starts").StartMs).Take(3);
            foreach (var (kick, label) in _kicks.Skip(_kicks.Count / 2).Take(3).Select(k => (k, "one kick:"))
                         .Concat(slowest.Select(k => (k, "one of the 3 slowest to start:"))))
            {
                Console.WriteLine(label);
                foreach (var s in kick)
                {
                    Console.WriteLine($"  {s.StartMs,7:0.000} → {s.EndMs,7:0.000}  {s.What}");
                }
            }
        }

        Console.WriteLine($"idle kick timeline, medians over {_kicks.Count} kicks (ms after KickAsync was called):");
        foreach (var s in steps)
        {
            Console.WriteLine($"  {s.Start,7:0.000} → {s.End,7:0.000}  {s.What} ({s.Count}×)");
        }
    }

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted[sorted.Length / 2];
    }

    private static string Name(Activity activity)
    {
        var sql = (activity.GetTagItem("db.query.text") ?? activity.GetTagItem("db.statement")) as string ?? activity.DisplayName;
        var flat = string.Join(' ', sql.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries));
        return flat.Length > 70 ? flat[..70] + "…" : flat;
    }

    public void Dispose() => _listener.Dispose();
}
