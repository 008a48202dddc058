using Aspire.Hosting;
using System.Data.Common;

namespace Aspire.Hosting.ApplicationModel;

/// <summary>A database on a <see cref="LocalPostgresServerResource"/>, created when the server is ready.</summary>
/// <param name="name">The resource name.</param>
/// <param name="databaseName">The database's name on the server.</param>
/// <param name="parent">The server.</param>
public sealed class LocalPostgresDatabaseResource(string name, string databaseName, LocalPostgresServerResource parent)
    : Resource(name), IResourceWithParent<LocalPostgresServerResource>, IResourceWithConnectionString
{
    /// <summary>The server.</summary>
    public LocalPostgresServerResource Parent { get; } = parent ?? throw new ArgumentNullException(nameof(parent));

    /// <summary>The database name.</summary>
    public string DatabaseName { get; } = databaseName;

    /// <summary>The database as a <c>postgresql://</c> URI (for non-.NET clients).</summary>
    public ReferenceExpression UriExpression => ReferenceExpression.Create($"{Parent.UriExpression}/{DatabaseName}");

    /// <summary>The server's connection properties with <c>Database</c> added and the URI naming the database.</summary>
    /// <returns>The server's properties, <c>Database</c>, and the database's URI.</returns>
    public IEnumerable<KeyValuePair<string, ReferenceExpression>> GetConnectionProperties()
        => Parent.CombineProperties([new("Database", ReferenceExpression.Create($"{DatabaseName}")), new("Uri", UriExpression)]);

    /// <inheritdoc />
    public ReferenceExpression ConnectionStringExpression
    {
        get
        {
            var database = new DbConnectionStringBuilder { ["Database"] = DatabaseName };
            return ReferenceExpression.Create($"{Parent};{database.ToString()}");
        }
    }
}
