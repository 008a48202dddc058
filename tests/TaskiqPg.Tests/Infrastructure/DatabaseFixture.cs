using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>A database of its own for one test class, dropped afterwards.</summary>
public sealed class DatabaseFixture(PostgresServerFixture server) : IAsyncLifetime
{
    private readonly List<NpgsqlDataSource> _dataSources = [];

    public PostgresServerFixture Server { get; } = server;

    public string ConnectionString { get; private set; } = "";

    public async ValueTask InitializeAsync() => ConnectionString = await Server.CreateDatabaseAsync("t");

    /// <summary>A data source on this database, disposed with the fixture.</summary>
    public NpgsqlDataSource CreateDataSource(int? maxPoolSize = null, string? applicationName = null)
    {
        var builder = new NpgsqlConnectionStringBuilder(ConnectionString);
        if (maxPoolSize is { } max)
        {
            builder.MaxPoolSize = max;
        }

        if (applicationName is not null)
        {
            builder.ApplicationName = applicationName;
        }

        var dataSource = NpgsqlDataSource.Create(builder.ConnectionString);
        lock (_dataSources)
        {
            _dataSources.Add(dataSource);
        }

        return dataSource;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var dataSource in _dataSources)
        {
            await dataSource.DisposeAsync();
        }

        await Server.DropDatabaseAsync(ConnectionString);
    }
}
