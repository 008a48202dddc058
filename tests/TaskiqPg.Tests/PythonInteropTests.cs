using System.Text;
using System.Text.Json;

namespace TaskiqPg.Tests;

/// <summary>
/// Golden fixtures of Python taskiq's JSON (as its JSONSerializer writes it: <c>json.dumps</c> with ", " and ": "
/// separators and \uXXXX escapes) read by TaskiqPg, and TaskiqPg's JSON in the shape Python's models accept.
/// </summary>
public sealed class PythonInteropTests
{
    // taskiq 0.12 TaskiqResult of `raise ValueError("bad", 3)` through JSONSerializer (pydantic 2 model_dump + json.dumps).
    private const string PythonErrorResult =
        """{"is_err": true, "log": null, "return_value": null, "execution_time": 0.0012, "labels": {}, "error": {"exc_type": "ValueError", "exc_message": ["bad \u00e9t\u00e9", 3], "exc_module": "builtins", "exc_cause": null, "exc_context": null, "exc_suppress_context": false}}""";

    // The same for an exception class of the app's own module, raised from another one (the cause is kept by Python).
    private const string PythonChainedErrorResult =
        """{"is_err": true, "log": null, "return_value": null, "execution_time": 0.5, "labels": {"retry_on_error": "True"}, "error": {"exc_type": "PaymentDeclined", "exc_message": ["card 4242"], "exc_module": "shop.tasks", "exc_cause": {"exc_type": "TimeoutError", "exc_message": [], "exc_module": "builtins", "exc_cause": null, "exc_context": null, "exc_suppress_context": false}, "exc_context": null, "exc_suppress_context": true}}""";

    [Fact]
    public void A_Python_error_result_reads_as_its_module_qualified_type_and_its_arguments()
    {
        var result = TaskResult.FromJson(PythonErrorResult);

        Assert.True(result.IsError);
        Assert.Equal("builtins.ValueError", result.Error!.Type);
        Assert.Equal("bad été, 3", result.Error.Message);
        Assert.Equal(JsonValueKind.Null, result.ReturnValue.ValueKind);

        var chained = TaskResult.FromJson(PythonChainedErrorResult);
        Assert.Equal("shop.tasks.PaymentDeclined", chained.Error!.Type);
        Assert.Equal("card 4242", chained.Error.Message);
        Assert.Equal("True", chained.Labels["retry_on_error"]);
    }

    [Fact]
    public void A_TaskiqPg_error_result_carries_the_fields_Pythons_ExceptionRepr_requires_and_reads_back_the_same()
    {
        var result = new TaskResult { IsError = true, ExecutionTime = 0.25, Error = new TaskError("InvalidOperationException", "no \"stock\" left") };

        using var json = JsonDocument.Parse(result.ToJson());
        var error = json.RootElement.GetProperty("error");
        // ExceptionRepr: exc_type (str), exc_message (a tuple: a JSON array), exc_module (required, may be null).
        Assert.Equal("InvalidOperationException", error.GetProperty("exc_type").GetString());
        Assert.Equal(["no \"stock\" left"], error.GetProperty("exc_message").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal(JsonValueKind.Null, error.GetProperty("exc_module").ValueKind);
        Assert.False(error.GetProperty("exc_suppress_context").GetBoolean());
        // TaskiqPg readers of older versions read these two.
        Assert.Equal("InvalidOperationException", error.GetProperty("type").GetString());
        Assert.Equal("no \"stock\" left", error.GetProperty("message").GetString());

        var back = TaskResult.FromJson(result.ToJson());
        Assert.Equal(result.Error, back.Error);
    }

    [Fact]
    public void An_error_in_the_old_TaskiqPg_shape_still_reads()
    {
        var result = TaskResult.FromJson("""{"is_err": true, "return_value": null, "execution_time": 1.0, "labels": {}, "error": {"type": "TimeoutException", "message": "slow"}}""");

        Assert.Equal(new TaskError("TimeoutException", "slow"), result.Error);
    }

    [Theory]
    [InlineData("""{"is_err": true, "error": "boom"}""")]
    [InlineData("""{"is_err": true, "error": [1]}""")]
    public void An_error_that_is_not_an_object_is_refused_with_a_JSON_error(string json)
        => Assert.ThrowsAny<JsonException>(() => TaskResult.FromJson(json));

    [Fact]
    public void An_error_object_with_neither_shape_reads_as_unknown_instead_of_failing_the_waiter()
    {
        var result = TaskResult.FromJson("""{"is_err": true, "return_value": null, "execution_time": 1.0, "labels": {}, "error": {"detail": "x"}}""");

        Assert.Equal(new TaskError("Unknown", ""), result.Error);
    }

    [Fact]
    public void A_Python_success_result_reads_with_its_escapes_and_typed_return_value()
    {
        var bytes = Encoding.UTF8.GetBytes("""{"is_err": false, "log": null, "return_value": {"sum": 5, "name": "caf\u00e9 \ud83d\ude00"}, "execution_time": 0.003, "labels": {"delay": "5.0", "priority": "1"}, "error": null}""");

        var result = TaskResult.FromJson(Encoding.UTF8.GetString(bytes));

        Assert.False(result.IsError);
        Assert.Null(result.Error);
        Assert.Equal("café 😀", result.ReturnValue.GetProperty("name").GetString());
        Assert.Equal(5, result.ReturnValue.GetProperty("sum").GetInt32());
        Assert.Equal("5.0", result.Labels["delay"]);
    }
}
