namespace TaskiqPg;

/// <summary>A schedule was refused; <see cref="ArgumentException.ParamName"/> names the field that is wrong.</summary>
public sealed class ScheduleValidationException(string field, string message, Exception? innerException = null)
    : ArgumentException($"Invalid schedule: {field}: {message}", field, innerException);
