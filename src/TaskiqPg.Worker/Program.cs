using TaskiqPg.Worker;

// One project, three roles (chosen by TaskiqPg:Role or --TaskiqPg:Role): "worker" runs the tasks, "scheduler" fires
// the schedules, "api" kicks tasks and manages schedules over HTTP and serves the task browser at /taskiq. Each exposes /health and /alive, which the AppHost
// reads to show their health in the dashboard.
var builder = WebApplication.CreateBuilder(args);
var role = builder.Configuration["TaskiqPg:Role"] ?? "worker";

builder.AddServiceDefaults();
builder.Services.AddHttpClient("samples");
var taskiq = builder.AddTaskiqPgClient("tasks").AddSampleTasks();
switch (role)
{
    case "worker":
        taskiq.AddWorker();
        break;
    case "scheduler":
        taskiq.AddSampleSchedules().AddScheduler();
        break;
    case "api":
        break;
    default:
        throw new InvalidOperationException($"TaskiqPg:Role is '{role}'; use 'worker', 'scheduler' or 'api'.");
}

var app = builder.Build();
app.MapDefaultEndpoints();
if (role == "api")
{
    app.MapProducerApi();
    // The task browser; a real app protects it: .RequireAuthorization("ops"), or read-only with o => o.ReadOnly = true.
    app.MapTaskiqDashboard("/taskiq", o => o.Title = "TaskiqPg sample");
}

app.MapGet("/", () => $"TaskiqPg sample service, role '{role}'.");
app.Run();
