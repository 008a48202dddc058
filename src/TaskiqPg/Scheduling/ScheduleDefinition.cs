namespace TaskiqPg;

/// <summary>
/// A schedule: which task to kick, with which arguments, and when — exactly one of <see cref="Cron"/>,
/// <see cref="Interval"/> or <see cref="RunAt"/>.
/// </summary>
public sealed record ScheduleDefinition
{
    /// <summary>Task to kick.</summary>
    public required string TaskName { get; init; }

    /// <summary>Cron expression, 5 fields (minute precision) or 6 (with seconds first), parsed by Cronos.</summary>
    public string? Cron { get; init; }

    /// <summary>IANA (or Windows) time zone the cron expression is read in; default UTC. DST is handled as Cronos does.</summary>
    public string? TimeZone { get; init; }

    /// <summary>Fixed interval (at least 1 s), counted from the schedule's creation.</summary>
    public TimeSpan? Interval { get; init; }

    /// <summary>One-shot: fire once at this instant, then the schedule is marked done.</summary>
    public DateTimeOffset? RunAt { get; init; }

    /// <summary>Positional arguments of each kicked task.</summary>
    public IReadOnlyList<object?>? Args { get; init; }

    /// <summary>Keyword arguments of each kicked task.</summary>
    public IReadOnlyDictionary<string, object?>? Kwargs { get; init; }

    /// <summary>Labels of each kicked task.</summary>
    public IReadOnlyDictionary<string, string>? Labels { get; init; }

    /// <summary>Missed instants: fire the latest once (default) or each of them.</summary>
    public MissedFirePolicy MissedFires { get; init; } = MissedFirePolicy.Skip;

    /// <summary>Most missed instants fired by <see cref="MissedFirePolicy.CatchUp"/>. Default 100.</summary>
    public int MaxCatchUp { get; init; } = 100;

    /// <summary>The kind: <c>cron</c>, <c>interval</c> or <c>once</c>.</summary>
    public string Kind => Cron is not null ? "cron" : Interval is not null ? "interval" : "once";
}
