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

    public static Task PrepareIfSupportedAsync(this NpgsqlCommand command, bool supported, CancellationToken cancellationToken)
        => supported ? command.PrepareAsync(cancellationToken) : Task.CompletedTask;
}
