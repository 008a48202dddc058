using System.Text.Json.Serialization;

namespace TaskiqPg;

/// <summary>A task failure as stored in a result: the exception type name and its message.</summary>
/// <param name="Type">Exception type name (e.g. <c>InvalidOperationException</c>).</param>
/// <param name="Message">Exception message.</param>
public sealed record TaskError(
    [property: JsonPropertyName("type")] string Type,
    [property: JsonPropertyName("message")] string Message);
