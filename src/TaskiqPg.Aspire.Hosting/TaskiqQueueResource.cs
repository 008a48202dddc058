namespace Aspire.Hosting.ApplicationModel;

/// <summary>
/// TaskiqPg's queues on a database, as a resource of the AppHost: the host migrates the schema once when the database
/// is ready, then shows each queue's live figures in the dashboard and offers commands (pause, resume, retry or purge
/// dead letters, cancel queued tasks, kick a task). Services reference it for their connection and wait for it.
/// </summary>
public sealed class TaskiqQueueResource : Resource, IResourceWithConnectionString, IResourceWithWaitSupport
{
    internal TaskiqQueueResource(string name, IResourceWithConnectionString database, IReadOnlyList<string> queues)
        : base(name)
    {
        Database = database;
        Queues = queues;
    }

    /// <summary>The database holding the queue tables.</summary>
    public IResourceWithConnectionString Database { get; }

    /// <summary>The queues this resource shows and steers (the first is the services' default queue).</summary>
    public IReadOnlyList<string> Queues { get; }

    /// <summary>The database's connection string: services that reference this resource connect to it.</summary>
    public ReferenceExpression ConnectionStringExpression => Database.ConnectionStringExpression;

    /// <summary>The database's connection properties (host, port, user name, password, database, URI).</summary>
    /// <returns>The database's properties.</returns>
    public IEnumerable<KeyValuePair<string, ReferenceExpression>> GetConnectionProperties() => Database.GetConnectionProperties();

    /// <summary>Live state, refreshed by the host's monitor.</summary>
    internal TaskiqQueueMonitor? Monitor { get; set; }
}
