using System.Text.Json;
using Aspire.Hosting.ApplicationModel;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using TaskiqPg;

namespace Aspire.Hosting;

/// <summary>
/// The queue as an Aspire resource. AppHost: <c>var tasks = db.AddTaskiqPgQueue("tasks");</c> and
/// <c>.WithReference(tasks).WaitFor(tasks)</c> on each service; service: <c>builder.AddTaskiqPgClient("tasks")</c>.
/// </summary>
public static class TaskiqQueueBuilderExtensions
{
    /// <summary>Command names, as the dashboard and <c>aspire resource &lt;name&gt; &lt;command&gt;</c> use them.</summary>
    public static class Commands
    {
        /// <summary>Pauses the queue(s): no worker of any process claims from them; kicks are still accepted.</summary>
        public const string Pause = "pause-queue";

        /// <summary>Resumes paused queue(s).</summary>
        public const string Resume = "resume-queue";

        /// <summary>Puts every dead letter back to available with its attempts reset.</summary>
        public const string RetryDeadLetters = "retry-dead-letters";

        /// <summary>Deletes every dead letter.</summary>
        public const string PurgeDeadLetters = "purge-dead-letters";

        /// <summary>Cancels every queued task (available, scheduled, retryable); running ones are asked to stop.</summary>
        public const string CancelQueued = "cancel-queued";

        /// <summary>Kicks a task: arguments task name, JSON arguments, delay in seconds, queue.</summary>
        public const string Kick = "kick-task";
    }

    /// <summary>
    /// Adds TaskiqPg's queues on <paramref name="database"/>: the host migrates the schema once when the database is
    /// ready (dependants that <c>WaitFor</c> this resource start after it), shows each queue's live figures (tasks by
    /// state, oldest due task, completed and dead-lettered in the last minute, live workers) and offers commands.
    /// </summary>
    /// <param name="database">The database (e.g. from <c>AddTaskiqPgDatabase</c>).</param>
    /// <param name="name">The resource name; also the connection name services use.</param>
    /// <param name="queues">The queues shown and steered (default: <c>default</c>); the first is the services' default queue.</param>
    /// <param name="configure">Adjusts table names, the refresh interval and the Degraded threshold.</param>
    /// <exception cref="ArgumentException">A queue name is not a valid identifier, or is listed twice.</exception>
    /// <returns>The queue resource, to reference from services and wait for.</returns>
    public static IResourceBuilder<TaskiqQueueResource> AddTaskiqPgQueue(this IResourceBuilder<IResourceWithConnectionString> database, string name,
        IReadOnlyList<string>? queues = null, Func<TaskiqQueueOptions, TaskiqQueueOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(database);
        ArgumentException.ThrowIfNullOrEmpty(name);
        queues = queues is null or { Count: 0 } ? ["default"] : queues;
        // The worker's own validation of queue lists: the same rules everywhere.
        new TaskiqWorkerOptions { Queues = queues }.Validate();
        var options = configure?.Invoke(new TaskiqQueueOptions()) ?? new TaskiqQueueOptions();
        var resource = new TaskiqQueueResource(name, database.Resource, queues.ToArray());
        var monitor = new TaskiqQueueMonitor(resource, options);
        resource.Monitor = monitor;
        var builder = database.ApplicationBuilder;
        var healthKey = $"{name}_taskiq";
        builder.Services.AddHealthChecks().AddCheck(healthKey, new TaskiqQueueHealthCheck(monitor));
        var queue = builder.AddResource(resource)
            .WithParentRelationship(database)
            .WaitFor(database)
            .WithHealthCheck(healthKey)
            .WithInitialState(new CustomResourceSnapshot
            {
                ResourceType = "TaskiqQueue",
                State = KnownResourceStates.NotStarted,
                Properties = [new("taskiq.queues", string.Join(", ", queues))],
            })
            .OnInitializeResource((r, e, ct) =>
            {
                var stopping = e.Services.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping;
                _ = Task.Run(() => monitor.RunAsync(e, stopping), CancellationToken.None);
                return Task.CompletedTask;
            });
        return queue.WithTaskiqCommands(monitor);
    }

