namespace TaskiqPg;

/// <summary>Settings of the task browser mapped by <c>MapTaskiqDashboard</c>.</summary>
public sealed class TaskiqDashboardOptions
{
    /// <summary>
    /// Shows everything and changes nothing: the action buttons are hidden and every action endpoint answers 403.
    /// Default false.
    /// </summary>
    public bool ReadOnly { get; set; }

    /// <summary>Title shown in the page header and the browser tab. Default <c>TaskiqPg</c>.</summary>
    public string Title { get; set; } = "TaskiqPg";

    /// <summary>
    /// Service key of a keyed registration (<c>AddKeyedTaskiqPg</c>, <c>AddKeyedTaskiqPgClient</c>) whose queue this
    /// browser shows. <c>null</c> (default): the unkeyed registration.
    /// </summary>
    public string? ServiceKey { get; set; }

    /// <summary>
    /// Queues listed even while they hold no task and have no worker. The browser also finds every queue of the table on
    /// its own (see <see cref="PostgresBroker.ListQueuesAsync"/>). Default none.
    /// </summary>
    public IReadOnlyList<string> Queues { get; set; } = [];
}
