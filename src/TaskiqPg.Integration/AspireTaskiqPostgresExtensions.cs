using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Npgsql;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;
using TaskiqPg;

namespace Microsoft.Extensions.Hosting;

/// <summary>
/// Aspire client integration: <c>builder.AddTaskiqPostgres("db")</c> registers the Aspire-managed
/// <see cref="NpgsqlDataSource"/> (through Aspire.Npgsql) and builds broker, result backend and client on it, borrowed.
/// </summary>
public static class AspireTaskiqPostgresExtensions
{
    /// <summary>Configuration section of the settings; <c>{section}:{name}</c> overrides it.</summary>
    public const string DefaultConfigSectionName = "Aspire:TaskiqPg";

    /// <summary>
    /// Registers TaskiqPg on the database named <paramref name="connectionName"/>. The <see cref="NpgsqlDataSource"/> is
    /// the one Aspire.Npgsql's <c>AddNpgsqlDataSource</c> registers (reused if the app registered it already); every
    /// component borrows it and the host disposes it. Add tasks and <c>.AddWorker()</c> on the returned builder.
    /// </summary>
    public static TaskiqPgBuilder AddTaskiqPostgres(this IHostApplicationBuilder builder, string connectionName,
        Action<TaskiqPostgresSettings>? configureSettings = null)
        => Add(builder, connectionName, serviceKey: null, configureSettings);

    /// <summary>
    /// Like <see cref="AddTaskiqPostgres"/>, registered under the key <paramref name="name"/> (its own data source,
    /// components, worker and health checks), e.g. for a second queue in one app.
    /// </summary>
    public static TaskiqPgBuilder AddKeyedTaskiqPostgres(this IHostApplicationBuilder builder, string name,
        Action<TaskiqPostgresSettings>? configureSettings = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        return Add(builder, name, serviceKey: name, configureSettings);
    }

    private static TaskiqPgBuilder Add(IHostApplicationBuilder builder, string connectionName, string? serviceKey,
        Action<TaskiqPostgresSettings>? configureSettings)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrEmpty(connectionName);

        var settings = new TaskiqPostgresSettings();
        var section = builder.Configuration.GetSection(DefaultConfigSectionName);
        section.Bind(settings);
        section.GetSection(connectionName).Bind(settings);
        if (builder.Configuration.GetConnectionString(connectionName) is { } connectionString)
        {
            settings.ConnectionString = connectionString;
        }

        configureSettings?.Invoke(settings);

        RegisterDataSource(builder, connectionName, serviceKey, settings);

        Action<TaskiqPgOptions> configure = o =>
        {
            o.Broker.Schema = settings.Schema;
            o.Broker.MessagesTable = settings.MessagesTable;
            o.Broker.Queue = settings.Queue;
            o.Broker.LeaseDuration = settings.LeaseDuration;
            o.Broker.RunMigrations = !settings.DisableMigrations;
            o.Results.Schema = settings.Schema;
            o.Results.ResultsTable = settings.ResultsTable;
            o.Results.RunMigrations = !settings.DisableMigrations;
            o.Schedules.Schema = settings.Schema;
            o.Schedules.RunMigrations = !settings.DisableMigrations;
            o.Worker.MaxConcurrentTasks = settings.MaxConcurrentTasks;
            o.Worker.PollInterval = settings.PollInterval;
        };
        NpgsqlDataSource DataSource(IServiceProvider sp) => serviceKey is null
            ? sp.GetRequiredService<NpgsqlDataSource>()
            : sp.GetRequiredKeyedService<NpgsqlDataSource>(serviceKey);
        var taskiq = serviceKey is null
            ? builder.Services.AddTaskiqPg(DataSource, configure)
            : builder.Services.AddKeyedTaskiqPg(serviceKey, DataSource, configure);

        if (!settings.DisableHealthChecks)
        {
            var suffix = serviceKey is null ? "" : "_" + serviceKey;
            builder.TryAddHealthCheck(new HealthCheckRegistration("TaskiqPg_listener" + suffix,
                sp => new TaskiqListenerHealthCheck(taskiq.Resolve<PostgresBroker>(sp), taskiq.HasWorker), failureStatus: null, tags: null));
            builder.TryAddHealthCheck(new HealthCheckRegistration("TaskiqPg_worker" + suffix,
                sp => new TaskiqWorkerHealthCheck(taskiq.HasWorker ? taskiq.Resolve<TaskiqWorker>(sp) : null, settings.PollInterval),
                failureStatus: null, tags: ["live"]));
            builder.TryAddHealthCheck(new HealthCheckRegistration("TaskiqPg_scheduler" + suffix,
                sp => new TaskiqSchedulerHealthCheck(taskiq.HasScheduler ? taskiq.Resolve<TaskiqScheduler>(sp) : null),
                failureStatus: null, tags: ["live"]));
        }

        if (!settings.DisableTracing)
        {
            builder.Services.AddOpenTelemetry().WithTracing(t => t.AddSource(TaskiqDiagnostics.SourceName));
        }

        if (!settings.DisableMetrics)
        {
            builder.Services.AddOpenTelemetry().WithMetrics(m => m.AddMeter(TaskiqDiagnostics.MeterName));
        }

        return taskiq;
    }

    private static void RegisterDataSource(IHostApplicationBuilder builder, string connectionName, string? serviceKey, TaskiqPostgresSettings settings)
    {
        var alreadyRegistered = builder.Services.Any(d => d.ServiceType == typeof(NpgsqlDataSource)
                                                          && (serviceKey is null ? !d.IsKeyedService : d.IsKeyedService && Equals(d.ServiceKey, serviceKey)));
        if (alreadyRegistered)
        {
            return; // one data source per app: reuse the one the app registered
        }

        if (string.IsNullOrWhiteSpace(settings.ConnectionString))
        {
            // Fail when the data source is first needed (as Aspire's components do), with both places to set it.
            var message = $"TaskiqPg: a connection string is missing. Provide it in 'ConnectionStrings:{connectionName}' "
                          + $"(the AppHost's WithReference does this) or in '{DefaultConfigSectionName}:{connectionName}:ConnectionString' "
                          + $"/ '{DefaultConfigSectionName}:ConnectionString'.";
            if (serviceKey is null)
            {
                builder.Services.AddSingleton<NpgsqlDataSource>(_ => throw new InvalidOperationException(message));
            }
            else
            {
                builder.Services.AddKeyedSingleton<NpgsqlDataSource>(serviceKey, (_, _) => throw new InvalidOperationException(message));
            }

            return;
        }

        void Configure(Aspire.Npgsql.NpgsqlSettings npgsql)
        {
            npgsql.ConnectionString = settings.ConnectionString;
            npgsql.DisableHealthChecks = settings.DisableHealthChecks;
            npgsql.DisableTracing = settings.DisableTracing;
            npgsql.DisableMetrics = settings.DisableMetrics;
        }

        if (serviceKey is null)
        {
            builder.AddNpgsqlDataSource(connectionName, Configure);
        }
        else
        {
            builder.AddKeyedNpgsqlDataSource(serviceKey, Configure);
        }
    }

    private static void TryAddHealthCheck(this IHostApplicationBuilder builder, HealthCheckRegistration registration)
    {
        // Registering twice (e.g. AddTaskiqPostgres called again) must not add duplicate checks.
        builder.Services.AddHealthChecks();
        builder.Services.Configure<HealthCheckServiceOptions>(options =>
        {
            if (options.Registrations.All(r => r.Name != registration.Name))
            {
                options.Registrations.Add(registration);
            }
        });
    }
}
