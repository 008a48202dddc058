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
    public static TaskiqPgBuilder AddTaskiqPg(this IServiceCollection services, string connectionString,
        Action<TaskiqPgOptions>? configure = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(connectionString);
        services.TryAddSingleton(_ => new OwnedDataSource(NpgsqlDataSource.Create(connectionString))); // a factory, so the container disposes it
        return services.AddTaskiqPg(sp => sp.GetRequiredService<OwnedDataSource>().DataSource, configure);
    }

    /// <summary>
    /// Registers broker, result backend and <see cref="TaskiqClient"/> on a data source the application owns (for
    /// example the one <c>AddNpgsqlDataSource</c> registers). It is borrowed: never disposed by TaskiqPg.
    /// </summary>
    public static TaskiqPgBuilder AddTaskiqPg(this IServiceCollection services, Func<IServiceProvider, NpgsqlDataSource> dataSource,
        Action<TaskiqPgOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(dataSource);
        var builder = new TaskiqPgBuilder(services);
        services.AddOptions<TaskiqPgOptions>();
        if (configure is not null)
        {
            services.Configure(configure);
        }

        services.TryAddSingleton(sp => new PostgresBroker(dataSource(sp), Options(sp).Broker, listenConnection: null, sp.GetService<ILoggerFactory>()));
        services.TryAddSingleton(sp => new PostgresResultBackend(dataSource(sp), Options(sp).Results, sp.GetService<ILoggerFactory>()));
        services.TryAddSingleton(sp =>
        {
            var registry = new TaskRegistry(Options(sp).SerializerOptions);
            builder.Registrations.ForEach(register => register(registry));
            return registry;
        });
        services.TryAddSingleton(sp => new TaskiqClient(sp.GetRequiredService<PostgresBroker>(), sp.GetRequiredService<PostgresResultBackend>(),
            Options(sp).SerializerOptions));
        services.TryAddSingleton(sp => new TaskiqWorker(sp.GetRequiredService<PostgresBroker>(), sp.GetRequiredService<TaskRegistry>(),
            sp.GetRequiredService<PostgresResultBackend>(), Options(sp).Worker, sp, sp.GetService<ILoggerFactory>()));
        return builder;
    }

    private static TaskiqPgOptions Options(IServiceProvider services) => services.GetRequiredService<IOptions<TaskiqPgOptions>>().Value;

    /// <summary>A data source created from a connection string; the container disposes it.</summary>
    private sealed class OwnedDataSource(NpgsqlDataSource dataSource) : IAsyncDisposable
    {
        public NpgsqlDataSource DataSource { get; } = dataSource;

        public ValueTask DisposeAsync() => DataSource.DisposeAsync();
    }
}
