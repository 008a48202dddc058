using System.Security.Cryptography;
using Aspire.Hosting.ApplicationModel;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;
using TaskiqPg.LocalServer;

namespace Aspire.Hosting;

/// <summary>
/// Adds a PostgreSQL server run from the locally installed binaries (no container runtime needed). The public shape
/// follows <c>AddPostgres(...).AddDatabase(...)</c>, so switching between the two is one line.
/// </summary>
public static class LocalPostgresBuilderExtensions
{
    /// <summary>
    /// Adds a local PostgreSQL server as an executable resource: initdb into <paramref name="dataDirectory"/> (default
    /// <c>.pgdata/{name}</c> under the AppHost folder, kept between runs), a DCP-allocated port on 127.0.0.1, scram
    /// password auth, run as the <c>postgres</c> OS user when the AppHost is root.
    /// </summary>
    /// <param name="builder">The AppHost builder.</param>
    /// <param name="name">Resource name (also the connection string name of the server).</param>
    /// <param name="password">Superuser password; default a generated one kept next to the data folder (it must
    /// stay the same for a kept cluster).</param>
    /// <param name="dataDirectory">Data folder; default <c>{AppHostDirectory}/.pgdata/{name}</c>.</param>
    /// <exception cref="PostgresNotFoundException">No PostgreSQL server binaries are installed (says what to install).</exception>
    /// <returns>The server resource, to add databases to.</returns>
    public static IResourceBuilder<LocalPostgresServerResource> AddLocalPostgres(this IDistributedApplicationBuilder builder, string name,
        IResourceBuilder<ParameterResource>? password = null, string? dataDirectory = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrEmpty(name);

        var binaries = PostgresBinaries.Find();
        var cluster = new PostgresCluster(
            PostgresCluster.ResolveDataDirectory(dataDirectory ?? Path.Combine(builder.AppHostDirectory, ".pgdata", name)), binaries);
        var passwordParameter = password?.Resource
            ?? builder.AddParameter($"{name}-password", () => ReadOrCreatePassword(cluster), secret: true).Resource;
        var (command, args) = cluster.ServerCommand(port: null, new Dictionary<string, string>());
        var server = new LocalPostgresServerResource(name, command, builder.AppHostDirectory, cluster, "postgres", passwordParameter);

        string? connectionString = null;
        builder.Eventing.Subscribe<BeforeResourceStartedEvent>(server, async (_, ct) =>
        {
            // A server left running by an earlier AppHost (e.g. killed) still holds the folder: stop it first.
            await cluster.StopStaleServerAsync(ct);
            await cluster.InitializeAsync(server.UserName, await passwordParameter.GetValueAsync(ct) ?? "", ct);
        });
        builder.Eventing.Subscribe<ConnectionStringAvailableEvent>(server, async (_, ct) =>
            connectionString = await server.ConnectionStringExpression.GetValueAsync(ct));
        builder.Eventing.Subscribe<ResourceReadyEvent>(server, async (_, ct) =>
        {
            await using var connection = new NpgsqlConnection(ServerConnectionString(connectionString, name));
            await connection.OpenAsync(ct);
            foreach (var database in server.Databases.Values)
            {
                await CreateDatabaseAsync(connection, database, ct);
            }
        });

        var healthCheckKey = $"{name}_check";
        builder.Services.AddHealthChecks().AddNpgSql(_ => ServerConnectionString(connectionString, name), name: healthCheckKey);

        return builder.AddResource(server)
            .WithArgs([.. args])
            .WithEndpoint(name: LocalPostgresServerResource.PrimaryEndpointName, scheme: "tcp", env: "PGPORT")
            .WithIconName("DatabaseMultiple")
            .WithHealthCheck(healthCheckKey)
            .ExcludeFromManifest();
    }

