namespace TaskiqPg;

/// <summary>How a worker serving several queues (<see cref="TaskiqWorkerOptions.Queues"/>) shares its free slots.</summary>
public enum QueueOrder
{
    /// <summary>In the order listed: a queue gets only the slots the queues before it leave (it runs while they are empty).</summary>
    Strict,

    /// <summary>
    /// By <see cref="TaskiqWorkerOptions.QueueWeights"/>: while every queue has work, each gets slots in proportion to its
    /// weight; the slots a queue cannot use go to the others.
    /// </summary>
    Weighted,
}

/// <summary>Settings of a <see cref="TaskiqWorker"/>.</summary>
public sealed record TaskiqWorkerOptions
{
    /// <summary>Handlers running at once. Default 10.</summary>
    public int MaxConcurrentTasks { get; set; } = 10;

    /// <summary>Tasks claimed ahead of free handler slots. <c>null</c> (default): equal to <see cref="MaxConcurrentTasks"/>.</summary>
    public int? PrefetchCount { get; set; }

    /// <summary>Most tasks claimed by one statement. Default 100.</summary>
    public int ClaimBatchSize { get; set; } = 100;

    /// <summary>How often an idle worker looks for due tasks when no NOTIFY arrives (delayed tasks, retries, missed notifications). Default 1 s.</summary>
    public TimeSpan PollInterval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>When tasks are acknowledged. Default <see cref="AckMode.WhenSaved"/>.</summary>
    public AckMode AckMode { get; set; } = AckMode.WhenSaved;

    /// <summary>Handler timeout when neither the task's <c>timeout</c> label nor its registration sets one. Default none.</summary>
    public TimeSpan? DefaultTaskTimeout { get; set; }

    /// <summary>On stop, how long running tasks may finish before their tokens are cancelled. Default 30 s.</summary>
    public TimeSpan ShutdownTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>How often held leases are renewed. <c>null</c> (default): a third of the broker's lease duration.</summary>
    public TimeSpan? LeaseRenewInterval { get; set; }

    /// <summary>How often this worker rescues tasks whose lease expired or whose worker stopped heartbeating. <c>null</c>
    /// (default): half the broker's lease duration, or half its <see cref="PostgresBrokerOptions.WorkerStaleAfter"/> when shorter.</summary>
    public TimeSpan? RescueInterval { get; set; }

    /// <summary>
    /// How often this worker deletes finished rows of its queue that are past their retention
    /// (<see cref="PostgresBrokerOptions.CompletedRetention"/> and the others), at most 20,000 per state and round. Default 30 s.
    /// </summary>
    public TimeSpan PruneInterval { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// How often the worker writes its heartbeat to the workers table (on its renewal thread, so a busy process still
    /// beats). At most a third of <see cref="PostgresBrokerOptions.WorkerStaleAfter"/>. Default 2 s.
    /// </summary>
    public TimeSpan HeartbeatInterval { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// Identity written to <c>locked_by</c>; must be unique among live workers (leases, renewals and the take-back of
    /// orphaned claims are checked against it). <c>null</c> (default): host name, process id and a random suffix.
    /// </summary>
    public string? WorkerId { get; set; }

    /// <summary>
    /// The queues of the broker's table this worker claims from (the first first under <see cref="QueueOrder.Strict"/>).
    /// <c>null</c> (default): the broker's own <see cref="PostgresBrokerOptions.Queue"/>. One connection pool, one
    /// listener and one renewal connection serve them all; each queue keeps its own pause state, and one paused queue
    /// leaves the others running.
    /// </summary>
    public IReadOnlyList<string>? Queues { get; set; }

    /// <summary>How free slots are shared among <see cref="Queues"/>. Default <see cref="QueueOrder.Strict"/>.</summary>
    public QueueOrder QueueOrder { get; set; } = QueueOrder.Strict;

    /// <summary>
    /// Weights of <see cref="Queues"/> under <see cref="QueueOrder.Weighted"/>, by queue name (a queue not listed weighs 1):
    /// while every queue has work, slots go to them in these proportions.
    /// </summary>
    public IReadOnlyDictionary<string, int>? QueueWeights { get; set; }

    internal void Validate()
    {
        if (Queues is not null)
        {
            if (Queues.Count == 0)
            {
                throw new ArgumentException($"{nameof(Queues)} must name at least one queue (or be null: the broker's queue).", nameof(Queues));
            }

            foreach (var queue in Queues)
            {
                PgIdentifier.Validate(queue, nameof(Queues));
            }

            if (Queues.Distinct(StringComparer.Ordinal).Count() != Queues.Count)
            {
                throw new ArgumentException($"{nameof(Queues)} names a queue twice.", nameof(Queues));
            }
        }

        if (!Enum.IsDefined(QueueOrder))
        {
            throw new ArgumentException($"{nameof(QueueOrder)} {(int)QueueOrder} is not a defined value.", nameof(QueueOrder));
        }

        if (QueueWeights is not null)
        {
            if (QueueOrder != QueueOrder.Weighted)
            {
                throw new ArgumentException($"{nameof(QueueWeights)} apply only with {nameof(QueueOrder)} = {nameof(QueueOrder.Weighted)}.", nameof(QueueWeights));
            }

            foreach (var (queue, weight) in QueueWeights)
            {
                if (Queues is null || !Queues.Contains(queue, StringComparer.Ordinal))
                {
                    throw new ArgumentException($"{nameof(QueueWeights)} weighs queue '{queue}', which is not in {nameof(Queues)}.", nameof(QueueWeights));
                }

                if (weight is < 1 or > 1000)
                {
                    throw new ArgumentException($"{nameof(QueueWeights)}: the weight of '{queue}' must be between 1 and 1000 (got {weight}).", nameof(QueueWeights));
                }
            }
        }

        if (MaxConcurrentTasks < 1)
        {
            throw new ArgumentException($"{nameof(MaxConcurrentTasks)} must be at least 1.", nameof(MaxConcurrentTasks));
        }

        if (PrefetchCount is < 0 || ClaimBatchSize < 1)
        {
            throw new ArgumentException($"{nameof(PrefetchCount)} must not be negative and {nameof(ClaimBatchSize)} must be at least 1.");
        }

        foreach (var (value, name) in new[] { (PollInterval, nameof(PollInterval)), (ShutdownTimeout, nameof(ShutdownTimeout)), (PruneInterval, nameof(PruneInterval)), (HeartbeatInterval, nameof(HeartbeatInterval)) })
        {
            if (value <= TimeSpan.Zero)
            {
                throw new ArgumentException($"{name} must be positive.", name);
            }
        }
    }
}
