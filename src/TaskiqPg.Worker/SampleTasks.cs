using TaskiqPg;

namespace TaskiqPg.Worker;

/// <summary>The sample tasks: a computation, an HTTP call, progress reporting, a flaky task and a long one.</summary>
public static class SampleTasks
{
    /// <summary>Registers the sample tasks on a TaskiqPg registration.</summary>
    public static TaskiqPgBuilder AddSampleTasks(this TaskiqPgBuilder taskiq) => taskiq
        .AddTask("add", (int a, int b) => a + b)
        .AddTask("whoami", (TaskContext context, TaskiqWorker worker) => new WorkerInfo(worker.WorkerId, context.Attempt))
        .AddTask("http_status", async (string url, IHttpClientFactory http, CancellationToken ct) =>
        {
            using var response = await http.CreateClient("samples").GetAsync(url, ct);
            return (int)response.StatusCode;
        })
        .AddTask("report", async (int steps, TaskContext context, CancellationToken ct) =>
        {
            for (var step = 1; step <= steps; step++)
            {
                await Task.Delay(100, ct);
                await context.SetProgressAsync(new { step, of = steps });
            }

            return steps;
        })
        .AddTask("count_tasks", async (Npgsql.NpgsqlDataSource database, CancellationToken ct) =>
        {
            // Uses the app's one data source: its Npgsql span lands inside this task's "process" span.
            await using var command = database.CreateCommand("SELECT count(*) FROM taskiq_messages");
            return (long)(await command.ExecuteScalarAsync(ct))!;
        })
        .AddTask("flaky", (int failures, TaskContext context) => context.Attempt <= failures
            ? throw new InvalidOperationException($"failing on purpose (attempt {context.Attempt} of {context.MaxAttempts})")
            : context.Attempt)
        .AddTask("sleep", async (int milliseconds, TaskiqWorker worker, CancellationToken ct) =>
        {
            await Task.Delay(milliseconds, ct);
            return new WorkerInfo(worker.WorkerId, 0);
        });

    /// <summary>The sample static schedules: a heartbeat every 10 seconds and a nightly report in Berlin time.</summary>
    public static TaskiqPgBuilder AddSampleSchedules(this TaskiqPgBuilder taskiq) => taskiq
        .AddSchedule(new ScheduleDefinition { TaskName = "whoami", Cron = "*/10 * * * * *" })
        .AddSchedule(new ScheduleDefinition { TaskName = "report", Cron = "0 30 2 * * *", TimeZone = "Europe/Berlin", Args = [5] });

    /// <summary>Which worker ran a task, and on which attempt.</summary>
    public sealed record WorkerInfo(string WorkerId, int Attempt);
}
