using System.Diagnostics.Metrics;
using Microsoft.Extensions.Logging;
using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// The worker's depth sampler for the <c>taskiqpg.queue.depth</c> gauge: every <see cref="Interval"/> it counts the
/// worker's queues by state (exactly up to <see cref="PostgresBroker.StatisticsExactUpTo"/>, estimated above, as the
/// statistics API does), only while someone collects the gauge; the gauge reads the last sample.
/// </summary>
internal sealed class QueueDepthSampler(PostgresBroker broker, IReadOnlyList<string> queues, Func<string, KeyValuePair<string, object?>> queueTag,
    ILogger logger, string workerId)
{
    internal static readonly TimeSpan Interval = TimeSpan.FromSeconds(5);

    /// <summary>The <c>taskiq.state</c> tag values of the depth gauge: the states' names in lower case.</summary>
    internal static readonly string[] StateTags = TaskStates.All.Select(s => s.ToString().ToLowerInvariant()).ToArray();

    private IReadOnlyList<(KeyValuePair<string, object?> Queue, IReadOnlyDictionary<TaskState, long> Depth)> _depth = [];

    public Task RunAsync(CancellationToken stop)
        => PeriodicLoop.RunAsync(Interval, firstRoundAtOnce: true, SampleAsync, ex => Log.LoopFailed(logger, ex, workerId, "queue depth"), stop);

    /// <summary>The last sample, as gauge measurements.</summary>
    public IEnumerable<Measurement<long>> Observe()
        => _depth.SelectMany(q => q.Depth.Select(kv =>
            new Measurement<long>(kv.Value, q.Queue, new KeyValuePair<string, object?>("taskiq.state", StateTags[(int)kv.Key]))));

    private async Task SampleAsync(CancellationToken stop)
    {
        if (!TaskiqDiagnostics.QueueDepth.Enabled)
        {
            return; // nobody collects the gauge: spare the database the count
        }

        var depth = new List<(KeyValuePair<string, object?>, IReadOnlyDictionary<TaskState, long>)>(queues.Count);
        foreach (var queue in queues)
        {
            depth.Add((queueTag(queue), await broker.GetQueueDepthAsync(queue, PostgresBroker.StatisticsExactUpTo, stop)));
        }

        _depth = depth;
    }
}
