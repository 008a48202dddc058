using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.Json;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Npgsql;
using Wolverine;
using Wolverine.Postgresql;

// Wolverine's PostgreSQL transport side of the TaskiqPg benchmark (WolverineFx.Postgresql, durable queues: the
// transactional inbox, its default). Usage: TASKIQPG_BENCH_PEER_CONNECTION=<npgsql connection string>
// TaskiqPg.Bench.Wolverine <messages> <latencySamples>; the connection string carries the password, so it comes by
// environment, never on the command line where ps would show it. Prints one JSON line.
//   1. A sending host (no listener) publishes N messages to the PostgreSQL queue "noop" from 8 concurrent publishers;
//      the rate counts until every message is in the queue table.
//   2. A listening host (ListenToPostgresqlQueue("noop"), MaximumMessagesToReceive 500, PollingInterval 100 ms) drains
//      them; the rate counts from the first handler call to the last (the host's start-up, which compiles the
//      handlers, is left out). Wolverine stores no results.
//   3. Idle latency on the same host: publish one message to the queue "ping", wait until its handler starts, repeat.
var connectionString = Environment.GetEnvironmentVariable("TASKIQPG_BENCH_PEER_CONNECTION")
                       ?? throw new InvalidOperationException("TASKIQPG_BENCH_PEER_CONNECTION is not set.");
var messages = int.Parse(args[0], System.Globalization.CultureInfo.InvariantCulture);
var samples = int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture);

using (var sender = Build(listen: false))
{
    await sender.StartAsync();
    var next = -1;
    var watch = Stopwatch.StartNew();
    await Task.WhenAll(Enumerable.Range(0, 8).Select(async _ =>
    {
        while (Interlocked.Increment(ref next) < messages)
        {
            await sender.MessageBus().PublishAsync(new Noop());
        }
    }));
    await using var dataSource = NpgsqlDataSource.Create(connectionString);
    await using var count = dataSource.CreateCommand("SELECT count(*) FROM wolverine_queues.wolverine_queue_noop");
    while ((long)(await count.ExecuteScalarAsync())! < messages)
    {
        await Task.Delay(20);
    }

    Results.AddRate = messages / watch.Elapsed.TotalSeconds;
    await sender.StopAsync();
}

using (var listener = Build(listen: true))
{
    var allHandled = Handlers.AllHandled(messages);
    await listener.StartAsync();
    await allHandled.WaitAsync(TimeSpan.FromMinutes(30));
    Results.DrainRate = (messages - 1) / Stopwatch.GetElapsedTime(Handlers.First, Handlers.Last).TotalSeconds;

    for (var i = 0; i < samples; i++)
    {
        var id = Guid.NewGuid();
        var started = Handlers.Expect(id);
        var t0 = Stopwatch.GetTimestamp();
        await listener.MessageBus().PublishAsync(new Ping(id));
        Results.Latencies.Add(Stopwatch.GetElapsedTime(t0, await started.WaitAsync(TimeSpan.FromSeconds(30))).TotalMilliseconds);
    }

    await listener.StopAsync();
}

Console.WriteLine(JsonSerializer.Serialize(new { addRate = Results.AddRate, drainRate = Results.DrainRate, latencies = Results.Latencies }));
return 0;

IHost Build(bool listen)
{
    var builder = Host.CreateApplicationBuilder();
    builder.Logging.SetMinimumLevel(LogLevel.Warning);
    builder.UseWolverine(opts =>
    {
        opts.UsePostgresqlPersistenceAndTransport(connectionString, "wolverine", transportSchema: "wolverine_queues").AutoProvision();
        opts.PublishMessage<Noop>().ToPostgresqlQueue("noop");
        opts.PublishMessage<Ping>().ToPostgresqlQueue("ping");
        if (listen)
        {
            opts.ListenToPostgresqlQueue("noop").MaximumMessagesToReceive(500).PollingInterval(TimeSpan.FromMilliseconds(100));
            opts.ListenToPostgresqlQueue("ping").PollingInterval(TimeSpan.FromMilliseconds(100));
        }
    });
    return builder.Build();
}

public sealed record Noop;

public sealed record Ping(Guid Id);

public static class NoopHandler
{
    public static void Handle(Noop message) => Handlers.Handled();
}

public static class PingHandler
{
    public static void Handle(Ping message) => Handlers.Started(message.Id);
}

internal static class Results
{
    public static double AddRate;
    public static double DrainRate;
    public static readonly List<double> Latencies = [];
}

internal static class Handlers
{
    private static long handled;
    private static readonly TaskCompletionSource All = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private static long target = long.MaxValue;
    private static readonly ConcurrentDictionary<Guid, TaskCompletionSource<long>> Waiting = new();

    public static Task AllHandled(long count)
    {
        Interlocked.Exchange(ref target, count);
        if (Interlocked.Read(ref handled) >= count)
        {
            All.TrySetResult();
        }

        return All.Task;
    }

    public static long First { get; private set; }

    public static long Last { get; private set; }

    public static void Handled()
    {
        var now = Stopwatch.GetTimestamp();
        var count = Interlocked.Increment(ref handled);
        if (count == 1)
        {
            First = now;
        }

        if (count >= Interlocked.Read(ref target))
        {
            Last = now;
            All.TrySetResult();
        }
    }

    public static Task<long> Expect(Guid id) => Waiting.GetOrAdd(id, _ => new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously)).Task;

    public static void Started(Guid id) => Waiting.GetOrAdd(id, _ => new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult(Stopwatch.GetTimestamp());
}
