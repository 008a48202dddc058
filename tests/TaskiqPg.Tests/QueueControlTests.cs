namespace TaskiqPg.Tests;

/// <summary>Cancel, pause and resume, dead-letter retry and delete, against real PostgreSQL and real workers.</summary>
public sealed class QueueControlTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task Cancelling_a_queued_task_cancels_it_at_once_in_each_queued_state_and_its_waiter_gets_a_typed_exception()
    {
        await using var harness = await QueueHarness.CreateAsync(db, broker: new PostgresBrokerOptions { RetryBaseDelay = TimeSpan.FromHours(1) });
        var available = await harness.Client.KickAsync("t");
        var scheduled = await harness.Client.KickAsync("t", options: new KickOptions { Delay = TimeSpan.FromHours(1) });
        var retryable = await harness.Client.KickAsync("t");
        var claimed = await harness.Broker.ClaimAsync("w", 10);
        await harness.Broker.ReleaseAsync("w", claimed.Where(c => c.TaskId != retryable.TaskId).Select(c => c.Lease).ToArray());
        await harness.Broker.FailAsync("w", [new TaskFailure(claimed.Single(c => c.TaskId == retryable.TaskId).Lease, "boom", Retry: true)]);
        Assert.Equal(TaskState.Retryable, (await harness.Broker.GetTaskAsync(retryable.TaskId))!.State);

        foreach (var (handle, state) in new[] { (available, TaskState.Available), (scheduled, TaskState.Scheduled), (retryable, TaskState.Retryable) })
        {
            Assert.Equal(new CancelResult(CancelOutcome.Cancelled, state), await harness.Client.CancelAsync(handle.TaskId));
            var record = (await harness.Broker.GetTaskAsync(handle.TaskId))!;
            Assert.Equal(TaskState.Cancelled, record.State);
            Assert.NotNull(record.FinishedAt);
            var error = await Assert.ThrowsAsync<CancelledTaskException>(() => handle.WaitForResultAsync(Bound));
            Assert.Equal(handle.TaskId, error.TaskId);
        }

        Assert.Empty(await harness.Broker.ClaimAsync("w", 10)); // nothing cancelled is ever claimed
        Assert.Equal(3L, (await harness.Broker.GetQueueCountsAsync())[TaskState.Cancelled]);
    }

    [Fact]
    public async Task Cancelling_a_finished_or_unknown_task_changes_nothing_and_says_so()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("add", (int a, int b) => a + b));
        await harness.StartWorkerAsync();
        var done = await harness.Client.KickAsync<int>("add", [1, 1]);
        Assert.Equal(2, await done.WaitForResultAsync(Bound));

        Assert.Equal(new CancelResult(CancelOutcome.AlreadyFinished, TaskState.Completed), await harness.Client.CancelAsync(done.TaskId));
        Assert.Equal(TaskState.Completed, (await harness.Broker.GetTaskAsync(done.TaskId))!.State);
        Assert.Equal(2, await done.WaitForResultAsync(Bound)); // its result is untouched
        Assert.Equal(new CancelResult(CancelOutcome.NotFound, null), await harness.Client.CancelAsync("no-such-task"));
    }

    [Fact]
    public async Task Cancelling_a_running_task_fires_its_handlers_token_on_the_worker_that_runs_it_and_ends_it_cancelled()
    {
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var sawCancel = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("long", async (CancellationToken ct) =>
        {
            started.TrySetResult();
            await using var _ = ct.Register(() => sawCancel.TrySetResult());
            await Task.Delay(TimeSpan.FromMinutes(5), ct);
            return 1;
        }));
        // Two workers on separate data sources and LISTEN connections: the cancel reaches whichever one runs the task.
        await using var otherBroker = new PostgresBroker(db.CreateDataSource(), harness.Broker.Options);
        // Renewals every minute: only the NOTIFY can deliver the cancel within the bound.
        var options = new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50), LeaseRenewInterval = TimeSpan.FromMinutes(1) };
        await harness.StartWorkerAsync(options);
        await harness.StartWorkerAsync(options, otherBroker);
        var handle = await harness.Client.KickAsync<int>("long");
        await started.Task.WaitAsync(Bound);

        Assert.Equal(new CancelResult(CancelOutcome.Requested, TaskState.Running), await harness.Client.CancelAsync(handle.TaskId));
        await sawCancel.Task.WaitAsync(Bound);
        await Assert.ThrowsAsync<CancelledTaskException>(() => handle.WaitForResultAsync(Bound));
        // On a worker whose broker and result backend are separate data sources the result is stored first, then the
        // row's end state: wait for it.
        await Eventually.TrueAsync(async () => (await harness.Broker.GetTaskAsync(handle.TaskId))!.State == TaskState.Cancelled, Bound, "the row ends cancelled");
        var record = (await harness.Broker.GetTaskAsync(handle.TaskId))!;
        Assert.Equal((TaskState.Cancelled, 1), (record.State, record.Attempts));
        Assert.NotNull(record.FinishedAt);
    }

    [Fact]
    public async Task A_cancel_request_whose_notification_is_missed_is_caught_by_the_next_lease_renewal()
    {
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("long", async (CancellationToken ct) =>
        {
            started.TrySetResult();
            await Task.Delay(TimeSpan.FromMinutes(5), ct);
            return 1;
        }));
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50), LeaseRenewInterval = TimeSpan.FromMilliseconds(200) });
        var handle = await harness.Client.KickAsync<int>("long");
        await started.Task.WaitAsync(Bound);

        // The request as CancelAsync writes it, without its NOTIFY (as if the listener was down at that moment).
        await harness.ScalarAsync<int>(
            "WITH u AS (UPDATE taskiq_messages SET cancel_requested_at = now() WHERE task_id = $1 RETURNING 1) SELECT count(*)::int FROM u", handle.TaskId);
        await Assert.ThrowsAsync<CancelledTaskException>(() => handle.WaitForResultAsync(Bound));
        Assert.Equal(TaskState.Cancelled, (await harness.Broker.GetTaskAsync(handle.TaskId))!.State);
        Assert.True(worker.RenewalRounds > 0);
    }

    [Fact]
    public async Task A_running_task_cancelled_while_its_worker_is_dead_ends_cancelled_at_its_rescue_and_its_waiter_is_told()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("t", () => 1),
            broker: new PostgresBrokerOptions { LeaseDuration = TimeSpan.FromMilliseconds(500) });
        var handle = await harness.Client.KickAsync<int>("t");
        Assert.Single(await harness.Broker.ClaimAsync("dead-worker", 1)); // claimed by a worker that then died
        Assert.Equal(CancelOutcome.Requested, (await harness.Client.CancelAsync(handle.TaskId)).Outcome);

        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50), RescueInterval = TimeSpan.FromMilliseconds(100) });
        await Assert.ThrowsAsync<CancelledTaskException>(() => handle.WaitForResultAsync(Bound));
        var record = (await harness.Broker.GetTaskAsync(handle.TaskId))!;
        Assert.Equal(TaskState.Cancelled, record.State); // not run again
        Assert.Equal("lost", record.History.Single().Outcome);
    }

    [Fact]
    public async Task A_handler_that_finishes_despite_the_cancel_completes_and_a_prefetched_task_never_starts()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var runs = new System.Collections.Concurrent.ConcurrentBag<int>();
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("stubborn", async (int i) =>
        {
            runs.Add(i);
            await gate.Task; // ignores its token
            return i;
        }));
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions { MaxConcurrentTasks = 1, PrefetchCount = 1, PollInterval = TimeSpan.FromMilliseconds(50), LeaseRenewInterval = TimeSpan.FromMilliseconds(200) });
        var first = await harness.Client.KickAsync<int>("stubborn", [1]);
        await Eventually.TrueAsync(() => Task.FromResult(runs.Count == 1), Bound, "the first task runs");
        var second = await harness.Client.KickAsync<int>("stubborn", [2]);
        await Eventually.TrueAsync(() => Task.FromResult(worker.ActiveTasks == 2), Bound, "the second task is prefetched");

        Assert.Equal(CancelOutcome.Requested, (await harness.Client.CancelAsync(first.TaskId)).Outcome);
        Assert.Equal(CancelOutcome.Requested, (await harness.Client.CancelAsync(second.TaskId)).Outcome); // claimed: running
        await Eventually.TrueAsync(async () => await harness.ScalarAsync<long>(
            "SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND cancel_requested_at IS NOT NULL", harness.Broker.Options.Queue) == 2, Bound, "both requested");
        // A renewal round that began after both requests has told the worker (a prefetched task that starts before its
        // worker heard of the cancel runs, like one already running).
        var rounds = worker.RenewalRounds;
        await Eventually.TrueAsync(() => Task.FromResult(worker.RenewalRounds > rounds + 1), Bound, "the worker renews after the requests");
        gate.SetResult();

        Assert.Equal(1, await first.WaitForResultAsync(Bound)); // it finished: completed, its result stored
        await Assert.ThrowsAsync<CancelledTaskException>(() => second.WaitForResultAsync(Bound));
        Assert.Equal([1], runs.ToArray());
        Assert.Equal(TaskState.Completed, (await harness.Broker.GetTaskAsync(first.TaskId))!.State);
        Assert.Equal((TaskState.Cancelled, 1), ((await harness.Broker.GetTaskAsync(second.TaskId))!.State, runs.Count));
    }

    [Fact]
    public async Task Bulk_cancel_by_task_name_and_state_cancels_only_the_matching_tasks()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 6_000).Select(_ => TaskMessage.Create("report")).ToArray());
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 300).Select(_ => TaskMessage.Create("report")).ToArray(), new KickOptions { Delay = TimeSpan.FromHours(1) });
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 200).Select(_ => TaskMessage.Create("email")).ToArray());
        var waiter = await harness.Client.KickAsync("report");

        var scheduledOnly = await harness.Client.CancelManyAsync(new TaskFilter { TaskName = "report", States = [TaskState.Scheduled] });
        Assert.Equal(new BulkCancelResult(300, 0), scheduledOnly);
        var all = await harness.Client.CancelManyAsync(new TaskFilter { TaskName = "report" });
        Assert.Equal(new BulkCancelResult(6_001, 0), all); // more than one batch of 5,000

        var counts = await harness.Broker.GetQueueCountsAsync();
        Assert.Equal((6_301L, 200L), (counts[TaskState.Cancelled], counts[TaskState.Available]));
        await Assert.ThrowsAsync<CancelledTaskException>(() => waiter.WaitForResultAsync(Bound));
        await Assert.ThrowsAsync<ArgumentException>(() => harness.Client.CancelManyAsync(new TaskFilter { States = [TaskState.Completed] }));
        await Assert.ThrowsAsync<ArgumentException>(() => harness.Client.CancelManyAsync(new TaskFilter { Queue = "bad queue" }));
    }

    [Fact]
    public async Task A_paused_queue_is_claimed_from_by_no_worker_keeps_accepting_kicks_stays_paused_across_a_restart_and_resumes()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("add", (int a, int b) => a + b));
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });
        await harness.Broker.PauseQueueAsync();
        Assert.NotNull(await harness.Broker.GetQueuePausedAtAsync());

        var handles = new List<TaskHandle<int>>();
        for (var i = 0; i < 10; i++)
        {
            handles.Add(await harness.Client.KickAsync<int>("add", [i, i])); // accepted while paused
        }

        // Two full claim rounds of the worker after the kicks: it claimed nothing.
        await TwoClaimRoundsAsync(worker);
        Assert.Equal(0, worker.ActiveTasks);
        Assert.Empty(await harness.Broker.ClaimAsync("direct", 10));
        Assert.Equal(10L, (await harness.Broker.GetQueueCountsAsync())[TaskState.Available]);

        // A restart (a new broker and worker) keeps the queue paused: the state is in the database.
        await harness.StopWorkerAsync(worker);
        await using var restarted = new PostgresBroker(db.CreateDataSource(), harness.Broker.Options);
        Assert.NotNull(await restarted.GetQueuePausedAtAsync());
        var second = await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) }, restarted);
        await TwoClaimRoundsAsync(second);
        Assert.Equal(0, second.ActiveTasks);
        await harness.StopWorkerAsync(second);
        var sleeper = await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMinutes(5) }, restarted);
        var since = DateTime.UtcNow;
        await Eventually.TrueAsync(() => Task.FromResult(sleeper.LastLoopActivity > since), Bound, "the worker's first claim round");

        // Resume from another broker: its NOTIFY wakes the worker (which polls only every five minutes).
        await using var operatorBroker = new PostgresBroker(db.CreateDataSource(), harness.Broker.Options);
        await operatorBroker.ResumeQueueAsync();
        Assert.Null(await harness.Broker.GetQueuePausedAtAsync());
        for (var i = 0; i < 10; i++)
        {
            Assert.Equal(2 * i, await handles[i].WaitForResultAsync(Bound));
        }
    }

    [Fact]
    public async Task Pausing_one_queue_leaves_the_others_running()
    {
        await using var paused = await QueueHarness.CreateAsync(db, r => r.Add("one", () => 1));
        await using var running = await QueueHarness.CreateAsync(db, r => r.Add("one", () => 1));
        await paused.Broker.PauseQueueAsync();
        await running.Broker.PauseQueueAsync(paused.Broker.Options.Queue); // pausing twice keeps the first pause time
        await running.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });
        var handle = await running.Client.KickAsync<int>("one");
        Assert.Equal(1, await handle.WaitForResultAsync(Bound));
        Assert.Null(await running.Broker.GetQueuePausedAtAsync());
        Assert.NotNull(await running.Broker.GetQueuePausedAtAsync(paused.Broker.Options.Queue));
    }

    [Fact]
    public async Task A_discarded_task_retried_runs_again_with_its_attempts_reset_or_kept_and_dead_letters_can_be_deleted()
    {
        var failing = true;
        await using var harness = await QueueHarness.CreateAsync(db, r => r
            .Add("sometimes", (int i) => Volatile.Read(ref failing) ? throw new InvalidOperationException("not yet") : i));
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });
        var one = await harness.Client.KickAsync<int>("sometimes", [1], options: new KickOptions { MaxAttempts = 1 });
        var two = await harness.Client.KickAsync<int>("sometimes", [2], options: new KickOptions { MaxAttempts = 1 });
        var three = await harness.Client.KickAsync<int>("sometimes", [3], options: new KickOptions { MaxAttempts = 1 });
        foreach (var handle in new[] { one, two, three })
        {
            await Assert.ThrowsAsync<TaskExecutionException>(() => handle.WaitForResultAsync(Bound));
        }

        await harness.StopWorkerAsync(worker);
        Volatile.Write(ref failing, false);
        Assert.True(await harness.Broker.RetryDiscardedAsync(one.TaskId));
        Assert.False(await harness.Broker.RetryDiscardedAsync(one.TaskId)); // not discarded any more
        var back = (await harness.Broker.GetTaskAsync(one.TaskId))!;
        Assert.Equal((TaskState.Available, 0, 1), (back.State, back.Attempts, back.MaxAttempts)); // reset: a full set of attempts
        Assert.Contains("not yet", back.LastError); // the reason stays readable until it runs again

        Assert.Equal(2L, await harness.Broker.RetryDiscardedAsync(new TaskFilter { TaskName = "sometimes" }, resetAttempts: false));
        var kept = (await harness.Broker.GetTaskAsync(two.TaskId))!;
        Assert.Equal((TaskState.Available, 1, 2), (kept.State, kept.Attempts, kept.MaxAttempts)); // kept: one attempt more
        Assert.Equal(TaskState.Available, (await harness.Broker.GetTaskAsync(three.TaskId))!.State);

        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });
        await Eventually.TrueAsync(async () => (await harness.Broker.GetQueueCountsAsync())[TaskState.Completed] == 3, Bound, "the retried tasks run");
        Assert.Equal(2, (await harness.Broker.GetTaskAsync(two.TaskId))!.Attempts);

        await harness.Broker.KickManyAsync(Enumerable.Range(0, 7).Select(_ => TaskMessage.Create("unknown_task")).ToArray());
        await Eventually.TrueAsync(async () => (await harness.Broker.GetQueueCountsAsync())[TaskState.Discarded] == 7, Bound, "unknown tasks are discarded");
        Assert.Equal(0L, await harness.Broker.DeleteDiscardedAsync(new TaskFilter { TaskName = "sometimes" }));
        Assert.Equal(7L, await harness.Broker.DeleteDiscardedAsync());
        var counts = await harness.Broker.GetQueueCountsAsync();
        Assert.Equal((0L, 3L), (counts[TaskState.Discarded], counts[TaskState.Completed]));
    }

    /// <summary>Waits until the worker's claim loop has begun two iterations after now: one whole claim ran since.</summary>
    private static async Task TwoClaimRoundsAsync(TaskiqWorker worker)
    {
        for (var round = 0; round < 2; round++)
        {
            var since = DateTime.UtcNow;
            await Eventually.TrueAsync(() => Task.FromResult(worker.LastLoopActivity > since), Bound, "the worker's claim loop goes round");
        }
    }
}
