using System.Diagnostics;
using Npgsql;

namespace TaskiqPg.Bench;

/// <summary>
/// A large backlog beside a small one, in one run: bulk-kick N tasks (2 concurrent <c>KickManyAsync</c> callers, 5,000
/// per call), then drain them with one worker process (results stored, default retention: the completed rows stay in
/// the table, as they do in production). For each size: the drain rate on the database clock (first claim → last
/// ack), the claim statement's mean time as the server measured it (<c>pg_stat_statements</c>, when loaded), table and
/// index size, and the dead tuples and autovacuum runs sampled every 2 s while the queue drains. The large size is
/// compared with the small one (the issue's bar: within 1.25×).
/// </summary>
internal static class BacklogBench
{
    /// <summary>The size the large backlog is compared with.</summary>
    public const int Baseline = 200_000;

    public static async Task RunAsync(string connectionString, int baseline, int backlog, BenchReport report)
    {
        await using var dataSource = NpgsqlDataSource.Create(connectionString);
        var statements = await TryEnableStatementsAsync(dataSource);
        var measured = new List<(double Rate, double? ClaimMs)>();
        foreach (var (size, round) in new[] { (baseline, 1), (backlog, 2) })
        {
            var queue = $"backlog{round}_{size}";
            var label = $"{size:N0}-task backlog{(round == 2 && size == baseline ? " (again)" : "")}";
            await using (var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = queue }))
            {
                var next = -1;
                var batches = (size + 4_999) / 5_000;
                var watch = Stopwatch.StartNew();
                await Task.WhenAll(Enumerable.Range(0, 2).Select(async _ =>
                {
                    int b;
                    while ((b = Interlocked.Increment(ref next)) < batches)
                    {
                        // Built per call: 10 million messages at once would not fit the benchmark's memory.
                        await broker.KickManyAsync(Enumerable.Range(0, Math.Min(5_000, size - b * 5_000)).Select(_ => TaskMessage.Create("noop")).ToArray());
                    }
                }));
                report.Add($"{label}: bulk kick (2 concurrent KickManyAsync callers)", size / watch.Elapsed.TotalSeconds, "tasks/s");
            }

            await ExecuteAsync(dataSource, "ANALYZE taskiq_messages"); // what autovacuum does after a bulk insert, done now for both sizes alike
            var (table, indexes) = await SizesAsync(dataSource);
            report.Add($"{label}: table / indexes after the kick", table / 1048576.0, $"MB table, {indexes / 1048576.0:0} MB indexes");
            if (statements)
            {
                await ExecuteAsync(dataSource, "SELECT pg_stat_statements_reset()");
            }

            // Both sizes drain right after a checkpoint, so both pay the same full-page images: the first change to a page
            // after a checkpoint writes the whole page to the WAL, and without this the figure depends on when the
            // server's own checkpoint happened to fall (the same 200,000-task drain ran at 6,700 and 12,500 tasks/s).
            await ExecuteAsync(dataSource, "CHECKPOINT");
            var walBefore = await WalAsync(dataSource);
            var before = await VacuumStatsAsync(dataSource);
            var maxDead = before.Dead;
            using var stopSampling = new CancellationTokenSource();
            var sampler = Task.Run(async () =>
            {
                while (!stopSampling.IsCancellationRequested)
                {
                    maxDead = Math.Max(maxDead, (await VacuumStatsAsync(dataSource)).Dead);
                    await Task.Delay(2_000, stopSampling.Token).ContinueWith(_ => { }, TaskScheduler.Default);
                }
            });
            var (_, peakRss) = await DrainWorker.RunAsync(connectionString, queue);
            await stopSampling.CancelAsync();
            await sampler;
            var after = await VacuumStatsAsync(dataSource);
            var walAfter = await WalAsync(dataSource);

            double seconds;
            await using (var span = dataSource.CreateCommand("SELECT extract(epoch FROM max(finished_at) - min(attempted_at))::float8 FROM taskiq_messages WHERE queue = $1"))
            {
                span.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
                seconds = (double)(await span.ExecuteScalarAsync())!;
            }

            var claimMs = statements ? await ClaimMeanMsAsync(dataSource) : null;
            measured.Add((size / seconds, claimMs));
            report.Add($"{label}: burn-down (1 worker process, results stored)", size / seconds, "tasks/s");
            if (claimMs is { } ms)
            {
                report.Add($"{label}: claim statement, mean server time (up to 256 rows per claim)", ms, "ms");
            }

