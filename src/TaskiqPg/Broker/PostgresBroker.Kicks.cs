using System.Text;
using System.Text.Json;
using Npgsql;
using NpgsqlTypes;
using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// Kicking: one task (prepared insert, its wake-up NOTIFY in the same round trip or coalesced after it), many by binary
/// COPY (or one unique-skipping insert), and either inside the caller's connection and transaction.
/// </summary>
public sealed partial class PostgresBroker
{
    /// <summary>
    /// Kicks one task. It is committed when this returns, and so is its wake-up NOTIFY when none of this broker's for
    /// the queue was on its way (it rides in the kick's round trip); otherwise one NOTIFY covers the burst right after
    /// (in the background; awaited by <see cref="DisposeAsync"/>; workers also poll).
    /// </summary>
    /// <returns>The row id and task id; for a unique kick that found its duplicate, the existing task's, with
    /// <see cref="KickResult.Duplicate"/> set.</returns>
    /// <param name="message">The task: name, id, arguments and labels.</param>
    /// <param name="options">Queue, delay or time, priority, attempts, uniqueness and labels; null for the defaults.</param>
    /// <param name="cancellationToken">Cancels the call before the commit; after it the task is kicked.</param>
    /// <exception cref="InvalidTaskMessageException">The message cannot be stored (empty name, NUL characters, non-UTC time, invalid label).</exception>
    /// <exception cref="MessageTooLargeException">The serialized message exceeds <see cref="PostgresBrokerOptions.MaxMessageBytes"/>.</exception>
    /// <exception cref="ArgumentException">An option is invalid (queue name, attempts below one, delay or timeout out of range).</exception>
    public async Task<KickResult> KickAsync(TaskMessage message, KickOptions? options = null, CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        await using var connection = await DataSource.OpenConnectionAsync(cancellationToken);
        return await KickCoreAsync(connection, null, message, options, pooledConnection: true, cancellationToken);
    }

    /// <summary>
    /// Kicks one task inside the caller's connection and transaction: it becomes visible (and workers are notified)
    /// only when the caller commits, and vanishes on rollback. The connection is never closed here.
    /// </summary>
    /// <returns>See <see cref="KickAsync(TaskMessage, KickOptions?, CancellationToken)"/>.</returns>
    /// <param name="message">The task: name, id, arguments and labels.</param>
    /// <param name="connection">The caller's open connection; never closed here.</param>
    /// <param name="transaction">The caller's transaction, or null to commit at once (autocommit).</param>
    /// <param name="options">Queue, delay or time, priority, attempts, uniqueness and labels; null for the defaults.</param>
    /// <param name="cancellationToken">Cancels the statement.</param>
    /// <exception cref="InvalidTaskMessageException">The message cannot be stored (empty name, NUL characters, non-UTC time, invalid label).</exception>
    /// <exception cref="MessageTooLargeException">The serialized message exceeds <see cref="PostgresBrokerOptions.MaxMessageBytes"/>.</exception>
    public async Task<KickResult> KickAsync(TaskMessage message, NpgsqlConnection connection, NpgsqlTransaction? transaction,
        KickOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        await StartAsync(cancellationToken);
        return await KickCoreAsync(connection, transaction, message, options, pooledConnection: false, cancellationToken);
    }

    /// <summary>
    /// Kicks many tasks in one transaction: one binary COPY and one notification. All are inserted or none. With
    /// <see cref="KickOptions.Unique"/>, one INSERT that skips every duplicate (of a queued task, or within the list).
    /// </summary>
    /// <returns>The number of tasks inserted (duplicates not counted).</returns>
    /// <param name="messages">The tasks; an empty list inserts nothing.</param>
    /// <param name="options">Options applied to every task; null for the defaults.</param>
    /// <param name="cancellationToken">Cancels the call before the commit (then nothing is inserted).</param>
    /// <exception cref="InvalidTaskMessageException">A message cannot be stored; nothing is inserted.</exception>
    /// <exception cref="MessageTooLargeException">A message exceeds <see cref="PostgresBrokerOptions.MaxMessageBytes"/>; nothing is inserted.</exception>
    public async Task<int> KickManyAsync(IReadOnlyCollection<TaskMessage> messages, KickOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        await StartAsync(cancellationToken);
        return await KickManyCoreAsync(messages, callerConnection: null, transaction: null, options, cancellationToken);
    }

