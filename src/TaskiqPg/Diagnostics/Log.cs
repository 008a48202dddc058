using Microsoft.Extensions.Logging;

namespace TaskiqPg;

/// <summary>Every log event of the library, one event id each. Messages never carry connection strings.</summary>
internal static partial class Log
{
    [LoggerMessage(1001, LogLevel.Warning, "The {Purpose} LISTEN connection failed; reconnecting with backoff ({SuppressedCount} similar errors not logged since the last report)")]
    public static partial void ListenerFailed(ILogger logger, Exception exception, string purpose, int suppressedCount);

    [LoggerMessage(1002, LogLevel.Information, "The {Purpose} LISTEN connection is back ({SuppressedCount} errors not logged during the outage)")]
    public static partial void ListenerReconnected(ILogger logger, string purpose, int suppressedCount);

    [LoggerMessage(1003, LogLevel.Error, "A {Purpose} notification handler threw")]
    public static partial void NotificationHandlerFailed(ILogger logger, Exception exception, string purpose);

    [LoggerMessage(1005, LogLevel.Warning, "The {Purpose} LISTEN connection is up but its probe NOTIFY, sent through the data source, did not arrive within {Seconds} s: notifications are lost (LISTEN cannot work through a transaction-mode pooler such as PgBouncer). Set ListenConnectionString to a direct connection, or PollOnly; until then waits fall back to polling")]
    public static partial void ListenerDeaf(ILogger logger, string purpose, int seconds);

    [LoggerMessage(1004, LogLevel.Warning, "Sending the wake-up NOTIFY on {Channel} after a kick failed; workers will find the task by polling")]
    public static partial void NotifyFailed(ILogger logger, string channel, Exception exception);

    [LoggerMessage(1101, LogLevel.Information, "Schema migrated: {Steps} step(s) applied to {Table}")]
    public static partial void Migrated(ILogger logger, int steps, string table);

    [LoggerMessage(2001, LogLevel.Information, "Worker {WorkerId} started on queue {Queue}: {MaxConcurrentTasks} concurrent tasks, prefetch {Prefetch}")]
    public static partial void WorkerStarted(ILogger logger, string workerId, string queue, int maxConcurrentTasks, int prefetch);

    [LoggerMessage(2002, LogLevel.Information, "Worker {WorkerId} stopped: released {Released} prefetched task(s), {Abandoned} task(s) were still running at the shutdown timeout")]
    public static partial void WorkerStopped(ILogger logger, string workerId, int released, int abandoned);

    [LoggerMessage(2003, LogLevel.Warning, "Task {TaskId} ({TaskName}) failed on attempt {Attempt} of {MaxAttempts}")]
    public static partial void TaskFailed(ILogger logger, Exception exception, string taskId, string taskName, int attempt, int maxAttempts);

    [LoggerMessage(2004, LogLevel.Error, "Task {TaskId} ({TaskName}) was dead-lettered: {Reason}")]
    public static partial void TaskDeadLettered(ILogger logger, string taskId, string taskName, string reason);

    [LoggerMessage(2005, LogLevel.Warning, "Worker {WorkerId}: database call failed in the {Loop} loop; retrying")]
    public static partial void LoopFailed(ILogger logger, Exception exception, string workerId, string loop);

    [LoggerMessage(2006, LogLevel.Warning, "Task {TaskId} ({TaskName}) lost its lease (rescued by another worker); its outcome will be discarded")]
    public static partial void LeaseLost(ILogger logger, string taskId, string taskName);

    [LoggerMessage(2007, LogLevel.Warning, "Rescued {Count} task(s) whose lease expired ({DeadCount} dead-lettered: attempts exhausted)")]
    public static partial void LeasesRescued(ILogger logger, int count, int deadCount);

    [LoggerMessage(2008, LogLevel.Warning, "Completion of task {TaskId} ({TaskName}) was rejected: the lease is no longer this worker's")]
    public static partial void CompletionRejected(ILogger logger, string taskId, string taskName);

    [LoggerMessage(2009, LogLevel.Error, "Worker {WorkerId} could not report the outcome of {Count} task(s); they will run again once their leases expire")]
    public static partial void FlushAbandoned(ILogger logger, Exception exception, string workerId, int count);

    [LoggerMessage(2010, LogLevel.Warning, "Worker {WorkerId} took back {Count} task(s) a failed claim had leased to it (the claim committed, its reply was lost)")]
    public static partial void OrphansReleased(ILogger logger, string workerId, int count);

    [LoggerMessage(2011, LogLevel.Error, "PostgreSQL refused the outcome of task {TaskId} ({TaskName}); it is dead-lettered with the reason instead")]
    public static partial void OutcomeRefused(ILogger logger, Exception exception, string taskId, string taskName);

    [LoggerMessage(2012, LogLevel.Error, "Worker {WorkerId} could not hand back {Count} unstarted task(s) received with AckMode.WhenReceived; they are lost")]
    public static partial void RequeueFailed(ILogger logger, Exception exception, string workerId, int count);

    [LoggerMessage(2013, LogLevel.Debug, "Worker {WorkerId} pruned {Count} finished task row(s) past their retention")]
    public static partial void FinishedPruned(ILogger logger, string workerId, long count);

    [LoggerMessage(2014, LogLevel.Information, "Cancel requested for running task {TaskId} ({TaskName}): its handler's token is cancelled")]
    public static partial void TaskCancelRequested(ILogger logger, string taskId, string taskName);

    [LoggerMessage(2015, LogLevel.Information, "Task {TaskId} ({TaskName}) was cancelled")]
    public static partial void TaskCancelled(ILogger logger, string taskId, string taskName);

    [LoggerMessage(2016, LogLevel.Debug, "Task {TaskId} ({TaskName}) snoozed for {Delay}")]
    public static partial void TaskSnoozed(ILogger logger, string taskId, string taskName, TimeSpan delay);

    [LoggerMessage(4001, LogLevel.Error, "Schedule {ScheduleId} ({TaskName}) was disabled: {Reason}")]
    public static partial void ScheduleDisabled(ILogger logger, Guid scheduleId, string taskName, string reason);

    [LoggerMessage(4002, LogLevel.Warning, "The scheduler's {Step} step failed; retrying")]
    public static partial void SchedulerFailed(ILogger logger, Exception exception, string step);

    [LoggerMessage(4003, LogLevel.Information, "Scheduler started: {StaticCount} static schedule(s) synced")]
    public static partial void SchedulerStarted(ILogger logger, int staticCount);

    [LoggerMessage(4004, LogLevel.Debug, "Schedule {ScheduleId} fired {TaskName} for {FireAt:O} ({LatenessMs} ms late)")]
    public static partial void ScheduleFired(ILogger logger, Guid scheduleId, string taskName, DateTimeOffset fireAt, double latenessMs);

    [LoggerMessage(4005, LogLevel.Error, "Schedule {ScheduleId} ({TaskName}) could not fire; the other schedules go on and it is retried")]
    public static partial void ScheduleFailed(ILogger logger, Exception exception, Guid scheduleId, string taskName);

    [LoggerMessage(3001, LogLevel.Warning, "Pruning expired results failed; retrying at the next interval")]
    public static partial void PruneFailed(ILogger logger, Exception exception);
}
