using System.Text.Json;

namespace TaskiqPg;

/// <summary>Settings of everything <see cref="TaskiqServiceCollectionExtensions.AddTaskiqPg(Microsoft.Extensions.DependencyInjection.IServiceCollection, string, Action{TaskiqPgOptions}?)"/> registers.</summary>
public sealed class TaskiqPgOptions
{
    /// <summary>Broker settings.</summary>
    public PostgresBrokerOptions Broker { get; set; } = new();

    /// <summary>Result backend settings.</summary>
    public PostgresResultBackendOptions Results { get; set; } = new();

    /// <summary>Schedule source settings.</summary>
    public PostgresScheduleSourceOptions Schedules { get; set; } = new();

    /// <summary>Scheduler settings (used when a scheduler is added); static schedules go in <see cref="TaskiqSchedulerOptions.StaticSchedules"/>.</summary>
    public TaskiqSchedulerOptions Scheduler { get; set; } = new();

    /// <summary>Worker settings (used when a worker is added).</summary>
    public TaskiqWorkerOptions Worker { get; set; } = new();

    /// <summary>JSON settings for arguments and results. Default <see cref="TaskiqSerializer.DefaultOptions"/>.</summary>
    public JsonSerializerOptions SerializerOptions { get; set; } = TaskiqSerializer.DefaultOptions;
}
