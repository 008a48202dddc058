using TaskiqPg;

namespace Aspire.Hosting;

/// <summary>Settings of a TaskiqPg queue resource (<see cref="TaskiqQueueBuilderExtensions.AddTaskiqPgQueue"/>).</summary>
public sealed record TaskiqQueueOptions
{
    /// <summary>Table names and schema of the queue (its <c>Queue</c> is replaced by the resource's first queue). Default: the defaults.</summary>
    public PostgresBrokerOptions Broker { get; init; } = new();

    /// <summary>Table names of the results (the host migrates them; cancelled tasks get their result). Default: the defaults.</summary>
    public PostgresResultBackendOptions Results { get; init; } = new();

    /// <summary>Table names of the schedules (the host migrates them). Default: the defaults.</summary>
    public PostgresScheduleSourceOptions Schedules { get; init; } = new();

    /// <summary>How often the dashboard's figures are read from the database. Default 3 s.</summary>
    public TimeSpan RefreshInterval { get; init; } = TimeSpan.FromSeconds(3);

    /// <summary>The resource shows <c>Degraded</c> when a queue's oldest due task has waited this long while nothing runs. Default 30 s.</summary>
    public TimeSpan DegradedAfter { get; init; } = TimeSpan.FromSeconds(30);
}
