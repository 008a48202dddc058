using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// The claim loop: claims up to the free slots (in batches, from the worker's queues in their order or by weight),
/// promotes due scheduled and retryable rows, registers each claim before it is handed to an executor, and waits for a
/// NOTIFY, the next due time or the poll interval. With <see cref="AckMode.WhenReceived"/> it acks at receipt.
/// </summary>
public sealed partial class TaskiqWorker
{
    private async Task ClaimLoopAsync(CancellationToken stoppingToken)
    {
        // Nothing is claimed before the renewal thread has its connection and has run its statement once: a cold
        // process (connection, authentication, JIT) must not hold leases it cannot renew yet.
        try
        {
            await _renewalReady.Task.WaitAsync(stoppingToken);
        }
        catch (OperationCanceledException)
        {
            return;
        }

        var failures = 0;
        var promoteAt = 0L; // when to make due scheduled/retryable rows available again (Environment.TickCount64)
        var nextDueReadAt = 0L; // when a claim next reads the next due time
        while (!stoppingToken.IsCancellationRequested)
        {
            Interlocked.Exchange(ref _lastLoopTicks, DateTime.UtcNow.Ticks);
            // Announced before the counts are read (both sides fence): a slot freed after this read sees the flag.
            Interlocked.Exchange(ref _waitingForSlots, 1);
            var free = _capacity - Volatile.Read(ref _active);
            if (free <= 0 || Volatile.Read(ref _unreported) >= MaxUnreportedCompletions)
            {
                await WaitForWakeAsync(stoppingToken);
                continue;
            }

            Interlocked.Exchange(ref _waitingForSlots, 0);

            var wanted = Math.Min(free, _options.ClaimBatchSize);
            IReadOnlyList<ClaimedTask> batch;
            TimeSpan? nextDue;
            var readNextDue = false;
            try
            {
                if (failures > 0)
                {
                    // The failed claim may have committed before the connection died: take back what it leased to
                    // us at once instead of leaving it to wait out the lease.
                    var orphans = await _broker.ReleaseOrphansAsync(WorkerId, _held.KnownClaimIds(), stoppingToken, _queues);
                    if (orphans > 0)
                    {
                        Log.OrphansReleased(_logger, WorkerId, orphans);
                    }
                }

                _held.BeginClaim(); // until its rows are held, renewal covers all rows leased to us
                var now = Environment.TickCount64;
                var promote = now >= promoteAt;
                // The next due time is read with the claim at most once per poll interval while claims come back full
                // (a backlog drains at full speed), and always when one comes back short (below, before waiting).
                readNextDue = now >= nextDueReadAt;
                (batch, nextDue) = await ClaimFromQueuesAsync(wanted, stoppingToken, promote, readNextDue);
                if (readNextDue)
                {
                    nextDueReadAt = now + (long)_options.PollInterval.TotalMilliseconds;
                    // Promote again once the next scheduled or retryable row is due (a kick that schedules an earlier
                    // one wakes this loop by NOTIFY, and the next short claim reads the due time afresh).
                    promoteAt = nextDue is { } d ? now + (long)Math.Max(0, d.TotalMilliseconds) : long.MaxValue;
                }

                failures = 0;
                Interlocked.Exchange(ref _claimsFailingSinceTicks, 0);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                _held.EndClaim();
                break;
            }
            catch (Exception ex)
            {
                _held.EndClaim();
                Interlocked.CompareExchange(ref _claimsFailingSinceTicks, DateTime.UtcNow.Ticks, 0);
                // Transient or not, the loop keeps going: a claim that fails is retried with backoff.
                Log.LoopFailed(_logger, ex, WorkerId, "claim");
                await Retry.DelayAsync(Retry.Backoff(++failures), stoppingToken);
                continue;
            }

            if (batch.Count > 0 && _options.AckMode == AckMode.WhenReceived)
            {
                batch = await AckOnReceiveAsync(batch);
            }

            foreach (var task in batch)
            {
                Interlocked.Increment(ref _active);
                _held.Add(task);
                _prefetched.Writer.TryWrite(task);
            }

            _held.EndClaim();

            if (batch.Count < wanted)
            {
                if (!readNextDue)
                {
                    try
                    {
                        nextDue = await _broker.GetNextDueAsync(_queues, stoppingToken);
                        var at = Environment.TickCount64;
                        nextDueReadAt = at + (long)_options.PollInterval.TotalMilliseconds;
                        promoteAt = nextDue is { } d ? at + (long)Math.Max(0, d.TotalMilliseconds) : long.MaxValue;
                    }
                    catch (Exception ex) when (!stoppingToken.IsCancellationRequested)
                    {
                        Log.LoopFailed(_logger, ex, WorkerId, "next due");
                        nextDue = null; // the poll interval bounds the wait
                    }
                    catch (OperationCanceledException)
                    {
                        break;
                    }
                }

                // Wake when the next scheduled or retryable task comes due, if that is before the next poll.
                await WaitForWakeAsync(stoppingToken, nextDue);
            }
        }
    }

