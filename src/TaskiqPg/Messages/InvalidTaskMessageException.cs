namespace TaskiqPg;

/// <summary>
/// A kick was refused because a field of the message cannot be stored or routed: a NUL character or a lone UTF-16
/// surrogate in the task id, task name, a label, a <c>labels_types</c> key or a keyword-argument name, or a task id
/// longer than <see cref="TaskMessage.MaxTaskIdLength"/>. <see cref="Field"/> names the field.
/// </summary>
public sealed class InvalidTaskMessageException : ArgumentException
{
    /// <summary>Creates the exception for <paramref name="field"/>.</summary>
    /// <param name="field">The message field that is wrong (e.g. <c>task_name</c>, <c>labels</c>).</param>
    /// <param name="message">What is wrong with it.</param>
    public InvalidTaskMessageException(string field, string message)
        : base(message)
    {
        Field = field;
    }

    /// <summary>The field at fault, in taskiq's JSON naming: <c>task_id</c>, <c>task_name</c>, <c>labels</c>, <c>labels_types</c>, <c>kwargs</c>.</summary>
    public string Field { get; }
}
