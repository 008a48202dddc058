using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// Fires schedules: cron (with seconds and time zones), interval and one-shot. Any number of replicas may run; each
/// instant is kicked exactly once because the fire row and the task are written in one transaction (see
/// <see cref="PostgresScheduleSource"/>). Times come from the database clock.
/// </summary>
public sealed class TaskiqScheduler : BackgroundService
{
    private static readonly TimeSpan LateThreshold = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan PruneEvery = TimeSpan.FromHours(1);

    private readonly PostgresScheduleSource _source;
    private readonly PostgresBroker _broker;
    private readonly TaskiqSchedulerOptions _options;
    private readonly ILogger _logger;
    private readonly WakeSignal _wake = new();
    private long _lastTickTicks;
    private long _lastLoopTicks;
    private long _ticksFailingSinceTicks; // 0 while ticks succeed
    private long _fires;
    private int _failedSchedules;
    private int _failedTicks; // consecutive ticks with failed schedules (the loop's own state)

    /// <summary>Creates a scheduler kicking fired tasks to <paramref name="broker"/> (same database as the source).</summary>
    /// <param name="source">Where the schedules are stored.</param>
    /// <param name="broker">Where fired tasks are kicked.</param>
    /// <param name="options">The scheduler's options; default: <see cref="TaskiqSchedulerOptions"/> defaults.</param>
    /// <param name="loggerFactory">Where the scheduler logs; default: nowhere.</param>
    public TaskiqScheduler(PostgresScheduleSource source, PostgresBroker broker, TaskiqSchedulerOptions? options = null, ILoggerFactory? loggerFactory = null)
    {
        _source = source ?? throw new ArgumentNullException(nameof(source));
        _broker = broker ?? throw new ArgumentNullException(nameof(broker));
        _options = (options ?? new TaskiqSchedulerOptions()) with { };
        _options.Validate();
        _logger = (loggerFactory ?? NullLoggerFactory.Instance).CreateLogger<TaskiqScheduler>();
    }

    /// <summary>When this instance was created (UTC); health checks allow a start-up grace period from it.</summary>
    public DateTime CreatedAt { get; } = DateTime.UtcNow;

    /// <summary>When the loop last looked at the schedules (UTC); for liveness checks.</summary>
    public DateTime LastTick => new(Interlocked.Read(ref _lastTickTicks), DateTimeKind.Utc);

    /// <summary>When the loop last turned (UTC), whether its tick succeeded or failed; for liveness checks.</summary>
    public DateTime LastLoopActivity => new(Interlocked.Read(ref _lastLoopTicks), DateTimeKind.Utc);

    /// <summary>Since when (UTC) ticks have failed (e.g. the database is unreachable) without a success in between; null while they succeed.</summary>
    public DateTime? TicksFailingSince
        => Interlocked.Read(ref _ticksFailingSinceTicks) is var ticks and > 0 ? new DateTime(ticks, DateTimeKind.Utc) : null;

    /// <summary>Instants this scheduler fired (others' fires of the same instants are not counted).</summary>
    public long Fires => Interlocked.Read(ref _fires);

    /// <summary>Schedules whose firing failed in the last tick (their instants are retried); 0 when all fired.</summary>
    public int FailedSchedules => Volatile.Read(ref _failedSchedules);

    /// <summary>The refresh interval (for health checks).</summary>
    public TimeSpan RefreshInterval => _options.RefreshInterval;

