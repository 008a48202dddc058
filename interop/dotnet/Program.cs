// The .NET side of the by-hand check with Python taskiq workers (see interop/README.md):
//   migrate        creates (or adopts) the tables and exits
//   worker         runs a TaskiqPg worker on the shared tables until Ctrl+C / SIGTERM
//   schedules S    lists the schedules in taskiq_schedules (Python's too), adds a Berlin cron schedule of its own, and
//                  runs a scheduler and a worker for S seconds (the fires of Python's interval schedule run here)
//   kick COUNT     kicks COUNT `add` tasks and one `fail` from .NET and reads their results, whoever ran them
// INTEROP_DSN is the Npgsql connection string; INTEROP_NOTIFY_IDS=0 turns NotifyTaskIds off (on by default here:
// Python workers claim only the row ids they are notified of).
using Npgsql;
using TaskiqPg;

var dsn = Environment.GetEnvironmentVariable("INTEROP_DSN") ?? "Host=localhost;Username=postgres";
var notifyIds = Environment.GetEnvironmentVariable("INTEROP_NOTIFY_IDS") != "0";
await using var dataSource = NpgsqlDataSource.Create(dsn);
await using var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { NotifyTaskIds = notifyIds });
await using var results = new PostgresResultBackend(dataSource);
await broker.StartAsync();
await results.StartAsync();

switch (args.FirstOrDefault())
{
    case "migrate": // the brokers' start above created or adopted the tables
        return 0;

    case "worker":
        var registry = new TaskRegistry()
            .Add("add", async (int a, int b, string key) =>
            {
                await using var record = dataSource.CreateCommand("INSERT INTO interop_runs (key, runner) VALUES ($1, 'dotnet')");
                record.Parameters.AddWithValue(key);
                await record.ExecuteNonQueryAsync();
                return a + b;
            })
            .Add("fail", new Action<string>(reason => throw new InvalidOperationException(reason)), retry: new TaskRetryPolicy { MaxAttempts = 1 });
        using (var worker = new TaskiqWorker(broker, registry, results, new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(500) }))
        {
            using var stop = new CancellationTokenSource();
            Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.Cancel(); };
            AppDomain.CurrentDomain.ProcessExit += (_, _) => stop.Cancel();
            await worker.StartAsync(CancellationToken.None);
            Console.WriteLine($"dotnet worker {worker.WorkerId} running (NotifyTaskIds={notifyIds})");
            await Task.Delay(Timeout.Infinite, stop.Token).ContinueWith(_ => { }, TaskScheduler.Default);
            await worker.StopAsync(CancellationToken.None);
        }

        return 0;

    case "schedules":
        var seconds = int.Parse(args.ElementAtOrDefault(1) ?? "5", System.Globalization.CultureInfo.InvariantCulture);
        await using (var source = new PostgresScheduleSource(dataSource))
        {
            await source.StartAsync();
            foreach (var info in await source.ListSchedulesAsync())
            {
                var d = info.Definition;
                Console.WriteLine($"read {d.TaskName}: cron={d.Cron ?? "-"} zone={d.TimeZone ?? "-"} interval={d.Interval?.ToString() ?? "-"} " +
                                  $"time={d.RunAt?.ToString("O") ?? "-"} args={System.Text.Json.JsonSerializer.Serialize(d.Args)} " +
                                  $"labels={System.Text.Json.JsonSerializer.Serialize(d.Labels)} enabled={info.Enabled} {info.DisabledReason}");
            }

            await source.AddScheduleAsync(new ScheduleDefinition
            {
                TaskName = "add", Cron = "30 2 * * *", TimeZone = "Europe/Berlin", Args = [1, 2, "dn-cron"],
                Labels = new Dictionary<string, string> { ["owner"] = "dotnet" },
            });
            using var scheduler = new TaskiqScheduler(source, broker);
            using var scheduledWorker = new TaskiqWorker(broker, new TaskRegistry().Add("add", async (int a, int b, string key) =>
            {
                await using var record = dataSource.CreateCommand("INSERT INTO interop_runs (key, runner) VALUES ($1, 'dotnet')");
                record.Parameters.AddWithValue(key);
                await record.ExecuteNonQueryAsync();
                return a + b;
            }), results);
            await scheduledWorker.StartAsync(CancellationToken.None);
            await scheduler.StartAsync(CancellationToken.None);
            await Task.Delay(TimeSpan.FromSeconds(seconds));
            await scheduler.StopAsync(CancellationToken.None);
            await scheduledWorker.StopAsync(CancellationToken.None);
        }

        return 0;

    case "kick":
        var count = int.Parse(args.ElementAtOrDefault(1) ?? "100", System.Globalization.CultureInfo.InvariantCulture);
        var client = new TaskiqClient(broker, results);
        var started = System.Diagnostics.Stopwatch.StartNew();
        var handles = new List<TaskHandle<int>>();
        for (var i = 0; i < count; i++)
        {
            handles.Add(await client.KickAsync<int>("add", [i, 2000, $"dn-{i}"]));
        }

        var failing = await client.KickAsync("fail", ["boom from .NET's producer"]);
        Console.WriteLine($"kicked {count} add and 1 fail in {started.Elapsed.TotalSeconds:F2} s (NotifyTaskIds={notifyIds})");
        var wrong = 0;
        for (var i = 0; i < count; i++)
        {
            var value = await handles[i].WaitForResultAsync(TimeSpan.FromSeconds(60));
            if (value != i + 2000)
            {
                wrong++;
                Console.WriteLine($"  add #{i}: {value}");
            }
        }

        Console.WriteLine($"results: {count - wrong}/{count} correct");
        var error = await failing.WaitForRawResultAsync(TimeSpan.FromSeconds(60));
        Console.WriteLine($"fail: IsError={error.IsError} error={error.Error?.Type}: {error.Error?.Message}");
        return wrong == 0 && error.IsError && error.Error?.Message?.Contains("boom", StringComparison.Ordinal) == true ? 0 : 1;

    default:
        Console.Error.WriteLine("usage: migrate | worker | schedules SECONDS | kick COUNT");
        return 2;
}
