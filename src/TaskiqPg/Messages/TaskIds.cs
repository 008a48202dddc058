namespace TaskiqPg;

/// <summary>Task id helpers.</summary>
public static class TaskIds
{
    /// <summary>A new task id: a random UUID as 32 lowercase hex characters (taskiq's default format).</summary>
    /// <returns>A new, unique task id.</returns>
    public static string New() => Guid.NewGuid().ToString("N");
}
