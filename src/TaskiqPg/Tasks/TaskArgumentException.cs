namespace TaskiqPg;

/// <summary>The message's arguments do not fit the handler (missing, or of the wrong JSON type). Never retried.</summary>
/// <param name="message">What does not fit, naming the argument.</param>
/// <param name="inner">The JSON error behind it, if any.</param>
public sealed class TaskArgumentException(string message, Exception? inner = null) : ArgumentException(message, inner);
