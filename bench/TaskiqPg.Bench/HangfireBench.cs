using System.Diagnostics;
using Hangfire;
using Hangfire.PostgreSql;

namespace TaskiqPg.Bench;

/// <summary>
/// Hangfire.PostgreSql on the same server, same machine, same run: enqueue rate and drain rate of no-op jobs.
/// Options: 16 workers, QueuePollInterval 200 ms, no long polling (its PostgreSQL storage polls).
/// </summary>
internal static class HangfireBench
{
    public const int WorkerCount = 16;
    public static readonly TimeSpan QueuePollInterval = TimeSpan.FromMilliseconds(200);

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, long> Started = new();

    public static void Noop()
    {
    }

    public static void Ping(string id) => Started[id] = Stopwatch.GetTimestamp();

    public static async Task<(double EnqueueRate, double DrainRate)> RunAsync(string connectionString, int jobs)
    {
        var options = new PostgreSqlStorageOptions { QueuePollInterval = QueuePollInterval, PrepareSchemaIfNecessary = true, SchemaName = "hangfire" };
        var storage = new PostgreSqlStorage(new Hangfire.PostgreSql.Factories.NpgsqlConnectionFactory(connectionString, options), options);
        var client = new BackgroundJobClient(storage);
        var watch = Stopwatch.StartNew();
        for (var i = 0; i < jobs; i++)
        {
            client.Enqueue(() => Noop());
        }

        var enqueueRate = jobs / watch.Elapsed.TotalSeconds;
        watch.Restart();
        using (var server = new BackgroundJobServer(new BackgroundJobServerOptions { WorkerCount = WorkerCount }, storage))
        {
            var monitoring = storage.GetMonitoringApi();
            while (monitoring.SucceededListCount() < jobs)
            {
                await Task.Delay(100);
            }
        }

        return (enqueueRate, jobs / watch.Elapsed.TotalSeconds);
    }

    /// <summary>Kick → job start at idle, sequential: enqueue one job, wait until it started, repeat.</summary>
    public static async Task<List<double>> LatencyAsync(string connectionString, int samples)
    {
        var options = new PostgreSqlStorageOptions { QueuePollInterval = QueuePollInterval, PrepareSchemaIfNecessary = true, SchemaName = "hangfire" };
        var storage = new PostgreSqlStorage(new Hangfire.PostgreSql.Factories.NpgsqlConnectionFactory(connectionString, options), options);
        var client = new BackgroundJobClient(storage);
        var latencies = new List<double>();
        using var server = new BackgroundJobServer(new BackgroundJobServerOptions { WorkerCount = WorkerCount }, storage);
        for (var i = 0; i < samples; i++)
        {
            var id = Guid.NewGuid().ToString("N");
            var t0 = Stopwatch.GetTimestamp();
            client.Enqueue(() => Ping(id));
            long started;
            while (!Started.TryGetValue(id, out started))
            {
                await Task.Delay(1);
            }

            latencies.Add(Stopwatch.GetElapsedTime(t0, started).TotalMilliseconds);
        }

        return latencies;
    }
}
