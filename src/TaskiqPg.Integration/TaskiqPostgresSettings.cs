namespace TaskiqPg;

/// <summary>
/// Settings of <c>AddTaskiqPostgres</c>, bound from <c>Aspire:TaskiqPg</c>, then <c>Aspire:TaskiqPg:{name}</c>, then the
/// delegate. <c>ConnectionStrings:{name}</c> wins over <see cref="ConnectionString"/>.
/// </summary>
public sealed class TaskiqPostgresSettings
{
    /// <summary>Connection string of the database (normally provided by the AppHost as <c>ConnectionStrings:{name}</c>).</summary>
    public string? ConnectionString { get; set; }

    /// <summary>Schema of the TaskiqPg tables. Default <c>public</c>.</summary>
    public string Schema { get; set; } = "public";

    /// <summary>Messages table. Default <c>taskiq_messages</c>.</summary>
    public string MessagesTable { get; set; } = "taskiq_messages";

    /// <summary>Results table. Default <c>taskiq_results</c>.</summary>
    public string ResultsTable { get; set; } = "taskiq_results";

    /// <summary>Queue this app kicks to and (with a worker) claims from. Default <c>default</c>.</summary>
    public string Queue { get; set; } = "default";

    /// <summary>Handlers the worker runs at once. Default 10.</summary>
    public int MaxConcurrentTasks { get; set; } = 10;

    /// <summary>Lease of a claimed task without renewal. Default 30 s.</summary>
    public TimeSpan LeaseDuration { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Idle poll interval of the worker. Default 1 s.</summary>
    public TimeSpan PollInterval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>Turns off the health checks (database, listener, worker loop). Default false.</summary>
    public bool DisableHealthChecks { get; set; }

    /// <summary>Turns off OpenTelemetry tracing of the "TaskiqPg" source (and Npgsql's). Default false.</summary>
    public bool DisableTracing { get; set; }

    /// <summary>Turns off OpenTelemetry metrics of the "TaskiqPg" meter (and Npgsql's). Default false.</summary>
    public bool DisableMetrics { get; set; }

    /// <summary>Do not create or upgrade the schema at start (e.g. when the AppHost owns migrations). Default false.</summary>
    public bool DisableMigrations { get; set; }
}
