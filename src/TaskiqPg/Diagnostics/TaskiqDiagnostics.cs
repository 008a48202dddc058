using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace TaskiqPg;

/// <summary>
/// The <see cref="ActivitySource"/> and <see cref="Meter"/> named "TaskiqPg". Add them to OpenTelemetry with
/// <c>AddSource(TaskiqDiagnostics.SourceName)</c> and <c>AddMeter(TaskiqDiagnostics.MeterName)</c>.
/// </summary>
public static class TaskiqDiagnostics
{
    /// <summary>Name of the activity source.</summary>
    public const string SourceName = "TaskiqPg";

    /// <summary>Name of the meter.</summary>
    public const string MeterName = "TaskiqPg";

    /// <summary>Value of <c>messaging.system</c> on every span and measurement.</summary>
    public const string MessagingSystem = "taskiq";

    /// <summary>
    /// True while the calling code runs in one of TaskiqPg's own background loops (claims, settles, lease renewals,
    /// rescues, pruning, LISTEN, scheduler ticks); false inside a task's handler and in any code that is not TaskiqPg's.
    /// A tracing processor uses it to keep the loops' database statements from becoming root traces (the Aspire
    /// integration adds one unless <c>TraceBackgroundWork</c> is set); a span started here under a parent (a scheduler's
    /// kick) belongs to that parent's trace and should be kept.
    /// </summary>
    public static bool IsBackgroundWork => Internal.BackgroundWork.IsMarked;

    private static readonly Lock DepthLock = new();
    private static readonly List<Func<IEnumerable<Measurement<long>>>> DepthSources = [];

    internal static readonly ActivitySource Source = new(SourceName, typeof(TaskiqDiagnostics).Assembly.GetName().Version?.ToString());

    internal static readonly Meter Meter = new(MeterName, typeof(TaskiqDiagnostics).Assembly.GetName().Version?.ToString());

    internal static readonly Counter<long> Kicked = Meter.CreateCounter<long>("taskiqpg.tasks.kicked", "{task}", "Tasks kicked.");

    internal static readonly Counter<long> Completed = Meter.CreateCounter<long>("taskiqpg.tasks.completed", "{task}", "Tasks that ran successfully.");

    internal static readonly Counter<long> Failed = Meter.CreateCounter<long>("taskiqpg.tasks.failed", "{task}", "Failed attempts (retried or dead-lettered).");

    internal static readonly Counter<long> Retried = Meter.CreateCounter<long>("taskiqpg.tasks.retried", "{task}", "Failed attempts scheduled for a retry.");

    internal static readonly Counter<long> DeadLettered = Meter.CreateCounter<long>("taskiqpg.tasks.dead_lettered", "{task}", "Tasks dead-lettered.");

    internal static readonly Counter<long> Cancelled = Meter.CreateCounter<long>("taskiqpg.tasks.cancelled", "{task}", "Running tasks ended cancelled by request.");

    internal static readonly Histogram<double> QueueWait = Meter.CreateHistogram<double>("taskiqpg.task.queue_wait", "s", "Time from a task being due to its claim.");

    internal static readonly Histogram<double> Duration = Meter.CreateHistogram<double>("taskiqpg.task.duration", "s", "Handler run time.");

    internal static readonly Counter<long> ScheduleFires = Meter.CreateCounter<long>("taskiqpg.schedules.fired", "{fire}", "Schedule instants fired (once across all schedulers).");

    internal static readonly Counter<long> LateScheduleFires = Meter.CreateCounter<long>("taskiqpg.schedules.late_fires", "{fire}", "Schedule instants fired more than 2 s after their time.");

    internal static readonly Histogram<double> ScheduleLateness = Meter.CreateHistogram<double>("taskiqpg.schedules.lateness", "s", "Time from a schedule instant to its fire.");

    internal static readonly ObservableGauge<long> QueueDepth =
        Meter.CreateObservableGauge("taskiqpg.queue.depth", ObserveDepth, "{task}", "Tasks in the messages table by queue and status.");

    internal static IDisposable RegisterDepthSource(Func<IEnumerable<Measurement<long>>> source)
    {
        lock (DepthLock)
        {
            DepthSources.Add(source);
        }

        return new DepthRegistration(source);
    }

    private static IEnumerable<Measurement<long>> ObserveDepth()
    {
        Func<IEnumerable<Measurement<long>>>[] sources;
        lock (DepthLock)
        {
            sources = [.. DepthSources];
        }

        return sources.SelectMany(s => s());
    }

    private sealed class DepthRegistration(Func<IEnumerable<Measurement<long>>> source) : IDisposable
    {
        public void Dispose()
        {
            lock (DepthLock)
            {
                DepthSources.Remove(source);
            }
        }
    }
}
