using System.Data.Common;

namespace Aspire.Hosting.ApplicationModel;

/// <summary>A database on a <see cref="LocalPostgresServerResource"/>, created when the server is ready.</summary>
public sealed class LocalPostgresDatabaseResource(string name, string databaseName, LocalPostgresServerResource parent)
    : Resource(name), IResourceWithParent<LocalPostgresServerResource>, IResourceWithConnectionString
{
    /// <summary>The server.</summary>
    public LocalPostgresServerResource Parent { get; } = parent ?? throw new ArgumentNullException(nameof(parent));

    /// <summary>The database name.</summary>
    public string DatabaseName { get; } = databaseName;

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
