using System.Text.Json;

namespace TaskiqPg;

/// <summary>JSON settings for task arguments and return values.</summary>
public static class TaskiqSerializer
{
    /// <summary>
    /// Default options for arguments and return values: web defaults (camelCase properties, case-insensitive reads).
    /// Pass your own <see cref="JsonSerializerOptions"/> to the registry and client to change them (e.g. snake_case
    /// for Python producers).
    /// </summary>
    public static JsonSerializerOptions DefaultOptions { get; } = new(JsonSerializerDefaults.Web);
}
