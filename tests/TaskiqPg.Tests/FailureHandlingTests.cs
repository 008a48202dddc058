using System.Collections.Concurrent;
using System.Diagnostics;

namespace TaskiqPg.Tests;

public sealed class FailureHandlingTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(15);

    [Fact]
    public async Task Failing_task_is_retried_with_growing_backoff_then_dead_lettered_with_its_error()
    {
        var attempts = new ConcurrentQueue<(int Attempt, TimeSpan At)>();
        var clock = Stopwatch.StartNew();
        await using var harness = await QueueHarness.CreateAsync(db,
            r => r.Add("flaky", (TaskContext ctx) =>
            {
                attempts.Enqueue((ctx.Attempt, clock.Elapsed));
                throw new InvalidOperationException($"boom on attempt {ctx.Attempt}");
            }),
            broker: new PostgresBrokerOptions { RetryBaseDelay = TimeSpan.FromMilliseconds(400) });
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });

        var handle = await harness.Client.KickAsync("flaky", options: new KickOptions { MaxAttempts = 3 });

        var error = await Assert.ThrowsAsync<TaskExecutionException>(() => handle.WaitForResultAsync(Bound));
        Assert.Equal(nameof(InvalidOperationException), error.RemoteType);
        Assert.Equal("boom on attempt 3", error.RemoteMessage);
        Assert.Contains(nameof(Failing_task_is_retried_with_growing_backoff_then_dead_lettered_with_its_error), error.RemoteStackTrace);

        var runs = attempts.ToArray();
        Assert.Equal([1, 2, 3], runs.Select(r => r.Attempt));
        // Backoff: base * 2^(attempt-1) with 50-100 % jitter, so at least 200 ms and then 400 ms.
        Assert.True(runs[1].At - runs[0].At >= TimeSpan.FromMilliseconds(200), $"first retry after {(runs[1].At - runs[0].At).TotalMilliseconds} ms");
        Assert.True(runs[2].At - runs[1].At >= TimeSpan.FromMilliseconds(400), $"second retry after {(runs[2].At - runs[1].At).TotalMilliseconds} ms");

        var state = await harness.Broker.GetTaskAsync(handle.TaskId);
        Assert.NotNull(state);
        Assert.Equal(TaskState.Discarded, state.State);
        Assert.Equal(3, state.Attempts);
        Assert.Contains("boom on attempt 3", state.LastError);
    }

    [Fact]
    public async Task Task_that_fails_once_then_succeeds_returns_its_result()
    {
        await using var harness = await QueueHarness.CreateAsync(db,
            r => r.Add("second_time_lucky", (TaskContext ctx) => ctx.Attempt == 1 ? throw new IOException("transient") : ctx.Attempt),
            broker: new PostgresBrokerOptions { RetryBaseDelay = TimeSpan.FromMilliseconds(50) });
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });

        var handle = await harness.Client.KickAsync<int>("second_time_lucky");

        Assert.Equal(2, await handle.WaitForResultAsync(Bound));
    }

    [Theory]
    [InlineData("{not json")]
    [InlineData("null")]
    [InlineData("[]")]
    [InlineData("{\"task_id\": \"a\", \"task_name\": null}")]
    [InlineData("{\"task_id\": \"a\", \"task_name\": \"ok\", \"args\": {\"not\": \"a list\"}}")]
    public async Task Malformed_message_is_dead_lettered_at_once_with_the_reason_and_the_worker_keeps_serving(string body)
    {
        var poisonId = TaskIds.New();
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("ok", () => "fine"));
        await harness.StartWorkerAsync();
        await harness.ScalarAsync<int>(
            "INSERT INTO taskiq_messages (task_id, task_name, message, queue) VALUES ($1, 'ok', $2, $3) RETURNING 1",
            poisonId, body, harness.Broker.Options.Queue);
        await harness.ScalarAsync<object>("SELECT pg_notify('taskiq', $1)", harness.Broker.Options.Queue);

        var error = await Assert.ThrowsAsync<TaskExecutionException>(() => new TaskiqClientProbe(harness).WaitAsync(poisonId));
        Assert.Equal("MalformedMessage", error.RemoteType);

        var state = await harness.Broker.GetTaskAsync(poisonId);
        Assert.Equal(TaskState.Discarded, state!.State);
        Assert.Equal(1, state.Attempts); // not retried: it can never succeed
        Assert.StartsWith("MalformedMessage: ", state.LastError);

        var good = await harness.Client.KickAsync<string>("ok");
        Assert.Equal("fine", await good.WaitForResultAsync(Bound));
    }

    [Fact]
    public async Task Unknown_task_name_is_dead_lettered_at_once_with_the_reason()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("known", () => 1));
        await harness.StartWorkerAsync();

        var handle = await harness.Client.KickAsync("nobody_registered_this");

        var error = await Assert.ThrowsAsync<TaskExecutionException>(() => handle.WaitForResultAsync(Bound));
        Assert.Equal("UnknownTask", error.RemoteType);
        Assert.Contains("nobody_registered_this", error.RemoteMessage);
        var state = await harness.Broker.GetTaskAsync(handle.TaskId);
        Assert.Equal(TaskState.Discarded, state!.State);
        Assert.Equal(1, state.Attempts);
    }

    [Fact]
    public async Task Arguments_of_the_wrong_type_or_missing_are_dead_lettered_without_retries()
    {
        var calls = 0;
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("add", (int a, int b) => { Interlocked.Increment(ref calls); return a + b; }));
        await harness.StartWorkerAsync();

        var wrongType = await harness.Client.KickAsync<int>("add", ["one", 2]);
        var missing = await harness.Client.KickAsync<int>("add", [1]);
        var byName = await harness.Client.KickAsync<int>("add", [40], new Dictionary<string, object?> { ["b"] = 2 });

        var e1 = await Assert.ThrowsAsync<TaskExecutionException>(() => wrongType.WaitForResultAsync(Bound));
        var e2 = await Assert.ThrowsAsync<TaskExecutionException>(() => missing.WaitForResultAsync(Bound));
        Assert.Equal(nameof(TaskArgumentException), e1.RemoteType);
        Assert.Contains("argument 'a'", e1.RemoteMessage);
        Assert.Contains("needs argument 'b'", e2.RemoteMessage);
        Assert.Equal(42, await byName.WaitForResultAsync(Bound));
        Assert.Equal(1, calls);
        Assert.Equal(1, (await harness.Broker.GetTaskAsync(wrongType.TaskId))!.Attempts);
    }

    [Fact]
    public async Task Handler_exceeding_its_timeout_is_cancelled_and_counted_as_a_failed_attempt()
    {
        var cancelled = 0;
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("slow", async (CancellationToken ct) =>
        {
            try
            {
                await Task.Delay(TimeSpan.FromMinutes(5), ct);
            }
            catch (OperationCanceledException)
            {
                Interlocked.Increment(ref cancelled);
                throw;
            }
        }), broker: new PostgresBrokerOptions { RetryBaseDelay = TimeSpan.FromMilliseconds(50) });
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });

        var handle = await harness.Client.KickAsync("slow", options: new KickOptions { Timeout = TimeSpan.FromMilliseconds(300), MaxAttempts = 2 });

        var error = await Assert.ThrowsAsync<TaskExecutionException>(() => handle.WaitForResultAsync(Bound));
        Assert.Equal(nameof(TaskTimeoutException), error.RemoteType);
        Assert.Equal(2, cancelled);
        Assert.Equal(TaskState.Discarded, (await harness.Broker.GetTaskAsync(handle.TaskId))!.State);
    }

    [Fact]
    public async Task Oversized_message_and_overlong_task_name_are_refused_at_kick()
    {
        await using var harness = await QueueHarness.CreateAsync(db, broker: new PostgresBrokerOptions { MaxMessageBytes = 1024 });

        var tooLarge = await Assert.ThrowsAsync<MessageTooLargeException>(() => harness.Client.KickAsync("big", [new string('x', 2000)]));
        Assert.Equal(1024, tooLarge.Limit);
        Assert.Contains("MaxMessageBytes", tooLarge.Message);
        var longName = await Assert.ThrowsAsync<InvalidTaskMessageException>(() => harness.Client.KickAsync(new string('n', 300)));
        Assert.Contains("MaxTaskNameLength", longName.Message);
        Assert.Equal(0, (await harness.Broker.GetQueueCountsAsync()).Values.Sum());
    }

    /// <summary>Waits for a result by task id when the task was inserted by raw SQL.</summary>
    private sealed class TaskiqClientProbe(QueueHarness harness)
    {
        public async Task WaitAsync(string taskId)
        {
            var result = await harness.Results.WaitForResultAsync(taskId, Bound);
            if (result.IsError)
            {
                throw new TaskExecutionException(taskId, result.Error!, result.StackTrace);
            }
        }
    }
}
