namespace TaskiqPg;

/// <summary>Label names with a meaning to the runtime.</summary>
public static class TaskLabels
{
    /// <summary>Handler timeout in seconds (taskiq's <c>timeout</c> label).</summary>
    public const string Timeout = "timeout";

    /// <summary>W3C trace context of the producer.</summary>
    public const string TraceParent = "traceparent";

    /// <summary>W3C trace state of the producer.</summary>
    public const string TraceState = "tracestate";
}
