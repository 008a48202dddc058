namespace TaskiqPg.Tests;

public sealed class ShutdownAndAckModeTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(15);

    [Fact]
    public async Task Graceful_shutdown_releases_prefetched_tasks_at_once_and_lets_the_running_one_finish()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = 0;
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("blocker", async (int i) =>
        {
            Interlocked.Increment(ref started);
            await gate.Task;
            return i;
        }));
        var handles = new List<TaskHandle<int>>();
        for (var i = 0; i < 6; i++)
        {
            handles.Add(await harness.Client.KickAsync<int>("blocker", [i]));
        }

        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions { MaxConcurrentTasks = 1, PrefetchCount = 5, ShutdownTimeout = TimeSpan.FromSeconds(30) });
        await Eventually.TrueAsync(() => worker.ActiveTasks == 6 && Volatile.Read(ref started) == 1, Bound, "one task runs and five are prefetched");
        Assert.Equal(6, (await harness.Broker.GetQueueCountsAsync())[TaskState.Running]);

        var stopping = harness.StopWorkerAsync(worker);

        // The five unstarted tasks go back to pending while the running one is still blocked, attempts not used up.
        await Eventually.TrueAsync(async () => (await harness.Broker.GetQueueCountsAsync())[TaskState.Available] == 5, Bound, "prefetched tasks are released");
        Assert.False(stopping.IsCompleted);
        foreach (var handle in handles.Skip(1))
        {
            var state = await harness.Broker.GetTaskAsync(handle.TaskId);
            Assert.Equal((TaskState.Available, 0), (state!.State, state.Attempts));
        }

        gate.SetResult();
        await stopping.WaitAsync(Bound);
        Assert.Equal(1, started);
        Assert.Equal(0, await handles[0].WaitForResultAsync(Bound)); // the running task finished before the stop returned
        var counts = await harness.Broker.GetQueueCountsAsync();
        Assert.Equal((5L, 0L), (counts[TaskState.Available], counts[TaskState.Running]));

        // Another worker takes the released tasks.
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { MaxConcurrentTasks = 5 });
        for (var i = 1; i < 6; i++)
        {
            Assert.Equal(i, await handles[i].WaitForResultAsync(Bound));
        }

        Assert.Equal(6, started);
    }

    [Fact]
    public async Task Task_still_running_at_the_shutdown_timeout_is_cancelled_and_retried()
    {
        var runs = 0;
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("stubborn", async (CancellationToken ct) =>
        {
            if (Interlocked.Increment(ref runs) == 1)
            {
                await Task.Delay(TimeSpan.FromMinutes(5), ct);
            }

            return "second run";
        }), broker: new PostgresBrokerOptions { RetryBaseDelay = TimeSpan.FromMilliseconds(50) });
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions { ShutdownTimeout = TimeSpan.FromMilliseconds(300) });
        var handle = await harness.Client.KickAsync<string>("stubborn");
        await Eventually.TrueAsync(() => Volatile.Read(ref runs) == 1, Bound, "the task starts");

        await harness.StopWorkerAsync(worker).WaitAsync(Bound);

        var state = await harness.Broker.GetTaskAsync(handle.TaskId);
        Assert.Equal((TaskState.Retryable, 1), (state!.State, state.Attempts)); // a failed attempt: waits for its backoff
        Assert.Contains("shut down", state.LastError);
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(100) });
        Assert.Equal("second run", await handle.WaitForResultAsync(Bound));
    }

    [Theory]
    [InlineData(AckMode.WhenReceived, false)]
    [InlineData(AckMode.WhenExecuted, true)]
    [InlineData(AckMode.WhenSaved, true)]
    public async Task Ack_mode_decides_whether_the_row_exists_while_the_handler_runs(AckMode mode, bool rowExistsWhileRunning)
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var running = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("gated", async () => { running.TrySetResult(); await gate.Task; return 7; }));
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { AckMode = mode });

        var handle = await harness.Client.KickAsync<int>("gated");
        await running.Task.WaitAsync(Bound);

        // WhenReceived acks at the claim: the task is completed (kept for the retention) while its handler still runs.
        Assert.Equal(rowExistsWhileRunning ? TaskState.Running : TaskState.Completed, (await harness.Broker.GetTaskAsync(handle.TaskId))!.State);
        gate.SetResult();
        Assert.Equal(7, await handle.WaitForResultAsync(Bound));
        Assert.Equal(TaskState.Completed, (await harness.Broker.GetTaskAsync(handle.TaskId))!.State);
    }
}
