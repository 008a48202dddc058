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

    private readonly PostgresBroker _broker;
    private readonly PostgresResultBackend? _results;
    private readonly TaskRegistry _registry;
    private readonly TaskiqWorkerOptions _options;
    private readonly IServiceProvider _services;
    private readonly ILogger _logger;
    private readonly WakeSignal _wake = new();
    private readonly Channel<ClaimedTask> _prefetched = Channel.CreateUnbounded<ClaimedTask>();
    private readonly Channel<Completion> _completions = Channel.CreateUnbounded<Completion>(new UnboundedChannelOptions { SingleReader = true });
    private readonly ConcurrentDictionary<long, Held> _held = new();
    private int _claimInFlight; // 1 from sending a claim until its rows are registered in _held
    private readonly ConcurrentDictionary<long, long> _givenUp = new(); // rows whose outcome could not be reported
    private readonly CancellationTokenSource _hardStop = new();
    private readonly int _capacity;
    private static readonly TimeSpan DepthSampleInterval = TimeSpan.FromSeconds(5);
    private readonly KeyValuePair<string, object?> _queueTag;
    private IReadOnlyDictionary<string, long> _depth = new Dictionary<string, long>();
    private int _active;
    private volatile bool _stopping;
    private long _lastLoopTicks;

    /// <summary>Creates a worker. <paramref name="services"/> resolves handlers and their dependencies (a scope per task).</summary>
    public TaskiqWorker(PostgresBroker broker, TaskRegistry registry, PostgresResultBackend? resultBackend = null,
        TaskiqWorkerOptions? options = null, IServiceProvider? services = null, ILoggerFactory? loggerFactory = null)
    {
        _broker = broker ?? throw new ArgumentNullException(nameof(broker));
        _registry = registry ?? throw new ArgumentNullException(nameof(registry));
        _results = resultBackend;
        _options = (options ?? new TaskiqWorkerOptions()) with { };
        _options.Validate();
        _services = services ?? EmptyServiceProvider.Instance;
        _logger = (loggerFactory ?? NullLoggerFactory.Instance).CreateLogger<TaskiqWorker>();
        WorkerId = _options.WorkerId ?? $"{Environment.MachineName}:{Environment.ProcessId}:{Guid.NewGuid().ToString("N")[..8]}";
        _capacity = _options.MaxConcurrentTasks + (_options.PrefetchCount ?? _options.MaxConcurrentTasks);
        _queueTag = new KeyValuePair<string, object?>(MessagingTags.Destination, _broker.Options.Queue);
    }

    /// <summary>The identity this worker writes to <c>locked_by</c>.</summary>
    public string WorkerId { get; }

    /// <summary>Tasks claimed and not yet finished running.</summary>
    public int ActiveTasks => Volatile.Read(ref _active);

    /// <summary>When this instance was created (UTC); health checks allow a start-up grace period from it.</summary>
    public DateTime CreatedAt { get; } = DateTime.UtcNow;

    /// <summary>When the claim loop last completed an iteration (UTC); for liveness checks.</summary>
    public DateTime LastLoopActivity => new(Interlocked.Read(ref _lastLoopTicks), DateTimeKind.Utc);

    /// <inheritdoc />
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
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

        using var subscription = _broker.Subscribe(_wake.Set);
        _wake.Set(); // scan at start: tasks kicked while no worker listened
        Log.WorkerStarted(_logger, WorkerId, _broker.Options.Queue, _options.MaxConcurrentTasks, _capacity - _options.MaxConcurrentTasks);

        using var background = new CancellationTokenSource();
        var flusher = Task.Run(() => FlushLoopAsync(background.Token), CancellationToken.None);
        var renewer = StartRenewalThread(background.Token);
        var rescuer = Task.Run(() => RescueLoopAsync(background.Token), CancellationToken.None);
        var sampler = Task.Run(() => SampleDepthLoopAsync(background.Token), CancellationToken.None);
        using var depthRegistration = TaskiqDiagnostics.RegisterDepthSource(ObserveDepth);
        var executors = Enumerable.Range(0, _options.MaxConcurrentTasks)
            .Select(_ => Task.Run(ExecuteLoopAsync, CancellationToken.None)).ToArray();

        await ClaimLoopAsync(stoppingToken);

        // Shutdown: claim nothing more, hand prefetched tasks back at once, let running ones finish.
        _stopping = true;
        _prefetched.Writer.TryComplete();
        var released = await ReleasePrefetchedAsync();
        var abandoned = 0;
        var allExecutors = Task.WhenAll(executors);
        try
        {
            await allExecutors.WaitAsync(_options.ShutdownTimeout);
        }
        catch (TimeoutException)
        {
            abandoned = ActiveTasks;
            await _hardStop.CancelAsync();
            await Task.WhenAny(allExecutors, Task.Delay(TimeSpan.FromSeconds(5)));
        }

        _completions.Writer.TryComplete();
        await Task.WhenAny(flusher, Task.Delay(TimeSpan.FromSeconds(10)));
        await background.CancelAsync();
        await Task.WhenAll(renewer.ContinueWith(static _ => { }, TaskScheduler.Default),
            rescuer.ContinueWith(static _ => { }, TaskScheduler.Default),
            sampler.ContinueWith(static _ => { }, TaskScheduler.Default),
            flusher.ContinueWith(static _ => { }, TaskScheduler.Default));
        Log.WorkerStopped(_logger, WorkerId, released, abandoned);
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        base.Dispose();
        _hardStop.Dispose();
    }

    private async Task ClaimLoopAsync(CancellationToken stoppingToken)
    {
        var failures = 0;
        while (!stoppingToken.IsCancellationRequested)
        {
            Interlocked.Exchange(ref _lastLoopTicks, DateTime.UtcNow.Ticks);
            var free = _capacity - Volatile.Read(ref _active);
            if (free <= 0)
            {
                await WaitForWakeAsync(stoppingToken);
                continue;
            }

            var wanted = Math.Min(free, _options.ClaimBatchSize);
            IReadOnlyList<ClaimedTask> batch;
            try
            {
                if (failures > 0)
                {
                    // The failed claim may have committed before the connection died: take back what it leased to
                    // us at once instead of leaving it to wait out the lease.
                    var orphans = await _broker.ReleaseOrphansAsync(WorkerId, _held.Keys.ToArray(), stoppingToken);
                    if (orphans > 0)
                    {
                        Log.OrphansReleased(_logger, WorkerId, orphans);
                    }
                }

                Volatile.Write(ref _claimInFlight, 1); // until its rows are in _held, renewal covers all rows leased to us
                batch = await _broker.ClaimAsync(WorkerId, wanted, stoppingToken);
                failures = 0;
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                Volatile.Write(ref _claimInFlight, 0);
                break;
            }
            catch (Exception ex)
            {
                Volatile.Write(ref _claimInFlight, 0);
                // Transient or not, the loop keeps going: a claim that fails is retried with backoff.
                Log.LoopFailed(_logger, ex, WorkerId, "claim");
                await Retry.DelayAsync(Retry.Backoff(++failures), stoppingToken);
                continue;
            }

            if (batch.Count > 0 && _options.AckMode == AckMode.WhenReceived)
            {
                batch = await AckOnReceiveAsync(batch, stoppingToken);
            }

            foreach (var task in batch)
            {
                Interlocked.Increment(ref _active);
                _held[task.Id] = new Held(task);
                _prefetched.Writer.TryWrite(task);
            }

            Volatile.Write(ref _claimInFlight, 0);

            if (batch.Count < wanted)
            {
                await WaitForWakeAsync(stoppingToken);
            }
        }
    }

    private async Task<IReadOnlyList<ClaimedTask>> AckOnReceiveAsync(IReadOnlyList<ClaimedTask> batch, CancellationToken cancellationToken)
    {
        try
        {
            var acked = await _broker.AckAsync(WorkerId, batch.Select(t => t.Lease).ToArray(), cancellationToken);
            return batch.Where(t => acked.Contains(t.Id)).ToArray();
        }
        catch (Exception ex) when (IsTransient(ex))
        {
            // Not acked: the leases expire and the tasks are rescued, so nothing is lost.
            Log.LoopFailed(_logger, ex, WorkerId, "ack on receive");
            return [];
        }
    }

    private async Task WaitForWakeAsync(CancellationToken stoppingToken)
    {
        try
        {
            await _wake.WaitAsync(_options.PollInterval, stoppingToken);
        }
        catch (OperationCanceledException)
        {
        }
    }

    private async Task ExecuteLoopAsync()
    {
        await foreach (var task in _prefetched.Reader.ReadAllAsync())
        {
            if (_stopping)
            {
                await ReleaseAsync([task]);
                continue;
            }

            Completion completion;
            try
            {
                completion = await RunAsync(task);
            }
            catch (Exception ex)
            {
                // A fault outside the handler (never expected): dead-letter with the reason rather than lose the slot.
                completion = Completion.Failure(task, null, "WorkerFault", ex.Message, ex.StackTrace, retry: false, exception: ex);
            }

            Interlocked.Decrement(ref _active);
            _wake.Set(); // a slot is free
            _completions.Writer.TryWrite(completion);
        }
    }

    private async Task<Completion> RunAsync(ClaimedTask task)
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

        if (!_registry.TryGet(message.TaskName, out var descriptor))
        {
            return Completion.Failure(task, message, "UnknownTask",
                $"No task named '{message.TaskName}' is registered on worker {WorkerId}.", null, retry: false);
        }

        var timeout = TimeoutOf(message, descriptor);
        using var cancellation = CancellationTokenSource.CreateLinkedTokenSource(_hardStop.Token);
        if (_held.TryGetValue(task.Id, out var held))
        {
            held.Cancellation = cancellation;
        }

        if (timeout is { } t)
        {
            cancellation.CancelAfter(t);
        }

        try
        {
            return await InvokeAsync(task, message, descriptor, timeout, cancellation, held, started);
        }
        finally
        {
            if (held is not null)
            {
                held.Cancellation = null;
            }
        }
    }

    private async Task<Completion> InvokeAsync(ClaimedTask task, TaskMessage message, TaskDescriptor descriptor, TimeSpan? timeout,
        CancellationTokenSource cancellation, Held? held, Stopwatch started)
    {
        using var activity = MessagingTags.StartProcess(_broker.Options.Queue, message, task.Attempt);
        var completion = await InvokeInScopeAsync(task, message, descriptor, timeout, cancellation, held, started);
        TaskiqDiagnostics.Duration.Record(started.Elapsed.TotalSeconds, _queueTag, new KeyValuePair<string, object?>(MessagingTags.TaskName, message.TaskName));
        if (completion.Error is { } error)
        {
            MessagingTags.RecordError(activity, error.Type, error.Message);
        }

        return completion;
    }

    private async Task<Completion> InvokeInScopeAsync(ClaimedTask task, TaskMessage message, TaskDescriptor descriptor, TimeSpan? timeout,
        CancellationTokenSource cancellation, Held? held, Stopwatch started)
    {
        await using var scope = _services.GetService<IServiceScopeFactory>()?.CreateAsyncScope();
        var context = new TaskContext(message, task, scope?.ServiceProvider ?? _services, _results, _registry.SerializerOptions, cancellation.Token);
        try
        {
            var (value, type) = await descriptor.Invoke(context, cancellation.Token);
            var result = new TaskResult
            {
                IsError = false,
                ReturnValue = JsonSerializer.SerializeToElement(value, type, _registry.SerializerOptions),
                ExecutionTime = started.Elapsed.TotalSeconds,
                Labels = message.Labels,
            };
            return Completion.Success(task, result);
        }
        catch (TaskArgumentException ex)
        {
            return Completion.Failure(task, message, nameof(TaskArgumentException), ex.Message, ex.StackTrace, retry: false, started.Elapsed);
        }
        catch (OperationCanceledException) when (cancellation.IsCancellationRequested && !_hardStop.IsCancellationRequested && timeout is not null
                                                 && held?.LeaseLost != true)
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
            && double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds) && seconds > 0)
        {
            return TimeSpan.FromSeconds(seconds);
        }

        return descriptor.Timeout ?? _options.DefaultTaskTimeout;
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

            var failures = 0;
            while (true)
            {
                try
                {
                    await FlushAsync(batch, stop);
                    break;
                }
                catch (Exception ex) when (IsTransient(ex) && !stop.IsCancellationRequested)
                {
                    // Keep the outcomes and try again: leases stay renewed meanwhile, so nothing reruns needlessly.
                    Log.LoopFailed(_logger, ex, WorkerId, "complete");
                    await Retry.DelayAsync(Retry.Backoff(++failures), stop);
                }
                catch (Exception ex)
                {
                    // Shutting down, or a fault that retrying cannot fix: these tasks are rescued after their leases
                    // expire, so they run again rather than vanish.
                    if (!stop.IsCancellationRequested)
                    {
                        Log.FlushAbandoned(_logger, ex, WorkerId, batch.Count);
                    }

                    foreach (var completion in batch)
                    {
                        _givenUp[completion.Task.Id] = Environment.TickCount64; // never renewed again: left to its lease
                    }

                    break;
                }
            }

            foreach (var completion in batch)
            {
                _held.TryRemove(completion.Task.Id, out _);
            }

            batch.Clear();
        }
    }

    private async Task FlushAsync(List<Completion> batch, CancellationToken cancellationToken)
    {
        var acks = batch.Where(c => c.Succeeded && _options.AckMode != AckMode.WhenReceived).Select(c => c.Task.Lease).ToArray();
        var fails = _options.AckMode == AckMode.WhenReceived
            ? []
            : batch.Where(c => !c.Succeeded).Select(c => new TaskFailure(c.Task.Lease, c.Error!.Type + ": " + c.Error.Message, c.Retry)).ToArray();
        var results = _results is null
            ? []
            : batch.Where(c => c.Result is not null && (c.Succeeded || c.IsFinal || _options.AckMode == AckMode.WhenReceived))
                .Select(c => new KeyValuePair<string, TaskResult>(c.Task.TaskId, c.Result!)).ToArray();

        IReadOnlySet<long> acked;
        IReadOnlyDictionary<long, string> failed;
        if (_results is not null && ReferenceEquals(_results.DataSource, _broker.DataSource))
        {
            // One pool for both (the seed's shared-pool setup): results, acks and failures go in one batch, one round
            // trip and one implicit transaction, so a waiter never sees a result before the task's row is settled.
            (acked, failed) = await FlushTogetherAsync(results, acks, fails, cancellationToken);
        }
        else
        {
            if (_options.AckMode == AckMode.WhenSaved && results.Length > 0)
            {
                await _results!.SetResultsAsync(results, cancellationToken);
            }

            acked = acks.Length > 0 ? await _broker.AckAsync(WorkerId, acks, cancellationToken) : new HashSet<long>();
            failed = fails.Length > 0 ? await _broker.FailAsync(WorkerId, fails, cancellationToken) : new Dictionary<long, string>();

            if (_options.AckMode != AckMode.WhenSaved && results.Length > 0)
            {
                await _results!.SetResultsAsync(results, cancellationToken);
            }
        }

        foreach (var completion in batch)
        {
            var task = completion.Task;
            var nameTag = new KeyValuePair<string, object?>(MessagingTags.TaskName, task.TaskName);
            if (_options.AckMode == AckMode.WhenReceived)
            {
                RecordOutcome(completion.Succeeded ? TaskStatuses.Processing : TaskStatuses.Dead, completion.Succeeded, nameTag);
                continue;
            }

            var accepted = completion.Succeeded ? acked.Contains(task.Id) : failed.ContainsKey(task.Id);
            if (accepted)
            {
                RecordOutcome(completion.Succeeded ? TaskStatuses.Processing : failed[task.Id], completion.Succeeded, nameTag);
            }

            if (!accepted)
            {
                Log.CompletionRejected(_logger, task.TaskId, task.TaskName);
            }
            else if (!completion.Succeeded)
            {
                if (failed[task.Id] == TaskStatuses.Dead)
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
    }

    private async Task<(IReadOnlySet<long> Acked, IReadOnlyDictionary<long, string> Failed)> FlushTogetherAsync(
        KeyValuePair<string, TaskResult>[] results, LeaseRef[] acks, TaskFailure[] fails, CancellationToken cancellationToken)
    {
        await using var batch = _broker.DataSource.CreateBatch();
        var resultCommands = results.Length > 0 ? _results!.CreateSetResultCommands(results) : [];
        resultCommands.ForEach(batch.BatchCommands.Add);
        if (acks.Length > 0)
        {
            batch.BatchCommands.Add(_broker.CreateAckCommand(WorkerId, acks));
        }

        if (fails.Length > 0)
        {
            batch.BatchCommands.Add(_broker.CreateFailCommand(WorkerId, fails));
        }

        if (batch.BatchCommands.Count == 0)
        {
            return (new HashSet<long>(), new Dictionary<long, string>());
        }

        await using var reader = await batch.ExecuteReaderAsync(cancellationToken);
        for (var i = 0; i < resultCommands.Count; i++)
        {
            await reader.NextResultAsync(cancellationToken); // skip each upsert's notify row
        }

        IReadOnlySet<long> acked = acks.Length > 0 ? await PostgresBroker.ReadIdsAsync(reader, cancellationToken) : new HashSet<long>();
        if (acks.Length > 0)
        {
            await reader.NextResultAsync(cancellationToken);
        }

        IReadOnlyDictionary<long, string> failed = fails.Length > 0
            ? await PostgresBroker.ReadFailOutcomeAsync(reader, cancellationToken)
            : new Dictionary<long, string>();
        return (acked, failed);
    }

    private void RecordOutcome(string newStatus, bool succeeded, KeyValuePair<string, object?> nameTag)
    {
        if (succeeded)
        {
            TaskiqDiagnostics.Completed.Add(1, _queueTag, nameTag);
            return;
        }

        TaskiqDiagnostics.Failed.Add(1, _queueTag, nameTag);
        (newStatus == TaskStatuses.Dead ? TaskiqDiagnostics.DeadLettered : TaskiqDiagnostics.Retried).Add(1, _queueTag, nameTag);
    }

    private async Task SampleDepthLoopAsync(CancellationToken stop)
    {
        using var timer = new PeriodicTimer(DepthSampleInterval);
        do
        {
            if (!TaskiqDiagnostics.QueueDepth.Enabled)
            {
                continue; // nobody collects the gauge: spare the database the count
            }

            try
            {
                _depth = await _broker.GetQueueCountsAsync(stop);
            }
            catch (Exception ex) when (!stop.IsCancellationRequested)
            {
                Log.LoopFailed(_logger, ex, WorkerId, "queue depth");
            }
        }
        while (await TickAsync(timer, stop));
    }

    private IEnumerable<Measurement<long>> ObserveDepth()
        => _depth.Select(kv => new Measurement<long>(kv.Value, _queueTag, new KeyValuePair<string, object?>("taskiq.status", kv.Key)));

    /// <summary>
    /// Lease renewal runs on a dedicated thread with synchronous database calls, not on the thread pool: handlers that
    /// block threads (or a CPU-starved pool) would otherwise delay the renewals past the lease, and another worker
    /// would run a task whose worker is alive and still running it.
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
        while (!stop.WaitHandle.WaitOne(interval))
        {
            var claimInFlight = Volatile.Read(ref _claimInFlight) == 1;
            var held = _held.Values.Where(h => !h.LeaseLost).ToArray();
            if (held.Length == 0 && !claimInFlight)
            {
                continue;
            }

            try
            {
                var expired = Environment.TickCount64 - (long)(_broker.Options.LeaseDuration.TotalMilliseconds * 2);
                foreach (var id in _givenUp.Where(g => g.Value < expired).Select(g => g.Key).ToArray())
                {
                    _givenUp.TryRemove(id, out _); // its lease has long expired: rescued by now
                }

                var renewed = _broker.RenewLeases(WorkerId, held.Select(h => h.Task.Lease).ToArray(), everythingOfWorker: claimInFlight,
                    givenUp: _givenUp.Keys.ToArray());
                foreach (var lost in held.Where(h => !renewed.Contains(h.Task.Id) && _held.ContainsKey(h.Task.Id)))
                {
                    // Rescued by another worker after we failed to renew in time: stop the handler, its outcome is void.
                    lost.LeaseLost = true;
                    Log.LeaseLost(_logger, lost.Task.TaskId, lost.Task.TaskName);
                    try
                    {
                        lost.Cancellation?.Cancel();
                    }
                    catch (ObjectDisposedException)
                    {
                        // the handler has just finished
                    }
                }
            }
            catch (Exception ex)
            {
                // Never let an exception escape: on a thread of its own it would end the process.
                if (!stop.IsCancellationRequested)
                {
                    Log.LoopFailed(_logger, ex, WorkerId, "lease renewal");
                }
            }
        }
    }

    private async Task RescueLoopAsync(CancellationToken stop)
    {
        var interval = _options.RescueInterval ?? _broker.Options.LeaseDuration / 2;
        using var timer = new PeriodicTimer(interval);
        do
        {
            try
            {
                var rescued = await _broker.RescueExpiredLeasesAsync(cancellationToken: stop);
                if (rescued.Count > 0)
                {
                    var dead = rescued.Where(r => r.DeadLettered).ToArray();
                    Log.LeasesRescued(_logger, rescued.Count, dead.Length);
                    if (dead.Length > 0 && _results is not null)
                    {
                        await _results.SetResultsAsync(dead.Select(d => new KeyValuePair<string, TaskResult>(d.TaskId,
                            ErrorResult("LeaseExpired", "The task's lease expired on its last attempt (its worker died or hung).", null, TimeSpan.Zero, null))).ToArray(), stop);
                    }

                    _wake.Set();
                }
            }
            catch (Exception ex) when (!stop.IsCancellationRequested)
            {
                Log.LoopFailed(_logger, ex, WorkerId, "rescue");
            }
        }
        while (await TickAsync(timer, stop));
    }

    private async Task<int> ReleasePrefetchedAsync()
    {
        var pending = new List<ClaimedTask>();
        while (_prefetched.Reader.TryRead(out var task))
        {
            pending.Add(task);
        }

        await ReleaseAsync(pending);
        return pending.Count;
    }

    private async Task ReleaseAsync(IReadOnlyCollection<ClaimedTask> tasks)
    {
        if (tasks.Count == 0)
        {
            return;
        }

        try
        {
            await _broker.ReleaseAsync(WorkerId, tasks.Select(t => t.Lease).ToArray());
        }
        catch (Exception ex) when (IsTransient(ex))
        {
            Log.LoopFailed(_logger, ex, WorkerId, "release"); // the leases expire instead
        }

        foreach (var task in tasks)
        {
            _held.TryRemove(task.Id, out _);
            Interlocked.Decrement(ref _active);
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
            catch (Exception ex) when (IsTransient(ex) && !cancellationToken.IsCancellationRequested)
            {
                Log.LoopFailed(_logger, ex, WorkerId, loop);
                await Retry.DelayAsync(Retry.Backoff(failures), cancellationToken);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return;
            }
        }
    }

    internal static TaskResult ErrorResult(string type, string message, string? stackTrace, TimeSpan elapsed, Dictionary<string, string>? labels)
        => new()
        {
            IsError = true,
            ExecutionTime = elapsed.TotalSeconds,
            Labels = labels ?? [],
            Error = new TaskError(type, message),
            StackTrace = stackTrace,
        };

    private static bool IsTransient(Exception ex) => TransientErrors.IsRetryable(ex);

    private static async Task<bool> TickAsync(PeriodicTimer timer, CancellationToken stop)
    {
        try
        {
            return await timer.WaitForNextTickAsync(stop);
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    private sealed class Held(ClaimedTask task)
    {
        public ClaimedTask Task { get; } = task;

        public CancellationTokenSource? Cancellation { get; set; }

        public volatile bool LeaseLost;
    }

    private sealed record Completion(ClaimedTask Task, TaskResult? Result, TaskError? Error, bool Retry, Exception? Exception)
    {
        public bool Succeeded => Error is null;

        /// <summary>No attempt follows this one.</summary>
        public bool IsFinal => Succeeded || !Retry || Task.Attempt >= Task.MaxAttempts;

        public static Completion Success(ClaimedTask task, TaskResult result) => new(task, result, null, false, null);

        public static Completion Failure(ClaimedTask task, TaskMessage? message, string type, string reason, string? stackTrace,
            bool retry, TimeSpan elapsed = default, Exception? exception = null)
            => new(task, ErrorResult(type, reason, stackTrace, elapsed, message?.Labels), new TaskError(type, reason), retry, exception);
    }

    private sealed class EmptyServiceProvider : IServiceProvider
    {
        public static readonly EmptyServiceProvider Instance = new();

        public object? GetService(Type serviceType) => null;
    }
}
