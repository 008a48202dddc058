namespace TaskiqPg.Tests;

/// <summary>Pure fire-time computation: no database, no clock.</summary>
public sealed class ScheduleCalculatorTests
{
    private static readonly DateTimeOffset T0 = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);

    [Fact]
    public void Cron_with_seconds_is_due_at_each_matching_instant()
    {
        var schedule = CompiledSchedule.Compile(new ScheduleDefinition { TaskName = "t", Cron = "*/2 * * * * *", MissedFires = MissedFirePolicy.CatchUp });

        var due = schedule.DueInstants(after: T0, anchor: T0, now: T0.AddSeconds(7));

        Assert.Equal([T0.AddSeconds(2), T0.AddSeconds(4), T0.AddSeconds(6)], due);
        Assert.Equal(T0.AddSeconds(8), schedule.NextAfter(T0.AddSeconds(7), T0));
    }

    [Fact]
    public void Five_field_cron_has_minute_precision()
    {
        var schedule = CompiledSchedule.Compile(new ScheduleDefinition { TaskName = "t", Cron = "*/15 * * * *" });
        Assert.Equal(T0.AddMinutes(15), schedule.NextAfter(T0.AddSeconds(1), T0));
    }

    [Fact]
    public void Cron_in_a_time_zone_follows_the_spring_forward_change()
    {
        // Europe/Berlin jumps from 02:00 to 03:00 on 2026-03-29: a daily 02:30 job runs at 03:00 local that day
        // (Cronos' rule for a skipped time), which is 01:00 UTC; the day before 02:30 CET is 01:30 UTC.
        var schedule = CompiledSchedule.Compile(new ScheduleDefinition { TaskName = "t", Cron = "0 30 2 * * *", TimeZone = "Europe/Berlin" });

        var before = schedule.NextAfter(new DateTimeOffset(2026, 3, 28, 0, 0, 0, TimeSpan.Zero), T0);
        var onChange = schedule.NextAfter(new DateTimeOffset(2026, 3, 29, 0, 0, 0, TimeSpan.Zero), T0);
        var after = schedule.NextAfter(new DateTimeOffset(2026, 3, 30, 0, 0, 0, TimeSpan.Zero), T0);

        Assert.Equal(new DateTimeOffset(2026, 3, 28, 1, 30, 0, TimeSpan.Zero), before);
        Assert.Equal(new DateTimeOffset(2026, 3, 29, 1, 0, 0, TimeSpan.Zero), onChange);
        Assert.Equal(new DateTimeOffset(2026, 3, 30, 0, 30, 0, TimeSpan.Zero), after); // 02:30 CEST
    }

    [Fact]
    public void Interval_instants_count_from_the_anchor()
    {
        var schedule = CompiledSchedule.Compile(new ScheduleDefinition { TaskName = "t", Interval = TimeSpan.FromSeconds(10), MissedFires = MissedFirePolicy.CatchUp });

        Assert.Equal([T0.AddSeconds(20), T0.AddSeconds(30)], schedule.DueInstants(after: T0.AddSeconds(10), anchor: T0, now: T0.AddSeconds(35)));
        Assert.Equal(T0.AddSeconds(40), schedule.NextAfter(T0.AddSeconds(35), T0));
    }

    [Fact]
    public void Missed_instants_fire_once_under_skip_and_each_under_catch_up_up_to_the_bound()
    {
        var skip = CompiledSchedule.Compile(new ScheduleDefinition { TaskName = "t", Cron = "* * * * * *" });
        var catchUp = CompiledSchedule.Compile(new ScheduleDefinition { TaskName = "t", Cron = "* * * * * *", MissedFires = MissedFirePolicy.CatchUp, MaxCatchUp = 5 });

        Assert.Equal([T0.AddSeconds(10)], skip.DueInstants(T0, T0, T0.AddSeconds(10)));
        Assert.Equal(Enumerable.Range(6, 5).Select(s => T0.AddSeconds(s)), catchUp.DueInstants(T0, T0, T0.AddSeconds(10)));
        // A per-second cron whose last fire was a year ago: only the latest instant, computed without enumerating a year.
        Assert.Equal([T0.AddYears(1)], skip.DueInstants(T0, T0, T0.AddYears(1)));
    }

    [Fact]
    public void One_shot_is_due_once_its_time_has_come()
    {
        var schedule = CompiledSchedule.Compile(new ScheduleDefinition { TaskName = "t", RunAt = T0.AddMinutes(1) });

        Assert.Empty(schedule.DueInstants(T0, T0, T0.AddSeconds(59)));
        Assert.Equal([T0.AddMinutes(1)], schedule.DueInstants(T0, T0, T0.AddMinutes(2)));
        Assert.Null(schedule.NextAfter(T0.AddMinutes(2), T0));
    }

    [Theory]
    [InlineData("Cron", "not a cron", null, null)]
    [InlineData("Cron", "* * *", null, null)]
    [InlineData("Cron", "61 * * * * *", null, null)]
    [InlineData("TimeZone", "* * * * *", "Mars/Olympus_Mons", null)]
    [InlineData("Interval", null, null, 0.5)]
    public void Invalid_definitions_name_the_wrong_field(string field, string? cron, string? zone, double? intervalSeconds)
    {
        var error = Assert.Throws<ScheduleValidationException>(() => CompiledSchedule.Compile(new ScheduleDefinition
        {
            TaskName = "t",
            Cron = cron,
            TimeZone = zone,
            Interval = intervalSeconds is { } s ? TimeSpan.FromSeconds(s) : null,
        }));

        Assert.Equal(field, error.ParamName);
    }

    [Fact]
    public void Unknown_task_and_missing_kind_are_refused()
    {
        Assert.Equal("TaskName", Assert.Throws<ScheduleValidationException>(() =>
            CompiledSchedule.Compile(new ScheduleDefinition { TaskName = "nope", Cron = "* * * * *" }, name => name == "known")).ParamName);
        Assert.Contains("exactly one of", Assert.Throws<ScheduleValidationException>(() =>
            CompiledSchedule.Compile(new ScheduleDefinition { TaskName = "t" })).Message);
    }
}
