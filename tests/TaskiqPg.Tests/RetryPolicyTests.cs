using System.Collections.Concurrent;

namespace TaskiqPg.Tests;

/// <summary>Permanent failures, snoozing, and retry policies given at registration.</summary>
public sealed class RetryPolicyTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);
    private static readonly TaskiqWorkerOptions Fast = new() { PollInterval = TimeSpan.FromMilliseconds(50) };

    [Fact]
    public async Task A_permanent_failure_discards_the_task_at_once_whatever_attempts_remain()
    {
        var runs = 0;
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("charge", int () =>
        {
            Interlocked.Increment(ref runs);
            throw new PermanentTaskFailureException("card declined");
        }));
        await harness.StartWorkerAsync(Fast);
        var handle = await harness.Client.KickAsync<int>("charge", options: new KickOptions { MaxAttempts = 5 });

        var error = await Assert.ThrowsAsync<TaskExecutionException>(() => handle.WaitForResultAsync(Bound));
        Assert.Equal((nameof(PermanentTaskFailureException), "card declined"), (error.RemoteType, error.RemoteMessage));
        var record = (await harness.Broker.GetTaskAsync(handle.TaskId))!;
        Assert.Equal((TaskState.Discarded, 1), (record.State, record.Attempts));
        Assert.Equal(1, runs);
    }

    [Fact]
    public async Task A_snoozing_task_goes_back_scheduled_without_using_an_attempt_and_runs_again_when_due()
    {
        var attempts = new ConcurrentQueue<int>();
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("poll", (TaskContext context) =>
        {
            attempts.Enqueue(context.Attempt);
            if (attempts.Count < 3)
            {
                context.Snooze(TimeSpan.FromMilliseconds(attempts.Count == 1 ? 1500 : 100));
            }

            return "ready";
        }));
        await harness.StartWorkerAsync(Fast);
        var handle = await harness.Client.KickAsync<string>("poll", options: new KickOptions { MaxAttempts = 1 });

        await Eventually.TrueAsync(async () => (await harness.Broker.GetTaskAsync(handle.TaskId))!.State == TaskState.Scheduled, Bound, "the snoozed task waits");
        var snoozed = (await harness.Broker.GetTaskAsync(handle.TaskId))!;
        Assert.Equal(0, snoozed.Attempts);
        Assert.True(snoozed.RunAt > snoozed.CreatedAt.AddSeconds(1), $"due {snoozed.RunAt:O}");
        Assert.Equal("ready", await handle.WaitForResultAsync(Bound));
        Assert.Equal([1, 1, 1], attempts.ToArray()); // three runs, one attempt: MaxAttempts = 1 was never exceeded
        Assert.Equal((TaskState.Completed, 1), ((await harness.Broker.GetTaskAsync(handle.TaskId))!.State, (await harness.Broker.GetTaskAsync(handle.TaskId))!.Attempts));
    }

    [Fact]
    public async Task A_retry_policy_given_at_registration_wins_over_the_kicks_attempts_and_the_brokers_delays()
    {
        var runs = 0;
        await using var harness = await QueueHarness.CreateAsync(db, r => r
                .Add("stubborn", int () => Interlocked.Increment(ref runs) < 5 ? throw new InvalidOperationException("again") : 5,
                    retry: new TaskRetryPolicy { MaxAttempts = 5, BaseDelay = TimeSpan.FromMilliseconds(20), MaxDelay = TimeSpan.FromMilliseconds(40) })
                .Add("once", int () => throw new InvalidOperationException("no retry"), retry: new TaskRetryPolicy { MaxAttempts = 1 }),
            broker: new PostgresBrokerOptions { RetryBaseDelay = TimeSpan.FromHours(1) }); // the policy's delays win, or this would wait an hour
        await harness.StartWorkerAsync(Fast);

        var stubborn = await harness.Client.KickAsync<int>("stubborn", options: new KickOptions { MaxAttempts = 2 });
        Assert.Equal(5, await stubborn.WaitForResultAsync(Bound));
        var record = (await harness.Broker.GetTaskAsync(stubborn.TaskId))!;
        Assert.Equal((TaskState.Completed, 5, 5), (record.State, record.Attempts, record.MaxAttempts));

        var once = await harness.Client.KickAsync<int>("once", options: new KickOptions { MaxAttempts = 4 });
        await Assert.ThrowsAsync<TaskExecutionException>(() => once.WaitForResultAsync(Bound)); // final at once: its result is stored
        Assert.Equal((TaskState.Discarded, 1), ((await harness.Broker.GetTaskAsync(once.TaskId))!.State, (await harness.Broker.GetTaskAsync(once.TaskId))!.Attempts));
    }

    [Fact]
    public async Task Bad_policies_and_snoozes_are_refused_and_WhenReceived_cannot_snooze()
    {
        Assert.Throws<ArgumentException>(() => new TaskRegistry().Add("x", () => 1, retry: new TaskRetryPolicy { MaxAttempts = 0 }));
        Assert.Throws<ArgumentException>(() => new TaskRegistry().Add("x", () => 1, retry: new TaskRetryPolicy { BaseDelay = TimeSpan.Zero }));

        await using var harness = await QueueHarness.CreateAsync(db, r => r
            .Add("negative", int (TaskContext context) => { context.Snooze(TimeSpan.FromSeconds(-1)); return 1; })
            .Add("snooze", int (TaskContext context) => { context.Snooze(TimeSpan.FromSeconds(1)); return 1; }));
        await harness.StartWorkerAsync(Fast with { AckMode = AckMode.WhenReceived });
        var negative = await harness.Client.KickAsync<int>("negative", options: new KickOptions { MaxAttempts = 1 });
        Assert.Equal(nameof(ArgumentOutOfRangeException), (await Assert.ThrowsAsync<TaskExecutionException>(() => negative.WaitForResultAsync(Bound))).RemoteType);
        var snooze = await harness.Client.KickAsync<int>("snooze");
        var error = await Assert.ThrowsAsync<TaskExecutionException>(() => snooze.WaitForResultAsync(Bound));
        Assert.Contains("WhenReceived", error.RemoteMessage);
    }
}
