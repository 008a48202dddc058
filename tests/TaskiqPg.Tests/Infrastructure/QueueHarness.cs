using Microsoft.Extensions.Logging;
using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>Broker, result backend, client and workers on one borrowed data source, on a queue of their own.</summary>
public sealed class QueueHarness : IAsyncDisposable
{
    private readonly List<TaskiqWorker> _workers = [];

    private QueueHarness(NpgsqlDataSource dataSource, PostgresBroker broker, PostgresResultBackend results, TaskRegistry registry)
    {
        DataSource = dataSource;
        Broker = broker;
        Results = results;
        Registry = registry;
        Client = new TaskiqClient(broker, results);
    }

    public NpgsqlDataSource DataSource { get; }

    /// <summary>Console logs of the harness's workers when TASKIQPG_TEST_LOG=1 (for debugging a test by hand).</summary>
    public static ILoggerFactory? DebugLogs { get; } = Environment.GetEnvironmentVariable("TASKIQPG_TEST_LOG") == "1"
        ? LoggerFactory.Create(b => b.AddSimpleConsole().SetMinimumLevel(LogLevel.Debug))
        : null;

    public PostgresBroker Broker { get; }

    public PostgresResultBackend Results { get; }

    public TaskRegistry Registry { get; }

    public TaskiqClient Client { get; }

    public static async Task<QueueHarness> CreateAsync(DatabaseFixture db, Action<TaskRegistry>? tasks = null,
        PostgresBrokerOptions? broker = null, PostgresResultBackendOptions? results = null, NpgsqlDataSource? dataSource = null)
    {
        dataSource ??= db.CreateDataSource();
        var brokerOptions = (broker ?? new PostgresBrokerOptions()) with { };
        if (brokerOptions.Queue == "default")
        {
            brokerOptions.Queue = "q" + Guid.NewGuid().ToString("N")[..10];
        }

        var registry = new TaskRegistry();
        tasks?.Invoke(registry);
        var harness = new QueueHarness(dataSource, new PostgresBroker(dataSource, brokerOptions),
            new PostgresResultBackend(dataSource, results), registry);
        await harness.Broker.StartAsync();
        await harness.Results.StartAsync();
        return harness;
    }

    /// <summary>Starts a worker; by default it polls rarely, so prompt delivery proves the NOTIFY path.</summary>
    public async Task<TaskiqWorker> StartWorkerAsync(TaskiqWorkerOptions? options = null, PostgresBroker? broker = null)
    {
        var worker = new TaskiqWorker(broker ?? Broker, Registry, Results, options ?? new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMinutes(1) },
            loggerFactory: DebugLogs);
        _workers.Add(worker);
        await worker.StartAsync(CancellationToken.None);
        await (broker ?? Broker).ListenerConnected.WaitAsync(TimeSpan.FromSeconds(10));
        return worker;
    }

    public async Task StopWorkerAsync(TaskiqWorker worker)
    {
        await worker.StopAsync(CancellationToken.None);
        _workers.Remove(worker);
        worker.Dispose();
    }

    public async Task<T> ScalarAsync<T>(string sql, params object[] parameters)
    {
        await using var command = DataSource.CreateCommand(sql);
        foreach (var p in parameters)
        {
            command.Parameters.Add(new NpgsqlParameter { Value = p });
        }

        return (T)(await command.ExecuteScalarAsync())!;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var worker in _workers.ToArray())
        {
            await StopWorkerAsync(worker);
        }

        await Broker.DisposeAsync();
        await Results.DisposeAsync();
    }
}
