using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>
/// Outcomes the database refuses (a NUL in a handler's error text, a row another producer wrote with NUL escapes, a
/// trigger that rejects one result) must never stall the completions behind them (issue 10).
/// </summary>
public sealed class PoisonCompletionTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task A_handler_error_with_a_NUL_character_is_dead_lettered_and_every_other_result_is_stored()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r
            .Add("nul_error", (Action)(() => throw new InvalidOperationException("bad\0byte")))
            .Add("good", (int i) => i));
        var bad = await harness.Client.KickAsync<object>("nul_error", options: new KickOptions { MaxAttempts = 1 });
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { MaxConcurrentTasks = 8, PollInterval = TimeSpan.FromMilliseconds(50) });
        await Eventually.TrueAsync(async () => await harness.Broker.GetTaskAsync(bad.TaskId) is null or { State: TaskState.Discarded },
            Bound, "the bad task settles");
        var good = Enumerable.Range(0, 600).Select(i => TaskMessage.Create("good", [i])).ToArray();
        await harness.Broker.KickManyAsync(good);

        await Eventually.TrueAsync(async () => await harness.ScalarAsync<long>(
                "SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND status NOT IN ('completed', 'cancelled', 'discarded')", harness.Broker.Options.Queue) == 0,
            Bound, "all 600 normal tasks are settled");
        Assert.Equal(599, (await harness.Results.GetResultAsync(good[599].TaskId)).GetReturnValue<int>());
        var state = await harness.Broker.GetTaskAsync(bad.TaskId);
        Assert.Equal(TaskState.Discarded, state!.State);
        Assert.Contains("bad", state.LastError);
        Assert.DoesNotContain('\0', state.LastError!);
        var result = await harness.Results.GetResultAsync(bad.TaskId);
        Assert.True(result.IsError);
        Assert.Contains("NUL", result.Error!.Message); // the stored text says it was sanitized
    }

    [Theory]
    [InlineData("task_name")]
    [InlineData("label_key")]
    [InlineData("label_value")]
    [InlineData("labels_types_key")]
    [InlineData("kwarg_name")]
    [InlineData("task_id")]
    public async Task A_row_from_another_producer_with_a_NUL_escape_is_dead_lettered_with_its_reason_while_normal_tasks_flow(string field)
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("good", (int i) => i));
        var message = field switch
        {
            "task_name" => """{"task_id":"nul-1","task_name":"go\u0000od","labels":{},"args":[1],"kwargs":{}}""",
            "label_key" => """{"task_id":"nul-1","task_name":"good","labels":{"a\u0000b":"x"},"args":[1],"kwargs":{}}""",
            "label_value" => """{"task_id":"nul-1","task_name":"good","labels":{"ab":"x\u0000"},"args":[1],"kwargs":{}}""",
            "labels_types_key" => """{"task_id":"nul-1","task_name":"good","labels":{},"labels_types":{"k\u0000":1},"args":[1],"kwargs":{}}""",
            "kwarg_name" => """{"task_id":"nul-1","task_name":"good","labels":{},"args":[],"kwargs":{"i\u0000":1}}""",
            _ => """{"task_id":"nul\u0000-1","task_name":"good","labels":{},"args":[1],"kwargs":{}}""",
        };
        await using (var insert = harness.DataSource.CreateCommand(
            "INSERT INTO taskiq_messages (task_id, task_name, message, queue, max_attempts) VALUES ('nul-1', 'good', $1, $2, 3)"))
        {
            insert.Parameters.Add(new NpgsqlParameter<string> { TypedValue = message });
            insert.Parameters.Add(new NpgsqlParameter<string> { TypedValue = harness.Broker.Options.Queue });
            await insert.ExecuteNonQueryAsync();
        }

        var good = Enumerable.Range(0, 200).Select(i => TaskMessage.Create("good", [i])).ToArray();
        await harness.Broker.KickManyAsync(good);
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });

        await Eventually.TrueAsync(async () => await harness.ScalarAsync<long>(
                "SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND status NOT IN ('completed', 'cancelled', 'discarded')", harness.Broker.Options.Queue) == 0,
            Bound, "every task is settled");
        Assert.Equal(199, (await harness.Results.GetResultAsync(good[199].TaskId)).GetReturnValue<int>());
        var state = await harness.Broker.GetTaskAsync("nul-1");
        Assert.Equal(TaskState.Discarded, state!.State);
        Assert.Equal(1, state.Attempts);
        Assert.StartsWith("MalformedMessage", state.LastError);
        Assert.Contains("NUL", state.LastError);
    }

    [Fact]
    public async Task A_result_the_database_rejects_is_dead_lettered_alone_and_the_rest_of_its_batch_lands()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("echo", (string s) => s));
        // A user's own trigger (or constraint) can refuse a result for its data: not transient, not ours to retry.
        await using (var trigger = harness.DataSource.CreateCommand(
            """
            CREATE OR REPLACE FUNCTION reject_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.result LIKE '%"poison"%' THEN RAISE EXCEPTION 'results with poison are not allowed' USING ERRCODE = '23514'; END IF;
                RETURN NEW;
            END $$;
            DROP TRIGGER IF EXISTS reject_poison ON taskiq_results;
            CREATE TRIGGER reject_poison BEFORE INSERT OR UPDATE ON taskiq_results FOR EACH ROW EXECUTE FUNCTION reject_poison();
            """))
        {
            await trigger.ExecuteNonQueryAsync();
        }

        try
        {
            var messages = Enumerable.Range(0, 500).Select(i => TaskMessage.Create("echo", [i == 250 ? "poison" : "ok" + i])).ToArray();
            await harness.Broker.KickManyAsync(messages);
            await harness.StartWorkerAsync(new TaskiqWorkerOptions { MaxConcurrentTasks = 16, PollInterval = TimeSpan.FromMilliseconds(50) });

            await Eventually.TrueAsync(async () => await harness.ScalarAsync<long>(
                    "SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND status NOT IN ('completed', 'cancelled', 'discarded')", harness.Broker.Options.Queue) == 0,
                Bound, "every task is settled");
            foreach (var i in new[] { 0, 249, 251, 499 })
            {
                Assert.Equal("ok" + i, (await harness.Results.GetResultAsync(messages[i].TaskId)).GetReturnValue<string>());
            }

            var state = await harness.Broker.GetTaskAsync(messages[250].TaskId);
            Assert.Equal(TaskState.Discarded, state!.State);
            Assert.Contains("23514", state.LastError);
            Assert.Contains("poison are not allowed", state.LastError);
        }
        finally
        {
            await using var drop = harness.DataSource.CreateCommand("DROP TRIGGER IF EXISTS reject_poison ON taskiq_results");
            await drop.ExecuteNonQueryAsync();
        }
    }
}
