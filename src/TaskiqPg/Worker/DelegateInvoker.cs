using System.Reflection;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;

namespace TaskiqPg;

/// <summary>
/// Runs a plain delegate as a task. Parameters are bound in order: <see cref="CancellationToken"/>, <see cref="TaskContext"/>
/// and <see cref="IServiceProvider"/> by type; types registered in DI from the task's scope; every other parameter from
/// the next positional argument, else the keyword argument of its name, else its default value.
/// </summary>
internal sealed class DelegateInvoker
{
    private readonly Delegate _handler;
    private readonly string _taskName;
    private readonly ParameterInfo[] _parameters;
    private readonly Type _resultType;
    private readonly Func<object, ValueTask<object?>> _await;

    public DelegateInvoker(string taskName, Delegate handler)
    {
        _handler = handler;
        _taskName = taskName;
        _parameters = handler.Method.GetParameters();
        (_resultType, _await) = Awaiter(handler.Method.ReturnType);
    }

    public async ValueTask<(object? Value, Type Type)> InvokeAsync(TaskContext context, CancellationToken cancellationToken)
    {
        var arguments = Bind(context, cancellationToken);
        object? returned;
        try
        {
            returned = _handler.DynamicInvoke(arguments);
        }
        catch (TargetInvocationException ex) when (ex.InnerException is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(ex.InnerException).Throw();
            throw;
        }

        var value = returned is null ? null : await _await(returned);
        return (value, _resultType);
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
            var result = returnType.GetProperty(nameof(Task<object>.Result))!;
            return (returnType.GetGenericArguments()[0], async r => { await (Task)r; return result.GetValue(r); });
        }

        if (returnType.IsGenericType && returnType.GetGenericTypeDefinition() == typeof(ValueTask<>))
        {
            var asTask = returnType.GetMethod(nameof(ValueTask<object>.AsTask))!;
            var result = asTask.ReturnType.GetProperty(nameof(Task<object>.Result))!;
            return (returnType.GetGenericArguments()[0], async r =>
            {
                var task = (Task)asTask.Invoke(r, null)!;
                await task;
                return result.GetValue(task);
            });
        }

        return (returnType, static r => ValueTask.FromResult<object?>(r));
    }
}
