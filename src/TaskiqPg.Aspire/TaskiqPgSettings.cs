namespace TaskiqPg;

/// <summary>
/// Settings of <c>AddTaskiqPgClient</c>, bound from <c>Aspire:TaskiqPg</c>, then <c>Aspire:TaskiqPg:{name}</c>, then the
/// delegate. <c>ConnectionStrings:{name}</c> wins over <see cref="ConnectionString"/>.
/// </summary>
public sealed class TaskiqPgSettings
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

    /// <summary>Most tasks claimed ahead of free handler slots. <c>null</c> (default): equal to <see cref="MaxConcurrentTasks"/>.</summary>
    public int? PrefetchCount { get; set; }

    /// <summary>Most tasks claimed by one statement. <c>null</c> (default): 100.</summary>
    public int? ClaimBatchSize { get; set; }

    /// <summary>When tasks are acknowledged. <c>null</c> (default): <see cref="TaskiqPg.AckMode.WhenSaved"/>.</summary>
    public AckMode? AckMode { get; set; }

    /// <summary>Handler timeout when neither the task's <c>timeout</c> label nor its registration sets one. <c>null</c> (default): none.</summary>
    public TimeSpan? DefaultTaskTimeout { get; set; }

    /// <summary>On stop, how long running tasks may finish before their tokens are cancelled. <c>null</c> (default): 30 s.</summary>
    public TimeSpan? ShutdownTimeout { get; set; }

    /// <summary>How often the worker writes its heartbeat. <c>null</c> (default): 2 s.</summary>
    public TimeSpan? HeartbeatInterval { get; set; }

    /// <summary>How often the worker deletes finished rows past their retention. <c>null</c> (default): 30 s.</summary>
    public TimeSpan? PruneInterval { get; set; }

    /// <summary>
    /// The queues the worker claims from (the first first under <see cref="TaskiqPg.QueueOrder.Strict"/>). <c>null</c>
    /// (default): <see cref="Queue"/> alone. Kicks still go to <see cref="Queue"/> unless a kick names another.
    /// </summary>
    public string[]? Queues { get; set; }

    /// <summary>How the worker shares free slots among <see cref="Queues"/>. <c>null</c> (default): <see cref="TaskiqPg.QueueOrder.Strict"/>.</summary>
    public QueueOrder? QueueOrder { get; set; }

    /// <summary>Weights of <see cref="Queues"/> under <see cref="TaskiqPg.QueueOrder.Weighted"/> (a queue not listed weighs 1).</summary>
    public Dictionary<string, int>? QueueWeights { get; set; }

    /// <summary>Attempts a task gets when its kick sets none (first run included). <c>null</c> (default): 3.</summary>
    public int? DefaultMaxAttempts { get; set; }

    /// <summary>First retry delay (doubled per attempt, with jitter). <c>null</c> (default): 1 s.</summary>
    public TimeSpan? RetryBaseDelay { get; set; }

    /// <summary>Longest retry delay. <c>null</c> (default): 1 h.</summary>
    public TimeSpan? RetryMaxDelay { get; set; }

    /// <summary>
    /// How long a completed task's row is kept. <c>null</c> (default): 24 h; <c>00:00:00</c> deletes it at the ack;
    /// <c>-00:00:00.001</c> (<see cref="Timeout.InfiniteTimeSpan"/>) keeps it.
    /// </summary>
    public TimeSpan? CompletedRetention { get; set; }

    /// <summary>How long a cancelled task's row is kept. <c>null</c> (default): 24 h; <c>-00:00:00.001</c> keeps it.</summary>
    public TimeSpan? CancelledRetention { get; set; }

    /// <summary>How long a dead-lettered task's row is kept. <c>null</c> (default): 7 days; <c>-00:00:00.001</c> keeps it.</summary>
    public TimeSpan? DiscardedRetention { get; set; }

    /// <summary>Largest message a kick accepts, in bytes. <c>null</c> (default): 1 MiB.</summary>
    public int? MaxMessageBytes { get; set; }

    /// <summary>Keep a result after it was read (false deletes it once read). <c>null</c> (default): true.</summary>
    public bool? KeepResults { get; set; }

    /// <summary>How long a result lives. <c>null</c> (default): 1 day; <c>-00:00:00.001</c> (<see cref="Timeout.InfiniteTimeSpan"/>) keeps results forever.</summary>
    public TimeSpan? ResultTtl { get; set; }

    /// <summary>Store the stack trace of failed tasks. <c>null</c> (default): true.</summary>
    public bool? StoreStackTraces { get; set; }

    /// <summary>How often the scheduler (when added) rereads its schedules. <c>null</c> (default): 5 s.</summary>
    public TimeSpan? SchedulerRefreshInterval { get; set; }

    /// <summary>
    /// Do not prepare statements (<see cref="TaskiqPg.PostgresBrokerOptions.PrepareStatements"/> off): set it when the
    /// connection string goes through PgBouncer in transaction mode before 1.21. The data source this integration
    /// registers then also gets <c>No Reset On Close=true</c> (a data source the app registered itself must have it:
    /// the broker refuses one without). Default false.
    /// </summary>
    public bool DisablePreparedStatements { get; set; }

    /// <summary>
    /// Connection string of the LISTEN connections (broker, result backend, schedule source) when the main connection
    /// string goes through a pooler in transaction mode: point it at PostgreSQL directly or at a session-mode pool. Sets
    /// each component's <c>ListenConnectionString</c>. Default null: the main connection string.
    /// </summary>
    public string? ListenConnectionString { get; set; }

    /// <summary>
    /// Open no LISTEN connection at all and poll instead (each component's <c>PollOnly</c>): a kick starts within the
    /// worker's poll interval (1 s by default), a result wait notices a stored result within 200 ms, a scheduler sees
    /// schedule changes within its refresh interval. Default false.
    /// </summary>
    public bool PollOnly { get; set; }

    /// <summary>
    /// Python taskiq-postgres compatibility: every kick also sends a NOTIFY with its row id, which Python workers need
    /// (they claim only notified ids). It costs each kick a commit-time lock. Default false.
    /// </summary>
    public bool NotifyTaskIds { get; set; }

    /// <summary>
    /// Trace the database statements of TaskiqPg's own background loops (polls, claims, settles, renewals, rescues,
    /// pruning, scheduler ticks). Default false: each would be a root trace, burying the traces of tasks; statements
    /// inside a task's handler and inside a kick are traced either way.
    /// </summary>
    public bool TraceBackgroundWork { get; set; }

    /// <summary>Turns off the health checks (database, listener, worker loop). Default false.</summary>
    public bool DisableHealthChecks { get; set; }

    /// <summary>Turns off OpenTelemetry tracing of the "TaskiqPg" source (and Npgsql's). Default false.</summary>
    public bool DisableTracing { get; set; }

    /// <summary>Turns off OpenTelemetry metrics of the "TaskiqPg" meter (and Npgsql's). Default false.</summary>
    public bool DisableMetrics { get; set; }

    /// <summary>Do not create or upgrade the schema at start (e.g. when the AppHost owns migrations). Default false.</summary>
    public bool DisableMigrations { get; set; }
}
