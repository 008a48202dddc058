using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace TaskiqPg;

/// <summary>Adds tasks and the worker to a TaskiqPg registration.</summary>
public sealed class TaskiqPgBuilder
{
    private readonly TaskiqPgRegistration _registration;

    internal TaskiqPgBuilder(IServiceCollection services, string? serviceKey, TaskiqPgRegistration registration)
    {
        Services = services;
        ServiceKey = serviceKey;
        _registration = registration;
    }

    /// <summary>The service collection.</summary>
    public IServiceCollection Services { get; }

    /// <summary>The key of a keyed registration; null for the default one.</summary>
    public string? ServiceKey { get; }

    /// <summary>True once <see cref="AddWorker"/> was called (by any builder of this registration): this app runs a worker.</summary>
    public bool HasWorker => _registration.HasWorker;

    /// <summary>Task registrations of every builder of this registration (every AddTaskiqPg call with this key).</summary>
    internal List<Action<TaskRegistry>> Registrations => _registration.Tasks;

    /// <summary>Resolves this registration's <typeparamref name="T"/> (keyed or not).</summary>
    /// <typeparam name="T">A service this registration provides (broker, result backend, client, worker, ...).</typeparam>
    /// <param name="services">The service provider.</param>
    /// <returns>The service.</returns>
    public T Resolve<T>(IServiceProvider services)
        where T : notnull
        => ServiceKey is null ? services.GetRequiredService<T>() : services.GetRequiredKeyedService<T>(ServiceKey);

    /// <summary>Registers a delegate task (see <see cref="TaskRegistry.Add"/>).</summary>
    /// <param name="name">The task name producers kick it by.</param>
    /// <param name="handler">The delegate; its parameters are bound from the message, the context and DI.</param>
    /// <param name="timeout">The longest one run may take; null for the worker's default.</param>
    /// <returns>This builder.</returns>
    [System.Diagnostics.CodeAnalysis.RequiresUnreferencedCode("A delegate task's parameters are read with reflection-based JSON by their types (see TaskRegistry.Add).")]
    [System.Diagnostics.CodeAnalysis.RequiresDynamicCode("A delegate task's call is compiled at registration.")]
    public TaskiqPgBuilder AddTask(string name, Delegate handler, TimeSpan? timeout = null)
    {
        Registrations.Add(r => r.Add(name, handler, timeout));
        return this;
    }

    /// <summary>Registers a typed handler (see <see cref="TaskRegistry.AddHandler{THandler, TArgs, TResult}"/>); it is resolved from a DI scope per run.</summary>
    /// <typeparam name="THandler">The handler type (registered as scoped).</typeparam>
    /// <typeparam name="TArgs">The argument type, read from the message's first argument.</typeparam>
    /// <typeparam name="TResult">The result type, stored as the task's return value.</typeparam>
    /// <param name="name">The task name; default: the handler's <see cref="TaskNameAttribute"/>, else its type's full name.</param>
    /// <param name="timeout">The longest one run may take; null for the worker's default.</param>
    /// <returns>This builder.</returns>
    public TaskiqPgBuilder AddHandler<THandler, TArgs, TResult>(string? name = null, TimeSpan? timeout = null)
        where THandler : class, ITaskHandler<TArgs, TResult>
    {
        Services.AddScoped<THandler>();
        Registrations.Add(r => r.AddHandler<THandler, TArgs, TResult>(name, timeout));
        return this;
    }

    /// <summary>True once <see cref="AddScheduler"/> was called (by any builder of this registration): this app runs a scheduler.</summary>
    public bool HasScheduler => _registration.HasScheduler;

    /// <summary>Declares a static schedule (synced under a stable id when a scheduler starts; see <see cref="TaskiqScheduler"/>).</summary>
    /// <param name="schedule">The schedule; it is validated when the scheduler starts.</param>
    /// <returns>This builder.</returns>
    public TaskiqPgBuilder AddSchedule(ScheduleDefinition schedule)
    {
        ArgumentNullException.ThrowIfNull(schedule);
        Services.Configure<TaskiqPgOptions>(ServiceKey ?? Microsoft.Extensions.Options.Options.DefaultName, o => o.Scheduler.StaticSchedules.Add(schedule));
        return this;
    }

    /// <summary>Runs a <see cref="TaskiqScheduler"/> as a hosted service in this process (once per registration).</summary>
    /// <param name="configure">Configures the scheduler's options.</param>
    /// <returns>This builder.</returns>
    public TaskiqPgBuilder AddScheduler(Action<TaskiqSchedulerOptions>? configure = null)
    {
        if (configure is not null)
        {
            Services.Configure<TaskiqPgOptions>(ServiceKey ?? Microsoft.Extensions.Options.Options.DefaultName, o => configure(o.Scheduler));
        }

        if (!HasScheduler)
        {
            Services.AddSingleton<IHostedService>(Resolve<TaskiqScheduler>);
            _registration.HasScheduler = true;
        }

        return this;
    }

    /// <summary>Runs a <see cref="TaskiqWorker"/> as a hosted service in this process (once per registration).</summary>
    /// <param name="configure">Configures the worker's options.</param>
    /// <returns>This builder.</returns>
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
            // The host must wait for the worker's own drain (running tasks, then their outcomes): raise its timeout.
            var optionsName = ServiceKey ?? Microsoft.Extensions.Options.Options.DefaultName;
            Services.AddOptions<HostOptions>().PostConfigure<IOptionsMonitor<TaskiqPgOptions>>((host, taskiq) =>
            {
                var needed = WorkerStopAllowance(taskiq.Get(optionsName).Worker.ShutdownTimeout);
                if (host.ShutdownTimeout < needed)
                {
                    host.ShutdownTimeout = needed;
                }
            });
            _registration.HasWorker = true;
        }

        return this;
    }

    /// <summary>
    /// The host shutdown timeout a worker needs: its own <see cref="TaskiqWorkerOptions.ShutdownTimeout"/> for running
    /// tasks, plus the time its stop path may take after it (cancelled handlers, writing their outcomes, loops ending).
    /// </summary>
    internal static TimeSpan WorkerStopAllowance(TimeSpan workerShutdownTimeout) => workerShutdownTimeout + TimeSpan.FromSeconds(20);
}

/// <summary>What every <c>AddTaskiqPg</c> call with one service key shares: tasks, worker and scheduler flags.</summary>
internal sealed class TaskiqPgRegistration
{
    public List<Action<TaskRegistry>> Tasks { get; } = [];

    public bool HasWorker { get; set; }

    public bool HasScheduler { get; set; }

    /// <summary>The connection string of an <c>AddTaskiqPg(connectionString)</c> call; null with a data-source factory.</summary>
    public string? ConnectionString { get; set; }
}
