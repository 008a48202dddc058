using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>Settings of a <see cref="PostgresResultBackend"/>.</summary>
public sealed record PostgresResultBackendOptions
{
    /// <summary>Schema holding the results table. Default <c>public</c>.</summary>
    public string Schema { get; set; } = "public";

    /// <summary>Results table. Default <c>taskiq_results</c>.</summary>
    public string ResultsTable { get; set; } = "taskiq_results";

    /// <summary>NOTIFY channel announcing stored results (wakes <see cref="PostgresResultBackend.WaitForResultAsync"/>). Default <c>taskiq_results</c>.</summary>
    public string Channel { get; set; } = "taskiq_results";

    /// <summary>
    /// Connection string of the LISTEN connection alone, when it must differ from the data source's. Behind a pooler in
    /// transaction mode (PgBouncer), point it at PostgreSQL directly or at a session-mode pool: LISTEN needs one server
    /// session for the connection's whole life, which a transaction pooler does not keep. Every other statement still
    /// goes through the data source. Default null: the data source's settings. <see cref="ToString"/> never shows its
    /// password.
    /// </summary>
    public string? ListenConnectionString { get; set; }

    /// <summary>
    /// Open no LISTEN connection: result waiters learn of stored results by polling alone (a waiter re-checks every 200 ms). For deployments that can reach
    /// PostgreSQL only through a transaction pooler. Default false.
    /// </summary>
    public bool PollOnly { get; set; }

    /// <summary>Run the schema migrations in <see cref="PostgresResultBackend.StartAsync"/>. Default true.</summary>
    public bool RunMigrations { get; set; } = true;

    /// <summary>Keep a result after it was read. False deletes it once it was read and deserialized. Default true.</summary>
    public bool KeepResults { get; set; } = true;

    /// <summary>How long a result lives; <c>null</c> keeps results forever. Default 1 day.</summary>
    public TimeSpan? ResultTtl { get; set; } = TimeSpan.FromDays(1);

    /// <summary>How often the background pruner deletes expired results; <c>null</c> or zero turns it off. Default 1 min.</summary>
    public TimeSpan? PruneInterval { get; set; } = TimeSpan.FromMinutes(1);

    /// <summary>Rows deleted per pruning statement (small batches keep locks short). Default 1000.</summary>
    public int PruneBatchSize { get; set; } = 1000;

    /// <summary>Store the stack trace of failed tasks (in its own column). Default true.</summary>
    public bool StoreStackTraces { get; set; } = true;

    /// <summary>
    /// Safety-net re-check of waiting <see cref="PostgresResultBackend.WaitForResultAsync"/> calls while the LISTEN
    /// connection is up (waiters are woken by NOTIFY; while it is down they re-check every 200 ms). Default 5 s.
    /// </summary>
    public TimeSpan WaitRecheckInterval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>The settings as text, with <see cref="ListenConnectionString"/>'s password replaced by <c>***</c>.</summary>
    /// <returns>The record's members in the compiler's format.</returns>
    public override string ToString()
        => ListenSettings.Print(nameof(PostgresResultBackendOptions), (this with { ListenConnectionString = ListenSettings.Redact(ListenConnectionString) }).PrintMembers);

    /// <summary>How this component receives notifications.</summary>
    internal ListenSettings Listen => ListenSettings.Create(ListenConnectionString, PollOnly, nameof(ListenConnectionString));

    internal void Validate()
    {
        PgIdentifier.Validate(Schema, nameof(Schema));
        PgIdentifier.Validate(ResultsTable, nameof(ResultsTable));
        PgIdentifier.Validate(Channel, nameof(Channel));
        _ = Listen;
        if (ResultTtl is { } ttl && ttl <= TimeSpan.Zero)
        {
            throw new ArgumentException($"{nameof(ResultTtl)} must be positive or null.", nameof(ResultTtl));
        }

        if (PruneBatchSize < 1)
        {
            throw new ArgumentException($"{nameof(PruneBatchSize)} must be at least 1.", nameof(PruneBatchSize));
        }

        if (WaitRecheckInterval <= TimeSpan.Zero)
        {
            throw new ArgumentException($"{nameof(WaitRecheckInterval)} must be positive.", nameof(WaitRecheckInterval));
        }
    }
}
