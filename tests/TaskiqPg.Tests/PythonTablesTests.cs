using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>
/// The messages table shared with Python's taskiq-postgres: TaskiqPg adopts a table Python created first (its exact
/// DDL, with rows in it), and Python's own statements (insert, NOTIFY with the row id, claim by id, delete) work on a
/// table either side created. No Python runs here: its statements are copied from taskiq-postgres.
/// </summary>
public sealed class PythonTablesTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    // taskiq-postgres (asyncpg driver) CREATE_MESSAGE_TABLE_QUERY, INSERT_MESSAGE_QUERY, CLAIM_MESSAGE_QUERY, DELETE_MESSAGE_QUERY.
    private const string PythonCreateTable = """
        CREATE TABLE IF NOT EXISTS {0} (
            id SERIAL PRIMARY KEY,
            task_id VARCHAR NOT NULL,
            task_name VARCHAR NOT NULL,
            message TEXT NOT NULL,
            labels JSONB NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
        );
        """;

    private const string PythonInsert = "INSERT INTO {0} (task_id, task_name, message, labels) VALUES ($1, $2, $3, $4) RETURNING id";
    private const string PythonClaim = "UPDATE {0} SET status = 'processing' WHERE id = $1 AND status = 'pending' RETURNING id, message";

    // A message as taskiq 0.12 serializes it (json.dumps separators and escapes).
    private static string PythonMessage(string taskId, int a, int b, string labels, string labelsTypes) =>
        $$$"""{"task_id": "{{{taskId}}}", "task_name": "add", "labels": {{{labels}}}, "labels_types": {{{labelsTypes}}}, "args": [{{{a}}}, {{{b}}}], "kwargs": {}}""";

    /// <summary>
    /// A kick as taskiq-postgres's broker makes it: its insert (the row's labels are <c>json.dumps(message.labels)</c>,
    /// as <paramref name="labels"/> gives them) and, when <paramref name="notify"/>, its NOTIFY with the row id.
    /// </summary>
    internal static async Task<long> PythonKickAsync(NpgsqlDataSource dataSource, string table, string taskId, int a, int b, bool notify,
        string labels = """{"note": "caf\u00e9"}""", string labelsTypes = """{"note": 3}""")
    {
        await using var insert = dataSource.CreateCommand(string.Format(PythonInsert, table));
        insert.Parameters.AddWithValue(taskId);
        insert.Parameters.AddWithValue("add");
        insert.Parameters.AddWithValue(PythonMessage(taskId, a, b, labels, labelsTypes));
        insert.Parameters.Add(new NpgsqlParameter { Value = labels, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Jsonb });
        var id = Convert.ToInt64(await insert.ExecuteScalarAsync());
        if (notify)
        {
            await using var wake = dataSource.CreateCommand("SELECT pg_notify('taskiq', $1)");
            wake.Parameters.AddWithValue(id.ToString(System.Globalization.CultureInfo.InvariantCulture));
            await wake.ExecuteNonQueryAsync();
        }

        return id;
    }

    internal static async Task<string?> ScalarAsync(NpgsqlDataSource dataSource, string sql, params object[] values)
    {
        await using var command = dataSource.CreateCommand(sql);
        foreach (var value in values)
        {
            command.Parameters.AddWithValue(value);
        }

        return (await command.ExecuteScalarAsync())?.ToString();
    }

    [Fact]
    public async Task A_table_created_by_taskiq_postgres_is_adopted_with_its_rows_and_Python_kicks_keep_working()
    {
        var schema = "py" + Guid.NewGuid().ToString("N")[..8];
        var table = $"\"{schema}\".taskiq_messages";
        var dataSource = db.CreateDataSource();
        await ScalarAsync(dataSource, $"CREATE SCHEMA {schema}");
        await ScalarAsync(dataSource, string.Format(PythonCreateTable, table));
        var before = new[] { await PythonKickAsync(dataSource, table, "py-1", 1, 2, notify: false), await PythonKickAsync(dataSource, table, "py-2", 3, 4, notify: false) };
        var claimedByPython = await PythonKickAsync(dataSource, table, "py-running", 5, 6, notify: false);
        Assert.Equal(claimedByPython.ToString(System.Globalization.CultureInfo.InvariantCulture),
            await ScalarAsync(dataSource, string.Format(PythonClaim, table), (int)claimedByPython));

        var brokerOptions = new PostgresBrokerOptions { Schema = schema, LeaseDuration = TimeSpan.FromSeconds(1), WorkerStaleAfter = TimeSpan.FromSeconds(3) };
        await using var broker = new PostgresBroker(dataSource, brokerOptions);
        await using var results = new PostgresResultBackend(dataSource, new PostgresResultBackendOptions { Schema = schema });
        await broker.StartAsync(); // migrations adopt the table
        await results.StartAsync();

        Assert.Equal("bigint", await ScalarAsync(dataSource, "SELECT data_type FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'taskiq_messages' AND column_name = 'id'", schema));
        Assert.Equal("text", await ScalarAsync(dataSource, "SELECT data_type FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'taskiq_messages' AND column_name = 'task_id'", schema));
        Assert.Equal(TaskState.Available, (await broker.GetTaskAsync("py-1"))!.State); // kept, and available

        // A worker that never polls: the Python kick below reaches it by the NOTIFY with the row id alone.
        var registry = new TaskRegistry().Add("add", (int a, int b) => a + b);
        using var worker = new TaskiqWorker(broker, registry, results, new TaskiqWorkerOptions
        {
            PollInterval = TimeSpan.FromMinutes(5), RescueInterval = TimeSpan.FromMilliseconds(200), HeartbeatInterval = TimeSpan.FromMilliseconds(500),
        });
        await worker.StartAsync(CancellationToken.None);
        Assert.Equal(3, (await results.WaitForResultAsync("py-1", Bound)).GetReturnValue<int>());
        Assert.Equal(7, (await results.WaitForResultAsync("py-2", Bound)).GetReturnValue<int>());
        await Eventually.TrueAsync(() => worker.LastLoopActivity != default, Bound, "the worker waits for work");

        var afterStart = await PythonKickAsync(dataSource, table, "py-3", 10, 20, notify: true);
        Assert.True(afterStart > before.Max());
        Assert.Equal(30, (await results.WaitForResultAsync("py-3", TimeSpan.FromSeconds(20))).GetReturnValue<int>());

        // The row a Python worker claimed has no lease: TaskiqPg's rescue leaves it to that worker.
        Assert.Empty(await broker.RescueExpiredLeasesAsync());
        Assert.Equal(TaskState.Running, (await broker.GetTaskAsync("py-running"))!.State);
        await worker.StopAsync(CancellationToken.None);
    }

    [Fact]
    public async Task A_NOTIFY_carrying_a_row_id_as_taskiq_postgres_sends_it_wakes_the_workers()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        var wakes = 0;
        using var subscription = harness.Broker.Subscribe(() => Interlocked.Increment(ref wakes));
        await Eventually.TrueAsync(() => harness.Broker.IsListening && Volatile.Read(ref wakes) > 0, Bound, "the listener is up (its connect wakes once)");
        var before = Volatile.Read(ref wakes);

        await ScalarAsync(harness.DataSource, "SELECT pg_notify('taskiq', 'another_queue')"); // not ours: no wake
        await ScalarAsync(harness.DataSource, "SELECT pg_notify('taskiq', '4711')");
        await Eventually.TrueAsync(() => Volatile.Read(ref wakes) > before, Bound, "the row-id payload wakes the subscriber");
        Assert.Equal(before + 1, Volatile.Read(ref wakes)); // notifications arrive in order: the other queue's woke nothing
    }

    [Fact]
    public async Task Pythons_insert_claim_and_delete_work_on_a_table_TaskiqPg_created_and_never_take_a_task_TaskiqPg_claimed()
    {
        // Its own schema, so the Python rows land in the column default's queue ('default') of a table no other test uses.
        var dataSource = db.CreateDataSource();
        await using var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Schema = "pyours" + Guid.NewGuid().ToString("N")[..6] });
        await broker.StartAsync();
        var harness = new { DataSource = dataSource, Broker = broker, Client = new TaskiqClient(broker) };
        var table = $"\"{broker.Options.Schema}\".taskiq_messages";

        // A Python producer's row: every TaskiqPg column takes its default (queue 'default', available now).
        var id = await PythonKickAsync(harness.DataSource, table, "py-kick", 2, 3, notify: false);
        var kicked = (await harness.Broker.GetTaskAsync("py-kick"))!;
        Assert.Equal(("default", TaskState.Available, 0), (kicked.Queue, kicked.State, kicked.Attempts));

        // A Python worker claims TaskiqPg's row by id and deletes it as its ack.
        var ours = await harness.Client.KickAsync("add", [1, 1]);
        var ourId = long.Parse((await ScalarAsync(harness.DataSource, $"SELECT id FROM {table} WHERE task_id = $1", ours.TaskId))!, System.Globalization.CultureInfo.InvariantCulture);
        Assert.Contains(ours.TaskId, await ScalarAsync(harness.DataSource, string.Format(PythonClaim, table).Replace("RETURNING id, message", "RETURNING message", StringComparison.Ordinal), (int)ourId));
        var claimed = await harness.Broker.ClaimAsync("w", 10);
        Assert.Equal(["py-kick"], claimed.Select(t => t.TaskId)); // the Python-claimed row is skipped, the Python-kicked one taken
        await ScalarAsync(harness.DataSource, $"DELETE FROM {table} WHERE id = $1", (int)ourId);
        Assert.Null(await harness.Broker.GetTaskAsync(ours.TaskId));

        // The other way round: the row TaskiqPg claimed is not claimable by Python's status check.
        Assert.Null(await ScalarAsync(harness.DataSource, string.Format(PythonClaim, table), (int)id));
    }
}

