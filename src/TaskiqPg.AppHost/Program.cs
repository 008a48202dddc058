// TaskiqPg's AppHost: PostgreSQL (a container where a container runtime answers, else the locally installed server),
// the "db" database, the "tasks" queue resource on it (the host migrates TaskiqPg's schema once, then shows the queue's
// live figures and commands in the dashboard), two worker replicas, the scheduler and the producer api (which serves the
// task browser, linked from its resource as "Task browser").
// Configuration: TaskiqPg:PostgresMode (auto | container | local | external), TaskiqPg:LocalDataDirectory,
// TaskiqPg:LeaseDuration (passed to the services).
var builder = DistributedApplication.CreateBuilder(args);

var db = builder.AddTaskiqPgDatabase("postgres", "db");
var tasks = db.AddTaskiqPgQueue("tasks");

IResourceBuilder<ProjectResource> AddService(string name, string role)
{
    var service = builder.AddProject<Projects.TaskiqPg_Worker>(name, launchProfileName: null)
        .WithHttpEndpoint()
        .WithEnvironment("TaskiqPg__Role", role)
        .WithReference(tasks) // connection string "tasks", the queue, migrations off (the host migrated the schema)
        .WaitFor(tasks)
        .WithHttpHealthCheck("/health");
    if (builder.Configuration["TaskiqPg:LeaseDuration"] is { Length: > 0 } lease)
    {
        service.WithEnvironment("Aspire__TaskiqPg__tasks__LeaseDuration", lease);
    }

    return service;
}

AddService("worker", "worker").WithReplicas(2);
AddService("scheduler", "scheduler");
AddService("api", "api")
    .WithUrlForEndpoint("http", _ => new ResourceUrlAnnotation { Url = "/taskiq/", DisplayText = "Task browser" });

builder.Build().Run();
