using TaskiqPg.Internal;

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

    /// <summary>
    /// Connection string of the LISTEN connection alone, when it must differ from the data source's. Behind a pooler in
    /// transaction mode (PgBouncer), point it at PostgreSQL directly or at a session-mode pool: LISTEN needs one server
    /// session for the connection's whole life, which a transaction pooler does not keep. Every other statement still
    /// goes through the data source. Default null: the data source's settings. <see cref="ToString"/> never shows its
    /// password.
    /// </summary>
    public string? ListenConnectionString { get; set; }

    /// <summary>
    /// Open no LISTEN connection: schedulers learn of added, paused and deleted schedules by polling alone (within <see cref="TaskiqSchedulerOptions.RefreshInterval"/>). For deployments that can reach
    /// PostgreSQL only through a transaction pooler. Default false.
    /// </summary>
    public bool PollOnly { get; set; }

    /// <summary>Run the schema migrations in <see cref="PostgresScheduleSource.StartAsync"/>. Default true.</summary>
    public bool RunMigrations { get; set; } = true;

    /// <summary>When set, <see cref="PostgresScheduleSource.AddScheduleAsync"/> refuses task names outside it. Default: any name.</summary>
    public IReadOnlyCollection<string>? KnownTaskNames { get; set; }

    /// <summary>The settings as text, with <see cref="ListenConnectionString"/>'s password replaced by <c>***</c>.</summary>
    /// <returns>The record's members in the compiler's format.</returns>
    public override string ToString()
        => ListenSettings.Print(nameof(PostgresScheduleSourceOptions), (this with { ListenConnectionString = ListenSettings.Redact(ListenConnectionString) }).PrintMembers);

    /// <summary>How this component receives notifications.</summary>
    internal ListenSettings Listen => ListenSettings.Create(ListenConnectionString, PollOnly, nameof(ListenConnectionString));

    internal void Validate()
    {
        PgIdentifier.Validate(Schema, nameof(Schema));
        PgIdentifier.Validate(SchedulesTable, nameof(SchedulesTable));
        PgIdentifier.Validate(FiresTable, nameof(FiresTable));
        PgIdentifier.Validate(Channel, nameof(Channel));
        _ = Listen;
    }
}