/// <summary><see cref="PostgresBrokerOptions.NotifyTaskIds"/>: the NOTIFY payloads a Python taskiq-postgres worker claims by.</summary>
public sealed class NotifyTaskIdsTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task Every_kick_notifies_its_row_id_on_commit_and_a_Python_claim_by_that_id_gets_the_message()
    {
        var channel = "ids_" + Guid.NewGuid().ToString("N")[..8];
        await using var harness = await QueueHarness.CreateAsync(db, broker: new PostgresBrokerOptions { NotifyTaskIds = true, Channel = channel });
        var payloads = new System.Collections.Concurrent.ConcurrentQueue<string>();
        await using var listener = harness.DataSource.CreateConnection();
        await listener.OpenAsync();
        listener.Notification += (_, e) => payloads.Enqueue(e.Payload);
        await using (var listen = new NpgsqlCommand($"LISTEN \"{channel}\"", listener))
        {
            await listen.ExecuteNonQueryAsync();
        }

        async Task<string[]> ReceiveAsync(int count)
        {
            var received = new List<string>();
            var deadline = DateTime.UtcNow + Bound;
            while (received.Count < count)
            {
                Assert.True(DateTime.UtcNow < deadline, $"only {received.Count} of {count} notifications arrived");
                await listener.WaitAsync(TimeSpan.FromMilliseconds(200));
                while (payloads.TryDequeue(out var p))
                {
                    received.Add(p);
                }
            }

            return [.. received];
        }

        var single = await harness.Broker.KickAsync(TaskMessage.Create("one"));
        Assert.Equal([single.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)], await ReceiveAsync(1));

        var many = Enumerable.Range(0, 3).Select(_ => TaskMessage.Create("many")).ToArray();
        await harness.Broker.KickManyAsync(many);
        var ids = await ReceiveAsync(3);
        foreach (var id in ids)
        {
            // Python's CLAIM_MESSAGE_QUERY with the notified id.
            await using var claim = harness.DataSource.CreateCommand(
                $"UPDATE \"{harness.Broker.Options.Schema}\".taskiq_messages SET status = 'processing' WHERE id = $1 AND status = 'pending' RETURNING message");
            claim.Parameters.AddWithValue(long.Parse(id, System.Globalization.CultureInfo.InvariantCulture));
            var message = TaskMessage.FromJson((string)(await claim.ExecuteScalarAsync())!);
            Assert.Contains(message.TaskId, many.Select(m => m.TaskId));
        }

        // Inside the caller's transaction: nothing until the commit.
        await using var connection = await harness.DataSource.OpenConnectionAsync();
        await using var transaction = await connection.BeginTransactionAsync();
        var inTransaction = await harness.Broker.KickAsync(TaskMessage.Create("tx"), connection, transaction);
        await listener.WaitAsync(TimeSpan.FromMilliseconds(300));
        Assert.Empty(payloads);
        await transaction.CommitAsync();
        Assert.Equal([inTransaction.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)], await ReceiveAsync(1));

        // A delayed task is notified at its kick (a Python worker cannot claim it yet) and again when a worker promotes
        // it, due: then a Python worker can.
        harness.Registry.Add("later", () => 1);
        var delayed = await harness.Broker.KickAsync(TaskMessage.Create("later"), new KickOptions { Delay = TimeSpan.FromSeconds(1) });
        var delayedId = delayed.Id.ToString(System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal([delayedId], await ReceiveAsync(1));
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(200) });
        var afterStart = new List<string>();
        while (!afterStart.Contains(delayedId))
        {
            afterStart.AddRange(await ReceiveAsync(1)); // fails at its bound when the promotion notifies no id
        }

        // Only ids: a Python worker logs an error for any other payload (the queue name a promotion sends by default).
        Assert.All(afterStart, p => Assert.True(long.TryParse(p, out _), $"payload '{p}'"));
    }
}
