using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>Unique tasks (enforced by the database) and kicks to another queue of the table.</summary>
public sealed class UniqueTaskTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);
    private static readonly KickOptions ByArgs = new() { Unique = new UniqueOptions() };

    [Fact]
    public async Task A_second_kick_with_the_same_arguments_returns_the_first_task_and_other_arguments_make_a_new_one()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        var first = await harness.Client.KickAsync<int>("sum", [1, 2], options: ByArgs);
        var again = await harness.Client.KickAsync<int>("sum", [1, 2], options: ByArgs);
        var kwargsOrder1 = await harness.Client.KickAsync<int>("sum", kwargs: new Dictionary<string, object?> { ["a"] = 1, ["b"] = 2 }, options: ByArgs);
        var kwargsOrder2 = await harness.Client.KickAsync<int>("sum", kwargs: new Dictionary<string, object?> { ["b"] = 2, ["a"] = 1 }, options: ByArgs);
        var other = await harness.Client.KickAsync<int>("sum", [2, 1], options: ByArgs);
        var otherName = await harness.Client.KickAsync<int>("product", [1, 2], options: ByArgs);
        var notUnique = await harness.Client.KickAsync<int>("sum", [1, 2]);

        Assert.False(first.IsDuplicate);
        Assert.True(again.IsDuplicate);
        Assert.Equal(first.TaskId, again.TaskId);
        Assert.True(kwargsOrder2.IsDuplicate); // keyword order does not matter
        Assert.Equal(kwargsOrder1.TaskId, kwargsOrder2.TaskId);
        Assert.False(other.IsDuplicate);
        Assert.False(otherName.IsDuplicate);
        Assert.False(notUnique.IsDuplicate);
        Assert.Equal(5L, (await harness.Broker.GetQueueCountsAsync())[TaskState.Available]);
    }

    [Fact]
    public async Task An_explicit_key_deduplicates_whatever_the_arguments_and_a_finished_task_frees_it_unless_told_otherwise()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("sync", (int n) => n));
        var byKey = new KickOptions { Unique = new UniqueOptions { Key = "tenant-42" } };
        var first = await harness.Client.KickAsync<int>("sync", [1], options: byKey);
        Assert.True((await harness.Client.KickAsync<int>("sync", [2], options: byKey)).IsDuplicate);

        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });
        Assert.Equal(1, await first.WaitForResultAsync(Bound));
        var afterCompletion = await harness.Client.KickAsync<int>("sync", [3], options: byKey); // completed: the key is free
        Assert.False(afterCompletion.IsDuplicate);
        Assert.Equal(3, await afterCompletion.WaitForResultAsync(Bound));

        var oncePerRetention = new KickOptions { Unique = new UniqueOptions { Key = "once", AlsoFinished = [TaskState.Completed] } };
        var once = await harness.Client.KickAsync<int>("sync", [4], options: oncePerRetention);
        Assert.Equal(4, await once.WaitForResultAsync(Bound));
        var blocked = await harness.Client.KickAsync<int>("sync", [5], options: oncePerRetention);
        Assert.True(blocked.IsDuplicate); // a completed task still counts
        Assert.Equal(once.TaskId, blocked.TaskId);
    }

    [Fact]
    public async Task A_unique_period_admits_one_task_per_period()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        var hourly = new KickOptions { Unique = new UniqueOptions { Key = "hourly-report", Period = TimeSpan.FromHours(1) } };
        var first = await harness.Client.KickAsync("report", options: hourly);
        Assert.False(first.IsDuplicate);
        Assert.True((await harness.Client.KickAsync("report", options: hourly)).IsDuplicate);

        // One-second periods: kicks keep meeting their duplicate until the database clock enters the next second.
        var perSecond = new KickOptions { Unique = new UniqueOptions { Key = "tick", Period = TimeSpan.FromSeconds(1) } };
        var firstTick = await harness.Client.KickAsync("tick", options: perSecond);
        var ticks = new HashSet<string> { firstTick.TaskId };
        await Eventually.TrueAsync(async () =>
        {
            var kicked = await harness.Client.KickAsync("tick", options: perSecond);
            ticks.Add(kicked.TaskId);
            return !kicked.IsDuplicate;
        }, Bound, "a kick in the next period is a new task");
        Assert.Equal(2, ticks.Count);
    }

    [Fact]
    public async Task Concurrent_unique_kicks_from_many_connections_queue_exactly_one_task()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        var options = new KickOptions { Unique = new UniqueOptions { Key = "race" } };
        var brokers = Enumerable.Range(0, 8).Select(_ => new PostgresBroker(db.CreateDataSource(), harness.Broker.Options)).ToArray();
        try
        {
            using var start = new ManualResetEventSlim();
            var kicks = brokers.SelectMany(broker => Enumerable.Range(0, 5).Select(_ => Task.Run(async () =>
            {
                start.Wait();
                return await broker.KickAsync(TaskMessage.Create("race"), options);
            }))).ToArray();
            start.Set();
            var results = await Task.WhenAll(kicks);

            Assert.Single(results, r => !r.Duplicate);
            Assert.Single(results.Select(r => r.TaskId).Distinct());
            Assert.Equal(1L, await harness.ScalarAsync<long>("SELECT count(*) FROM taskiq_messages WHERE queue = $1", harness.Broker.Options.Queue));
        }
        finally
        {
            foreach (var broker in brokers)
            {
                await broker.DisposeAsync();
            }
        }
    }

    [Fact]
    public async Task KickMany_skips_duplicates_of_queued_tasks_and_within_the_list()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        await harness.Client.KickAsync("n", [1], options: ByArgs);
        var messages = new[] { 1, 2, 2, 3, 4, 4, 4 }.Select(i => TaskMessage.Create("n", [i])).ToArray();

        Assert.Equal(3, await harness.Broker.KickManyAsync(messages, ByArgs)); // 2, 3, 4
        Assert.Equal(0, await harness.Broker.KickManyAsync(messages, ByArgs));
        Assert.Equal(4L, (await harness.Broker.GetQueueCountsAsync())[TaskState.Available]);
        var delayed = new KickOptions { Unique = new UniqueOptions(), Delay = TimeSpan.FromHours(1) };
        Assert.Equal(1, await harness.Broker.KickManyAsync([TaskMessage.Create("n", [5]), TaskMessage.Create("n", [1])], delayed));
        Assert.Equal(1L, (await harness.Broker.GetQueueCountsAsync())[TaskState.Scheduled]);
    }

    [Fact]
    public async Task A_unique_kick_in_a_transaction_holds_its_key_only_once_committed()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        var options = new KickOptions { Unique = new UniqueOptions { Key = "tx" } };
        await using (var connection = await harness.DataSource.OpenConnectionAsync())
        {
            await using var rolledBack = await connection.BeginTransactionAsync();
            Assert.False((await harness.Client.KickAsync<int>("t", connection, rolledBack, options: options)).IsDuplicate);
            await rolledBack.RollbackAsync();
        }

        await using (var connection = await harness.DataSource.OpenConnectionAsync())
        {
            await using var committed = await connection.BeginTransactionAsync();
            var kicked = await harness.Client.KickAsync<int>("t", connection, committed, options: options);
            Assert.False(kicked.IsDuplicate); // the rolled-back kick held nothing
            Assert.True((await harness.Client.KickAsync<int>("t", connection, committed, options: options)).IsDuplicate);
            await committed.CommitAsync();
        }

        Assert.True((await harness.Client.KickAsync("t", options: options)).IsDuplicate);
        Assert.Equal(1L, await harness.ScalarAsync<long>("SELECT count(*) FROM taskiq_messages WHERE queue = $1", harness.Broker.Options.Queue));
    }

    [Fact]
    public async Task Retrying_a_dead_letter_whose_key_another_task_now_holds_skips_it_instead_of_failing()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        var options = new KickOptions { Unique = new UniqueOptions { Key = "k" }, MaxAttempts = 1 };
        var dead = await harness.Client.KickAsync("t", options: options);
        var claimed = await harness.Broker.ClaimAsync("w", 1);
        await harness.Broker.FailAsync("w", [new TaskFailure(claimed[0].Lease, "boom", Retry: false)]);
        var holder = await harness.Client.KickAsync("t", options: options);
        Assert.False(holder.IsDuplicate); // the dead letter does not hold the key

        Assert.False(await harness.Broker.RetryDiscardedAsync(dead.TaskId));
        Assert.Equal(0L, await harness.Broker.RetryDiscardedAsync(new TaskFilter()));
        Assert.Equal(TaskState.Discarded, (await harness.Broker.GetTaskAsync(dead.TaskId))!.State);
    }

    [Fact]
    public async Task Unique_options_that_make_no_sense_are_refused()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        await Assert.ThrowsAsync<ArgumentException>(() => harness.Client.KickAsync("t",
            options: new KickOptions { Unique = new UniqueOptions { AlsoFinished = [TaskState.Available] } }));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => harness.Client.KickAsync("t",
            options: new KickOptions { Unique = new UniqueOptions { Period = TimeSpan.Zero } }));
        await Assert.ThrowsAsync<ArgumentException>(() => harness.Client.KickAsync("t", options: new KickOptions { Queue = "no spaces" }));
    }

    [Fact]
    public async Task A_kick_to_another_queue_of_the_table_runs_on_that_queues_worker_woken_by_its_notification()
    {
        await using var producer = await QueueHarness.CreateAsync(db);
        await using var consumer = await QueueHarness.CreateAsync(db, r => r.Add("add", (int a, int b) => a + b));
        await consumer.StartWorkerAsync(); // polls once a minute: only the NOTIFY to its queue can wake it in time
        var handle = await producer.Client.KickAsync<int>("add", [20, 22], options: new KickOptions { Queue = consumer.Broker.Options.Queue });

        Assert.Equal(42, await handle.WaitForResultAsync(Bound));
        Assert.Equal(consumer.Broker.Options.Queue, (await producer.Broker.GetTaskAsync(handle.TaskId))!.Queue);
        Assert.Equal(0L, (await producer.Broker.GetQueueCountsAsync()).Values.Sum());

        var many = Enumerable.Range(0, 5).Select(i => TaskMessage.Create("add", [i, i])).ToArray();
        Assert.Equal(5, await producer.Broker.KickManyAsync(many, new KickOptions { Queue = consumer.Broker.Options.Queue }));
        Assert.Equal(8, (await consumer.Results.WaitForResultAsync(many[4].TaskId, Bound)).GetReturnValue<int>());
    }
}
