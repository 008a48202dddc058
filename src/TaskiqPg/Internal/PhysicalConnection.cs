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
        builder.ApplicationName = string.IsNullOrEmpty(builder.ApplicationName) ? "taskiqpg-" + purpose : builder.ApplicationName + " (" + purpose + ")";
        return template.CloneWith(builder.ConnectionString);
    }
}
