namespace TaskiqPg;

/// <summary>
/// Identifies one claim of a task: the row and the claim number. Every claim of a row gets a new number (a rescue that
/// gives an unstarted claim's attempt back does not give its number back), so a lost claim can never act for a later one.
/// </summary>
internal readonly record struct LeaseRef(long Id, int Claim);
