using Npgsql;
using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// Expiry: results past their time to live are deleted in batches of <see cref="PostgresResultBackendOptions.PruneBatchSize"/>,
/// every <see cref="PostgresResultBackendOptions.PruneInterval"/> by the backend's own loop or on demand.
/// </summary>
public sealed partial class PostgresResultBackend
{
    /// <summary>Deletes expired results in batches of <see cref="PostgresResultBackendOptions.PruneBatchSize"/>.</summary>
    /// <returns>The number of results deleted.</returns>
    /// <param name="cancellationToken">Cancels the call; batches already committed stay deleted.</param>
    public async Task<long> PruneExpiredAsync(CancellationToken cancellationToken = default)
    {
        long total = 0;
        while (true)
        {
            await using var command = DataSource.CreateCommand(_sql.Prune);
            command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = Options.PruneBatchSize });
            var deleted = await command.ExecuteNonQueryAsync(cancellationToken);
            total += deleted;
            if (deleted < Options.PruneBatchSize)
            {
                return total;
            }
        }
    }

    private async Task PruneLoopAsync(TimeSpan interval, CancellationToken stop)
    {
        BackgroundWork.Enter(); // inside this async method: the marker flows to the loop, not back to the caller
        await PeriodicLoop.RunAsync(interval, firstRoundAtOnce: false, PruneExpiredAsync, ex => Log.PruneFailed(_logger, ex), stop);
    }
}
