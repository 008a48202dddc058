using System.Text.Json;
using TaskiqPg;

namespace TaskiqPg.Worker;

/// <summary>HTTP front door of the api role: kick a task, read its state and result.</summary>
public static class ProducerApi
{
    /// <summary>The body of <c>POST /tasks/{name}</c>.</summary>
    public sealed record KickRequest(JsonElement[]? Args, Dictionary<string, JsonElement>? Kwargs, double? DelaySeconds, int? Priority, int? MaxAttempts);

    /// <summary>The body of <c>POST /schedules</c>: one of cron, intervalSeconds or runAt.</summary>
    public sealed record ScheduleRequest(string TaskName, string? Cron, string? TimeZone, double? IntervalSeconds, DateTimeOffset? RunAt, JsonElement[]? Args);

    /// <summary>Maps <c>POST /tasks/{name}</c>, <c>GET /tasks/{id}</c>, <c>GET /tasks/{id}/result</c> and <c>GET /queue</c>.</summary>
    public static WebApplication MapProducerApi(this WebApplication app)
    {
        app.MapPost("/tasks/{name}", async (string name, KickRequest? request, TaskiqClient client, CancellationToken ct) =>
        {
            var options = new KickOptions
            {
                Delay = request?.DelaySeconds is { } d ? TimeSpan.FromSeconds(d) : null,
                Priority = request?.Priority ?? 0,
                MaxAttempts = request?.MaxAttempts,
            };
            try
            {
                var handle = await client.KickAsync(name, request?.Args?.Cast<object?>(),
                    request?.Kwargs?.ToDictionary(kv => kv.Key, kv => (object?)kv.Value), options, ct);
                return Results.Accepted($"/tasks/{handle.TaskId}", new { taskId = handle.TaskId });
            }
            catch (ArgumentException ex)
            {
                return Results.BadRequest(new { error = ex.Message });
            }
        });

        app.MapGet("/tasks/{id}", async (string id, TaskiqClient client, CancellationToken ct) =>
        {
            var state = await client.Broker.GetTaskAsync(id, ct);
            TaskResult? result = null;
            if (state is null || state.IsFinished)
            {
                try
                {
                    result = await client.ResultBackend!.GetResultAsync(id, ct);
                }
                catch (TaskResultNotFoundException)
                {
                }
            }

            if (state is null && result is null)
            {
                return Results.NotFound(new { taskId = id, status = "unknown" });
            }

            return Results.Ok(new
            {
                taskId = id,
                status = state is not null ? state.State.ToString().ToLowerInvariant() : result!.IsError ? "failed" : "completed",
                attempts = state?.Attempts,
                lastError = state?.LastError,
                lockedBy = state?.Worker,
                result = result is null ? (object?)null : Describe(result),
            });
        });

        app.MapGet("/tasks/{id}/result", async (string id, double? timeoutSeconds, TaskiqClient client, CancellationToken ct) =>
        {
            try
            {
                var result = await client.ResultBackend!.WaitForResultAsync(id, TimeSpan.FromSeconds(timeoutSeconds ?? 30), ct);
                return Results.Ok(Describe(result));
            }
            catch (TaskResultTimeoutException ex)
            {
                return Results.Json(new { error = ex.Message }, statusCode: StatusCodes.Status504GatewayTimeout);
            }
        });

        app.MapGet("/schedules", async (PostgresScheduleSource schedules, CancellationToken ct) =>
            Results.Ok((await schedules.ListSchedulesAsync(ct)).Select(s => new
            {
                id = s.Id,
                taskName = s.Definition.TaskName,
                kind = s.Definition.Kind,
                cron = s.Definition.Cron,
                timeZone = s.Definition.TimeZone,
                intervalSeconds = s.Definition.Interval?.TotalSeconds,
                runAt = s.Definition.RunAt,
                isStatic = s.IsStatic,
                enabled = s.Enabled,
                done = s.Done,
                disabledReason = s.DisabledReason,
                lastFireAt = s.LastFireAt,
            })));

        app.MapPost("/schedules", async (ScheduleRequest request, PostgresScheduleSource schedules, CancellationToken ct) =>
        {
            try
            {
                var id = await schedules.AddScheduleAsync(new ScheduleDefinition
                {
                    TaskName = request.TaskName,
                    Cron = request.Cron,
                    TimeZone = request.TimeZone,
                    Interval = request.IntervalSeconds is { } s ? TimeSpan.FromSeconds(s) : null,
                    RunAt = request.RunAt,
                    Args = request.Args?.Cast<object?>().ToList(),
                }, ct);
                return Results.Created($"/schedules/{id}", new { id });
            }
            catch (ScheduleValidationException ex)
            {
                return Results.BadRequest(new { field = ex.ParamName, error = ex.Message });
            }
        });

        app.MapDelete("/schedules/{id:guid}", async (Guid id, PostgresScheduleSource schedules, CancellationToken ct) =>
            await schedules.DeleteScheduleAsync(id, ct) ? Results.NoContent() : Results.NotFound());

        app.MapGet("/queue", async (TaskiqClient client, CancellationToken ct) => Results.Ok(await client.Broker.GetQueueCountsAsync(ct)));
        return app;
    }

    private static object Describe(TaskResult result) => new
    {
        isError = result.IsError,
        returnValue = result.ReturnValue,
        executionTime = result.ExecutionTime,
        error = result.Error,
    };
}
