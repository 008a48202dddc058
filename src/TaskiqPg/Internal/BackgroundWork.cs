using System.Diagnostics;

namespace TaskiqPg.Internal;

/// <summary>
/// Marks the async flow of TaskiqPg's own loops (claims, settles, renewals, rescues, pruning, listening, scheduler
/// ticks), so tracing can leave their database statements out: they would otherwise each become a root trace and bury
/// the traces of tasks. A handler's run and a kick are not background work; see <see cref="TaskiqDiagnostics.IsBackgroundWork"/>.
/// </summary>
internal static class BackgroundWork
{
    private static readonly AsyncLocal<bool> Marker = new();

    public static bool IsMarked => Marker.Value;

    /// <summary>Called first in each loop: the rest of the calling async method, and what it starts, is background work.</summary>
    public static void Enter()
    {
        Marker.Value = true;
        Activity.Current = null; // a loop belongs to no trace, whatever span was current where it was started
    }

    /// <summary>Called where a handler runs: the user's code and its statements are never background work.</summary>
    public static void Leave() => Marker.Value = false;
}
