using Microsoft.Extensions.Logging;
using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// The worker's pruner: every <see cref="TaskiqWorkerOptions.PruneInterval"/> (default 30 s) deletes finished rows of the
/// worker's queues past their retention (<see cref="PostgresBrokerOptions.CompletedRetention"/> and the others), in
/// batches of <see cref="BatchSize"/> per queue and state, at most <see cref="BatchesPerRound"/> batches a round: a large
/// backlog of expired rows is worked off over rounds, never in one long delete that holds locks and bloats the WAL.
/// </summary>
internal sealed class QueuePruner(PostgresBroker broker, IReadOnlyList<string> queues, TimeSpan interval, ILogger logger, string workerId)
{
    /// <summary>Rows deleted per prune statement (per finished state).</summary>
    internal const int BatchSize = 1000;

    /// <summary>Prune statements per queue and round at most.</summary>
    internal const int BatchesPerRound = 20;

    public Task RunAsync(CancellationToken stop)
        => PeriodicLoop.RunAsync(interval, firstRoundAtOnce: false, PruneRoundAsync, ex => Log.LoopFailed(logger, ex, workerId, "prune"), stop);

    private async Task PruneRoundAsync(CancellationToken stop)
    {
        long pruned = 0;
        for (var i = 0; i < BatchesPerRound; i++)
        {
            long most = 0; // a queue with a full batch has more to prune
            foreach (var queue in queues)
            {
                var deleted = await broker.PruneFinishedAsync(queue, BatchSize, stop);
                pruned += deleted;
                most = Math.Max(most, deleted);
            }

            if (most < BatchSize)
            {
                break;
            }
        }

        if (pruned > 0)
        {
            Log.FinishedPruned(logger, workerId, pruned);
        }
    }
}
