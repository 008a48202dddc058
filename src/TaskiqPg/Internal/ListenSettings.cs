using System.Text;
using Npgsql;

namespace TaskiqPg.Internal;

/// <summary>
/// How a component receives its notifications: over a LISTEN connection opened with the data source's settings or
/// with a connection string of its own (direct to PostgreSQL, past a transaction pooler), or not at all (poll only).
/// </summary>
internal sealed record ListenSettings(string? ConnectionString, bool PollOnly)
{
    /// <summary>Checks the connection string now, so a typo fails the component's constructor, not its first LISTEN.</summary>
    /// <exception cref="ArgumentException">The connection string does not parse (the message never repeats it).</exception>
    public static ListenSettings Create(string? connectionString, bool pollOnly, string optionName)
    {
        if (connectionString is not null)
        {
            try
            {
                _ = new NpgsqlConnectionStringBuilder(connectionString);
            }
            catch (ArgumentException)
            {
                throw new ArgumentException($"{optionName} is not a valid connection string.", optionName); // without the text: it may hold a password
            }
        }

        return new ListenSettings(connectionString, pollOnly);
    }

    /// <summary>A connection string without its password, for display.</summary>
    public static string? Redact(string? connectionString)
    {
        if (connectionString is null)
        {
            return null;
        }

        try
        {
            var builder = new NpgsqlConnectionStringBuilder(connectionString);
            if (builder.Password is not null)
            {
                builder.Password = "***";
            }

            return builder.ConnectionString;
        }
        catch (ArgumentException)
        {
            return "(not a valid connection string)";
        }
    }

    /// <summary>The text of a record's <c>ToString</c> from its <c>PrintMembers</c>, in the compiler's own format.</summary>
    public static string Print(string typeName, Func<StringBuilder, bool> printMembers)
    {
        var builder = new StringBuilder(typeName).Append(" { ");
        if (printMembers(builder))
        {
            builder.Append(' ');
        }

        return builder.Append('}').ToString();
    }
}
