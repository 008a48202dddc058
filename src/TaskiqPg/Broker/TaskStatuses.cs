namespace TaskiqPg;

/// <summary>Values of the messages table's <c>status</c> column. A completed task's row is deleted.</summary>
public static class TaskStatuses
{
    /// <summary>Waiting to be claimed (due once <c>run_at</c> has passed).</summary>
    public const string Pending = "pending";

    /// <summary>Claimed by a worker under a lease.</summary>
    public const string Processing = "processing";

    /// <summary>Dead-lettered: attempts exhausted or poison input; <c>last_error</c> says why.</summary>
    public const string Dead = "dead";
}
