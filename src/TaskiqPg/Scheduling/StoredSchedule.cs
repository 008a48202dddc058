using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using System.Xml;

namespace TaskiqPg;

/// <summary>
/// The JSON stored in the <c>schedule</c> column. Settable properties, not init-only: the source-generated
/// deserializer would set init-only properties missing from the JSON to null/0 instead of their declared defaults.
/// Python taskiq's <c>ScheduledTask</c> keys (<c>cron_offset</c>, <c>time</c>, <c>interval</c>) are read when TaskiqPg's
/// own are absent, and written beside them for storage (<see cref="ToStoredJson"/>), because taskiq-postgres's schedule
/// source indexes every one of its keys.
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
    [JsonConverter(typeof(StringLabelsConverter))] // Python writes labels with their native types
    public Dictionary<string, string> Labels { get; set; } = [];

    /// <summary>Python: a time zone name for <c>cron</c>, or a fixed offset (an ISO 8601 duration, or seconds).</summary>
    [JsonPropertyName("cron_offset")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public JsonElement? PythonCronOffset { get; set; }

    /// <summary>Python: the one-shot time (ISO 8601; without an offset it is UTC).</summary>
    [JsonPropertyName("time")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public JsonElement? PythonTime { get; set; }

    /// <summary>Python: the interval, whole seconds or an ISO 8601 duration.</summary>
    [JsonPropertyName("interval")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public JsonElement? PythonInterval { get; set; }

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
        TimeZone = TimeZone ?? (Cron is null ? null : ZoneOf(PythonCronOffset)),
        Interval = IntervalSeconds is { } s ? TimeSpan.FromSeconds(s) : DurationOf(PythonInterval, "interval"),
        RunAt = RunAt?.ToUniversalTime() ?? TimeOf(PythonTime),
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

    /// <summary>TaskiqPg's own keys only: the input of <see cref="StableId"/>, which must not change across versions.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, ScheduleJsonContext.Default.StoredSchedule);

    /// <summary>
    /// What is stored: TaskiqPg's keys plus every key Python's schedule source reads (<c>cron_offset</c> the time zone,
    /// <c>time</c> the one-shot time, <c>interval</c> in whole seconds, rounded up; <c>null</c> when not set), so a Python
    /// reader of the table never meets a missing key.
    /// </summary>
    public string ToStoredJson()
    {
        var node = JsonNode.Parse(ToJson())!.AsObject();
        node["cron_offset"] = TimeZone is null ? null : JsonValue.Create(TimeZone);
        node["time"] = RunAt is { } at ? JsonValue.Create(at.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.ffffff'+00:00'", System.Globalization.CultureInfo.InvariantCulture)) : null;
        node["interval"] = IntervalSeconds is { } seconds ? JsonValue.Create((long)Math.Ceiling(seconds)) : null;
        node["task_id"] = null;
        return node.ToJsonString();
    }

    /// <summary>A Python <c>cron_offset</c> as a time zone id: a zone name as it is; a whole-hour fixed offset as <c>Etc/GMT∓h</c>.</summary>
    private static string? ZoneOf(JsonElement? offset)
    {
        if (offset is not { } value || value.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        if (value.ValueKind == JsonValueKind.String && value.GetString() is { } text && !LooksLikeDuration(text))
        {
            return text;
        }

        var span = DurationOf(value, "cron_offset")!.Value;
        if (span == TimeSpan.Zero)
        {
            return "UTC";
        }

        if (span.Ticks % TimeSpan.TicksPerHour != 0 || Math.Abs(span.TotalHours) > 14)
        {
            throw new JsonException($"cron_offset {span} is not a whole number of hours within ±14 h: use a time zone name instead.");
        }

        var hours = (int)span.TotalHours;
        return hours > 0 ? $"Etc/GMT-{hours}" : $"Etc/GMT+{-hours}"; // the Etc zones' signs are inverted (POSIX)
    }

    private static bool LooksLikeDuration(string text) => text.StartsWith('P') || text.StartsWith("-P", StringComparison.Ordinal);

    /// <summary>Whole or fractional seconds (pydantic 1) or an ISO 8601 duration (pydantic 2).</summary>
    private static TimeSpan? DurationOf(JsonElement? element, string field)
    {
        if (element is not { } value || value.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        try
        {
            return value.ValueKind switch
            {
                JsonValueKind.Number => TimeSpan.FromSeconds(value.GetDouble()),
                JsonValueKind.String => XmlConvert.ToTimeSpan(value.GetString()!),
                _ => throw new FormatException($"a {value.ValueKind}"),
            };
        }
        catch (FormatException ex)
        {
            throw new JsonException($"{field} '{value.GetRawText()}' is neither seconds nor an ISO 8601 duration.", ex);
        }
    }

    private static DateTimeOffset? TimeOf(JsonElement? element)
    {
        if (element is not { } value || value.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        if (value.ValueKind == JsonValueKind.String
            && DateTimeOffset.TryParse(value.GetString(), System.Globalization.CultureInfo.InvariantCulture,
                System.Globalization.DateTimeStyles.AssumeUniversal | System.Globalization.DateTimeStyles.AdjustToUniversal, out var at))
        {
            return at;
        }

        throw new JsonException($"time '{value.GetRawText()}' is not an ISO 8601 date and time.");
    }

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
