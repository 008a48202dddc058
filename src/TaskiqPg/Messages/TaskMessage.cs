using System.Text.Json;
using System.Text.Json.Serialization;

namespace TaskiqPg;

/// <summary>
/// One task as it travels through the queue, in taskiq's JSON shape:
/// <c>{"task_id", "task_name", "labels", "labels_types", "args", "kwargs"}</c>.
/// </summary>
public sealed class TaskMessage
{
    /// <summary>Longest task id a kick accepts, in characters (a NOTIFY payload carries ids, and it is limited).</summary>
    public const int MaxTaskIdLength = 255;

    // Backing fields with null-coalescing init accessors: the source-generated deserializer sets init-only properties
    // that are missing from the JSON to null instead of leaving their initializers (other producers omit fields).
    private readonly Dictionary<string, string> _labels = [];
    private readonly List<JsonElement> _args = [];
    private readonly Dictionary<string, JsonElement> _kwargs = [];

    /// <summary>Unique id of this task; by default 32 lowercase hex characters (<see cref="TaskIds.New"/>).</summary>
    [JsonPropertyName("task_id")]
    public required string TaskId { get; init; }

    /// <summary>Name the task was registered under.</summary>
    [JsonPropertyName("task_name")]
    public required string TaskName { get; init; }

    /// <summary>Free-form labels (trace context, user metadata). Values are strings; scalar JSON values are read as their text.</summary>
    [JsonPropertyName("labels")]
    [JsonConverter(typeof(StringLabelsConverter))]
    public Dictionary<string, string> Labels { get => _labels; init => _labels = value ?? []; }

    /// <summary>taskiq's label type codes, kept as received.</summary>
    [JsonPropertyName("labels_types")]
    public Dictionary<string, int>? LabelsTypes { get; init; }

    /// <summary>Positional arguments.</summary>
    [JsonPropertyName("args")]
    public List<JsonElement> Args { get => _args; init => _args = value ?? []; }

    /// <summary>Keyword arguments.</summary>
    [JsonPropertyName("kwargs")]
    public Dictionary<string, JsonElement> Kwargs { get => _kwargs; init => _kwargs = value ?? []; }

    /// <summary>A copy with its own label dictionary (the caller's message is never changed by a kick).</summary>
    internal TaskMessage WithLabels(Dictionary<string, string> labels) => new()
    {
        TaskId = TaskId,
        TaskName = TaskName,
        Labels = labels,
        LabelsTypes = LabelsTypes,
        Args = Args,
        Kwargs = Kwargs,
    };

    /// <summary>Serializes to taskiq's JSON text.</summary>
    /// <returns>The message as taskiq's JSON.</returns>
    public string ToJson() => JsonSerializer.Serialize(this, TaskiqJsonContext.Default.TaskMessage);

    /// <summary>Parses taskiq's JSON text.</summary>
    /// <exception cref="JsonException">The text is not a valid message.</exception>
    /// <param name="json">The JSON text.</param>
    /// <returns>The message.</returns>
    public static TaskMessage FromJson(string json)
        => JsonSerializer.Deserialize(json, TaskiqJsonContext.Default.TaskMessage)
           ?? throw new JsonException("The message is JSON 'null', not a task message.");

    /// <summary>Builds a message, serializing each argument with <paramref name="serializerOptions"/>.</summary>
    /// <param name="taskName">The task name.</param>
    /// <param name="args">Positional arguments; each is serialized to JSON.</param>
    /// <param name="kwargs">Keyword arguments; each value is serialized to JSON.</param>
    /// <param name="serializerOptions">JSON options; default: <see cref="TaskiqSerializer.DefaultOptions"/>.</param>
    /// <param name="taskId">The task id; default: a new one (<see cref="TaskIds.New"/>).</param>
    /// <returns>The message, ready to kick.</returns>
    /// <exception cref="ArgumentException"><paramref name="taskName"/> is null or empty.</exception>
    public static TaskMessage Create(string taskName, IEnumerable<object?>? args = null,
        IReadOnlyDictionary<string, object?>? kwargs = null, JsonSerializerOptions? serializerOptions = null,
        string? taskId = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(taskName);
        var options = serializerOptions ?? TaskiqSerializer.DefaultOptions;
        return new TaskMessage
        {
            TaskId = taskId ?? TaskIds.New(),
            TaskName = taskName,
            Args = args?.Select(a => JsonSerializer.SerializeToElement(a, options)).ToList() ?? [],
            Kwargs = kwargs?.ToDictionary(kv => kv.Key, kv => JsonSerializer.SerializeToElement(kv.Value, options)) ?? [],
        };
    }
}
