using System.Globalization;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;
using Quartz;

// One node of a Quartz.NET cluster (clustered ADO.NET job store on PostgreSQL), the scheduler peer of the TaskiqPg
// benchmark. Usage: TASKIQPG_BENCH_PEER_CONNECTION=<npgsql connection string> TaskiqPg.Bench.Quartz <node> <schedules>;
// the connection string carries the password, so it comes by environment. Node "0" also schedules <schedules> jobs,
// each on an every-second cron trigger. Every execution writes (trigger, scheduled fire time, actual fire time, node)
// to quartz_bench_fires. Prints "ready" once started; stops on end of standard input (the benchmark closes it).
var connectionString = Environment.GetEnvironmentVariable("TASKIQPG_BENCH_PEER_CONNECTION")
                       ?? throw new InvalidOperationException("TASKIQPG_BENCH_PEER_CONNECTION is not set.");
var node = args[0];
var schedules = int.Parse(args[1], CultureInfo.InvariantCulture);
await using var dataSource = NpgsqlDataSource.Create(connectionString);
FireJob.DataSource = dataSource;
FireJob.Node = node;

var services = new ServiceCollection();
services.AddLogging();
services.AddQuartz(quartz =>
{
    quartz.ConfigureScheduler(options =>
    {
        options.InstanceName = "taskiqpg-bench";
        options.InstanceId = $"node-{node}";
    });
    quartz.UseDefaultThreadPool(10);
    quartz.UsePersistentStore(store =>
    {
        store.UsePostgres(connectionString);
        store.UseClustering(clustering => clustering.CheckinInterval = TimeSpan.FromSeconds(5));
        store.ProvisionSchema();
    });
});
await using var provider = services.BuildServiceProvider();
var scheduler = await provider.GetRequiredService<ISchedulerFactory>().GetScheduler();
await scheduler.Start();
if (node == "0")
{
    for (var i = 0; i < schedules; i++)
    {
        var job = JobBuilder.Create<FireJob>().WithIdentity($"job{i}").Build();
        var trigger = TriggerBuilder.Create().WithIdentity($"trigger{i}").WithCronSchedule("* * * * * ?").Build();
        await scheduler.ScheduleJob(job, [trigger], new ScheduleJobOptions { Replace = true });
    }
}

Console.WriteLine("ready");
await Console.In.ReadToEndAsync();
await scheduler.Shutdown(waitForJobsToComplete: true);
return 0;

/// <summary>Records its own execution: which trigger, for which instant, when it actually ran, on which node.</summary>
public sealed class FireJob : IJob
{
    public static NpgsqlDataSource DataSource = null!;
    public static string Node = "";

    public async ValueTask Execute(IJobExecutionContext context, CancellationToken cancellationToken)
    {
        await using var insert = DataSource.CreateCommand(
            "INSERT INTO quartz_bench_fires (schedule, fire_at, fired_at, node) VALUES ($1, $2, $3, $4)");
        insert.Parameters.Add(new NpgsqlParameter<string> { TypedValue = context.Trigger.Key.Name });
        insert.Parameters.Add(new NpgsqlParameter<DateTime> { TypedValue = context.ScheduledFireTimeUtc!.Value.UtcDateTime });
        insert.Parameters.Add(new NpgsqlParameter<DateTime> { TypedValue = context.FireTimeUtc.UtcDateTime });
        insert.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Node });
        await insert.ExecuteNonQueryAsync(cancellationToken);
    }
}