    /// <summary>Adds a database, created on the server when the server is ready (an existing one is kept).</summary>
    /// <param name="builder">The server.</param>
    /// <param name="name">The resource name (also the connection string name).</param>
    /// <param name="databaseName">The database's name on the server; default: <paramref name="name"/>.</param>
    /// <returns>The database resource, to pass to <c>WithReference</c> and <c>WaitFor</c>.</returns>
    /// <exception cref="ArgumentException"><paramref name="name"/> is null or empty.</exception>
    public static IResourceBuilder<LocalPostgresDatabaseResource> AddDatabase(this IResourceBuilder<LocalPostgresServerResource> builder,
        string name, string? databaseName = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrEmpty(name);
        var database = new LocalPostgresDatabaseResource(name, databaseName ?? name, builder.Resource);
        builder.Resource.AddDatabase(name, database.DatabaseName);

        string? connectionString = null;
        builder.ApplicationBuilder.Eventing.Subscribe<ConnectionStringAvailableEvent>(database, async (_, ct) =>
            connectionString = await database.ConnectionStringExpression.GetValueAsync(ct));
        var healthCheckKey = $"{name}_check";
        builder.ApplicationBuilder.Services.AddHealthChecks().AddNpgSql(
            _ => connectionString ?? throw new InvalidOperationException($"The connection string of '{name}' is not available yet."), name: healthCheckKey);

        // Aspire mirrors a container's state onto its child databases, not an executable's: do it here, so the
        // database shows Running, gets health-checked and releases whatever WaitFor()s it.
        builder.ApplicationBuilder.Eventing.Subscribe<InitializeResourceEvent>(database, (e, ct) =>
        {
            var stopping = e.Services.GetRequiredService<Microsoft.Extensions.Hosting.IHostApplicationLifetime>().ApplicationStopping;
            _ = MirrorParentStateAsync(e.Notifications, database, stopping);
            return Task.CompletedTask;
        });

        return builder.ApplicationBuilder.AddResource(database)
            .WithHealthCheck(healthCheckKey)
            .ExcludeFromManifest();
    }

    private static async Task MirrorParentStateAsync(ResourceNotificationService notifications, LocalPostgresDatabaseResource database,
        CancellationToken stopping)
    {
        try
        {
            await foreach (var update in notifications.WatchAsync(stopping))
            {
                if (ReferenceEquals(update.Resource, database.Parent))
                {
                    var parent = update.Snapshot;
                    await notifications.PublishUpdateAsync(database, s => s with
                    {
                        State = parent.State,
                        StartTimeStamp = parent.StartTimeStamp,
                        StopTimeStamp = parent.StopTimeStamp,
                    });
                }
            }
        }
        catch (OperationCanceledException)
        {
            // the AppHost is stopping
        }
    }

    internal static async Task CreateDatabaseAsync(NpgsqlConnection connection, string databaseName, CancellationToken cancellationToken)
    {
        var quoted = new NpgsqlCommandBuilder().QuoteIdentifier(databaseName);
        await using var command = new NpgsqlCommand($"CREATE DATABASE {quoted}", connection);
        try
        {
            await command.ExecuteNonQueryAsync(cancellationToken);
        }
        catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.DuplicateDatabase)
        {
            // kept from an earlier run
        }
    }

    private static string ServerConnectionString(string? connectionString, string name)
        => (connectionString ?? throw new InvalidOperationException($"The connection string of '{name}' is not available yet.")) + ";Database=postgres";

    private static string ReadOrCreatePassword(PostgresCluster cluster)
    {
        // Kept beside (not inside) the data folder, readable by the AppHost's user only: a kept cluster needs the same
        // password on every run, and a parameter generated per run would lock the AppHost out of its own server.
        var file = cluster.DataDirectory + ".password";
        if (File.Exists(file))
        {
            return File.ReadAllText(file).Trim();
        }

        Directory.CreateDirectory(Path.GetDirectoryName(file)!);
        var password = Convert.ToHexString(RandomNumberGenerator.GetBytes(18)).ToLowerInvariant();
        File.WriteAllText(file, password);
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(file, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }

        return password;
    }
}
