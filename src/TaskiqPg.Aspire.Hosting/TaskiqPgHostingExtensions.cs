using Aspire.Hosting.ApplicationModel;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using TaskiqPg;

namespace Aspire.Hosting;

/// <summary>AppHost entry points for TaskiqPg: PostgreSQL from a container, a local server or a connection string, plus the schema.</summary>
public static class TaskiqPgHostingExtensions
{
    /// <summary>Configuration key that picks the mode: <c>auto</c> (default), <c>container</c>, <c>local</c> or <c>external</c>.</summary>
    public const string ModeConfigurationKey = "TaskiqPg:PostgresMode";

    /// <summary>Configuration key for the local server's data folder (default <c>.pgdata/{server}</c> under the AppHost folder).</summary>
    public const string LocalDataDirectoryConfigurationKey = "TaskiqPg:LocalDataDirectory";

    /// <summary>
    /// Adds PostgreSQL and a database for TaskiqPg. <see cref="TaskiqPgDatabaseMode.Auto"/> (default, or the value of
    /// <see cref="ModeConfigurationKey"/>) uses a container when a container runtime answers and a local server
    /// otherwise; <see cref="TaskiqPgDatabaseMode.External"/> reads <c>ConnectionStrings:{databaseName}</c>.
    /// </summary>
    /// <returns>The database, to pass to <c>WithReference</c> and <c>WaitFor</c>.</returns>
    /// <param name="builder">The AppHost builder.</param>
    /// <param name="serverName">The PostgreSQL server resource's name.</param>
    /// <param name="databaseName">The database resource's name (also the database's name and the connection string name).</param>
    /// <param name="mode">Container, local server, external connection string, or auto (container when a runtime answers).</param>
    /// <exception cref="InvalidOperationException">The configured mode is not one of auto, container, local or external.</exception>
    public static IResourceBuilder<IResourceWithConnectionString> AddTaskiqPgDatabase(this IDistributedApplicationBuilder builder,
        string serverName, string databaseName, TaskiqPgDatabaseMode mode = TaskiqPgDatabaseMode.Auto)
    {
        ArgumentNullException.ThrowIfNull(builder);
        // Publishing describes the deployment: always the real PostgreSQL resource (a container resource in the manifest),
        // never the local server of the machine that happens to publish, and no probe of its container runtime.
        mode = builder.ExecutionContext.IsPublishMode && ResolveConfigured(builder.Configuration, mode) != TaskiqPgDatabaseMode.External
            ? TaskiqPgDatabaseMode.Container
            : ResolveMode(builder.Configuration, mode);
        return mode switch
        {
            TaskiqPgDatabaseMode.Container => builder.AddPostgres(serverName).AddDatabase(databaseName),
            TaskiqPgDatabaseMode.Local => builder.AddLocalPostgres(serverName, dataDirectory: builder.Configuration[LocalDataDirectoryConfigurationKey])
                .AddDatabase(databaseName),
            TaskiqPgDatabaseMode.External => builder.AddConnectionString(databaseName),
            _ => throw new ArgumentOutOfRangeException(nameof(mode), mode, null),
        };
    }

    /// <summary>The requested mode, or the configured one when <see cref="TaskiqPgDatabaseMode.Auto"/> was requested.</summary>
    private static TaskiqPgDatabaseMode ResolveConfigured(IConfiguration configuration, TaskiqPgDatabaseMode requested)
        => requested == TaskiqPgDatabaseMode.Auto && configuration[ModeConfigurationKey] is { Length: > 0 } configured
            ? Enum.TryParse<TaskiqPgDatabaseMode>(configured, ignoreCase: true, out var parsed)
                ? parsed
                : throw new InvalidOperationException($"'{ModeConfigurationKey}' is '{configured}'; use auto, container, local or external.")
            : requested;

    internal static TaskiqPgDatabaseMode ResolveMode(IConfiguration configuration, TaskiqPgDatabaseMode requested)
    {
        requested = ResolveConfigured(configuration, requested);
        if (requested != TaskiqPgDatabaseMode.Auto)
        {
            return requested;
        }

        return ContainerRuntimeProbe.IsHealthy(TimeSpan.FromSeconds(10)) ? TaskiqPgDatabaseMode.Container : TaskiqPgDatabaseMode.Local;
    }
}
