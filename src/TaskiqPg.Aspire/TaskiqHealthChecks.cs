using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace TaskiqPg;

/// <summary>
/// Readiness of the broker's notifications (only meaningful where a worker runs): Healthy while its LISTEN connection is
/// up and a probe NOTIFY sent through the data source arrives on it (checked at most every
/// <see cref="VerifyEvery"/>); Unhealthy while the connection is down, or up but deaf (behind a transaction-mode
/// pooler). Poll-only mode needs no LISTEN connection and is Healthy.
/// </summary>
internal sealed class TaskiqListenerHealthCheck(PostgresBroker broker, bool hasWorker) : IHealthCheck
{
    internal static readonly TimeSpan VerifyEvery = TimeSpan.FromSeconds(30);
    private long _verifiedAtTicks;

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var channel = broker.Options.Channel;
        if (!hasWorker)
        {
            return HealthCheckResult.Healthy("No worker runs in this app, so no LISTEN connection is needed.");
        }

        if (broker.Options.PollOnly)
        {
            return HealthCheckResult.Healthy("Poll-only mode: no LISTEN connection; workers find new tasks by polling.");
        }

        if (broker.IsListening && Environment.TickCount64 - Interlocked.Read(ref _verifiedAtTicks) > VerifyEvery.TotalMilliseconds)
        {
            try
            {
                if (await broker.VerifyNotificationsAsync(cancellationToken))
                {
                    Interlocked.Exchange(ref _verifiedAtTicks, Environment.TickCount64);
                }
            }
            catch (Exception ex) when (ex is Npgsql.NpgsqlException or TimeoutException)
            {
                return HealthCheckResult.Unhealthy($"The probe NOTIFY on channel '{channel}' could not be sent (is the database reachable?).");
            }
        }

        return broker.IsListening
            ? HealthCheckResult.Healthy($"Listening on channel '{channel}'; notifications arrive.")
            : broker.IsListenerDeaf
                ? HealthCheckResult.Unhealthy($"The LISTEN connection on channel '{channel}' is up but receives no notifications: a probe NOTIFY sent through the data source did not arrive. LISTEN cannot work through a transaction-mode pooler such as PgBouncer: set ListenConnectionString to a direct connection, or PollOnly.")
                : HealthCheckResult.Unhealthy($"The LISTEN connection on channel '{channel}' is down; reconnecting.");
    }
}

/// <summary>
/// How long a loop may go without turning before liveness fails. A turn that meets a dead database waits for the
/// connection timeout and a backoff, so the bound is generous: liveness must fail only for a loop that is stuck, never
/// for an outage (restarting the process would not bring the database back).
/// </summary>
internal static class LoopLiveness
{
    public static readonly TimeSpan MinimumSilence = TimeSpan.FromMinutes(2);

    public static TimeSpan Limit(TimeSpan interval) => TimeSpan.FromTicks(Math.Max(interval.Ticks * 3, MinimumSilence.Ticks));

    /// <summary>Unhealthy, with the reason, when the service's loop has ended; null while it runs (or has not started).</summary>
    public static HealthCheckResult? Stopped(Microsoft.Extensions.Hosting.BackgroundService service, string what)
        => service.ExecuteTask is { IsCompleted: true } finished
            ? HealthCheckResult.Unhealthy($"The {what} loop has stopped ({finished.Status}).", finished.Exception)
            : null;
}

/// <summary>
/// Liveness of the worker (tag <c>live</c>): only process-local facts (the claim loop runs and turns, the lease-renewal
/// thread runs). A database outage leaves it Healthy; <see cref="TaskiqWorkerReadinessCheck"/> reports that.
/// </summary>
internal sealed class TaskiqWorkerLivenessCheck(TaskiqWorker? worker, TimeSpan pollInterval) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        if (worker is null)
        {
            return Task.FromResult(HealthCheckResult.Healthy("No worker runs in this app."));
        }

        if (LoopLiveness.Stopped(worker, "worker") is { } stopped)
        {
            return Task.FromResult(stopped);
        }

        if (!worker.IsRenewalThreadAlive)
        {
            return Task.FromResult(HealthCheckResult.Unhealthy($"Worker {worker.WorkerId}'s lease-renewal thread has ended."));
        }

        if (worker.LastLoopActivity == default)
        {
            // Starting: the start waits for the database (readiness says so), which is no reason to restart.
            return Task.FromResult(HealthCheckResult.Healthy("The worker is starting."));
        }

        var silent = DateTime.UtcNow - worker.LastLoopActivity;
        return Task.FromResult(silent > LoopLiveness.Limit(pollInterval)
            ? HealthCheckResult.Unhealthy($"Worker {worker.WorkerId}'s claim loop has not turned for {silent.TotalSeconds:0} s.")
            : HealthCheckResult.Healthy($"Worker {worker.WorkerId}'s loops are turning."));
    }
}

/// <summary>Readiness of the worker: it has started, it can claim, and the outcomes of finished tasks are written.</summary>
internal sealed class TaskiqWorkerReadinessCheck(TaskiqWorker? worker) : IHealthCheck
{
    private static readonly TimeSpan StartGrace = TimeSpan.FromSeconds(30);

