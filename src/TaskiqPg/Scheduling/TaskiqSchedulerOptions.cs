namespace TaskiqPg;

/// <summary>Settings of a <see cref="TaskiqScheduler"/>.</summary>
public sealed record TaskiqSchedulerOptions
{
    /// <summary>Longest sleep between looks at the schedules; a NOTIFY on change wakes the scheduler sooner. Default 5 s.</summary>
    public TimeSpan RefreshInterval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Schedules declared in code: synced on start under stable ids; static schedules no longer listed are deleted.</summary>
    public IList<ScheduleDefinition> StaticSchedules { get; set; } = [];

    /// <summary>
    /// How long fired instants are kept (the exactly-once guard needs them only briefly), and how long a one-shot schedule
    /// is kept (listed as done) after it fired; both are pruned hourly. Default 7 days.
    /// </summary>
    public TimeSpan FiresRetention { get; set; } = TimeSpan.FromDays(7);

    internal void Validate()
    {
        if (RefreshInterval <= TimeSpan.Zero || FiresRetention <= TimeSpan.Zero)
        {
            throw new ArgumentException($"{nameof(RefreshInterval)} and {nameof(FiresRetention)} must be positive.");
        }
    }
}
