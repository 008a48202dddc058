using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Npgsql;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;
using TaskiqPg;

namespace Microsoft.Extensions.Hosting;

/// <summary>
/// Aspire client integration: <c>builder.AddTaskiqPgClient("db")</c> registers the Aspire-managed
/// <see cref="NpgsqlDataSource"/> (through Aspire.Npgsql) and builds broker, result backend and client on it, borrowed.
/// </summary>
public static class AspireTaskiqPgExtensions
{
    /// <summary>Configuration section of the settings; <c>{section}:{name}</c> overrides it.</summary>
    public const string DefaultConfigSectionName = "Aspire:TaskiqPg";

    /// <summary>Tag of the liveness checks (the service defaults map them at <c>/alive</c>).</summary>
    private const string LiveTag = "live";

    /// <summary>
    /// Registers TaskiqPg on the database named <paramref name="connectionName"/>. The <see cref="NpgsqlDataSource"/> is
    /// the one Aspire.Npgsql's <c>AddNpgsqlDataSource</c> registers (reused if the app registered it already); every
    /// component borrows it and the host disposes it. Add tasks and <c>.AddWorker()</c> on the returned builder.
    /// </summary>
    /// <param name="builder">The application builder.</param>
    /// <param name="connectionName">Name of the connection string (<c>ConnectionStrings:{connectionName}</c>), normally the
    /// name of the AppHost's queue or database resource.</param>
    /// <param name="configureSettings">Changes the settings after they were read from configuration.</param>
    /// <param name="configureDataSourceBuilder">Changes the <see cref="NpgsqlDataSourceBuilder"/> before the data source is
    /// built (type mappings, logging, tracing), as with Aspire.Npgsql's <c>AddNpgsqlDataSource</c>. Not called when the app
    /// registered its data source itself.</param>
    /// <returns>A builder to add tasks, schedules, a worker and a scheduler.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="builder"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="connectionName"/> is null or empty.</exception>
    public static TaskiqPgBuilder AddTaskiqPgClient(this IHostApplicationBuilder builder, string connectionName,
        Action<TaskiqPgSettings>? configureSettings = null, Action<NpgsqlDataSourceBuilder>? configureDataSourceBuilder = null)
        => Add(builder, connectionName, serviceKey: null, configureSettings, configureDataSourceBuilder);

    /// <summary>
    /// Like <see cref="AddTaskiqPgClient"/>, registered under the key <paramref name="name"/> (its own data source,
    /// components, worker and health checks), e.g. for a second queue in one app.
    /// </summary>
    /// <param name="builder">The application builder.</param>
    /// <param name="name">Connection name and service key.</param>
    /// <param name="configureSettings">Changes the settings after they were read from configuration.</param>
    /// <param name="configureDataSourceBuilder">Changes the <see cref="NpgsqlDataSourceBuilder"/> before the data source is built.</param>
    /// <returns>A builder to add tasks, schedules, a worker and a scheduler.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="builder"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="name"/> is null or empty.</exception>
    public static TaskiqPgBuilder AddKeyedTaskiqPgClient(this IHostApplicationBuilder builder, string name,
        Action<TaskiqPgSettings>? configureSettings = null, Action<NpgsqlDataSourceBuilder>? configureDataSourceBuilder = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        return Add(builder, name, serviceKey: name, configureSettings, configureDataSourceBuilder);
    }

    private static TaskiqPgBuilder Add(IHostApplicationBuilder builder, string connectionName, string? serviceKey,
        Action<TaskiqPgSettings>? configureSettings, Action<NpgsqlDataSourceBuilder>? configureDataSourceBuilder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrEmpty(connectionName);

        var settings = new TaskiqPgSettings();
        var section = builder.Configuration.GetSection(DefaultConfigSectionName);
        section.Bind(settings);
        section.GetSection(connectionName).Bind(settings);
        if (builder.Configuration.GetConnectionString(connectionName) is { } connectionString)
        {
            settings.ConnectionString = connectionString;
        }

        configureSettings?.Invoke(settings);

        RegisterDataSource(builder, connectionName, serviceKey, settings, configureDataSourceBuilder);

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
            Apply(settings, o);
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
            // Readiness checks judge what depends on the database; only the "_alive" ones are tagged live, and they judge
            // process-local state alone: a database outage must not get every pod restarted.
            TaskiqWorker? Worker(IServiceProvider sp) => taskiq.HasWorker ? taskiq.Resolve<TaskiqWorker>(sp) : null;
            TaskiqScheduler? Scheduler(IServiceProvider sp) => taskiq.HasScheduler ? taskiq.Resolve<TaskiqScheduler>(sp) : null;
            builder.TryAddHealthCheck(new HealthCheckRegistration("TaskiqPg_worker" + suffix,
                sp => new TaskiqWorkerReadinessCheck(Worker(sp)), failureStatus: null, tags: null));
            builder.TryAddHealthCheck(new HealthCheckRegistration("TaskiqPg_worker_alive" + suffix,
                sp => new TaskiqWorkerLivenessCheck(Worker(sp), settings.PollInterval), failureStatus: null, tags: [LiveTag]));
            builder.TryAddHealthCheck(new HealthCheckRegistration("TaskiqPg_scheduler" + suffix,
                sp => new TaskiqSchedulerReadinessCheck(Scheduler(sp)), failureStatus: null, tags: null));
            builder.TryAddHealthCheck(new HealthCheckRegistration("TaskiqPg_scheduler_alive" + suffix,
                sp => new TaskiqSchedulerLivenessCheck(Scheduler(sp)), failureStatus: null, tags: [LiveTag]));
        }

