using System.Diagnostics;
using System.Reflection;
using System.Text.Json;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Npgsql;
using OpenTelemetry.Trace;

namespace TaskiqPg.Tests;

/// <summary>
/// The service side of the Aspire integration: liveness that a database outage leaves alone, every option from
/// configuration, the data-source hook, the user's Aspire:Npgsql settings, and an idle queue that adds no traces.
/// </summary>
public sealed class ServiceSideTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    private HostApplicationBuilder NewBuilder(string connectionString, params (string Key, string? Value)[] config)
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Configuration.AddInMemoryCollection([new("ConnectionStrings:db", connectionString), .. config.Select(c => new KeyValuePair<string, string?>(c.Key, c.Value))]);
        return builder;
    }

    private static string Unique(string prefix) => prefix + Guid.NewGuid().ToString("N")[..8];

    [Fact]
    public async Task A_database_outage_turns_readiness_Unhealthy_while_liveness_stays_Healthy()
    {
        var target = new NpgsqlConnectionStringBuilder(db.ConnectionString);
        await using var proxy = new TcpProxy(target.Host!, target.Port);
        var proxied = new NpgsqlConnectionStringBuilder(db.ConnectionString) { Port = proxy.Port, Timeout = 2 }.ConnectionString;
        var schema = Unique("health_");
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var running = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var builder = NewBuilder(proxied, ("Aspire:TaskiqPg:Schema", schema), ("Aspire:TaskiqPg:LeaseDuration", "00:00:01"),
            ("Aspire:TaskiqPg:PollInterval", "00:00:00.100"), ("Aspire:TaskiqPg:SchedulerRefreshInterval", "00:00:00.200"));
        builder.AddTaskiqPgClient("db")
            .AddTask("gated", async () =>
            {
                running.TrySetResult();
                await gate.Task;
                return "done";
            })
            .AddSchedule(new ScheduleDefinition { TaskName = "gated", Cron = "0 0 1 1 *" })
            .AddScheduler()
            .AddWorker();
        using var host = builder.Build();
        await host.StartAsync();
        var health = host.Services.GetRequiredService<HealthCheckService>();
        Task<HealthReport> Alive() => health.CheckHealthAsync(r => r.Tags.Contains("live"));
        Task<HealthReport> Ready() => health.CheckHealthAsync();

        var liveNames = host.Services.GetRequiredService<IOptions<HealthCheckServiceOptions>>().Value.Registrations
            .Where(r => r.Tags.Contains("live")).Select(r => r.Name).Order().ToArray();
        Assert.Equal(["TaskiqPg_scheduler_alive", "TaskiqPg_worker_alive"], liveNames);
        await Eventually.TrueAsync(async () => (await Ready()).Status == HealthStatus.Healthy, Bound, "ready once worker and scheduler run");

        await host.Services.GetRequiredService<TaskiqClient>().KickAsync("gated");
        await running.Task.WaitAsync(Bound);
        proxy.Cut(); // the database is gone: claims, ticks, and the outcome of the running task all fail
        gate.SetResult();

        var livenessDuringOutage = new List<HealthStatus>();
        await Eventually.TrueAsync(async () =>
        {
            livenessDuringOutage.Add((await Alive()).Status);
            var ready = await Ready();
            return ready.Entries["TaskiqPg_worker"].Status == HealthStatus.Unhealthy
                   && ready.Entries["TaskiqPg_scheduler"].Status == HealthStatus.Unhealthy
                   && ready.Entries["TaskiqPg_worker"].Description!.Contains("outcomes");
        }, Bound, "readiness reports the outage: the outcome is unwritable past its lease, the scheduler cannot tick");
        var alive = await Alive();
        Assert.Equal(HealthStatus.Healthy, alive.Status);
        Assert.All(livenessDuringOutage, s => Assert.Equal(HealthStatus.Healthy, s));
        var worker = host.Services.GetServices<IHostedService>().OfType<TaskiqWorker>().Single();
        Assert.NotNull(worker.ClaimsFailingSince);
        Assert.NotNull(host.Services.GetServices<IHostedService>().OfType<TaskiqScheduler>().Single().TicksFailingSince);

        proxy.Restore();
        await Eventually.TrueAsync(async () => (await Ready()).Status == HealthStatus.Healthy, Bound, "ready again once the database is back");
        Assert.Null(worker.ClaimsFailingSince);
        await host.StopAsync();
    }

    [Fact]
    public async Task Worker_liveness_fails_when_its_loop_has_stopped()
    {
        var builder = NewBuilder(db.ConnectionString, ("Aspire:TaskiqPg:Schema", Unique("stopped_")));
        builder.AddTaskiqPgClient("db").AddWorker();
        using var host = builder.Build();
        await host.StartAsync();
        var health = host.Services.GetRequiredService<HealthCheckService>();
        await Eventually.TrueAsync(async () => (await health.CheckHealthAsync(r => r.Tags.Contains("live"))).Status == HealthStatus.Healthy, Bound, "alive while running");

        await host.StopAsync(); // the loop ends: a process whose worker stopped is not alive
        var report = await health.CheckHealthAsync(r => r.Tags.Contains("live"));
        Assert.Equal(HealthStatus.Unhealthy, report.Entries["TaskiqPg_worker_alive"].Status);
    }

    [Fact]
    public void Settings_class_and_configuration_schema_list_the_same_settings_with_matching_types()
    {
        using var schemaDocument = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "ConfigurationSchema.json")));
        var properties = schemaDocument.RootElement.GetProperty("properties").GetProperty("Aspire").GetProperty("properties")
            .GetProperty("TaskiqPg").GetProperty("properties");
        var inSchema = properties.EnumerateObject().ToDictionary(p => p.Name, p => p.Value);
        var inClass = typeof(TaskiqPgSettings).GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Where(p => p.CanWrite).ToDictionary(p => p.Name);

        Assert.Equal(inClass.Keys.Order(), inSchema.Keys.Order());
        foreach (var (name, property) in inClass)
        {
            var type = Nullable.GetUnderlyingType(property.PropertyType) ?? property.PropertyType;
            var schema = inSchema[name];
            var expected = type == typeof(bool) ? "boolean"
                : type == typeof(int) ? "integer"
                : type == typeof(string) || type == typeof(TimeSpan) || type.IsEnum ? "string"
                : type.IsArray ? "array"
                : type.IsGenericType && type.GetGenericTypeDefinition() == typeof(Dictionary<,>) ? "object"
                : throw new InvalidOperationException($"{name}: no schema type for {type}");
            Assert.True(expected == schema.GetProperty("type").GetString(), $"{name} is {type.Name} in the class but '{schema.GetProperty("type")}' in the schema");
            if (type == typeof(TimeSpan))
            {
                Assert.True(schema.TryGetProperty("pattern", out _), $"{name}: a TimeSpan needs the TimeSpan pattern");
            }

            if (type.IsEnum)
            {
                Assert.Equal(Enum.GetNames(type), schema.GetProperty("enum").EnumerateArray().Select(e => e.GetString()));
            }

            Assert.False(string.IsNullOrWhiteSpace(schema.GetProperty("description").GetString()), $"{name} has no description");
        }
    }

    [Fact]
    public void Every_worker_broker_result_and_scheduler_setting_from_configuration_reaches_the_components()
    {
        var builder = NewBuilder(db.ConnectionString,
            ("Aspire:TaskiqPg:PrefetchCount", "7"), ("Aspire:TaskiqPg:ClaimBatchSize", "33"), ("Aspire:TaskiqPg:AckMode", "WhenExecuted"),
            ("Aspire:TaskiqPg:DefaultTaskTimeout", "00:02:00"), ("Aspire:TaskiqPg:ShutdownTimeout", "00:00:45"),
            ("Aspire:TaskiqPg:HeartbeatInterval", "00:00:03"), ("Aspire:TaskiqPg:PruneInterval", "00:01:00"),
            ("Aspire:TaskiqPg:Queues:0", "high"), ("Aspire:TaskiqPg:Queues:1", "low"), ("Aspire:TaskiqPg:QueueOrder", "Weighted"),
            ("Aspire:TaskiqPg:QueueWeights:high", "3"), ("Aspire:TaskiqPg:DefaultMaxAttempts", "5"),
            ("Aspire:TaskiqPg:RetryBaseDelay", "00:00:02"), ("Aspire:TaskiqPg:RetryMaxDelay", "00:10:00"),
            ("Aspire:TaskiqPg:CompletedRetention", "00:00:00"), ("Aspire:TaskiqPg:CancelledRetention", "02:00:00"),
            ("Aspire:TaskiqPg:DiscardedRetention", "-00:00:00.001"), ("Aspire:TaskiqPg:MaxMessageBytes", "4096"),
            ("Aspire:TaskiqPg:KeepResults", "false"), ("Aspire:TaskiqPg:ResultTtl", "-00:00:00.001"),
            ("Aspire:TaskiqPg:StoreStackTraces", "false"), ("Aspire:TaskiqPg:SchedulerRefreshInterval", "00:00:09"),
            ("Aspire:TaskiqPg:DisablePreparedStatements", "true"));
        builder.AddTaskiqPgClient("db").AddWorker();
        using var host = builder.Build();

        var o = host.Services.GetRequiredService<IOptions<TaskiqPgOptions>>().Value;
        Assert.Equal(7, o.Worker.PrefetchCount);
        Assert.Equal(33, o.Worker.ClaimBatchSize);
        Assert.Equal(AckMode.WhenExecuted, o.Worker.AckMode);
        Assert.Equal(TimeSpan.FromMinutes(2), o.Worker.DefaultTaskTimeout);
        Assert.Equal(TimeSpan.FromSeconds(45), o.Worker.ShutdownTimeout);
        Assert.Equal(TimeSpan.FromSeconds(3), o.Worker.HeartbeatInterval);
        Assert.Equal(TimeSpan.FromMinutes(1), o.Worker.PruneInterval);
        Assert.Equal(["high", "low"], o.Worker.Queues!);
        Assert.Equal(QueueOrder.Weighted, o.Worker.QueueOrder);
        Assert.Equal(3, o.Worker.QueueWeights!["high"]);
        Assert.Equal(5, o.Broker.DefaultMaxAttempts);
        Assert.Equal(TimeSpan.FromSeconds(2), o.Broker.RetryBaseDelay);
        Assert.Equal(TimeSpan.FromMinutes(10), o.Broker.RetryMaxDelay);
        Assert.Equal(TimeSpan.Zero, o.Broker.CompletedRetention);
        Assert.Equal(TimeSpan.FromHours(2), o.Broker.CancelledRetention);
        Assert.Equal(Timeout.InfiniteTimeSpan, o.Broker.DiscardedRetention);
        Assert.Equal(4096, o.Broker.MaxMessageBytes);
        Assert.False(o.Broker.PrepareStatements);
        // ... and the data source it registers does not reset reused connections (a transaction pooler would split the reset).
        Assert.True(new NpgsqlConnectionStringBuilder(host.Services.GetRequiredService<NpgsqlDataSource>().ConnectionString).NoResetOnClose);
        Assert.False(o.Results.KeepResults);
        Assert.Null(o.Results.ResultTtl);
        Assert.False(o.Results.StoreStackTraces);
        Assert.Equal(TimeSpan.FromSeconds(9), o.Scheduler.RefreshInterval);

        // The worker is built from them: it claims from both queues, weighted.
        var worker = host.Services.GetServices<IHostedService>().OfType<TaskiqWorker>().Single();
        Assert.NotNull(worker);
        // The host's shutdown timeout covers the configured worker shutdown timeout.
        Assert.True(host.Services.GetRequiredService<IOptions<HostOptions>>().Value.ShutdownTimeout >= TimeSpan.FromSeconds(45));
    }

    [Fact]
    public void Unset_settings_leave_the_components_defaults()
    {
        var builder = NewBuilder(db.ConnectionString);
        builder.AddTaskiqPgClient("db").AddWorker();
        using var host = builder.Build();

        var o = host.Services.GetRequiredService<IOptions<TaskiqPgOptions>>().Value;
        var defaults = new TaskiqPgOptions();
        Assert.Equal(defaults.Worker with { }, o.Worker with { });
        Assert.Equal(defaults.Broker.CompletedRetention, o.Broker.CompletedRetention);
        Assert.True(o.Broker.PrepareStatements);
        Assert.Equal(defaults.Results.ResultTtl, o.Results.ResultTtl);
        Assert.Equal(defaults.Results.KeepResults, o.Results.KeepResults);
        Assert.Equal(defaults.Scheduler.RefreshInterval, o.Scheduler.RefreshInterval);
    }

    [Fact]
    public void The_data_source_builder_hook_runs_on_the_registered_data_source()
    {
        var builder = NewBuilder(db.ConnectionString);
        builder.AddTaskiqPgClient("db", configureDataSourceBuilder: b => b.ConnectionStringBuilder.ApplicationName = "hooked_app");
        using var host = builder.Build();

        Assert.Equal("hooked_app", new NpgsqlConnectionStringBuilder(host.Services.GetRequiredService<NpgsqlDataSource>().ConnectionString).ApplicationName);
    }

    [Fact]
    public void The_users_Aspire_Npgsql_switches_are_not_overwritten()
    {
        var builder = NewBuilder(db.ConnectionString, ("Aspire:Npgsql:DisableHealthChecks", "true"));
        builder.AddTaskiqPgClient("db");
        using var host = builder.Build();

        var names = host.Services.GetRequiredService<IOptions<HealthCheckServiceOptions>>().Value.Registrations.Select(r => r.Name).ToArray();
        Assert.DoesNotContain(names, n => n.StartsWith("PostgreSql", StringComparison.Ordinal));
        Assert.Contains("TaskiqPg_worker", names); // ours stay: only Npgsql's check was turned off
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task An_idle_worker_and_scheduler_add_no_traces_while_a_tasks_own_statements_stay_in_its_trace(bool traceBackgroundWork)
    {
        var exported = new LockedList<Activity>();
        // A database of its own: Npgsql's activity source is process-wide, so spans of other tests reach this exporter too.
        var connectionString = await db.Server.CreateDatabaseAsync("traces");
        var database = new NpgsqlConnectionStringBuilder(connectionString).Database;
        var queue = Unique("traces_");
        bool Ours(Activity a) => a.Source.Name == "Npgsql"
            ? Equals(a.GetTagItem("db.namespace") ?? a.GetTagItem("db.name"), database)
            : a.Source.Name != TaskiqDiagnostics.SourceName || Equals(a.GetTagItem("messaging.destination.name"), queue);
        var builder = NewBuilder(connectionString, ("Aspire:TaskiqPg:Queue", queue), ("Aspire:TaskiqPg:PollInterval", "00:00:00.050"),
            ("Aspire:TaskiqPg:SchedulerRefreshInterval", "00:00:00.100"), ("Aspire:TaskiqPg:HeartbeatInterval", "00:00:00.200"),
            ("Aspire:TaskiqPg:LeaseDuration", "00:00:00.900"), ("Aspire:TaskiqPg:TraceBackgroundWork", traceBackgroundWork.ToString()));
        builder.AddTaskiqPgClient("db")
            .AddTask("query", async (NpgsqlDataSource dataSource) =>
            {
                await using var command = dataSource.CreateCommand("SELECT 'inside the handler'");
                return (string)(await command.ExecuteScalarAsync())!;
            })
            .AddSchedule(new ScheduleDefinition { TaskName = "query", Cron = "0 0 1 1 *" })
            .AddScheduler()
            .AddWorker();
        builder.Services.AddOpenTelemetry().WithTracing(t => t.AddInMemoryExporter(exported));
        using var host = builder.Build();
        await host.StartAsync();
        var worker = host.Services.GetServices<IHostedService>().OfType<TaskiqWorker>().Single();
        var scheduler = host.Services.GetServices<IHostedService>().OfType<TaskiqScheduler>().Single();
        var tracer = host.Services.GetRequiredService<TracerProvider>();

        // Idle: a second of every loop turning (a claim every 50 ms, heartbeats every 200 ms, a scheduler tick every 100 ms).
        await Eventually.TrueAsync(() => worker.LastLoopActivity != default && scheduler.LastTick != default, Bound, "the loops run");
        var idleFrom = DateTime.UtcNow;
        await Eventually.TrueAsync(() => worker.LastLoopActivity > idleFrom.AddSeconds(1) && scheduler.LastTick > idleFrom.AddSeconds(1),
            Bound, "a second of turns while idle");
        tracer.ForceFlush();
        var idleRoots = exported.Snapshot().Where(a => Ours(a) && a.ParentSpanId == default && a.StartTimeUtc >= idleFrom).ToArray();

        if (traceBackgroundWork)
        {
            Assert.Contains(idleRoots, a => a.Source.Name == "Npgsql"); // the switch turns them back on: the filter is what removes them
        }
        else
        {
            Assert.True(idleRoots.Length == 0, $"idle roots: {string.Join(", ", idleRoots.Select(a => $"{a.Source.Name}:{a.DisplayName}:{a.GetTagItem("db.query.text") ?? a.GetTagItem("db.statement")} at {(a.StartTimeUtc - idleFrom).TotalMilliseconds:0} ms for {a.Duration.TotalMilliseconds:0} ms"))}");
        }

        // A task's trace: kick (producer) → process (consumer) → the handler's own statement.
        var handle = await host.Services.GetRequiredService<TaskiqClient>().KickAsync<string>("query");
        Assert.Equal("inside the handler", await handle.WaitForResultAsync(Bound));
        tracer.ForceFlush();
        var spans = exported.Snapshot();
        var consumer = spans.Single(a => a.Kind == ActivityKind.Consumer && (string?)a.GetTagItem("messaging.message.id") == handle.TaskId);
        Assert.Contains(spans, a => a.Source.Name == "Npgsql" && a.ParentSpanId == consumer.SpanId);
        var producer = spans.Single(a => a.Kind == ActivityKind.Producer && (string?)a.GetTagItem("messaging.message.id") == handle.TaskId);
        Assert.Contains(spans, a => a.Source.Name == "Npgsql" && a.ParentSpanId == producer.SpanId); // the kick's INSERT

        // A scheduled fire, kicked from the scheduler's background loop, is still a whole trace: producer → consumer → statement.
        await host.Services.GetRequiredService<PostgresScheduleSource>().AddScheduleAsync(new ScheduleDefinition { TaskName = "query", RunAt = DateTimeOffset.UtcNow });
        Activity? fired = null;
        await Eventually.TrueAsync(() =>
        {
            tracer.ForceFlush();
            fired = exported.Snapshot().FirstOrDefault(a => Ours(a) && a.Kind == ActivityKind.Consumer && (string?)a.GetTagItem("messaging.message.id") != handle.TaskId);
            return fired is not null;
        }, Bound, "the scheduled task ran");
        spans = exported.Snapshot();
        Assert.Contains(spans, a => a.Kind == ActivityKind.Producer && a.SpanId == fired!.ParentSpanId);
        Assert.Contains(spans, a => a.Source.Name == "Npgsql" && a.ParentSpanId == fired!.SpanId);

        await host.StopAsync();
        await db.Server.DropDatabaseAsync(connectionString);
    }
}

/// <summary>A list the exporter may add to from any thread while the test reads it.</summary>
internal sealed class LockedList<T> : ICollection<T>
{
    private readonly List<T> _items = [];

    public int Count { get { lock (_items) { return _items.Count; } } }

    public bool IsReadOnly => false;

    public T[] Snapshot() { lock (_items) { return [.. _items]; } }

    public void Add(T item) { lock (_items) { _items.Add(item); } }

    public void Clear() { lock (_items) { _items.Clear(); } }

    public bool Contains(T item) { lock (_items) { return _items.Contains(item); } }

    public void CopyTo(T[] array, int arrayIndex) { lock (_items) { _items.CopyTo(array, arrayIndex); } }

    public bool Remove(T item) { lock (_items) { return _items.Remove(item); } }

    public IEnumerator<T> GetEnumerator() => ((IEnumerable<T>)Snapshot()).GetEnumerator();

    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
}

