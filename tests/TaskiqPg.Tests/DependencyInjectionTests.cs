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
