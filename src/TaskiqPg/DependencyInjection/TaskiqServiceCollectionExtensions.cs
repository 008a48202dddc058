using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Npgsql;

namespace TaskiqPg;

/// <summary>Registers TaskiqPg's broker, result backend, client, tasks and worker in DI.</summary>
public static class TaskiqServiceCollectionExtensions
{
    /// <summary>
    /// Registers broker, result backend and <see cref="TaskiqClient"/> on one <see cref="NpgsqlDataSource"/> built from
    /// <paramref name="connectionString"/> and owned (disposed) by the container.
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="connectionString">An Npgsql connection string; a second call must pass the same one.</param>
    /// <param name="configure">Configures the broker, result backend, schedule source, worker and scheduler options.</param>
    /// <returns>A builder to add tasks, schedules, a worker and a scheduler.</returns>
    /// <exception cref="ArgumentException"><paramref name="connectionString"/> is null or empty.</exception>
    /// <exception cref="InvalidOperationException">An earlier call registered another connection string or a data source.</exception>
    public static TaskiqPgBuilder AddTaskiqPg(this IServiceCollection services, string connectionString,
        Action<TaskiqPgOptions>? configure = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(connectionString);
        ArgumentNullException.ThrowIfNull(services);
        if (FindRegistration(services, serviceKey: null) is { } existing && existing.ConnectionString != connectionString)
        {
            throw new InvalidOperationException(existing.ConnectionString is null
                ? "AddTaskiqPg was already called with a data source; a second call cannot change it to a connection string. Call it with the same data source (or without changing it), or use AddKeyedTaskiqPg for another database."
                : "AddTaskiqPg was already called with another connection string. Call it again with the same one to add tasks, or use AddKeyedTaskiqPg for another database.");
        }

        services.TryAddSingleton(_ => new OwnedDataSource(NpgsqlDataSource.Create(connectionString))); // a factory, so the container disposes it
        var builder = services.AddTaskiqPg(sp => sp.GetRequiredService<OwnedDataSource>().DataSource, configure);
        FindRegistration(services, serviceKey: null)!.ConnectionString = connectionString;
        return builder;
    }

    /// <summary>
    /// Registers broker, result backend and <see cref="TaskiqClient"/> on a data source the application owns (for
    /// example the one <c>AddNpgsqlDataSource</c> registers). It is borrowed: never disposed by TaskiqPg.
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="dataSource">Returns the application's data source; called once, when the broker is first resolved.</param>
    /// <param name="configure">Configures the broker, result backend, schedule source, worker and scheduler options.</param>
    /// <returns>A builder to add tasks, schedules, a worker and a scheduler.</returns>
    public static TaskiqPgBuilder AddTaskiqPg(this IServiceCollection services, Func<IServiceProvider, NpgsqlDataSource> dataSource,
        Action<TaskiqPgOptions>? configure = null)
        => AddCore(services, serviceKey: null, dataSource, configure);

    /// <summary>
    /// Registers a second, independent set (broker, result backend, client, worker) under <paramref name="serviceKey"/>,
    /// e.g. for another queue; resolve it with <c>GetRequiredKeyedService&lt;TaskiqClient&gt;(serviceKey)</c>.
    /// The data source is borrowed.
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="serviceKey">The key every service of this set is registered under.</param>
    /// <param name="dataSource">Returns the data source of this set; called once, when its broker is first resolved.</param>
    /// <param name="configure">Configures this set's options (a named options instance under <paramref name="serviceKey"/>).</param>
    /// <returns>A builder to add tasks, schedules, a worker and a scheduler to this set.</returns>
    /// <exception cref="ArgumentException"><paramref name="serviceKey"/> is null or empty.</exception>
    public static TaskiqPgBuilder AddKeyedTaskiqPg(this IServiceCollection services, string serviceKey,
        Func<IServiceProvider, NpgsqlDataSource> dataSource, Action<TaskiqPgOptions>? configure = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(serviceKey);
        return AddCore(services, serviceKey, dataSource, configure);
    }

