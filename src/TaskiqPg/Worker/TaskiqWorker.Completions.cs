using Npgsql;
using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// The completion flusher: writes outcomes in batches (one combined statement when broker and result backend share a
/// data source), retries transient errors, isolates a refused outcome by halving the batch, and records the metrics.
/// </summary>
public sealed partial class TaskiqWorker
{
    private async Task FlushLoopAsync(CancellationToken stop)
    {
        var batch = new List<Completion>(FlushBatchSize);
        while (await _completions.Reader.WaitToReadAsync(CancellationToken.None))
        {
            while (batch.Count < FlushBatchSize && _completions.Reader.TryRead(out var completion))
            {
                batch.Add(completion);
            }

            await ReportAsync(batch, stop);
            foreach (var completion in batch)
            {
                _held.Remove(completion.Task.Lease);
            }

            Interlocked.Add(ref _unreported, -batch.Count);
            SlotFreed(); // the claim loop may be holding back for unreported outcomes
            batch.Clear();
        }
    }

    /// <summary>
    /// Writes outcomes; never throws. Transient failures are retried (leases stay renewed meanwhile). A batch that
    /// PostgreSQL refuses for its content is split until the refused outcome is alone; that one is dead-lettered with
    /// the database's reason (then without its result; then left to its lease), so it never holds up the others.
    /// </summary>
    private async Task ReportAsync(List<Completion> batch, CancellationToken stop)
    {
        var failures = 0;
        while (true)
        {
            try
            {
                await FlushAsync(batch, afterFailure: failures > 0, stop);
                Interlocked.Exchange(ref _reportFailingSinceTicks, 0);
                return;
            }
            catch (Exception ex) when (!stop.IsCancellationRequested && TransientErrors.IsTransient(ex))
            {
                Interlocked.CompareExchange(ref _reportFailingSinceTicks, DateTime.UtcNow.Ticks, 0);
                Log.LoopFailed(_logger, ex, WorkerId, "complete");
                await Retry.DelayAsync(Retry.Backoff(++failures), stop);
            }
            catch (Exception ex) when (!stop.IsCancellationRequested)
            {
                Interlocked.CompareExchange(ref _reportFailingSinceTicks, DateTime.UtcNow.Ticks, 0);
                if (batch.Count > 1)
                {
                    var half = batch.Count / 2;
                    await ReportAsync(batch[..half], stop);
                    await ReportAsync(batch[half..], stop);
                    return;
                }

                var refused = batch[0];
                Log.OutcomeRefused(_logger, ex, refused.Task.TaskId, refused.Task.TaskName);
                if (refused.Refused(ex) is not { } fallback)
                {
                    GiveUp(batch, ex, logged: true);
                    return;
                }

                batch = [fallback];
            }
            catch (Exception ex)
            {
                GiveUp(batch, ex, logged: false); // shutting down
                return;
            }
        }
    }

    /// <summary>These claims are never renewed again: left to their leases, they are rescued and run again.</summary>
    private void GiveUp(List<Completion> batch, Exception ex, bool logged)
    {
        if (logged)
        {
            Log.FlushAbandoned(_logger, ex, WorkerId, batch.Count);
        }

        foreach (var completion in batch)
        {
            _held.GiveUp(completion.Task.Lease);
        }
    }

