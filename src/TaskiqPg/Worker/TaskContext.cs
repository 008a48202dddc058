using System.Text.Json;

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
    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    public void Snooze(TimeSpan delay)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(delay, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(delay, KickOptions.MaxDelay);
        throw new TaskSnoozedException(delay);
    }

    /// <summary>Stores progress readable with <see cref="PostgresResultBackend.GetProgressAsync{T}"/>.</summary>
    /// <exception cref="InvalidOperationException">The worker has no result backend.</exception>
    public Task SetProgressAsync<T>(T progress)
        => (_results ?? throw new InvalidOperationException("This worker has no result backend, so progress cannot be stored."))
            .SetProgressAsync(TaskId, progress, SerializerOptions, CancellationToken);
}
