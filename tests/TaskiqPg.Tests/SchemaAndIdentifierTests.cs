using Npgsql;

namespace TaskiqPg.Tests;

public sealed class SchemaAndIdentifierTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    [Theory]
    [InlineData("")]
    [InlineData("bad;name")]
    [InlineData("quote\"d")]
    [InlineData("with space")]
    [InlineData("1starts_with_digit")]
    [InlineData("drop table x; --")]
    [InlineData("naïve")]
    [InlineData("trailing_newline\n")]
    [InlineData("a234567890123456789012345678901234567890123456789012345678901234")] // 64 bytes
    public void Invalid_identifiers_are_rejected_naming_the_option(string name)
    {
        var e1 = Assert.Throws<ArgumentException>(() => new PostgresBroker(db.ConnectionString, new PostgresBrokerOptions { Schema = name }));
        Assert.Equal("Schema", e1.ParamName);
        var e2 = Assert.Throws<ArgumentException>(() => new PostgresBroker(db.ConnectionString, new PostgresBrokerOptions { MessagesTable = name }));
        Assert.Equal("MessagesTable", e2.ParamName);
        var e3 = Assert.Throws<ArgumentException>(() => new PostgresBroker(db.ConnectionString, new PostgresBrokerOptions { Channel = name }));
        Assert.Equal("Channel", e3.ParamName);
        var e4 = Assert.Throws<ArgumentException>(() => new PostgresBroker(db.ConnectionString, new PostgresBrokerOptions { Queue = name }));
        Assert.Equal("Queue", e4.ParamName);
        var e5 = Assert.Throws<ArgumentException>(() => new PostgresResultBackend(db.ConnectionString, new PostgresResultBackendOptions { ResultsTable = name }));
        Assert.Equal("ResultsTable", e5.ParamName);
    }

    [Theory]
    [InlineData("taskiq_messages")]
    [InlineData("_private")]
    [InlineData("MixedCase9")]
    [InlineData("a23456789012345678901234567890123456789012345678901234567890123")] // 63 bytes
    public void Valid_identifiers_are_quoted(string name) => Assert.Equal($"\"{name}\"", PgIdentifier.Quote(name, "Option"));

    [Fact]
    public async Task Custom_schema_table_and_channel_names_work_end_to_end()
    {
        var brokerOptions = new PostgresBrokerOptions { Schema = "Jobs", MessagesTable = "MyTasks", Channel = "Wake_Up", Queue = "Emails" };
        var resultOptions = new PostgresResultBackendOptions { Schema = "Jobs", ResultsTable = "Outcomes", Channel = "Done" };
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("hi", () => "there"), brokerOptions, resultOptions);
        await harness.StartWorkerAsync();

        var handle = await harness.Client.KickAsync<string>("hi");

        Assert.Equal("there", await handle.WaitForResultAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(2L, await harness.ScalarAsync<long>(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'Jobs' AND table_name IN ('MyTasks', 'Outcomes')"));
    }

    [Fact]
    public async Task Ten_components_migrating_at_once_do_not_race_and_record_one_version()
    {
        var schema = "m" + Guid.NewGuid().ToString("N")[..8];
        var dataSource = db.CreateDataSource(maxPoolSize: 30);
        var brokers = Enumerable.Range(0, 10).Select(_ => new PostgresBroker(dataSource, new PostgresBrokerOptions { Schema = schema })).ToArray();
        var backends = Enumerable.Range(0, 10).Select(_ => new PostgresResultBackend(dataSource, new PostgresResultBackendOptions { Schema = schema })).ToArray();

        await Task.WhenAll(brokers.Select(b => b.MigrateAsync()).Concat(backends.Select(b => b.MigrateAsync())));
        await brokers[0].MigrateAsync(); // and again: idempotent

        await using var command = dataSource.CreateCommand($"SELECT object_name, version FROM \"{schema}\".taskiq_schema_versions ORDER BY 1");
        await using var reader = await command.ExecuteReaderAsync();
        var rows = new List<(string, int)>();
        while (await reader.ReadAsync())
        {
            rows.Add((reader.GetString(0), reader.GetInt32(1)));
        }

        Assert.Equal([("taskiq_messages", new BrokerSql(new PostgresBrokerOptions()).Migrations.Count), ("taskiq_results", new ResultSql(new PostgresResultBackendOptions()).Migrations.Count)], rows);
        await using var indexes = dataSource.CreateCommand(
            "SELECT string_agg(indexdef, ' | ') FROM pg_indexes WHERE schemaname = $1 AND tablename = 'taskiq_messages' AND indexdef LIKE '%(task_id)%'");
        indexes.Parameters.Add(new Npgsql.NpgsqlParameter<string> { TypedValue = schema });
        var taskIdIndexes = (string)(await indexes.ExecuteScalarAsync())!;
        Assert.Contains("USING hash (task_id)", taskIdIndexes); // migration 2 replaced the b-tree of migration 1
        Assert.DoesNotContain("btree (task_id)", taskIdIndexes);
        foreach (var broker in brokers)
        {
            await broker.DisposeAsync();
        }

        foreach (var backend in backends)
        {
            await backend.DisposeAsync();
        }
    }

    [Fact]
    public async Task Migrations_can_be_turned_off()
    {
        var schema = "off" + Guid.NewGuid().ToString("N")[..8];
        await using var broker = new PostgresBroker(db.ConnectionString, new PostgresBrokerOptions { Schema = schema, RunMigrations = false });

        var error = await Assert.ThrowsAsync<PostgresException>(() => broker.KickAsync(TaskMessage.Create("x")));
        Assert.Equal(PostgresErrorCodes.UndefinedTable, error.SqlState);

        await broker.MigrateAsync();
        await broker.KickAsync(TaskMessage.Create("x"));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_schema_newer_than_the_code_is_refused_at_start_naming_both_versions(bool runMigrations)
    {
        var schema = "new" + Guid.NewGuid().ToString("N")[..8];
        await using (var migrate = new PostgresBroker(db.ConnectionString, new PostgresBrokerOptions { Schema = schema }))
        {
            await migrate.MigrateAsync();
        }

        // A newer deploy applied a step that older code cannot run against.
        var code = new BrokerSql(new PostgresBrokerOptions()).Migrations.Count;
        await using var dataSource = db.CreateDataSource();
        await using (var bump = dataSource.CreateCommand(
            $"UPDATE \"{schema}\".taskiq_schema_versions SET version = {code + 1}, min_code_version = {code + 1} WHERE object_name = 'taskiq_messages'"))
        {
            Assert.Equal(1, await bump.ExecuteNonQueryAsync());
        }

        await using var broker = new PostgresBroker(db.ConnectionString, new PostgresBrokerOptions { Schema = schema, RunMigrations = runMigrations });
        var error = await Assert.ThrowsAsync<SchemaVersionException>(() => broker.StartAsync());
        Assert.Equal((code + 1, code, code + 1), (error.DatabaseVersion, error.CodeVersion, error.MinimumCodeVersion));
        Assert.Contains($"version {code + 1}", error.Message);
        Assert.Contains($"version {code}", error.Message);
    }

    [Fact]
    public async Task A_newer_schema_that_declares_itself_compatible_lets_older_code_run()
    {
        var schema = "compat" + Guid.NewGuid().ToString("N")[..8];
        await using (var migrate = new PostgresBroker(db.ConnectionString, new PostgresBrokerOptions { Schema = schema }))
        {
            await migrate.MigrateAsync();
        }

        await using var dataSource = db.CreateDataSource();
        await using (var bump = dataSource.CreateCommand(
            $"UPDATE \"{schema}\".taskiq_schema_versions SET version = 100, min_code_version = 2 WHERE object_name = 'taskiq_messages'"))
        {
            await bump.ExecuteNonQueryAsync();
        }

        // An old pod restarting during a rolling deploy: it starts, kicks and claims.
        await using var broker = new PostgresBroker(db.ConnectionString, new PostgresBrokerOptions { Schema = schema });
        await broker.KickAsync(TaskMessage.Create("x"));
        Assert.Single(await broker.ClaimAsync("old-pod", 10));
    }

    [Fact]
    public async Task A_version_2_table_with_rows_in_every_state_is_upgraded_in_place_and_its_rows_still_run()
    {
        var schema = "v2" + Guid.NewGuid().ToString("N")[..8];
        var options = new PostgresBrokerOptions { Schema = schema, LeaseDuration = TimeSpan.FromSeconds(1) };
        await using var dataSource = db.CreateDataSource();
        await using (var current = new PostgresBroker(dataSource, options))
        {
            await current.MigrateAsync();
        }

        // Back to exactly what versions 1 and 2 created (their own statements), with rows in every old state: due,
        // delayed, waiting for a retry, leased to a pod that died, dead.
        var steps = new BrokerSql(options).Migrations;
        await using (var downgrade = dataSource.CreateCommand(
            $"""
             DROP TABLE "{schema}".taskiq_messages;
             {steps[0].Sql}
             {steps[1].Sql}
             UPDATE "{schema}".taskiq_schema_versions SET version = 2, min_code_version = 0 WHERE object_name = 'taskiq_messages';
             """))
        {
            await downgrade.ExecuteNonQueryAsync();
        }

        await using (var rows = dataSource.CreateCommand(
            $$$"""
             INSERT INTO "{{{schema}}}".taskiq_messages (task_id, task_name, message, status, attempts, locked_by, locked_until, last_error, run_at) VALUES
                 ('v2-pending', 'add', '{"task_id":"v2-pending","task_name":"add","labels":{},"args":[1,2],"kwargs":{}}', 'pending', 0, NULL, NULL, NULL, now()),
                 ('v2-delayed', 'add', '{"task_id":"v2-delayed","task_name":"add","labels":{},"args":[5,5],"kwargs":{}}', 'pending', 0, NULL, NULL, NULL, now() + interval '2 seconds'),
                 ('v2-retry', 'add', '{"task_id":"v2-retry","task_name":"add","labels":{},"args":[6,6],"kwargs":{}}', 'pending', 1, NULL, NULL, 'first try failed', now() + interval '2 seconds'),
                 ('v2-later', 'add', '{"task_id":"v2-later","task_name":"add","labels":{},"args":[0,0],"kwargs":{}}', 'pending', 0, NULL, NULL, NULL, now() + interval '1 day'),
                 ('v2-processing', 'add', '{"task_id":"v2-processing","task_name":"add","labels":{},"args":[3,4],"kwargs":{}}', 'processing', 1, 'old-pod', now() - interval '1 minute', NULL, now()),
                 ('v2-dead', 'add', '{}', 'dead', 3, NULL, NULL, 'old reason', now());
             """))
        {
            await rows.ExecuteNonQueryAsync();
        }

        await using var broker = new PostgresBroker(dataSource, options);
        await using var results = new PostgresResultBackend(dataSource);
        await broker.MigrateAsync();
        using var worker = new TaskiqWorker(broker, new TaskRegistry().Add("add", (int a, int b) => a + b), results,
            new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50), RescueInterval = TimeSpan.FromMilliseconds(100) });
        await worker.StartAsync(CancellationToken.None);
        try
        {
            Assert.Equal(3, (await results.WaitForResultAsync("v2-pending", TimeSpan.FromSeconds(30))).GetReturnValue<int>());
            Assert.Equal(7, (await results.WaitForResultAsync("v2-processing", TimeSpan.FromSeconds(30))).GetReturnValue<int>()); // rescued, then run
            var dead = await broker.GetTaskAsync("v2-dead");
            Assert.Equal((TaskState.Discarded, "old reason"), (dead!.State, dead.LastError));
            Assert.NotNull(dead.FinishedAt);
            Assert.Equal(TaskState.Scheduled, (await broker.GetTaskAsync("v2-later"))!.State);
            Assert.Equal(10, (await results.WaitForResultAsync("v2-delayed", TimeSpan.FromSeconds(30))).GetReturnValue<int>()); // scheduled, then due
            Assert.Equal(12, (await results.WaitForResultAsync("v2-retry", TimeSpan.FromSeconds(30))).GetReturnValue<int>()); // retryable, then due
            foreach (var done in new[] { "v2-pending", "v2-processing", "v2-delayed", "v2-retry" })
            {
                Assert.Equal(TaskState.Completed, (await broker.GetTaskAsync(done))!.State);
            }
        }
        finally
        {
            await worker.StopAsync(CancellationToken.None);
        }
    }

    [Fact]
    public async Task An_index_left_invalid_by_an_interrupted_concurrent_build_is_rebuilt()
    {
        var schema = "cic" + Guid.NewGuid().ToString("N")[..8];
        await using var broker = new PostgresBroker(db.ConnectionString, new PostgresBrokerOptions { Schema = schema });
        await broker.MigrateAsync();
        await using var dataSource = db.CreateDataSource();
        async Task<bool?> FinishedIndexValidAsync()
        {
            await using var check = dataSource.CreateCommand(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'taskiq_messages_finished'");
            check.Parameters.Add(new NpgsqlParameter<string> { TypedValue = schema });
            return await check.ExecuteScalarAsync() as bool?;
        }

        Assert.True(await FinishedIndexValidAsync());
        // What a build killed half-way leaves: the index exists but is invalid, and step 7 was never recorded.
        await using (var interrupt = dataSource.CreateCommand(
            $"""
             UPDATE pg_index SET indisvalid = false WHERE indexrelid = '"{schema}".taskiq_messages_finished'::regclass;
             UPDATE "{schema}".taskiq_schema_versions SET version = 6 WHERE object_name = 'taskiq_messages';
             """))
        {
            await interrupt.ExecuteNonQueryAsync();
        }

        Assert.False(await FinishedIndexValidAsync());
        await using var again = new PostgresBroker(db.ConnectionString, new PostgresBrokerOptions { Schema = schema });
        await again.MigrateAsync();
        Assert.True(await FinishedIndexValidAsync());
    }

    [Fact]
    public async Task Queue_depth_is_exact_below_its_bound_and_estimated_past_it()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 500).Select(i => TaskMessage.Create("x", [i])).ToArray());
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 7).Select(i => TaskMessage.Create("later")).ToArray(), new KickOptions { Delay = TimeSpan.FromHours(1) });
        await using (var dead = harness.DataSource.CreateCommand(
            "UPDATE taskiq_messages SET status = 'discarded', finished_at = now() WHERE id IN (SELECT id FROM taskiq_messages WHERE queue = $1 AND task_name = 'x' LIMIT 300)"))
        {
            dead.Parameters.Add(new NpgsqlParameter<string> { TypedValue = harness.Broker.Options.Queue });
            await dead.ExecuteNonQueryAsync();
        }

        await harness.ScalarAsync<object>("ANALYZE taskiq_messages");

        var exact = await harness.Broker.GetQueueCountsAsync();
        Assert.Equal((200L, 7L, 0L, 300L), (exact[TaskState.Available], exact[TaskState.Scheduled], exact[TaskState.Running], exact[TaskState.Discarded]));
        Assert.Equal(TaskStates.All.Count, exact.Count); // every state is counted, zero or not
        var bounded = await harness.Broker.GetQueueDepthAsync(harness.Broker.Options.Queue, exactUpTo: 1000, CancellationToken.None);
        Assert.Equal(exact, bounded);
        var estimated = await harness.Broker.GetQueueDepthAsync(harness.Broker.Options.Queue, exactUpTo: 50, CancellationToken.None);
        Assert.InRange(estimated[TaskState.Discarded], 50, 3000); // the planner's estimate, never below what was counted
        Assert.InRange(estimated[TaskState.Available], 50, 3000);
        Assert.Equal(7, estimated[TaskState.Scheduled]); // below the bound: exact
        Assert.Equal(0, estimated[TaskState.Running]);
    }

    [Fact]
    public async Task Claim_query_uses_the_partial_index()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 2000).Select(i => TaskMessage.Create("x", [i])).ToArray());
        await harness.ScalarAsync<object>("ANALYZE taskiq_messages");

        await using var connection = await harness.DataSource.OpenConnectionAsync();
        await using var command = new NpgsqlCommand(
            "EXPLAIN SELECT id FROM taskiq_messages WHERE status = 'pending' AND queue = $1 AND run_at <= now() ORDER BY priority DESC, run_at, id LIMIT 10 FOR UPDATE SKIP LOCKED",
            connection);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = harness.Broker.Options.Queue });
        var plan = new List<string>();
        await using var reader = await command.ExecuteReaderAsync();
        while (await reader.ReadAsync())
        {
            plan.Add(reader.GetString(0));
        }

        Assert.Contains(plan, line => line.Contains("taskiq_messages_claim"));
    }
}
