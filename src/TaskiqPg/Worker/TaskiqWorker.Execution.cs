using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;
using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// The executors: <see cref="TaskiqWorkerOptions.MaxConcurrentTasks"/> loops on one channel, each running a claimed task's
/// handler in its DI scope with its timeout and cancellation, never starting one whose lease was lost.
/// </summary>
public sealed partial class TaskiqWorker
{
    private async Task ExecuteLoopAsync()
    {
        await foreach (var task in _prefetched.Reader.ReadAllAsync())
        {
            if (!_held.TryGet(task.Lease, out var held))
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
            SlotFreed();
            if (completion is null)
            {
                _held.Remove(task.Lease); // never started: its lease is another worker's
                continue;
            }

            held.Settling = true; // its outcome is on its way: a missing row at renewal means it was written, not lost
            Interlocked.Increment(ref _unreported);
            _completions.Writer.TryWrite(completion);
        }
    }

    /// <returns>The outcome, or null when the task was not started because its lease had already been lost.</returns>
    private async Task<Completion?> RunAsync(ClaimedTask task, HeldTask held)
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
        CancellationTokenSource cancellation, HeldTask held, Stopwatch started)
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
        CancellationTokenSource cancellation, HeldTask held, Stopwatch started)
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
}