    private async Task FlushAsync(List<Completion> batch, bool afterFailure, CancellationToken cancellationToken)
    {
        if (_options.AckMode == AckMode.WhenReceived)
        {
            // The rows were deleted at claim: there is no lease to check, only results to store.
            var results = batch.Where(c => c.Result is not null).Select(c => new KeyValuePair<string, TaskResult>(c.Task.TaskId, c.Result!)).ToArray();
            if (_results is not null && results.Length > 0)
            {
                await _results.SetResultsAsync(results, cancellationToken);
            }

            foreach (var completion in batch)
            {
                RecordOutcome(completion.Succeeded ? TaskState.Completed : TaskState.Discarded, completion.Succeeded, QueueTag(completion.Task.Queue),
                    NameTag(completion.Task.TaskName));
            }

            return;
        }

        var acks = batch.Where(c => c.Succeeded).ToArray();
        var fails = batch.Where(c => !c.Succeeded).ToArray();
        var stored = _results is null ? [] : batch.Where(c => c.Result is not null && c.IsFinal).ToArray();
        var (acked, failed) = _settleSql is not null
            ? await SettleTogetherAsync(acks, fails, stored, afterFailure, cancellationToken)
            : await SettleSeparatelyAsync(acks, fails, stored, afterFailure, cancellationToken);

        foreach (var completion in batch)
        {
            var task = completion.Task;
            var nameTag = NameTag(task.TaskName);
            TaskState? newStatus = completion.Succeeded
                ? acked.Contains(task.Lease) || completion.CompletedInTransaction ? TaskState.Completed : null
                : failed.TryGetValue(task.Lease, out var f) ? f : null;
            if (newStatus is null)
            {
                Log.CompletionRejected(_logger, task.TaskId, task.TaskName);
                continue;
            }

            RecordOutcome(newStatus.Value, completion.Succeeded, QueueTag(task.Queue), nameTag);
            if (completion.Succeeded)
            {
                continue;
            }

            if (completion.Snooze is { } snooze)
            {
                Log.TaskSnoozed(_logger, task.TaskId, task.TaskName, snooze);
            }
            else if (newStatus == TaskState.Cancelled)
            {
                Log.TaskCancelled(_logger, task.TaskId, task.TaskName);
            }
            else if (newStatus == TaskState.Discarded)
            {
                Log.TaskDeadLettered(_logger, task.TaskId, task.TaskName, completion.Error!.Message);
            }
            else
            {
                Log.TaskFailed(_logger, completion.Exception ?? new InvalidOperationException(completion.Error!.Message),
                    task.TaskId, task.TaskName, task.Attempt, task.MaxAttempts);
            }
        }
    }

    /// <summary>One statement: acks, failures, and the results of exactly the claims whose ack or failure matched (after a
    /// failure also the acks an earlier attempt committed although its reply was lost).</summary>
    private async Task<(IReadOnlySet<LeaseRef> Acked, IReadOnlyDictionary<LeaseRef, TaskState> Failed)> SettleTogetherAsync(
        Completion[] acks, Completion[] fails, Completion[] stored, bool afterFailure, CancellationToken cancellationToken)
    {
        await using var command = new NpgsqlCommand(afterFailure ? _settleSql!.SettleRetry : fails.Length > 0 ? _settleSql!.Settle : _settleSql!.SettleAcks);
        var p = command.Parameters;
        p.Add(new NpgsqlParameter<long[]> { TypedValue = acks.Select(c => c.Task.Id).ToArray() });
        p.Add(new NpgsqlParameter<int[]> { TypedValue = acks.Select(c => c.Task.Claim).ToArray() });
        p.Add(new NpgsqlParameter<long[]> { TypedValue = fails.Select(c => c.Task.Id).ToArray() });
        p.Add(new NpgsqlParameter<int[]> { TypedValue = fails.Select(c => c.Task.Claim).ToArray() });
        p.Add(new NpgsqlParameter<string[]> { TypedValue = fails.Select(c => c.FailureText).ToArray() });
        p.Add(new NpgsqlParameter<bool[]> { TypedValue = fails.Select(c => c.Retry).ToArray() });
        p.Add(new NpgsqlParameter<string> { TypedValue = WorkerId });
        p.Add(new NpgsqlParameter<double> { TypedValue = _broker.Options.RetryBaseDelay.TotalSeconds });
        p.Add(new NpgsqlParameter<double> { TypedValue = _broker.Options.RetryMaxDelay.TotalSeconds });
        p.Add(new NpgsqlParameter<long[]> { TypedValue = stored.Select(c => c.Task.Id).ToArray() });
        p.Add(new NpgsqlParameter<int[]> { TypedValue = stored.Select(c => c.Task.Claim).ToArray() });
        p.Add(new NpgsqlParameter<string[]> { TypedValue = stored.Select(c => c.Task.TaskId).ToArray() });
        p.Add(new NpgsqlParameter<string[]> { TypedValue = stored.Select(c => c.Result!.ToJson()).ToArray() });
        p.Add(new NpgsqlParameter<string?[]> { TypedValue = stored.Select(c => _results!.Options.StoreStackTraces ? c.Result!.StackTrace : null).ToArray() });
        p.Add(_results!.TtlParameter());
        p.Add(new NpgsqlParameter<string> { TypedValue = _results.Options.Channel });
        PostgresBroker.AddFailureDetails(p, fails.Select(c => c.ToFailure()).ToArray());

        var acked = new HashSet<LeaseRef>();
        var failed = new Dictionary<LeaseRef, TaskState>();
        await using var connection = await _broker.DataSource.OpenConnectionAsync(cancellationToken);
        command.Connection = connection;
        await command.PrepareIfSupportedAsync(_broker.CanPrepare, cancellationToken);
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            switch (reader.GetInt32(0))
            {
                case 0:
                    acked.Add(new LeaseRef(reader.GetInt64(1), reader.GetInt32(2)));
                    break;
                case 1:
                    failed[new LeaseRef(reader.GetInt64(1), reader.GetInt32(2))] = TaskStates.FromStored(reader.GetString(3));
                    break;
            }
        }

