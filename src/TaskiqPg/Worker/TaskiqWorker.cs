using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Globalization;
using System.Text.Json;
using System.Threading.Channels;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;
using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// Claims tasks in batches, runs them with bounded concurrency, renews their leases, and reports outcomes in batches
/// (results, acks, retries, dead letters). Woken by NOTIFY, with a poll as a fallback. On stop: claims no more,
/// releases prefetched tasks at once, lets running tasks finish up to <see cref="TaskiqWorkerOptions.ShutdownTimeout"/>.
/// </summary>
public sealed class TaskiqWorker : BackgroundService
{
    private const int FlushBatchSize = 1000;

    /// <summary>
    /// Outcomes waiting to be written at which the claim loop stops claiming: when the database refuses or cannot take
    /// outcomes, the worker must not keep taking work whose results it cannot report.
    /// </summary>
    private const int MaxUnreportedCompletions = 2 * FlushBatchSize;

    private readonly PostgresBroker _broker;
    private readonly PostgresResultBackend? _results;
    private readonly TaskRegistry _registry;
    private readonly TaskiqWorkerOptions _options;
    private readonly IServiceProvider _services;
    private readonly ILogger _logger;
    private readonly WakeSignal _wake = new();
    private readonly Channel<ClaimedTask> _prefetched = Channel.CreateUnbounded<ClaimedTask>();
    private readonly Channel<Completion> _completions = Channel.CreateUnbounded<Completion>(new UnboundedChannelOptions { SingleReader = true });
    private readonly ConcurrentDictionary<LeaseRef, Held> _held = new(); // by claim: a row lost and claimed again is another entry
    private int _claimInFlight; // 1 from sending a claim until its rows are registered in _held
    private readonly ConcurrentDictionary<LeaseRef, long> _givenUp = new(); // claims whose outcome could not be reported
    private readonly CancellationTokenSource _hardStop = new();
    private readonly SettleSql? _settleSql;
    private int _unreported; // outcomes produced by handlers and not yet written
    private long _reportFailingSinceTicks; // 0 while outcomes are written
    private int _renewalRounds;
    private readonly AutoResetEvent _renewNow = new(false); // a cancel request arrived: renew (and read cancel flags) at once
    private readonly TaskCompletionSource _renewalReady = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly int _capacity;
    private readonly string[] _queues; // the queues this worker claims from, in TaskiqWorkerOptions.Queues order
    private readonly int[] _weights; // QueueOrder.Weighted: each queue's weight
    private readonly int[] _dealt; // QueueOrder.Weighted: smooth weighted round-robin state (claim loop only)
    private readonly Dictionary<string, KeyValuePair<string, object?>> _queueTags;
    private int _active;
    private volatile bool _stopping;
    private long _lastLoopTicks;
    private long _claimsFailingSinceTicks; // 0 while claims succeed
    private Task? _renewer; // the renewal thread, while the worker runs

    /// <summary>Creates a worker. <paramref name="services"/> resolves handlers and their dependencies (a scope per task).</summary>
    public TaskiqWorker(PostgresBroker broker, TaskRegistry registry, PostgresResultBackend? resultBackend = null,
        TaskiqWorkerOptions? options = null, IServiceProvider? services = null, ILoggerFactory? loggerFactory = null)
    {
        _broker = broker ?? throw new ArgumentNullException(nameof(broker));
        _registry = registry ?? throw new ArgumentNullException(nameof(registry));
        _results = resultBackend;
        _options = (options ?? new TaskiqWorkerOptions()) with { };
        _options.Validate();
        if (_broker.Options.WorkerStaleAfter is { } stale && _options.HeartbeatInterval * 3 > stale)
        {
            throw new ArgumentException(
                $"{nameof(TaskiqWorkerOptions.HeartbeatInterval)} ({_options.HeartbeatInterval}) must be at most a third of the broker's " +
                $"{nameof(PostgresBrokerOptions.WorkerStaleAfter)} ({stale}): a live worker would be taken for dead.", nameof(options));
        }

        _services = services ?? EmptyServiceProvider.Instance;
        _logger = (loggerFactory ?? NullLoggerFactory.Instance).CreateLogger<TaskiqWorker>();
        WorkerId = _options.WorkerId ?? $"{Environment.MachineName}:{Environment.ProcessId}:{Guid.NewGuid().ToString("N")[..8]}";
        _capacity = _options.MaxConcurrentTasks + (_options.PrefetchCount ?? _options.MaxConcurrentTasks);
        _queues = _options.Queues?.ToArray() ?? [_broker.Options.Queue];
        _weights = _queues.Select(q => _options.QueueWeights?.GetValueOrDefault(q, 1) ?? 1).ToArray();
        _dealt = new int[_queues.Length];
        _queueTags = _queues.ToDictionary(q => q, q => new KeyValuePair<string, object?>(MessagingTags.Destination, q), StringComparer.Ordinal);
        _settleSql = _results is not null && ReferenceEquals(_results.DataSource, _broker.DataSource)
            ? new SettleSql(_broker.Options, _results.Options)
            : null;
    }

    /// <summary>The identity this worker writes to <c>locked_by</c>.</summary>
    public string WorkerId { get; }

    /// <summary>Tasks claimed and not yet finished running.</summary>
    public int ActiveTasks => Volatile.Read(ref _active);

