using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;

namespace TaskiqPg.Dashboard;

/// <summary>The JSON API behind the task browser: reads through the core's cheap statistics and listing calls, and actions.</summary>
internal sealed class DashboardApi(TaskiqDashboardOptions options)
{
    /// <summary>Header every action must carry: a cross-site form cannot set it, so a page elsewhere cannot act for a user.</summary>
    public const string ActionHeader = "X-Taskiq-Dashboard";

    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web)
    {
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.CamelCase) },
    };

    private static readonly TaskState[] States = Enum.GetValues<TaskState>();

    public void Map(RouteGroupBuilder api)
    {
        api.MapGet("/overview", OverviewAsync);
        api.MapGet("/tasks", ListTasksAsync);
        api.MapGet("/tasks/{taskId}", GetTaskAsync);
        api.MapGet("/schedules", ListSchedulesAsync);

        var actions = api.MapGroup("/").AddEndpointFilter(GuardActionAsync);
        actions.MapPost("/tasks/{taskId}/cancel", async (string taskId, HttpContext http, CancellationToken ct) =>
        {
            var result = await Client(http).CancelAsync(taskId, ct);
            return result.Outcome switch
            {
                CancelOutcome.Cancelled => Done("Cancelled."),
                CancelOutcome.Requested => Done("Cancel requested: the running handler is being stopped."),
                CancelOutcome.AlreadyFinished => Refused(StatusCodes.Status409Conflict, "The task has already finished."),
                _ => Refused(StatusCodes.Status404NotFound, "No such task."),
            };
        });
        actions.MapPost("/tasks/{taskId}/retry", async (string taskId, HttpContext http, CancellationToken ct)
            // One more attempt, the earlier ones kept in its history (a dead letter's attempts are what explains it).
            => await Broker(http).RetryDiscardedAsync(taskId, resetAttempts: false, ct)
                ? Done("Available again, with one more attempt.")
                : Refused(StatusCodes.Status409Conflict, "Only a dead-lettered (discarded) task can be retried."));
        actions.MapPost("/tasks/{taskId}/run-now", async (string taskId, HttpContext http, CancellationToken ct)
            => await Broker(http).RunNowAsync(taskId, ct)
                ? Done("Available now.")
                : Refused(StatusCodes.Status409Conflict, "Only a scheduled or retryable task can be run now."));
        actions.MapPost("/tasks/{taskId}/delete", async (string taskId, HttpContext http, CancellationToken ct)
            => await Broker(http).DeleteFinishedTaskAsync(taskId, ct)
                ? Done("Deleted.")
                : Refused(StatusCodes.Status409Conflict, "Only a finished task can be deleted; cancel it first."));
        actions.MapPost("/queues/{queue}/pause", async (string queue, HttpContext http, CancellationToken ct) =>
        {
            await Broker(http).PauseQueueAsync(queue, ct);
            return Done($"Queue '{queue}' paused.");
        });
        actions.MapPost("/queues/{queue}/resume", async (string queue, HttpContext http, CancellationToken ct) =>
        {
            await Broker(http).ResumeQueueAsync(queue, ct);
            return Done($"Queue '{queue}' resumed.");
        });
        actions.MapPost("/schedules/{id:guid}/pause", async (Guid id, HttpContext http, CancellationToken ct)
            => Schedules(http) is { } source && await source.PauseScheduleAsync(id, ct) ? Done("Schedule paused.") : Refused(StatusCodes.Status404NotFound, "No such schedule."));
        actions.MapPost("/schedules/{id:guid}/resume", async (Guid id, HttpContext http, CancellationToken ct)
            => Schedules(http) is { } source && await source.ResumeScheduleAsync(id, ct) ? Done("Schedule resumed.") : Refused(StatusCodes.Status404NotFound, "No such schedule."));
        actions.MapPost("/schedules/{id:guid}/fire", FireScheduleAsync);
    }

    private async ValueTask<object?> GuardActionAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        if (options.ReadOnly)
        {
            return Refused(StatusCodes.Status403Forbidden, "The task browser is read-only.");
        }

        if (context.HttpContext.Request.Headers[ActionHeader] != "1")
        {
            return Refused(StatusCodes.Status400BadRequest, $"Actions must carry the header '{ActionHeader}: 1'.");
        }

        try
        {
            return await next(context);
        }
        catch (ArgumentException ex)
        {
            return Refused(StatusCodes.Status400BadRequest, ex.Message);
        }
    }

    private async Task<IResult> OverviewAsync(HttpContext http, CancellationToken ct)
    {
        var broker = Broker(http);
        var workers = await broker.GetWorkersAsync(ct);
        var names = (await broker.ListQueuesAsync(200, ct))
            .Concat(options.Queues).Append(broker.Options.Queue)
            .Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
        var queues = new List<object>(names.Length);
        foreach (var name in names)
        {
            var s = await broker.GetQueueStatisticsAsync(name, ct);
            queues.Add(new
            {
                name = s.Queue,
                pausedAt = s.PausedAt,
                counts = States.ToDictionary(State, st => s.Counts.GetValueOrDefault(st)),
                estimated = s.Estimated.Select(State).ToArray(),
                oldestAvailableSeconds = s.OldestAvailableAge?.TotalSeconds,
                finishedLastMinute = s.FinishedLastMinute.ToDictionary(kv => State(kv.Key), kv => kv.Value),
                liveWorkers = workers.Count(w => !w.IsStale && w.Queues.Contains(name)),
            });
        }

        return Results.Json(new
        {
            title = options.Title,
            readOnly = options.ReadOnly,
            schedules = Schedules(http) is not null,
            queues,
            workers = workers.Select(w => new
            {
                id = w.Id, host = w.Host, processId = w.ProcessId, queues = w.Queues, startedAt = w.StartedAt,
                heartbeatAt = w.HeartbeatAt, inFlight = w.InFlight, capacity = w.Capacity, stale = w.IsStale,
            }),
        }, Json);
    }

    private async Task<IResult> ListTasksAsync(HttpContext http, string? queue, string? state, string? name, DateTimeOffset? from,
        DateTimeOffset? to, string? order, string? cursor, int? limit, CancellationToken ct)
    {
        var broker = Broker(http);
        if (!TryParseState(state ?? "available", out var parsed))
        {
            return Refused(StatusCodes.Status400BadRequest, $"Unknown state '{state}'. States: {string.Join(", ", States.Select(State))}.");
        }

        try
        {
            var page = await broker.ListTasksAsync(new TaskQuery
            {
                Queue = string.IsNullOrEmpty(queue) ? null : queue,
                State = parsed,
                TaskName = string.IsNullOrEmpty(name) ? null : name,
                From = from?.ToUniversalTime(),
                To = to?.ToUniversalTime(),
                Order = string.Equals(order, "newest", StringComparison.OrdinalIgnoreCase) ? TaskOrder.Newest : TaskOrder.Oldest,
                Cursor = string.IsNullOrEmpty(cursor) ? null : cursor,
                Limit = Math.Clamp(limit ?? 50, 1, TaskQuery.MaxLimit),
            }, ct);
            return Results.Json(new { tasks = page.Tasks.Select(Summary), nextCursor = page.NextCursor }, Json);
        }
        catch (ArgumentException ex)
        {
            return Refused(StatusCodes.Status400BadRequest, ex.Message);
        }
    }

    private async Task<IResult> GetTaskAsync(string taskId, HttpContext http, CancellationToken ct)
    {
        TaskRecord? task;
        try
        {
            task = await Client(http).GetTaskAsync(taskId, ct);
        }
        catch (JsonException)
        {
            // A result that is not taskiq JSON must not hide the task itself.
            task = await Broker(http).GetTaskAsync(taskId, ct);
        }

        if (task is null)
        {
            return Refused(StatusCodes.Status404NotFound, "No such task (never kicked, or pruned after its retention).");
        }

        JsonElement? args = null, kwargs = null;
        try
        {
            using var message = JsonDocument.Parse(task.MessageJson);
            args = message.RootElement.TryGetProperty("args", out var a) ? a.Clone() : null;
            kwargs = message.RootElement.TryGetProperty("kwargs", out var k) ? k.Clone() : null;
        }
        catch (JsonException)
        {
            // Poison input is shown as stored (below); it was dead-lettered with the reason.
        }

        return Results.Json(new
        {
            task = Summary(task),
            args,
            kwargs,
            message = task.MessageJson,
            labels = task.Labels,
            history = task.History,
            result = task.Result is { } r
                ? new { isError = r.IsError, returnValue = r.ReturnValue, executionTime = r.ExecutionTime, error = r.Error, stackTrace = r.StackTrace }
                : null,
            progress = task.Progress,
        }, Json);
    }

    private async Task<IResult> ListSchedulesAsync(HttpContext http, CancellationToken ct)
    {
        if (Schedules(http) is not { } source)
        {
            return Results.Json(new { schedules = Array.Empty<object>() }, Json);
        }

        var schedules = await source.ListSchedulesAsync(ct);
        return Results.Json(new
        {
            schedules = schedules.Select(s => new
            {
                id = s.Id,
                taskName = s.Definition.TaskName,
                cron = s.Definition.Cron,
                timeZone = s.Definition.TimeZone,
                intervalSeconds = s.Definition.Interval?.TotalSeconds,
                runAt = s.Definition.RunAt,
                args = s.Definition.Args,
                isStatic = s.IsStatic,
                enabled = s.Enabled,
                done = s.Done,
                disabledReason = s.DisabledReason,
                lastFireAt = s.LastFireAt,
            }),
        }, Json);
    }

    private async Task<IResult> FireScheduleAsync(Guid id, HttpContext http, CancellationToken ct)
    {
        if (Schedules(http) is not { } source || (await source.ListSchedulesAsync(ct)).FirstOrDefault(s => s.Id == id) is not { } schedule)
        {
            return Refused(StatusCodes.Status404NotFound, "No such schedule.");
        }

        // One extra run now, outside the schedule's instants (its next instant still fires as planned).
        var d = schedule.Definition;
        var handle = await Client(http).KickAsync(d.TaskName, d.Args, d.Kwargs, new KickOptions { Labels = d.Labels }, ct);
        return Results.Json(new { message = $"Kicked '{d.TaskName}' now.", taskId = handle.TaskId }, Json);
    }

    private static object Summary(TaskRecord t) => new
    {
        taskId = t.TaskId,
        taskName = t.TaskName,
        queue = t.Queue,
        state = State(t.State),
        priority = t.Priority,
        attempts = t.Attempts,
        maxAttempts = t.MaxAttempts,
        runAt = t.RunAt,
        createdAt = t.CreatedAt,
        finishedAt = t.FinishedAt,
        lastError = t.LastError,
        worker = t.Worker,
    };

    private static string State(TaskState state) => JsonNamingPolicy.CamelCase.ConvertName(state.ToString());

    private static bool TryParseState(string text, out TaskState state)
        => Enum.TryParse(text, ignoreCase: true, out state) && Enum.IsDefined(state) && !int.TryParse(text, out _);

    private static IResult Done(string message) => Results.Json(new { message }, Json);

    private static IResult Refused(int status, string error) => Results.Json(new { error }, Json, statusCode: status);

    private PostgresBroker Broker(HttpContext http) => Resolve<PostgresBroker>(http);

    private TaskiqClient Client(HttpContext http) => Resolve<TaskiqClient>(http);

    private PostgresScheduleSource? Schedules(HttpContext http) => options.ServiceKey is null
        ? http.RequestServices.GetService<PostgresScheduleSource>()
        : http.RequestServices.GetKeyedService<PostgresScheduleSource>(options.ServiceKey);

    private T Resolve<T>(HttpContext http) where T : notnull => options.ServiceKey is null
        ? http.RequestServices.GetRequiredService<T>()
        : http.RequestServices.GetRequiredKeyedService<T>(options.ServiceKey);
}
