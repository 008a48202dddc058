using System.Collections.Immutable;
using System.Globalization;
using Microsoft.Extensions.Logging;
using Npgsql;
using TaskiqPg;

namespace Aspire.Hosting.ApplicationModel;

/// <summary>What the dashboard shows of one queue, from <see cref="PostgresBroker.GetQueueStatisticsAsync"/> and the live workers.</summary>
internal sealed record QueueView(QueueStatistics Statistics, int LiveWorkers, bool Degraded);

/// <summary>
/// The AppHost side of a <see cref="TaskiqQueueResource"/>: waits for the database, migrates the schema once, then
/// refreshes the queues' figures every <see cref="TaskiqQueueOptions.RefreshInterval"/> with the core's cheap statistics
/// and publishes them as the resource's state and properties. It owns the connection the commands use.
/// </summary>
internal sealed class TaskiqQueueMonitor(TaskiqQueueResource resource, TaskiqQueueOptions options)
{
    private volatile IReadOnlyList<QueueView> _views = [];
    private long _lastRefreshTicks;

    public TaskiqQueueOptions Options { get; } = options;

    public bool Migrated { get; private set; }

    /// <summary>The last refresh reached the database (within three refresh intervals).</summary>
    public bool DatabaseReachable
        => Migrated && DateTime.UtcNow.Ticks - Interlocked.Read(ref _lastRefreshTicks) < (Options.RefreshInterval * 3).Ticks;

    public IReadOnlyList<QueueView> Views => _views;

    public PostgresBroker? Broker { get; private set; }

    public TaskiqClient? Client { get; private set; }