    /// <summary>
    /// Kicks many tasks inside the caller's connection and transaction (visible on commit, gone on rollback). With no
    /// transaction given, the tasks get one of their own on that connection (all or none).
    /// </summary>
    /// <param name="messages">The tasks; an empty list inserts nothing.</param>
    /// <param name="connection">The caller's open connection; never closed here.</param>
    /// <param name="transaction">The caller's transaction, or null for one of their own on that connection.</param>
    /// <param name="options">Options applied to every task; null for the defaults.</param>
    /// <param name="cancellationToken">Cancels the statement.</param>
    /// <returns>The number of tasks inserted (duplicates not counted).</returns>
    /// <exception cref="InvalidTaskMessageException">A message cannot be stored; nothing is inserted.</exception>
    /// <exception cref="MessageTooLargeException">A message exceeds <see cref="PostgresBrokerOptions.MaxMessageBytes"/>; nothing is inserted.</exception>
    public async Task<int> KickManyAsync(IReadOnlyCollection<TaskMessage> messages, NpgsqlConnection connection,
        NpgsqlTransaction? transaction, KickOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        await StartAsync(cancellationToken);
        return await KickManyCoreAsync(messages, connection, transaction, options, cancellationToken);
    }

    /// <summary>Attempts of a unique kick whose duplicate finished between its insert and its look-up.</summary>
    private const int UniqueKickAttempts = 5;

