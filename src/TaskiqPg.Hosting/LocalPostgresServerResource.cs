using TaskiqPg.LocalServer;

namespace Aspire.Hosting.ApplicationModel;

/// <summary>
/// A PostgreSQL server run from the locally installed binaries as an executable resource (for machines without a
/// container runtime). Its connection string is built from the DCP-allocated endpoint, like <c>PostgresServerResource</c>.
/// </summary>
public sealed class LocalPostgresServerResource : ExecutableResource, IResourceWithConnectionString
{
    internal const string PrimaryEndpointName = "tcp";

    private readonly Dictionary<string, string> _databases = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>Creates the resource.</summary>
    public LocalPostgresServerResource(string name, string command, string workingDirectory, PostgresCluster cluster,
        string userName, ParameterResource password)
        : base(name, command, workingDirectory)
    {
        Cluster = cluster;
        UserName = userName;
        PasswordParameter = password;
        PrimaryEndpoint = new EndpointReference(this, PrimaryEndpointName);
    }

    /// <summary>The data folder and its commands.</summary>
    public PostgresCluster Cluster { get; }

    /// <summary>The superuser name.</summary>
    public string UserName { get; }

    /// <summary>The superuser password.</summary>
    public ParameterResource PasswordParameter { get; }

    /// <summary>The TCP endpoint.</summary>
    public EndpointReference PrimaryEndpoint { get; }

    /// <summary>Databases created on this server: resource name → database name.</summary>
    public IReadOnlyDictionary<string, string> Databases => _databases;

    /// <inheritdoc />
    public ReferenceExpression ConnectionStringExpression => ReferenceExpression.Create(
        $"Host={PrimaryEndpoint.Property(EndpointProperty.Host)};Port={PrimaryEndpoint.Property(EndpointProperty.Port)};Username={UserName};Password={PasswordParameter}");

    internal void AddDatabase(string name, string databaseName) => _databases.TryAdd(name, databaseName);
}
