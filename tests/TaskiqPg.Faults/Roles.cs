using System.Globalization;
using System.Runtime.InteropServices;
using Npgsql;

namespace TaskiqPg.Faults;

/// <summary>key=value settings of a child process.</summary>
internal sealed class Settings(Dictionary<string, string> values)
{
    public static Settings Parse(IEnumerable<string> args)
        => new(args.Select(a => a.Split('=', 2)).ToDictionary(p => p[0], p => p.Length > 1 ? p[1] : ""));

    public int Int(string key, int fallback) => values.TryGetValue(key, out var v) ? int.Parse(v, CultureInfo.InvariantCulture) : fallback;

    public static IEnumerable<string> Format(IReadOnlyDictionary<string, int> settings)
        => settings.Select(kv => $"{kv.Key}={kv.Value.ToString(CultureInfo.InvariantCulture)}");
}

/// <summary>The child processes: worker, producer, scheduler. Each writes to the shared ledger and is killed at will.</summary>
internal static class Roles
{
    public const string ConnectionVariable = "TASKIQPG_FAULTS_CONNECTION";

    /// <summary>A direct connection string for the LISTEN connections when the main one goes through a pooler.</summary>
    public const string ListenConnectionVariable = "TASKIQPG_FAULTS_LISTEN_CONNECTION";
    public const string Ready = "ready";

    /// <summary>The stdout prefix of a producer's line for a kick whose COMMIT returned: the task id follows.</summary>
    public const string Acked = "acked ";

    private const string LedgerInsert = "INSERT INTO fault_ledger (task_id, attempt, worker, fire_at) VALUES ($1, $2, $3, $4)";

    private static string Connection(Settings? settings = null)
    {
        var connection = Environment.GetEnvironmentVariable(ConnectionVariable)
                         ?? throw new InvalidOperationException($"{ConnectionVariable} is not set.");
        var builder = new NpgsqlConnectionStringBuilder(connection);
        if (settings?.Int("maxpool", 0) is > 0 and var pool)
        {
            builder.MaxPoolSize = pool;
            builder.Timeout = 60; // waiting for a pooled connection is part of the scenario, not an error
        }

        return builder.ConnectionString;
    }

