using System.Net.Sockets;
using Npgsql;

namespace TaskiqPg.Internal;

/// <summary>Which failures mean "the database is restarting or unreachable; try again" rather than a bug or bad input.</summary>
internal static class TransientErrors
{
    /// <summary>Connection-level failures: refused, reset, timed out, server shutting down or starting.</summary>
    public static bool IsConnectionFailure(Exception ex) => ex switch
    {
        PostgresException pg => pg.IsTransient || pg.SqlState is "57P01" or "57P02" or "57P03",
        NpgsqlException npgsql => npgsql.IsTransient || npgsql.InnerException is IOException or SocketException or TimeoutException,
        TimeoutException or SocketException or IOException => true,
        _ => false,
    };

    /// <summary>Anything a background loop should log and retry: connection failures and every other database error.</summary>
    public static bool IsRetryable(Exception ex)
        => IsConnectionFailure(ex) || ex is NpgsqlException || (ex is InvalidOperationException && ex.Source == "Npgsql");
}
