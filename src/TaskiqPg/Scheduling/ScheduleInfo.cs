namespace TaskiqPg;

/// <summary>A stored schedule as listed by <see cref="PostgresScheduleSource.ListSchedulesAsync"/>.</summary>
/// <param name="Id">Schedule id (stable for static schedules: derived from the definition).</param>
/// <param name="Definition">The definition.</param>
/// <param name="IsStatic">Declared in code (replaced on every start) rather than added at runtime.</param>
/// <param name="Enabled">False while paused or after it was disabled.</param>
/// <param name="Done">A one-shot schedule that fired.</param>
/// <param name="DisabledReason">Why it was disabled (e.g. it no longer parses).</param>
/// <param name="LastFireAt">The last instant fired.</param>
public sealed record ScheduleInfo(Guid Id, ScheduleDefinition Definition, bool IsStatic, bool Enabled, bool Done, string? DisabledReason,
    DateTimeOffset? LastFireAt);