    /// <summary>
    /// A worker on <paramref name="queue"/> (comma-separated: one worker serving several queues, the first the broker's). Tasks: <c>record(workMs)</c> (async work, then a ledger row),
    /// <c>block(blockMs)</c> (blocks its thread), <c>record_db(workMs)</c> (also queries the shared pool) and
    /// <c>tick</c> (a scheduled task: the ledger row carries its fire instant) and <c>hold</c> (a ledger row when it starts,
    /// then waits up to two minutes on its cancellation token). SIGTERM stops it gracefully.
    /// </summary>
    public static async Task<int> WorkerAsync(string queue, string name, Settings settings)
    {
        if (settings.Int("maxthreads", 0) is > 0 and var threads)
        {
            // Starve the thread pool on purpose: blocking handlers then hold every pool thread.
            ThreadPool.SetMinThreads(1, 1);
            ThreadPool.SetMaxThreads(threads, threads);
        }

        await using var dataSource = NpgsqlDataSource.Create(Connection(settings));
        var queues = queue.Split(',');
        var brokerOptions = new PostgresBrokerOptions
        {
            Queue = queues[0],
            RunMigrations = false,
            LeaseDuration = TimeSpan.FromMilliseconds(settings.Int("leasems", 5_000)),
            PrepareStatements = settings.Int("noprepare", 0) == 0, // behind PgBouncer in transaction mode: off
            ListenConnectionString = Environment.GetEnvironmentVariable(ListenConnectionVariable),
        };
        using var loggers = new StderrLoggerFactory();
        await using var broker = new PostgresBroker(dataSource, brokerOptions, loggerFactory: loggers);
        await using var results = new PostgresResultBackend(dataSource, new PostgresResultBackendOptions
        {
            RunMigrations = false, ListenConnectionString = brokerOptions.ListenConnectionString,
        }, loggerFactory: loggers);

        async Task Record(TaskContext context, string? fireAt = null)
        {
            await using var command = dataSource.CreateCommand(LedgerInsert);
            AddLedgerParameters(command.Parameters, context, name, fireAt);
            await command.ExecuteNonQueryAsync(CancellationToken.None);
        }

        var registry = new TaskRegistry()
            .Add("record", async (TaskContext context, int workMs) =>
            {
                if (workMs > 0)
                {
                    await Task.Delay(workMs, context.CancellationToken);
                }

                await Record(context);
            })
            .Add("record_db", async (TaskContext context, int workMs) =>
            {
                await using (var work = dataSource.CreateCommand("SELECT pg_sleep($1)"))
                {
                    work.Parameters.Add(new NpgsqlParameter<double> { TypedValue = workMs / 1000.0 });
                    await work.ExecuteNonQueryAsync(context.CancellationToken);
                }

                await Record(context);
            })
            .Add("block", (TaskContext context, int blockMs) =>
            {
                Thread.Sleep(blockMs); // a handler that blocks its thread (synchronous I/O, a lock, a CPU loop)
                using var connection = dataSource.OpenConnection();
                using var command = new NpgsqlCommand(LedgerInsert, connection);
                AddLedgerParameters(command.Parameters, context, name, null);
                command.ExecuteNonQuery();
            })
            .Add("fail", (Func<TaskContext, Task>)(_ => throw new InvalidOperationException("this handler always fails")))
            .Add("fail_nul", (Func<TaskContext, Task>)(_ => throw new InvalidOperationException("PostgreSQL refuses this text: \0 (a NUL)")))
            .Add("poison_result", async (TaskContext context) =>
            {
                await Record(context);
                return "poison"; // the scenario's trigger on the results table refuses this value
            })
            .Add("tick", (TaskContext context) => Record(context, context.Labels.GetValueOrDefault(ScheduleLabels.FireAt)))
            .Add("hold", async (TaskContext context) =>
            {
                await Record(context);
                await Task.Delay(TimeSpan.FromMinutes(2), context.CancellationToken);
            });

        var options = new TaskiqWorkerOptions
        {
            WorkerId = name,
            MaxConcurrentTasks = settings.Int("concurrency", 16),
            PrefetchCount = settings.Int("prefetch", 32),
            ClaimBatchSize = settings.Int("batch", 64),
            PollInterval = TimeSpan.FromMilliseconds(settings.Int("pollms", 1_000)),
            ShutdownTimeout = TimeSpan.FromMilliseconds(settings.Int("shutdownms", 10_000)),
            Queues = queues.Length > 1 ? queues : null,
        };
        using var worker = new TaskiqWorker(broker, registry, results, options, loggerFactory: loggers);
        var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, context =>
        {
            context.Cancel = true;
            stop.TrySetResult();
        });
        await worker.StartAsync(CancellationToken.None);
        await broker.ListenerConnected.WaitAsync(TimeSpan.FromSeconds(30));
        Console.WriteLine(Ready);
        await stop.Task;
        await worker.StopAsync(CancellationToken.None);
        Console.WriteLine("stopped");
        return 0;
    }

    /// <summary>
    /// Kicks with <c>DateTimeOffset.Now</c> of this process's time zone (run with <c>TZ</c> set): one task by
    /// <c>KickAsync</c>, one by <c>KickManyAsync</c>, one in a transaction, each due in 1 hour, and a one-shot schedule
    /// for the same instant. Prints the local offset and the instant; exit code 1 with the error if anything is refused.
    /// </summary>
    public static async Task<int> LocalTimeKickAsync(string queue, string schedulesTable)
    {
        try
        {
            await using var dataSource = NpgsqlDataSource.Create(Connection());
            await using var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = queue, RunMigrations = false });
            await using var schedules = new PostgresScheduleSource(dataSource, new PostgresScheduleSourceOptions { SchedulesTable = schedulesTable });
            var runAt = DateTimeOffset.Now.AddHours(1);
            var options = new KickOptions { RunAt = runAt };
            await broker.KickAsync(TaskMessage.Create("local", taskId: "local-single"), options);
            await broker.KickManyAsync([TaskMessage.Create("local", taskId: "local-many")], options);
            await using (var connection = await dataSource.OpenConnectionAsync())
            await using (var transaction = await connection.BeginTransactionAsync())
            {
                await broker.KickAsync(TaskMessage.Create("local", taskId: "local-tx"), connection, transaction, options);
                await transaction.CommitAsync();
            }

            await schedules.AddScheduleAsync(new ScheduleDefinition { TaskName = "local", RunAt = runAt });
            Console.WriteLine(FormattableString.Invariant($"offset={runAt.Offset} at={runAt.UtcDateTime:O}"));
            return 0;
        }
        catch (Exception ex)
        {
            Console.Error.WriteLine(ex.ToString());
            return 1;
        }
    }

    /// <summary>
    /// Kicks <paramref name="count"/> delayed <c>record</c> tasks (half one by one, half in one KickMany), notes them in
    /// <c>fault_kicked</c> with the earliest time each may run, and exits at once: no dispose, no flush, no goodbye.
    /// </summary>
    public static async Task<int> ProducerAsync(string queue, int count, int delaySeconds)
    {
        var dataSource = NpgsqlDataSource.Create(Connection());
        var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = queue, RunMigrations = false });
        DateTime before;
        await using (var clock = dataSource.CreateCommand("SELECT clock_timestamp()"))
        {
            before = (DateTime)(await clock.ExecuteScalarAsync())!;
        }

        var options = new KickOptions { Delay = TimeSpan.FromSeconds(delaySeconds) };
        var messages = Enumerable.Range(0, count).Select(i => TaskMessage.Create("record", [0])).ToArray();
        foreach (var message in messages[..(count / 2)])
        {
            await broker.KickAsync(message, options);
        }

        await broker.KickManyAsync(messages[(count / 2)..], options);
        await using (var note = dataSource.CreateCommand(
                         "INSERT INTO fault_kicked (scenario, task_id, due_at) SELECT $1, unnest($2::text[]), $3"))
        {
            note.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
            note.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = messages.Select(m => m.TaskId).ToArray() });
            note.Parameters.Add(new NpgsqlParameter<DateTime> { TypedValue = before.AddSeconds(delaySeconds) });
            await note.ExecuteNonQueryAsync();
        }

        Console.WriteLine(Ready);
        Console.Out.Flush();
        Environment.Exit(0); // the point of the scenario: gone right after kicking
        return 0;
    }

    /// <summary>
    /// Kicks <c>record(5)</c> tasks one at a time, each with its <c>fault_kicked</c> row in its own transaction, until
    /// <paramref name="count"/> were acknowledged (their COMMIT returned), and prints <c>acked &lt;id&gt;</c> for each
    /// on stdout — outside the database, which may lose a committed transaction in a failover. A kick whose
    /// connection or commit fails is not acknowledged (it may or may not have committed) and is retried as a new task.
    /// </summary>
    public static async Task<int> AckedProducerAsync(string queue, int count, int pauseMs)
    {
        await using var dataSource = NpgsqlDataSource.Create(Connection());
        await using var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = queue, RunMigrations = false });
        await broker.StartAsync();
        Console.WriteLine(Ready);
        for (var acked = 0; acked < count;)
        {
            var message = TaskMessage.Create("record", [5]);
            try
            {
                await using var connection = await dataSource.OpenConnectionAsync();
                await using var transaction = await connection.BeginTransactionAsync();
                await broker.KickAsync(message, connection, transaction);
                await using (var note = new NpgsqlCommand("INSERT INTO fault_kicked (scenario, task_id) VALUES ($1, $2)", connection, transaction))
                {
                    note.Parameters.Add(new NpgsqlParameter<string> { TypedValue = queue });
                    note.Parameters.Add(new NpgsqlParameter<string> { TypedValue = message.TaskId });
                    await note.ExecuteNonQueryAsync();
                }

                await transaction.CommitAsync();
                Console.WriteLine(Acked + message.TaskId);
                acked++;
            }
            catch (Exception ex) when (ex is NpgsqlException or TimeoutException or InvalidOperationException)
            {
                await Task.Delay(100); // the primary is gone or not yet replaced
            }

            if (pauseMs > 0)
            {
                await Task.Delay(pauseMs);
            }
        }

        return 0;
    }

    /// <summary>
    /// Kicks the unique tasks <c>record(0)</c>…<c>record(count-1)</c> (unique by name and arguments) from the given
    /// wall-clock instant (so several producer processes race on the same keys), one by one or (<paramref name="many"/>)
    /// in KickMany batches of 50, and
    /// writes how many were new and how many duplicates to <c>fault_unique</c>.
    /// </summary>
    public static async Task<int> UniqueProducerAsync(string queue, string name, int count, long startAtUnixMs, bool many)
    {
        await using var dataSource = NpgsqlDataSource.Create(Connection());
        await using var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = queue, RunMigrations = false });
        await broker.StartAsync();
        Console.WriteLine(Ready);
        var wait = DateTimeOffset.FromUnixTimeMilliseconds(startAtUnixMs) - DateTimeOffset.UtcNow;
        if (wait > TimeSpan.Zero)
        {
            await Task.Delay(wait); // a common start instant, not a synchronisation of results: the race is the point
        }

        // Unique by task name and arguments: record(i) for i in 0..count-1, the same set from every producer.
        var unique = new KickOptions { Unique = new UniqueOptions() };
        int fresh = 0, duplicates = 0;
        if (many)
        {
            for (var start = 0; start < count; start += 50)
            {
                var batch = Enumerable.Range(start, Math.Min(50, count - start)).Select(i => TaskMessage.Create("record", [i])).ToArray();
                var inserted = await broker.KickManyAsync(batch, unique);
                fresh += inserted;
                duplicates += batch.Length - inserted;
            }
        }
        else
        {
            for (var i = 0; i < count; i++)
            {
                var result = await broker.KickAsync(TaskMessage.Create("record", [i]), unique);
                if (result.Duplicate)
                {
                    duplicates++;
                }
                else
                {
                    fresh++;
                }
            }
        }

        await using var note = dataSource.CreateCommand("INSERT INTO fault_unique (producer, fresh, duplicates) VALUES ($1, $2, $3)");
        note.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
        note.Parameters.Add(new NpgsqlParameter<int> { TypedValue = fresh });
        note.Parameters.Add(new NpgsqlParameter<int> { TypedValue = duplicates });
        await note.ExecuteNonQueryAsync();
        return 0;
    }

    /// <summary>A scheduler with one static every-second cron schedule (task <c>tick</c> on queue <c>sched</c>).</summary>
    public static async Task<int> SchedulerAsync(string name, Settings settings)
    {
        await using var dataSource = NpgsqlDataSource.Create(Connection());
        await using var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Queue = "sched", RunMigrations = false });
        await using var source = new PostgresScheduleSource(dataSource, new PostgresScheduleSourceOptions { RunMigrations = false });
        using var scheduler = new TaskiqScheduler(source, broker, new TaskiqSchedulerOptions
        {
            RefreshInterval = TimeSpan.FromMilliseconds(settings.Int("refreshms", 500)),
            StaticSchedules = [new ScheduleDefinition { TaskName = "tick", Cron = "* * * * * *", MissedFires = MissedFirePolicy.CatchUp }],
        });
        var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, context =>
        {
            context.Cancel = true;
            stop.TrySetResult();
        });
        await scheduler.StartAsync(CancellationToken.None);
        Console.WriteLine(Ready + " " + name);
        await stop.Task;
        await scheduler.StopAsync(CancellationToken.None);
        return 0;
    }

    private static void AddLedgerParameters(NpgsqlParameterCollection parameters, TaskContext context, string worker, string? fireAt)
    {
        parameters.Add(new NpgsqlParameter<string> { TypedValue = context.TaskId });
        parameters.Add(new NpgsqlParameter<int> { TypedValue = context.Attempt });
        parameters.Add(new NpgsqlParameter<string> { TypedValue = worker });
        parameters.Add(new NpgsqlParameter { Value = (object?)fireAt ?? DBNull.Value, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Text });
    }
}

