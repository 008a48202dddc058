using System.Text;

namespace TaskiqPg.Internal;

/// <summary>
/// Makes text that came from user code (exception messages, stack traces) storable in a PostgreSQL <c>text</c> column:
/// PostgreSQL refuses U+0000 (SQLSTATE 22021) and a lone UTF-16 surrogate cannot be encoded as UTF-8. Both are
/// replaced by U+FFFD, overlong text is cut, and the stored text says what was changed.
/// </summary>
internal static class StoredText
{
    /// <summary>Longest error message stored, in characters.</summary>
    public const int MaxErrorLength = 8 * 1024;

    /// <summary>Longest stack trace stored, in characters.</summary>
    public const int MaxStackTraceLength = 64 * 1024;

    /// <summary>Whether <paramref name="text"/> holds a NUL or a lone surrogate.</summary>
    public static bool HasUnstorableCharacters(string text) => IndexOfUnstorable(text) >= 0;

    /// <summary>A storable copy of <paramref name="text"/>, at most <paramref name="maxLength"/> characters plus a note.</summary>
    public static string Sanitize(string text, int maxLength)
    {
        var first = IndexOfUnstorable(text);
        if (first < 0 && text.Length <= maxLength)
        {
            return text;
        }

        var builder = new StringBuilder(Math.Min(text.Length, maxLength) + 80);
        var replaced = 0;
        var end = Math.Min(text.Length, maxLength);
        if (end < text.Length && char.IsHighSurrogate(text[end - 1]) && char.IsLowSurrogate(text[end]))
        {
            end--; // never cut a pair in two
        }

        for (var i = 0; i < end; i++)
        {
            var c = text[i];
            if (c == '\0')
            {
                builder.Append('\uFFFD');
                replaced++;
            }
            else if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                builder.Append(c).Append(text[++i]);
            }
            else if (char.IsSurrogate(c))
            {
                builder.Append('\uFFFD');
                replaced++;
            }
            else
            {
                builder.Append(c);
            }
        }

        if (end < text.Length)
        {
            builder.Append(" … [TaskiqPg: cut, ").Append(text.Length - end).Append(" more characters not stored]");
        }

        if (replaced > 0)
        {
            builder.Append(" [TaskiqPg: ").Append(replaced).Append(" NUL or invalid UTF-16 character(s) replaced by U+FFFD]");
        }

        return builder.ToString();
    }

    private static int IndexOfUnstorable(string text)
    {
        for (var i = 0; i < text.Length; i++)
        {
            var c = text[i];
            if (c == '\0')
            {
                return i;
            }

            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                i++;
            }
            else if (char.IsSurrogate(c))
            {
                return i;
            }
        }

        return -1;
    }
}
