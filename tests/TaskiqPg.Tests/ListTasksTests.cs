using System.Text.Json;
using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>ListTasksAsync: keyset pages per state, in each state's index order, cheap at any depth.</summary>
public sealed class ListTasksTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    [Fact]
    public async Task Available_tasks_page_in_the_order_workers_claim_them_and_back_with_nothing_missed_or_repeated()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        for (var priority = 0; priority < 3; priority++)
        {
            await harness.Broker.KickManyAsync(Enumerable.Range(0, 700 + priority).Select(i => TaskMessage.Create("t", [i])).ToArray(),
                new KickOptions { Priority = priority });
        }

        var expected = (await AllAsync(harness, "ORDER BY priority DESC, run_at, id", "pending")).ToArray();
        var oldest = await PagesAsync(harness.Broker, new TaskQuery { State = TaskState.Available, Limit = 333 });
        Assert.Equal(expected, oldest.Select(r => r.Id));
        var newest = await PagesAsync(harness.Broker, new TaskQuery { State = TaskState.Available, Limit = 1000, Order = TaskOrder.Newest });
        Assert.Equal(expected.Reverse(), newest.Select(r => r.Id));
        Assert.All(oldest, r => Assert.Equal(TaskState.Available, r.State));

        // The next claim takes exactly what the first page showed first.
        var claimed = await harness.Broker.ClaimAsync("w", 5);
        Assert.Equal(expected.Take(5), claimed.Select(c => c.Id));
    }

    [Fact]
    public async Task Finished_tasks_ending_at_the_same_instant_page_without_loss_and_a_time_range_bounds_them()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 600).Select(i => TaskMessage.Create("t", [i])).ToArray());
        // 400 completed in one batch (one now()), 200 an hour earlier.
        await harness.ScalarAsync<int>(
            """
            WITH r AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM taskiq_messages WHERE queue = $1),
                 u AS (UPDATE taskiq_messages m SET status = 'completed',
                           finished_at = CASE WHEN r.n <= 400 THEN timestamptz '2026-06-01 12:00:00+00' ELSE timestamptz '2026-06-01 11:00:00+00' END
                       FROM r WHERE m.id = r.id RETURNING 1)
            SELECT count(*)::int FROM u
            """, harness.Broker.Options.Queue);

        var newest = await PagesAsync(harness.Broker, new TaskQuery { State = TaskState.Completed, Order = TaskOrder.Newest, Limit = 50 });
        Assert.Equal(600, newest.Count);
        Assert.Equal(600, newest.Select(r => r.Id).Distinct().Count());
        Assert.Equal(newest.OrderByDescending(r => r.FinishedAt).ThenByDescending(r => r.Id).Select(r => r.Id), newest.Select(r => r.Id));

        var earlier = await PagesAsync(harness.Broker, new TaskQuery
        {
            State = TaskState.Completed, Limit = 1000,
            From = new DateTimeOffset(2026, 6, 1, 10, 30, 0, TimeSpan.Zero), To = new DateTimeOffset(2026, 6, 1, 14, 0, 0, TimeSpan.FromHours(2)), // 12:00 UTC, excluded
        });
        Assert.Equal(200, earlier.Count);
    }

    [Fact]
    public async Task A_rare_task_name_is_found_through_short_pages_that_never_read_more_than_the_scan_bound()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 12_000).Select(_ => TaskMessage.Create("common")).ToArray(), new KickOptions { Delay = TimeSpan.FromHours(1) });
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 3).Select(_ => TaskMessage.Create("rare")).ToArray(), new KickOptions { Delay = TimeSpan.FromHours(2) });

        var query = new TaskQuery { State = TaskState.Scheduled, TaskName = "rare", Limit = 10 };
        var first = await harness.Broker.ListTasksAsync(query);
        Assert.Empty(first.Tasks); // the first 10,000 entries hold no "rare"
        Assert.NotNull(first.NextCursor);
        var all = await PagesAsync(harness.Broker, query);
        Assert.Equal(3, all.Count);
        Assert.All(all, r => Assert.Equal("rare", r.TaskName));
    }

    [Fact]
    public async Task A_deep_page_reads_a_few_index_pages_whatever_the_depth()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 60_000).Select(_ => TaskMessage.Create("t")).ToArray(), new KickOptions { Priority = 1 });
        await harness.ScalarAsync<object>("ANALYZE taskiq_messages");
        var sql = new ListSql("taskiq_messages");
        var deep = (await AllAsync(harness, "ORDER BY priority DESC, run_at, id", "pending"))[50_000];
        var row = await harness.ScalarAsync<string>("SELECT run_at::text FROM taskiq_messages WHERE id = $1", deep);

        await using var connection = await harness.DataSource.OpenConnectionAsync();
        await using var command = new NpgsqlCommand("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql.Scan(TaskState.Available, TaskOrder.Oldest, withCursor: true), connection);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = harness.Broker.Options.Queue });
        command.Parameters.Add(new NpgsqlParameter { Value = DBNull.Value, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Text });
        command.Parameters.Add(new NpgsqlParameter { Value = DBNull.Value, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.TimestampTz });
        command.Parameters.Add(new NpgsqlParameter { Value = DBNull.Value, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.TimestampTz });
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = 51 });
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = 1 });
        command.Parameters.Add(new NpgsqlParameter<DateTimeOffset> { TypedValue = DateTimeOffset.Parse(row, System.Globalization.CultureInfo.InvariantCulture).ToUniversalTime() });
        command.Parameters.Add(new NpgsqlParameter<long> { TypedValue = deep });
        using var plan = JsonDocument.Parse((string)(await command.ExecuteScalarAsync())!);
        var top = plan.RootElement[0].GetProperty("Plan");
        Assert.Equal(51, top.GetProperty("Actual Rows").GetInt32());
        var pages = top.GetProperty("Shared Hit Blocks").GetInt64() + top.GetProperty("Shared Read Blocks").GetInt64();
        Assert.True(pages < 60, $"a page 50,000 rows deep touched {pages} pages"); // an OFFSET would read ~50,000 entries
    }

    [Fact]
    public async Task Bad_limits_and_cursors_are_refused()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        await Assert.ThrowsAsync<ArgumentException>(() => harness.Broker.ListTasksAsync(new TaskQuery { Limit = 0 }));
        await Assert.ThrowsAsync<ArgumentException>(() => harness.Broker.ListTasksAsync(new TaskQuery { Limit = TaskQuery.MaxLimit + 1 }));
        await Assert.ThrowsAsync<ArgumentException>(() => harness.Broker.ListTasksAsync(new TaskQuery { Cursor = "not a cursor" }));
        await Assert.ThrowsAsync<ArgumentException>(() => harness.Broker.ListTasksAsync(new TaskQuery { Queue = "x; DROP TABLE y" }));
        var empty = await harness.Broker.ListTasksAsync(new TaskQuery { State = TaskState.Running });
        Assert.Empty(empty.Tasks);
        Assert.Null(empty.NextCursor);
    }

    [Fact]
    public async Task Queue_statistics_give_counts_per_state_the_oldest_available_age_across_priorities_and_the_pause()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 30).Select(_ => TaskMessage.Create("t")).ToArray(), new KickOptions { Priority = 9 });
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 20).Select(_ => TaskMessage.Create("t")).ToArray(),
            new KickOptions { Priority = -3, RunAt = DateTimeOffset.UtcNow.AddMinutes(-10) }); // the oldest sits at the lowest priority
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 4).Select(_ => TaskMessage.Create("t")).ToArray(), new KickOptions { Delay = TimeSpan.FromHours(1) });
        await harness.Broker.PauseQueueAsync();

        var stats = await harness.Broker.GetQueueStatisticsAsync();
        Assert.Equal((50L, 4L, 0L), (stats.Counts[TaskState.Available], stats.Counts[TaskState.Scheduled], stats.Counts[TaskState.Running]));
        Assert.Empty(stats.Estimated);
        Assert.InRange(stats.OldestAvailableAge!.Value, TimeSpan.FromMinutes(9), TimeSpan.FromMinutes(11));
        Assert.NotNull(stats.PausedAt);
        Assert.Equal(harness.Broker.Options.Queue, stats.Queue);

        var empty = await harness.Broker.GetQueueStatisticsAsync("q_nothing_here");
        Assert.Null(empty.OldestAvailableAge);
        Assert.Null(empty.PausedAt);
        Assert.All(empty.Counts.Values, c => Assert.Equal(0, c));
    }

    [Fact]
    public async Task Queue_statistics_count_the_tasks_that_ended_in_the_last_minute_per_finished_state()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 40).Select(i => TaskMessage.Create("t", [i])).ToArray());
        // 10 completed now, 5 completed two minutes ago, 3 discarded now, 2 cancelled now; 20 still available.
        await harness.ScalarAsync<int>(
            """
            WITH r AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM taskiq_messages WHERE queue = $1),
                 u AS (UPDATE taskiq_messages m SET
                         status = CASE WHEN r.n <= 15 THEN 'completed' WHEN r.n <= 18 THEN 'discarded' ELSE 'cancelled' END,
                         finished_at = now() - CASE WHEN r.n BETWEEN 11 AND 15 THEN interval '2 minutes' ELSE interval '0' END
                       FROM r WHERE m.id = r.id AND r.n <= 20 RETURNING 1)
            SELECT count(*)::int FROM u
            """, harness.Broker.Options.Queue);

        var recent = (await harness.Broker.GetQueueStatisticsAsync()).FinishedLastMinute;
        Assert.Equal((10L, 3L, 2L), (recent[TaskState.Completed], recent[TaskState.Discarded], recent[TaskState.Cancelled]));
    }

    private static async Task<List<TaskRecord>> PagesAsync(PostgresBroker broker, TaskQuery query)
    {
        var all = new List<TaskRecord>();
        for (var page = 0; page < 1000; page++)
        {
            var result = await broker.ListTasksAsync(query);
            all.AddRange(result.Tasks);
            if (result.NextCursor is null)
            {
                return all;
            }

            query = query with { Cursor = result.NextCursor };
        }

        throw new InvalidOperationException("the pages never ended");
    }

    private static async Task<List<long>> AllAsync(QueueHarness harness, string orderBy, string status)
    {
        await using var command = harness.DataSource.CreateCommand($"SELECT id FROM taskiq_messages WHERE queue = $1 AND status = '{status}' {orderBy}");
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = harness.Broker.Options.Queue });
        var ids = new List<long>();
        await using var reader = await command.ExecuteReaderAsync();
        while (await reader.ReadAsync())
        {
            ids.Add(reader.GetInt64(0));
        }

        return ids;
    }
}