/// <summary>Warnings and errors of a child, one line each on stderr with a timestamp (the runner keeps the last lines).</summary>
internal sealed class StderrLoggerFactory : Microsoft.Extensions.Logging.ILoggerFactory
{
    public Microsoft.Extensions.Logging.ILogger CreateLogger(string categoryName) => new Logger(categoryName);

    public void AddProvider(Microsoft.Extensions.Logging.ILoggerProvider provider)
    {
    }

    public void Dispose()
    {
    }

    /// <summary>Warning unless <c>TASKIQPG_FAULTS_LOG_LEVEL</c> names another level (e.g. Information, to follow one scenario).</summary>
    private static readonly Microsoft.Extensions.Logging.LogLevel Minimum =
        Enum.TryParse<Microsoft.Extensions.Logging.LogLevel>(Environment.GetEnvironmentVariable("TASKIQPG_FAULTS_LOG_LEVEL"), out var level)
            ? level : Microsoft.Extensions.Logging.LogLevel.Warning;

    private sealed class Logger(string category) : Microsoft.Extensions.Logging.ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(Microsoft.Extensions.Logging.LogLevel logLevel) => logLevel >= Minimum;

        public void Log<TState>(Microsoft.Extensions.Logging.LogLevel logLevel, Microsoft.Extensions.Logging.EventId eventId, TState state, Exception? exception,
            Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel))
            {
                Console.Error.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} {logLevel} {category}: {formatter(state, exception)} {exception?.GetType().Name} {exception?.Message}".ReplaceLineEndings(" "));
            }
        }
    }
}
