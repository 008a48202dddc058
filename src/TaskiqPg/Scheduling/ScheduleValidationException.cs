namespace TaskiqPg;

/// <summary>A schedule was refused; <see cref="ArgumentException.ParamName"/> names the field that is wrong.</summary>
/// <param name="field">The definition's property that is wrong (e.g. <c>Cron</c>).</param>
/// <param name="message">What is wrong with it.</param>
/// <param name="innerException">The parser's error behind it, if any.</param>
public sealed class ScheduleValidationException(string field, string message, Exception? innerException = null)
    : ArgumentException($"Invalid schedule: {field}: {message}", field, innerException);
