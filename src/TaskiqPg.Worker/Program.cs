using TaskiqPg.Worker;

// One project, two roles (chosen by TaskiqPg:Role or --TaskiqPg:Role): "worker" runs the tasks, "api" kicks them
// over HTTP. Both expose /health and /alive, which the AppHost reads to show their health in the dashboard.
var builder = WebApplication.CreateBuilder(args);
var role = builder.Configuration["TaskiqPg:Role"] ?? "worker";

builder.AddServiceDefaults();
builder.Services.AddHttpClient("samples");
var taskiq = builder.AddTaskiqPostgres("db").AddSampleTasks();
if (role == "worker")
{
    taskiq.AddWorker();
}
else if (role != "api")
{
    throw new InvalidOperationException($"TaskiqPg:Role is '{role}'; use 'worker' or 'api'.");
}

var app = builder.Build();
app.MapDefaultEndpoints();
if (role == "api")
{
    app.MapProducerApi();
}

app.MapGet("/", () => $"TaskiqPg sample service, role '{role}'.");
app.Run();