    /// <inheritdoc />
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        BackgroundWork.Enter();
        await Task.Yield();
        var failures = 0;
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await _broker.StartAsync(stoppingToken);
                await _source.StartAsync(stoppingToken);
                await _source.SyncStaticSchedulesAsync(_options.StaticSchedules.ToArray(), stoppingToken);
                break;
            }
            catch (Exception ex) when (!stoppingToken.IsCancellationRequested && ex is not ScheduleValidationException)
            {
                Log.SchedulerFailed(_logger, ex, "start");
                await Retry.DelayAsync(Retry.Backoff(++failures), stoppingToken);
            }
        }

        if (stoppingToken.IsCancellationRequested)
        {
            return;
        }

        Log.SchedulerStarted(_logger, _options.StaticSchedules.Count);
        using var subscription = _source.Subscribe(_wake.Set);
        var lastPrune = DateTime.MinValue;
        failures = 0;
        while (!stoppingToken.IsCancellationRequested)
        {
            TimeSpan sleep;
            Interlocked.Exchange(ref _lastLoopTicks, DateTime.UtcNow.Ticks);
            try
            {
                sleep = await TickAsync(stoppingToken);
                failures = 0;
                Interlocked.Exchange(ref _ticksFailingSinceTicks, 0);
                if (DateTime.UtcNow - lastPrune > PruneEvery)
                {
                    await _source.PruneFiresAsync(_options.FiresRetention, stoppingToken);
                    lastPrune = DateTime.UtcNow;
                }
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                break;
            }
            catch (Exception ex)
            {
                Interlocked.CompareExchange(ref _ticksFailingSinceTicks, DateTime.UtcNow.Ticks, 0);
                Log.SchedulerFailed(_logger, ex, "tick");
                sleep = Retry.Backoff(++failures);
            }

            try
            {
                await _wake.WaitAsync(sleep, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }
    }

    /// <summary>
    /// Fires what is due and returns how long to sleep until the next instant (at most the refresh interval). Every
    /// instant due now, of every schedule, is fired in one transaction (one round trip per statement, not per
    /// schedule: 50 schedules due at one second used to fire one after another, the last over 100 ms late). When that
    /// transaction is refused for its content (a schedule whose task cannot be kicked), the instants are fired one by
    /// one, so only the broken schedule is disabled and the others fire.
    /// </summary>
    private async Task<TimeSpan> TickAsync(CancellationToken cancellationToken)
    {
        var (now, schedules) = await _source.LoadActiveAsync(cancellationToken);
        var wakeAt = now + _options.RefreshInterval;
        var failed = 0;
        var due = new List<ScheduledFire>();
        foreach (var schedule in schedules)
        {
            // Each schedule on its own: one that fails (its time zone on this machine, its definition) never stops the others.
            try
            {
                if (await PlanAsync(schedule, now, due, cancellationToken) is { } next && next < wakeAt)
                {
                    wakeAt = next;
                }
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                throw;
            }
            catch (Exception ex)
            {
                failed++;
                Log.ScheduleFailed(_logger, ex, schedule.Id, schedule.TaskName);
            }
        }

        if (due.Count > 0)
        {
            try
            {
                Fired(await _source.FireManyAsync(due, _broker, cancellationToken), now);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                throw;
            }
            catch (Exception ex) when (TransientErrors.IsTransient(ex))
            {
                // The database is away (a restart, a failover): every schedule of this tick tries again soon.
                var bySchedule = due.DistinctBy(f => f.Schedule.Id).ToArray();
                failed += bySchedule.Length;
                foreach (var fire in bySchedule)
                {
                    Log.ScheduleFailed(_logger, ex, fire.Schedule.Id, fire.Schedule.TaskName);
                }
            }
            catch (Exception)
            {
                failed += await FireOneByOneAsync(due, now, cancellationToken);
            }
        }

        Interlocked.Exchange(ref _failedSchedules, failed);
        Interlocked.Exchange(ref _lastTickTicks, DateTime.UtcNow.Ticks);
        _failedTicks = failed > 0 ? _failedTicks + 1 : 0;
        if (failed > 0)
        {
            // Try the failed ones again soon (a kick that met a restart), backing off while they keep failing.
            wakeAt = Min(wakeAt, now + Retry.Backoff(_failedTicks));
        }

        var sleep = wakeAt - now;
        return sleep < TimeSpan.Zero ? TimeSpan.Zero : sleep;
    }

    /// <summary>Adds the schedule's due instants to <paramref name="due"/>.</summary>
    /// <returns>The schedule's next instant after now, or null when there is none (or it was disabled).</returns>
    private async Task<DateTimeOffset?> PlanAsync(ActiveSchedule schedule, DateTimeOffset now, List<ScheduledFire> due, CancellationToken cancellationToken)
    {
        CompiledSchedule compiled;
        try
        {
            compiled = CompiledSchedule.Compile(StoredSchedule.FromJson(schedule.Json).ToDefinition(schedule.TaskName));
        }
        catch (ScheduleValidationException ex) when (ex.ParamName == nameof(ScheduleDefinition.TimeZone) && ex.InnerException is TimeZoneNotFoundException)
        {
            // This machine lacks the zone (time zone data missing on one pod): an error of this replica, not of the
            // schedule, which replicas with the data keep firing. Never disabled for it.
            throw new InvalidOperationException($"Schedule {schedule.Id} cannot be computed on this machine: {ex.Message}", ex);
        }
        catch (Exception ex) // parsing only, no I/O: whatever it throws means this schedule is broken everywhere
        {
            // A stored schedule that no longer parses stops here, with the reason kept; the others keep firing.
            await DisableAsync(schedule, $"the stored schedule no longer parses: {ex.Message}", cancellationToken);
            return null;
        }

        foreach (var instant in compiled.DueInstants(schedule.LastFireAt ?? schedule.CreatedAt, schedule.CreatedAt, now))
        {
            var fireAt = instant.ToUniversalTime(); // Npgsql writes timestamptz only from UTC values
            due.Add(new ScheduledFire(schedule, compiled.Definition, fireAt, _source.FireMessage(schedule.Id, compiled.Definition, fireAt)));
        }

        return compiled.NextAfter(now, schedule.CreatedAt);
    }

    /// <summary>Each instant in its own transaction (after the batch was refused): a schedule whose task cannot be kicked is disabled.</summary>
    /// <returns>How many schedules failed for another reason.</returns>
    private async Task<int> FireOneByOneAsync(List<ScheduledFire> due, DateTimeOffset now, CancellationToken cancellationToken)
    {
        var failed = 0;
        foreach (var schedule in due.GroupBy(f => f.Schedule.Id))
        {
            try
            {
                foreach (var fire in schedule)
                {
                    try
                    {
                        Fired(await _source.FireManyAsync([fire], _broker, cancellationToken), now);
                    }
                    catch (Exception ex) when (ex is InvalidTaskMessageException or MessageTooLargeException)
                    {
                        // Its task can never be kicked as defined (a label PostgreSQL cannot store, a payload over the
                        // limit): wrong everywhere, so disabled with the reason rather than retried on every tick.
                        await DisableAsync(fire.Schedule, $"its task cannot be kicked: {ex.Message}", cancellationToken);
                        break;
                    }
                }
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                throw;
            }
            catch (Exception ex)
            {
                failed++;
                Log.ScheduleFailed(_logger, ex, schedule.Key, schedule.First().Schedule.TaskName);
            }
        }

        return failed;
    }

    private async Task DisableAsync(ActiveSchedule schedule, string reason, CancellationToken cancellationToken)
    {
        await _source.DisableAsync(schedule.Id, reason, cancellationToken);
        Log.ScheduleDisabled(_logger, schedule.Id, schedule.TaskName, reason);
    }

    /// <summary>Counts, measures and logs the fires this scheduler kicked.</summary>
    private void Fired(IReadOnlyList<ScheduledFire> fired, DateTimeOffset now)
    {
        foreach (var fire in fired)
        {
            var lateness = now - fire.FireAt;
            var nameTag = new KeyValuePair<string, object?>(MessagingTags.TaskName, fire.Schedule.TaskName);
            Interlocked.Increment(ref _fires);
            TaskiqDiagnostics.ScheduleFires.Add(1, nameTag);
            TaskiqDiagnostics.ScheduleLateness.Record(lateness.TotalSeconds, nameTag);
            if (lateness > LateThreshold)
            {
                TaskiqDiagnostics.LateScheduleFires.Add(1, nameTag);
            }

            Log.ScheduleFired(_logger, fire.Schedule.Id, fire.Schedule.TaskName, fire.FireAt, lateness.TotalMilliseconds);
        }
    }

    private static DateTimeOffset Min(DateTimeOffset a, DateTimeOffset b) => a < b ? a : b;
}
