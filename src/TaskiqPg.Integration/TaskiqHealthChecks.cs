using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace TaskiqPg;

/// <summary>Healthy while the broker's LISTEN connection is up (only meaningful where a worker runs).</summary>
internal sealed class TaskiqListenerHealthCheck(PostgresBroker broker, bool hasWorker) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
        => Task.FromResult(!hasWorker
            ? HealthCheckResult.Healthy("No worker runs in this app, so no LISTEN connection is needed.")
            : broker.IsListening
                ? HealthCheckResult.Healthy($"Listening on channel '{broker.Options.Channel}'.")
                : HealthCheckResult.Unhealthy($"The LISTEN connection on channel '{broker.Options.Channel}' is down; reconnecting."));
}

/// <summary>Healthy while the worker's claim loop runs and has turned recently.</summary>
internal sealed class TaskiqWorkerHealthCheck(TaskiqWorker? worker, TimeSpan pollInterval) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        if (worker is null)
        {
            return Task.FromResult(HealthCheckResult.Healthy("No worker runs in this app."));
        }

        if (worker.ExecuteTask is { IsCompleted: true } finished)
        {
            return Task.FromResult(HealthCheckResult.Unhealthy($"The worker loop has stopped ({finished.Status}).", finished.Exception));
        }

        // The loop turns at least every poll interval; a retry backoff is at most a few seconds.
        var silent = DateTime.UtcNow - worker.LastLoopActivity;
        var limit = TimeSpan.FromTicks(Math.Max(pollInterval.Ticks * 3, TimeSpan.FromSeconds(30).Ticks));
        return Task.FromResult(worker.LastLoopActivity == default || silent <= limit
            ? HealthCheckResult.Healthy($"Worker {worker.WorkerId}: {worker.ActiveTasks} task(s) in flight.")
            : HealthCheckResult.Unhealthy($"Worker {worker.WorkerId}'s loop has not turned for {silent.TotalSeconds:0} s."));
    }
}
