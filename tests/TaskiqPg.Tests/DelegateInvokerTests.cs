using Microsoft.Extensions.DependencyInjection;

namespace TaskiqPg.Tests;

/// <summary>
/// Delegate tasks are compiled into a typed call at registration: every return shape, argument source and exception
/// behaves as it did through <c>DynamicInvoke</c>, without the reflection per run.
/// </summary>
public sealed class DelegateInvokerTests
{
    private static TaskContext Context(TaskMessage message, IServiceProvider? services = null)
        => new(message, new ClaimedTask
        {
            Id = 1, TaskId = message.TaskId, Queue = "q", TaskName = message.TaskName, Message = message.ToJson(), Attempt = 1, MaxAttempts = 3,
            Priority = 0, RunAt = DateTimeOffset.UtcNow, CreatedAt = DateTimeOffset.UtcNow, ClaimedAt = DateTimeOffset.UtcNow, Claim = 1,
        }, services ?? new ServiceCollection().BuildServiceProvider(), null, TaskiqSerializer.DefaultOptions, CancellationToken.None);

    private static async Task<(object? Value, Type Type)> RunAsync(Delegate handler, IEnumerable<object?>? args = null,
        IReadOnlyDictionary<string, object?>? kwargs = null, IServiceProvider? services = null)
        => await new DelegateInvoker("t", handler).InvokeAsync(Context(TaskMessage.Create("t", args, kwargs), services), CancellationToken.None);

    [Fact]
    public async Task Every_return_shape_yields_its_value_and_declared_type()
    {
        Assert.Equal((3, typeof(int)), await RunAsync((int a, int b) => a + b, [1, 2]));
        Assert.Equal(("x!", typeof(string)), await RunAsync(async (string s) => { await Task.Yield(); return s + "!"; }, ["x"]));
        Assert.Equal((7L, typeof(long)), await RunAsync((long n) => new ValueTask<long>(n), [7]));
        Assert.Equal((8L, typeof(long)), await RunAsync(async (long n) => { await Task.Yield(); return n + 1; }, [7]));
        var ran = 0;
        Assert.Equal((null, typeof(object)), await RunAsync(() => { ran++; }));
        Assert.Equal((null, typeof(object)), await RunAsync(async () => { await Task.Yield(); ran++; }));
        Assert.Equal((null, typeof(object)), await RunAsync(() => { ran++; return ValueTask.CompletedTask; }));
        Assert.Equal(3, ran);
    }

    [Fact]
    public async Task Arguments_come_from_positions_then_keywords_then_defaults_and_services_by_type()
    {
        var services = new ServiceCollection().AddSingleton(new List<string> { "svc" }).BuildServiceProvider();
        static string Join(int a, string b, List<string> injected, CancellationToken ct, TaskContext context, string c = "dflt")
            => $"{a}|{b}|{injected[0]}|{ct.CanBeCanceled}|{context.Attempt}|{c}";

        Assert.Equal("1|kw|svc|False|1|dflt", (await RunAsync(Join, [1], new Dictionary<string, object?> { ["b"] = "kw" }, services)).Value);
        Assert.Equal("1|two|svc|False|1|three", (await RunAsync(Join, [1, "two", "three"], services: services)).Value);
        var missing = await Assert.ThrowsAsync<TaskArgumentException>(() => RunAsync(Join, [1], services: services));
        Assert.Contains("needs argument 'b'", missing.Message);
        var wrongType = await Assert.ThrowsAsync<TaskArgumentException>(() => RunAsync((int a) => a, ["nope"]));
        Assert.Contains("cannot be read as Int32", wrongType.Message);
    }

    [Fact]
    public async Task A_handlers_exception_reaches_the_worker_as_itself_not_wrapped()
    {
        await Assert.ThrowsAsync<InvalidOperationException>(() => RunAsync(new Func<int>(() => throw new InvalidOperationException("sync"))));
        await Assert.ThrowsAsync<TimeoutException>(() => RunAsync(async () => { await Task.Yield(); throw new TimeoutException("async"); }));
    }

    [Fact]
    public async Task A_closure_and_an_instance_method_keep_their_target()
    {
        var offset = 100;
        Assert.Equal(101, (await RunAsync((int a) => a + offset, [1])).Value);
        var counter = new Counter(5);
        Assert.Equal(6, (await RunAsync(counter.Next, [1])).Value);
    }

    private sealed class Counter(int start)
    {
        public int Next(int by) => start + by;
    }
}
