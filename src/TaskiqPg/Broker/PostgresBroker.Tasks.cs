using System.Text;
using System.Text.Json;
using Npgsql;
using NpgsqlTypes;

namespace TaskiqPg;

/// <summary>
/// Reading and operating tasks and queues: a task's record, keyset listing, counts and statistics, pruning, cancel
/// (one or many), pause and resume, retry and delete dead letters, run now, and the live workers.
/// </summary>
public sealed partial class PostgresBroker
{
    /// <summary>
    /// The newest row of <paramref name="taskId"/>: its state, attempts, message, worker and last error. Null when there is
    /// no row (never kicked, or pruned after its retention; with <see cref="PostgresBrokerOptions.CompletedRetention"/>
    /// zero a completed task's row is deleted at once).
    /// </summary>
    /// <param name="taskId">The task id the kick returned.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The task's newest row, or null.</returns>
    public async Task<TaskRecord?> GetTaskAsync(string taskId, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(taskId);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.State);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken) ? ReadRecord(reader) : null;
    }

    /// <summary>Reads the columns of <see cref="BrokerSql.RecordColumns"/>.</summary>
    internal static TaskRecord ReadRecord(NpgsqlDataReader reader) => new()
    {
        Id = reader.GetInt64(0),
        TaskId = reader.GetString(1),
        TaskName = reader.GetString(2),
        Queue = reader.GetString(3),
        State = TaskStates.FromStored(reader.GetString(4)),
        Priority = reader.GetInt32(5),
        Attempts = reader.GetInt32(6),
        MaxAttempts = reader.GetInt32(7),
        RunAt = reader.GetFieldValue<DateTimeOffset>(8),
        CreatedAt = reader.GetFieldValue<DateTimeOffset>(9),
        FinishedAt = reader.IsDBNull(10) ? null : reader.GetFieldValue<DateTimeOffset>(10),
        LastError = reader.IsDBNull(11) ? null : reader.GetString(11),
        Worker = reader.IsDBNull(12) ? null : reader.GetString(12),
        MessageJson = reader.GetString(13),
        Labels = ReadLabels(reader.GetString(14)),
        History = ReadHistory(reader.GetString(15)),
    };

    private static List<TaskAttempt> ReadHistory(string json)
    {
        var history = new List<TaskAttempt>();
        using var document = JsonDocument.Parse(json);
        foreach (var entry in document.RootElement.EnumerateArray())
        {
            history.Add(new TaskAttempt(
                entry.TryGetProperty("attempt", out var a) ? a.GetInt32() : 0,
                entry.TryGetProperty("worker", out var w) ? w.GetString() : null,
                entry.TryGetProperty("started", out var s) ? s.GetDateTimeOffset() : null,
                entry.GetProperty("ended").GetDateTimeOffset(),
                entry.GetProperty("outcome").GetString()!,
                entry.TryGetProperty("error", out var e) ? e.GetString() : null));
        }

        return history;
    }

    /// <summary>Labels as stored (other producers may store numbers or booleans: given as their JSON text).</summary>
    private static Dictionary<string, string> ReadLabels(string json)
    {
        var labels = new Dictionary<string, string>();
        using var document = JsonDocument.Parse(json);
        if (document.RootElement.ValueKind == JsonValueKind.Object)
        {
            foreach (var property in document.RootElement.EnumerateObject())
            {
                labels[property.Name] = property.Value.ValueKind == JsonValueKind.String ? property.Value.GetString()! : property.Value.GetRawText();
            }
        }

        return labels;
    }

    /// <summary>
    /// Lists the tasks of one queue in one state, a page at a time (see <see cref="TaskQuery"/>): on the state's partial
    /// index, in its order, from a keyset cursor, so every page is cheap on a table of any size. A task-name filter
    /// reads at most <see cref="TaskQuery.MaxScan"/> index entries per page and may return a short page with a cursor.
    /// </summary>
    /// <exception cref="ArgumentException">A limit outside 1 to <see cref="TaskQuery.MaxLimit"/>, an invalid queue name, or a
    /// cursor that is not one this method returned.</exception>
    /// <param name="query">Queue, state, optional task-name filter, page size and cursor.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>One page of tasks and the cursor of the next page (null on the last one).</returns>
    public async Task<TaskPage> ListTasksAsync(TaskQuery query, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(query);
        if (query.Limit is < 1 or > TaskQuery.MaxLimit)
        {
            throw new ArgumentException($"{nameof(TaskQuery)}.{nameof(TaskQuery.Limit)} must be 1 to {TaskQuery.MaxLimit}.", nameof(query));
        }

        var queue = QueueOf(query.Queue);
        var cursor = query.Cursor is null ? ((int, DateTimeOffset?, long)?)null : DecodeCursor(query.Cursor);
        await StartAsync(cancellationToken);
        var scanLimit = query.TaskName is null ? query.Limit + 1 : Math.Max(TaskQuery.MaxScan, query.Limit + 1);
        var scanned = new List<(long Id, int Priority, DateTimeOffset? At, bool Matches)>();
        await using (var command = DataSource.CreateCommand(_list.Scan(query.State, query.Order, cursor is not null)))
        {
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
            command.Parameters.Add(NullableText(query.TaskName));
            command.Parameters.Add(new NpgsqlParameter { Value = (object?)query.From?.ToUniversalTime() ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.TimestampTz });
            command.Parameters.Add(new NpgsqlParameter { Value = (object?)query.To?.ToUniversalTime() ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.TimestampTz });
            command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = scanLimit });
            if (cursor is { } c)
            {
                command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = c.Item1 });
                command.Parameters.Add(new NpgsqlParameter { Value = (object?)c.Item2 ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.TimestampTz });
                command.Parameters.Add(new NpgsqlParameter<long> { TypedValue = c.Item3 });
            }

            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            while (await reader.ReadAsync(cancellationToken))
            {
                scanned.Add((reader.GetInt64(0), reader.GetInt32(1), reader.IsDBNull(2) ? null : reader.GetFieldValue<DateTimeOffset>(2), reader.GetBoolean(3)));
            }
        }

        var hits = new List<(long Id, int Priority, DateTimeOffset? At, bool Matches)>();
        var last = -1;
        for (var i = 0; i < scanned.Count && hits.Count < query.Limit; i++)
        {
            last = i;
            if (scanned[i].Matches)
            {
                hits.Add(scanned[i]);
            }
        }

        // More may follow when rows were scanned past the last one looked at, or the scan stopped at its bound.
        var more = last < scanned.Count - 1 || scanned.Count == scanLimit;
        var next = more && last >= 0 ? EncodeCursor(scanned[last].Priority, scanned[last].At, scanned[last].Id) : null;
        var records = new Dictionary<long, TaskRecord>();
        if (hits.Count > 0)
        {
            await using var command = DataSource.CreateCommand(_list.Records);
            command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = hits.Select(h => h.Id).ToArray() });
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            while (await reader.ReadAsync(cancellationToken))
            {
                var record = ReadRecord(reader);
                records[record.Id] = record;
            }
        }

        // A row that changed state between the two reads is left out of this page (the cursor already passed it).
        return new TaskPage(hits.Where(h => records.TryGetValue(h.Id, out var r) && r.State == query.State).Select(h => records[h.Id]).ToArray(), next);
    }

    private static string EncodeCursor(int priority, DateTimeOffset? at, long id)
        => Convert.ToBase64String(Encoding.UTF8.GetBytes(string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"1|{priority}|{(at is { } t ? t.UtcTicks.ToString(System.Globalization.CultureInfo.InvariantCulture) : "")}|{id}")));

    private static (int, DateTimeOffset?, long) DecodeCursor(string cursor)
    {
        try
        {
            var parts = Encoding.UTF8.GetString(Convert.FromBase64String(cursor)).Split('|');
            if (parts is ["1", var p, var t, var i])
            {
                var inv = System.Globalization.CultureInfo.InvariantCulture;
                return (int.Parse(p, inv), t.Length == 0 ? null : new DateTimeOffset(long.Parse(t, inv), TimeSpan.Zero), long.Parse(i, inv));
            }
        }
        catch (Exception ex) when (ex is FormatException or OverflowException or ArgumentException)
        {
        }

        throw new ArgumentException("The cursor is not one ListTasksAsync returned.", nameof(cursor));
    }

    /// <summary>Number of tasks of this broker's queue in each state, counted exactly (reads every row counted).</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>Each state that has tasks, with its count; states with none are absent.</returns>
    public async Task<IReadOnlyDictionary<TaskState, long>> GetQueueCountsAsync(CancellationToken cancellationToken = default)
        => (await CountAsync(Options.Queue, limit: null, cancellationToken)).ToDictionary(kv => kv.Key, kv => kv.Value.Count);

    /// <summary>Counts past this many rows per state are the planner's estimate (the worker's depth gauge uses the same bound).</summary>
    public const int StatisticsExactUpTo = 10_000;

    /// <summary>
    /// A queue's statistics: tasks per state (exact up to <see cref="StatisticsExactUpTo"/>, estimated beyond), the age of
    /// its oldest available task, and whether it is paused. Every part reads a partial index with a bounded scan, so it
    /// is cheap enough to poll every few seconds on a table of any size (the worker's depth gauge reads the same counts).
    /// </summary>
    /// <param name="queue">The queue; default: this broker's.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The queue's counts per state, the age of its oldest available task and its pause time.</returns>
    /// <exception cref="ArgumentException"><paramref name="queue"/> is not a valid queue name.</exception>
    public async Task<QueueStatistics> GetQueueStatisticsAsync(string? queue = null, CancellationToken cancellationToken = default)
    {
        var name = QueueOf(queue);
        await StartAsync(cancellationToken);
        var counts = await CountAsync(name, StatisticsExactUpTo, cancellationToken);
        var depth = new Dictionary<TaskState, long>();
        var estimated = new HashSet<TaskState>();
        foreach (var (state, (count, capped)) in counts)
        {
            depth[state] = capped ? Math.Max(count, await EstimateAsync(name, TaskStates.ToStored(state), cancellationToken)) : count;
            if (capped)
            {
                estimated.Add(state);
            }
        }

        await using var oldest = DataSource.CreateCommand(_sql.OldestAvailable);
        oldest.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
        var age = await oldest.ExecuteScalarAsync(cancellationToken) is TimeSpan a ? a : (TimeSpan?)null;
        var finished = new Dictionary<TaskState, long>();
        await using (var recent = DataSource.CreateCommand(_sql.FinishedLastMinute))
        {
            recent.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
            recent.Parameters.Add(new NpgsqlParameter<int> { TypedValue = StatisticsExactUpTo });
            await using var reader = await recent.ExecuteReaderAsync(cancellationToken);
            while (await reader.ReadAsync(cancellationToken))
            {
                finished[TaskStates.FromStored(reader.GetString(0))] = reader.GetInt64(1);
            }
        }

        return new QueueStatistics(name, depth, estimated, age, await GetQueuePausedAtAsync(name, cancellationToken)) { FinishedLastMinute = finished };
    }

    /// <summary>
    /// The queue's depth by state, cheap at any table size: each state is counted exactly up to
    /// <paramref name="exactUpTo"/> rows (a bounded index scan); past that the planner's estimate is given instead.
    /// </summary>
    internal async Task<IReadOnlyDictionary<TaskState, long>> GetQueueDepthAsync(string queue, int exactUpTo, CancellationToken cancellationToken)
    {
        var counts = await CountAsync(queue, exactUpTo, cancellationToken);
        var depth = new Dictionary<TaskState, long>();
        foreach (var (state, (count, capped)) in counts)
        {
            depth[state] = capped ? Math.Max(count, await EstimateAsync(queue, TaskStates.ToStored(state), cancellationToken)) : count;
        }

        return depth;
    }

    /// <summary>
    /// Deletes finished rows of this broker's queue older than their retention (<see cref="PostgresBrokerOptions.CompletedRetention"/>,
    /// <see cref="PostgresBrokerOptions.CancelledRetention"/>, <see cref="PostgresBrokerOptions.DiscardedRetention"/>), at
    /// most <paramref name="maxCount"/> per state, oldest first. Workers call it periodically.
    /// </summary>
    /// <returns>Rows deleted.</returns>
    /// <param name="maxCount">Most rows deleted per state in this call.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    public Task<long> PruneFinishedAsync(int maxCount = 1000, CancellationToken cancellationToken = default)
        => PruneFinishedAsync(Options.Queue, maxCount, cancellationToken);

    /// <summary><see cref="PruneFinishedAsync(int, CancellationToken)"/> for another queue of this table.</summary>
    internal async Task<long> PruneFinishedAsync(string queue, int maxCount, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxCount, 1);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Prune);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
        command.Parameters.Add(RetentionParameter(Options.CompletedRetention));
        command.Parameters.Add(RetentionParameter(Options.CancelledRetention));
        command.Parameters.Add(RetentionParameter(Options.DiscardedRetention));
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = maxCount });
        return (long)(await command.ExecuteScalarAsync(cancellationToken))!;

        static NpgsqlParameter RetentionParameter(TimeSpan retention)
            => new() { Value = retention == Timeout.InfiniteTimeSpan ? DBNull.Value : retention, NpgsqlDbType = NpgsqlDbType.Interval };
    }

    private async Task<Dictionary<TaskState, (long Count, bool Capped)>> CountAsync(string queue, int? limit, CancellationToken cancellationToken)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Counts);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
        command.Parameters.Add(new NpgsqlParameter { Value = (object?)limit ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.Bigint });
        var counts = new Dictionary<TaskState, (long, bool)>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            var count = reader.GetInt64(1);
            counts[TaskStates.FromStored(reader.GetString(0))] = (count, limit is { } l && count >= l);
        }

        return counts;
    }

    private async Task<long> EstimateAsync(string queue, string status, CancellationToken cancellationToken)
    {
        await using var command = DataSource.CreateCommand(_sql.EstimateCount);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = status });
        var plan = (string)(await command.ExecuteScalarAsync(cancellationToken))!;
        using var json = JsonDocument.Parse(plan);
        return (long)json.RootElement[0].GetProperty("Plan").GetProperty("Plan Rows").GetDouble();
    }

    /// <summary>The reason stored with a task cancelled by <see cref="CancelAsync"/> or <see cref="CancelManyAsync(TaskFilter?, CancellationToken)"/>.</summary>
    public const string CancelledReason = "Cancelled by request.";

    /// <summary>
    /// Cancels a task by id (its newest row). A queued task (available, scheduled, retryable) is cancelled at once. A running
    /// task's handler gets its <see cref="CancellationToken"/> cancelled on whichever worker runs it (a NOTIFY, with
    /// that worker's next lease renewal as the fallback), and the task then ends <see cref="TaskState.Cancelled"/>. A
    /// finished task is left as it is (<see cref="CancelOutcome.AlreadyFinished"/>).
    /// </summary>
    /// <remarks>Waiters of a task cancelled while queued get <see cref="CancelledTaskException"/> when the cancel goes
    /// through <see cref="TaskiqClient.CancelAsync"/>, which also stores the cancelled result.</remarks>
    /// <param name="taskId">The task id the kick returned.</param>
    /// <param name="cancellationToken">Cancels the call (not the task).</param>
    /// <returns>What happened: cancelled, cancel requested from a running task's worker, already finished, or not found.</returns>
    public async Task<CancelResult> CancelAsync(string taskId, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(taskId);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Cancel);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = CancelledTaskException.ErrorType + ": " + CancelledReason });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        if (!await reader.ReadAsync(cancellationToken))
        {
            return new CancelResult(CancelOutcome.NotFound, null);
        }

        var state = TaskStates.FromStored(reader.GetString(0));
        return new CancelResult(state switch
        {
            TaskState.Running => CancelOutcome.Requested,
            _ when TaskStates.IsFinished(state) => CancelOutcome.AlreadyFinished,
            _ => CancelOutcome.Cancelled,
        }, state);
    }

    /// <summary>Rows changed per statement by the bulk operations (each batch is its own short transaction).</summary>
    internal const int BulkBatchSize = 5_000;

    /// <summary>
    /// Cancels every task of a queue that matches <paramref name="filter"/>: queued ones at once, running ones by a cancel
    /// request to their workers (see <see cref="CancelAsync"/>). Works in batches of 5,000 rows, so a large queue is never
    /// locked whole.
    /// </summary>
    /// <exception cref="ArgumentException">The filter names a finished state (cancel applies to unfinished tasks only).</exception>
    /// <param name="filter">Queue (default: this broker's), task name and state to match; null matches every unfinished task of the queue.</param>
    /// <param name="cancellationToken">Cancels the call; batches already committed stay cancelled.</param>
    /// <returns>How many queued tasks were cancelled and how many running tasks were asked to stop.</returns>
    public Task<BulkCancelResult> CancelManyAsync(TaskFilter? filter = null, CancellationToken cancellationToken = default)
        => CancelManyAsync(filter, onCancelled: null, cancellationToken);

    /// <summary><see cref="CancelManyAsync(TaskFilter?, CancellationToken)"/>, handing each batch's cancelled task ids to <paramref name="onCancelled"/>.</summary>
    internal async Task<BulkCancelResult> CancelManyAsync(TaskFilter? filter, Func<IReadOnlyList<string>, CancellationToken, Task>? onCancelled,
        CancellationToken cancellationToken)
    {
        var queue = QueueOf(filter);
        var states = filter?.States ?? [TaskState.Available, TaskState.Scheduled, TaskState.Retryable, TaskState.Running];
        if (states.FirstOrDefault(TaskStates.IsFinished) is var finished && TaskStates.IsFinished(finished) && states.Contains(finished))
        {
            throw new ArgumentException($"A {finished} task cannot be cancelled; filter on unfinished states only.", nameof(filter));
        }

        await StartAsync(cancellationToken);
        long cancelled = 0, requested = 0;
        if (states.Contains(TaskState.Running))
        {
            await using var command = DataSource.CreateCommand(_sql.CancelRunning);
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
            command.Parameters.Add(NullableText(filter?.TaskName));
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
            requested = (long)(await command.ExecuteScalarAsync(cancellationToken))!;
        }

        foreach (var state in states.Where(s => s != TaskState.Running).Distinct())
        {
            while (true)
            {
                await using var command = DataSource.CreateCommand(_sql.CancelQueued[TaskStates.ToStored(state)]);
                command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
                command.Parameters.Add(NullableText(filter?.TaskName));
                command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = CancelledTaskException.ErrorType + ": " + CancelledReason });
                command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = BulkBatchSize });
                var ids = new List<string>();
                await using (var reader = await command.ExecuteReaderAsync(cancellationToken))
                {
                    while (await reader.ReadAsync(cancellationToken))
                    {
                        ids.Add(reader.GetString(0));
                    }
                }

                cancelled += ids.Count;
                if (onCancelled is not null && ids.Count > 0)
                {
                    await onCancelled(ids, cancellationToken);
                }

                if (ids.Count < BulkBatchSize)
                {
                    break;
                }
            }
        }

        return new BulkCancelResult(cancelled, requested);
    }

    /// <summary>
    /// Pauses a queue for every worker of every process: no worker claims from it (checked by each claim, so within
    /// one claim of each worker), kicks are still accepted, and it stays paused across restarts until
    /// <see cref="ResumeQueueAsync"/>. Tasks already running finish.
    /// </summary>
    /// <param name="queue">The queue; default: this broker's.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    public Task PauseQueueAsync(string? queue = null, CancellationToken cancellationToken = default)
        => SetPausedAsync(queue, paused: true, cancellationToken);

    /// <summary>Resumes a paused queue and wakes its workers. Resuming a queue that is not paused does nothing.</summary>
    /// <param name="queue">The queue; default: this broker's.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    public Task ResumeQueueAsync(string? queue = null, CancellationToken cancellationToken = default)
        => SetPausedAsync(queue, paused: false, cancellationToken);

    /// <summary>When the queue was paused; null while it is not paused.</summary>
    /// <param name="queue">The queue; default: this broker's.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The pause time, or null.</returns>
    /// <exception cref="ArgumentException"><paramref name="queue"/> is not a valid queue name.</exception>
    public async Task<DateTimeOffset?> GetQueuePausedAtAsync(string? queue = null, CancellationToken cancellationToken = default)
    {
        var name = QueueOf(queue);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Paused);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
        return await command.ExecuteScalarAsync(cancellationToken) is DateTime at ? new DateTimeOffset(at, TimeSpan.Zero) : null;
    }

    private async Task SetPausedAsync(string? queue, bool paused, CancellationToken cancellationToken)
    {
        var name = QueueOf(queue);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.SetPaused);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
        command.Parameters.Add(new NpgsqlParameter<bool> { TypedValue = paused });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    /// <summary>
    /// Puts a discarded (dead-lettered) task back in its queue, available at once. With <paramref name="resetAttempts"/>
    /// (default) it gets its full <c>max_attempts</c> again; otherwise its attempts are kept and it gets one more.
    /// Its last error stays readable until it runs again.
    /// </summary>
    /// <returns>True when the task was discarded and is available again; false when it was not discarded (or not found).</returns>
    /// <param name="taskId">The task id the kick returned.</param>
    /// <param name="resetAttempts">True to give the task its full attempts again; false to keep its count and allow one more.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    public async Task<bool> RetryDiscardedAsync(string taskId, bool resetAttempts = true, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(taskId);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.RetryOne);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
        command.Parameters.Add(new NpgsqlParameter<bool> { TypedValue = resetAttempts });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        return (long)(await command.ExecuteScalarAsync(cancellationToken))! > 0;
    }

    /// <summary>
    /// The queues of this broker's table: those holding tasks that are available, scheduled, retryable or finished, those
    /// paused at some time, and those of registered workers (running tasks), in name order. One index probe per queue,
    /// so it stays cheap on a table of millions of rows.
    /// </summary>
    /// <param name="maxCount">Most queue names returned (1 to 10,000).</param>
    /// <param name="cancellationToken">Cancels the statement.</param>
    /// <returns>Queue names, ordered.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxCount"/> is out of range.</exception>
    public async Task<IReadOnlyList<string>> ListQueuesAsync(int maxCount = 1000, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxCount, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(maxCount, 10_000);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.ListQueues);
        command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = maxCount });
        var names = new List<string>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            names.Add(reader.GetString(0));
        }

        return names;
    }

    /// <summary>
    /// Makes a <see cref="TaskState.Scheduled"/> or <see cref="TaskState.Retryable"/> task available at once (its delay or
    /// backoff skipped; no attempt is used) and wakes the queue's workers.
    /// </summary>
    /// <param name="taskId">The task's id.</param>
    /// <param name="cancellationToken">Cancels the statement.</param>
    /// <returns>True when the task was waiting and is available now; false when it was in another state or not found.</returns>
    /// <exception cref="ArgumentException"><paramref name="taskId"/> is null or empty.</exception>
    public async Task<bool> RunNowAsync(string taskId, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(taskId);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.RunNow);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
        return (long)(await command.ExecuteScalarAsync(cancellationToken))! > 0;
    }

    /// <summary>
    /// Deletes a finished task's row (completed, cancelled or discarded) before its retention ends. Unfinished tasks are
    /// left alone: cancel them first (<see cref="CancelAsync"/>), so that nothing waiting for them is left hanging. The
    /// stored result, if any, stays in the result backend until it expires.
    /// </summary>
    /// <param name="taskId">The task's id.</param>
    /// <param name="cancellationToken">Cancels the statement.</param>
    /// <returns>True when a finished row was deleted; false when the task is unfinished or not found.</returns>
    /// <exception cref="ArgumentException"><paramref name="taskId"/> is null or empty.</exception>
    public async Task<bool> DeleteFinishedTaskAsync(string taskId, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(taskId);
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.DeleteFinished);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = taskId });
        return await command.ExecuteNonQueryAsync(cancellationToken) > 0;
    }

    /// <summary>
    /// Puts every discarded task of a queue that matches <paramref name="filter"/> (queue, task name) back, available at
    /// once, in batches of 5,000, oldest dead letters first. See <see cref="RetryDiscardedAsync(string, bool, CancellationToken)"/>.
    /// </summary>
    /// <returns>How many tasks are available again.</returns>
    /// <param name="filter">Queue (default: this broker's) and task name to match; null matches every discarded task of the queue.</param>
    /// <param name="resetAttempts">True to give each task its full attempts again; false to keep its count and allow one more.</param>
    /// <param name="cancellationToken">Cancels the call; batches already committed stay available.</param>
    /// <exception cref="ArgumentException">The filter names an invalid queue (its states are not used here).</exception>
    public async Task<long> RetryDiscardedAsync(TaskFilter? filter, bool resetAttempts = true, CancellationToken cancellationToken = default)
    {
        var queue = QueueOf(filter);
        await StartAsync(cancellationToken);
        var total = await InBatchesAsync(_sql.RetryDiscarded, p =>
        {
            p.Add(new NpgsqlParameter<string> { TypedValue = queue });
            p.Add(NullableText(filter?.TaskName));
            p.Add(new NpgsqlParameter<bool> { TypedValue = resetAttempts });
            p.Add(new NpgsqlParameter<int> { TypedValue = BulkBatchSize });
        }, cancellationToken);

        if (total > 0)
        {
            await NotifyAsync(queue, cancellationToken);
        }

        return total;
    }

    /// <summary>Deletes every discarded task of a queue that matches <paramref name="filter"/> (queue, task name), in batches of 5,000.</summary>
    /// <returns>How many rows were deleted.</returns>
    /// <param name="filter">Queue (default: this broker's) and task name to match; null matches every discarded task of the queue.</param>
    /// <param name="cancellationToken">Cancels the call; batches already committed stay deleted.</param>
    /// <exception cref="ArgumentException">The filter names an invalid queue (its states are not used here).</exception>
    public async Task<long> DeleteDiscardedAsync(TaskFilter? filter = null, CancellationToken cancellationToken = default)
    {
        var queue = QueueOf(filter);
        await StartAsync(cancellationToken);
        return await InBatchesAsync(_sql.DeleteDiscarded, p =>
        {
            p.Add(new NpgsqlParameter<string> { TypedValue = queue });
            p.Add(NullableText(filter?.TaskName));
            p.Add(new NpgsqlParameter<int> { TypedValue = BulkBatchSize });
        }, cancellationToken);
    }

    /// <summary>Runs a bulk statement of <see cref="BulkBatchSize"/> rows until a batch comes back short.</summary>
    /// <returns>Rows changed in all.</returns>
    private async Task<long> InBatchesAsync(string sql, Action<NpgsqlParameterCollection> parameters, CancellationToken cancellationToken)
    {
        long total = 0;
        int batch;
        do
        {
            await using var command = DataSource.CreateCommand(sql);
            parameters(command.Parameters);
            batch = await command.ExecuteNonQueryAsync(cancellationToken);
            total += batch;
        }
        while (batch == BulkBatchSize);

        return total;
    }

    /// <summary>The workers registered in the workers table, live or stale. Each worker registers its own
    /// <see cref="PostgresBrokerOptions.WorkerStaleAfter"/>: it is stale (taken for dead) once silent for longer, and its
    /// entry is deleted after ten times that (a day without a bound); a stopped worker deregisters itself.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>Every registered worker: its queues, host, process, start, last heartbeat, tasks in flight and whether it is stale.</returns>
    public async Task<IReadOnlyList<WorkerInfo>> GetWorkersAsync(CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var command = DataSource.CreateCommand(_sql.Workers);
        var workers = new List<WorkerInfo>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            workers.Add(new WorkerInfo(reader.GetString(0), reader.GetString(1), reader.GetInt32(2), reader.GetFieldValue<string[]>(3),
                reader.GetFieldValue<DateTimeOffset>(4), reader.GetFieldValue<DateTimeOffset>(5), reader.GetInt32(6), reader.GetInt32(7), reader.GetBoolean(8)));
        }

        return workers;
    }
}
