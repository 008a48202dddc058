using System.Diagnostics;
using System.Text.Json;

namespace TaskiqPg.Tests;

public sealed class ResultBackendTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static TaskResult Ok(object value) => new() { ReturnValue = JsonSerializer.SerializeToElement(value), ExecutionTime = 0.01 };

    [Fact]
    public async Task Waiter_is_woken_by_the_notification_when_the_result_is_stored()
    {
        // The safety re-check is 10 minutes away: only the NOTIFY can end this wait in time.
        await using var backend = new PostgresResultBackend(db.ConnectionString, new PostgresResultBackendOptions { WaitRecheckInterval = TimeSpan.FromMinutes(10) });
        await using var writer = new PostgresResultBackend(db.ConnectionString);
        for (var i = 0; i < 3; i++)
        {
            var taskId = TaskIds.New();
            var wait = backend.WaitForResultAsync(taskId, TimeSpan.FromSeconds(20));
            await Eventually.TrueAsync(() => backend.IsListening, TimeSpan.FromSeconds(10), "the result listener connects");
            await Task.Yield();

            await writer.SetResultAsync(taskId, Ok(i));

            var result = await wait.WaitAsync(TimeSpan.FromSeconds(10));
            Assert.Equal(i, result.GetReturnValue<int>());
        }
    }

    [Fact]
    public async Task Many_waiters_are_woken_by_one_batched_write()
    {
        await using var backend = new PostgresResultBackend(db.ConnectionString, new PostgresResultBackendOptions { WaitRecheckInterval = TimeSpan.FromMinutes(10) });
        var ids = Enumerable.Range(0, 500).Select(_ => TaskIds.New()).ToArray();
        var waits = ids.Select(id => backend.WaitForResultAsync(id, TimeSpan.FromSeconds(30))).ToArray();
        await Eventually.TrueAsync(() => backend.IsListening, TimeSpan.FromSeconds(10), "the result listener connects");

        // 500 ids are more than one NOTIFY payload holds: the write is split into chunks.
        await backend.SetResultsAsync(ids.Select((id, i) => new KeyValuePair<string, TaskResult>(id, Ok(i))).ToArray());

        var results = await Task.WhenAll(waits).WaitAsync(TimeSpan.FromSeconds(20));
        Assert.Equal(Enumerable.Range(0, 500), results.Select(r => r.GetReturnValue<int>()));
    }

    [Fact]
    public async Task Waiter_keeps_waiting_through_a_database_outage_and_gets_the_result_after_it()
    {
        var target = new Npgsql.NpgsqlConnectionStringBuilder(db.ConnectionString);
        await using var proxy = new TcpProxy(target.Host!, target.Port);
        var throughProxy = new Npgsql.NpgsqlConnectionStringBuilder(db.ConnectionString) { Port = proxy.Port, Timeout = 2 }.ConnectionString;
        await using var backend = new PostgresResultBackend(throughProxy, new PostgresResultBackendOptions { WaitRecheckInterval = TimeSpan.FromMilliseconds(300) });
        await using var writer = new PostgresResultBackend(db.ConnectionString);
        var taskId = TaskIds.New();
        var wait = backend.WaitForResultAsync(taskId, TimeSpan.FromSeconds(40));
        await Eventually.TrueAsync(() => backend.IsListening, TimeSpan.FromSeconds(10), "the result listener connects");

        // The database "goes down" for this client: connections reset, new ones refused, for a few re-checks.
        proxy.Cut();
        await Eventually.TrueAsync(() => !backend.IsListening, TimeSpan.FromSeconds(10), "the listener notices the outage");
        await Task.Delay(TimeSpan.FromSeconds(1.5)); // several re-checks fail meanwhile
        Assert.False(wait.IsCompleted, wait.Exception?.ToString());
        await writer.SetResultAsync(taskId, Ok("after the outage"));
        proxy.Restore();

        Assert.Equal("after the outage", (await wait.WaitAsync(TimeSpan.FromSeconds(30))).GetReturnValue<string>());
    }

    [Fact]
    public async Task Missing_result_raises_TaskResultNotFoundException()
    {
        await using var backend = new PostgresResultBackend(db.ConnectionString);

        var error = await Assert.ThrowsAsync<TaskResultNotFoundException>(() => backend.GetResultAsync("no_such_task"));
        Assert.Equal("no_such_task", error.TaskId);
        Assert.False(await backend.IsResultReadyAsync("no_such_task"));
        await Assert.ThrowsAsync<TaskResultTimeoutException>(() => backend.WaitForResultAsync("no_such_task", TimeSpan.FromMilliseconds(300)));
    }

    [Fact]
    public async Task KeepResults_false_deletes_the_result_after_it_was_read()
    {
        await using var backend = new PostgresResultBackend(db.ConnectionString, new PostgresResultBackendOptions { KeepResults = false });
        var taskId = TaskIds.New();
        await backend.SetResultAsync(taskId, Ok("once"));

        Assert.Equal("once", (await backend.GetResultAsync(taskId)).GetReturnValue<string>());
        await Assert.ThrowsAsync<TaskResultNotFoundException>(() => backend.GetResultAsync(taskId));
    }

    [Fact]
    public async Task KeepResults_false_keeps_a_result_that_cannot_be_deserialized()
    {
        await using var backend = new PostgresResultBackend(db.ConnectionString, new PostgresResultBackendOptions { KeepResults = false });
        await using (var command = backend.DataSource.CreateCommand("INSERT INTO taskiq_results (task_id, result) VALUES ('corrupt', '{oops')"))
        {
            await command.ExecuteNonQueryAsync();
        }

        await Assert.ThrowsAnyAsync<JsonException>(() => backend.GetResultAsync("corrupt"));
        Assert.True(await backend.IsResultReadyAsync("corrupt"));
    }

    [Fact]
    public async Task Results_expire_after_their_ttl_and_the_pruner_deletes_them()
    {
        await using var backend = new PostgresResultBackend(db.ConnectionString,
            new PostgresResultBackendOptions { ResultTtl = TimeSpan.FromMilliseconds(300), PruneInterval = null, PruneBatchSize = 2 });
        var ids = Enumerable.Range(0, 5).Select(_ => TaskIds.New()).ToArray();
        await backend.SetResultsAsync(ids.Select(id => new KeyValuePair<string, TaskResult>(id, Ok(1))).ToArray());
        Assert.True(await backend.IsResultReadyAsync(ids[0]));

        await Eventually.TrueAsync(async () => !await backend.IsResultReadyAsync(ids[0]), TimeSpan.FromSeconds(10), "the result expires");
        await Assert.ThrowsAsync<TaskResultNotFoundException>(() => backend.GetResultAsync(ids[0]));

        Assert.True(await backend.PruneExpiredAsync() >= 5); // in batches of 2
        await using var count = backend.DataSource.CreateCommand("SELECT count(*) FROM taskiq_results WHERE task_id = ANY($1)");
        count.Parameters.Add(new Npgsql.NpgsqlParameter<string[]> { TypedValue = ids });
        Assert.Equal(0L, await count.ExecuteScalarAsync());
    }

    [Fact]
    public async Task Background_pruner_deletes_expired_results()
    {
        await using var backend = new PostgresResultBackend(db.ConnectionString,
            new PostgresResultBackendOptions { ResultTtl = TimeSpan.FromMilliseconds(100), PruneInterval = TimeSpan.FromMilliseconds(100) });
        var taskId = TaskIds.New();
        await backend.SetResultAsync(taskId, Ok(1));

        await Eventually.TrueAsync(async () =>
        {
            await using var count = backend.DataSource.CreateCommand("SELECT count(*) FROM taskiq_results WHERE task_id = $1");
            count.Parameters.Add(new Npgsql.NpgsqlParameter<string> { TypedValue = taskId });
            return (long)(await count.ExecuteScalarAsync())! == 0;
        }, TimeSpan.FromSeconds(10), "the pruner deletes the expired row");
    }

    [Fact]
    public async Task Progress_reported_by_a_running_task_is_readable()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("report", async (TaskContext ctx) =>
        {
            await ctx.SetProgressAsync(new Progress(50, "half way"));
            await gate.Task;
            return "done";
        }));
        await harness.StartWorkerAsync();

        var handle = await harness.Client.KickAsync<string>("report");
        await Eventually.TrueAsync(async () => await harness.Results.GetProgressAsync<Progress>(handle.TaskId) is not null, TimeSpan.FromSeconds(10), "progress is stored");
        Assert.Equal(new Progress(50, "half way"), await harness.Results.GetProgressAsync<Progress>(handle.TaskId));
        Assert.False(await handle.IsReadyAsync()); // progress alone is not a result

        gate.SetResult();
        Assert.Equal("done", await handle.WaitForResultAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(new Progress(50, "half way"), await harness.Results.GetProgressAsync<Progress>(handle.TaskId));
    }

    [Fact]
    public async Task Stored_result_has_taskiqs_json_shape_with_the_stack_trace_in_its_own_column()
    {
        await using var backend = new PostgresResultBackend(db.ConnectionString);
        var taskId = TaskIds.New();
        await backend.SetResultAsync(taskId, new TaskResult
        {
            IsError = true,
            ExecutionTime = 1.5,
            Labels = new Dictionary<string, string> { ["k"] = "v" },
            Error = new TaskError("ValueError", "bad"),
            StackTrace = "at Somewhere()",
        });

        await using var command = backend.DataSource.CreateCommand("SELECT result, stack_trace FROM taskiq_results WHERE task_id = $1");
        command.Parameters.Add(new Npgsql.NpgsqlParameter<string> { TypedValue = taskId });
        await using var reader = await command.ExecuteReaderAsync();
        Assert.True(await reader.ReadAsync());
        var stored = System.Text.Encoding.UTF8.GetString(reader.GetFieldValue<byte[]>(0)); // UTF-8 JSON bytes, as taskiq's JSONSerializer reads them
        using var json = JsonDocument.Parse(stored);
        Assert.Equal(["is_err", "return_value", "execution_time", "labels", "error"], json.RootElement.EnumerateObject().Select(p => p.Name));
        Assert.Equal("ValueError", json.RootElement.GetProperty("error").GetProperty("type").GetString());
        Assert.Equal(JsonValueKind.Null, json.RootElement.GetProperty("return_value").ValueKind);
        Assert.DoesNotContain("Somewhere", stored);
        Assert.Equal("at Somewhere()", reader.GetString(1));
    }

    [Fact]
    public async Task Stack_traces_are_not_stored_when_turned_off()
    {
        await using var backend = new PostgresResultBackend(db.ConnectionString, new PostgresResultBackendOptions { StoreStackTraces = false });
        var taskId = TaskIds.New();
        await backend.SetResultAsync(taskId, new TaskResult { IsError = true, Error = new TaskError("E", "m"), StackTrace = "at Secret()" });

        Assert.Null((await backend.GetResultAsync(taskId)).StackTrace);
    }

    private sealed record Progress(int Percent, string Note);
}
