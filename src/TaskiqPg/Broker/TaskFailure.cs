namespace TaskiqPg;

/// <summary>A failed attempt to report.</summary>
/// <param name="Lease">The claim.</param>
/// <param name="Error">Reason kept in <c>last_error</c>.</param>
/// <param name="Retry">False dead-letters at once (poison input); true retries while attempts remain.</param>
public readonly record struct TaskFailure(LeaseRef Lease, string Error, bool Retry);
