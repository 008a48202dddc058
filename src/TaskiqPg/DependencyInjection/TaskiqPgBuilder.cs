using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace TaskiqPg;

/// <summary>Adds tasks and the worker to a TaskiqPg registration.</summary>
public sealed class TaskiqPgBuilder
{
    internal TaskiqPgBuilder(IServiceCollection services, string? serviceKey)
    {
        Services = services;
        ServiceKey = serviceKey;
    }

    /// <summary>The service collection.</summary>
    public IServiceCollection Services { get; }

    /// <summary>The key of a keyed registration; null for the default one.</summary>
    public string? ServiceKey { get; }

    /// <summary>True once <see cref="AddWorker"/> was called: this app runs a worker.</summary>
    public bool HasWorker { get; private set; }

    internal List<Action<TaskRegistry>> Registrations { get; } = [];

    /// <summary>Resolves this registration's <typeparamref name="T"/> (keyed or not).</summary>
    public T Resolve<T>(IServiceProvider services)
        where T : notnull
        => ServiceKey is null ? services.GetRequiredService<T>() : services.GetRequiredKeyedService<T>(ServiceKey);

    /// <summary>Registers a delegate task (see <see cref="TaskRegistry.Add"/>).</summary>
    public TaskiqPgBuilder AddTask(string name, Delegate handler, TimeSpan? timeout = null)
    {
        Registrations.Add(r => r.Add(name, handler, timeout));
        return this;
    }

    /// <summary>Registers a typed handler (see <see cref="TaskRegistry.AddHandler{THandler, TArgs, TResult}"/>); it is resolved from a DI scope per run.</summary>
    public TaskiqPgBuilder AddHandler<THandler, TArgs, TResult>(string? name = null, TimeSpan? timeout = null)
        where THandler : class, ITaskHandler<TArgs, TResult>
    {
        Services.AddScoped<THandler>();
        Registrations.Add(r => r.AddHandler<THandler, TArgs, TResult>(name, timeout));
        return this;
    }

    /// <summary>True once <see cref="AddScheduler"/> was called: this app runs a scheduler.</summary>
    public bool HasScheduler { get; private set; }

    /// <summary>Declares a static schedule (synced under a stable id when a scheduler starts; see <see cref="TaskiqScheduler"/>).</summary>
    public TaskiqPgBuilder AddSchedule(ScheduleDefinition schedule)
    {
        ArgumentNullException.ThrowIfNull(schedule);
        Services.Configure<TaskiqPgOptions>(ServiceKey ?? Microsoft.Extensions.Options.Options.DefaultName, o => o.Scheduler.StaticSchedules.Add(schedule));
        return this;
    }

    /// <summary>Runs a <see cref="TaskiqScheduler"/> as a hosted service in this process (once per registration).</summary>
    public TaskiqPgBuilder AddScheduler(Action<TaskiqSchedulerOptions>? configure = null)
    {
        if (configure is not null)
        {
            Services.Configure<TaskiqPgOptions>(ServiceKey ?? Microsoft.Extensions.Options.Options.DefaultName, o => configure(o.Scheduler));
        }

        if (!HasScheduler)
        {
            Services.AddSingleton<IHostedService>(Resolve<TaskiqScheduler>);
            HasScheduler = true;
        }

        return this;
    }

    /// <summary>Runs a <see cref="TaskiqWorker"/> as a hosted service in this process (once per registration).</summary>
    public TaskiqPgBuilder AddWorker(Action<TaskiqWorkerOptions>? configure = null)
    {
        if (configure is not null)
        {
            Services.Configure<TaskiqPgOptions>(ServiceKey ?? Microsoft.Extensions.Options.Options.DefaultName, o => configure(o.Worker));
        }

        if (!HasWorker)
        {
            // Not AddHostedService: it de-duplicates by implementation type, which would drop a keyed second worker.
            Services.AddSingleton<IHostedService>(Resolve<TaskiqWorker>);
            HasWorker = true;
        }

        return this;
    }
}