    private async Task<KickResult> KickCoreAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, TaskMessage message,
        KickOptions? options, bool pooledConnection, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(message);
        var writesLabels = WritesLabels(options);
        var outgoing = PrepareCopy(message, options, writesLabels);
        var runAt = RunAtOf(options);
        var queue = options?.Queue ?? Options.Queue;
        using var activity = MessagingTags.StartSend(queue, [outgoing], injectTraceContext: writesLabels);
        try
        {
            var (json, labels) = Serialize(outgoing);
            message = outgoing;
            var unique = options?.Unique;
            if (unique is null && pooledConnection && !Options.NotifyTaskIds)
            {
                return await KickAndWakeAsync(connection, message, json, labels, queue, runAt, options, cancellationToken);
            }

            for (var attempt = 1; ; attempt++)
            {
                await using var command = new NpgsqlCommand(null, connection, transaction);
                // On a pooled connection of ours: insert only, prepared, and the notifier wakes workers after the commit. In
                // the caller's connection: the NOTIFY rides in the statement, so it is delivered exactly when the caller commits.
                command.CommandText = Options.NotifyTaskIds
                    ? unique is null ? _sql.KickAndNotifyId : _sql.KickUniqueAndNotifyId
                    : unique is null ? _sql.KickAndNotify
                        : pooledConnection ? _sql.KickUnique : _sql.KickUniqueAndNotify;
                AddKickParameters(command.Parameters, message, json, labels, queue, runAt, options);
                string? key = null;
                if (unique is not null)
                {
                    key = unique.KeyOf(queue, message);
                    command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = key });
                    command.Parameters.Add(PeriodParameter(unique));
                    command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = unique.StatesMask() });
                }

                if (!pooledConnection || Options.NotifyTaskIds)
                {
                    command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
                }

                if (pooledConnection && !Options.NotifyTaskIds)
                {
                    await command.PrepareIfSupportedAsync(CanPrepare, cancellationToken);
                }

                if (await command.ExecuteScalarAsync(cancellationToken) is long id)
                {
                    TaskiqDiagnostics.Kicked.Add(1, new KeyValuePair<string, object?>(MessagingTags.Destination, queue));
                    if (pooledConnection && !Options.NotifyTaskIds)
                    {
                        NotifierOf(queue).Signal();
                    }

                    return new KickResult(id, message.TaskId, Duplicate: false);
                }

                // A duplicate: the task that holds the key. It may have finished in between (then the key is free again).
                await using var find = new NpgsqlCommand(_sql.FindUnique, connection, transaction);
                find.Parameters.Add(new NpgsqlParameter<string> { TypedValue = key! });
                find.Parameters.Add(PeriodParameter(unique!));
                await using (var reader = await find.ExecuteReaderAsync(cancellationToken))
                {
                    if (await reader.ReadAsync(cancellationToken))
                    {
                        return new KickResult(reader.GetInt64(0), reader.GetString(1), Duplicate: true);
                    }
                }

                if (attempt == UniqueKickAttempts)
                {
                    throw new InvalidOperationException($"The unique kick of '{message.TaskName}' met a duplicate that was gone at each of {UniqueKickAttempts} look-ups.");
                }
            }
        }
        catch (Exception ex)
        {
            MessagingTags.RecordError(activity, ex.GetType().Name, ex.Message);
            throw;
        }
    }

    /// <summary>
    /// A plain kick on a pooled connection of ours: the insert, prepared, and — when no wake-up of this queue is on its
    /// way — the wake-up NOTIFY in the same round trip, as a transaction of its own after the insert's (an error
    /// barrier, i.e. a Sync, between them: a NOTIFY inside the insert's transaction would serialize concurrent kicks'
    /// commits on PostgreSQL's notify lock). So workers hear of the row without a second connection, round trip or
    /// thread hop. Otherwise the coalescing notifier covers it after the commit. Behind a transaction-mode pooler
    /// (statements unprepared) the two transactions never share a write: the pooler may give them different server
    /// connections.
    /// </summary>
    private async Task<KickResult> KickAndWakeAsync(NpgsqlConnection connection, TaskMessage message, string json, string labels,
        string queue, DateTimeOffset? runAt, KickOptions? options, CancellationToken cancellationToken)
    {
        var notifier = NotifierOf(queue);
        var wakeInline = CanPrepare && notifier.TryClaim();
        try
        {
            await using var batch = new NpgsqlBatch(connection) { EnableErrorBarriers = true };
            var kick = new NpgsqlBatchCommand(_sql.Kick);
            AddKickParameters(kick.Parameters, message, json, labels, queue, runAt, options);
            batch.BatchCommands.Add(kick);
            NpgsqlBatchCommand? notify = null;
            if (wakeInline)
            {
                notify = notifier.CreateCommand();
                batch.BatchCommands.Add(notify);
            }

            await batch.PrepareIfSupportedAsync(CanPrepare, cancellationToken);
            long id;
            PostgresException? afterRow = null;
            await using (var reader = await batch.ExecuteReaderAsync(cancellationToken))
            {
                await reader.ReadAsync(cancellationToken);
                id = reader.GetInt64(0);
                if (notify is not null)
                {
                    try
                    {
                        // The insert has run; its commit and the wake-up follow. Not cancelled from here on.
                        await reader.NextResultAsync(CancellationToken.None);
                    }
                    catch (PostgresException ex)
                    {
                        afterRow = ex;
                    }
                }
            }

            if (afterRow is not null)
            {
                // Npgsql does not say which statement failed (unless the connection string has Include Failed Batched
                // Command): the insert's commit or the wake-up. The row tells. A failed wake-up is a hint lost, not a
                // failed kick: the caller must not kick again.
                if (!await KickedRowExistsAsync(connection, id))
                {
                    throw afterRow;
                }

                Log.NotifyFailed(_logger, Options.Channel, afterRow); // workers poll
            }

            TaskiqDiagnostics.Kicked.Add(1, new KeyValuePair<string, object?>(MessagingTags.Destination, queue));
            if (!wakeInline)
            {
                notifier.Signal();
            }

            return new KickResult(id, message.TaskId, Duplicate: false);
        }
        finally
        {
            if (wakeInline)
            {
                notifier.Release();
            }
        }
    }

    private async Task<bool> KickedRowExistsAsync(NpgsqlConnection connection, long id)
    {
        await using var command = new NpgsqlCommand(_sql.RowExists, connection);
        command.Parameters.Add(new NpgsqlParameter<long> { TypedValue = id });
        return (bool)(await command.ExecuteScalarAsync())!;
    }

    /// <summary>The kick statements' first nine parameters ($1 task id … $9 max attempts).</summary>
    private void AddKickParameters(NpgsqlParameterCollection parameters, TaskMessage message, string json, string labels, string queue,
        DateTimeOffset? runAt, KickOptions? options)
    {
        parameters.Add(new NpgsqlParameter<string> { TypedValue = message.TaskId });
        parameters.Add(new NpgsqlParameter<string> { TypedValue = message.TaskName });
        parameters.Add(new NpgsqlParameter<string> { TypedValue = json });
        parameters.Add(new NpgsqlParameter<string> { TypedValue = labels });
        parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
        parameters.Add(new NpgsqlParameter<int> { TypedValue = options?.Priority ?? 0 });
        parameters.Add(new NpgsqlParameter { Value = (object?)runAt ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.TimestampTz });
        parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = DelayOf(options) });
        parameters.Add(new NpgsqlParameter<int> { TypedValue = MaxAttemptsOf(options) });
    }

    private static NpgsqlParameter PeriodParameter(UniqueOptions unique)
        => new() { Value = unique.Period is { } p ? p.TotalSeconds : DBNull.Value, NpgsqlDbType = NpgsqlDbType.Double };

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, CoalescingNotifier> _otherQueueNotifiers = new();

    /// <summary>The coalescing notifier of a queue this broker kicks to (its own, or one named by <see cref="KickOptions.Queue"/>).</summary>
    private CoalescingNotifier NotifierOf(string? queue)
        => queue is null || queue == Options.Queue ? _notifier
            : _otherQueueNotifiers.GetOrAdd(queue, q => new CoalescingNotifier(DataSource, Options.Channel, q, _logger));

    private TaskMessage[] PrepareCopies(IReadOnlyCollection<TaskMessage> messages, KickOptions? options, bool writesLabels)
    {
        var copies = new TaskMessage[messages.Count];
        var i = 0;
        foreach (var message in messages)
        {
            if (message is null)
            {
                throw new ArgumentException("A message in the list is null.", nameof(messages));
            }

            copies[i++] = PrepareCopy(message, options, writesLabels);
        }

        return copies;
    }

    private async Task<int> KickManyCoreAsync(IReadOnlyCollection<TaskMessage> messages, NpgsqlConnection? callerConnection,
        NpgsqlTransaction? transaction, KickOptions? options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0)
        {
            return 0;
        }

        var writesLabels = WritesLabels(options);
        var copies = PrepareCopies(messages, options, writesLabels);
        var runAt = RunAtOf(options);
        var queue = options?.Queue ?? Options.Queue;
        // The span before serializing: it injects the trace context into the (copied) labels.
        using var activity = MessagingTags.StartSend(queue, copies, injectTraceContext: writesLabels);
        NpgsqlConnection? connection = null;
        NpgsqlTransaction? own = null;
        try
        {
            var rows = copies.Select(c => (Message: c, Serialize(c))).Select(r => (r.Message, r.Item2.Json, r.Item2.Labels)).ToArray(); // before taking a connection
            connection = callerConnection ?? await DataSource.OpenConnectionAsync(cancellationToken);
            own = transaction is null ? await connection.BeginTransactionAsync(cancellationToken) : null;
            var status = TaskStates.Available;
            if (runAt is not null || DelayOf(options) > TimeSpan.Zero)
            {
                // The transaction's now(): run_at = now() + delay as in SQL, and scheduled only when due later than it.
                await using var now = new NpgsqlCommand(BrokerSql.TransactionNow, connection, transaction ?? own);
                var transactionNow = new DateTimeOffset((DateTime)(await now.ExecuteScalarAsync(cancellationToken))!, TimeSpan.Zero);
                runAt ??= transactionNow + DelayOf(options);
                status = runAt > transactionNow ? TaskStates.Scheduled : TaskStates.Available;
            }

            var priority = options?.Priority ?? 0;
            var maxAttempts = MaxAttemptsOf(options);
            int inserted;
            if (options?.Unique is { } unique)
            {
                // COPY cannot skip conflicts: one INSERT ... SELECT FROM unnest ... ON CONFLICT DO NOTHING.
                await using var command = new NpgsqlCommand(_sql.KickManyUnique, connection, transaction ?? own);
                command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = rows.Select(r => r.Message.TaskId).ToArray() });
                command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = rows.Select(r => r.Message.TaskName).ToArray() });
                command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = rows.Select(r => r.Json).ToArray() });
                command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = rows.Select(r => r.Labels).ToArray() });
                command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
                command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = priority });
                command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = maxAttempts });
                command.Parameters.Add(new NpgsqlParameter { Value = (object?)runAt ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.TimestampTz });
                command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = rows.Select(r => unique.KeyOf(queue, r.Message)).ToArray() });
                command.Parameters.Add(PeriodParameter(unique));
                command.Parameters.Add(new NpgsqlParameter<int> { TypedValue = unique.StatesMask() });
                inserted = (int)(long)(await command.ExecuteScalarAsync(cancellationToken))!;
            }
            else
            {
                await using (var importer = await connection.BeginBinaryImportAsync(runAt is null ? _sql.KickManyCopyAtNow : _sql.KickManyCopy, cancellationToken))
                {
                    foreach (var (message, json, labels) in rows)
                    {
                        await importer.StartRowAsync(cancellationToken);
                        await importer.WriteAsync(message.TaskId, NpgsqlDbType.Text, cancellationToken);
                        await importer.WriteAsync(message.TaskName, NpgsqlDbType.Text, cancellationToken);
                        await importer.WriteAsync(json, NpgsqlDbType.Text, cancellationToken);
                        await importer.WriteAsync(labels, NpgsqlDbType.Jsonb, cancellationToken);
                        await importer.WriteAsync(queue, NpgsqlDbType.Text, cancellationToken);
                        await importer.WriteAsync(priority, NpgsqlDbType.Integer, cancellationToken);
                        await importer.WriteAsync(maxAttempts, NpgsqlDbType.Integer, cancellationToken);
                        if (runAt is { } at)
                        {
                            await importer.WriteAsync(at, NpgsqlDbType.TimestampTz, cancellationToken);
                            await importer.WriteAsync(status, NpgsqlDbType.Text, cancellationToken);
                        }
                    }

                    await importer.CompleteAsync(cancellationToken);
                }

                inserted = rows.Length;
            }

            await using (var notify = new NpgsqlCommand(Options.NotifyTaskIds ? _sql.NotifyIds : BrokerSql.Notify, connection, transaction ?? own))
            {
                notify.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Options.Channel });
                if (Options.NotifyTaskIds)
                {
                    notify.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = rows.Select(r => r.Message.TaskId).ToArray() });
                }
                else
                {
                    notify.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
                }

                await notify.ExecuteNonQueryAsync(cancellationToken);
            }

            if (own is not null)
            {
                await own.CommitAsync(cancellationToken);
            }

            TaskiqDiagnostics.Kicked.Add(inserted, new KeyValuePair<string, object?>(MessagingTags.Destination, queue));
            return inserted;
        }
        catch (Exception ex)
        {
            MessagingTags.RecordError(activity, ex.GetType().Name, ex.Message);
            throw;
        }
        finally
        {
            if (own is not null)
            {
                await own.DisposeAsync();
            }

            if (callerConnection is null && connection is not null)
            {
                await connection.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// Validates a message and its kick options and returns a copy with the options' labels and timeout merged in; the
    /// caller's message is never changed (one message may be kicked from many threads).
    /// </summary>
    private TaskMessage PrepareCopy(TaskMessage message, KickOptions? options, bool writesLabels)
    {
        ArgumentException.ThrowIfNullOrEmpty(message.TaskId, nameof(message.TaskId));
        ArgumentException.ThrowIfNullOrEmpty(message.TaskName, nameof(message.TaskName));
        if (message.TaskName.Length > Options.MaxTaskNameLength)
        {
            throw new InvalidTaskMessageException("task_name",
                $"Task name '{Shorten(message.TaskName)}' is {message.TaskName.Length} characters, more than {nameof(PostgresBrokerOptions.MaxTaskNameLength)} ({Options.MaxTaskNameLength}).");
        }

        if (options is not null)
        {
            KickOptions.Validate(options);
        }

        // Copied only when something will be written into the labels (the options, or the trace context when tracing).
        var copy = message;
        if (writesLabels)
        {
            var labels = new Dictionary<string, string>(message.Labels);
            foreach (var (key, value) in options?.Labels ?? EmptyLabels)
            {
                labels[key] = value ?? throw new InvalidTaskMessageException("labels", $"The value of label '{Shorten(key)}' in {nameof(KickOptions)}.{nameof(KickOptions.Labels)} is null.");
            }

            if (options?.Timeout is { } timeout)
            {
                labels[TaskLabels.Timeout] = timeout.TotalSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
            }

            copy = message.WithLabels(labels);
        }

        if (MessageChecks.FindProblem(copy) is { } problem)
        {
            throw new InvalidTaskMessageException(problem.Field, MessageChecks.Describe(problem) + " It cannot be stored in PostgreSQL.");
        }

        return copy;
    }

    private (string Json, string Labels) Serialize(TaskMessage message)
    {
        var json = message.ToJson();
        var size = Encoding.UTF8.GetByteCount(json);
        if (size > Options.MaxMessageBytes)
        {
            throw new MessageTooLargeException(message.TaskName, size, Options.MaxMessageBytes);
        }

        return (json, JsonSerializer.Serialize(message.Labels, LabelsJsonContext.Default.DictionaryStringString));
    }

    private static readonly IReadOnlyDictionary<string, string> EmptyLabels = new Dictionary<string, string>();

    /// <summary>Whether a kick writes into the labels: options' labels or timeout, or a trace context to propagate.</summary>
    private static bool WritesLabels(KickOptions? options)
        => options?.Labels is { Count: > 0 } || options?.Timeout is not null
           || TaskiqDiagnostics.Source.HasListeners() || System.Diagnostics.Activity.Current is not null;

    private static string Shorten(string text) => text.Length <= 40 ? text : text[..40] + "…";

    /// <summary>The kick's explicit run time in UTC (Npgsql writes <c>timestamptz</c> only from UTC values).</summary>
    private static DateTimeOffset? RunAtOf(KickOptions? options) => options?.RunAt?.ToUniversalTime();

    private static TimeSpan DelayOf(KickOptions? options) => options?.Delay is { } d && d > TimeSpan.Zero ? d : TimeSpan.Zero;

    private int MaxAttemptsOf(KickOptions? options) => options?.MaxAttempts ?? Options.DefaultMaxAttempts;
}
