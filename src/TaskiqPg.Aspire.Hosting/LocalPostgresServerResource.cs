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
    /// <param name="name">The resource name.</param>
    /// <param name="command">The executable that runs the server (<c>postgres</c>, or a wrapper that drops root).</param>
    /// <param name="workingDirectory">The process's working folder.</param>
    /// <param name="cluster">The data folder and binaries of the server.</param>
    /// <param name="userName">The superuser name.</param>
    /// <param name="password">The superuser password parameter.</param>
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

    /// <summary>The host name clients connect to.</summary>
    public ReferenceExpression Host => ReferenceExpression.Create($"{PrimaryEndpoint.Property(EndpointProperty.Host)}");

    /// <summary>The port clients connect to.</summary>
    public ReferenceExpression Port => ReferenceExpression.Create($"{PrimaryEndpoint.Property(EndpointProperty.Port)}");

    /// <summary>The server as a <c>postgresql://</c> URI (for non-.NET clients), the password URL-encoded.</summary>
    public ReferenceExpression UriExpression => ReferenceExpression.Create(
        $"postgresql://{UserName}:{PasswordParameter:uri}@{PrimaryEndpoint.Property(EndpointProperty.Host)}:{PrimaryEndpoint.Property(EndpointProperty.Port)}");

    /// <summary>
    /// The connection properties non-.NET services get as environment variables (<c>{NAME}_HOST</c>, <c>_PORT</c>,
    /// <c>_USERNAME</c>, <c>_PASSWORD</c>, <c>_URI</c>), as <c>PostgresServerResource</c> exposes them.
    /// </summary>
    /// <returns>Host, port, user name, password and URI.</returns>
    public IEnumerable<KeyValuePair<string, ReferenceExpression>> GetConnectionProperties()
    {
        yield return new("Host", Host);
        yield return new("Port", Port);
        yield return new("Username", ReferenceExpression.Create($"{UserName}"));
        yield return new("Password", ReferenceExpression.Create($"{PasswordParameter}"));
        yield return new("Uri", UriExpression);
    }

    internal void AddDatabase(string name, string databaseName) => _databases.TryAdd(name, databaseName);
}
