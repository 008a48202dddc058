using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Npgsql;

namespace TaskiqPg.Tests;

public sealed class DependencyInjectionTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(15);

    [Fact]
    public async Task Host_runs_delegate_and_typed_handler_tasks_with_scoped_dependencies()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddSingleton<Greeter>();
        builder.Services.AddTaskiqPg(db.ConnectionString, o => o.Broker.Queue = "di_" + Guid.NewGuid().ToString("N")[..8])
            .AddTask("add", (int a, int b) => a + b)
            .AddTask("greet", (string name, Greeter greeter) => greeter.Greet(name))
            .AddHandler<SendEmail, EmailArgs, EmailReceipt>()
            .AddWorker(w => w.MaxConcurrentTasks = 4);
        using var host = builder.Build();
        await host.StartAsync();
        var client = host.Services.GetRequiredService<TaskiqClient>();

        var sum = await client.KickAsync<int>("add", [20, 22]);
        var greeting = await client.KickAsync<string>("greet", ["ada"]);
        var receipt = await client.KickAsync<SendEmail, EmailArgs, EmailReceipt>(new EmailArgs("ada@example.com", "Hello"));

        Assert.Equal(42, await sum.WaitForResultAsync(Bound));
        Assert.Equal("Hello, ada!", await greeting.WaitForResultAsync(Bound));
        var sent = await receipt.WaitForResultAsync(Bound);
        Assert.Equal("ada@example.com", sent.To);
        Assert.Equal(receipt.TaskId, sent.TaskId);
        Assert.Equal(4, host.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<TaskiqPgOptions>>().Value.Worker.MaxConcurrentTasks);

        await host.StopAsync();
        var broker = host.Services.GetRequiredService<PostgresBroker>();
        host.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await broker.DataSource.OpenConnectionAsync());
    }

    [Fact]
    public async Task Host_borrowing_the_applications_data_source_never_disposes_it()
    {
        var dataSource = db.CreateDataSource();
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddSingleton(dataSource);
        builder.Services.AddTaskiqPg(sp => sp.GetRequiredService<NpgsqlDataSource>(), o => o.Broker.Queue = "borrow_di")
            .AddTask("ping", () => "pong")
            .AddWorker();
        using (var host = builder.Build())
        {
            await host.StartAsync();
            var client = host.Services.GetRequiredService<TaskiqClient>();
            Assert.Same(dataSource, client.Broker.DataSource);
            Assert.Same(dataSource, client.ResultBackend!.DataSource);
            Assert.Equal("pong", await (await client.KickAsync<string>("ping")).WaitForResultAsync(Bound));
            await host.StopAsync();
        }

        await using var command = dataSource.CreateCommand("SELECT 1");
        Assert.Equal(1, await command.ExecuteScalarAsync());
    }

    [Fact]
    public void Registering_two_tasks_with_one_name_fails_clearly()
    {
        var registry = new TaskRegistry().Add("dup", () => 1);
        var error = Assert.Throws<ArgumentException>(() => registry.Add("dup", () => 2));
        Assert.Contains("'dup' is already registered", error.Message);
    }

    public sealed class Greeter
    {
        public string Greet(string name) => $"Hello, {name}!";
    }

    public sealed record EmailArgs(string To, string Subject);

    public sealed record EmailReceipt(string To, string TaskId);

    [TaskName("send_email")]
    public sealed class SendEmail(Greeter greeter) : ITaskHandler<EmailArgs, EmailReceipt>
    {
        public ValueTask<EmailReceipt> HandleAsync(EmailArgs args, TaskContext context, CancellationToken cancellationToken)
        {
            _ = greeter.Greet(args.To);
            return ValueTask.FromResult(new EmailReceipt(args.To, context.TaskId));
        }
    }
}

/// <summary>Registrations across several calls and the host's shutdown budget (issue 10).</summary>
public sealed class RegistrationMergeTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(15);

    [Fact]
    public async Task Tasks_of_a_second_AddTaskiqPg_call_are_registered_and_a_second_AddWorker_starts_no_second_worker()
    {
        var queue = "merge_" + Guid.NewGuid().ToString("N")[..8];
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddTaskiqPg(db.ConnectionString, o => o.Broker.Queue = queue).AddTask("first", () => 1).AddWorker();
        builder.Services.AddTaskiqPg(db.ConnectionString).AddTask("second", () => 2).AddWorker(w => w.MaxConcurrentTasks = 3);
        using var host = builder.Build();

        Assert.Single(host.Services.GetServices<IHostedService>().OfType<TaskiqWorker>());
        Assert.Equal(["first", "second"], host.Services.GetRequiredService<TaskRegistry>().Tasks.Select(t => t.Name).Order());
        await host.StartAsync();
        var client = host.Services.GetRequiredService<TaskiqClient>();
        Assert.Equal(queue, client.Broker.Options.Queue);
        Assert.Equal(1, await (await client.KickAsync<int>("first")).WaitForResultAsync(Bound));
        Assert.Equal(2, await (await client.KickAsync<int>("second")).WaitForResultAsync(Bound));
        Assert.Equal(3, host.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<TaskiqPgOptions>>().Value.Worker.MaxConcurrentTasks);
        await host.StopAsync();
    }

    [Fact]
    public void A_second_call_with_another_connection_string_is_refused_with_what_to_do()
    {
        var services = new ServiceCollection();
        services.AddTaskiqPg(db.ConnectionString);
        var error = Assert.Throws<InvalidOperationException>(() => services.AddTaskiqPg(db.ConnectionString + ";Application Name=other"));
        Assert.Contains("AddKeyedTaskiqPg", error.Message);
    }

    [Fact]
    public void AddWorker_raises_the_hosts_shutdown_timeout_above_the_workers_own()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddTaskiqPg(db.ConnectionString).AddWorker(w => w.ShutdownTimeout = TimeSpan.FromSeconds(45));
        using var host = builder.Build();

        var hostTimeout = host.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<HostOptions>>().Value.ShutdownTimeout;
        Assert.True(hostTimeout >= TimeSpan.FromSeconds(45) + TimeSpan.FromSeconds(20), $"host shutdown timeout {hostTimeout}");
    }

    [Fact]
    public async Task A_task_running_28_s_at_stop_under_a_default_generic_host_stores_its_result_once()
    {
        var queue = "drain_" + Guid.NewGuid().ToString("N")[..8];
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var runs = 0;
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddTaskiqPg(db.ConnectionString, o => o.Broker.Queue = queue)
            .AddTask("long", async () =>
            {
                Interlocked.Increment(ref runs);
                started.TrySetResult();
                await Task.Delay(TimeSpan.FromSeconds(28)); // ignores the stop, as real work does until it is done
                return "finished";
            })
            .AddWorker();
        var host = builder.Build();
        await host.StartAsync();
        var client = host.Services.GetRequiredService<TaskiqClient>();
        var handle = await client.KickAsync<string>("long");
        await started.Task.WaitAsync(Bound);

        await host.StopAsync(); // default options everywhere: the host's own 30 s would end mid-drain
        host.Dispose();

        await using var broker = new PostgresBroker(db.ConnectionString, new PostgresBrokerOptions { Queue = queue });
        await using var results = new PostgresResultBackend(db.ConnectionString);
        Assert.Equal("finished", (await results.GetResultAsync(handle.TaskId)).GetReturnValue<string>());
        Assert.Equal(TaskState.Completed, (await broker.GetTaskAsync(handle.TaskId))!.State); // settled: acked, not left processing
        Assert.Equal(1, runs);
    }
}
