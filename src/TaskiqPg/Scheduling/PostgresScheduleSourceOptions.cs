namespace TaskiqPg;

/// <summary>Settings of a <see cref="PostgresScheduleSource"/>.</summary>
public sealed record PostgresScheduleSourceOptions
{
    /// <summary>Schema of the schedule tables. Default <c>public</c>.</summary>
    public string Schema { get; set; } = "public";

    /// <summary>Schedules table. Default <c>taskiq_schedules</c> (as in taskiq-postgres).</summary>
    public string SchedulesTable { get; set; } = "taskiq_schedules";

    /// <summary>One row per fired instant, the exactly-once guard. Default <c>taskiq_schedule_fires</c>.</summary>
    public string FiresTable { get; set; } = "taskiq_schedule_fires";

    /// <summary>NOTIFY channel announcing schedule changes to schedulers. Default <c>taskiq_schedules</c>.</summary>
    public string Channel { get; set; } = "taskiq_schedules";

    /// <summary>Run the schema migrations in <see cref="PostgresScheduleSource.StartAsync"/>. Default true.</summary>
    public bool RunMigrations { get; set; } = true;

    /// <summary>When set, <see cref="PostgresScheduleSource.AddScheduleAsync"/> refuses task names outside it. Default: any name.</summary>
    public IReadOnlyCollection<string>? KnownTaskNames { get; set; }

    internal void Validate()
    {
        PgIdentifier.Validate(Schema, nameof(Schema));
        PgIdentifier.Validate(SchedulesTable, nameof(SchedulesTable));
        PgIdentifier.Validate(FiresTable, nameof(FiresTable));
        PgIdentifier.Validate(Channel, nameof(Channel));
    }
}
