using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace TaskiqPg;

/// <summary>
/// The JSON stored in the <c>schedule</c> column. Settable properties, not init-only: the source-generated
/// deserializer would set init-only properties missing from the JSON to null/0 instead of their declared defaults.
/// </summary>
internal sealed class StoredSchedule
{
    [JsonPropertyName("cron")]
    public string? Cron { get; set; }

    [JsonPropertyName("time_zone")]
    public string? TimeZone { get; set; }

    [JsonPropertyName("interval_seconds")]
    public double? IntervalSeconds { get; set; }

    [JsonPropertyName("run_at")]
    public DateTimeOffset? RunAt { get; set; }

    [JsonPropertyName("args")]
    public List<JsonElement> Args { get; set; } = [];

    [JsonPropertyName("kwargs")]
    public Dictionary<string, JsonElement> Kwargs { get; set; } = [];

    [JsonPropertyName("labels")]
    public Dictionary<string, string> Labels { get; set; } = [];

    [JsonPropertyName("missed_fires")]
    public string MissedFires { get; set; } = "skip";

    [JsonPropertyName("max_catch_up")]
    public int MaxCatchUp { get; set; } = 100;

    public static StoredSchedule From(ScheduleDefinition definition, JsonSerializerOptions options) => new()
    {
        Cron = definition.Cron,
        TimeZone = definition.TimeZone,
        IntervalSeconds = definition.Interval?.TotalSeconds,
        RunAt = definition.RunAt?.ToUniversalTime(),
        Args = definition.Args?.Select(a => JsonSerializer.SerializeToElement(a, options)).ToList() ?? [],
        Kwargs = definition.Kwargs?.ToDictionary(kv => kv.Key, kv => JsonSerializer.SerializeToElement(kv.Value, options)) ?? [],
        Labels = definition.Labels?.ToDictionary(kv => kv.Key, kv => kv.Value) ?? [],
        MissedFires = definition.MissedFires == MissedFirePolicy.CatchUp ? "catch_up" : "skip",
        MaxCatchUp = definition.MaxCatchUp,
    };

    public ScheduleDefinition ToDefinition(string taskName) => new()
    {
        TaskName = taskName,
        Cron = Cron,
        TimeZone = TimeZone,
        Interval = IntervalSeconds is { } s ? TimeSpan.FromSeconds(s) : null,
        RunAt = RunAt?.ToUniversalTime(),
        Args = (Args ?? []).Cast<object?>().ToList(),
        Kwargs = (Kwargs ?? []).ToDictionary(kv => kv.Key, kv => (object?)kv.Value),
        Labels = Labels ?? [],
        MissedFires = (MissedFires ?? "skip") switch
        {
            "skip" => MissedFirePolicy.Skip,
            "catch_up" => MissedFirePolicy.CatchUp,
            _ => throw new JsonException($"missed_fires is '{MissedFires}'; expected 'skip' or 'catch_up'."),
        },
        MaxCatchUp = MaxCatchUp,
    };

    public string ToJson() => JsonSerializer.Serialize(this, ScheduleJsonContext.Default.StoredSchedule);

    public static StoredSchedule FromJson(string json)
        => JsonSerializer.Deserialize(json, ScheduleJsonContext.Default.StoredSchedule) ?? throw new JsonException("The schedule is JSON 'null'.");

    /// <summary>A stable id for a schedule declared in code: the same definition gives the same id on every start.</summary>
    public static Guid StableId(string taskName, string json)
    {
        var hash = SHA256.HashData(Encoding.UTF8.GetBytes("taskiqpg-static-schedule\n" + taskName + "\n" + json));
        return new Guid(hash.AsSpan(0, 16));
    }
}

[JsonSerializable(typeof(StoredSchedule))]
internal sealed partial class ScheduleJsonContext : JsonSerializerContext;
