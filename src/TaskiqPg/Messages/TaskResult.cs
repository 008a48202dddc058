using System.Text.Json;
using System.Text.Json.Serialization;

namespace TaskiqPg;

/// <summary>
/// The outcome of one task in taskiq's JSON shape:
/// <c>{"is_err", "return_value", "execution_time", "labels", "error"}</c>, the error in both TaskiqPg's and Python
/// taskiq's shape (see <see cref="TaskError"/>).
/// The stack trace is stored next to it (see <see cref="StackTrace"/>), never inside the JSON.
/// </summary>
public sealed class TaskResult
{
    private static readonly JsonElement JsonNull = JsonDocument.Parse("null").RootElement.Clone();

    // See TaskMessage: a missing "labels" must read as empty, not null.
    private readonly Dictionary<string, string> _labels = [];

    /// <summary>True when the task failed.</summary>
    [JsonPropertyName("is_err")]
    public bool IsError { get; init; }

    /// <summary>The handler's return value (JSON <c>null</c> for void handlers and failures).</summary>
    [JsonPropertyName("return_value")]
    public JsonElement ReturnValue { get; init; } = JsonNull;

    /// <summary>Handler run time in seconds.</summary>
    [JsonPropertyName("execution_time")]
    public double ExecutionTime { get; init; }

    /// <summary>The task's labels.</summary>
    [JsonPropertyName("labels")]
    [JsonConverter(typeof(StringLabelsConverter))]
    public Dictionary<string, string> Labels { get => _labels; init => _labels = value ?? []; }

    /// <summary>The failure, when <see cref="IsError"/>.</summary>
    [JsonPropertyName("error")]
    public TaskError? Error { get; init; }

    /// <summary>The failure's stack trace, kept in its own column (null when not stored).</summary>
    [JsonIgnore]
    public string? StackTrace { get; init; }

    /// <summary>Deserializes <see cref="ReturnValue"/>.</summary>
    /// <typeparam name="T">The type to read the return value as.</typeparam>
    /// <param name="options">JSON options; default: <see cref="TaskiqSerializer.DefaultOptions"/>.</param>
    /// <returns>The return value, or default when the result has none.</returns>
    /// <exception cref="System.Text.Json.JsonException">The return value does not fit <typeparamref name="T"/>.</exception>
    public T? GetReturnValue<T>(JsonSerializerOptions? options = null)
        => ReturnValue.ValueKind == JsonValueKind.Undefined
            ? default
            : ReturnValue.Deserialize<T>(options ?? TaskiqSerializer.DefaultOptions);

    /// <summary>Serializes to taskiq's JSON text (without the stack trace).</summary>
    /// <returns>The result as taskiq's JSON.</returns>
    public string ToJson() => JsonSerializer.Serialize(this, TaskiqJsonContext.Default.TaskResult);

    /// <summary>Parses taskiq's JSON text.</summary>
    /// <param name="json">The JSON text.</param>
    /// <param name="stackTrace">The stack trace stored beside it, if any.</param>
    /// <returns>The result.</returns>
    /// <exception cref="System.Text.Json.JsonException">The text is not a valid result.</exception>
    public static TaskResult FromJson(string json, string? stackTrace = null)
    {
        var result = JsonSerializer.Deserialize(json, TaskiqJsonContext.Default.TaskResult)
                     ?? throw new JsonException("The stored result is JSON 'null'.");
        return stackTrace is null ? result : new TaskResult
        {
            IsError = result.IsError,
            ReturnValue = result.ReturnValue,
            ExecutionTime = result.ExecutionTime,
            Labels = result.Labels,
            Error = result.Error,
            StackTrace = stackTrace,
        };
    }
}
