namespace TaskiqPg;

/// <summary>What a schedule does about instants that passed while no scheduler ran.</summary>
public enum MissedFirePolicy
{
    /// <summary>Fire once, for the latest missed instant (default).</summary>
    Skip,

    /// <summary>Fire every missed instant, up to <see cref="ScheduleDefinition.MaxCatchUp"/> of the latest ones.</summary>
    CatchUp,
}
