using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>
/// Fault scenario "poison and bad input" (issue 6, in-process part): 1,000 messages mixing malformed JSON, wrong
/// argument types, unknown task names, handler exceptions and timeouts, plus good tasks. Every bad one ends
/// dead-lettered with its reason, every good one completes, and oversized payloads are refused at kick.
/// </summary>
public sealed class PoisonMixTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    [Fact]
    public async Task A_thousand_mixed_bad_and_good_messages_are_each_dead_lettered_with_a_reason_or_completed()
    {
        var goodRuns = 0;
        await using var harness = await QueueHarness.CreateAsync(db, r => r
                .Add("good", (int i) => { Interlocked.Increment(ref goodRuns); return i; })
                .Add("typed", (int a, int b) => a + b)
                .Add("throws", (Action)(() => throw new InvalidOperationException("handler exploded")))
                .Add("hangs", async (CancellationToken ct) => await Task.Delay(TimeSpan.FromMinutes(5), ct)),
            broker: new PostgresBrokerOptions { MaxMessageBytes = 64 * 1024, RetryBaseDelay = TimeSpan.FromMilliseconds(20) });
        var queue = harness.Broker.Options.Queue;

        // 200 each of: good, malformed JSON (raw insert), wrong argument types, unknown task, throwing handler;
        // plus 20 handler timeouts (each one costs its timeout).
        var good = Enumerable.Range(0, 200).Select(i => TaskMessage.Create("good", [i])).ToArray();
        var wrongTypes = Enumerable.Range(0, 200).Select(_ => TaskMessage.Create("typed", ["not a number", 2])).ToArray();
        var unknown = Enumerable.Range(0, 200).Select(_ => TaskMessage.Create("nobody_has_this")).ToArray();
        var throwing = Enumerable.Range(0, 200).Select(_ => TaskMessage.Create("throws")).ToArray();
        var hanging = Enumerable.Range(0, 20).Select(_ => TaskMessage.Create("hangs")).ToArray();
        await harness.Broker.KickManyAsync([.. good, .. wrongTypes, .. unknown], new KickOptions { MaxAttempts = 2 });
        await harness.Broker.KickManyAsync(throwing, new KickOptions { MaxAttempts = 2 });
        await harness.Broker.KickManyAsync(hanging, new KickOptions { MaxAttempts = 1, Timeout = TimeSpan.FromMilliseconds(200) });
        await using (var insert = harness.DataSource.CreateCommand(
            "INSERT INTO taskiq_messages (task_id, task_name, message, queue, max_attempts) SELECT 'malformed-' || g, 'good', '{broken json ' || g, $1, 2 FROM generate_series(1, 200) g"))
        {
            insert.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
            Assert.Equal(200, await insert.ExecuteNonQueryAsync());
        }

        // Oversized payloads never enter the queue.
        var oversized = TaskMessage.Create("good", [new string('x', 100_000)]);
        Assert.Equal(64 * 1024, (await Assert.ThrowsAsync<MessageTooLargeException>(() => harness.Broker.KickAsync(oversized))).Limit);

        await harness.StartWorkerAsync(new TaskiqWorkerOptions { MaxConcurrentTasks = 16, PollInterval = TimeSpan.FromMilliseconds(50) });
        await Eventually.TrueAsync(async () =>
        {
            var counts = await harness.Broker.GetQueueCountsAsync();
            return counts[TaskState.Available] + counts[TaskState.Running] == 0;
        }, TimeSpan.FromSeconds(60), "every message reaches an end state");

        Assert.Equal(200, goodRuns);
        await using var reasons = harness.DataSource.CreateCommand(
            """
            SELECT split_part(last_error, ':', 1), count(*), min(attempts), max(attempts)
            FROM taskiq_messages WHERE queue = $1 AND status = 'discarded' GROUP BY 1 ORDER BY 1
            """);
        reasons.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
        var byReason = new Dictionary<string, (long Count, int MinAttempts, int MaxAttempts)>();
        await using (var reader = await reasons.ExecuteReaderAsync())
        {
            while (await reader.ReadAsync())
            {
                byReason[reader.GetString(0)] = (reader.GetInt64(1), reader.GetInt32(2), reader.GetInt32(3));
            }
        }

        // Poison is dead-lettered at once (1 attempt); failures that might be transient use their attempts.
        Assert.Equal((200L, 1, 1), byReason["MalformedMessage"]);
        Assert.Equal((200L, 1, 1), byReason[nameof(TaskArgumentException)]);
        Assert.Equal((200L, 1, 1), byReason["UnknownTask"]);
        Assert.Equal((200L, 2, 2), byReason[nameof(InvalidOperationException)]);
        Assert.Equal((20L, 1, 1), byReason[nameof(TaskTimeoutException)]);
        Assert.Equal(5, byReason.Count);

        // Each good task's result is stored; each dead one has an error result a waiter can read.
        Assert.Equal(199, (await harness.Results.GetResultAsync(good[199].TaskId)).GetReturnValue<int>());
        var unknownResult = await harness.Results.GetResultAsync(unknown[0].TaskId);
        Assert.True(unknownResult.IsError);
        Assert.Equal("UnknownTask", unknownResult.Error!.Type);
    }
}
