using System.Net.Sockets;
using Npgsql;

namespace TaskiqPg.Internal;

/// <summary>
/// Which failures mean "the database is restarting, unreachable or overloaded; the same statement may succeed later"
/// rather than "PostgreSQL refuses this statement for its data or its definition" (retrying that forever would stall
/// everything queued behind it).
/// </summary>
internal static class TransientErrors
{
    /// <summary>Npgsql's message (not localized) when a multi-host data source has no host left to try.</summary>
    internal const string NoSuitableHost = "No suitable host was found.";

    /// <summary>
    /// Connection-level failures: refused, reset, timed out, server shutting down or starting, and no suitable host of a
    /// multi-host connection string — a failover in progress (every host down, or none writable yet). Npgsql reports
    /// the last as not transient, either around an <see cref="AggregateException"/> of the per-host errors or, while
    /// every host is remembered as unsuitable, as a bare <see cref="NoSuitableHost"/> with no inner exception.
    /// </summary>
    public static bool IsConnectionFailure(Exception ex) => ex switch
    {
        PostgresException pg => pg.IsTransient || pg.SqlState is "57P01" or "57P02" or "57P03",
        NpgsqlException npgsql => npgsql.IsTransient
                                  || npgsql.InnerException is IOException or SocketException or TimeoutException or AggregateException
                                  || (npgsql.InnerException is null && npgsql.Message == NoSuitableHost),
        TimeoutException or SocketException or IOException => true,
        _ => false,
    };

    /// <summary>
    /// True only for failures that retrying can fix: connection loss, a rolled-back transaction (serialization failure,
    /// deadlock), exhausted server resources, a cancelled statement (timeout), a lock not available, a server
    /// shutting down or starting, an I/O error on the server. False for data and definition errors (invalid text,
    /// constraint violations, missing tables, permissions) and for every non-database exception.
    /// </summary>
    public static bool IsTransient(Exception ex) => ex switch
    {
        PostgresException pg => IsTransientSqlState(pg.SqlState),
        _ => IsConnectionFailure(ex),
    };

    /// <summary>
    /// SQLSTATE classes 08 (connection), 40 (transaction rollback), 53 (insufficient resources), 58 (system error) and
    /// 57014 (query cancelled), 57P01–57P03 (shutdown, crash, starting), 55P03 (lock not available).
    /// </summary>
    internal static bool IsTransientSqlState(string sqlState)
        => sqlState.Length == 5 && (sqlState[..2] is "08" or "40" or "53" or "58"
                                    || sqlState is "57014" or "57P01" or "57P02" or "57P03" or "55P03");
}
