using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>
/// taskiq's scheduling labels on rows Python's taskiq-postgres inserted (only task_id, task_name, message, labels):
/// <c>delay</c>, <c>priority</c>, <c>retry_on_error</c> and <c>max_retries</c> become TaskiqPg's run time, priority and
/// attempts; a label that does not parse dead-letters the task with the reason.
/// </summary>
public sealed class PythonLabelsTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    private static async Task<(NpgsqlDataSource DataSource, PostgresBroker Broker, string Table)> TablesAsync(DatabaseFixture db, TimeSpan? completedRetention = null)
    {
        // Its own schema: Python's rows land in the column default's queue ('default'), which no other test may claim.
        var dataSource = db.CreateDataSource();
        var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions
        {
            Schema = "pylab" + Guid.NewGuid().ToString("N")[..8],
            CompletedRetention = completedRetention ?? TimeSpan.Zero,
        });
        await broker.StartAsync();
        return (dataSource, broker, $"\"{broker.Options.Schema}\".taskiq_messages");
    }

    private static async Task<TaskRecord> PythonKickAsync((NpgsqlDataSource DataSource, PostgresBroker Broker, string Table) tables, string taskId,
        string labels, string labelsTypes)
    {
        await PythonTablesTests.PythonKickAsync(tables.DataSource, tables.Table, taskId, 1, 2, notify: false, labels, labelsTypes);
        return (await tables.Broker.GetTaskAsync(taskId))!;
    }

    [Fact]
    public async Task Priority_and_retry_labels_set_the_rows_priority_and_attempts_as_taskiq_counts_them()
    {
        var tables = await TablesAsync(db);
        await using var _ = tables.Broker;

        // taskiq's kicker sends labels as strings with their type codes (2 int, 5 bool); max_retries counts every attempt.
        var retried = await PythonKickAsync(tables, "retried", """{"priority": "7", "retry_on_error": "True", "max_retries": "5"}""",
            """{"priority": 2, "retry_on_error": 5, "max_retries": 2}""");
        Assert.Equal((TaskState.Available, 7, 5), (retried.State, retried.Priority, retried.MaxAttempts));

        // retry_on_error false (as a string or, from a middleware, a native boolean): one attempt, whatever max_retries says.
        var once = await PythonKickAsync(tables, "once", """{"retry_on_error": "False", "max_retries": "5"}""", """{"retry_on_error": 5, "max_retries": 2}""");
        Assert.Equal(1, once.MaxAttempts);
        var native = await PythonKickAsync(tables, "native", """{"retry_on_error": false, "priority": 3}""", "{}");
        Assert.Equal((1, 3), (native.MaxAttempts, native.Priority));

        // No such labels: the table's defaults, as for a TaskiqPg kick.
        var plain = await PythonKickAsync(tables, "plain", """{"note": "x"}""", """{"note": 3}""");
        Assert.Equal((TaskState.Available, 0, 3), (plain.State, plain.Priority, plain.MaxAttempts));

        // The higher priority is claimed first.
        var claimed = await tables.Broker.ClaimAsync("w", 1);
        Assert.Equal("retried", Assert.Single(claimed).TaskId);
    }

    [Fact]
    public async Task The_delay_label_schedules_the_row_on_the_database_clock_in_every_form_taskiq_writes_it()
    {
        var tables = await TablesAsync(db);
        await using var _ = tables.Broker;

        foreach (var (taskId, labels, expected) in new[]
                 {
                     ("int-string", """{"delay": "2"}""", TimeSpan.FromSeconds(2)),
                     ("float-string", """{"delay": "5.0"}""", TimeSpan.FromSeconds(5)),
                     ("native-float", """{"delay": 1.5}""", TimeSpan.FromSeconds(1.5)),
                     ("native-int", """{"delay": 600}""", TimeSpan.FromMinutes(10)),
                 })
        {
            var row = await PythonKickAsync(tables, taskId, labels, "{}");
            Assert.Equal(TaskState.Scheduled, row.State);
            Assert.Equal(expected, row.RunAt - row.CreatedAt); // both are the insert's now()
        }

        // Zero or negative: due at once.
        var now = await PythonKickAsync(tables, "zero", """{"delay": "0"}""", "{}");
        Assert.Equal((TaskState.Available, TimeSpan.Zero), (now.State, now.RunAt - now.CreatedAt));
        Assert.Equal(TaskState.Available, (await PythonKickAsync(tables, "negative", """{"delay": -3}""", "{}")).State);
        Assert.Equal(["zero", "negative"], (await tables.Broker.ClaimAsync("w", 10)).Select(t => t.TaskId)); // none of the delayed ones
    }

    [Fact]
    public async Task A_label_that_does_not_parse_dead_letters_the_task_with_the_reason()
    {
        var tables = await TablesAsync(db);
        await using var _ = tables.Broker;

        foreach (var (taskId, labels, reason) in new[]
                 {
                     ("word-delay", """{"delay": "soon"}""", "the delay label \"soon\" is not a number of seconds"),
                     ("huge-delay", """{"delay": "1e300"}""", "the delay label \"1e300\" is more than 100 years"),
                     ("word-priority", """{"priority": "high"}""", "the priority label \"high\" is not an integer"),
                     ("float-priority", """{"priority": 1.5}""", "the priority label 1.5 is not an integer"),
                     ("wide-priority", """{"priority": "99999999999"}""", "the priority label \"99999999999\" is not an integer"),
                     ("word-retries", """{"max_retries": "many"}""", "the max_retries label \"many\" is not an integer"),
                 })
        {
            var row = await PythonKickAsync(tables, taskId, labels, "{}");
            Assert.Equal((TaskState.Discarded, reason), (row.State, row.LastError));
            Assert.NotNull(row.FinishedAt);
        }

        Assert.Empty(await tables.Broker.ClaimAsync("w", 10));

        // A dead letter like any other: retried from the dashboard or the API, it runs (the label is not read again).
        Assert.True(await tables.Broker.RetryDiscardedAsync("word-delay"));
        Assert.Equal(TaskState.Available, (await tables.Broker.GetTaskAsync("word-delay"))!.State);
    }

    [Fact]
    public async Task TaskiqPg_kicks_keep_what_their_options_say_when_they_carry_the_same_labels()
    {
        var tables = await TablesAsync(db);
        await using var _ = tables.Broker;
        var client = new TaskiqClient(tables.Broker);
        var labels = new Dictionary<string, string> { ["delay"] = "100", ["priority"] = "9" };

        // A delayed kick is scheduled by its option, not again by its label; an explicit priority wins over the label.
        var delayed = await client.KickAsync("add", [1, 2], options: new KickOptions { Delay = TimeSpan.FromSeconds(10), Priority = 4, Labels = labels });
        var row = (await tables.Broker.GetTaskAsync(delayed.TaskId))!;
        Assert.Equal((TaskState.Scheduled, TimeSpan.FromSeconds(10), 4), (row.State, row.RunAt - row.CreatedAt, row.Priority));

        // Without options the labels are taskiq's, whoever kicked: TaskiqPg's own kicks read them too (also in bulk).
        var plain = await client.KickAsync("add", [1, 2], options: new KickOptions { Labels = labels });
        row = (await tables.Broker.GetTaskAsync(plain.TaskId))!;
        Assert.Equal((TaskState.Scheduled, TimeSpan.FromSeconds(100), 9), (row.State, row.RunAt - row.CreatedAt, row.Priority));
        var many = Enumerable.Range(0, 3).Select(_ => TaskMessage.Create("add")).ToArray();
        foreach (var message in many)
        {
            message.Labels["delay"] = "100";
            message.Labels["priority"] = "9";
        }

        await tables.Broker.KickManyAsync(many);
        foreach (var message in many)
        {
            row = (await tables.Broker.GetTaskAsync(message.TaskId))!;
            Assert.Equal((TaskState.Scheduled, TimeSpan.FromSeconds(100), 9), (row.State, row.RunAt - row.CreatedAt, row.Priority));
        }
    }

    [Fact]
    public async Task A_worker_runs_a_Python_delayed_task_once_it_is_due_and_not_before()
    {
        var tables = await TablesAsync(db, completedRetention: TimeSpan.FromHours(1));
        await using var _ = tables.Broker;
        await using var results = new PostgresResultBackend(tables.DataSource, new PostgresResultBackendOptions { Schema = tables.Broker.Options.Schema });
        await results.StartAsync();
        using var worker = new TaskiqWorker(tables.Broker, new TaskRegistry().Add("add", (int a, int b) => a + b), results,
            new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(200) });
        await worker.StartAsync(CancellationToken.None);

        var kicked = await PythonKickAsync(tables, "later", """{"delay": "1"}""", """{"delay": 2}""");
        Assert.Equal(TaskState.Scheduled, kicked.State);
        Assert.Equal(3, (await results.WaitForResultAsync("later", Bound)).GetReturnValue<int>());
        var done = (await tables.Broker.GetTaskAsync("later"))!;
        Assert.Equal(TaskState.Completed, done.State);
        Assert.True(Assert.Single(done.History).StartedAt >= kicked.RunAt, $"started {done.History[0].StartedAt:O}, due {kicked.RunAt:O}");
        await worker.StopAsync(CancellationToken.None);
    }

    [Fact]
    public async Task The_upgrade_to_the_labels_step_keeps_existing_rows_as_they_were_and_reads_labels_of_new_ones()
    {
        // A database at the previous schema version (13 messages steps) with a Python row carrying a delay label.
        var dataSource = db.CreateDataSource();
        var options = new PostgresBrokerOptions { Schema = "pyup" + Guid.NewGuid().ToString("N")[..8] };
        var steps = new BrokerSql(options).Migrations;
        await using (var create = dataSource.CreateCommand($"CREATE SCHEMA \"{options.Schema}\""))
        {
            await create.ExecuteNonQueryAsync();
        }

        Assert.Equal(steps.Count - 1, await SchemaMigrator.MigrateAsync(dataSource, options.Schema, options.MessagesTable, steps.Take(steps.Count - 1).ToList(), CancellationToken.None));
        var table = $"\"{options.Schema}\".taskiq_messages";
        await PythonTablesTests.PythonKickAsync(dataSource, table, "before-upgrade", 1, 2, notify: false, """{"delay": "600"}""", "{}");

        await using var broker = new PostgresBroker(dataSource, options);
        await broker.StartAsync(); // applies the labels step
        var tables = (dataSource, broker, table);
        var old = (await broker.GetTaskAsync("before-upgrade"))!;
        Assert.Equal((TaskState.Available, TimeSpan.Zero), (old.State, old.RunAt - old.CreatedAt)); // not rescheduled by the upgrade
        var fresh = await PythonKickAsync(tables, "after-upgrade", """{"delay": "600"}""", "{}");
        Assert.Equal((TaskState.Scheduled, TimeSpan.FromMinutes(10)), (fresh.State, fresh.RunAt - fresh.CreatedAt));
    }
}
