namespace TaskiqPg;

/// <summary>Identifies one claim of a task: the row and the attempt number. A later claim of the same row has another attempt.</summary>
public readonly record struct LeaseRef(long Id, int Attempt);
