namespace TaskiqPg;

/// <summary>Labels the scheduler puts on each task it kicks.</summary>
public static class ScheduleLabels
{
    /// <summary>The schedule's id.</summary>
    public const string ScheduleId = "schedule_id";

    /// <summary>The fired instant (ISO 8601, UTC).</summary>
    public const string FireAt = "schedule_fire_at";
}