        return (acked, failed);
    }

    /// <summary>
    /// Broker and result backend on different data sources: with <see cref="AckMode.WhenSaved"/> the leases are confirmed
    /// (renewed) first and results stored only for confirmed claims, then acked; with <see cref="AckMode.WhenExecuted"/>
    /// acks go first and results are stored for the accepted claims only.
    /// </summary>
    private async Task<(IReadOnlySet<LeaseRef> Acked, IReadOnlyDictionary<LeaseRef, TaskState> Failed)> SettleSeparatelyAsync(
        Completion[] acks, Completion[] fails, Completion[] stored, bool afterFailure, CancellationToken cancellationToken)
    {
        if (_options.AckMode == AckMode.WhenSaved && stored.Length > 0)
        {
            var confirmed = await _broker.RenewLeaseRefsAsync(WorkerId, stored.Select(c => c.Task.Lease).ToArray(), cancellationToken);
            await StoreResultsAsync(stored.Where(c => confirmed.Contains(c.Task.Lease)), cancellationToken);
        }

        // After a failure the ack that is safe to repeat: an earlier attempt may have committed with its reply lost, and
        // its claims must count as acked — with WhenExecuted their results are stored below only for acked claims.
        IReadOnlySet<LeaseRef> acked = acks.Length == 0 ? new HashSet<LeaseRef>()
            : afterFailure ? await _broker.AckOnReceiptAsync(WorkerId, acks.Select(c => c.Task.Lease).ToArray(), afterFailure: true, cancellationToken)
            : await _broker.AckLeasesAsync(WorkerId, acks.Select(c => c.Task.Lease).ToArray(), cancellationToken);
        IReadOnlyDictionary<LeaseRef, TaskState> failed = fails.Length > 0
            ? await _broker.FailLeasesAsync(WorkerId, fails.Select(c => c.ToFailure()).ToArray(), cancellationToken, afterFailure)
            : new Dictionary<LeaseRef, TaskState>();

        if (_options.AckMode == AckMode.WhenExecuted && stored.Length > 0)
        {
            await StoreResultsAsync(stored.Where(c => acked.Contains(c.Task.Lease) || failed.ContainsKey(c.Task.Lease)), cancellationToken);
        }

        return (acked, failed);
    }

    private Task StoreResultsAsync(IEnumerable<Completion> completions, CancellationToken cancellationToken)
        => _results!.SetResultsAsync(completions.Select(c => new KeyValuePair<string, TaskResult>(c.Task.TaskId, c.Result!)).ToArray(), cancellationToken);

    /// <summary>A task name as a metric tag: names this worker does not know (any producer can write any name) share one series.</summary>
    private KeyValuePair<string, object?> NameTag(string taskName)
        => new(MessagingTags.TaskName, _registry.TryGet(taskName, out _) ? taskName : UnknownTaskNameTag);

    /// <summary>The <c>taskiq.task_name</c> metric tag of tasks whose name no handler of this worker has.</summary>
    internal const string UnknownTaskNameTag = "(unknown)";

    private KeyValuePair<string, object?> QueueTag(string queue)
        => _queueTags.TryGetValue(queue, out var tag) ? tag : new KeyValuePair<string, object?>(MessagingTags.Destination, queue);

    private void RecordOutcome(TaskState newStatus, bool succeeded, KeyValuePair<string, object?> queueTag, KeyValuePair<string, object?> nameTag)
    {
        if (succeeded)
        {
            TaskiqDiagnostics.Completed.Add(1, queueTag, nameTag);
            return;
        }

        if (newStatus == TaskState.Cancelled)
        {
            TaskiqDiagnostics.Cancelled.Add(1, queueTag, nameTag);
            return;
        }

        if (newStatus == TaskState.Scheduled)
        {
            return; // snoozed: not a failure
        }

        TaskiqDiagnostics.Failed.Add(1, queueTag, nameTag);
        (newStatus == TaskState.Discarded ? TaskiqDiagnostics.DeadLettered : TaskiqDiagnostics.Retried).Add(1, queueTag, nameTag);
    }
}
