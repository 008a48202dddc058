// TaskiqPg's AppHost: PostgreSQL (a container where a container runtime answers, else the locally installed server),
// the "db" database with TaskiqPg's schema migrated once by the host, two worker replicas, the scheduler and the producer api.
// Configuration: TaskiqPg:PostgresMode (auto | container | local | external), TaskiqPg:LocalDataDirectory,
// TaskiqPg:LeaseDuration (passed to the services).
var builder = DistributedApplication.CreateBuilder(args);

var db = builder.AddTaskiqPostgres("postgres", "db").WithTaskiqSchema();

IResourceBuilder<ProjectResource> AddService(string name, string role)
{
    var service = builder.AddProject<Projects.TaskiqPg_Worker>(name, launchProfileName: null)
        .WithHttpEndpoint()
        .WithEnvironment("TaskiqPg__Role", role)
        .WithEnvironment("Aspire__TaskiqPg__DisableMigrations", "true") // the host migrated the schema before services start
        .WithReference(db)
        .WaitFor(db)
        .WithHttpHealthCheck("/health");
    if (builder.Configuration["TaskiqPg:LeaseDuration"] is { Length: > 0 } lease)
    {
        service.WithEnvironment("Aspire__TaskiqPg__LeaseDuration", lease);
    }

    return service;
}

AddService("worker", "worker").WithReplicas(2);
AddService("scheduler", "scheduler");
AddService("api", "api");

builder.Build().Run();