    /// <summary>
    /// References the queue resource: its connection string under the resource's name, and the settings services need
    /// (<c>Aspire:TaskiqPg:{name}:Queue</c> = the first queue; migrations off, since the host migrated the schema).
    /// </summary>
    /// <typeparam name="T">The referencing resource's type.</typeparam>
    /// <param name="builder">The service (project or executable) that uses the queue.</param>
    /// <param name="queue">The queue resource.</param>
    /// <returns>The service's builder.</returns>
    public static IResourceBuilder<T> WithReference<T>(this IResourceBuilder<T> builder, IResourceBuilder<TaskiqQueueResource> queue)
        where T : IResourceWithEnvironment
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(queue);
        var name = queue.Resource.Name;
        return builder.WithReference((IResourceBuilder<IResourceWithConnectionString>)queue)
            .WithEnvironment($"Aspire__TaskiqPg__{name}__Queue", queue.Resource.Queues[0])
            .WithEnvironment($"Aspire__TaskiqPg__{name}__DisableMigrations", "true");
    }

    private static IResourceBuilder<TaskiqQueueResource> WithTaskiqCommands(this IResourceBuilder<TaskiqQueueResource> queue, TaskiqQueueMonitor monitor)
    {
        var queues = queue.Resource.Queues;
        InteractionInput QueueInput() => new()
        {
            Name = "queue", Label = "Queue", InputType = InputType.Choice, Required = false,
            Options = [.. queues.Select(q => new KeyValuePair<string, string>(q, q))],
            Description = queues.Count == 1 ? "The queue (it has only one)." : "Leave empty for every queue of this resource.",
        };

        ResourceCommandState When(Func<QueueView, bool> any)
            => monitor.DatabaseReachable && monitor.Views.Any(any) ? ResourceCommandState.Enabled : ResourceCommandState.Disabled;

        queue.WithCommand(Commands.Pause, "Pause queue", c => RunAsync(c, queues, monitor, async (broker, _, targets, ct) =>
            {
                await EachAsync(targets, async q => { await broker.PauseQueueAsync(q, ct); return 0; });
                return ($"Paused {string.Join(", ", targets)}: no worker claims from it until it is resumed; kicks are still accepted.", null);
            }),
            new CommandOptions
            {
                Description = "Stop every worker of every process from claiming tasks of the queue (persisted; kicks are still accepted).",
                IconName = "Pause", Arguments = [QueueInput()], UpdateState = _ => When(v => v.Statistics.PausedAt is null),
            });
        queue.WithCommand(Commands.Resume, "Resume queue", c => RunAsync(c, queues, monitor, async (broker, _, targets, ct) =>
            {
                await EachAsync(targets, async q => { await broker.ResumeQueueAsync(q, ct); return 0; });
                return ($"Resumed {string.Join(", ", targets)}.", null);
            }),
            new CommandOptions
            {
                Description = "Let workers claim from the paused queue again (they are woken at once).",
                IconName = "Play", Arguments = [QueueInput()], UpdateState = _ => When(v => v.Statistics.PausedAt is not null),
            });
        queue.WithCommand(Commands.RetryDeadLetters, "Retry dead letters", c => RunAsync(c, queues, monitor, async (broker, _, targets, ct) =>
            {
                var total = await EachAsync(targets, q => broker.RetryDiscardedAsync(new TaskFilter { Queue = q }, resetAttempts: true, ct));
                return ($"{total} dead letter(s) back to available, attempts reset.", null);
            }),
            new CommandOptions
            {
                Description = "Put every discarded task back to available with its attempts reset.",
                IconName = "ArrowClockwise", ConfirmationMessage = "Retry every dead letter of this queue?", Arguments = [QueueInput()],
                UpdateState = _ => When(v => v.Statistics.Counts[TaskState.Discarded] > 0),
            });
        queue.WithCommand(Commands.PurgeDeadLetters, "Purge dead letters", c => RunAsync(c, queues, monitor, async (broker, _, targets, ct) =>
            {
                var total = await EachAsync(targets, q => broker.DeleteDiscardedAsync(new TaskFilter { Queue = q }, ct));
                return ($"{total} dead letter(s) deleted.", null);
            }),
            new CommandOptions
            {
                Description = "Delete every discarded task (their reasons are lost).",
                IconName = "Delete", ConfirmationMessage = "Delete every dead letter of this queue? This cannot be undone.", Arguments = [QueueInput()],
                UpdateState = _ => When(v => v.Statistics.Counts[TaskState.Discarded] > 0),
            });
        queue.WithCommand(Commands.CancelQueued, "Cancel all queued", c => RunAsync(c, queues, monitor, async (_, client, targets, ct) =>
            {
                long cancelled = 0, requested = 0;
                foreach (var q in targets)
                {
                    var result = await client.CancelManyAsync(new TaskFilter { Queue = q }, ct);
                    (cancelled, requested) = (cancelled + result.Cancelled, requested + result.Requested);
                }

                return ($"{cancelled} queued task(s) cancelled; {requested} running task(s) asked to stop.", null);
            }),
            new CommandOptions
            {
                Description = "Cancel every available, scheduled and retryable task; running ones get their cancellation token fired.",
                IconName = "DismissCircle", ConfirmationMessage = "Cancel every unfinished task of this queue?", Arguments = [QueueInput()],
                UpdateState = _ => When(v => v.Statistics.Counts[TaskState.Available] + v.Statistics.Counts[TaskState.Scheduled]
                    + v.Statistics.Counts[TaskState.Retryable] + v.Statistics.Counts[TaskState.Running] > 0),
            });
        queue.WithCommand(Commands.Kick, "Kick a task", c => RunAsync(c, queues, monitor, async (broker, _, targets, ct) =>
            {
                var arguments = c.Arguments;
                var taskName = arguments.GetString("task")?.Trim();
                if (string.IsNullOrEmpty(taskName))
                {
                    throw new ArgumentException("Give the task's name.");
                }

                var json = arguments.GetString("args") is { Length: > 0 } text ? text : "[]";
                JsonElement[] args;
                try
                {
                    using var document = JsonDocument.Parse(json);
                    args = document.RootElement.ValueKind == JsonValueKind.Array
                        ? document.RootElement.EnumerateArray().Select(a => a.Clone()).ToArray()
                        : throw new ArgumentException($"Arguments must be a JSON array (got {document.RootElement.ValueKind}).");
                }
                catch (JsonException ex)
                {
                    throw new ArgumentException($"Arguments are not valid JSON: {ex.Message}");
                }

                var delay = arguments.GetString("delay") is { Length: > 0 } seconds
                    ? double.TryParse(seconds, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var d) && d >= 0 && double.IsFinite(d)
                        ? TimeSpan.FromSeconds(d)
                        : throw new ArgumentException($"Delay must be a number of seconds, 0 or more (got '{seconds}').")
                    : TimeSpan.Zero;
                var message = TaskMessage.Create(taskName, args.Cast<object?>());
                var kicked = await broker.KickAsync(message, new KickOptions { Queue = targets[0], Delay = delay > TimeSpan.Zero ? delay : null }, ct);
                return ($"Kicked {taskName} to {targets[0]}: task id {kicked.TaskId}", kicked.TaskId); // the result data: the task id
            }, single: true),
            new CommandOptions
            {
                Description = "Kick a task by name with JSON arguments, optionally delayed.",
                IconName = "Send",
                Arguments =
                [
                    new InteractionInput { Name = "task", Label = "Task name", InputType = InputType.Text, Required = true, Placeholder = "add" },
                    new InteractionInput { Name = "args", Label = "Arguments (JSON array)", InputType = InputType.Text, Value = "[]", Placeholder = "[20, 22]" },
                    new InteractionInput { Name = "delay", Label = "Delay (seconds)", InputType = InputType.Number, Value = "0" },
                    QueueInput(),
                ],
                UpdateState = _ => monitor.DatabaseReachable ? ResourceCommandState.Enabled : ResourceCommandState.Disabled,
            });
        return queue;
    }

    /// <summary>Runs one command against the monitor's connection: a clear failure for bad input or a database error, never a secret.</summary>
    private static async Task<ExecuteCommandResult> RunAsync(ExecuteCommandContext context, IReadOnlyList<string> queues, TaskiqQueueMonitor monitor,
        Func<PostgresBroker, TaskiqClient, IReadOnlyList<string>, CancellationToken, Task<(string Message, string? Data)>> action, bool single = false)
    {
        if (monitor.Broker is not { } broker || monitor.Client is not { } client)
        {
            return CommandResults.Failure("The queue is not ready yet (its database is starting or its schema is being migrated).");
        }

        var chosen = context.Arguments.GetString("queue") is { Length: > 0 } q ? q : null;
        if (chosen is not null && !queues.Contains(chosen))
        {
            return CommandResults.Failure($"'{chosen}' is not a queue of this resource ({string.Join(", ", queues)}).");
        }

        IReadOnlyList<string> targets = chosen is not null ? [chosen] : single ? [queues[0]] : queues;
        try
        {
            var (message, data) = await action(broker, client, targets, context.CancellationToken);
            var notifications = context.Services.GetRequiredService<ResourceNotificationService>();
            await monitor.RefreshNowAsync(notifications, context.Logger, context.CancellationToken);
            return data is not null ? CommandResults.Success(message, data, CommandResultFormat.Text) : CommandResults.Success(message);
        }
        catch (ArgumentException ex)
        {
            return CommandResults.Failure(ex.Message);
        }
        catch (Exception ex) when (ex is Npgsql.NpgsqlException or TimeoutException)
        {
            return CommandResults.Failure($"The database refused or could not be reached: {ex.Message}");
        }
    }

    /// <summary>Runs <paramref name="step"/> for each queue in turn; the sum of what they return.</summary>
    private static async Task<long> EachAsync(IReadOnlyList<string> queues, Func<string, Task<long>> step)
    {
        long total = 0;
        foreach (var queue in queues)
        {
            total += await step(queue);
        }

        return total;
    }
}

/// <summary>Healthy once the schema is migrated and the last refresh reached the database: no query per probe.</summary>
internal sealed class TaskiqQueueHealthCheck(TaskiqQueueMonitor monitor) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
        => Task.FromResult(!monitor.Migrated ? HealthCheckResult.Unhealthy("The TaskiqPg schema is not migrated yet.")
            : monitor.DatabaseReachable ? HealthCheckResult.Healthy()
            : HealthCheckResult.Unhealthy("The queue's figures could not be read from the database lately."));
}
