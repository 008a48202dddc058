using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>The pool contract: a borrowed pool is never disposed; an owned one is; one pool serves every component.</summary>
public sealed class PoolOwnershipTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(15);

    [Fact]
    public async Task Borrowed_data_source_still_works_after_every_component_is_stopped_and_disposed()
    {
        var dataSource = db.CreateDataSource();
        var registry = new TaskRegistry().Add("add", (int a, int b) => a + b);
        var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = "borrowed" });
        var results = new PostgresResultBackend(dataSource);
        var worker = new TaskiqWorker(broker, registry, results, new TaskiqWorkerOptions());
        await worker.StartAsync(CancellationToken.None);
        var handle = await new TaskiqClient(broker, results).KickAsync<int>("add", [1, 2]);
        Assert.Equal(3, await handle.WaitForResultAsync(Bound));

        await worker.StopAsync(CancellationToken.None);
        worker.Dispose();
        await broker.DisposeAsync();
        await results.DisposeAsync();

        await using var command = dataSource.CreateCommand("SELECT 42");
        Assert.Equal(42, await command.ExecuteScalarAsync());
    }

    [Fact]
    public async Task Owned_data_sources_are_disposed_with_their_component()
    {
        var app = "owned_" + Guid.NewGuid().ToString("N")[..8];
        var connectionString = new NpgsqlConnectionStringBuilder(db.ConnectionString) { ApplicationName = app }.ConnectionString;
        var broker = new PostgresBroker(connectionString);
        var results = new PostgresResultBackend(connectionString);
        await broker.KickAsync(TaskMessage.Create("x"));
        await results.SetResultAsync("owned-result", new TaskResult());
        Assert.True(await CountConnectionsAsync(app) > 0);

        await broker.DisposeAsync();
        await results.DisposeAsync();

        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await broker.DataSource.OpenConnectionAsync());
        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await results.DataSource.OpenConnectionAsync());
        await Eventually.TrueAsync(async () => await CountConnectionsAsync(app) == 0, Bound, "the owned pools' connections are closed");
    }

    [Fact]
    public async Task One_pool_of_a_single_connection_serves_broker_results_worker_and_handlers()
    {
        // With MaxPoolSize = 1 any component that held a pooled connection while another needs one would deadlock;
        // the LISTEN connections live outside the pool.
        var app = "tiny_" + Guid.NewGuid().ToString("N")[..8];
        var dataSource = db.CreateDataSource(maxPoolSize: 1, applicationName: app);
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("query", async (int i) =>
        {
            await using var command = dataSource.CreateCommand("SELECT $1 * 2");
            command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = i });
            return (int)(await command.ExecuteScalarAsync())!;
        }), dataSource: dataSource);
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { MaxConcurrentTasks = 8 });

        var handles = new List<TaskHandle<int>>();
        for (var i = 0; i < 100; i++)
        {
            handles.Add(await harness.Client.KickAsync<int>("query", [i]));
        }

        var sampling = true;
        var maxPooled = 0;
        var sampler = Task.Run(async () =>
        {
            while (Volatile.Read(ref sampling))
            {
                maxPooled = Math.Max(maxPooled, await CountConnectionsAsync(app, exact: true));
                await Task.Delay(10);
            }
        });
        for (var i = 0; i < handles.Count; i++)
        {
            Assert.Equal(i * 2, await handles[i].WaitForResultAsync(Bound));
        }

        Volatile.Write(ref sampling, false);
        await sampler;
        Assert.InRange(maxPooled, 1, 1);
        Assert.True(await CountConnectionsAsync(app) >= 3, "the broker and result LISTEN connections are separate physical connections");
    }

    private async Task<int> CountConnectionsAsync(string applicationName, bool exact = false)
    {
        await using var connection = new NpgsqlConnection(db.Server.AdminConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(
            exact ? "SELECT count(*)::int FROM pg_stat_activity WHERE application_name = $1"
                  : "SELECT count(*)::int FROM pg_stat_activity WHERE application_name LIKE $1 || '%'", connection);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = applicationName });
        return (int)(await command.ExecuteScalarAsync())!;
    }
}
