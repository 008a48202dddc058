using System.Diagnostics.CodeAnalysis;
using System.Linq.Expressions;
using System.Reflection;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;

namespace TaskiqPg;

/// <summary>
/// Runs a plain delegate as a task. Parameters are bound in order: <see cref="CancellationToken"/>, <see cref="TaskContext"/>
/// and <see cref="IServiceProvider"/> by type; types registered in DI from the task's scope; every other parameter from
/// the next positional argument, else the keyword argument of its name, else its default value.
/// The delegate's signature is read once, at registration, and its call compiled into a typed invocation (no
/// <see cref="Delegate.DynamicInvoke"/>, no reflection per run); arguments are read with System.Text.Json by their
/// runtime types, which needs the types' metadata (hence the trimming and AOT annotations).
/// </summary>
internal sealed class DelegateInvoker
{
    private readonly string _taskName;
    private readonly ParameterInfo[] _parameters;
    private readonly Type _resultType;
    private readonly Func<object?[], object?> _invoke;
    private readonly Func<object, ValueTask<object?>> _await;

    [RequiresUnreferencedCode("A delegate task's parameters are bound and read with reflection-based JSON.")]
    [RequiresDynamicCode("A delegate task's call is compiled at registration.")]
    public DelegateInvoker(string taskName, Delegate handler)
    {
        _taskName = taskName;
        var invoke = handler.GetType().GetMethod("Invoke")!;
        // The target method's parameters carry the names and defaults (a Func's Invoke has arg1, arg2, ...); the
        // delegate's Invoke has the types the call takes. They differ only for a delegate closed over its first argument.
        var declared = handler.Method.GetParameters();
        var called = invoke.GetParameters();
        _parameters = declared.Length == called.Length ? declared : called;
        _invoke = CompileCall(handler, called);
        (_resultType, _await) = Awaiter(invoke.ReturnType);
    }

    public async ValueTask<(object? Value, Type Type)> InvokeAsync(TaskContext context, CancellationToken cancellationToken)
    {
        var returned = _invoke(Bind(context, cancellationToken));
        var value = returned is null ? null : await _await(returned);
        return (value, _resultType);
    }

    /// <summary><c>args =&gt; (object)handler((T0)args[0], (T1)args[1], ...)</c>, compiled once.</summary>
    [RequiresDynamicCode("Compiles the call.")]
    private static Func<object?[], object?> CompileCall(Delegate handler, ParameterInfo[] parameters)
    {
        var args = Expression.Parameter(typeof(object?[]), "args");
        var call = Expression.Invoke(Expression.Constant(handler, handler.GetType()),
            parameters.Select((p, i) => Expression.Convert(Expression.ArrayIndex(args, Expression.Constant(i)), p.ParameterType)));
        Expression body = call.Type == typeof(void)
            ? Expression.Block(call, Expression.Constant(null, typeof(object)))
            : Expression.Convert(call, typeof(object));
        return Expression.Lambda<Func<object?[], object?>>(body, args).Compile();
    }

    /// <summary><c>task =&gt; (object)((Task&lt;T&gt;)task).Result</c>, compiled once (the task has completed).</summary>
    [RequiresDynamicCode("Compiles the accessor.")]
    private static Func<object, object?> CompileResult(Type taskType)
    {
        var task = Expression.Parameter(typeof(object), "task");
        var result = Expression.Property(Expression.Convert(task, taskType), nameof(Task<object>.Result));
        return Expression.Lambda<Func<object, object?>>(Expression.Convert(result, typeof(object)), task).Compile();
    }

    /// <summary><c>valueTask =&gt; ((ValueTask&lt;T&gt;)valueTask).AsTask()</c>, compiled once.</summary>
    [RequiresDynamicCode("Compiles the accessor.")]
    private static Func<object, Task> CompileAsTask(Type valueTaskType)
    {
        var value = Expression.Parameter(typeof(object), "valueTask");
        var asTask = Expression.Call(Expression.Convert(value, valueTaskType), valueTaskType.GetMethod(nameof(ValueTask<object>.AsTask))!);
        return Expression.Lambda<Func<object, Task>>(Expression.Convert(asTask, typeof(Task)), value).Compile();
    }

