using Npgsql;

namespace TaskiqPg.Internal;

/// <summary>
/// One physical connection outside the data source's pool (and outside its <c>MaxPoolSize</c>), never multiplexed:
/// for the LISTEN connections and the lease renewals, which must work while handlers hold every pooled connection.
/// </summary>
internal static class PhysicalConnection
{
    /// <summary>An unopened connection with the data source's settings and password, <c>Pooling=false</c>, named for <paramref name="purpose"/>.</summary>
    public static NpgsqlConnection Create(NpgsqlDataSource dataSource, string purpose)
    {
        // CloneWith keeps the data source's password (also one from a password provider) without us ever handling it.
        using var template = dataSource.CreateConnection();
        var builder = new NpgsqlConnectionStringBuilder(template.ConnectionString)
        {
            Pooling = false,
            Multiplexing = false,
            KeepAlive = 15,
        };
        Name(builder, purpose);
        return template.CloneWith(builder.ConnectionString);
    }

    /// <summary>An unopened connection from a connection string of its own (a LISTEN connection past a pooler), <c>Pooling=false</c>.</summary>
    public static NpgsqlConnection Create(string connectionString, string purpose)
    {
        var builder = new NpgsqlConnectionStringBuilder(connectionString)
        {
            Pooling = false,
            Multiplexing = false,
            KeepAlive = 15,
        };
        Name(builder, purpose);
        return new NpgsqlConnection(builder.ConnectionString);
    }

    private static void Name(NpgsqlConnectionStringBuilder builder, string purpose)
        => builder.ApplicationName = string.IsNullOrEmpty(builder.ApplicationName) ? "taskiqpg-" + purpose : builder.ApplicationName + " (" + purpose + ")";
}
