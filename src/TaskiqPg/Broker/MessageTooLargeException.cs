namespace TaskiqPg;

/// <summary>A kick was refused because the serialized message exceeds <see cref="PostgresBrokerOptions.MaxMessageBytes"/>.</summary>
/// <param name="taskName">The refused task's name.</param>
/// <param name="size">The serialized message's size in bytes.</param>
/// <param name="limit">The limit it exceeds, in bytes.</param>
public sealed class MessageTooLargeException(string taskName, int size, int limit)
    : ArgumentException($"The message for task '{taskName}' is {size} bytes, more than the limit of {limit} bytes "
                        + $"({nameof(PostgresBrokerOptions)}.{nameof(PostgresBrokerOptions.MaxMessageBytes)}). "
                        + "Store large payloads elsewhere and pass a reference.")
{
    /// <summary>Size of the serialized message in bytes.</summary>
    public int Size { get; } = size;

    /// <summary>The configured limit in bytes.</summary>
    public int Limit { get; } = limit;
}
