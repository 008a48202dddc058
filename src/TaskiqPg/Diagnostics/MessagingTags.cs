using System.Diagnostics;

namespace TaskiqPg;

/// <summary>OpenTelemetry messaging semantic-convention attribute names used on spans and measurements.</summary>
internal static class MessagingTags
{
    public const string System = "messaging.system";
    public const string OperationName = "messaging.operation.name";
    public const string OperationType = "messaging.operation.type";
    public const string Destination = "messaging.destination.name";
    public const string MessageId = "messaging.message.id";
    public const string BatchCount = "messaging.batch.message_count";
    public const string ErrorType = "error.type";
    public const string TaskName = "taskiq.task_name";
    public const string Attempt = "taskiq.attempt";

    /// <summary>
    /// Starts the PRODUCER span of a kick and, with <paramref name="injectTraceContext"/>, writes its trace context into
    /// the labels (of the kick's own copies, never of the caller's messages).
    /// </summary>
    public static Activity? StartSend(string queue, IReadOnlyList<TaskMessage> messages, bool injectTraceContext)
    {
        var activity = TaskiqDiagnostics.Source.StartActivity($"send {queue}", ActivityKind.Producer);
        if (activity is not null)
        {
            activity.SetTag(System, TaskiqDiagnostics.MessagingSystem);
            activity.SetTag(OperationName, "send");
            activity.SetTag(OperationType, "send");
            activity.SetTag(Destination, queue);
            if (messages.Count == 1)
            {
                activity.SetTag(MessageId, messages[0].TaskId);
                activity.SetTag(TaskName, messages[0].TaskName);
            }
            else
            {
                activity.SetTag(BatchCount, messages.Count);
            }
        }

        var context = activity ?? Activity.Current;
        if (context is not null && injectTraceContext)
        {
            foreach (var message in messages.Where(m => m is not null)) // a null is refused with a clear error right after
            {
                DistributedContextPropagator.Current.Inject(context, message.Labels, static (carrier, key, value) =>
                {
                    if (carrier is Dictionary<string, string> labels && key is TaskLabels.TraceParent or TaskLabels.TraceState)
                    {
                        labels[key] = value;
                    }
                });
            }
        }

        return activity;
    }

    /// <summary>Starts the CONSUMER span of a task run, parented to (and linked with) the producer's context.</summary>
    public static Activity? StartProcess(string queue, TaskMessage message, int attempt)
    {
        if (!TaskiqDiagnostics.Source.HasListeners())
        {
            return null;
        }

        DistributedContextPropagator.Current.ExtractTraceIdAndState(message.Labels, static (carrier, key, out value, out values) =>
        {
            values = null;
            value = carrier is IReadOnlyDictionary<string, string> labels && labels.TryGetValue(key, out var v) ? v : null;
        }, out var traceParent, out var traceState);

        var tags = new ActivityTagsCollection
        {
            [System] = TaskiqDiagnostics.MessagingSystem,
            [OperationName] = "process",
            [OperationType] = "process",
            [Destination] = queue,
            [MessageId] = message.TaskId,
            [TaskName] = message.TaskName,
            [Attempt] = attempt,
        };
        if (traceParent is not null && ActivityContext.TryParse(traceParent, traceState, isRemote: true, out var parent))
        {
            return TaskiqDiagnostics.Source.StartActivity($"process {queue}", ActivityKind.Consumer, parent, tags, [new ActivityLink(parent)]);
        }

        return TaskiqDiagnostics.Source.StartActivity($"process {queue}", ActivityKind.Consumer, default(ActivityContext), tags);
    }

    public static void RecordError(Activity? activity, string errorType, string message)
    {
        if (activity is null)
        {
            return;
        }

        activity.SetStatus(ActivityStatusCode.Error, message);
        activity.SetTag(ErrorType, errorType);
    }
}
