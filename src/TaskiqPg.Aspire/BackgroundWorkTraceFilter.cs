using System.Diagnostics;
using OpenTelemetry;

namespace TaskiqPg;

/// <summary>
/// Leaves root spans started by TaskiqPg's background loops (their Npgsql statements: polls, claims, settles,
/// renewals, heartbeats, rescues, pruning, LISTEN, scheduler ticks, migrations) out of the export: an idle queue would
/// otherwise add a root trace every few milliseconds and bury the traces of tasks. Spans with a parent (a handler's
/// statements under its consumer span, a kick's INSERT under its producer span) are kept. It works on the span, not on
/// a data source's command filter, because the LISTEN and renewal connections are opened outside the pool and carry no
/// data-source tracing options.
/// </summary>
internal sealed class BackgroundWorkTraceFilter : BaseProcessor<Activity>
{
    public override void OnStart(Activity data)
    {
        // TaskiqPg's own spans stay: a scheduler's kick is the root of the fired task's trace.
        if (TaskiqDiagnostics.IsBackgroundWork && data.Parent is null && data.ParentSpanId == default
            && data.Source.Name != TaskiqDiagnostics.SourceName)
        {
            // Unrecorded and without data: the SDK does not hand it to exporters.
            data.ActivityTraceFlags &= ~ActivityTraceFlags.Recorded;
            data.IsAllDataRequested = false;
        }
    }
}
