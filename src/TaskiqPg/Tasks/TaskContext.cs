using System.Text.Json;
using Npgsql;

namespace TaskiqPg;

/// <summary>What a running task knows about itself.</summary>
public sealed class TaskContext
{
    private readonly PostgresResultBackend? _results;

    internal TaskContext(TaskMessage message, ClaimedTask claim, IServiceProvider services, PostgresResultBackend? results,
        JsonSerializerOptions serializerOptions, CancellationToken cancellationToken)
    {
        Message = message;
        Attempt = claim.Attempt;
        MaxAttempts = claim.MaxAttempts;
        Services = services;
        _results = results;
        SerializerOptions = serializerOptions;
        CancellationToken = cancellationToken;
    }

    /// <summary>The message being run.</summary>
    public TaskMessage Message { get; }

    /// <summary>The task id.</summary>
    public string TaskId => Message.TaskId;

    /// <summary>The task name.</summary>
    public string TaskName => Message.TaskName;

    /// <summary>The task's labels.</summary>
    public IReadOnlyDictionary<string, string> Labels => Message.Labels;

    /// <summary>This attempt's number, 1 for the first run.</summary>
    public int Attempt { get; }

    /// <summary>Attempts the task may use.</summary>
    public int MaxAttempts { get; }

    /// <summary>Services of this task's DI scope.</summary>
    public IServiceProvider Services { get; }

    /// <summary>JSON settings for arguments and results.</summary>
    public JsonSerializerOptions SerializerOptions { get; }

    /// <summary>Fires on timeout, lost lease or hard shutdown.</summary>
    public CancellationToken CancellationToken { get; }

    /// <summary>
    /// Puts the task back in the queue, due after <paramref name="delay"/>, without using an attempt (throws
    /// <see cref="TaskSnoozedException"/>: nothing after this call runs).
    /// </summary>
    /// <param name="delay">How long until the task is due again: zero up to <see cref="KickOptions.MaxDelay"/>.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="delay"/> is negative or beyond <see cref="KickOptions.MaxDelay"/>.</exception>
    /// <exception cref="TaskSnoozedException">Always, when the delay is valid: let it propagate to the worker.</exception>
    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    public void Snooze(TimeSpan delay)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(delay, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(delay, KickOptions.MaxDelay);
        throw new TaskSnoozedException(delay);
    }

    /// <summary>
    /// Completes this task inside the handler's own transaction on the task's database, so the handler's writes and the
    /// task's completion (and, when the result backend shares the broker's data source, its result) commit together or
    /// not at all: exactly once for database side effects, even when the worker dies between the commit and its ack.
    /// Call it last, right before committing; what the handler then returns is not stored again.
    /// </summary>
    /// <param name="transaction">The handler's open transaction (its connection must be on the broker's database).</param>
    /// <param name="result">The task's result.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <exception cref="LeaseLostException">The task's lease is no longer this worker's (it was rescued and may run
    /// elsewhere): roll the transaction back.</exception>
    public Task CompleteInTransactionAsync<T>(NpgsqlTransaction transaction, T result, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(transaction);
        return CompleteInTransactionCoreAsync(transaction, JsonSerializer.SerializeToElement(result, SerializerOptions), cancellationToken);
    }

    /// <summary><see cref="CompleteInTransactionAsync{T}"/> for a task whose result holds no value.</summary>
    /// <exception cref="LeaseLostException">The task's lease is no longer this worker's: roll the transaction back.</exception>
    /// <param name="transaction">The handler's open transaction (its connection must be on the broker's database).</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>Completes once the completion is written in the transaction (it takes effect on commit).</returns>
    public Task CompleteInTransactionAsync(NpgsqlTransaction transaction, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(transaction);
        return CompleteInTransactionCoreAsync(transaction, default, cancellationToken);
    }

    /// <summary>Whether <see cref="CompleteInTransactionAsync{T}"/> ran (its transaction may still roll back).</summary>
    internal bool CompletedInTransaction { get; private set; }

    /// <summary>Set by the worker: completes the claim in the given transaction, storing the result there.</summary>
    internal Func<NpgsqlTransaction, JsonElement, CancellationToken, Task<bool>>? Completer { get; init; }

    private async Task CompleteInTransactionCoreAsync(NpgsqlTransaction transaction, JsonElement result, CancellationToken cancellationToken)
    {
        var completer = Completer ?? throw new InvalidOperationException(
            "This task cannot complete in a transaction: it runs without a lease (AckMode.WhenReceived acks it when received).");
        if (!await completer(transaction, result, cancellationToken))
        {
            throw new LeaseLostException(TaskId);
        }

        CompletedInTransaction = true;
    }

    /// <summary>Stores progress readable with <see cref="PostgresResultBackend.GetProgressAsync{T}"/>.</summary>
    /// <exception cref="InvalidOperationException">The worker has no result backend.</exception>
    /// <typeparam name="T">The progress type.</typeparam>
    /// <param name="progress">The progress; it replaces the previous one.</param>
    /// <returns>Completes once the progress is committed.</returns>
    public Task SetProgressAsync<T>(T progress)
        => (_results ?? throw new InvalidOperationException("This worker has no result backend, so progress cannot be stored."))
            .SetProgressAsync(TaskId, progress, SerializerOptions, CancellationToken);
}