    /// <summary>
    /// One claim of up to <paramref name="wanted"/> tasks from this worker's queues. One queue: one round trip. Strict:
    /// queue by queue in order, each taking what the ones before it left (one round trip while the first fills the
    /// claim). Weighted: the slots are dealt over the queues by smooth weighted round-robin (exact proportions over
    /// successive claims) and claimed in one round trip; what a queue could not use goes to the ones that filled theirs.
    /// </summary>
    private async Task<(IReadOnlyList<ClaimedTask> Claimed, TimeSpan? NextDue)> ClaimFromQueuesAsync(int wanted, CancellationToken stoppingToken,
        bool promote, bool readNextDue)
    {
        IReadOnlyList<string>? nextDueOf = readNextDue ? _queues : null;
        if (_queues.Length == 1)
        {
            return await _broker.ClaimWithNextDueAsync(WorkerId, [(_queues[0], wanted)], nextDueOf, stoppingToken, promote);
        }

        var claimed = new List<ClaimedTask>(wanted);
        TimeSpan? nextDue = null;
        if (_options.QueueOrder == QueueOrder.Strict)
        {
            foreach (var queue in _queues)
            {
                try
                {
                    var (batch, due) = await _broker.ClaimWithNextDueAsync(WorkerId, [(queue, wanted - claimed.Count)], nextDueOf, stoppingToken, promote);
                    nextDue = nextDueOf is null ? nextDue : due;
                    nextDueOf = null; // read once, with the first
                    claimed.AddRange(batch);
                }
                catch (Exception ex) when (claimed.Count > 0 && !stoppingToken.IsCancellationRequested)
                {
                    Log.LoopFailed(_logger, ex, WorkerId, "claim"); // what the earlier queues gave runs; the next claim tries again
                    break;
                }

                if (claimed.Count == wanted)
                {
                    break;
                }
            }

            return (claimed, nextDue);
        }

        var shares = DealWeighted(wanted);
        var round = _queues.Select((q, i) => (Queue: q, Limit: shares[i])).Where(c => c.Limit > 0).ToArray();
        (var first, nextDue) = await _broker.ClaimWithNextDueAsync(WorkerId, round, nextDueOf, stoppingToken, promote);
        claimed.AddRange(first);
        var left = wanted - claimed.Count;
        if (left > 0)
        {
            // Queues that filled their share may have more: the slots the others could not use go to them, by weight.
            var full = round.Where(c => first.Count(t => t.Queue == c.Queue) == c.Limit).Select(c => Array.IndexOf(_queues, c.Queue)).ToArray();
            if (full.Length > 0)
            {
                var weight = full.Sum(i => _weights[i]);
                var again = full.Select((i, n) => (Queue: _queues[i], Limit: n == 0
                        ? left - full.Skip(1).Sum(k => left * _weights[k] / weight)
                        : left * _weights[i] / weight))
                    .Where(c => c.Limit > 0).ToArray();
                var (second, _) = await _broker.ClaimWithNextDueAsync(WorkerId, again, null, stoppingToken, promote: false);
                claimed.AddRange(second);
            }
        }

        return (claimed, nextDue);
    }