    public async Task RunAsync(InitializeResourceEvent e, CancellationToken stopping)
    {
        var notifications = e.Notifications;
        try
        {
            await notifications.PublishUpdateAsync(resource, s => s with { State = KnownResourceStates.Waiting });
            await notifications.WaitForDependenciesAsync(resource, stopping);
            await notifications.PublishUpdateAsync(resource, s => s with { State = KnownResourceStates.Starting, StartTimeStamp = DateTime.UtcNow });
            var connectionString = await resource.ConnectionStringExpression.GetValueAsync(stopping)
                                   ?? throw new InvalidOperationException($"The database of '{resource.Name}' has no connection string.");
            await using var dataSource = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(connectionString)
            {
                MaxPoolSize = 4, ApplicationName = "taskiq-apphost",
            }.ConnectionString);
            await using var broker = new PostgresBroker(dataSource, Options.Broker with { Queue = resource.Queues[0] });
            await using var results = new PostgresResultBackend(dataSource, Options.Results);
            await using var schedules = new PostgresScheduleSource(dataSource, Options.Schedules);
            await MigrateAsync(broker, results, schedules, e.Logger, stopping);
            Broker = broker;
            Client = new TaskiqClient(broker, results);
            e.Logger.LogInformation("TaskiqPg schema migrated; showing queues {Queues}", string.Join(", ", resource.Queues));
            using var timer = new PeriodicTimer(Options.RefreshInterval);
            do
            {
                await RefreshAsync(notifications, e.Logger, stopping);
            }
            while (await timer.WaitForNextTickAsync(stopping));
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
        }
        finally
        {
            Broker = null;
            Client = null;
        }
    }

    /// <summary>Publishes at once (after a command), instead of at the next tick.</summary>
    public Task RefreshNowAsync(ResourceNotificationService notifications, ILogger logger, CancellationToken cancellationToken)
        => RefreshAsync(notifications, logger, cancellationToken);

    private async Task MigrateAsync(PostgresBroker broker, PostgresResultBackend results, PostgresScheduleSource schedules, ILogger logger,
        CancellationToken stopping)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                await broker.MigrateAsync(stopping);
                await results.MigrateAsync(stopping);
                await schedules.MigrateAsync(stopping);
                Migrated = true;
                return;
            }
            catch (Exception ex) when (ex is NpgsqlException or TimeoutException && !stopping.IsCancellationRequested)
            {
                // The message names the failure, never the connection string (it carries the password).
                logger.LogWarning("TaskiqPg schema migration failed (attempt {Attempt}): {Error}", attempt, ex.Message);
                await Task.Delay(TimeSpan.FromSeconds(Math.Min(5, attempt)), stopping);
            }
        }
    }

    private async Task RefreshAsync(ResourceNotificationService notifications, ILogger logger, CancellationToken cancellationToken)
    {
        var broker = Broker;
        if (broker is null)
        {
            return;
        }

        try
        {
            var workers = await broker.GetWorkersAsync(cancellationToken);
            var views = new List<QueueView>(resource.Queues.Count);
            foreach (var queue in resource.Queues)
            {
                var statistics = await broker.GetQueueStatisticsAsync(queue, cancellationToken);
                var live = workers.Count(w => !w.IsStale && w.Queues.Contains(queue));
                // Due work waits and nothing runs: no live worker serves it, or none can claim.
                var degraded = statistics.PausedAt is null && statistics.Counts[TaskState.Available] > 0 && statistics.Counts[TaskState.Running] == 0
                               && statistics.OldestAvailableAge > Options.DegradedAfter;
                views.Add(new QueueView(statistics, live, degraded));
            }

            _views = views;
            Interlocked.Exchange(ref _lastRefreshTicks, DateTime.UtcNow.Ticks);
            var (state, style) = views.All(v => v.Statistics.PausedAt is not null) ? ("Paused", KnownResourceStateStyles.Warn)
                : views.Any(v => v.Degraded) ? ("Degraded", KnownResourceStateStyles.Warn)
                : (KnownResourceStates.Running, KnownResourceStateStyles.Success);
            await notifications.PublishUpdateAsync(resource, s => s with
            {
                State = new ResourceStateSnapshot(state, style),
                Properties = Properties(s.Properties, views),
            });
        }
        catch (Exception ex) when (ex is NpgsqlException or TimeoutException or InvalidOperationException && !cancellationToken.IsCancellationRequested)
        {
            logger.LogWarning("TaskiqPg queue figures could not be read: {Error}", ex.Message);
            await notifications.PublishUpdateAsync(resource, s => s with { State = new ResourceStateSnapshot("Unhealthy", KnownResourceStateStyles.Error) });
        }
    }

    /// <summary>The dashboard's properties: the existing ones kept, ours replaced (one set per queue, prefixed by its name when there are several).</summary>
    private ImmutableArray<ResourcePropertySnapshot> Properties(ImmutableArray<ResourcePropertySnapshot> existing, IReadOnlyList<QueueView> views)
    {
        var ours = new List<ResourcePropertySnapshot>();
        foreach (var view in views)
        {
            var s = view.Statistics;
            var prefix = resource.Queues.Count == 1 ? "taskiq." : $"taskiq.{s.Queue}.";
            string Count(TaskState state) => (s.Estimated.Contains(state) ? "~" : "") + s.Counts[state].ToString("N0", CultureInfo.InvariantCulture);
            ours.Add(new(prefix + "queue", s.Queue));
            ours.Add(new(prefix + "paused", s.PausedAt is { } at ? "since " + at.ToString("u", CultureInfo.InvariantCulture) : "no"));
            ours.Add(new(prefix + "available", Count(TaskState.Available)));
            ours.Add(new(prefix + "scheduled", Count(TaskState.Scheduled)));
            ours.Add(new(prefix + "retryable", Count(TaskState.Retryable)));
            ours.Add(new(prefix + "running", Count(TaskState.Running)));
            ours.Add(new(prefix + "completed", Count(TaskState.Completed)));
            ours.Add(new(prefix + "cancelled", Count(TaskState.Cancelled)));
            ours.Add(new(prefix + "discarded", Count(TaskState.Discarded)));
            ours.Add(new(prefix + "oldest due", s.OldestAvailableAge is { } age ? $"{age.TotalSeconds:0.0} s" : "none"));
            ours.Add(new(prefix + "completed last minute", s.FinishedLastMinute.GetValueOrDefault(TaskState.Completed).ToString(CultureInfo.InvariantCulture)));
            ours.Add(new(prefix + "discarded last minute", s.FinishedLastMinute.GetValueOrDefault(TaskState.Discarded).ToString(CultureInfo.InvariantCulture)));
            ours.Add(new(prefix + "live workers", view.LiveWorkers.ToString(CultureInfo.InvariantCulture)));
        }

        return [.. existing.Where(p => !p.Name.StartsWith("taskiq.", StringComparison.Ordinal)), .. ours];
    }
}
