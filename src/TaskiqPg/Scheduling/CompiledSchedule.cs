using Cronos;

namespace TaskiqPg;

/// <summary>A validated schedule that computes its fire instants. Pure: no clock of its own, the caller passes "now".</summary>
internal sealed class CompiledSchedule
{
    // Windows searched backwards from "now" for missed cron instants, so a years-old last fire of a per-second cron
    // never means enumerating millions of instants.
    private static readonly TimeSpan[] SearchWindows =
        [TimeSpan.FromMinutes(2), TimeSpan.FromHours(2), TimeSpan.FromDays(2), TimeSpan.FromDays(40), TimeSpan.FromDays(400), TimeSpan.MaxValue];

    private CompiledSchedule(ScheduleDefinition definition, CronExpression? cron, TimeZoneInfo zone)
    {
        Definition = definition;
        Cron = cron;
        Zone = zone;
    }

    public ScheduleDefinition Definition { get; }

    public CronExpression? Cron { get; }

    public TimeZoneInfo Zone { get; }

    /// <summary>Validates <paramref name="definition"/>.</summary>
    /// <exception cref="ScheduleValidationException">A field is wrong; the exception names it.</exception>
    public static CompiledSchedule Compile(ScheduleDefinition definition, Func<string, bool>? isKnownTask = null)
    {
        ArgumentNullException.ThrowIfNull(definition);
        if (string.IsNullOrWhiteSpace(definition.TaskName))
        {
            throw new ScheduleValidationException(nameof(definition.TaskName), "must not be empty.");
        }

        if (isKnownTask is not null && !isKnownTask(definition.TaskName))
        {
            throw new ScheduleValidationException(nameof(definition.TaskName), $"no task named '{definition.TaskName}' is registered.");
        }

        var kinds = (definition.Cron is not null ? 1 : 0) + (definition.Interval is not null ? 1 : 0) + (definition.RunAt is not null ? 1 : 0);
        if (kinds != 1)
        {
            throw new ScheduleValidationException(nameof(definition.Cron), "set exactly one of Cron, Interval or RunAt.");
        }

        // PostgreSQL stores neither a NUL nor a lone surrogate (in the schedule's jsonb or in the kicked task's labels).
        if ((definition.Labels ?? new Dictionary<string, string>()).Any(kv => Unstorable(kv.Key) || Unstorable(kv.Value)))
        {
            throw new ScheduleValidationException(nameof(definition.Labels), "a label key or value holds a NUL character or a lone UTF-16 surrogate.");
        }

        if ((definition.Kwargs ?? new Dictionary<string, object?>()).Keys.Any(Unstorable) || Unstorable(definition.TaskName))
        {
            throw new ScheduleValidationException(Unstorable(definition.TaskName) ? nameof(definition.TaskName) : nameof(definition.Kwargs),
                "holds a NUL character or a lone UTF-16 surrogate.");
        }

        if (definition.MaxCatchUp < 1)
        {
            throw new ScheduleValidationException(nameof(definition.MaxCatchUp), "must be at least 1.");
        }

        if (definition.Interval is { } interval && interval < TimeSpan.FromSeconds(1))
        {
            throw new ScheduleValidationException(nameof(definition.Interval), $"{interval.TotalMilliseconds} ms is below the minimum of 1 s.");
        }

        if (definition.TimeZone is not null && definition.Cron is null)
        {
            throw new ScheduleValidationException(nameof(definition.TimeZone), "only applies to Cron schedules.");
        }

        TimeZoneInfo zone;
        try
        {
            zone = definition.TimeZone is null ? TimeZoneInfo.Utc : TimeZoneInfo.FindSystemTimeZoneById(definition.TimeZone);
        }
        catch (Exception ex) when (ex is TimeZoneNotFoundException or InvalidTimeZoneException)
        {
            throw new ScheduleValidationException(nameof(definition.TimeZone), $"'{definition.TimeZone}' is not a known time zone (use an IANA name such as 'Europe/Berlin').", ex);
        }

        CronExpression? cron = null;
        if (definition.Cron is { } expression)
        {
            var fields = expression.Split(' ', StringSplitOptions.RemoveEmptyEntries).Length;
            if (fields is not (5 or 6))
            {
                throw new ScheduleValidationException(nameof(definition.Cron), $"'{expression}' has {fields} fields; use 5 (minute precision) or 6 (seconds first).");
            }

            try
            {
                cron = CronExpression.Parse(expression, fields == 6 ? CronFormat.IncludeSeconds : CronFormat.Standard);
            }
            catch (CronFormatException ex)
            {
                throw new ScheduleValidationException(nameof(definition.Cron), $"'{expression}' is not a valid cron expression: {ex.Message}");
            }
        }

        return new CompiledSchedule(definition, cron, zone);
    }

    /// <summary>
    /// The instants to fire now: those after <paramref name="after"/> (the last fire, or the creation) and not after
    /// <paramref name="now"/>; the latest one for <see cref="MissedFirePolicy.Skip"/>, up to MaxCatchUp of the latest
    /// for <see cref="MissedFirePolicy.CatchUp"/>. <paramref name="anchor"/> is the start of an interval schedule.
    /// </summary>
    public IReadOnlyList<DateTimeOffset> DueInstants(DateTimeOffset after, DateTimeOffset anchor, DateTimeOffset now)
    {
        var wanted = Definition.MissedFires == MissedFirePolicy.CatchUp ? Definition.MaxCatchUp : 1;
        if (Definition.RunAt is { } runAt)
        {
            return runAt <= now ? [runAt] : [];
        }

        if (Definition.Interval is { } interval)
        {
            var last = Math.Max(-1, (now - anchor).Ticks / interval.Ticks);
            var first = Math.Max(0, (after - anchor).Ticks / interval.Ticks + 1);
            first = Math.Max(first, last - wanted + 1);
            var instants = new List<DateTimeOffset>();
            for (var k = first; k <= last; k++)
            {
                instants.Add(anchor + TimeSpan.FromTicks(interval.Ticks * k));
            }

            return instants;
        }

        foreach (var window in SearchWindows)
        {
            var from = window == TimeSpan.MaxValue || now - after <= window ? after : now - window;
            var found = Cron!.GetOccurrences(from.UtcDateTime, now.UtcDateTime, Zone, fromInclusive: false, toInclusive: true)
                .Select(t => new DateTimeOffset(t, TimeSpan.Zero));
            var latest = new Queue<DateTimeOffset>();
            foreach (var instant in found)
            {
                latest.Enqueue(instant);
                if (latest.Count > wanted)
                {
                    latest.Dequeue();
                }
            }

            if (latest.Count >= wanted || from == after)
            {
                return latest.ToArray();
            }
        }

        return [];
    }

    /// <summary>The next instant strictly after <paramref name="now"/>, or null when none will come.</summary>
    public DateTimeOffset? NextAfter(DateTimeOffset now, DateTimeOffset anchor)
    {
        if (Definition.RunAt is { } runAt)
        {
            return runAt > now ? runAt : null;
        }

        if (Definition.Interval is { } interval)
        {
            var k = Math.Max(0, (now - anchor).Ticks / interval.Ticks + 1);
            return anchor + TimeSpan.FromTicks(interval.Ticks * k);
        }

        return Cron!.GetNextOccurrence(now.UtcDateTime, Zone) is { } next ? new DateTimeOffset(next, TimeSpan.Zero) : null;
    }

    private static bool Unstorable(string? text) => text is not null && Internal.StoredText.HasUnstorableCharacters(text);
}
