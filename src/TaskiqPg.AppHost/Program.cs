// TaskiqPg's AppHost: PostgreSQL (a container where a container runtime answers, else the locally installed server),
// the "db" database with TaskiqPg's schema migrated once by the host, two worker replicas and the producer api.
// TaskiqPg:PostgresMode (auto | container | local | external) overrides the choice.
var builder = DistributedApplication.CreateBuilder(args);

var db = builder.AddTaskiqPostgres("postgres", "db").WithTaskiqSchema();

builder.AddProject<Projects.TaskiqPg_Worker>("worker", launchProfileName: null)
    .WithHttpEndpoint()
    .WithEnvironment("TaskiqPg__Role", "worker")
    .WithEnvironment("Aspire__TaskiqPg__DisableMigrations", "true") // the host migrated the schema before workers start
    .WithReference(db)
    .WaitFor(db)
    .WithReplicas(2)
    .WithHttpHealthCheck("/health");

builder.AddProject<Projects.TaskiqPg_Worker>("api", launchProfileName: null)
    .WithHttpEndpoint()
    .WithEnvironment("TaskiqPg__Role", "api")
    .WithEnvironment("Aspire__TaskiqPg__DisableMigrations", "true")
    .WithReference(db)
    .WaitFor(db)
    .WithHttpHealthCheck("/health");

builder.Build().Run();
