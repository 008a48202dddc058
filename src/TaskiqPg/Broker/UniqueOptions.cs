using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace TaskiqPg;

/// <summary>
/// Makes a kick unique: while a task with the same key has not finished (or is in one of <see cref="AlsoFinished"/>), kicking another returns that
/// task instead of queueing a second. Enforced by a unique index, so it holds under concurrent kicks from any number of
/// processes, in <see cref="PostgresBroker.KickManyAsync(IReadOnlyCollection{TaskMessage}, KickOptions?, CancellationToken)"/>
/// and inside callers' transactions.
/// </summary>
public sealed record UniqueOptions
{
    /// <summary>
    /// The uniqueness key. Default (null): the task's arguments (positional and keyword), so the same call counts once.
    /// Keys are scoped to the queue and the task name.
    /// </summary>
    public string? Key { get; init; }

    /// <summary>
    /// One per period: the key also holds the period the kick falls in (on the database clock, periods counted from
    /// 1970-01-01 UTC), so a task kicked again in the next hour is new. Default: no period. Positive when set.
    /// </summary>
    public TimeSpan? Period { get; init; }

    /// <summary>
    /// Finished states in which a task still counts as a duplicate (e.g. <see cref="TaskState.Completed"/>: at most one
    /// successful run per key while the row is retained). A task that has not finished (available, scheduled, retryable,
    /// running) always counts. Default: none.
    /// </summary>
    public IReadOnlyCollection<TaskState>? AlsoFinished { get; init; }

    /// <summary>The states in which a duplicate counts, as the bitmask stored in <c>unique_states</c>.</summary>
    internal int StatesMask()
    {
        var mask = UnfinishedMask;
        foreach (var state in AlsoFinished ?? [])
        {
            if (!TaskStates.IsFinished(state))
            {
                throw new ArgumentException($"{nameof(UniqueOptions)}.{nameof(AlsoFinished)} takes finished states only (completed, cancelled, discarded); {state} always counts.");
            }

            mask |= Bit(state);
        }

        return mask;
    }

    /// <summary>The stored key: a SHA-256 of queue, task name and key (or arguments); the period is added in SQL.</summary>
    internal string KeyOf(string queue, TaskMessage message)
    {
        var text = new StringBuilder().Append(queue).Append('\n').Append(message.TaskName).Append('\n');
        if (Key is not null)
        {
            text.Append("k\n").Append(Key);
        }
        else
        {
            text.Append("a\n").Append(JsonSerializer.Serialize(message.Args, UniqueJsonContext.Default.ListJsonElement)).Append('\n');
            foreach (var (name, value) in message.Kwargs.OrderBy(k => k.Key, StringComparer.Ordinal))
            {
                text.Append(JsonSerializer.Serialize(name, UniqueJsonContext.Default.String)).Append(':')
                    .Append(JsonSerializer.Serialize(value, UniqueJsonContext.Default.JsonElement)).Append(',');
            }
        }

        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())));
    }

    internal void Validate()
    {
        if (Period is { } period && period <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(Period), period, $"{nameof(UniqueOptions)}.{nameof(Period)} must be positive.");
        }

        _ = StatesMask();
    }

    internal static int Bit(TaskState state) => 1 << (int)state;

    internal const int UnfinishedMask = 1 << (int)TaskState.Available | 1 << (int)TaskState.Scheduled | 1 << (int)TaskState.Retryable | 1 << (int)TaskState.Running;

    /// <summary>SQL: the bit of a row's state (<paramref name="status"/> a column), immutable so it may sit in an index predicate.</summary>
    internal static string StateBitSql(string status)
        => "(CASE " + status + string.Concat(TaskStates.All.Select(s => $" WHEN '{TaskStates.ToStored(s)}' THEN {Bit(s)}")) + " ELSE 0 END)";
}

[System.Text.Json.Serialization.JsonSerializable(typeof(List<JsonElement>))]
[System.Text.Json.Serialization.JsonSerializable(typeof(JsonElement))]
[System.Text.Json.Serialization.JsonSerializable(typeof(string))]
internal sealed partial class UniqueJsonContext : System.Text.Json.Serialization.JsonSerializerContext;

/// <summary>What a kick did.</summary>
/// <param name="Id">The row id of the task (the existing one for a duplicate).</param>
/// <param name="TaskId">The task id (the existing task's for a duplicate).</param>
/// <param name="Duplicate">True when a unique kick found a task with the same key and queued nothing.</param>
public sealed record KickResult(long Id, string TaskId, bool Duplicate);
