using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>Settings of a <see cref="PostgresBroker"/>. Defaults match taskiq-postgres's table and channel names.</summary>
public sealed record PostgresBrokerOptions
{
    /// <summary>Schema holding the messages table. Default <c>public</c>.</summary>
    public string Schema { get; set; } = "public";

    /// <summary>Messages table. Default <c>taskiq_messages</c>.</summary>
    public string MessagesTable { get; set; } = "taskiq_messages";

    /// <summary>Table of the queues' settings (paused or not), in <see cref="Schema"/>. Default <c>taskiq_queues</c>.</summary>
    public string QueuesTable { get; set; } = "taskiq_queues";

    /// <summary>Table of the live workers (each registers and heartbeats), in <see cref="Schema"/>. Default <c>taskiq_workers</c>.</summary>
    public string WorkersTable { get; set; } = "taskiq_workers";

    /// <summary>
    /// A worker of this broker whose heartbeat is older than this is dead: any worker's rescue takes back its tasks at
    /// once, without waiting for each lease to expire. Each worker registers its own bound, so workers configured
    /// differently never judge each other by their own. Default 15 s; <c>null</c>: this broker's workers are left to
    /// their leases, and its rescues take back only expired leases. Workers heartbeat every
    /// <see cref="TaskiqWorkerOptions.HeartbeatInterval"/> (at most a third of this).
    /// </summary>
    public TimeSpan? WorkerStaleAfter { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>NOTIFY channel that wakes workers. Default <c>taskiq</c>.</summary>
    public string Channel { get; set; } = "taskiq";

    /// <summary>
    /// Connection string of the LISTEN connection alone, when it must differ from the data source's. Behind a pooler in
    /// transaction mode (PgBouncer), point it at PostgreSQL directly or at a session-mode pool: LISTEN needs one server
    /// session for the connection's whole life, which a transaction pooler does not keep. Every other statement still
    /// goes through the data source. Default null: the data source's settings. <see cref="ToString"/> never shows its
    /// password.
    /// </summary>
    public string? ListenConnectionString { get; set; }

    /// <summary>
    /// Open no LISTEN connection: workers find new tasks by polling alone (a kick waits for the next claim of an idle worker: up to <see cref="TaskiqWorkerOptions.PollInterval"/>, 1 s by default; a cancel request for a running task reaches its worker with the next lease renewal). For deployments that can reach
    /// PostgreSQL only through a transaction pooler. Default false.
    /// </summary>
    public bool PollOnly { get; set; }

    /// <summary>
    /// Compatibility with Python's taskiq-postgres workers, which claim only the row whose id a NOTIFY names (they never
    /// poll): every kick also sends <c>NOTIFY {Channel}, '&lt;row id&gt;'</c>, inside its insert statement (one per
    /// task; a bulk kick notifies each row in its transaction), and a worker's promotion of due scheduled and retryable
    /// rows notifies each promoted row's id. TaskiqPg workers are woken by these too. It costs every
    /// kick the commit-time NOTIFY lock that the default coalesced wake-up avoids (see the README's Performance
    /// section). Default false.
    /// </summary>
    public bool NotifyTaskIds { get; set; }

    /// <summary>
    /// Prepare the statements that gain from it (the single kick and the worker's combined settle statement) once per
    /// physical connection. Turn off behind a pooler that does not keep protocol-level prepared statements across
    /// transactions — PgBouncer in transaction mode before 1.21 (Debian 12 ships 1.18): there a prepared statement
    /// lands on one server connection and its next use on another (<c>26000: prepared statement "_p1" does not
    /// exist</c>). Default true. A multiplexing data source never prepares. When false, a pooled data source must have
    /// <c>No Reset On Close=true</c> (the broker refuses it otherwise): a transaction-mode pooler can split the
    /// <c>DISCARD ALL</c> Npgsql sends ahead of a reused connection's next command from that command.
    /// </summary>
    public bool PrepareStatements { get; set; } = true;

    /// <summary>Queue this broker kicks to and claims from (several queues can share one table). Default <c>default</c>.</summary>
    public string Queue { get; set; } = "default";

    /// <summary>Run the schema migrations in <see cref="PostgresBroker.StartAsync"/>. Default true.</summary>
    public bool RunMigrations { get; set; } = true;

    /// <summary>How long a claimed task stays leased without a renewal before another worker may rescue it. Default 30 s.</summary>
    public TimeSpan LeaseDuration { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Attempts a task gets when its kick does not say (first run included). Default 3.</summary>
    public int DefaultMaxAttempts { get; set; } = 3;

    /// <summary>Retry delay after the first failed attempt; doubles per attempt, with 50–100 % jitter. Default 1 s.</summary>
    public TimeSpan RetryBaseDelay { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>Upper bound of the retry delay. Default 1 h.</summary>
    public TimeSpan RetryMaxDelay { get; set; } = TimeSpan.FromHours(1);

    /// <summary>Largest serialized message accepted by a kick, in bytes. Default 1 MiB.</summary>
    public int MaxMessageBytes { get; set; } = 1024 * 1024;

    /// <summary>Longest task name accepted by a kick, in characters. Default 255.</summary>
    public int MaxTaskNameLength { get; set; } = 255;

    /// <summary>
    /// How long a completed task's row is kept (state <see cref="TaskState.Completed"/>) before it is pruned. Default 24 h.
    /// <see cref="TimeSpan.Zero"/> deletes the row at the ack (the fastest path: nothing to prune later);
    /// <see cref="System.Threading.Timeout.InfiniteTimeSpan"/> keeps it.
    /// </summary>
    public TimeSpan CompletedRetention { get; set; } = TimeSpan.FromHours(24);

    /// <summary>How long a cancelled task's row is kept. Default 24 h; <see cref="System.Threading.Timeout.InfiniteTimeSpan"/> keeps it.</summary>
    public TimeSpan CancelledRetention { get; set; } = TimeSpan.FromHours(24);

    /// <summary>How long a discarded (dead-lettered) task's row is kept. Default 7 days; <see cref="System.Threading.Timeout.InfiniteTimeSpan"/> keeps it.</summary>
    public TimeSpan DiscardedRetention { get; set; } = TimeSpan.FromDays(7);

    /// <summary>The settings as text, with <see cref="ListenConnectionString"/>'s password replaced by <c>***</c>.</summary>
    /// <returns>The record's members in the compiler's format.</returns>
    public override string ToString()
        => ListenSettings.Print(nameof(PostgresBrokerOptions), (this with { ListenConnectionString = ListenSettings.Redact(ListenConnectionString) }).PrintMembers);

    /// <summary>How this component receives notifications.</summary>
    internal ListenSettings Listen => ListenSettings.Create(ListenConnectionString, PollOnly, nameof(ListenConnectionString));

    internal void Validate()
    {
        Retention(CompletedRetention, nameof(CompletedRetention));
        Retention(CancelledRetention, nameof(CancelledRetention));
        Retention(DiscardedRetention, nameof(DiscardedRetention));
        PgIdentifier.Validate(Schema, nameof(Schema));
        PgIdentifier.Validate(MessagesTable, nameof(MessagesTable));
        PgIdentifier.Validate(QueuesTable, nameof(QueuesTable));
        PgIdentifier.Validate(WorkersTable, nameof(WorkersTable));
        if (WorkerStaleAfter is { } stale)
        {
            Positive(stale, nameof(WorkerStaleAfter));
        }

        PgIdentifier.Validate(Channel, nameof(Channel));
        _ = Listen;
        PgIdentifier.Validate(Queue, nameof(Queue));
        Positive(LeaseDuration, nameof(LeaseDuration));
        Positive(RetryBaseDelay, nameof(RetryBaseDelay));
        Positive(RetryMaxDelay, nameof(RetryMaxDelay));
        if (DefaultMaxAttempts < 1)
        {
            throw new ArgumentException($"{nameof(DefaultMaxAttempts)} must be at least 1.", nameof(DefaultMaxAttempts));
        }

        if (MaxMessageBytes < 1 || MaxTaskNameLength < 1)
        {
            throw new ArgumentException($"{nameof(MaxMessageBytes)} and {nameof(MaxTaskNameLength)} must be positive.");
        }
    }

    private static void Retention(TimeSpan value, string name)
    {
        if (value < TimeSpan.Zero && value != System.Threading.Timeout.InfiniteTimeSpan)
        {
            throw new ArgumentException($"{name} must be zero, positive or Timeout.InfiniteTimeSpan (kept).", name);
        }
    }

    private static void Positive(TimeSpan value, string name)
    {
        if (value <= TimeSpan.Zero)
        {
            throw new ArgumentException($"{name} must be positive.", name);
        }
    }
}