    /// <summary>When this instance was created (UTC); health checks allow a start-up grace period from it.</summary>
    public DateTime CreatedAt { get; } = DateTime.UtcNow;

    /// <summary>When the claim loop last completed an iteration (UTC); for liveness checks.</summary>
    public DateTime LastLoopActivity => new(Interlocked.Read(ref _lastLoopTicks), DateTimeKind.Utc);

    /// <summary>Since when (UTC) claims have failed (e.g. the database is unreachable) without a success in between; null while they succeed.</summary>
    public DateTime? ClaimsFailingSince
        => Interlocked.Read(ref _claimsFailingSinceTicks) is var ticks and > 0 ? new DateTime(ticks, DateTimeKind.Utc) : null;

    /// <summary>
    /// False when the lease-renewal thread has ended while the worker still runs (it never should: held leases would
    /// lapse); true otherwise, including before start and after stop.
    /// </summary>
    public bool IsRenewalThreadAlive => ExecuteTask is not { IsCompleted: false } || _renewer is not { IsCompleted: true };

    /// <summary>Outcomes (results, acks, failures) of finished tasks not yet written to the database.</summary>
    public int UnreportedCompletions => Volatile.Read(ref _unreported);

    /// <summary>Since when (UTC) writing outcomes has failed without a success in between; null while they are written.</summary>
    public DateTime? CompletionsFailingSince
        => Interlocked.Read(ref _reportFailingSinceTicks) is var ticks and > 0 ? new DateTime(ticks, DateTimeKind.Utc) : null;

    /// <summary>Test signal: renewal rounds that reached the database.</summary>
    internal int RenewalRounds => Volatile.Read(ref _renewalRounds);

    /// <summary>The broker's lease duration: outcomes unwritten for longer than this may be rerun elsewhere.</summary>
    public TimeSpan LeaseDuration => _broker.Options.LeaseDuration;

    /// <inheritdoc />
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        BackgroundWork.Enter(); // every loop below (and the renewal thread) inherits it; handlers leave it
        await Task.Yield(); // let the host finish starting
        await RetryAsync(async ct =>
        {
            await _broker.StartAsync(ct);
            if (_results is not null)
            {
                await _results.StartAsync(ct);
            }
        }, "start", stoppingToken);
        if (stoppingToken.IsCancellationRequested)
        {
            return;
        }

        using var subscription = _broker.Subscribe(_queues, _wake.Set);
        using var cancelSubscription = _broker.SubscribeCancelRequests(() => _renewNow.Set());
        _wake.Set(); // scan at start: tasks kicked while no worker listened
        Log.WorkerStarted(_logger, WorkerId, string.Join(", ", _queues), _options.MaxConcurrentTasks, _capacity - _options.MaxConcurrentTasks);

        var background = new CancellationTokenSource(); // never disposed: the renewal thread may still read it
        var flusher = Task.Run(() => FlushLoopAsync(background.Token), CancellationToken.None);
        var renewer = _renewer = StartRenewalThread(background.Token);
        // The maintenance services, each in its own type (and file) with its documented defaults.
        var depth = new QueueDepthSampler(_broker, _queues, QueueTag, _logger, WorkerId);
        var rescuer = Task.Run(() => new LeaseRescuer(_broker, _results, _options.RescueInterval ?? LeaseRescuer.DefaultInterval(_broker.Options),
            _wake.Set, _logger, WorkerId).RunAsync(background.Token), CancellationToken.None);
        var sampler = Task.Run(() => depth.RunAsync(background.Token), CancellationToken.None);
        var pruner = Task.Run(() => new QueuePruner(_broker, _queues, _options.PruneInterval, _logger, WorkerId).RunAsync(background.Token), CancellationToken.None);
        using var depthRegistration = TaskiqDiagnostics.RegisterDepthSource(depth.Observe);
        var executors = Enumerable.Range(0, _options.MaxConcurrentTasks)
            .Select(_ => Task.Run(ExecuteLoopAsync, CancellationToken.None)).ToArray();
        var released = 0;
        var abandoned = 0;
        try
        {
            await ClaimLoopAsync(stoppingToken);

            // Shutdown: claim nothing more, hand prefetched tasks back at once, let running ones finish.
            _stopping = true;
            _prefetched.Writer.TryComplete();
            await HandBackOrphansAsync();
            if (_options.AckMode != AckMode.WhenReceived)
            {
                released = await ReleasePrefetchedAsync(); // with WhenReceived their rows are gone: they run instead
            }

            var allExecutors = Task.WhenAll(executors);
            try
            {
                await allExecutors.WaitAsync(_options.ShutdownTimeout);
            }
            catch (TimeoutException)
            {
                abandoned = ActiveTasks;
                await _hardStop.CancelAsync();
                released += await RequeuePrefetchedAsync();
                await Task.WhenAny(allExecutors, Task.Delay(TimeSpan.FromSeconds(5)));
            }
        }
        finally
        {
            _stopping = true;
            _prefetched.Writer.TryComplete();
            _completions.Writer.TryComplete();
            await Task.WhenAny(flusher, Task.Delay(TimeSpan.FromSeconds(10)));
            await HandBackOrphansAsync(); // last sweep: whatever is still leased to us and not ours to report
            await background.CancelAsync();
            await Task.WhenAll(renewer.ContinueWith(static _ => { }, TaskScheduler.Default),
                rescuer.ContinueWith(static _ => { }, TaskScheduler.Default),
                sampler.ContinueWith(static _ => { }, TaskScheduler.Default),
                pruner.ContinueWith(static _ => { }, TaskScheduler.Default),
                flusher.ContinueWith(static _ => { }, TaskScheduler.Default));
        }