    private object?[] Bind(TaskContext context, CancellationToken cancellationToken)
    {
        var message = context.Message;
        var isService = context.Services.GetService<IServiceProviderIsService>();
        var arguments = new object?[_parameters.Length];
        var position = 0;
        for (var i = 0; i < _parameters.Length; i++)
        {
            var p = _parameters[i];
            var type = p.ParameterType;
            if (type == typeof(CancellationToken))
            {
                arguments[i] = cancellationToken;
            }
            else if (type == typeof(TaskContext))
            {
                arguments[i] = context;
            }
            else if (type == typeof(IServiceProvider))
            {
                arguments[i] = context.Services;
            }
            else if (type != typeof(string) && !type.IsValueType && isService?.IsService(type) == true)
            {
                arguments[i] = context.Services.GetRequiredService(type);
            }
            else if (position < message.Args.Count)
            {
                arguments[i] = Convert(message.Args[position++], p, context.SerializerOptions);
            }
            else if (p.Name is not null && message.Kwargs.TryGetValue(p.Name, out var named))
            {
                arguments[i] = Convert(named, p, context.SerializerOptions);
            }
            else if (p.HasDefaultValue)
            {
                arguments[i] = p.DefaultValue;
            }
            else
            {
                throw new TaskArgumentException(
                    $"Task '{_taskName}' needs argument '{p.Name}' ({type.Name}) but the message has {message.Args.Count} positional argument(s) and no keyword argument of that name.");
            }
        }

        return arguments;
    }

    [UnconditionalSuppressMessage("Trimming", "IL2026", Justification = "The constructor carries the requirement: no invoker exists without it.")]
    [UnconditionalSuppressMessage("AOT", "IL3050", Justification = "The constructor carries the requirement: no invoker exists without it.")]
    private object? Convert(JsonElement value, ParameterInfo parameter, JsonSerializerOptions options)
    {
        try
        {
            return value.Deserialize(parameter.ParameterType, options);
        }
        catch (Exception ex) when (ex is JsonException or NotSupportedException or InvalidOperationException)
        {
            throw new TaskArgumentException(
                $"Task '{_taskName}': argument '{parameter.Name}' cannot be read as {parameter.ParameterType.Name}: {ex.Message}", ex);
        }
    }

    [RequiresDynamicCode("Compiles the result accessors.")]
    private static (Type ResultType, Func<object, ValueTask<object?>> Await) Awaiter(Type returnType)
    {
        if (returnType == typeof(void))
        {
            return (typeof(object), static _ => ValueTask.FromResult<object?>(null));
        }

        if (returnType == typeof(Task))
        {
            return (typeof(object), static async r => { await (Task)r; return null; });
        }

        if (returnType == typeof(ValueTask))
        {
            return (typeof(object), static async r => { await (ValueTask)r; return null; });
        }

        if (returnType.IsGenericType && returnType.GetGenericTypeDefinition() == typeof(Task<>))
        {
            var result = CompileResult(returnType);
            return (returnType.GetGenericArguments()[0], async r => { await (Task)r; return result(r); });
        }

        if (returnType.IsGenericType && returnType.GetGenericTypeDefinition() == typeof(ValueTask<>))
        {
            var asTask = CompileAsTask(returnType);
            var result = CompileResult(typeof(Task<>).MakeGenericType(returnType.GetGenericArguments()[0]));
            return (returnType.GetGenericArguments()[0], async r =>
            {
                var task = asTask(r);
                await task;
                return result(task);
            });
        }

        return (returnType, static r => ValueTask.FromResult<object?>(r));
    }
}
