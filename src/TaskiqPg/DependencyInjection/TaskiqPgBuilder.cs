using Microsoft.Extensions.DependencyInjection;

namespace TaskiqPg;

/// <summary>Adds tasks and the worker to a TaskiqPg registration.</summary>
public sealed class TaskiqPgBuilder
{
    internal TaskiqPgBuilder(IServiceCollection services) => Services = services;

    /// <summary>The service collection.</summary>
    public IServiceCollection Services { get; }

    internal List<Action<TaskRegistry>> Registrations { get; } = [];

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

    /// <summary>Runs a <see cref="TaskiqWorker"/> as a hosted service in this process.</summary>
    public TaskiqPgBuilder AddWorker(Action<TaskiqWorkerOptions>? configure = null)
    {
        if (configure is not null)
        {
            Services.Configure<TaskiqPgOptions>(o => configure(o.Worker));
        }

        Services.AddHostedService(sp => sp.GetRequiredService<TaskiqWorker>());
        return this;
    }
}
