namespace TaskiqPg;

/// <summary>The stored state of a task that is still in the messages table.</summary>
/// <param name="Status">pending, processing or dead.</param>
/// <param name="Attempts">Attempts used so far.</param>
/// <param name="MaxAttempts">Attempts allowed.</param>
/// <param name="RunAt">When it is or was due.</param>
/// <param name="LastError">The last failure reason.</param>
/// <param name="LockedBy">The worker holding its lease.</param>
public sealed record TaskState(string Status, int Attempts, int MaxAttempts, DateTimeOffset RunAt, string? LastError, string? LockedBy);