        if (!settings.DisableTracing)
        {
            builder.Services.AddOpenTelemetry().WithTracing(t => t.AddSource(TaskiqDiagnostics.SourceName));
        }

        if (!settings.TraceBackgroundWork && !builder.Services.Any(d => d.ServiceType == typeof(BackgroundWorkTraceFilter)))
        {
            builder.Services.AddSingleton<BackgroundWorkTraceFilter>();
            builder.Services.AddOpenTelemetry().WithTracing(t => t.AddProcessor(sp => sp.GetRequiredService<BackgroundWorkTraceFilter>()));
        }

        if (!settings.DisableMetrics)
        {
            builder.Services.AddOpenTelemetry().WithMetrics(m => m.AddMeter(TaskiqDiagnostics.MeterName));
        }

        return taskiq;
    }

    private static void RegisterDataSource(IHostApplicationBuilder builder, string connectionName, string? serviceKey, TaskiqPgSettings settings,
        Action<NpgsqlDataSourceBuilder>? configureDataSourceBuilder)
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
            // Behind a transaction-mode pooler a reused connection must not be reset: the DISCARD ALL Npgsql sends ahead of
            // its next command can reach another server connection than that command (PostgresBrokerOptions.PrepareStatements).
            npgsql.ConnectionString = settings.DisablePreparedStatements
                ? new NpgsqlConnectionStringBuilder(settings.ConnectionString) { NoResetOnClose = true }.ConnectionString
                : settings.ConnectionString;
            // The user's Aspire:Npgsql settings stand; ours can only turn more off.
            npgsql.DisableHealthChecks |= settings.DisableHealthChecks;
            npgsql.DisableTracing |= settings.DisableTracing;
            npgsql.DisableMetrics |= settings.DisableMetrics;
        }

        if (serviceKey is null)
        {
            builder.AddNpgsqlDataSource(connectionName, Configure, configureDataSourceBuilder);
        }
        else
        {
            builder.AddKeyedNpgsqlDataSource(serviceKey, Configure, configureDataSourceBuilder);
        }
    }

    /// <summary>Applies the optional settings (null leaves the component's own default).</summary>
    private static void Apply(TaskiqPgSettings s, TaskiqPgOptions o)
    {
        o.Worker.PrefetchCount = s.PrefetchCount ?? o.Worker.PrefetchCount;
        o.Worker.ClaimBatchSize = s.ClaimBatchSize ?? o.Worker.ClaimBatchSize;
        o.Worker.AckMode = s.AckMode ?? o.Worker.AckMode;
        o.Worker.DefaultTaskTimeout = s.DefaultTaskTimeout ?? o.Worker.DefaultTaskTimeout;
        o.Worker.ShutdownTimeout = s.ShutdownTimeout ?? o.Worker.ShutdownTimeout;
        o.Worker.HeartbeatInterval = s.HeartbeatInterval ?? o.Worker.HeartbeatInterval;
        o.Worker.PruneInterval = s.PruneInterval ?? o.Worker.PruneInterval;
        o.Worker.Queues = s.Queues ?? o.Worker.Queues;
        o.Worker.QueueOrder = s.QueueOrder ?? o.Worker.QueueOrder;
        o.Worker.QueueWeights = s.QueueWeights ?? o.Worker.QueueWeights;
        o.Broker.DefaultMaxAttempts = s.DefaultMaxAttempts ?? o.Broker.DefaultMaxAttempts;
        o.Broker.RetryBaseDelay = s.RetryBaseDelay ?? o.Broker.RetryBaseDelay;
        o.Broker.RetryMaxDelay = s.RetryMaxDelay ?? o.Broker.RetryMaxDelay;
        o.Broker.CompletedRetention = s.CompletedRetention ?? o.Broker.CompletedRetention;
        o.Broker.CancelledRetention = s.CancelledRetention ?? o.Broker.CancelledRetention;
        o.Broker.DiscardedRetention = s.DiscardedRetention ?? o.Broker.DiscardedRetention;
        o.Broker.MaxMessageBytes = s.MaxMessageBytes ?? o.Broker.MaxMessageBytes;
        o.Broker.NotifyTaskIds |= s.NotifyTaskIds;
        o.Broker.PrepareStatements &= !s.DisablePreparedStatements;
        if (s.ListenConnectionString is { } listen)
        {
            o.Broker.ListenConnectionString = o.Results.ListenConnectionString = o.Schedules.ListenConnectionString = listen;
        }

        if (s.PollOnly)
        {
            o.Broker.PollOnly = o.Results.PollOnly = o.Schedules.PollOnly = true;
        }

        o.Results.KeepResults = s.KeepResults ?? o.Results.KeepResults;
        o.Results.StoreStackTraces = s.StoreStackTraces ?? o.Results.StoreStackTraces;
        if (s.ResultTtl is { } ttl)
        {
            o.Results.ResultTtl = ttl == Timeout.InfiniteTimeSpan ? null : ttl;
        }

        o.Scheduler.RefreshInterval = s.SchedulerRefreshInterval ?? o.Scheduler.RefreshInterval;
    }

    private static void TryAddHealthCheck(this IHostApplicationBuilder builder, HealthCheckRegistration registration)
    {
        // Registering twice (e.g. AddTaskiqPgClient called again) must not add duplicate checks.
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
