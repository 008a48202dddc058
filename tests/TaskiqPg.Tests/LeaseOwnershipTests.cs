using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>One run per lease, one result per run (issue 10): lost leases, zombies, pool exhaustion, multiplexing.</summary>
public sealed class LeaseOwnershipTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task A_prefetched_task_whose_lease_was_lost_does_not_start_and_its_new_claim_runs_once()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var runsOfY = 0;
        await using var harness = await QueueHarness.CreateAsync(db, r => r
            .Add("x", async () => { await gate.Task; return "x"; })
            .Add("y", () => { Interlocked.Increment(ref runsOfY); return "y"; }));
        var x = await harness.Client.KickAsync<string>("x", options: new KickOptions { Priority = 1 });
        var y = await harness.Client.KickAsync<string>("y");
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions
        {
            MaxConcurrentTasks = 1, PrefetchCount = 2, PollInterval = TimeSpan.FromMilliseconds(50), LeaseRenewInterval = TimeSpan.FromMilliseconds(200),
        });
        await Eventually.TrueAsync(() => worker.ActiveTasks == 2, Bound, "x runs and y is prefetched");

        // What a rescuer does once y's lease has lapsed (e.g. renewals stalled): y is due again, for another claim.
        await using (var rescue = harness.DataSource.CreateCommand(
            "UPDATE taskiq_messages SET status = 'pending', locked_by = NULL, locked_until = NULL WHERE task_id = $1"))
        {
            rescue.Parameters.Add(new NpgsqlParameter<string> { TypedValue = y.TaskId });
            Assert.Equal(1, await rescue.ExecuteNonQueryAsync());
        }

        // The same worker claims y again (attempt 2) into its free slot, and a renewal round sees attempt 1 is no longer its.
        await Eventually.TrueAsync(async () => (await harness.Broker.GetTaskAsync(y.TaskId))?.Attempts == 2, Bound, "y is claimed again");
        var rounds = worker.RenewalRounds;
        await Eventually.TrueAsync(() => worker.RenewalRounds >= rounds + 2, Bound, "two renewal rounds pass");

        gate.SetResult();
        Assert.Equal("x", await x.WaitForResultAsync(Bound));
        Assert.Equal("y", await y.WaitForResultAsync(Bound));
        await Eventually.TrueAsync(() => worker.ActiveTasks == 0 && worker.UnreportedCompletions == 0, Bound, "the worker is idle");
        Assert.Equal(1, runsOfY);
    }

    [Fact]
    public async Task Settles_and_renewals_over_the_same_rows_never_deadlock()
    {
        // A worker's settle and its renewal update the same rows; each locks them in the order of its arrays. Out of
        // order (completion order against the held claims' hash order) the two deadlock now and then, and PostgreSQL
        // takes deadlock_timeout (1 s) to see it: a settle and a renewal stalled for a second, then one retried. Here
        // renewals run every 5 ms over 100 held claims while tasks end in random order; the database's own deadlock
        // counter must not move. A database of its own, so the counter is this test's.
        var connectionString = await db.Server.CreateDatabaseAsync("dl");
        try
        {
            TaskiqWorker worker;
            int renewals;
            await using (var dataSource = NpgsqlDataSource.Create(connectionString))
            {
                await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("work", (int ms) => Task.Delay(ms)), dataSource: dataSource);
                worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions
                {
                    MaxConcurrentTasks = 100, LeaseRenewInterval = TimeSpan.FromMilliseconds(5),
                });
                await harness.Broker.KickManyAsync(Enumerable.Range(0, 5_000)
                    .Select(_ => TaskMessage.Create("work", [Random.Shared.Next(10, 150)])).ToArray());
                await Eventually.TrueAsync(async () => (await harness.Broker.GetQueueStatisticsAsync()).Counts.GetValueOrDefault(TaskState.Completed) == 5_000,
                    TimeSpan.FromSeconds(120), "every task completes");
                renewals = worker.RenewalRounds;
                await worker.StopAsync(CancellationToken.None);
            }

            // A backend's statistics reach pg_stat_database when it exits, at the latest: wait until this database has none.
            await using var admin = new NpgsqlConnection(db.Server.AdminConnectionString);
            await admin.OpenAsync();
            var name = new NpgsqlConnectionStringBuilder(connectionString).Database!;
            await Eventually.TrueAsync(async () =>
            {
                await using var busy = new NpgsqlCommand("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", admin);
                busy.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
                return (long)(await busy.ExecuteScalarAsync())! == 0;
            }, Bound, "every connection to the test's database has ended");
            await using var deadlocks = new NpgsqlCommand("SELECT deadlocks FROM pg_stat_database WHERE datname = $1", admin);
            deadlocks.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
            var count = (long)(await deadlocks.ExecuteScalarAsync())!;
            Assert.True(count == 0 && renewals >= 20, $"{count} deadlocks; {renewals} renewal rounds (20 or more: they overlapped the settles)");
        }
        finally
        {
            await db.Server.DropDatabaseAsync(connectionString);
        }
    }

    [Fact]
    public async Task A_row_locked_by_another_transaction_neither_stalls_the_renewals_nor_loses_its_task()
    {
        // Someone holds a running task's row locked (an operator's transaction, a slow cancel): the renewal must go on
        // renewing the worker's other tasks, must not take the locked one for lost, and renews it once it is free.
        // A renewal that waited for the lock stalled every lease of the worker for as long as the lock was held.
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var cancelled = 0;
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("hold", async (TaskContext ctx) =>
        {
            try
            {
                await gate.Task.WaitAsync(ctx.CancellationToken);
            }
            catch (OperationCanceledException)
            {
                Interlocked.Increment(ref cancelled);
                throw;
            }

            return ctx.TaskId;
        }));
        var locked = await harness.Client.KickAsync<string>("hold");
        var other = await harness.Client.KickAsync<string>("hold");
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions
        {
            MaxConcurrentTasks = 2, PrefetchCount = 0, PollInterval = TimeSpan.FromMilliseconds(50), LeaseRenewInterval = TimeSpan.FromMilliseconds(100),
        });
        await Eventually.TrueAsync(() => worker.ActiveTasks == 2, Bound, "both tasks run");

        async Task<DateTime> LockedUntilAsync(string taskId)
            => await harness.ScalarAsync<DateTime>("SELECT locked_until FROM taskiq_messages WHERE task_id = $1", taskId);

        await using (var connection = await harness.DataSource.OpenConnectionAsync())
        await using (var transaction = await connection.BeginTransactionAsync())
        {
            await using (var lockRow = new NpgsqlCommand("SELECT id FROM taskiq_messages WHERE task_id = $1 FOR UPDATE", connection, transaction))
            {
                lockRow.Parameters.Add(new NpgsqlParameter<string> { TypedValue = locked.TaskId });
                await lockRow.ExecuteScalarAsync();
            }

            var otherBefore = await LockedUntilAsync(other.TaskId);
            var rounds = worker.RenewalRounds;
            await Eventually.TrueAsync(() => worker.RenewalRounds >= rounds + 5, Bound, "renewal rounds go on while the row is locked");
            Assert.True(await LockedUntilAsync(other.TaskId) > otherBefore, "the other task's lease was renewed");
            await transaction.RollbackAsync();
        }

        var lockedAfter = await LockedUntilAsync(locked.TaskId);
        await Eventually.TrueAsync(async () => await LockedUntilAsync(locked.TaskId) > lockedAfter, Bound, "the freed row is renewed again");
        Assert.Equal(0, cancelled); // never taken for lost
        gate.SetResult();
        Assert.Equal(locked.TaskId, await locked.WaitForResultAsync(Bound));
        Assert.Equal(other.TaskId, await other.WaitForResultAsync(Bound));
    }

    [Fact]
    public async Task A_zombie_whose_lease_was_rescued_never_overwrites_the_result_of_the_rerun()
    {
        var zombieGate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var zombieStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var runs = 0;
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("once", async () =>
        {
            if (Interlocked.Increment(ref runs) == 1)
            {
                zombieStarted.TrySetResult();
                await zombieGate.Task; // ignores its cancellation, as a hung handler would
                return "zombie";
            }

            return "rerun";
        }), broker: new PostgresBrokerOptions { LeaseDuration = TimeSpan.FromSeconds(1) });
        // The zombie never renews in time (a stalled renewal thread) and never rescues.
        var zombie = await harness.StartWorkerAsync(new TaskiqWorkerOptions
        {
            LeaseRenewInterval = TimeSpan.FromMinutes(10), RescueInterval = TimeSpan.FromMinutes(10), PollInterval = TimeSpan.FromMilliseconds(50),
        });
        var handle = await harness.Client.KickAsync<string>("once");
        await zombieStarted.Task.WaitAsync(Bound);
        await Eventually.TrueAsync(async () => (await harness.Broker.RescueExpiredLeasesAsync()).Count == 1, Bound, "the lapsed lease is rescued");

        var healthy = await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });
        Assert.Equal("rerun", await handle.WaitForResultAsync(Bound));

        zombieGate.SetResult();
        await Eventually.TrueAsync(() => zombie.ActiveTasks == 0 && zombie.UnreportedCompletions == 0, Bound, "the zombie reported its outcome");
        Assert.Equal("rerun", (await harness.Results.GetResultAsync(handle.TaskId)).GetReturnValue<string>());
        Assert.Equal("rerun", await handle.WaitForResultAsync(Bound));
        Assert.Equal(0, healthy.ActiveTasks);
    }

    [Fact]
    public async Task A_dead_workers_prefetched_tasks_get_their_attempts_back_and_its_started_task_does_not()
    {
        var target = new NpgsqlConnectionStringBuilder(db.ConnectionString);
        await using var proxy = new TcpProxy(target.Host!, target.Port);
        await using var proxied = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(db.ConnectionString) { Port = proxy.Port, Timeout = 2 }.ConnectionString);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var harness = await QueueHarness.CreateAsync(db, r => r
            .Add("x", async () => { started.TrySetResult(); await gate.Task; return "x"; })
            .Add("y", () => "y"), broker: new PostgresBrokerOptions { LeaseDuration = TimeSpan.FromSeconds(1) });
        await using var doomedBroker = new PostgresBroker(proxied, harness.Broker.Options);
        var x = TaskMessage.Create("x");
        var ys = Enumerable.Range(0, 3).Select(_ => TaskMessage.Create("y")).ToArray();
        await harness.Broker.KickAsync(x, new KickOptions { Priority = 1 });
        await harness.Broker.KickManyAsync(ys);
        var doomed = await harness.StartWorkerAsync(new TaskiqWorkerOptions
        {
            MaxConcurrentTasks = 1, PrefetchCount = 3, LeaseRenewInterval = TimeSpan.FromMilliseconds(100), RescueInterval = TimeSpan.FromMinutes(10),
        }, doomedBroker);
        await started.Task.WaitAsync(Bound);
        await Eventually.TrueAsync(() => doomed.ActiveTasks == 4, Bound, "x runs and the three y are prefetched");
        var rounds = doomed.RenewalRounds;
        await Eventually.TrueAsync(() => doomed.RenewalRounds >= rounds + 2, Bound, "renewals have recorded that x started");

        proxy.Cut(); // the worker is gone for the database, as after a kill -9
        var rescued = 0;
        await Eventually.TrueAsync(async () => (rescued += (await harness.Broker.RescueExpiredLeasesAsync()).Count) == 4, Bound, "all four leases are rescued");

        var xState = await harness.Broker.GetTaskAsync(x.TaskId);
        Assert.Equal((TaskState.Available, 1), (xState!.State, xState.Attempts)); // it ran: its attempt counts
        foreach (var y in ys)
        {
            var state = await harness.Broker.GetTaskAsync(y.TaskId);
            Assert.Equal((TaskState.Available, 0), (state!.State, state.Attempts)); // never started: attempt given back
            Assert.Contains("attempt not counted", state.LastError);
        }

        gate.SetResult();
        proxy.Restore();
    }

    [Fact]
    public async Task A_task_whose_worker_dies_before_it_is_seen_to_start_still_ends()
    {
        // Poison that kills its worker at once never gets its start recorded: the attempt is given back a bounded
        // number of times, then attempts count and the task is dead-lettered.
        await using var harness = await QueueHarness.CreateAsync(db, broker: new PostgresBrokerOptions { LeaseDuration = TimeSpan.FromMilliseconds(200) });
        var message = TaskMessage.Create("kills_its_worker");
        await harness.Broker.KickAsync(message, new KickOptions { MaxAttempts = 2 });
        var rescues = 0;
        for (var claim = 1; claim <= 10; claim++)
        {
            if (await harness.Broker.GetTaskAsync(message.TaskId) is { State: TaskState.Discarded })
            {
                break;
            }

            Assert.Single(await harness.Broker.ClaimAsync("dies-" + claim, 1)); // claimed, then the worker "dies"
            await Eventually.TrueAsync(async () => (await harness.Broker.RescueExpiredLeasesAsync()).Count == 1, Bound, "the lease is rescued");
            rescues++;
        }

        var state = await harness.Broker.GetTaskAsync(message.TaskId);
        Assert.Equal(TaskState.Discarded, state!.State);
        Assert.Equal(PostgresBroker.MinUnstartedRefunds + 2, rescues); // 3 given back, then 2 counted attempts
    }

    [Fact]
    public async Task Leases_are_renewed_while_handlers_hold_every_pooled_connection_for_three_leases()
    {
        var lease = TimeSpan.FromSeconds(1);
        var pool = db.CreateDataSource(maxPoolSize: 4);
        var runs = new System.Collections.Concurrent.ConcurrentDictionary<int, int>();
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("hog", async (int i, CancellationToken ct) =>
        {
            runs.AddOrUpdate(i, 1, (_, n) => n + 1);
            await using var connection = await pool.OpenConnectionAsync(ct);
            await using var sleep = new NpgsqlCommand("SELECT pg_sleep(3.5)", connection); // 3.5 leases
            await sleep.ExecuteNonQueryAsync(ct);
            return i;
        }), broker: new PostgresBrokerOptions { LeaseDuration = lease }, dataSource: pool);
        // A second worker on a pool of its own rescues any lapsed lease and would run that task again.
        var otherBroker = new PostgresBroker(db.CreateDataSource(), harness.Broker.Options);
        await using var _ = otherBroker;
        var messages = Enumerable.Range(0, 4).Select(i => TaskMessage.Create("hog", [i])).ToArray();
        await harness.Broker.KickManyAsync(messages);
        var hogging = await harness.StartWorkerAsync(new TaskiqWorkerOptions { MaxConcurrentTasks = 4, PrefetchCount = 0 });
        await Eventually.TrueAsync(() => hogging.ActiveTasks == 4, Bound, "the first worker runs all four");
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { MaxConcurrentTasks = 4, PollInterval = TimeSpan.FromMilliseconds(50) }, otherBroker);

        for (var i = 0; i < 4; i++)
        {
            Assert.Equal(i, (await harness.Results.WaitForResultAsync(messages[i].TaskId, Bound)).GetReturnValue<int>());
        }

        Assert.Equal(4, runs.Count);
        Assert.All(runs, kv => Assert.Equal(1, kv.Value));
    }

    [Fact]
    public async Task A_multiplexing_data_source_still_renews_leases()
    {
        var builder = new NpgsqlConnectionStringBuilder(db.ConnectionString) { Multiplexing = true };
        await using var multiplexing = NpgsqlDataSource.Create(builder.ConnectionString);
        var runs = 0;
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("long", async (CancellationToken ct) =>
        {
            Interlocked.Increment(ref runs);
            await Task.Delay(TimeSpan.FromSeconds(2.5), ct); // > 3 renewal intervals and > 2 leases
            return "done";
        }), broker: new PostgresBrokerOptions { LeaseDuration = TimeSpan.FromSeconds(1) }, dataSource: multiplexing);
        var otherBroker = new PostgresBroker(db.CreateDataSource(), harness.Broker.Options);
        await using var _ = otherBroker;
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });
        var handle = await harness.Client.KickAsync<string>("long");
        await Eventually.TrueAsync(() => worker.ActiveTasks == 1, Bound, "the multiplexing worker runs the task");
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) }, otherBroker);

        Assert.Equal("done", await handle.WaitForResultAsync(Bound));
        // Settled: a lapsed lease would have been rescued and the task run again before its row went away.
        await Eventually.TrueAsync(async () => await harness.Broker.GetTaskAsync(handle.TaskId) is { State: TaskState.Completed }, Bound, "the task is settled");
        Assert.Equal(1, runs);
        Assert.True(worker.RenewalRounds > 0);
    }
}