        await StopStepAsync(() => _broker.DeregisterWorkerAsync(WorkerId, CancellationToken.None), "deregister");
        Log.WorkerStopped(_logger, WorkerId, released, abandoned);
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        base.Dispose();
        // _renewNow is not disposed: the renewal thread may still wait on it while the loops end.
        // Cancelled, not disposed: a host whose shutdown timeout ran out disposes the worker while its loops still end.
        _hardStop.Cancel();
    }

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
            var free = _capacity - Volatile.Read(ref _active);
            if (free <= 0 || Volatile.Read(ref _unreported) >= MaxUnreportedCompletions)
            {
                await WaitForWakeAsync(stoppingToken);
                continue;
            }

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
                    var orphans = await _broker.ReleaseOrphansAsync(WorkerId, KnownClaimIds(), stoppingToken, _queues);
                    if (orphans > 0)
                    {
                        Log.OrphansReleased(_logger, WorkerId, orphans);
                    }
                }

                Volatile.Write(ref _claimInFlight, 1); // until its rows are in _held, renewal covers all rows leased to us
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
                Volatile.Write(ref _claimInFlight, 0);
                break;
            }
            catch (Exception ex)
            {
                Volatile.Write(ref _claimInFlight, 0);
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
                _held[task.Lease] = new Held(task);
                _prefetched.Writer.TryWrite(task);
            }

            Volatile.Write(ref _claimInFlight, 0);

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

    /// <summary>Rows this worker knows it holds or gave up: everything else leased to it is an orphan.</summary>
    private long[] KnownClaimIds() => [.. _held.Keys.Select(k => k.Id), .. _givenUp.Keys.Select(k => k.Id)];

    /// <summary>
    /// A claim cancelled by the stop may have committed on the server, an ack at receipt may have failed for good: their
    /// rows are leased to this worker, which does not hold them. Hand them back now (attempt not spent) instead of letting
    /// them wait out the lease.
    /// </summary>
    private async Task HandBackOrphansAsync()
    {
        var orphans = 0;
        if (await StopStepAsync(async () => orphans = await _broker.ReleaseOrphansAsync(WorkerId, KnownClaimIds(), CancellationToken.None, _queues), "release on stop")
            && orphans > 0)
        {
            Log.OrphansReleased(_logger, WorkerId, orphans);
        }
    }

    /// <summary>
    /// One database step of the stop path, retried a few times on transient errors (a deadlock with a renewal, a
    /// restart): what it hands back must not wait out a lease.
    /// </summary>
    /// <returns>False when it failed for good (logged; the leases expire instead).</returns>
    private async Task<bool> StopStepAsync(Func<Task> step, string loop)
    {
        for (var failures = 1; ; failures++)
        {
            try
            {
                await step();
                return true;
            }
            catch (Exception ex) when (failures < StopStepAttempts && TransientErrors.IsTransient(ex))
            {
                await Task.Delay(Retry.Backoff(failures));
            }
            catch (Exception ex)
            {
                Log.LoopFailed(_logger, ex, WorkerId, loop);
                return false;
            }
        }
    }

    private const int StopStepAttempts = 5;

    /// <summary>Shortest wait for a task coming due (it may be due already when another worker holds its row locked).</summary>
    private static readonly TimeSpan MinDueWait = TimeSpan.FromMilliseconds(10);

    /// <summary>Renewal statements tried per tick when they fail transiently (deadlocks, a reconnect).</summary>
    private const int RenewAttemptsPerTick = 3;

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
                await HandBackOrphansAsync(); // not in _held: every row of this claim still leased to us goes back
                return [];
            }
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

    private async Task ExecuteLoopAsync()
    {
        await foreach (var task in _prefetched.Reader.ReadAllAsync())
        {
            if (!_held.TryGetValue(task.Lease, out var held))
            {
                continue; // handed back by the stop path already
            }

            if (_stopping && _options.AckMode != AckMode.WhenReceived)
            {
                await ReleaseAsync([task]);
                continue;
            }

            if (_hardStop.IsCancellationRequested && _options.AckMode == AckMode.WhenReceived)
            {
                await RequeueAsync([task]);
                continue;
            }

            Completion? completion;
            try
            {
                completion = await RunAsync(task, held);
            }
            catch (Exception ex)
            {
                // A fault outside the handler (never expected): dead-letter with the reason rather than lose the slot.
                completion = Completion.Failure(task, null, "WorkerFault", ex.Message, ex.StackTrace, retry: false, exception: ex);
            }

            Interlocked.Decrement(ref _active);
            _wake.Set(); // a slot is free
            if (completion is null)
            {
                _held.TryRemove(task.Lease, out _); // never started: its lease is another worker's
                continue;
            }

            held.Settling = true; // its outcome is on its way: a missing row at renewal means it was written, not lost
            Interlocked.Increment(ref _unreported);
            _completions.Writer.TryWrite(completion);
        }
    }

    /// <returns>The outcome, or null when the task was not started because its lease had already been lost.</returns>
    private async Task<Completion?> RunAsync(ClaimedTask task, Held held)
    {
        var started = Stopwatch.StartNew();
        TaskMessage message;
        try
        {
            message = TaskMessage.FromJson(task.Message);
        }
        catch (Exception ex) when (ex is JsonException or NotSupportedException or InvalidOperationException)
        {
            return Completion.Failure(task, null, "MalformedMessage", $"The message is not valid taskiq JSON: {ex.Message}", null, retry: false);
        }

        if (string.IsNullOrEmpty(message.TaskId) || string.IsNullOrEmpty(message.TaskName))
        {
            return Completion.Failure(task, null, "MalformedMessage", "The message has an empty task_id or task_name.", null, retry: false);
        }

        if (MessageChecks.FindProblem(message) is { } problem)
        {
            return Completion.Failure(task, null, "MalformedMessage", MessageChecks.Describe(problem), null, retry: false);
        }

        if (!_registry.TryGet(message.TaskName, out var descriptor))
        {
            return Completion.Failure(task, message, "UnknownTask",
                $"No task named '{message.TaskName}' is registered on worker {WorkerId}.", null, retry: false);
        }

        if (held.CancelRequested)
        {
            return Completion.Cancelled(task, message); // cancelled while it waited in this worker: never started
        }

        var timeout = TimeoutOf(message, descriptor);
        using var cancellation = CancellationTokenSource.CreateLinkedTokenSource(_hardStop.Token);
        if (!held.TryStart(cancellation))
        {
            return null;
        }

        if (timeout is { } t)
        {
            cancellation.CancelAfter(t);
        }

        try
        {
            var completion = await InvokeAsync(task, message, descriptor, timeout, cancellation, held, started);
            return descriptor.Retry is null ? completion : completion with { Policy = descriptor.Retry };
        }
        finally
        {
            held.Finish();
        }
    }

    private async Task<Completion> InvokeAsync(ClaimedTask task, TaskMessage message, TaskDescriptor descriptor, TimeSpan? timeout,
        CancellationTokenSource cancellation, Held held, Stopwatch started)
    {
        BackgroundWork.Leave(); // the handler's own statements are traced (inside the consumer span when it is sampled)
        using var activity = MessagingTags.StartProcess(task.Queue, message, task.Attempt);
        var completion = await InvokeInScopeAsync(task, message, descriptor, timeout, cancellation, held, started);
        TaskiqDiagnostics.Duration.Record(started.Elapsed.TotalSeconds, QueueTag(task.Queue), new KeyValuePair<string, object?>(MessagingTags.TaskName, message.TaskName));
        if (completion.Error is { } error)
        {
            MessagingTags.RecordError(activity, error.Type, error.Message);
        }

        return completion;
    }

    private async Task<Completion> InvokeInScopeAsync(ClaimedTask task, TaskMessage message, TaskDescriptor descriptor, TimeSpan? timeout,
        CancellationTokenSource cancellation, Held held, Stopwatch started)
    {
        await using var scope = _services.GetService<IServiceScopeFactory>()?.CreateAsyncScope();
        var context = new TaskContext(message, task, scope?.ServiceProvider ?? _services, _results, _registry.SerializerOptions, cancellation.Token)
        {
            Completer = _options.AckMode == AckMode.WhenReceived ? null : async (transaction, value, ct) =>
            {
                if (!await _broker.CompleteInTransactionAsync(WorkerId, task.Lease, transaction.Connection!, transaction, ct))
                {
                    return false;
                }

                if (_settleSql is not null)
                {
                    // The result in the same transaction: it is stored exactly when the completion commits.
                    var result = new TaskResult { IsError = false, ReturnValue = value, ExecutionTime = started.Elapsed.TotalSeconds, Labels = message.Labels };
                    await using var batch = new NpgsqlBatch(transaction.Connection, transaction);
                    foreach (var command in _results!.CreateSetResultCommands([new KeyValuePair<string, TaskResult>(task.TaskId, result)]))
                    {
                        batch.BatchCommands.Add(command);
                    }

                    await batch.ExecuteNonQueryAsync(ct);
                }

                return true;
            },
        };
        try
        {
            var (value, type) = await descriptor.Invoke(context, cancellation.Token);
            JsonElement returned;
            try
            {
                returned = JsonSerializer.SerializeToElement(value, type, _registry.SerializerOptions);
            }
            catch (Exception ex) when (ex is JsonException or NotSupportedException or ArgumentException or InvalidOperationException)
            {
                // The same value would fail the same way on every attempt (NaN, a cycle, an unsupported type).
                return Completion.Failure(task, message, "ResultNotSerializable",
                    $"The handler's return value ({type.Name}) cannot be serialized to JSON: {ex.Message}", ex.StackTrace, retry: false, started.Elapsed);
            }

            var result = new TaskResult
            {
                IsError = false,
                ReturnValue = returned,
                ExecutionTime = started.Elapsed.TotalSeconds,
                Labels = message.Labels,
            };
            return Completion.Success(task, result) with { CompletedInTransaction = context.CompletedInTransaction };
        }
        catch (Exception) when (held.CancelRequested && !held.LeaseLost && !_hardStop.IsCancellationRequested)
        {
            // Cancelled by request (PostgresBroker.CancelAsync): whatever the handler threw on its way out.
            return Completion.Cancelled(task, message, started.Elapsed);
        }
        catch (TaskSnoozedException ex) when (!held.LeaseLost)
        {
            return _options.AckMode == AckMode.WhenReceived
                ? Completion.Failure(task, message, nameof(TaskSnoozedException),
                    "A task cannot snooze under AckMode.WhenReceived: it was acked when received, so nothing can bring it back.", null, retry: false, started.Elapsed)
                : Completion.Snoozed(task, ex.Delay);
        }
        catch (PermanentTaskFailureException ex)
        {
            return Completion.Failure(task, message, ex.GetType().Name, ex.Message, ex.StackTrace, retry: false, started.Elapsed, ex);
        }
        catch (TaskArgumentException ex)
        {
            return Completion.Failure(task, message, nameof(TaskArgumentException), ex.Message, ex.StackTrace, retry: false, started.Elapsed);
        }
        catch (OperationCanceledException) when (cancellation.IsCancellationRequested && !_hardStop.IsCancellationRequested && timeout is not null
                                                 && !held.LeaseLost)
        {
            var ex = new TaskTimeoutException(message.TaskName, timeout.Value);
            return Completion.Failure(task, message, nameof(TaskTimeoutException), ex.Message, null, retry: true, started.Elapsed);
        }
        catch (Exception ex)
        {
            var reason = _hardStop.IsCancellationRequested ? "The worker shut down before the task finished." : ex.Message;
            return Completion.Failure(task, message, ex.GetType().Name, reason, ex.StackTrace, retry: true, started.Elapsed, ex);
        }
    }

    private TimeSpan? TimeoutOf(TaskMessage message, TaskDescriptor descriptor)
    {
        if (message.Labels.TryGetValue(TaskLabels.Timeout, out var text)
            && double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds) && double.IsFinite(seconds) && seconds > 0)
        {
            // A timeout past what a cancellation timer can hold (another producer's label) means "no timeout".
            return seconds < KickOptions.MaxTimeout.TotalSeconds ? TimeSpan.FromSeconds(seconds) : null;
        }

        return (descriptor.Timeout ?? _options.DefaultTaskTimeout) is { } t && t <= KickOptions.MaxTimeout ? t : null;
    }

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
                _held.TryRemove(completion.Task.Lease, out _);
            }

            Interlocked.Add(ref _unreported, -batch.Count);
            _wake.Set(); // the claim loop may be holding back for unreported outcomes
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
                await FlushAsync(batch, stop);
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
            _givenUp[completion.Task.Lease] = Environment.TickCount64;
        }
    }

    private async Task FlushAsync(List<Completion> batch, CancellationToken cancellationToken)
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
            ? await SettleTogetherAsync(acks, fails, stored, cancellationToken)
            : await SettleSeparatelyAsync(acks, fails, stored, cancellationToken);

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

    /// <summary>One statement: acks, failures, and the results of exactly the claims whose ack or failure matched.</summary>
    private async Task<(IReadOnlySet<LeaseRef> Acked, IReadOnlyDictionary<LeaseRef, TaskState> Failed)> SettleTogetherAsync(
        Completion[] acks, Completion[] fails, Completion[] stored, CancellationToken cancellationToken)
    {
        await using var command = new NpgsqlCommand(_settleSql!.Settle);
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
        Completion[] acks, Completion[] fails, Completion[] stored, CancellationToken cancellationToken)
    {
        if (_options.AckMode == AckMode.WhenSaved && stored.Length > 0)
        {
            var confirmed = await _broker.RenewLeaseRefsAsync(WorkerId, stored.Select(c => c.Task.Lease).ToArray(), cancellationToken);
            await StoreResultsAsync(stored.Where(c => confirmed.Contains(c.Task.Lease)), cancellationToken);
        }

        IReadOnlySet<LeaseRef> acked = acks.Length > 0
            ? await _broker.AckLeasesAsync(WorkerId, acks.Select(c => c.Task.Lease).ToArray(), cancellationToken)
            : new HashSet<LeaseRef>();
        IReadOnlyDictionary<LeaseRef, TaskState> failed = fails.Length > 0
            ? await _broker.FailLeasesAsync(WorkerId, fails.Select(c => c.ToFailure()).ToArray(), cancellationToken)
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

    /// <summary>
    /// Lease renewal runs on a dedicated thread with synchronous database calls over a connection of its own (outside
    /// the pool): handlers that block threads, starve the thread pool or hold every pooled connection would otherwise
    /// delay the renewals past the lease, and another worker would run a task whose worker is alive and running it.
    /// </summary>
    private Task StartRenewalThread(CancellationToken stop)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            try
            {
                RenewLoop(stop);
            }
            catch (Exception ex)
            {
                // Never let an exception escape: on a thread of its own it would end the process.
                Log.LoopFailed(_logger, ex, WorkerId, "lease renewal");
            }
            finally
            {
                done.TrySetResult();
            }
        })
        {
            IsBackground = true,
            Name = "taskiq lease renewal",
        };
        thread.Start();
        return done.Task;
    }

    private void RenewLoop(CancellationToken stop)
    {
        var interval = _options.LeaseRenewInterval ?? _broker.Options.LeaseDuration / 3;
        NpgsqlConnection? connection = null;
        var queues = _queues;
        try
        {
            for (var failures = 1; !_renewalReady.Task.IsCompleted && !stop.IsCancellationRequested; failures++)
            {
                try
                {
                    connection ??= OpenRenewalConnection();
                    _broker.RenewLeases(connection, WorkerId, [new LeaseRef(-1, 0)], [false]); // matches no row: warms the path
                    _broker.Heartbeat(connection, WorkerId, queues, ActiveTasks, _capacity); // registers the worker
                    _renewalReady.TrySetResult();
                }
                catch (Exception ex)
                {
                    connection?.Dispose();
                    connection = null;
                    Log.LoopFailed(_logger, ex, WorkerId, "lease renewal start");
                    stop.WaitHandle.WaitOne(Retry.Backoff(failures));
                }
            }

            // One thread for both: the heartbeat every HeartbeatInterval, the renewal every interval (or at once when a
            // cancel request arrives). Both stay off the thread pool, so a busy process neither loses leases nor looks dead.
            WaitHandle[] wakeUps = [stop.WaitHandle, _renewNow];
            var heartbeat = _options.HeartbeatInterval;
            var nextRenew = Environment.TickCount64 + (long)interval.TotalMilliseconds;
            var nextBeat = Environment.TickCount64 + (long)heartbeat.TotalMilliseconds;
            while (true)
            {
                var wait = Math.Max(0, Math.Min(nextRenew, nextBeat) - Environment.TickCount64);
                var woken = WaitHandle.WaitAny(wakeUps, TimeSpan.FromMilliseconds(wait));
                if (woken == 0)
                {
                    break;
                }

                var now = Environment.TickCount64;
                if (now >= nextBeat)
                {
                    nextBeat = now + (long)heartbeat.TotalMilliseconds;
                    try
                    {
                        connection ??= OpenRenewalConnection();
                        _broker.Heartbeat(connection, WorkerId, queues, ActiveTasks, _capacity);
                    }
                    catch (Exception ex)
                    {
                        DropIfBroken(ref connection, ex);
                        if (!stop.IsCancellationRequested)
                        {
                            Log.LoopFailed(_logger, ex, WorkerId, "heartbeat");
                        }
                    }
                }

                if (woken == 1 || now >= nextRenew)
                {
                    nextRenew = now + (long)interval.TotalMilliseconds;
                    RenewHeld(ref connection, stop);
                }
            }
        }
        finally
        {
            connection?.Dispose();
        }
    }

    /// <summary>One renewal round: every held claim (every row leased to us while a claim is in flight).</summary>
    private void RenewHeld(ref NpgsqlConnection? connection, CancellationToken stop)
    {
        var claimInFlight = Volatile.Read(ref _claimInFlight) == 1;
        // With WhenReceived the rows are acked at claim: there is no lease left to renew.
        var held = _options.AckMode == AckMode.WhenReceived ? [] : _held.Values.Where(h => !h.LeaseLost).ToArray();
        if (held.Length == 0 && !claimInFlight)
        {
            return;
        }

        var expired = Environment.TickCount64 - (long)(_broker.Options.LeaseDuration.TotalMilliseconds * 2);
        foreach (var lease in _givenUp.Where(g => g.Value < expired).Select(g => g.Key).ToArray())
        {
            _givenUp.TryRemove(lease, out _); // its lease has long expired: rescued by now
        }

        // A transient failure (a broken connection, replaced; a deadlock with a settle statement over the same
        // rows) is retried at once, not a tick later: ticks lost in a row would let the leases lapse.
        for (var attempt = 1; attempt <= RenewAttemptsPerTick && !stop.IsCancellationRequested; attempt++)
        {
            try
            {
                connection ??= OpenRenewalConnection();
                var renewed = _broker.RenewLeases(connection, WorkerId, held.Select(h => h.Task.Lease).ToArray(),
                    held.Select(h => h.Started).ToArray(), everythingOfWorker: claimInFlight, givenUp: _givenUp.Keys.ToArray(),
                    out var cancelRequested, _queues);
                foreach (var lease in cancelRequested ?? [])
                {
                    if (_held.TryGetValue(lease, out var target) && target.RequestCancel())
                    {
                        Log.TaskCancelRequested(_logger, target.Task.TaskId, target.Task.TaskName);
                    }
                }

                foreach (var lost in held.Where(h => !renewed.Contains(h.Task.Lease) && !h.Settling && _held.ContainsKey(h.Task.Lease)))
                {
                    // Rescued by another worker after we failed to renew in time: stop the handler, its outcome is void.
                    if (lost.MarkLost())
                    {
                        Log.LeaseLost(_logger, lost.Task.TaskId, lost.Task.TaskName);
                    }
                }

                Interlocked.Increment(ref _renewalRounds);
                return;
            }
            catch (Exception ex)
            {
                DropIfBroken(ref connection, ex);
                if (!stop.IsCancellationRequested && (attempt == RenewAttemptsPerTick || !TransientErrors.IsTransient(ex)))
                {
                    Log.LoopFailed(_logger, ex, WorkerId, "lease renewal");
                    return;
                }
            }
        }
    }

    private static void DropIfBroken(ref NpgsqlConnection? connection, Exception ex)
    {
        if (TransientErrors.IsConnectionFailure(ex) || connection?.State != System.Data.ConnectionState.Open)
        {
            connection?.Dispose();
            connection = null;
        }
    }

    private NpgsqlConnection OpenRenewalConnection()
    {
        var connection = PhysicalConnection.Create(_broker.DataSource, "lease renewal");
        try
        {
            connection.Open();
            return connection;
        }
        catch
        {
            connection.Dispose();
            throw;
        }
    }

    private List<ClaimedTask> DrainPrefetched()
    {
        var pending = new List<ClaimedTask>();
        while (_prefetched.Reader.TryRead(out var task))
        {
            if (_held.ContainsKey(task.Lease))
            {
                pending.Add(task);
            }
        }

        return pending;
    }

    private async Task<int> ReleasePrefetchedAsync()
    {
        var pending = DrainPrefetched();
        await ReleaseAsync(pending);
        return pending.Count;
    }

    /// <summary>With <see cref="AckMode.WhenReceived"/> at the hard stop: tasks that never started go back as new rows.</summary>
    private async Task<int> RequeuePrefetchedAsync()
    {
        if (_options.AckMode != AckMode.WhenReceived)
        {
            return 0;
        }

        var pending = DrainPrefetched();
        await RequeueAsync(pending);
        return pending.Count;
    }

    private async Task ReleaseAsync(IReadOnlyCollection<ClaimedTask> tasks)
    {
        if (tasks.Count == 0)
        {
            return;
        }

        MarkSettling(tasks);
        await StopStepAsync(() => _broker.ReleaseAsync(WorkerId, tasks.Select(t => t.Lease).ToArray()), "release");
        Forget(tasks);
    }

    private async Task RequeueAsync(IReadOnlyCollection<ClaimedTask> tasks)
    {
        if (tasks.Count == 0)
        {
            return;
        }

        for (var failures = 1; ; failures++)
        {
            try
            {
                await _broker.RequeueAsync(tasks, CancellationToken.None);
                break;
            }
            catch (Exception ex) when (failures < StopStepAttempts && TransientErrors.IsTransient(ex))
            {
                await Task.Delay(Retry.Backoff(failures));
            }
            catch (Exception ex)
            {
                // Their rows were deleted at claim: this is the loss AckMode.WhenReceived documents for a failed stop.
                Log.RequeueFailed(_logger, ex, WorkerId, tasks.Count);
                break;
            }
        }

        Forget(tasks);
    }

    private void MarkSettling(IEnumerable<ClaimedTask> tasks)
    {
        foreach (var task in tasks)
        {
            if (_held.TryGetValue(task.Lease, out var held))
            {
                held.Settling = true;
            }
        }
    }

    private void Forget(IReadOnlyCollection<ClaimedTask> tasks)
    {
        foreach (var task in tasks)
        {
            if (_held.TryRemove(task.Lease, out _))
            {
                Interlocked.Decrement(ref _active);
            }
        }
    }

    private async Task RetryAsync(Func<CancellationToken, Task> action, string loop, CancellationToken cancellationToken)
    {
        for (var failures = 1; !cancellationToken.IsCancellationRequested; failures++)
        {
            try
            {
                await action(cancellationToken);
                return;
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex) when (!cancellationToken.IsCancellationRequested)
            {
                // Start-up keeps trying whatever the error (a schema not yet migrated, a grant not yet given): the
                // health check reports a worker that has not started.
                Log.LoopFailed(_logger, ex, WorkerId, loop);
                await Retry.DelayAsync(Retry.Backoff(failures), cancellationToken);
            }
        }
    }

    /// <summary>An error result; the message and stack trace come from user code and are made storable here.</summary>
    internal static TaskResult ErrorResult(string type, string message, string? stackTrace, TimeSpan elapsed, Dictionary<string, string>? labels)
        => new()
        {
            IsError = true,
            ExecutionTime = elapsed.TotalSeconds,
            Labels = labels ?? [],
            Error = new TaskError(StoredText.Sanitize(type, StoredText.MaxErrorLength), StoredText.Sanitize(message, StoredText.MaxErrorLength)),
            StackTrace = stackTrace is null ? null : StoredText.Sanitize(stackTrace, StoredText.MaxStackTraceLength),
        };

    /// <summary>One claim held by this worker: the handler's cancellation and whether the lease was lost.</summary>
    private sealed class Held(ClaimedTask task)
    {
        private readonly Lock _gate = new();
        private CancellationTokenSource? _cancellation;
        private bool _leaseLost;

        public ClaimedTask Task { get; } = task;

        /// <summary>Its outcome is being written (or it is being handed back): the renewal no longer judges its lease.</summary>
        public volatile bool Settling;

        /// <summary>Its handler has started; the next renewal records it, so a rescue counts this claim's attempt.</summary>
        public volatile bool Started;

        private bool _cancelRequested;

        /// <summary>A cancel was requested for this task (seen by a renewal).</summary>
        public bool CancelRequested
        {
            get
            {
                lock (_gate)
                {
                    return _cancelRequested;
                }
            }
        }

        /// <summary>Records a cancel request and cancels a running handler (on the thread pool: never on the renewal thread).</summary>
        /// <returns>True the first time.</returns>
        public bool RequestCancel()
        {
            CancellationTokenSource? running;
            lock (_gate)
            {
                if (_cancelRequested)
                {
                    return false;
                }

                _cancelRequested = true;
                running = _cancellation;
            }

            if (running is not null)
            {
                ThreadPool.UnsafeQueueUserWorkItem(static cts =>
                {
                    try
                    {
                        cts.Cancel();
                    }
                    catch (ObjectDisposedException)
                    {
                        // the handler has just finished
                    }
                }, running, preferLocal: false);
            }

            return true;
        }

        public bool LeaseLost
        {
            get
            {
                lock (_gate)
                {
                    return _leaseLost;
                }
            }
        }

        /// <summary>Publishes the run's cancellation before the lost flag is read, so a concurrent loss is never missed.</summary>
        /// <returns>False when the lease is already lost: the task must not start.</returns>
        public bool TryStart(CancellationTokenSource cancellation)
        {
            lock (_gate)
            {
                if (_leaseLost)
                {
                    return false;
                }

                _cancellation = cancellation;
                Started = true;
                if (_cancelRequested)
                {
                    cancellation.Cancel(); // requested between the caller's check and now: the handler starts cancelled
                }

                return true;
            }
        }

        public void Finish()
        {
            lock (_gate)
            {
                _cancellation = null;
            }
        }

        /// <summary>Marks the lease lost and cancels a running handler.</summary>
        /// <returns>True the first time.</returns>
        public bool MarkLost()
        {
            CancellationTokenSource? running;
            lock (_gate)
            {
                if (_leaseLost)
                {
                    return false;
                }

                _leaseLost = true;
                running = _cancellation;
            }

            try
            {
                running?.Cancel();
            }
            catch (ObjectDisposedException)
            {
                // the handler has just finished
            }

            return true;
        }
    }

    private sealed record Completion(ClaimedTask Task, TaskResult? Result, TaskError? Error, bool Retry, Exception? Exception, int RefusedCount = 0)
    {
        public bool Succeeded => Error is null && Snooze is null;

        /// <summary>Set when the handler snoozed: back to the queue after this delay, no attempt used.</summary>
        public TimeSpan? Snooze { get; init; }

        /// <summary>The handler completed the task in its own transaction: a missing row at the ack is that commit, not a lost lease.</summary>
        public bool CompletedInTransaction { get; init; }

        /// <summary>The task's retry policy from its registration, if any.</summary>
        public TaskRetryPolicy? Policy { get; init; }

        /// <summary>No attempt follows this one.</summary>
        public bool IsFinal => Snooze is null && (Succeeded || !Retry || Task.Attempt >= (Policy?.MaxAttempts ?? Task.MaxAttempts));

        /// <summary>This outcome as a failure to write (a snooze is written as one).</summary>
        public TaskFailure ToFailure() => new(Task.Lease, Snooze is null ? FailureText : "snoozed", Retry)
        {
            SnoozeFor = Snooze,
            MaxAttempts = Policy?.MaxAttempts,
            RetryBaseDelay = Policy?.BaseDelay,
            RetryMaxDelay = Policy?.MaxDelay,
        };

        public static Completion Snoozed(ClaimedTask task, TimeSpan delay) => new(task, null, null, true, null) { Snooze = delay };

        /// <summary>The text kept in <c>last_error</c>.</summary>
        public string FailureText => Error is null ? "snoozed" : Error.Type + ": " + Error.Message;

        public static Completion Success(ClaimedTask task, TaskResult result) => new(task, result, null, false, null);

        /// <summary>Cancelled by request: no retry; the row's cancel request makes the settle statement end it cancelled.</summary>
        public static Completion Cancelled(ClaimedTask task, TaskMessage message, TimeSpan elapsed = default)
            => Failure(task, message, CancelledTaskException.ErrorType, PostgresBroker.CancelledReason, null, retry: false, elapsed);

        public static Completion Failure(ClaimedTask task, TaskMessage? message, string type, string reason, string? stackTrace,
            bool retry, TimeSpan elapsed = default, Exception? exception = null)
        {
            var result = ErrorResult(type, reason, stackTrace, elapsed, message?.Labels);
            return new(task, result, result.Error, retry, exception);
        }

        /// <summary>
        /// What to write instead after PostgreSQL refused this outcome: first a dead letter with the database's reason
        /// and an error result, then the dead letter alone; null when both were refused too.
        /// </summary>
        public Completion? Refused(Exception ex)
        {
            var reason = ex is PostgresException pg ? $"{pg.SqlState}: {pg.MessageText}" : $"{ex.GetType().Name}: {ex.Message}";
            var failure = Failure(Task, null, "OutcomeRefused", $"PostgreSQL refused to store this task's outcome ({reason}).", null, retry: false)
                with { RefusedCount = RefusedCount + 1 };
            return RefusedCount switch
            {
                0 => failure,
                1 => failure with { Result = null },
                _ => null,
            };
        }
    }

    private sealed class EmptyServiceProvider : IServiceProvider
    {
        public static readonly EmptyServiceProvider Instance = new();

        public object? GetService(Type serviceType) => null;
    }
}
