namespace TaskiqPg;

/// <summary>The message's arguments do not fit the handler (missing, or of the wrong JSON type). Never retried.</summary>
public sealed class TaskArgumentException(string message, Exception? inner = null) : ArgumentException(message, inner);
