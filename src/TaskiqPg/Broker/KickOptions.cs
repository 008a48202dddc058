namespace TaskiqPg;

/// <summary>Per-kick settings.</summary>
public sealed record KickOptions
{
    /// <summary>Longest <see cref="Delay"/> a kick accepts: 100 years (36,500 days).</summary>
    public static readonly TimeSpan MaxDelay = TimeSpan.FromDays(36_500);

    /// <summary>Longest <see cref="Timeout"/> a kick accepts: 49 days (a handler's cancellation timer cannot run longer).</summary>
    public static readonly TimeSpan MaxTimeout = TimeSpan.FromDays(49);

    /// <summary>Run no earlier than this long after the kick, measured on the database clock. Default: now. At most <see cref="MaxDelay"/>.</summary>
    public TimeSpan? Delay { get; init; }

    /// <summary>Run no earlier than this instant (wins over <see cref="Delay"/>). Any offset is accepted; it is stored in UTC.</summary>
    public DateTimeOffset? RunAt { get; init; }

    /// <summary>Higher runs first among due tasks. Default 0.</summary>
    public int Priority { get; init; }

    /// <summary>Attempts including the first run. Default: <see cref="PostgresBrokerOptions.DefaultMaxAttempts"/>.</summary>
    public int? MaxAttempts { get; init; }

    /// <summary>Extra labels merged into the message's labels.</summary>
    public IReadOnlyDictionary<string, string>? Labels { get; init; }

    /// <summary>Handler timeout for this task (stored as the <c>timeout</c> label, in seconds, as taskiq does). Positive, at most <see cref="MaxTimeout"/>.</summary>
    public TimeSpan? Timeout { get; init; }

    /// <summary>Makes the kick unique (see <see cref="UniqueOptions"/>); a duplicate returns the existing task. Default: none.</summary>
    public UniqueOptions? Unique { get; init; }

    /// <summary>The queue of the broker's table to kick to (an identifier). Default: the broker's <see cref="PostgresBrokerOptions.Queue"/>.</summary>
    public string? Queue { get; init; }

    internal static void Validate(KickOptions options)
    {
        options.Unique?.Validate();
        if (options.Queue is not null)
        {
            PgIdentifier.Validate(options.Queue, $"{nameof(KickOptions)}.{nameof(Queue)}");
        }

        if (options.MaxAttempts is < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.MaxAttempts, $"{nameof(KickOptions)}.{nameof(MaxAttempts)} must be at least 1.");
        }

        if (options.Delay > MaxDelay)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.Delay,
                $"{nameof(KickOptions)}.{nameof(Delay)} must be at most {MaxDelay.TotalDays:0} days; use {nameof(RunAt)} for an instant far ahead.");
        }

        if (options.Timeout is { } timeout && (timeout <= TimeSpan.Zero || timeout > MaxTimeout))
        {
            throw new ArgumentOutOfRangeException(nameof(options), timeout,
                $"{nameof(KickOptions)}.{nameof(Timeout)} must be positive and at most {MaxTimeout.TotalDays:0} days.");
        }
    }
}
