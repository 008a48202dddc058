namespace TaskiqPg;

/// <summary>Per-kick settings.</summary>
public sealed record KickOptions
{
    /// <summary>Run no earlier than this long after the kick, measured on the database clock. Default: now.</summary>
    public TimeSpan? Delay { get; init; }

    /// <summary>Run no earlier than this instant (wins over <see cref="Delay"/>).</summary>
    public DateTimeOffset? RunAt { get; init; }

    /// <summary>Higher runs first among due tasks. Default 0.</summary>
    public int Priority { get; init; }

    /// <summary>Attempts including the first run. Default: <see cref="PostgresBrokerOptions.DefaultMaxAttempts"/>.</summary>
    public int? MaxAttempts { get; init; }

    /// <summary>Extra labels merged into the message's labels.</summary>
    public IReadOnlyDictionary<string, string>? Labels { get; init; }

    /// <summary>Handler timeout for this task (stored as the <c>timeout</c> label, in seconds, as taskiq does).</summary>
    public TimeSpan? Timeout { get; init; }
}
