namespace TaskiqPg;

/// <summary>The stable task name of a handler type (defaults to the type's full name when absent).</summary>
/// <param name="name">The task name producers kick the handler by.</param>
[AttributeUsage(AttributeTargets.Class, Inherited = false)]
public sealed class TaskNameAttribute(string name) : Attribute
{
    /// <summary>The task name.</summary>
    public string Name { get; } = name;

    /// <summary>The task name of <typeparamref name="THandler"/>.</summary>
    /// <typeparam name="THandler">The handler type.</typeparam>
    /// <returns>The attribute's name, or the type's full name.</returns>
    public static string Of<THandler>() => Of(typeof(THandler));

    /// <summary>The task name of <paramref name="handlerType"/>.</summary>
    /// <param name="handlerType">The handler type.</param>
    /// <returns>The attribute's name, or the type's full name.</returns>
    public static string Of(Type handlerType)
        => handlerType.GetCustomAttributes(typeof(TaskNameAttribute), false) is [TaskNameAttribute a, ..]
            ? a.Name
            : handlerType.FullName ?? handlerType.Name;
}