            report.Add($"{label}: WAL written while draining, per task", (double)(walAfter.Bytes - walBefore.Bytes) / size, $"bytes ({(walAfter.FullPageImages - walBefore.FullPageImages) / (double)size:0.00} full-page images per task)");
            report.Add($"{label}: worker peak RSS", peakRss, "MB");
            report.Add($"{label}: most dead tuples seen while draining (sampled every 2 s)", maxDead, "rows");
            report.Add($"{label}: autovacuum / autoanalyze runs while draining", after.Vacuums - before.Vacuums,
                $"vacuums, {after.Analyzes - before.Analyzes} analyzes; dead tuples at the end {after.Dead:N0}");
            (table, indexes) = await SizesAsync(dataSource);
            report.Add($"{label}: table / indexes after the drain", table / 1048576.0, $"MB table, {indexes / 1048576.0:0} MB indexes");
        }

        report.Add($"burn-down {baseline:N0} / {backlog:N0} backlog (target ≤ 1.25)", measured[0].Rate / measured[1].Rate, "ratio");
        if (measured[0].ClaimMs is { } small && measured[1].ClaimMs is { } large)
        {
            report.Add($"claim mean time {backlog:N0} / {baseline:N0} backlog (target ≤ 1.25)", large / small, "ratio");
        }
    }

    /// <summary>pg_stat_statements, when the server loads it (the benchmark's own server does); false otherwise.</summary>
    internal static async Task<bool> TryEnableStatementsAsync(NpgsqlDataSource dataSource)
    {
        await using var loaded = dataSource.CreateCommand("SELECT current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%'");
        if (!(bool)(await loaded.ExecuteScalarAsync())!)
        {
            Console.WriteLine("backlog: pg_stat_statements is not loaded on this server: no claim times");
            return false;
        }

        await ExecuteAsync(dataSource, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
        return true;
    }

    /// <summary>The worker's claim (the UPDATE … FOR UPDATE SKIP LOCKED that sets attempted_at), its mean execution time; the top statements are printed.</summary>
    private static async Task<double?> ClaimMeanMsAsync(NpgsqlDataSource dataSource)
    {
        await using var top = dataSource.CreateCommand(
            """
            SELECT calls, mean_exec_time, total_exec_time, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 90)
            FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
            ORDER BY total_exec_time DESC LIMIT 5
            """);
        await using (var reader = await top.ExecuteReaderAsync())
        {
            while (await reader.ReadAsync())
            {
                Console.WriteLine($"  {reader.GetInt64(0),9:N0} calls  mean {reader.GetDouble(1),8:0.000} ms  total {reader.GetDouble(2) / 1000,8:0.0} s  {reader.GetInt64(3),11:N0} rows  {reader.GetString(4)}");
            }
        }

        await using var claim = dataSource.CreateCommand(
            """
            SELECT sum(total_exec_time) / nullif(sum(calls), 0) FROM pg_stat_statements
            WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND query LIKE '%FOR UPDATE SKIP LOCKED%' AND query LIKE '%attempted_at = now()%'
            """);
        return await claim.ExecuteScalarAsync() is double ms ? ms : null;
    }

    /// <summary>The server's WAL totals (PostgreSQL 14+): bytes and full-page images.</summary>
    private static async Task<(decimal Bytes, long FullPageImages)> WalAsync(NpgsqlDataSource dataSource)
    {
        await using var command = dataSource.CreateCommand("SELECT wal_bytes, wal_fpi FROM pg_stat_wal");
        await using var reader = await command.ExecuteReaderAsync();
        await reader.ReadAsync();
        return (reader.GetDecimal(0), reader.GetInt64(1));
    }

    private static async Task<(long Table, long Indexes)> SizesAsync(NpgsqlDataSource dataSource)
    {
        await using var command = dataSource.CreateCommand("SELECT pg_table_size('taskiq_messages'), pg_indexes_size('taskiq_messages')");
        await using var reader = await command.ExecuteReaderAsync();
        await reader.ReadAsync();
        return (reader.GetInt64(0), reader.GetInt64(1));
    }

    private static async Task<(long Dead, long Vacuums, long Analyzes)> VacuumStatsAsync(NpgsqlDataSource dataSource)
    {
        await using var command = dataSource.CreateCommand(
            "SELECT n_dead_tup, autovacuum_count, autoanalyze_count FROM pg_stat_user_tables WHERE relname = 'taskiq_messages'");
        await using var reader = await command.ExecuteReaderAsync();
        await reader.ReadAsync();
        return (reader.GetInt64(0), reader.GetInt64(1), reader.GetInt64(2));
    }

    private static async Task ExecuteAsync(NpgsqlDataSource dataSource, string sql)
    {
        await using var command = dataSource.CreateCommand(sql);
        await command.ExecuteNonQueryAsync();
    }
}
