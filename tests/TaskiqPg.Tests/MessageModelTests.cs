using System.Text.Json;

namespace TaskiqPg.Tests;

public sealed class MessageModelTests
{
    [Fact]
    public void Task_ids_are_32_lowercase_hex_characters_and_unique()
    {
        var ids = Enumerable.Range(0, 1000).Select(_ => TaskIds.New()).ToArray();
        Assert.All(ids, id => Assert.Matches("^[0-9a-f]{32}$", id));
        Assert.Equal(1000, ids.Distinct().Count());
    }

    [Fact]
    public void Message_serializes_to_taskiqs_json_shape()
    {
        var message = TaskMessage.Create("my_task", [1, "two"], new Dictionary<string, object?> { ["flag"] = true }, taskId: "abc");
        message.Labels["traceparent"] = "00-x";

        using var json = JsonDocument.Parse(message.ToJson());
        Assert.Equal(["task_id", "task_name", "labels", "labels_types", "args", "kwargs"], json.RootElement.EnumerateObject().Select(p => p.Name));
        Assert.Equal("abc", json.RootElement.GetProperty("task_id").GetString());
        Assert.Equal("[1,\"two\"]", json.RootElement.GetProperty("args").GetRawText());
        Assert.True(json.RootElement.GetProperty("kwargs").GetProperty("flag").GetBoolean());
    }

    [Fact]
    public void Message_from_a_python_producer_with_non_string_labels_is_read()
    {
        const string python = """
            {"task_id": "f00", "task_name": "tasks:add", "labels": {"retries": 3, "urgent": true, "who": "bob", "none": null},
             "labels_types": {"retries": 1}, "args": [1, 2], "kwargs": {}}
            """;

        var message = TaskMessage.FromJson(python);

        Assert.Equal("tasks:add", message.TaskName);
        Assert.Equal("3", message.Labels["retries"]);
        Assert.Equal("true", message.Labels["urgent"]);
        Assert.Equal("", message.Labels["none"]);
        Assert.Equal(1, message.LabelsTypes!["retries"]);
        Assert.Equal(2, message.Args[1].GetInt32());
    }

    [Theory]
    [InlineData("{not json")]
    [InlineData("null")]
    [InlineData("{\"task_name\": \"x\"}")]
    [InlineData("{\"task_id\": \"1\", \"task_name\": \"x\", \"labels\": [1]}")]
    public void Malformed_messages_raise_JsonException(string json)
        => Assert.ThrowsAny<JsonException>(() => TaskMessage.FromJson(json));

    [Fact]
    public void Result_round_trips_with_its_typed_value()
    {
        var result = new TaskResult { ReturnValue = JsonSerializer.SerializeToElement(new[] { 1, 2 }), ExecutionTime = 0.5 };
        var back = TaskResult.FromJson(result.ToJson(), "trace");

        Assert.Equal([1, 2], back.GetReturnValue<int[]>()!);
        Assert.Equal("trace", back.StackTrace);
        Assert.False(back.IsError);
    }
}
