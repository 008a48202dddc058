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
        if (worker.LastLoopActivity == default)
        {
            return Task.FromResult(DateTime.UtcNow - worker.CreatedAt <= limit
                ? HealthCheckResult.Healthy("The worker is starting.")
                : HealthCheckResult.Unhealthy($"The worker has not started its loop after {(DateTime.UtcNow - worker.CreatedAt).TotalSeconds:0} s (is the database reachable and migrated?)."));
        }

        if (silent > limit)
        {
            return Task.FromResult(HealthCheckResult.Unhealthy($"Worker {worker.WorkerId}'s loop has not turned for {silent.TotalSeconds:0} s."));
        }

        // Outcomes that cannot be written: past a lease, their tasks may be rescued and run again elsewhere.
        if (worker.CompletionsFailingSince is { } since)
        {
            var failing = DateTime.UtcNow - since;
            var message = $"Worker {worker.WorkerId} has not been able to write the outcomes of {worker.UnreportedCompletions} task(s) for {failing.TotalSeconds:0.#} s.";
            return Task.FromResult(failing > worker.LeaseDuration ? HealthCheckResult.Unhealthy(message) : HealthCheckResult.Degraded(message));
        }

        return Task.FromResult(HealthCheckResult.Healthy($"Worker {worker.WorkerId}: {worker.ActiveTasks} task(s) in flight."));
    }
}

/// <summary>Healthy while the scheduler loop runs and has looked at the schedules recently.</summary>
internal sealed class TaskiqSchedulerHealthCheck(TaskiqScheduler? scheduler) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        if (scheduler is null)
        {
            return Task.FromResult(HealthCheckResult.Healthy("No scheduler runs in this app."));
        }

        if (scheduler.ExecuteTask is { IsCompleted: true } finished)
        {
            return Task.FromResult(HealthCheckResult.Unhealthy($"The scheduler loop has stopped ({finished.Status}).", finished.Exception));
        }

        // The loop ticks at least every refresh interval; a database outage stops the ticks (lag grows).
        var lag = DateTime.UtcNow - scheduler.LastTick;
        var limit = TimeSpan.FromTicks(Math.Max(scheduler.RefreshInterval.Ticks * 3, TimeSpan.FromSeconds(15).Ticks));
        if (scheduler.LastTick == default)
        {
            return Task.FromResult(DateTime.UtcNow - scheduler.CreatedAt <= limit
                ? HealthCheckResult.Healthy("The scheduler is starting.")
                : HealthCheckResult.Unhealthy($"The scheduler has not looked at its schedules after {(DateTime.UtcNow - scheduler.CreatedAt).TotalSeconds:0} s (is the database reachable and migrated?)."));
        }

        if (lag > limit)
        {
            return Task.FromResult(HealthCheckResult.Unhealthy($"The scheduler has not looked at its schedules for {lag.TotalSeconds:0} s."));
        }

        return Task.FromResult(scheduler.FailedSchedules > 0
            ? HealthCheckResult.Degraded($"{scheduler.FailedSchedules} schedule(s) could not fire in the last tick (see the logs); the others fire.")
            : HealthCheckResult.Healthy($"{scheduler.Fires} instant(s) fired by this scheduler."));
    }
}
