using System.Text.Json;
using Npgsql;
using NpgsqlTypes;
using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// The lease protocol the worker speaks (internal: users kick, read and operate tasks; the worker holds the leases):
/// claim and promote, ack (alone or inside the handler's transaction), fail, renew, release, requeue, rescue, and the
/// workers' registry (heartbeat, deregister, forget the dead). Every statement that touches a claim checks the lease
/// (<see cref="BrokerSql.LeaseHeld"/>).
/// </summary>
public sealed partial class PostgresBroker
{
    /// <summary>Claims up to <paramref name="maxCount"/> due tasks for <paramref name="workerId"/>, highest priority first,
    /// leasing each for <see cref="PostgresBrokerOptions.LeaseDuration"/> (database clock). Scheduled and retryable tasks
    /// that have come due are made available first.</summary>
    internal async Task<IReadOnlyList<ClaimedTask>> ClaimAsync(string workerId, int maxCount, CancellationToken cancellationToken = default)
        => (await ClaimWithNextDueAsync(workerId, maxCount, cancellationToken)).Claimed;

    /// <summary>How long until the next scheduled or retryable task of this broker's queue is due (null: none).</summary>
    internal Task<TimeSpan?> GetNextDueAsync(CancellationToken cancellationToken) => GetNextDueAsync([Options.Queue], cancellationToken);

    /// <summary>How long until the next scheduled or retryable task of any of <paramref name="queues"/> is due (null: none).</summary>
    internal async Task<TimeSpan?> GetNextDueAsync(IReadOnlyList<string> queues, CancellationToken cancellationToken)
    {
        // Prepared: an idle worker runs it after every short claim, and planning it cost more than running it (0.16 ms
        // against 0.02 ms); its probes name their state as literals, so the generic plan uses the partial index too.
        await using var connection = await DataSource.OpenConnectionAsync(cancellationToken);
        await using var command = new NpgsqlCommand(queues.Count == 1 ? _sql.NextDueOfQueue : _sql.NextDue, connection);
        command.Parameters.Add(queues.Count == 1
            ? new NpgsqlParameter<string> { TypedValue = queues[0] }
            : new NpgsqlParameter<string[]> { TypedValue = queues.ToArray() });
        await command.PrepareIfSupportedAsync(CanPrepare, cancellationToken);
        return await command.ExecuteScalarAsync(cancellationToken) is TimeSpan due ? due : null;
    }

    /// <summary>Most scheduled or retryable rows made available per claim (the rest by the next claims).</summary>
    internal const int PromoteBatchSize = 1000;

