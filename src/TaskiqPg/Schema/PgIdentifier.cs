using System.Text;
using System.Text.RegularExpressions;

namespace TaskiqPg;

/// <summary>The one place where schema, table and channel names are checked and quoted for SQL.</summary>
internal static partial class PgIdentifier
{
    /// <summary>PostgreSQL truncates identifiers longer than this many bytes (NAMEDATALEN - 1).</summary>
    public const int MaxBytes = 63;

    /// <summary>
    /// Checks that <paramref name="value"/> is a plain identifier: starts with a letter or underscore, then letters,
    /// digits or underscores (ASCII), at most 63 bytes.
    /// </summary>
    /// <exception cref="ArgumentException">The name is empty, too long or contains other characters; names <paramref name="optionName"/>.</exception>
    public static string Validate(string? value, string optionName)
    {
        if (string.IsNullOrEmpty(value))
        {
            throw new ArgumentException($"{optionName} must not be empty.", optionName);
        }

        if (Encoding.UTF8.GetByteCount(value) > MaxBytes)
        {
            throw new ArgumentException(
                $"{optionName} '{Printable(value)}' is longer than {MaxBytes} bytes; PostgreSQL would truncate it.", optionName);
        }

        if (!Pattern().IsMatch(value))
        {
            throw new ArgumentException(
                $"{optionName} '{Printable(value)}' is not a valid identifier: use ASCII letters, digits and underscores, starting with a letter or underscore.",
                optionName);
        }

        return value;
    }

    /// <summary>Validates and double-quotes a name for use in SQL text.</summary>
    public static string Quote(string value, string optionName) => "\"" + Validate(value, optionName) + "\"";

    /// <summary>Validates and quotes <c>schema.table</c>.</summary>
    public static string QualifiedName(string schema, string schemaOption, string table, string tableOption)
        => Quote(schema, schemaOption) + "." + Quote(table, tableOption);

    private static string Printable(string value) => value.Length > 80 ? value[..80] + "…" : value;

    [GeneratedRegex(@"\A[A-Za-z_][A-Za-z0-9_]*\z", RegexOptions.CultureInvariant)] // \z: "$" would accept a trailing newline
    private static partial Regex Pattern();
}