    /// <summary>Smooth weighted round-robin (as nginx deals upstreams): each slot goes to the queue furthest behind its share.</summary>
    private int[] DealWeighted(int slots)
    {
        var shares = new int[_queues.Length];
        var total = _weights.Sum();
        for (var slot = 0; slot < slots; slot++)
        {
            var best = 0;
            for (var i = 0; i < _queues.Length; i++)
            {
                _dealt[i] += _weights[i];
                if (_dealt[i] > _dealt[best])
                {
                    best = i;
                }
            }

            _dealt[best] -= total;
            shares[best]++;
        }

        return shares;
    }

    /// <summary>Shortest wait for a task coming due (it may be due already when another worker holds its row locked).</summary>
    private static readonly TimeSpan MinDueWait = TimeSpan.FromMilliseconds(10);

    /// <summary>
    /// Acks a claimed batch at receipt (<see cref="AckMode.WhenReceived"/>). Not cancelled by the stop: a statement that
    /// commits while its reply is dropped would lose the tasks. A transient failure (a deadlock with a renewal over the
    /// same rows, a broken connection) is retried, and the retry also finds the claims a lost reply had acked; the
    /// renewal keeps every row of this worker leased meanwhile (the claim is still in flight). When it fails for good
    /// the claims are handed back at once rather than left to wait out their leases.
    /// </summary>
    private async Task<IReadOnlyList<ClaimedTask>> AckOnReceiveAsync(IReadOnlyList<ClaimedTask> batch)
    {
        var leases = batch.Select(t => t.Lease).ToArray();
        var giveUpAt = Environment.TickCount64 + (long)(_broker.Options.LeaseDuration.TotalMilliseconds / 2);
        for (var failures = 0; ; failures++)
        {
            try
            {
                var acked = await _broker.AckOnReceiptAsync(WorkerId, leases, afterFailure: failures > 0, CancellationToken.None);
                return batch.Where(t => acked.Contains(t.Lease)).ToArray();
            }
            catch (Exception ex) when (TransientErrors.IsTransient(ex) && !_hardStop.IsCancellationRequested
                                       && Environment.TickCount64 + (long)Retry.Backoff(failures + 1).TotalMilliseconds < giveUpAt)
            {
                Log.LoopFailed(_logger, ex, WorkerId, "ack on receive");
                await Task.Delay(Retry.Backoff(failures + 1));
            }
            catch (Exception ex)
            {
                Log.LoopFailed(_logger, ex, WorkerId, "ack on receive");
                await HandBackOrphansAsync(); // not held: every row of this claim still leased to us goes back
                return [];
            }
        }
    }

    /// <summary>
    /// A slot came free or outcomes were written: wakes the claim loop only when it is holding back for that. Otherwise
    /// (a claim came back short: the queue had nothing more) it waits for a NOTIFY, the next due time or the poll, as an
    /// idle worker should; waking it on every finished task would send a claim and a due-time read that find nothing
    /// while the task's own settle is on its way (measured: three claims per idle kick instead of one).
    /// </summary>
    private void SlotFreed()
    {
        if (Volatile.Read(ref _waitingForSlots) == 1)
        {
            _wake.Set();
        }
    }

    private async Task WaitForWakeAsync(CancellationToken stoppingToken, TimeSpan? nextDue = null)
    {
        var wait = _options.PollInterval;
        if (nextDue is { } due && due < wait)
        {
            wait = due < MinDueWait ? MinDueWait : due;
        }

        try
        {
            await _wake.WaitAsync(wait, stoppingToken);
        }
        catch (OperationCanceledException)
        {
        }
    }
}
