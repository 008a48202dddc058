using System.Text.Json.Serialization;

namespace TaskiqPg;

[JsonSerializable(typeof(TaskMessage))]
[JsonSerializable(typeof(TaskResult))]
internal sealed partial class TaskiqJsonContext : JsonSerializerContext;
