using Npgsql;
using TaskiqPg.LocalServer;

[assembly: AssemblyFixture(typeof(TaskiqPg.Tests.PostgresServerFixture))]

namespace TaskiqPg.Tests;

/// <summary>
/// One PostgreSQL server for the whole test run: a throwaway local server (initdb into a temp folder, free port,
/// run as user postgres when root; stopped and deleted at the end), or the server named by TASKIQPG_TEST_CONNECTION.
/// </summary>
public sealed class PostgresServerFixture : IAsyncLifetime
{
    public const string ConnectionVariable = "TASKIQPG_TEST_CONNECTION";

    private LocalPostgresServer? _server;

    /// <summary>Superuser connection string to the maintenance database.</summary>
    public string AdminConnectionString { get; private set; } = "";

    /// <summary>The password in use (tests check it never leaks).</summary>
    public string Password => new NpgsqlConnectionStringBuilder(AdminConnectionString).Password ?? "";

    public async ValueTask InitializeAsync()
    {
        var external = Environment.GetEnvironmentVariable(ConnectionVariable);
        if (!string.IsNullOrWhiteSpace(external))
        {
            AdminConnectionString = external;
            return;
        }

        _server = await LocalPostgresServer.StartAsync(new LocalPostgresServerOptions
        {
            // A throwaway server: durability buys nothing here and costs seconds.
            Settings = new Dictionary<string, string>
            {
                ["fsync"] = "off",
                ["synchronous_commit"] = "off",
                ["full_page_writes"] = "off",
                ["max_connections"] = "300",
            },
        });
        AdminConnectionString = _server.GetConnectionString();
    }

    /// <summary>Creates a fresh database and returns a connection string to it.</summary>
    public async Task<string> CreateDatabaseAsync(string prefix)
    {
        var name = $"{prefix}_{Guid.NewGuid():N}"[..Math.Min(prefix.Length + 13, 63)].ToLowerInvariant();
        await using var admin = new NpgsqlConnection(AdminConnectionString);
        await admin.OpenAsync();
        await using var create = new NpgsqlCommand($"CREATE DATABASE \"{name}\"", admin);
        await create.ExecuteNonQueryAsync();
        return new NpgsqlConnectionStringBuilder(AdminConnectionString) { Database = name }.ConnectionString;
    }

    public async Task DropDatabaseAsync(string connectionString)
    {
        var name = new NpgsqlConnectionStringBuilder(connectionString).Database!;
        NpgsqlConnection.ClearAllPools();
        await using var admin = new NpgsqlConnection(AdminConnectionString);
        await admin.OpenAsync();
        await using var drop = new NpgsqlCommand($"DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)", admin);
        await drop.ExecuteNonQueryAsync();
    }

    public async ValueTask DisposeAsync()
    {
        if (_server is not null)
        {
            await _server.DisposeAsync();
        }
    }
}
