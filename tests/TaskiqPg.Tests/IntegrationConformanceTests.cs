using System.Diagnostics;
using Json.Schema;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Npgsql;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;

namespace TaskiqPg.Tests;

/// <summary>Aspire-style conformance of <c>AddTaskiqPgClient</c>: settings, one data source, switches, keyed registrations, schema.</summary>
public sealed class IntegrationConformanceTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private HostApplicationBuilder NewBuilder(params (string Key, string? Value)[] config)
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Configuration.AddInMemoryCollection([new("ConnectionStrings:db", db.ConnectionString), .. config.Select(c => new KeyValuePair<string, string?>(c.Key, c.Value))]);
        return builder;
    }

    [Fact]
    public void Settings_class_is_sealed() => Assert.True(typeof(TaskiqPgSettings).IsSealed);

    [Fact]
    public void Broker_result_backend_schedule_source_and_client_share_the_one_data_source_that_Aspire_Npgsql_registered()
    {
        var builder = NewBuilder();
        builder.AddTaskiqPgClient("db").AddTask("x", () => 1).AddWorker();
        using var host = builder.Build();

        var dataSource = host.Services.GetRequiredService<NpgsqlDataSource>();
        Assert.Single(builder.Services, d => d.ServiceType == typeof(NpgsqlDataSource));
        Assert.Same(dataSource, host.Services.GetRequiredService<PostgresBroker>().DataSource);
        Assert.Same(dataSource, host.Services.GetRequiredService<PostgresResultBackend>().DataSource);
        Assert.Same(dataSource, host.Services.GetRequiredService<TaskiqClient>().Broker.DataSource);
        Assert.Same(dataSource, host.Services.GetRequiredService<PostgresScheduleSource>().DataSource);
    }

    [Fact]
    public void A_data_source_the_app_registered_already_is_reused()
    {
        var builder = NewBuilder();
        builder.AddNpgsqlDataSource("db");
        builder.AddTaskiqPgClient("db");
        using var host = builder.Build();

        Assert.Single(builder.Services, d => d.ServiceType == typeof(NpgsqlDataSource));
        Assert.Same(host.Services.GetRequiredService<NpgsqlDataSource>(), host.Services.GetRequiredService<PostgresBroker>().DataSource);
    }

    [Fact]
    public async Task Host_disposes_the_data_source_and_TaskiqPg_never_does()
    {
        var builder = NewBuilder(("Aspire:TaskiqPg:Queue", "dispose_test"));
        builder.AddTaskiqPgClient("db");
        var host = builder.Build();
        var broker = host.Services.GetRequiredService<PostgresBroker>();
        await broker.KickAsync(TaskMessage.Create("x"));

        await broker.DisposeAsync();
        await using (var stillOpen = await host.Services.GetRequiredService<NpgsqlDataSource>().OpenConnectionAsync())
        {
            Assert.Equal(System.Data.ConnectionState.Open, stillOpen.State);
        }

        host.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await broker.DataSource.OpenConnectionAsync());
    }

    [Fact]
    public void Named_section_overrides_the_general_one_and_the_delegate_overrides_both()
    {
        var builder = NewBuilder(("Aspire:TaskiqPg:Queue", "general"), ("Aspire:TaskiqPg:MaxConcurrentTasks", "3"),
            ("Aspire:TaskiqPg:db:Queue", "named"), ("Aspire:TaskiqPg:db:LeaseDuration", "00:00:07"));
        builder.AddTaskiqPgClient("db", s => s.MaxConcurrentTasks = 5);
        using var host = builder.Build();

        var options = host.Services.GetRequiredService<IOptions<TaskiqPgOptions>>().Value;
        Assert.Equal("named", options.Broker.Queue);
        Assert.Equal(TimeSpan.FromSeconds(7), options.Broker.LeaseDuration);
        Assert.Equal(5, options.Worker.MaxConcurrentTasks);
    }

    [Fact]
    public void ConnectionStrings_entry_wins_over_the_settings_connection_string()
    {
        var builder = NewBuilder(("Aspire:TaskiqPg:ConnectionString", "Host=wrong.invalid;Database=nope"));
        builder.AddTaskiqPgClient("db");
        using var host = builder.Build();

        Assert.Equal(new NpgsqlConnectionStringBuilder(db.ConnectionString).Database,
            new NpgsqlConnectionStringBuilder(host.Services.GetRequiredService<NpgsqlDataSource>().ConnectionString).Database);
    }

    [Fact]
    public void Missing_connection_string_fails_naming_both_configuration_paths()
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.AddTaskiqPgClient("orders");
        using var host = builder.Build();

        var error = Assert.Throws<InvalidOperationException>(() => host.Services.GetRequiredService<PostgresBroker>());
        Assert.Contains("ConnectionStrings:orders", error.Message);
        Assert.Contains("Aspire:TaskiqPg", error.Message);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void DisableHealthChecks_turns_the_health_checks_off(bool disabled)
    {
        var builder = NewBuilder(("Aspire:TaskiqPg:DisableHealthChecks", disabled.ToString()));
        builder.AddTaskiqPgClient("db");
        using var host = builder.Build();

        var names = host.Services.GetRequiredService<IOptions<HealthCheckServiceOptions>>().Value.Registrations.Select(r => r.Name).ToArray();
        Assert.Equal(!disabled, names.Contains("TaskiqPg_listener"));
        Assert.Equal(!disabled, names.Contains("TaskiqPg_worker"));
        Assert.Equal(!disabled, names.Contains("PostgreSql"));
    }

    [Fact]
    public void Registering_twice_does_not_duplicate_health_checks()
    {
        var builder = NewBuilder();
        builder.AddTaskiqPgClient("db");
        builder.AddTaskiqPgClient("db");
        using var host = builder.Build();

        var names = host.Services.GetRequiredService<IOptions<HealthCheckServiceOptions>>().Value.Registrations.Select(r => r.Name).ToArray();
        Assert.Single(names, n => n == "TaskiqPg_listener");
    }

    [Fact]
    public async Task Keyed_registrations_get_their_own_components_and_health_checks()
    {
        var builder = NewBuilder(("ConnectionStrings:emails", db.ConnectionString), ("ConnectionStrings:reports", db.ConnectionString),
            ("Aspire:TaskiqPg:emails:Queue", "emails"), ("Aspire:TaskiqPg:reports:Queue", "reports"));
        builder.AddKeyedTaskiqPgClient("emails").AddTask("send", () => "sent").AddWorker();
        builder.AddKeyedTaskiqPgClient("reports").AddTask("build", () => "built").AddWorker();
        using var host = builder.Build();
        await host.StartAsync();

        var emails = host.Services.GetRequiredKeyedService<TaskiqClient>("emails");
        var reports = host.Services.GetRequiredKeyedService<TaskiqClient>("reports");
        Assert.Equal("emails", emails.Broker.Options.Queue);
        Assert.Equal("reports", reports.Broker.Options.Queue);
        Assert.Same(host.Services.GetRequiredKeyedService<NpgsqlDataSource>("emails"), emails.Broker.DataSource);
        Assert.Equal("sent", await (await emails.KickAsync<string>("send")).WaitForResultAsync(TimeSpan.FromSeconds(15)));
        Assert.Equal("built", await (await reports.KickAsync<string>("build")).WaitForResultAsync(TimeSpan.FromSeconds(15)));
        Assert.Equal(2, host.Services.GetServices<IHostedService>().OfType<TaskiqWorker>().Count());

        var names = host.Services.GetRequiredService<IOptions<HealthCheckServiceOptions>>().Value.Registrations.Select(r => r.Name).ToArray();
        Assert.Contains("TaskiqPg_listener_emails", names);
        Assert.Contains("TaskiqPg_worker_reports", names);
        Assert.Contains("PostgreSql_emails", names);
        var report = await host.Services.GetRequiredService<HealthCheckService>().CheckHealthAsync();
        Assert.Equal(HealthStatus.Healthy, report.Status);
        await host.StopAsync();
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task DisableTracing_turns_the_TaskiqPg_spans_off(bool disabled)
    {
        var exported = new List<Activity>();
        var builder = NewBuilder(("Aspire:TaskiqPg:DisableTracing", disabled.ToString()), ("Aspire:TaskiqPg:Queue", "tracing_" + disabled));
        builder.AddTaskiqPgClient("db");
        builder.Services.AddOpenTelemetry().WithTracing(t => t.AddInMemoryExporter(exported));
        using var host = builder.Build();
        await host.StartAsync();

        var handle = await host.Services.GetRequiredService<TaskiqClient>().KickAsync("anything");
        host.Services.GetRequiredService<TracerProvider>().ForceFlush();

        Assert.Equal(!disabled, exported.Any(a => a.Source.Name == TaskiqDiagnostics.SourceName && (string?)a.GetTagItem("messaging.message.id") == handle.TaskId));
        await host.StopAsync();
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task DisableMetrics_turns_the_TaskiqPg_meter_off(bool disabled)
    {
        var exported = new List<Metric>();
        var builder = NewBuilder(("Aspire:TaskiqPg:DisableMetrics", disabled.ToString()), ("Aspire:TaskiqPg:Queue", "metrics_" + disabled));
        builder.AddTaskiqPgClient("db");
        builder.Services.AddOpenTelemetry().WithMetrics(m => m.AddInMemoryExporter(exported));
        using var host = builder.Build();
        await host.StartAsync();

        await host.Services.GetRequiredService<TaskiqClient>().KickAsync("anything");
        host.Services.GetRequiredService<MeterProvider>().ForceFlush();

        Assert.Equal(!disabled, exported.Any(m => m.MeterName == TaskiqDiagnostics.MeterName && m.Name == "taskiqpg.tasks.kicked"));
        await host.StopAsync();
    }

    [Fact]
    public async Task DisableMigrations_leaves_the_schema_alone()
    {
        var schema = "nomig" + Guid.NewGuid().ToString("N")[..6];
        var builder = NewBuilder(("Aspire:TaskiqPg:DisableMigrations", "true"), ("Aspire:TaskiqPg:Schema", schema));
        builder.AddTaskiqPgClient("db");
        using var host = builder.Build();

        var error = await Assert.ThrowsAsync<PostgresException>(() => host.Services.GetRequiredService<TaskiqClient>().KickAsync("x"));
        Assert.Equal(PostgresErrorCodes.UndefinedTable, error.SqlState);
    }

    [Fact]
    public async Task Scheduler_role_syncs_static_schedules_fires_them_and_reports_health()
    {
        var suffix = Guid.NewGuid().ToString("N")[..6];
        var builder = NewBuilder(("Aspire:TaskiqPg:Queue", "sched_" + suffix));
        var ran = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        builder.AddTaskiqPgClient("db", s => s.Schema = "sched_" + suffix)
            .AddTask("heartbeat", () => ran.TrySetResult())
            .AddSchedule(new ScheduleDefinition { TaskName = "heartbeat", Interval = TimeSpan.FromSeconds(1) })
            .AddScheduler(o => o.RefreshInterval = TimeSpan.FromMilliseconds(500))
            .AddWorker();
        using var host = builder.Build();
        await host.StartAsync();

        await ran.Task.WaitAsync(TimeSpan.FromSeconds(20));
        var schedules = await host.Services.GetRequiredService<PostgresScheduleSource>().ListSchedulesAsync();
        Assert.True(Assert.Single(schedules).IsStatic);
        await Assert.ThrowsAsync<ScheduleValidationException>(() => host.Services.GetRequiredService<PostgresScheduleSource>()
            .AddScheduleAsync(new ScheduleDefinition { TaskName = "not_registered_here", Cron = "* * * * *" }));
        var report = await host.Services.GetRequiredService<HealthCheckService>().CheckHealthAsync();
        Assert.Equal(HealthStatus.Healthy, report.Entries["TaskiqPg_scheduler"].Status);
        Assert.Contains("fired", report.Entries["TaskiqPg_scheduler"].Description);
        await host.StopAsync();
    }

    [Fact]
    public void Configuration_schema_accepts_valid_settings_and_rejects_invalid_ones()
    {
        var schemaPath = Path.Combine(AppContext.BaseDirectory, "ConfigurationSchema.json");
        var schema = JsonSchema.FromText(File.ReadAllText(schemaPath));

        bool Valid(string json) => schema.Evaluate(System.Text.Json.JsonDocument.Parse(json).RootElement).IsValid;

        Assert.True(Valid("""{"Aspire":{"TaskiqPg":{"Queue":"emails","MaxConcurrentTasks":4,"LeaseDuration":"00:00:30","DisableTracing":true,"db":{"Queue":"x"}}}}"""));
        Assert.False(Valid("""{"Aspire":{"TaskiqPg":{"MaxConcurrentTasks":"many"}}}"""));
        Assert.False(Valid("""{"Aspire":{"TaskiqPg":{"MaxConcurrentTasks":0}}}"""));
        Assert.False(Valid("""{"Aspire":{"TaskiqPg":{"Queue":"bad;name"}}}"""));
        Assert.False(Valid("""{"Aspire":{"TaskiqPg":{"DisableHealthChecks":"yes"}}}"""));
        Assert.False(Valid("""{"Aspire":{"TaskiqPg":{"LeaseDuration":"soon"}}}"""));
    }
}