    /// <summary>A failure this short (one deadlock, one dropped connection) is Degraded; a longer one is Unhealthy.</summary>
    internal static readonly TimeSpan FailureGrace = TimeSpan.FromSeconds(5);

    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        if (worker is null)
        {
            return Task.FromResult(HealthCheckResult.Healthy("No worker runs in this app."));
        }

        if (LoopLiveness.Stopped(worker, "worker") is { } stopped)
        {
            return Task.FromResult(stopped);
        }

        if (worker.LastLoopActivity == default)
        {
            var waiting = DateTime.UtcNow - worker.CreatedAt;
            return Task.FromResult(waiting <= StartGrace
                ? HealthCheckResult.Degraded("The worker is starting.")
                : HealthCheckResult.Unhealthy($"The worker has not started its loop after {waiting.TotalSeconds:0} s (is the database reachable and migrated?)."));
        }

        // Outcomes that cannot be written: past a lease, their tasks may be rescued and run again elsewhere.
        if (worker.CompletionsFailingSince is { } since)
        {
            var failing = DateTime.UtcNow - since;
            var message = $"Worker {worker.WorkerId} has not been able to write the outcomes of {worker.UnreportedCompletions} task(s) for {failing.TotalSeconds:0.#} s.";
            return Task.FromResult(failing > worker.LeaseDuration ? HealthCheckResult.Unhealthy(message) : HealthCheckResult.Degraded(message));
        }

        if (worker.ClaimsFailingSince is { } claimsFailing)
        {
            var failing = DateTime.UtcNow - claimsFailing;
            var message = $"Worker {worker.WorkerId} cannot claim tasks for {failing.TotalSeconds:0.#} s (is the database reachable?).";
            return Task.FromResult(failing > FailureGrace ? HealthCheckResult.Unhealthy(message) : HealthCheckResult.Degraded(message));
        }

        return Task.FromResult(HealthCheckResult.Healthy($"Worker {worker.WorkerId}: {worker.ActiveTasks} task(s) in flight."));
    }
}

/// <summary>Liveness of the scheduler (tag <c>live</c>): its loop runs and turns. A database outage leaves it Healthy.</summary>
internal sealed class TaskiqSchedulerLivenessCheck(TaskiqScheduler? scheduler) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        if (scheduler is null)
        {
            return Task.FromResult(HealthCheckResult.Healthy("No scheduler runs in this app."));
        }

        if (LoopLiveness.Stopped(scheduler, "scheduler") is { } stopped)
        {
            return Task.FromResult(stopped);
        }

        if (scheduler.LastLoopActivity == default)
        {
            return Task.FromResult(HealthCheckResult.Healthy("The scheduler is starting."));
        }

        var silent = DateTime.UtcNow - scheduler.LastLoopActivity;
        return Task.FromResult(silent > LoopLiveness.Limit(scheduler.RefreshInterval)
            ? HealthCheckResult.Unhealthy($"The scheduler loop has not turned for {silent.TotalSeconds:0} s.")
            : HealthCheckResult.Healthy("The scheduler loop is turning."));
    }
}

/// <summary>Readiness of the scheduler: it has started and looked at its schedules recently, and they fire.</summary>
internal sealed class TaskiqSchedulerReadinessCheck(TaskiqScheduler? scheduler) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        if (scheduler is null)
        {
            return Task.FromResult(HealthCheckResult.Healthy("No scheduler runs in this app."));
        }

        if (LoopLiveness.Stopped(scheduler, "scheduler") is { } stopped)
        {
            return Task.FromResult(stopped);
        }

        // The loop ticks at least every refresh interval; a database outage stops the ticks (lag grows).
        var limit = TimeSpan.FromTicks(Math.Max(scheduler.RefreshInterval.Ticks * 3, TimeSpan.FromSeconds(15).Ticks));
        if (scheduler.LastTick == default)
        {
            var waiting = DateTime.UtcNow - scheduler.CreatedAt;
            return Task.FromResult(waiting <= limit
                ? HealthCheckResult.Degraded("The scheduler is starting.")
                : HealthCheckResult.Unhealthy($"The scheduler has not looked at its schedules after {waiting.TotalSeconds:0} s (is the database reachable and migrated?)."));
        }

        if (scheduler.TicksFailingSince is { } since)
        {
            var failing = DateTime.UtcNow - since;
            var message = $"The scheduler cannot read its schedules for {failing.TotalSeconds:0.#} s (is the database reachable?).";
            return Task.FromResult(failing > TaskiqWorkerReadinessCheck.FailureGrace ? HealthCheckResult.Unhealthy(message) : HealthCheckResult.Degraded(message));
        }

        var lag = DateTime.UtcNow - scheduler.LastTick;
        if (lag > limit)
        {
            return Task.FromResult(HealthCheckResult.Unhealthy($"The scheduler has not looked at its schedules for {lag.TotalSeconds:0} s."));
        }

        return Task.FromResult(scheduler.FailedSchedules > 0
            ? HealthCheckResult.Degraded($"{scheduler.FailedSchedules} schedule(s) could not fire in the last tick (see the logs); the others fire.")
            : HealthCheckResult.Healthy($"{scheduler.Fires} instant(s) fired by this scheduler."));
    }
}