    private static TaskiqPgBuilder AddCore(IServiceCollection services, string? serviceKey, Func<IServiceProvider, NpgsqlDataSource> dataSource,
        Action<TaskiqPgOptions>? configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(dataSource);
        var optionsName = serviceKey ?? Options.DefaultName;
        if (configure is not null)
        {
            services.Configure(optionsName, configure);
        }

        // A second call with the same key adds to the first (its tasks, options, worker): one registry, one worker.
        // The data source of the first call is the one used.
        if (FindRegistration(services, serviceKey) is { } existing)
        {
            return new TaskiqPgBuilder(services, serviceKey, existing);
        }

        var registration = new TaskiqPgRegistration();
        services.Add(new ServiceDescriptor(typeof(TaskiqPgRegistration), serviceKey, registration));
        var builder = new TaskiqPgBuilder(services, serviceKey, registration);
        services.AddOptions<TaskiqPgOptions>(optionsName);

        TaskiqPgOptions OptionsOf(IServiceProvider sp) => sp.GetRequiredService<IOptionsMonitor<TaskiqPgOptions>>().Get(optionsName);

        Add(services, serviceKey, sp => new PostgresBroker(dataSource(sp), OptionsOf(sp).Broker, listenConnection: null, sp.GetService<ILoggerFactory>()));
        Add(services, serviceKey, sp => new PostgresResultBackend(dataSource(sp), OptionsOf(sp).Results, sp.GetService<ILoggerFactory>()));
        Add(services, serviceKey, sp =>
        {
            var options = OptionsOf(sp).Schedules;
            if (options.KnownTaskNames is null && builder.Registrations.Count > 0)
            {
                // This app registers tasks: refuse schedules for tasks it does not know.
                options = options with { KnownTaskNames = builder.Resolve<TaskRegistry>(sp).Tasks.Select(t => t.Name).ToArray() };
            }

            return new PostgresScheduleSource(dataSource(sp), options, sp.GetService<ILoggerFactory>()) { SerializerOptions = OptionsOf(sp).SerializerOptions };
        });
        Add(services, serviceKey, sp => new TaskiqScheduler(builder.Resolve<PostgresScheduleSource>(sp), builder.Resolve<PostgresBroker>(sp),
            OptionsOf(sp).Scheduler, sp.GetService<ILoggerFactory>()));
        Add(services, serviceKey, sp =>
        {
            var registry = new TaskRegistry(OptionsOf(sp).SerializerOptions);
            builder.Registrations.ForEach(register => register(registry));
            return registry;
        });
        Add(services, serviceKey, sp => new TaskiqClient(builder.Resolve<PostgresBroker>(sp), builder.Resolve<PostgresResultBackend>(sp), OptionsOf(sp).SerializerOptions));
        Add(services, serviceKey, sp => new TaskiqWorker(builder.Resolve<PostgresBroker>(sp), builder.Resolve<TaskRegistry>(sp),
            builder.Resolve<PostgresResultBackend>(sp), OptionsOf(sp).Worker, sp, sp.GetService<ILoggerFactory>()));
        return builder;
    }

    private static TaskiqPgRegistration? FindRegistration(IServiceCollection services, string? serviceKey)
        => services.FirstOrDefault(d => d.ServiceType == typeof(TaskiqPgRegistration) && Equals(d.ServiceKey, serviceKey)) is { } descriptor
            ? (TaskiqPgRegistration)(descriptor.IsKeyedService ? descriptor.KeyedImplementationInstance : descriptor.ImplementationInstance)!
            : null;

    private static void Add<T>(IServiceCollection services, string? serviceKey, Func<IServiceProvider, T> factory)
        where T : class
    {
        if (serviceKey is null)
        {
            services.TryAddSingleton(factory);
        }
        else
        {
            services.TryAddKeyedSingleton(serviceKey, (sp, _) => factory(sp));
        }
    }

    /// <summary>A data source created from a connection string; the container disposes it.</summary>
    private sealed class OwnedDataSource(NpgsqlDataSource dataSource) : IAsyncDisposable
    {
        public NpgsqlDataSource DataSource { get; } = dataSource;

        public ValueTask DisposeAsync() => DataSource.DisposeAsync();
    }
}
