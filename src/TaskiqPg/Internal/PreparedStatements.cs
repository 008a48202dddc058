using Npgsql;

namespace TaskiqPg.Internal;

/// <summary>
/// The single-row kick runs prepared: Npgsql keeps a prepared statement per physical connection, so it is parsed once
/// per pooled connection and preparing again is free. A multiplexing data source cannot prepare explicitly.
/// </summary>
/// <remarks>
/// Only statements whose generic plan is as good as a custom one. The array statements (claim, ack, fail, renew,
/// result upserts over <c>unnest</c>) are left unprepared on purpose: after five runs PostgreSQL switches a prepared
/// statement to a generic plan, and for those it picked plans that made the burn-down several times slower (see
/// docs/ARCHITECTURE.md, "Measured").
/// </remarks>
internal static class PreparedStatements
{
    public static bool AreSupported(NpgsqlDataSource dataSource)
        => !new NpgsqlConnectionStringBuilder(dataSource.ConnectionString).Multiplexing;

    /// <summary>
    /// Unprepared statements are the setting for a transaction-mode pooler, and behind one a pooled connection must not
    /// be reset when it goes back to Npgsql's pool: Npgsql then sends <c>DISCARD ALL</c> ahead of the connection's next
    /// command, in the same write, and the pooler may hand its server connection to another client once
    /// <c>DISCARD ALL</c> has returned while the rest of that write is still arriving. Seen with PgBouncer 1.18 under load
    /// after a pooler restart: <c>08P01: invalid frontend message type</c> on one server connection, and another held
    /// for two minutes waiting for the rest of a message, lapsing the leases of the tasks behind it.
    /// </summary>
    /// <exception cref="ArgumentException">Statements are unprepared and the data source resets pooled connections.</exception>
    public static void RequireNoResetWhenUnprepared(NpgsqlDataSource dataSource, bool prepareStatements)
    {
        var settings = new NpgsqlConnectionStringBuilder(dataSource.ConnectionString);
        if (!prepareStatements && settings is { Pooling: true, NoResetOnClose: false, Multiplexing: false })
        {
            throw new ArgumentException(
                "PrepareStatements = false is the setting for a transaction-mode pooler (PgBouncer), and behind one the connection " +
                "string also needs 'No Reset On Close=true' (NpgsqlConnectionStringBuilder.NoResetOnClose): otherwise Npgsql sends " +
                "DISCARD ALL ahead of the next command on every pooled connection, in the same write, and the pooler can route the " +
                "two to different server connections (08P01 'invalid frontend message type', a server connection stuck until its " +
                "client gives up).", nameof(dataSource));
        }
    }

    public static Task PrepareIfSupportedAsync(this NpgsqlCommand command, bool supported, CancellationToken cancellationToken)
        => supported ? command.PrepareAsync(cancellationToken) : Task.CompletedTask;

    public static Task PrepareIfSupportedAsync(this NpgsqlBatch batch, bool supported, CancellationToken cancellationToken)
        => supported ? batch.PrepareAsync(cancellationToken) : Task.CompletedTask;
}
