namespace TaskiqPg;

/// <summary>A worker registered in the workers table (see <see cref="PostgresBroker.GetWorkersAsync"/>).</summary>
/// <param name="Id">Its <see cref="TaskiqWorker.WorkerId"/> (the <c>locked_by</c> of its tasks).</param>
/// <param name="Host">The machine it runs on.</param>
/// <param name="ProcessId">Its process id.</param>
/// <param name="Queues">The queues it serves.</param>
/// <param name="StartedAt">When it registered.</param>
/// <param name="HeartbeatAt">Its last heartbeat (database clock).</param>
/// <param name="InFlight">Tasks it held (running or prefetched) at that heartbeat.</param>
/// <param name="Capacity">Tasks it holds at most (concurrency plus prefetch).</param>
/// <param name="IsStale">Its heartbeat is older than <see cref="PostgresBrokerOptions.WorkerStaleAfter"/>: it is taken for dead.</param>
public sealed record WorkerInfo(string Id, string Host, int ProcessId, IReadOnlyList<string> Queues, DateTimeOffset StartedAt,
    DateTimeOffset HeartbeatAt, int InFlight, int Capacity, bool IsStale);
