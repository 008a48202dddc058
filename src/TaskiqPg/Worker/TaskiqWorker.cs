using System.Threading.Channels;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// Claims tasks in batches, runs them with bounded concurrency, renews their leases, and reports outcomes in batches
/// (results, acks, retries, dead letters). Woken by NOTIFY, with a poll as a fallback. On stop: claims no more,
/// releases prefetched tasks at once, lets running tasks finish up to <see cref="TaskiqWorkerOptions.ShutdownTimeout"/>.
/// </summary>
public sealed partial class TaskiqWorker : BackgroundService
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
    private readonly HeldClaims _held = new();
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
    private int _waitingForSlots; // 1 while the claim loop holds back for a free slot or unreported outcomes (see SlotFreed)
    private volatile bool _stopping;
    private long _lastLoopTicks;
    private long _claimsFailingSinceTicks; // 0 while claims succeed
    private Task? _renewer; // the renewal thread, while the worker runs

    /// <summary>Creates a worker. <paramref name="services"/> resolves handlers and their dependencies (a scope per task).</summary>
    /// <param name="broker">Where tasks are claimed and settled.</param>
    /// <param name="registry">The tasks this worker runs; a task name not in it is dead-lettered with the reason.</param>
    /// <param name="resultBackend">Where results are stored; null to store none.</param>
    /// <param name="options">The worker's options; default: <see cref="TaskiqWorkerOptions"/> defaults.</param>
    /// <param name="services">Resolves handlers and their dependencies (a scope per task); default: none.</param>
    /// <param name="loggerFactory">Where the worker logs; default: nowhere.</param>
    /// <exception cref="ArgumentNullException"><paramref name="broker"/> or <paramref name="registry"/> is null.</exception>
    /// <exception cref="ArgumentException">An option is out of range, or the heartbeat is longer than a third of the broker's <see cref="PostgresBrokerOptions.WorkerStaleAfter"/>.</exception>
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

    /// <summary>
    /// A claim cancelled by the stop may have committed on the server, an ack at receipt may have failed for good: their
    /// rows are leased to this worker, which does not hold them. Hand them back now (attempt not spent) instead of letting
    /// them wait out the lease.
    /// </summary>
    private async Task HandBackOrphansAsync()
    {
        var orphans = 0;
        if (await StopStepAsync(async () => orphans = await _broker.ReleaseOrphansAsync(WorkerId, _held.KnownClaimIds(), CancellationToken.None, _queues), "release on stop")
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

    private List<ClaimedTask> DrainPrefetched()
    {
        var pending = new List<ClaimedTask>();
        while (_prefetched.Reader.TryRead(out var task))
        {
            if (_held.Contains(task.Lease))
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
            if (_held.TryGet(task.Lease, out var held))
            {
                held.Settling = true;
            }
        }
    }

    private void Forget(IReadOnlyCollection<ClaimedTask> tasks)
    {
        foreach (var task in tasks)
        {
            if (_held.Remove(task.Lease))
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

    private sealed class EmptyServiceProvider : IServiceProvider
    {
        public static readonly EmptyServiceProvider Instance = new();

        public object? GetService(Type serviceType) => null;
    }
}
