using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace TaskiqPg.Tests;

public sealed class SecurityTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    [Fact]
    public void The_listen_connection_password_never_appears_in_the_options_text_or_their_errors()
    {
        const string secret = "s3cr3t-Listen-pw";
        var listen = $"Host=db.internal;Port=5432;Username=app;Password={secret};Database=queue";
        string[] texts =
        [
            new PostgresBrokerOptions { ListenConnectionString = listen }.ToString(),
            new PostgresResultBackendOptions { ListenConnectionString = listen }.ToString(),
            new PostgresScheduleSourceOptions { ListenConnectionString = listen }.ToString(),
            new TaskiqPgOptions { Broker = new PostgresBrokerOptions { ListenConnectionString = listen } }.Broker.ToString(),
        ];
        foreach (var text in texts)
        {
            Assert.DoesNotContain(secret, text);
            Assert.Contains("Host=db.internal", text); // the rest is still shown, in the record's own format
            Assert.Contains("Password=***", text);
            Assert.Contains("PollOnly = False", text);
        }

        Assert.Equal("PostgresBrokerOptions { ", new PostgresBrokerOptions().ToString()[..24]);

        // A listen connection string that does not parse is refused at construction, without repeating it.
        using var dataSource = db.CreateDataSource();
        var error = Assert.Throws<ArgumentException>(() => new PostgresBroker(dataSource, new PostgresBrokerOptions { ListenConnectionString = $"Password={secret};No Such Keyword=1" }));
        Assert.Equal(nameof(PostgresBrokerOptions.ListenConnectionString), error.ParamName);
        Assert.DoesNotContain(secret, error.ToString());
    }

    [Fact]
    public async Task The_password_never_appears_in_logs_exceptions_or_traces_even_through_an_outage()
    {
        var target = new NpgsqlConnectionStringBuilder(db.ConnectionString);
        var password = target.Password!;
        Assert.False(string.IsNullOrEmpty(password));
        await using var proxy = new TcpProxy(target.Host!, target.Port);
        var connectionString = new NpgsqlConnectionStringBuilder(db.ConnectionString) { Port = proxy.Port, Timeout = 2 }.ConnectionString;

        var captured = new ConcurrentQueue<string>();
        using var loggerFactory = LoggerFactory.Create(b => b.SetMinimumLevel(LogLevel.Trace).AddProvider(new CapturingProvider(captured)));
        using var listener = new ActivityListener
        {
            ShouldListenTo = _ => true,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = a => captured.Enqueue(a.DisplayName + " " + string.Join(";", a.TagObjects.Select(t => $"{t.Key}={t.Value}"))),
        };
        ActivitySource.AddActivityListener(listener);

        var queue = "sec" + Guid.NewGuid().ToString("N")[..6];
        await using var broker = new PostgresBroker(connectionString, new PostgresBrokerOptions { Queue = queue }, loggerFactory);
        await using var results = new PostgresResultBackend(connectionString, loggerFactory: loggerFactory);
        var registry = new TaskRegistry().Add("boom", (Action)(() => throw new InvalidOperationException("handler failed")));
        using var worker = new TaskiqWorker(broker, registry, results, new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(100) },
            loggerFactory: loggerFactory);
        await worker.StartAsync(CancellationToken.None);
        var client = new TaskiqClient(broker, results);
        var failed = await client.KickAsync("boom", options: new KickOptions { MaxAttempts = 1 });
        await Assert.ThrowsAsync<TaskExecutionException>(() => failed.WaitForResultAsync(Bound));

        // An outage: every loop and the listener fail and log; a kick fails with an exception we keep.
        proxy.Cut();
        var kickError = await Assert.ThrowsAnyAsync<Exception>(() => client.KickAsync("boom"));
        captured.Enqueue(kickError.ToString());
        await Eventually.TrueAsync(() => captured.Any(l => l.Contains("LISTEN connection failed")), Bound, "the listener failure is logged");
        await Eventually.TrueAsync(() => captured.Any(l => l.Contains("database call failed")), Bound, "a worker loop failure is logged");
        proxy.Restore();
        await Eventually.TrueAsync(() => broker.IsListening, Bound, "the listener comes back");

        // A connection string with a wrong password: the error names the failure, not the secret.
        var wrong = new NpgsqlConnectionStringBuilder(db.ConnectionString) { Password = "Wr0ng-" + password }.ConnectionString;
        await using (var bad = new PostgresBroker(wrong, loggerFactory: loggerFactory))
        {
            captured.Enqueue((await Assert.ThrowsAnyAsync<Exception>(() => bad.KickAsync(TaskMessage.Create("x")))).ToString());
        }

        await worker.StopAsync(CancellationToken.None);

        Assert.NotEmpty(captured);
        var leaks = captured.Where(line => line.Contains(password, StringComparison.Ordinal)).ToArray();
        Assert.True(leaks.Length == 0, "the password leaked into:\n" + string.Join("\n---\n", leaks));
    }

    [Fact]
    public async Task Workers_and_producers_run_the_whole_cycle_as_a_least_privilege_role()
    {
        var suffix = Guid.NewGuid().ToString("N")[..8];
        var schema = "lp_" + suffix;
        var role = "taskiq_app_" + suffix;
        var rolePassword = "pw-" + Guid.NewGuid().ToString("N");

        // The owner (here the superuser) migrates; the application role only gets the grants documented in README.
        await using (var owner = new PostgresBroker(db.ConnectionString, new PostgresBrokerOptions { Schema = schema }))
        await using (var ownerResults = new PostgresResultBackend(db.ConnectionString, new PostgresResultBackendOptions { Schema = schema }))
        await using (var ownerSchedules = new PostgresScheduleSource(db.ConnectionString, new PostgresScheduleSourceOptions { Schema = schema }))
        {
            await owner.MigrateAsync();
            await ownerResults.MigrateAsync();
            await ownerSchedules.MigrateAsync();
            await using var grant = owner.DataSource.CreateCommand(
                $"""
                 CREATE ROLE {role} LOGIN PASSWORD '{rolePassword}';
                 GRANT USAGE ON SCHEMA {schema} TO {role};
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role};
                 GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role};
                 """);
            await grant.ExecuteNonQueryAsync();
        }

        var asApp = new NpgsqlConnectionStringBuilder(db.ConnectionString) { Username = role, Password = rolePassword }.ConnectionString;
        await using var dataSource = NpgsqlDataSource.Create(asApp);
        await using var broker = new PostgresBroker(dataSource, new PostgresBrokerOptions { Schema = schema, RunMigrations = false });
        await using var results = new PostgresResultBackend(dataSource, new PostgresResultBackendOptions { Schema = schema, RunMigrations = false });
        await using var schedules = new PostgresScheduleSource(dataSource, new PostgresScheduleSourceOptions { Schema = schema, RunMigrations = false });
        var registry = new TaskRegistry().Add("add", (int a, int b) => a + b);
        using var worker = new TaskiqWorker(broker, registry, results, new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(100) });
        using var scheduler = new TaskiqScheduler(schedules, broker, new TaskiqSchedulerOptions { RefreshInterval = TimeSpan.FromMilliseconds(300) });
        await worker.StartAsync(CancellationToken.None);
        await scheduler.StartAsync(CancellationToken.None);

        var handle = await new TaskiqClient(broker, results).KickAsync<int>("add", [2, 40]);
        Assert.Equal(42, await handle.WaitForResultAsync(Bound));
        var scheduled = await schedules.AddScheduleAsync(new ScheduleDefinition { TaskName = "add", RunAt = DateTimeOffset.UtcNow, Args = [1, 1] });
        await Eventually.TrueAsync(async () => (await schedules.GetFiresAsync(scheduled)).Count == 1, Bound, "the scheduler fires as the app role");
        Assert.Equal(0, (await results.PruneExpiredAsync()));

        // And the role really is limited: it cannot create the schema objects itself.
        var error = await Assert.ThrowsAsync<PostgresException>(() => new PostgresBroker(dataSource, new PostgresBrokerOptions { Schema = schema, MessagesTable = "other" }).MigrateAsync());
        Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, error.SqlState);

        await scheduler.StopAsync(CancellationToken.None);
        await worker.StopAsync(CancellationToken.None);
    }
}
