using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>A handler completes its task in its own transaction: its writes and the completion commit together.</summary>
public sealed class CompleteInTransactionTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task A_handler_completing_in_its_transaction_stores_its_write_its_completion_and_its_result_together()
    {
        var table = await SideTableAsync();
        await using var source = db.CreateDataSource(); // the handlers' own pool on the same database
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("book", async (int seat, TaskContext context) =>
        {
            await using var connection = await source.OpenConnectionAsync();
            await using var transaction = await connection.BeginTransactionAsync();
            await InsertAsync(connection, transaction, table, context.TaskId);
            await context.CompleteInTransactionAsync(transaction, $"seat {seat}");
            await transaction.CommitAsync();
            return "not stored: the transaction's result wins";
        }));
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });
        var handle = await harness.Client.KickAsync<string>("book", [12]);

        Assert.Equal("seat 12", await handle.WaitForResultAsync(Bound));
        Assert.Equal(1L, await harness.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE task_id = $1", handle.TaskId));
        var record = (await harness.Broker.GetTaskAsync(handle.TaskId))!;
        Assert.Equal((TaskState.Completed, 1), (record.State, record.Attempts));
    }

    [Fact]
    public async Task A_worker_dying_between_the_handlers_commit_and_its_ack_never_runs_the_side_effect_twice()
    {
        var table = await SideTableAsync();
        await using var source = db.CreateDataSource(); // the handlers' own pool on the same database
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("effect", async (TaskContext context) =>
        {
            await using var connection = await source.OpenConnectionAsync();
            await InsertAsync(connection, null, table, context.TaskId);
            return 1;
        }), broker: new PostgresBrokerOptions { LeaseDuration = TimeSpan.FromMilliseconds(500) });
        var inTransaction = await harness.Client.KickAsync<int>("effect");
        var plain = await harness.Client.KickAsync<int>("effect");

        // A worker claims both, commits each handler's write (one with the completion in the same transaction, one
        // without), and is killed before it acks: nothing after the commits runs.
        var claimed = await harness.Broker.ClaimAsync("killed-worker", 2);
        Assert.Equal(2, claimed.Count);
        foreach (var task in claimed)
        {
            await using var connection = await harness.DataSource.OpenConnectionAsync();
            await using var transaction = await connection.BeginTransactionAsync();
            await InsertAsync(connection, transaction, table, task.TaskId);
            if (task.TaskId == inTransaction.TaskId)
            {
                Assert.True(await harness.Broker.CompleteInTransactionAsync("killed-worker", task.Lease, connection, transaction));
            }

            await transaction.CommitAsync();
        }

        // The leases expire; a live worker rescues what is still running and runs it again.
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50), RescueInterval = TimeSpan.FromMilliseconds(100) });
        Assert.Equal(1, await plain.WaitForResultAsync(Bound));
        Assert.Equal(2L, await harness.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE task_id = $1", plain.TaskId)); // at least once: twice
        Assert.Equal(1L, await harness.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE task_id = $1", inTransaction.TaskId)); // exactly once
        Assert.Equal(TaskState.Completed, (await harness.Broker.GetTaskAsync(inTransaction.TaskId))!.State);
    }

    [Fact]
    public async Task A_rolled_back_completion_leaves_the_task_to_the_worker_and_a_lost_lease_refuses_to_complete()
    {
        var table = await SideTableAsync();
        await using var source = db.CreateDataSource(); // the handlers' own pool on the same database
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("undecided", async (TaskContext context) =>
        {
            await using var connection = await source.OpenConnectionAsync();
            await using var transaction = await connection.BeginTransactionAsync();
            await InsertAsync(connection, transaction, table, context.TaskId);
            await context.CompleteInTransactionAsync(transaction, 1);
            await transaction.RollbackAsync();
            return 2; // the worker acks it and stores this
        }));
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });
        var handle = await harness.Client.KickAsync<int>("undecided");
        Assert.Equal(2, await handle.WaitForResultAsync(Bound));
        Assert.Equal(0L, await harness.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE task_id = $1", handle.TaskId));
        Assert.Equal(TaskState.Completed, (await harness.Broker.GetTaskAsync(handle.TaskId))!.State);

        var other = await harness.Client.KickAsync("undecided", options: new KickOptions { Delay = TimeSpan.FromHours(1) });
        await using var c = await harness.DataSource.OpenConnectionAsync();
        await using var t = await c.BeginTransactionAsync();
        Assert.False(await harness.Broker.CompleteInTransactionAsync("nobody", new LeaseRef(long.MaxValue, 1), c, t));
        Assert.Equal(TaskState.Scheduled, (await harness.Broker.GetTaskAsync(other.TaskId))!.State);
    }

    private async Task<string> SideTableAsync()
    {
        var table = "side_" + Guid.NewGuid().ToString("N")[..8];
        await using var dataSource = db.CreateDataSource();
        await using var command = dataSource.CreateCommand($"CREATE TABLE {table} (task_id text NOT NULL)");
        await command.ExecuteNonQueryAsync();
        return table;
    }

    private static async Task InsertAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string table, string taskId)
    {
        await using var command = new NpgsqlCommand($"INSERT INTO {table} (task_id) VALUES ($1)", connection, transaction);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
        await command.ExecuteNonQueryAsync();
    }
}
