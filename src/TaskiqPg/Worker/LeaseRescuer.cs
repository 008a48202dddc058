using Microsoft.Extensions.Logging;
using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// The worker's rescuer: every <see cref="TaskiqWorkerOptions.RescueInterval"/> (default <see cref="DefaultInterval"/>)
/// takes back tasks whose lease expired or whose worker stopped heartbeating (any worker's, not only this one's: the
/// rescue runs in every worker, and <c>FOR UPDATE SKIP LOCKED</c> splits the rows), forgets dead workers, writes the end
/// result of tasks that ran out of attempts or were cancelled under a dead worker (their waiters would wait forever),
/// and wakes the claim loop for the rows that became available again.
/// </summary>
internal sealed class LeaseRescuer(PostgresBroker broker, PostgresResultBackend? results, TimeSpan interval, Action wake, ILogger logger, string workerId)
{
    /// <summary>Half the lease, or half the heartbeat bound when that is shorter (a dead worker's tasks come back sooner).</summary>
    internal static TimeSpan DefaultInterval(PostgresBrokerOptions broker)
        => broker.WorkerStaleAfter is { } stale && stale < broker.LeaseDuration ? stale / 2 : broker.LeaseDuration / 2;

    public Task RunAsync(CancellationToken stop)
        => PeriodicLoop.RunAsync(interval, firstRoundAtOnce: true, RescueRoundAsync, ex => Log.LoopFailed(logger, ex, workerId, "rescue"), stop);

    private async Task RescueRoundAsync(CancellationToken stop)
    {
        var rescued = await broker.RescueExpiredLeasesAsync(cancellationToken: stop);
        await broker.ForgetDeadWorkersAsync(stop);
        if (rescued.Count == 0)
        {
            return;
        }

        var dead = rescued.Where(r => r.DeadLettered).ToArray();
        Log.LeasesRescued(logger, rescued.Count, dead.Length);
        var cancelled = rescued.Where(r => r.Cancelled).ToArray();
        if ((dead.Length > 0 || cancelled.Length > 0) && results is not null)
        {
            // Their waiters get the end: a lease lost on the last attempt, or a cancel the dead worker never finished.
            await results.SetResultsAsync(dead.Select(d => new KeyValuePair<string, TaskResult>(d.TaskId,
                    TaskiqWorker.ErrorResult("LeaseExpired", "The task's lease expired on its last attempt (its worker died or hung).", null, TimeSpan.Zero, null)))
                .Concat(cancelled.Select(c => new KeyValuePair<string, TaskResult>(c.TaskId,
                    TaskiqWorker.ErrorResult(CancelledTaskException.ErrorType, PostgresBroker.CancelledReason, null, TimeSpan.Zero, null))))
                .ToArray(), stop);
        }

        wake();
    }
}
