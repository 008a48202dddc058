using TaskiqPg.Internal;

namespace TaskiqPg;

/// <summary>
/// The fields of a message that name or route things (ids, names, labels, argument names) must be plain text: no NUL
/// (PostgreSQL's <c>text</c> and <c>jsonb</c> refuse it) and no lone surrogate (not encodable as UTF-8). Checked at kick
/// (a typed exception) and again on rows another producer wrote (dead-lettered with the reason).
/// </summary>
internal static class MessageChecks
{
    /// <summary>The first problem found, or null when the message is storable.</summary>
    public static (string Field, string Problem)? FindProblem(TaskMessage message)
    {
        if (message.TaskId.Length > TaskMessage.MaxTaskIdLength)
        {
            return ("task_id", $"is {message.TaskId.Length} characters, more than {TaskMessage.MaxTaskIdLength}");
        }

        if (Check("task_id", "", message.TaskId) is { } id)
        {
            return id;
        }

        if (Check("task_name", "", message.TaskName) is { } name)
        {
            return name;
        }

        foreach (var (key, value) in message.Labels)
        {
            if ((Check("labels", "a key", key) ?? Check("labels", $"the value of a label", value)) is { } label)
            {
                return label;
            }
        }

        foreach (var key in message.LabelsTypes?.Keys ?? Enumerable.Empty<string>())
        {
            if (Check("labels_types", "a key", key) is { } type)
            {
                return type;
            }
        }

        foreach (var key in message.Kwargs.Keys)
        {
            if (Check("kwargs", "an argument name", key) is { } kwarg)
            {
                return kwarg;
            }
        }

        return null;
    }

    /// <summary>The problem as one sentence for errors and dead-letter reasons.</summary>
    public static string Describe((string Field, string Problem) problem)
        => $"The message's '{problem.Field}' {problem.Problem}.";

    private static (string, string)? Check(string field, string what, string text)
    {
        if (!StoredText.HasUnstorableCharacters(text))
        {
            return null;
        }

        var kind = text.Contains('\0') ? "a NUL character (U+0000)" : "a lone UTF-16 surrogate";
        return (field, (what.Length == 0 ? "holds " : $"has {what} that holds ") + kind);
    }
}