    /// <summary>
    /// <see cref="ClaimAsync"/>, and how long until the queue's next scheduled or retryable task is due (null: none), so a
    /// worker can wake exactly then. One round trip: promote, claim, next due.
    /// </summary>
    /// <param name="workerId">The claiming worker.</param>
    /// <param name="maxCount">Most rows claimed.</param>
    /// <param name="promote">Make due scheduled and retryable rows available first. A caller that knows (from the last
    /// next-due time) that none is due skips it: its planning alone costs about a millisecond per claim.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <param name="readNextDue">Also read the next due time (else <c>NextDue</c> is null and <c>NextDueRead</c> false).</param>
    internal Task<(IReadOnlyList<ClaimedTask> Claimed, TimeSpan? NextDue)> ClaimWithNextDueAsync(string workerId, int maxCount,
        CancellationToken cancellationToken, bool promote = true, bool readNextDue = true)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxCount, 1);
        return ClaimWithNextDueAsync(workerId, [(Options.Queue, maxCount)], readNextDue ? [Options.Queue] : null, cancellationToken, promote);
    }

    /// <summary>
    /// Claims from several queues of this table in one round trip: up to each entry's limit from its queue (each
    /// promoting its due scheduled and retryable rows first when <paramref name="promote"/>), and reads how long until
    /// the next scheduled or retryable task of <paramref name="nextDueOf"/> is due (null: not read).
    /// </summary>
    internal async Task<(IReadOnlyList<ClaimedTask> Claimed, TimeSpan? NextDue)> ClaimWithNextDueAsync(string workerId,
        IReadOnlyList<(string Queue, int Limit)> claims, IReadOnlyList<string>? nextDueOf, CancellationToken cancellationToken, bool promote = true)
    {
        ArgumentException.ThrowIfNullOrEmpty(workerId);
        await StartAsync(cancellationToken);
        await using var batch = DataSource.CreateBatch();
        var maxCount = 0;
        foreach (var (queue, limit) in claims)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(limit, 1);
            maxCount += limit;
            if (promote)
            {
                var promotion = new NpgsqlBatchCommand(_sql.Promote);
                promotion.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
                promotion.Parameters.Add(new NpgsqlParameter<int> { TypedValue = PromoteBatchSize });
                promotion.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
                batch.BatchCommands.Add(promotion);
            }

            var claim = new NpgsqlBatchCommand(_sql.Claim);
            claim.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
            claim.Parameters.Add(new NpgsqlParameter<int> { TypedValue = limit });
            claim.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
            claim.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = Options.LeaseDuration });
            batch.BatchCommands.Add(claim);
        }

        if (nextDueOf is not null)
        {
            var nextDue = new NpgsqlBatchCommand(_sql.NextDue);
            nextDue.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = nextDueOf.ToArray() });
            batch.BatchCommands.Add(nextDue);
        }

        var claimed = new List<ClaimedTask>(maxCount);
        TimeSpan? due = null;
        await using (var reader = await batch.ExecuteReaderAsync(cancellationToken))
        {
            for (var i = 0; i < claims.Count; i++)
            {
                if (i > 0)
                {
                    await reader.NextResultAsync(cancellationToken);
                }

                if (promote)
                {
                    while (await reader.ReadAsync(cancellationToken))
                    {
                        // promoted queues: their NOTIFY wakes other workers; this one claims right below
                    }

                    await reader.NextResultAsync(cancellationToken);
                }

                while (await reader.ReadAsync(cancellationToken))
                {
                    claimed.Add(new ClaimedTask
                    {
                        Id = reader.GetInt64(0),
                        TaskId = reader.GetString(1),
                        TaskName = reader.GetString(2),
                        Message = reader.GetString(3),
                        Attempt = reader.GetInt32(4),
                        MaxAttempts = reader.GetInt32(5),
                        Priority = reader.GetInt32(6),
                        RunAt = reader.GetFieldValue<DateTimeOffset>(7),
                        CreatedAt = reader.GetFieldValue<DateTimeOffset>(8),
                        ClaimedAt = reader.GetFieldValue<DateTimeOffset>(9),
                        Claim = reader.GetInt32(10),
                        Queue = reader.GetString(11),
                    });
                }
            }

            if (nextDueOf is not null && await reader.NextResultAsync(cancellationToken) && await reader.ReadAsync(cancellationToken) && !reader.IsDBNull(0))
            {
                due = reader.GetFieldValue<TimeSpan>(0);
            }
        }

        // UPDATE ... RETURNING does not keep the CTE's order.
        foreach (var task in claimed)
        {
            TaskiqDiagnostics.QueueWait.Record(Math.Max(0, (task.ClaimedAt - task.RunAt).TotalSeconds),
                new KeyValuePair<string, object?>(MessagingTags.Destination, task.Queue));
        }

        // In the order of the queues asked for, then as the claim orders them.
        var order = claims.Count == 1 ? null : claims.Select((c, i) => (c.Queue, i)).ToDictionary(c => c.Queue, c => c.i);
        claimed.Sort((a, b) => order is not null && a.Queue != b.Queue ? order[a.Queue].CompareTo(order[b.Queue])
            : a.Priority != b.Priority ? b.Priority.CompareTo(a.Priority)
            : a.RunAt != b.RunAt ? a.RunAt.CompareTo(b.RunAt) : a.Id.CompareTo(b.Id));
        return (claimed, due);
    }

    /// <summary>Completes claims (deletes their rows) if each lease is still this worker's.</summary>
    /// <returns>The row ids that were completed; a missing id means the lease was lost (e.g. rescued and rerun).</returns>
    internal Task<IReadOnlySet<long>> AckAsync(string workerId, IReadOnlyCollection<LeaseRef> leases, CancellationToken cancellationToken = default)
        => LeaseCommandAsync(_sql.Ack, workerId, leases, withLease: false, cancellationToken);

    /// <summary>
    /// Completes a claim inside the caller's connection and transaction (see <see cref="TaskContext.CompleteInTransactionAsync{T}"/>):
    /// the row becomes completed (or is deleted without a completed retention) only if the caller commits.
    /// </summary>
    /// <returns>False when the lease is no longer <paramref name="workerId"/>'s: the caller must roll back.</returns>
    internal async Task<bool> CompleteInTransactionAsync(string workerId, LeaseRef lease, NpgsqlConnection connection, NpgsqlTransaction? transaction,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        await using var command = new NpgsqlCommand(_sql.Ack, connection, transaction);
        command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = [lease.Id] });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = [lease.Claim] });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken);
    }

    /// <summary><see cref="AckAsync"/> by claim: which leases (row and attempt) were completed.</summary>
    internal async Task<IReadOnlySet<LeaseRef>> AckLeasesAsync(string workerId, IReadOnlyCollection<LeaseRef> leases, CancellationToken cancellationToken)
        => await LeaseRefCommandAsync(_sql.Ack, workerId, leases, withLease: false, cancellationToken);

    /// <summary>
    /// The ack at receipt (<see cref="AckMode.WhenReceived"/>), safe to repeat after a failure: with
    /// <paramref name="afterFailure"/> it also returns the claims an earlier attempt acked although its reply was lost.
    /// Also the flusher's ack retried after a failure when the results live on another data source.
    /// </summary>
    internal async Task<IReadOnlySet<LeaseRef>> AckOnReceiptAsync(string workerId, IReadOnlyCollection<LeaseRef> leases, bool afterFailure,
        CancellationToken cancellationToken)
    {
        var refs = new HashSet<LeaseRef>();
        await using var command = DataSource.CreateCommand(_sql.AckOnReceipt);
        command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = leases.Select(l => l.Id).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = leases.Select(l => l.Claim).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        command.Parameters.Add(new NpgsqlParameter<bool> { TypedValue = afterFailure });
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            refs.Add(new LeaseRef(reader.GetInt64(0), reader.GetInt32(1)));
        }

        return refs;
    }

    /// <summary><see cref="RenewLeasesAsync"/> by claim: which leases (row and attempt) are still this worker's, now extended.</summary>
    internal async Task<IReadOnlySet<LeaseRef>> RenewLeaseRefsAsync(string workerId, IReadOnlyCollection<LeaseRef> leases, CancellationToken cancellationToken)
        => await LeaseRefCommandAsync(_sql.Renew, workerId, leases, withLease: true, cancellationToken);

    /// <summary>Extends the leases that are still this worker's.</summary>
    /// <returns>The row ids renewed; a missing id means that lease was lost.</returns>
    internal Task<IReadOnlySet<long>> RenewLeasesAsync(string workerId, IReadOnlyCollection<LeaseRef> leases, CancellationToken cancellationToken = default)
        => LeaseCommandAsync(_sql.Renew, workerId, leases, withLease: true, cancellationToken);

    /// <summary>
    /// Synchronous <see cref="RenewLeasesAsync"/> for the worker's dedicated renewal thread: blocking I/O on its own
    /// thread keeps leases alive even when handlers starve the thread pool (which async continuations need).
    /// </summary>
    /// <remarks>
    /// With <paramref name="everythingOfWorker"/>, every row leased to <paramref name="workerId"/> is renewed, held or
    /// not, except <paramref name="givenUp"/>: while a claim is in flight its rows are leased in the database before the
    /// worker has registered them (under thread-pool starvation that gap can outlast a lease).
    /// </remarks>
    internal IReadOnlySet<LeaseRef> RenewLeases(NpgsqlConnection connection, string workerId, IReadOnlyCollection<LeaseRef> leases,
        IReadOnlyCollection<bool> started, bool everythingOfWorker = false, IReadOnlyCollection<LeaseRef>? givenUp = null)
        => RenewLeases(connection, workerId, leases, started, everythingOfWorker, givenUp, out _, out _);

    /// <summary><see cref="RenewLeases(NpgsqlConnection, string, IReadOnlyCollection{LeaseRef}, IReadOnlyCollection{bool}, bool, IReadOnlyCollection{LeaseRef}?)"/>,
    /// and which of the renewed claims have a cancel request (null: none). <paramref name="queues"/>: the worker's queues
    /// (null: this broker's), whose rows <paramref name="everythingOfWorker"/> renews.</summary>
    internal IReadOnlySet<LeaseRef> RenewLeases(NpgsqlConnection connection, string workerId, IReadOnlyCollection<LeaseRef> leases,
        IReadOnlyCollection<bool> started, bool everythingOfWorker, IReadOnlyCollection<LeaseRef>? givenUp, out HashSet<LeaseRef>? cancelRequested,
        out HashSet<LeaseRef>? busy, IReadOnlyList<string>? queues = null)
    {
        cancelRequested = null;
        busy = null;
        if (leases.Count == 0 && !everythingOfWorker)
        {
            return new HashSet<LeaseRef>();
        }

        using var batch = new NpgsqlBatch(connection);
        if (everythingOfWorker)
        {
            var command = new NpgsqlBatchCommand(_sql.RenewAllOfWorker);
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
            command.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = Options.LeaseDuration });
            command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = queues?.ToArray() ?? [Options.Queue] });
            command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = givenUp?.Select(g => g.Id).ToArray() ?? [] });
            command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = givenUp?.Select(g => g.Claim).ToArray() ?? [] });
            batch.BatchCommands.Add(command);
        }
        else
        {
            batch.BatchCommands.Add(CreateLeaseCommand(_sql.RenewHeld, workerId, leases, withLease: true, started));
        }

        using var reader = batch.ExecuteReader();
        var renewed = new HashSet<LeaseRef>();
        while (reader.Read())
        {
            var lease = new LeaseRef(reader.GetInt64(0), reader.GetInt32(1));
            if (reader.GetBoolean(3))
            {
                (busy ??= []).Add(lease); // locked by another transaction (a settle, a cancel): neither renewed nor lost
                continue;
            }

            renewed.Add(lease);
            if (reader.GetBoolean(2))
            {
                (cancelRequested ??= []).Add(lease);
            }
        }

        return renewed;
    }

    /// <summary>
    /// Returns to the queue every row leased to <paramref name="workerId"/> that it does not hold: rows whose claim
    /// committed on the server while the connection died before the worker read them (a restart, a network cut).
    /// Without this they would wait out their lease. Only the claiming loop may call it, between claims.
    /// <paramref name="queues"/>: the worker's queues (null: this broker's).
    /// </summary>
    internal async Task<int> ReleaseOrphansAsync(string workerId, IReadOnlyCollection<long> held, CancellationToken cancellationToken,
        IReadOnlyList<string>? queues = null)
    {
        await using var command = DataSource.CreateCommand(_sql.ReleaseOrphans);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = held.ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = queues?.ToArray() ?? [Options.Queue] });
        return await command.ExecuteNonQueryAsync(cancellationToken);
    }

    /// <summary>Returns claimed but unstarted tasks to the queue at once, without using up an attempt.</summary>
    internal Task<IReadOnlySet<long>> ReleaseAsync(string workerId, IReadOnlyCollection<LeaseRef> leases, CancellationToken cancellationToken = default)
        => LeaseCommandAsync(_sql.Release, workerId, leases, withLease: false, cancellationToken);

    /// <summary>
    /// Records failed attempts: a retryable failure with attempts left becomes <see cref="TaskState.Retryable"/>, due
    /// after an exponential backoff with jitter (computed in SQL); otherwise the task is <see cref="TaskState.Discarded"/>.
    /// The reason is kept in <c>last_error</c>.
    /// </summary>
    /// <returns>For each row whose lease was still ours, its new state.</returns>
    internal async Task<IReadOnlyDictionary<long, TaskState>> FailAsync(string workerId, IReadOnlyCollection<TaskFailure> failures,
        CancellationToken cancellationToken = default)
    {
        if (failures.Count == 0)
        {
            return new Dictionary<long, TaskState>();
        }

        await using var batch = DataSource.CreateBatch();
        batch.BatchCommands.Add(CreateFailCommand(workerId, failures));
        await using var reader = await batch.ExecuteReaderAsync(cancellationToken);
        var outcome = new Dictionary<long, TaskState>();
        while (await reader.ReadAsync(cancellationToken))
        {
            outcome[reader.GetInt64(0)] = TaskStates.FromStored(reader.GetString(1));
        }

        return outcome;
    }

    /// <summary><see cref="FailAsync"/> by claim: the new status of each lease (row and attempt) that was still ours.</summary>
    internal async Task<IReadOnlyDictionary<LeaseRef, TaskState>> FailLeasesAsync(string workerId, IReadOnlyCollection<TaskFailure> failures,
        CancellationToken cancellationToken, bool afterFailure = false)
    {
        var outcome = new Dictionary<LeaseRef, TaskState>();
        if (failures.Count == 0)
        {
            return outcome;
        }

        await using var batch = DataSource.CreateBatch();
        batch.BatchCommands.Add(CreateFailCommand(workerId, failures, afterFailure ? _sql.FailRepeatable : _sql.Fail));
        await using var reader = await batch.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            outcome[new LeaseRef(reader.GetInt64(0), reader.GetInt32(2))] = TaskStates.FromStored(reader.GetString(1));
        }

        return outcome;
    }

    /// <summary>
    /// Hands back tasks acked at claim (<see cref="AckMode.WhenReceived"/>) that never started: their rows become available
    /// again (or are inserted again when they were deleted), so a stopping worker loses none. The attempt they were claimed
    /// for is not counted.
    /// </summary>
    internal async Task<long> RequeueAsync(IReadOnlyCollection<ClaimedTask> tasks, CancellationToken cancellationToken)
    {
        if (tasks.Count == 0)
        {
            return 0;
        }

        await using var command = DataSource.CreateCommand(_sql.Requeue);
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = tasks.Select(t => t.Queue).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = tasks.Select(t => t.TaskId).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = tasks.Select(t => t.TaskName).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = tasks.Select(t => t.Message).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = tasks.Select(t => LabelsOf(t.Message)).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = tasks.Select(t => t.Priority).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = tasks.Select(t => t.MaxAttempts).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = tasks.Select(t => t.Attempt - 1).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = tasks.Select(t => t.Id).ToArray() });
        return (long)(await command.ExecuteScalarAsync(cancellationToken))!;

        static string LabelsOf(string message)
        {
            try
            {
                return JsonSerializer.Serialize(TaskMessage.FromJson(message).Labels, LabelsJsonContext.Default.DictionaryStringString);
            }
            catch (Exception ex) when (ex is JsonException or NotSupportedException or InvalidOperationException)
            {
                return "{}"; // malformed: the worker that claims it dead-letters it with the reason
            }
        }
    }

    internal NpgsqlBatchCommand CreateFailCommand(string workerId, IReadOnlyCollection<TaskFailure> failures, string? sql = null)
    {
        var command = new NpgsqlBatchCommand(sql ?? _sql.Fail);
        command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = failures.Select(f => f.Lease.Id).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = failures.Select(f => f.Lease.Claim).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = failures.Select(f => f.Error).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<bool[]> { TypedValue = failures.Select(f => f.Retry).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        command.Parameters.Add(new NpgsqlParameter<double> { TypedValue = Options.RetryBaseDelay.TotalSeconds });
        command.Parameters.Add(new NpgsqlParameter<double> { TypedValue = Options.RetryMaxDelay.TotalSeconds });
        AddFailureDetails(command.Parameters, failures);
        return command;
    }

    /// <summary>The per-failure arrays of <see cref="BrokerSql.FailuresUnnest"/>: snooze, max attempts, base and max delay.</summary>
    internal static void AddFailureDetails(NpgsqlParameterCollection parameters, IReadOnlyCollection<TaskFailure> failures)
    {
        parameters.Add(new NpgsqlParameter<double?[]> { TypedValue = failures.Select(f => f.SnoozeFor?.TotalSeconds).ToArray() });
        parameters.Add(new NpgsqlParameter<int?[]> { TypedValue = failures.Select(f => f.MaxAttempts).ToArray() });
        parameters.Add(new NpgsqlParameter<double?[]> { TypedValue = failures.Select(f => f.RetryBaseDelay?.TotalSeconds).ToArray() });
        parameters.Add(new NpgsqlParameter<double?[]> { TypedValue = failures.Select(f => f.RetryMaxDelay?.TotalSeconds).ToArray() });
    }

    /// <summary>
    /// How many times at least a rescue gives back the attempt of a claim that was never seen to start (a prefetched
    /// task of a worker that died); <c>max_attempts</c> when that is larger. Past it the attempts count, so a task that
    /// kills its worker before the first renewal still ends dead-lettered.
    /// </summary>
    internal const int MinUnstartedRefunds = 3;

    /// <summary>
    /// Returns tasks whose lease expired (their worker died or hung), or whose worker's heartbeat is older than
    /// <see cref="PostgresBrokerOptions.WorkerStaleAfter"/>, to available, or discards them when their
    /// attempts are used up. A claim that was never seen to start (no renewal recorded its start) gets its attempt back. Any worker may call this; rows are locked with SKIP LOCKED so callers never collide.
    /// </summary>
    internal async Task<IReadOnlyList<RescuedTask>> RescueExpiredLeasesAsync(int maxCount = 1000, CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Rescue);
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = maxCount });
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = MinUnstartedRefunds });
        command.Parameters.Add(new NpgsqlParameter<bool> { TypedValue = Options.WorkerStaleAfter is not null });
        var rescued = new List<RescuedTask>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            rescued.Add(new RescuedTask(reader.GetString(0), reader.GetString(1), reader.GetString(2) == TaskStates.Discarded)
            {
                Cancelled = reader.GetString(2) == TaskStates.Cancelled,
            });
        }

        return rescued;
    }

    /// <summary>Registers or heartbeats a worker (synchronous: the worker's renewal thread runs it on its own connection).</summary>
    internal void Heartbeat(NpgsqlConnection connection, string workerId, IReadOnlyList<string> queues, int inFlight, int capacity)
    {
        using var command = new NpgsqlCommand(_sql.Heartbeat, connection);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Environment.MachineName });
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = Environment.ProcessId });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = queues.ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = inFlight });
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = capacity });
        command.Parameters.Add(StaleParameter());
        command.ExecuteNonQuery();
    }

    /// <summary>Removes a stopping worker's entry.</summary>
    internal async Task DeregisterWorkerAsync(string workerId, CancellationToken cancellationToken)
    {
        await using var command = DataSource.CreateCommand(_sql.Deregister);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    /// <summary>Deletes the entries of workers silent for ten times <see cref="PostgresBrokerOptions.WorkerStaleAfter"/> (after their tasks were rescued).</summary>
    internal async Task<int> ForgetDeadWorkersAsync(CancellationToken cancellationToken)
    {
        await using var command = DataSource.CreateCommand(_sql.ForgetWorkers);
        command.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = ForgetUnboundedWorkersAfter });
        return await command.ExecuteNonQueryAsync(cancellationToken);
    }

    /// <summary>How long the entry of a silent worker that registered no stale bound is kept.</summary>
    private static readonly TimeSpan ForgetUnboundedWorkersAfter = TimeSpan.FromDays(1);

    private NpgsqlParameter StaleParameter()
        => new() { Value = (object?)Options.WorkerStaleAfter ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.Interval };

    private async Task<IReadOnlySet<long>> LeaseCommandAsync(string sql, string workerId, IReadOnlyCollection<LeaseRef> leases,
        bool withLease, CancellationToken cancellationToken)
    {
        if (leases.Count == 0)
        {
            return new HashSet<long>();
        }

        await using var batch = DataSource.CreateBatch();
        batch.BatchCommands.Add(CreateLeaseCommand(sql, workerId, leases, withLease));
        await using var reader = await batch.ExecuteReaderAsync(cancellationToken);
        return await ReadIdsAsync(reader, cancellationToken);
    }

    private async Task<HashSet<LeaseRef>> LeaseRefCommandAsync(string sql, string workerId, IReadOnlyCollection<LeaseRef> leases,
        bool withLease, CancellationToken cancellationToken)
    {
        var refs = new HashSet<LeaseRef>();
        if (leases.Count == 0)
        {
            return refs;
        }

        await using var batch = DataSource.CreateBatch();
        batch.BatchCommands.Add(CreateLeaseCommand(sql, workerId, leases, withLease));
        await using var reader = await batch.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            refs.Add(new LeaseRef(reader.GetInt64(0), reader.GetInt32(1)));
        }

        return refs;
    }

    private NpgsqlBatchCommand CreateLeaseCommand(string sql, string workerId, IReadOnlyCollection<LeaseRef> leases, bool withLease,
        IEnumerable<bool>? started = null)
    {
        var command = new NpgsqlBatchCommand(sql);
        command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = leases.Select(l => l.Id).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = leases.Select(l => l.Claim).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = workerId });
        if (withLease)
        {
            command.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = Options.LeaseDuration });
            command.Parameters.Add(new NpgsqlParameter<bool[]> { TypedValue = started?.ToArray() ?? new bool[leases.Count] });
        }

        return command;
    }

    internal static async Task<HashSet<long>> ReadIdsAsync(NpgsqlDataReader reader, CancellationToken cancellationToken)
    {
        var ids = new HashSet<long>();
        while (await reader.ReadAsync(cancellationToken))
        {
            ids.Add(reader.GetInt64(0));
        }

        return ids;
    }
}
