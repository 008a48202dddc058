using System.Text.Json;
using System.Text.Json.Serialization;

namespace TaskiqPg;

/// <summary>
/// A task failure as stored in a result: the exception type name and its message. In JSON it is written in both
/// shapes, <c>{"type", "message"}</c> and Python taskiq's <c>{"exc_type", "exc_message": [...], "exc_module",
/// "exc_cause", "exc_context", "exc_suppress_context"}</c> (a Python reader rebuilds an exception of that name whose
/// args are the message), and read from either (see <see cref="TaskErrorJsonConverter"/>).
/// </summary>
/// <param name="Type">Exception type name (e.g. <c>InvalidOperationException</c>; a Python error's module-qualified
/// name, e.g. <c>builtins.ValueError</c>).</param>
/// <param name="Message">Exception message (a Python error's arguments, strings as they are, others as JSON, joined
/// by <c>", "</c>).</param>
[JsonConverter(typeof(TaskErrorJsonConverter))]
public sealed record TaskError(string Type, string Message);

/// <summary>Reads and writes <see cref="TaskError"/> in the shape of both TaskiqPg and Python taskiq.</summary>
public sealed class TaskErrorJsonConverter : JsonConverter<TaskError>
{
    /// <inheritdoc />
    public override TaskError Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        using var document = JsonDocument.ParseValue(ref reader);
        var error = document.RootElement;
        if (error.ValueKind != JsonValueKind.Object)
        {
            throw new JsonException($"A task error must be a JSON object (got {error.ValueKind}).");
        }

        var type = Text(error, "type");
        var message = Text(error, "message");
        if (type is null && Text(error, "exc_type") is { } excType)
        {
            // Python taskiq's ExceptionRepr: the module qualifies the name unless it is absent.
            var module = Text(error, "exc_module");
            type = string.IsNullOrEmpty(module) ? excType : module + "." + excType;
        }

        if (message is null && error.TryGetProperty("exc_message", out var args))
        {
            message = args.ValueKind == JsonValueKind.Array
                ? string.Join(", ", args.EnumerateArray().Select(a => a.ValueKind == JsonValueKind.String ? a.GetString() : a.GetRawText()))
                : args.ValueKind == JsonValueKind.String ? args.GetString() : args.GetRawText();
        }

        return new TaskError(type ?? "Unknown", message ?? "");
    }

    /// <inheritdoc />
    public override void Write(Utf8JsonWriter writer, TaskError value, JsonSerializerOptions options)
    {
        writer.WriteStartObject();
        writer.WriteString("type", value.Type);
        writer.WriteString("message", value.Message);
        writer.WriteString("exc_type", value.Type);
        writer.WriteStartArray("exc_message");
        writer.WriteStringValue(value.Message);
        writer.WriteEndArray();
        writer.WriteNull("exc_module");
        writer.WriteNull("exc_cause");
        writer.WriteNull("exc_context");
        writer.WriteBoolean("exc_suppress_context", false);
        writer.WriteEndObject();
    }

    private static string? Text(JsonElement error, string name)
        => error.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String ? value.GetString() : null;
}
