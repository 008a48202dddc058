using Npgsql;

namespace TaskiqPg.Tests;

public sealed class TransactionalKickTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    [Fact]
    public async Task Task_kicked_in_a_transaction_is_invisible_until_commit_and_then_runs()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("welcome", (string user) => $"hi {user}"));
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(100) });
        await using var connection = await harness.DataSource.OpenConnectionAsync();
        await using var transaction = await connection.BeginTransactionAsync();
        await using (var insert = new NpgsqlCommand("CREATE TABLE IF NOT EXISTS users (name text)", connection, transaction))
        {
            await insert.ExecuteNonQueryAsync();
        }

        var handle = await harness.Client.KickAsync<string>("welcome", connection, transaction, ["ann"]);

        // Not visible to anyone else (the worker included) before the commit.
        Assert.Null(await harness.Broker.GetTaskAsync(handle.TaskId));
        await Assert.ThrowsAsync<TaskResultTimeoutException>(() => handle.WaitForResultAsync(TimeSpan.FromMilliseconds(500)));

        await transaction.CommitAsync();

        Assert.Equal("hi ann", await handle.WaitForResultAsync(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task Task_kicked_in_a_rolled_back_transaction_vanishes()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        string taskId;
        await using (var connection = await harness.DataSource.OpenConnectionAsync())
        {
            await using var transaction = await connection.BeginTransactionAsync();
            var message = TaskMessage.Create("anything");
            taskId = message.TaskId;
            await harness.Broker.KickAsync(message, connection, transaction);
            Assert.Null(await harness.Broker.GetTaskAsync(taskId)); // other connections do not see it
            await transaction.RollbackAsync();
        }

        Assert.Null(await harness.Broker.GetTaskAsync(taskId));
        Assert.Equal(0, (await harness.Broker.GetQueueCountsAsync()).Values.Sum());
    }

    [Fact]
    public async Task KickMany_joins_the_callers_transaction()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        await using var connection = await harness.DataSource.OpenConnectionAsync();
        await using var transaction = await connection.BeginTransactionAsync();

        await harness.Broker.KickManyAsync(Enumerable.Range(0, 50).Select(i => TaskMessage.Create("t", [i])).ToArray(), connection, transaction);
        Assert.Equal(0, (await harness.Broker.GetQueueCountsAsync()).Values.Sum());

        await transaction.CommitAsync();
        Assert.Equal(50, (await harness.Broker.GetQueueCountsAsync())[TaskState.Available]);
    }
}
