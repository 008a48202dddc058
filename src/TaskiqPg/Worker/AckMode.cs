namespace TaskiqPg;

/// <summary>When a claimed task is acknowledged (its row deleted), as in taskiq.</summary>
public enum AckMode
{
    /// <summary>Right after the claim, before running: a crash loses the task, and failures are not retried.</summary>
    WhenReceived,

    /// <summary>After the handler returns, before its result is stored.</summary>
    WhenExecuted,

    /// <summary>After the result is stored (default): a crash at any point reruns the task.</summary>
    WhenSaved,
}
