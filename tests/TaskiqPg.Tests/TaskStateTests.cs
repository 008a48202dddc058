using System.Text.Json;
using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>Each named state and each transition between them, against real PostgreSQL.</summary>
public sealed class TaskStateTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task A_task_due_now_is_available_and_one_due_later_is_scheduled_and_neither_is_claimed_early()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        var now = await harness.Client.KickAsync("t");
        var delayed = await harness.Client.KickAsync("t", options: new KickOptions { Delay = TimeSpan.FromHours(1) });
        var at = await harness.Client.KickAsync("t", options: new KickOptions { RunAt = DateTimeOffset.UtcNow.AddDays(1) });
        var past = await harness.Client.KickAsync("t", options: new KickOptions { RunAt = DateTimeOffset.UtcNow.AddDays(-1) });
        await harness.Broker.KickManyAsync([TaskMessage.Create("t"), TaskMessage.Create("t")], new KickOptions { Delay = TimeSpan.FromHours(1) });
        await harness.Broker.KickManyAsync([TaskMessage.Create("t")], new KickOptions { RunAt = DateTimeOffset.UtcNow.AddMinutes(-5) });

        Assert.Equal(TaskState.Available, (await harness.Broker.GetTaskAsync(now.TaskId))!.State);
        Assert.Equal(TaskState.Scheduled, (await harness.Broker.GetTaskAsync(delayed.TaskId))!.State);
        Assert.Equal(TaskState.Scheduled, (await harness.Broker.GetTaskAsync(at.TaskId))!.State);
        Assert.Equal(TaskState.Available, (await harness.Broker.GetTaskAsync(past.TaskId))!.State);
        var counts = await harness.Broker.GetQueueCountsAsync();
        Assert.Equal((3L, 4L), (counts[TaskState.Available], counts[TaskState.Scheduled]));

        var claimed = await harness.Broker.ClaimAsync("w", 100);
        Assert.Equal(3, claimed.Count);
        Assert.DoesNotContain(claimed, c => c.TaskId == delayed.TaskId || c.TaskId == at.TaskId);
        var running = await harness.Broker.GetTaskAsync(now.TaskId);
        Assert.Equal((TaskState.Running, "w", 1), (running!.State, running.Worker, running.Attempts));
    }

    [Fact]
    public async Task A_scheduled_task_becomes_available_when_due_and_the_worker_wakes_for_it_without_waiting_for_its_poll()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("add", (int a, int b) => a + b));
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMinutes(5) });
        var handle = await harness.Client.KickAsync<int>("add", [1, 2], options: new KickOptions { Delay = TimeSpan.FromSeconds(1.5) });
        Assert.Equal(TaskState.Scheduled, (await harness.Broker.GetTaskAsync(handle.TaskId))!.State);

        // The kick's NOTIFY woke the worker before the task was due; it then sleeps until the due time it read from
        // the database, not for its five-minute poll.
        Assert.Equal(3, await handle.WaitForResultAsync(Bound));
        var record = await harness.Broker.GetTaskAsync(handle.TaskId);
        Assert.Equal(TaskState.Completed, record!.State);
        Assert.True(record.FinishedAt >= record.RunAt, $"finished {record.FinishedAt:O}, due {record.RunAt:O}");
    }

    [Fact]
    public async Task A_failed_attempt_is_retryable_until_its_backoff_ends_then_available_again_and_completes()
    {
        var calls = 0;
        await using var harness = await QueueHarness.CreateAsync(db,
            r => r.Add("flaky", string () => Interlocked.Increment(ref calls) == 1 ? throw new InvalidOperationException("first") : "ok"),
            broker: new PostgresBrokerOptions { RetryBaseDelay = TimeSpan.FromHours(1) });
        var handle = await harness.Client.KickAsync<string>("flaky");
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });

        await Eventually.TrueAsync(async () => (await harness.Broker.GetTaskAsync(handle.TaskId))!.State == TaskState.Retryable, Bound,
            "the failed attempt waits for its backoff");
        var retryable = (await harness.Broker.GetTaskAsync(handle.TaskId))!;
        Assert.Equal(1, retryable.Attempts);
        Assert.Contains("first", retryable.LastError);
        Assert.True(retryable.RunAt > DateTimeOffset.UtcNow.AddMinutes(20), $"due {retryable.RunAt:O}");
        Assert.Equal(1L, (await harness.Broker.GetQueueCountsAsync())[TaskState.Retryable]);
        await harness.StopWorkerAsync(worker);
        Assert.Empty(await harness.Broker.ClaimAsync("other", 10)); // not claimable while its backoff lasts

        // Its backoff ends: the next claim makes it available and takes it.
        await harness.ScalarAsync<int>("WITH u AS (UPDATE taskiq_messages SET run_at = now() WHERE task_id = $1 RETURNING 1) SELECT count(*)::int FROM u", handle.TaskId);
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });
        Assert.Equal("ok", await handle.WaitForResultAsync(Bound));
        var done = (await harness.Broker.GetTaskAsync(handle.TaskId))!;
        Assert.Equal((TaskState.Completed, 2), (done.State, done.Attempts));
    }

    [Fact]
    public async Task The_last_failed_attempt_discards_the_task_with_its_reason_and_end_time()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("bad", int () => throw new InvalidOperationException("always")));
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });
        var handle = await harness.Client.KickAsync("bad", options: new KickOptions { MaxAttempts = 1 });

        await Assert.ThrowsAsync<TaskExecutionException>(() => handle.WaitForResultAsync(Bound));
        var record = (await harness.Broker.GetTaskAsync(handle.TaskId))!;
        Assert.Equal((TaskState.Discarded, 1), (record.State, record.Attempts));
        Assert.Contains("always", record.LastError);
        Assert.NotNull(record.FinishedAt);
        Assert.True(record.IsFinished);
    }

    [Fact]
    public async Task With_no_completed_retention_the_row_is_deleted_at_the_ack()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("add", (int a, int b) => a + b),
            broker: new PostgresBrokerOptions { CompletedRetention = TimeSpan.Zero });
        await harness.StartWorkerAsync();
        var handle = await harness.Client.KickAsync<int>("add", [2, 2]);
        Assert.Equal(4, await handle.WaitForResultAsync(Bound));
        Assert.Null(await harness.Broker.GetTaskAsync(handle.TaskId));
    }

    [Fact]
    public async Task Finished_rows_are_pruned_after_the_retention_of_their_state_and_no_sooner()
    {
        await using var harness = await QueueHarness.CreateAsync(db, broker: new PostgresBrokerOptions
        {
            CompletedRetention = TimeSpan.FromHours(1),
            CancelledRetention = TimeSpan.FromHours(2),
            DiscardedRetention = Timeout.InfiniteTimeSpan,
        });
        var queue = harness.Broker.Options.Queue;
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 2_500).Select(i => TaskMessage.Create("t", [i])).ToArray());
        // 1,200 completed 90 minutes ago, 300 completed 30 minutes ago, 400 cancelled 90 minutes ago (inside their
        // 2 h), 500 discarded a year ago (kept for ever), 100 still available.
        await harness.ScalarAsync<int>(
            """
            WITH r AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM taskiq_messages WHERE queue = $1),
                 u AS (UPDATE taskiq_messages m SET
                         status = CASE WHEN r.n <= 1500 THEN 'completed' WHEN r.n <= 1900 THEN 'cancelled' ELSE 'discarded' END,
                         finished_at = now() - CASE WHEN r.n <= 1200 THEN interval '90 minutes' WHEN r.n <= 1500 THEN interval '30 minutes'
                                                    WHEN r.n <= 1900 THEN interval '90 minutes' ELSE interval '1 year' END
                       FROM r WHERE m.id = r.id AND r.n <= 2400 RETURNING 1)
            SELECT count(*)::int FROM u
            """, queue);

        Assert.Equal(1_000, await harness.Broker.PruneFinishedAsync(maxCount: 1_000)); // one batch per state, oldest first
        Assert.Equal(200, await harness.Broker.PruneFinishedAsync(maxCount: 1_000));
        Assert.Equal(0, await harness.Broker.PruneFinishedAsync(maxCount: 1_000));
        var counts = await harness.Broker.GetQueueCountsAsync();
        Assert.Equal((300L, 400L, 500L, 100L),
            (counts[TaskState.Completed], counts[TaskState.Cancelled], counts[TaskState.Discarded], counts[TaskState.Available]));
    }

    [Fact]
    public async Task A_worker_prunes_its_queue_in_the_background()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("t", () => 1),
            broker: new PostgresBrokerOptions { CompletedRetention = TimeSpan.FromMilliseconds(300) });
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50), PruneInterval = TimeSpan.FromMilliseconds(200) });
        var handle = await harness.Client.KickAsync<int>("t");
        Assert.Equal(1, await handle.WaitForResultAsync(Bound));
        await Eventually.TrueAsync(async () => await harness.Broker.GetTaskAsync(handle.TaskId) is null, Bound, "the completed row is pruned");
        Assert.Equal(1, (await harness.Results.GetResultAsync(handle.TaskId)).GetReturnValue<int>()); // the result has its own expiry
    }

    [Fact]
    public async Task The_claim_reads_only_due_rows_however_many_future_rows_of_higher_priority_wait()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        var queue = harness.Broker.Options.Queue;
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 20_000).Select(i => TaskMessage.Create("later", [i])).ToArray(),
            new KickOptions { Delay = TimeSpan.FromHours(1), Priority = 5 });
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 20_000).Select(i => TaskMessage.Create("later", [i])).ToArray(),
            new KickOptions { Delay = TimeSpan.FromHours(2), Priority = 9 });
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 10).Select(i => TaskMessage.Create("now", [i])).ToArray());
        await harness.ScalarAsync<object>("ANALYZE taskiq_messages");

        // The claim's row selection, as BrokerSql runs it: with the future rows in the claim index it would read and
        // filter out 40,000 of them before the ten due ones.
        var plan = await ExplainAnalyzeAsync(harness.DataSource,
            "SELECT id FROM taskiq_messages WHERE status = 'pending' AND queue = $1 AND run_at <= now() ORDER BY priority DESC, run_at, id LIMIT 100 FOR UPDATE SKIP LOCKED",
            queue);
        Assert.Equal(10, plan.ActualRows);
        // The index conditions on run_at are checked inside the index scan (no "rows removed" is reported): the pages
        // touched tell. 40,000 entries fill about 200 index pages; ten fill one.
        Assert.True(plan.Blocks < 40, $"the claim touched {plan.Blocks} pages");

        // Promotion reads only rows that are due: none here.
        var promote = await ExplainAnalyzeAsync(harness.DataSource, new BrokerSql(harness.Broker.Options).Promote, queue, 1000, "taskiq");
        Assert.Equal(0, promote.ActualRows);
        Assert.True(promote.Blocks < 40, $"promotion touched {promote.Blocks} pages: {promote.Plan}");

        var claimed = await harness.Broker.ClaimAsync("w", 100);
        Assert.Equal(10, claimed.Count);
        Assert.All(claimed, c => Assert.Equal("now", c.TaskName));
    }

    [Fact]
    public async Task Each_ended_attempt_is_kept_in_the_tasks_history_with_its_worker_times_outcome_and_error()
    {
        var calls = 0;
        await using var harness = await QueueHarness.CreateAsync(db,
            r => r.Add("flaky", int () => Interlocked.Increment(ref calls) <= 2 ? throw new InvalidOperationException($"fail {calls}") : 7),
            broker: new PostgresBrokerOptions { RetryBaseDelay = TimeSpan.FromMilliseconds(20), LeaseDuration = TimeSpan.FromSeconds(1) });
        var handle = await harness.Client.KickAsync<int>("flaky", options: new KickOptions { MaxAttempts = 5 });
        // A first claim by a worker that dies: its lease expires and the rescue records the attempt as lost.
        Assert.Single(await harness.Broker.ClaimAsync("dead-worker", 1));
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50), RescueInterval = TimeSpan.FromMilliseconds(100) });

        Assert.Equal(7, await handle.WaitForResultAsync(Bound));
        var history = (await harness.Broker.GetTaskAsync(handle.TaskId))!.History;
        Assert.Equal(["lost", "failed", "failed", "completed"], history.Select(h => h.Outcome));
        Assert.Equal(["dead-worker", worker.WorkerId, worker.WorkerId, worker.WorkerId], history.Select(h => h.Worker));
        Assert.Equal([1, 1, 2, 3], history.Select(h => h.Attempt)); // the lost claim never started: its attempt was given back
        Assert.Equal("lease expired", history[0].Error);
        Assert.Contains("fail 1", history[1].Error);
        Assert.Contains("fail 2", history[2].Error);
        Assert.Null(history[3].Error);
        Assert.All(history, h => Assert.True(h.StartedAt <= h.EndedAt));
    }

    [Fact]
    public async Task The_clients_task_record_holds_the_arguments_labels_state_history_result_and_progress()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("report", async (TaskContext context, int n) =>
        {
            await context.SetProgressAsync(new { done = n / 2 });
            await gate.Task;
            return n * 2;
        }));
        var handle = await harness.Client.KickAsync<int>("report", [21], options: new KickOptions { Labels = new Dictionary<string, string> { ["team"] = "billing" } });

        var queued = (await harness.Client.GetTaskAsync(handle.TaskId))!;
        Assert.Equal((TaskState.Available, (TaskResult?)null, (System.Text.Json.JsonElement?)null), (queued.State, queued.Result, queued.Progress));
        Assert.Equal(21, TaskMessage.FromJson(queued.MessageJson).Args[0].GetInt32());
        Assert.Equal("billing", queued.Labels["team"]);

        var worker = await harness.StartWorkerAsync();
        await Eventually.TrueAsync(async () => (await harness.Client.GetTaskAsync(handle.TaskId))!.Progress is not null, Bound, "progress is reported");
        var running = (await harness.Client.GetTaskAsync(handle.TaskId))!;
        Assert.Equal((TaskState.Running, worker.WorkerId, 10), (running.State, running.Worker, running.Progress!.Value.GetProperty("done").GetInt32()));
        Assert.Null(running.Result);

        gate.SetResult();
        Assert.Equal(42, await handle.WaitForResultAsync(Bound));
        var done = (await harness.Client.GetTaskAsync(handle.TaskId))!;
        Assert.Equal((TaskState.Completed, 42, false), (done.State, done.Result!.GetReturnValue<int>(), done.Result.IsError));
        Assert.Equal(["completed"], done.History.Select(h => h.Outcome));
        Assert.Null((await harness.Broker.GetTaskAsync(handle.TaskId))!.Result); // the broker alone has no result backend
        Assert.Null(await harness.Client.GetTaskAsync("no-such-task"));
    }

    [Fact]
    public async Task Every_state_has_one_stored_value_and_back()
    {
        Assert.Equal(7, TaskStates.All.Count);
        Assert.Equal(7, TaskStates.All.Select(TaskStates.ToStored).Distinct().Count());
        foreach (var state in TaskStates.All)
        {
            Assert.Equal(state, TaskStates.FromStored(TaskStates.ToStored(state)));
        }

        Assert.Throws<ArgumentException>(() => TaskStates.FromStored("dead"));
        // The check constraint accepts exactly these values.
        await using var harness = await QueueHarness.CreateAsync(db);
        var error = await Assert.ThrowsAsync<PostgresException>(() => harness.ScalarAsync<object>(
            "INSERT INTO taskiq_messages (task_id, task_name, message, queue, status) VALUES ('x', 'x', '{}', $1, 'dead')", harness.Broker.Options.Queue));
        Assert.Equal(PostgresErrorCodes.CheckViolation, error.SqlState);
    }

    /// <summary>Actual rows returned by a plan's top node and the buffers (pages) it touched.</summary>
    private static async Task<(long ActualRows, long Blocks, string Plan)> ExplainAnalyzeAsync(NpgsqlDataSource dataSource, string sql, params object[] parameters)
    {
        await using var connection = await dataSource.OpenConnectionAsync();
        await using var transaction = await connection.BeginTransactionAsync(); // FOR UPDATE locks: rolled back
        await using var command = new NpgsqlCommand("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, connection, transaction);
        foreach (var parameter in parameters)
        {
            command.Parameters.Add(new NpgsqlParameter { Value = parameter });
        }

        var json = (string)(await command.ExecuteScalarAsync())!;
        using var document = JsonDocument.Parse(json);
        var top = document.RootElement[0].GetProperty("Plan");
        return ((long)top.GetProperty("Actual Rows").GetDouble(),
            top.GetProperty("Shared Hit Blocks").GetInt64() + top.GetProperty("Shared Read Blocks").GetInt64(), json);
    }
}
