using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using Microsoft.Extensions.DependencyInjection;

namespace TaskiqPg.AppHost.Tests;

/// <summary>
/// The "tasks" queue resource of the real AppHost: its live figures in the resource snapshot, and every dashboard
/// command run through Aspire's command service (what the dashboard and <c>aspire resource tasks &lt;command&gt;</c> call),
/// each checked in the database.
/// </summary>
public sealed class QueueResourceTests(AppHostFixture fixture) : IClassFixture<AppHostFixture>, IAsyncLifetime
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);
    private PostgresBroker _broker = null!;

    public async ValueTask InitializeAsync()
        => _broker = new PostgresBroker((await fixture.App.GetConnectionStringAsync("tasks"))!, new PostgresBrokerOptions { RunMigrations = false });

    public async ValueTask DisposeAsync() => await _broker.DisposeAsync();

    private ResourceCommandService Commands => fixture.App.Services.GetRequiredService<ResourceCommandService>();

    private async Task<ExecuteCommandResult> RunAsync(string command, params (string Name, string Value)[] arguments)
    {
        var inputs = arguments.Select(a => new InteractionInput { Name = a.Name, InputType = InputType.Text, Value = a.Value }).ToList();
        return await Commands.ExecuteCommandAsync("tasks", command, new InteractionInputCollection(inputs));
    }

    /// <summary>Waits for a snapshot of the resource that satisfies <paramref name="condition"/> (published every refresh).</summary>
    private async Task<CustomResourceSnapshot> SnapshotAsync(Func<CustomResourceSnapshot, bool> condition, string what)
    {
        using var timeout = new CancellationTokenSource(Bound);
        try
        {
            await foreach (var update in fixture.App.ResourceNotifications.WatchAsync(timeout.Token))
            {
                if (update.Resource.Name == "tasks" && condition(update.Snapshot))
                {
                    return update.Snapshot;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }

        throw new TimeoutException($"The tasks resource never showed {what} within {Bound.TotalSeconds} s.");
    }

    private static string? Property(CustomResourceSnapshot snapshot, string name)
        => snapshot.Properties.FirstOrDefault(p => p.Name == "taskiq." + name)?.Value?.ToString();

    private async Task<TaskRecord> TaskAsync(string taskId, Func<TaskRecord, bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + Bound;
        while (true)
        {
            if (await _broker.GetTaskAsync(taskId) is { } record && condition(record))
            {
                return record;
            }

            Assert.True(DateTime.UtcNow < deadline, $"task {taskId} never {what}");
            await Task.Delay(100);
        }
    }

    [Fact]
    public async Task The_queue_resource_shows_live_figures_and_its_workers()
    {
        var taskId = await fixture.KickAsync("add", [1, 2]);
        await fixture.ResultAsync(taskId);

        var snapshot = await SnapshotAsync(s => s.State?.Text == "Running" && Property(s, "completed last minute") is { } n && int.Parse(n) >= 1,
            "a task completed in the last minute");
        Assert.Equal("default", Property(snapshot, "queue"));
        Assert.Equal("no", Property(snapshot, "paused"));
        await SnapshotAsync(s => Property(s, "live workers") == "2", "the two worker replicas as live workers");
        Assert.NotNull(Property(snapshot, "oldest due"));
        Assert.Equal("TaskiqQueue", snapshot.ResourceType);
    }

    [Fact]
    public async Task Pause_holds_kicked_tasks_until_resume_from_the_command_service()
    {
        var paused = await RunAsync(TaskiqQueueBuilderExtensions.Commands.Pause);
        Assert.True(paused.Success, paused.Message);
        try
        {
            Assert.NotNull(await _broker.GetQueuePausedAtAsync());
            await SnapshotAsync(s => s.State?.Text == "Paused", "the Paused state");
            var taskId = await fixture.KickAsync("add", [2, 3]);
            // The monitor's next refresh sees it queued while the queue is paused.
            await SnapshotAsync(s => Property(s, "available") is { } n && int.Parse(n) >= 1, "the kicked task waiting");
            Assert.Equal(TaskState.Available, (await _broker.GetTaskAsync(taskId))!.State);
            var pause = (await SnapshotAsync(s => s.State?.Text == "Paused", "the Paused state")).Commands.Single(c => c.Name == TaskiqQueueBuilderExtensions.Commands.Pause);
            Assert.Equal(ResourceCommandState.Disabled, pause.State); // already paused

            var resumed = await RunAsync(TaskiqQueueBuilderExtensions.Commands.Resume);
            Assert.True(resumed.Success, resumed.Message);
            Assert.Equal(5, (await fixture.ResultAsync(taskId)).GetProperty("returnValue").GetInt32());
            Assert.Null(await _broker.GetQueuePausedAtAsync());
        }
        finally
        {
            await _broker.ResumeQueueAsync();
        }
    }

    [Fact]
    public async Task Kick_retry_and_purge_dead_letters_and_cancel_queued_from_the_command_service()
    {
        // Kick: a task no worker knows is dead-lettered with its reason.
        var kicked = await RunAsync(TaskiqQueueBuilderExtensions.Commands.Kick, ("task", "no_such_task"), ("args", "[1, \"x\"]"), ("delay", "0"));
        Assert.True(kicked.Success, kicked.Message);
        var taskId = kicked.Data!.Value;
        var dead = await TaskAsync(taskId, r => r.State == TaskState.Discarded, "was dead-lettered");
        Assert.Contains("no_such_task", dead.LastError);
        await SnapshotAsync(s => Property(s, "discarded") is { } n && int.Parse(n) >= 1
                                 && s.Commands.Single(c => c.Name == TaskiqQueueBuilderExtensions.Commands.RetryDeadLetters).State == ResourceCommandState.Enabled,
            "a dead letter with Retry enabled");

        // Retry: back to available with attempts reset, so a worker tries it again (and dead-letters it again).
        var retried = await RunAsync(TaskiqQueueBuilderExtensions.Commands.RetryDeadLetters);
        Assert.True(retried.Success, retried.Message);
        Assert.StartsWith("1 dead letter", retried.Message);
        await TaskAsync(taskId, r => r.State == TaskState.Discarded && r.History.Count(h => h.Outcome == "failed") == 2, "ran again after the retry");

        // Purge: the dead letter is gone.
        var purged = await RunAsync(TaskiqQueueBuilderExtensions.Commands.PurgeDeadLetters);
        Assert.True(purged.Success, purged.Message);
        Assert.Null(await _broker.GetTaskAsync(taskId));
        Assert.Equal(0, (await _broker.GetQueueStatisticsAsync()).Counts[TaskState.Discarded]);

        // Cancel all queued: three delayed kicks, cancelled before they are due; their waiters get the cancelled result.
        var delayed = new List<string>();
        for (var i = 0; i < 3; i++)
        {
            var result = await RunAsync(TaskiqQueueBuilderExtensions.Commands.Kick, ("task", "add"), ("args", $"[{i}, 1]"), ("delay", "3600"));
            Assert.True(result.Success, result.Message);
            delayed.Add(result.Data!.Value);
        }

        foreach (var id in delayed)
        {
            Assert.Equal(TaskState.Scheduled, (await _broker.GetTaskAsync(id))!.State);
        }

        var cancelled = await RunAsync(TaskiqQueueBuilderExtensions.Commands.CancelQueued);
        Assert.True(cancelled.Success, cancelled.Message);
        Assert.StartsWith("3 queued task(s) cancelled", cancelled.Message);
        foreach (var id in delayed)
        {
            Assert.Equal(TaskState.Cancelled, (await _broker.GetTaskAsync(id))!.State);
            Assert.True((await fixture.ResultAsync(id)).GetProperty("isError").GetBoolean());
        }
    }

    [Fact]
    public async Task The_local_database_exposes_connection_properties_a_non_dotnet_client_can_use()
    {
        var model = fixture.App.Services.GetRequiredService<DistributedApplicationModel>();
        var db = model.Resources.OfType<IResourceWithConnectionString>().Single(r => r.Name == "db");
        var properties = new Dictionary<string, string>();
        foreach (var (name, expression) in db.GetConnectionProperties())
        {
            properties[name] = (await expression.GetValueAsync(CancellationToken.None))!;
        }

        Assert.Equal(["Database", "Host", "Password", "Port", "Uri", "Username"], properties.Keys.Order());
        // The queue resource forwards them.
        var queue = model.Resources.OfType<TaskiqQueueResource>().Single();
        Assert.Equal(properties.Keys.Order(), queue.GetConnectionProperties().Select(p => p.Key).Order());

        // psql (libpq, not .NET) connects with the individual properties, passed in its environment (never on argv).
        var psql = new System.Diagnostics.ProcessStartInfo(Directory.GetFiles("/usr/lib/postgresql", "psql", SearchOption.AllDirectories).First())
        {
            RedirectStandardOutput = true, RedirectStandardError = true,
        };
        psql.ArgumentList.Add("-tAc");
        psql.ArgumentList.Add("SELECT current_database() || ' ' || current_user");
        (psql.Environment["PGHOST"], psql.Environment["PGPORT"], psql.Environment["PGUSER"], psql.Environment["PGPASSWORD"], psql.Environment["PGDATABASE"])
            = (properties["Host"], properties["Port"], properties["Username"], properties["Password"], properties["Database"]);
        using var process = System.Diagnostics.Process.Start(psql)!;
        var output = await process.StandardOutput.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.True(process.ExitCode == 0, await process.StandardError.ReadToEndAsync());
        Assert.Equal($"{properties["Database"]} {properties["Username"]}", output.Trim());

        // The URI carries the same parts.
        var uri = new Uri(properties["Uri"]);
        Assert.Equal(("postgresql", properties["Host"], int.Parse(properties["Port"]), "/" + properties["Database"]),
            (uri.Scheme, uri.Host, uri.Port, uri.AbsolutePath));
        Assert.Equal($"{properties["Username"]}:{Uri.EscapeDataString(properties["Password"])}", uri.UserInfo);
    }

    [Theory]
    [InlineData("", "[]", "0", "validation")] // a required input: Aspire's own argument validation refuses it
    [InlineData("add", "{\"a\": 1}", "0", "JSON array")]
    [InlineData("add", "[1,", "0", "not valid JSON")]
    [InlineData("add", "[1, 2]", "-5", "Delay")]
    public async Task A_kick_with_bad_input_fails_with_a_clear_message_and_kicks_nothing(string task, string args, string delay, string expected)
    {
        // Counted without the sample scheduler's tasks: it kicks `whoami` every 10 s into the same queue.
        async Task<long> KickedByOthersThanTheSchedulerAsync()
        {
            await using var count = _broker.DataSource.CreateCommand("SELECT count(*) FROM taskiq_messages WHERE task_name NOT IN ('whoami', 'report')");
            return (long)(await count.ExecuteScalarAsync())!;
        }

        var before = await KickedByOthersThanTheSchedulerAsync();
        var result = await RunAsync(TaskiqQueueBuilderExtensions.Commands.Kick, ("task", task), ("args", args), ("delay", delay));
        Assert.False(result.Success);
        Assert.Contains(expected, result.Message);
        Assert.Equal(before, await KickedByOthersThanTheSchedulerAsync());
    }
}
