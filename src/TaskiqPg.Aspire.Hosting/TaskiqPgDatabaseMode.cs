namespace Aspire.Hosting;

/// <summary>Where the AppHost gets PostgreSQL from.</summary>
public enum TaskiqPgDatabaseMode
{
    /// <summary>A container when a container runtime answers, else a local server (default).</summary>
    Auto,

    /// <summary>A container (<c>AddPostgres</c>); needs Docker or Podman.</summary>
    Container,

    /// <summary>A local server run from the installed PostgreSQL binaries as an executable resource.</summary>
    Local,

    /// <summary>An existing server: the database's connection string comes from <c>ConnectionStrings:{database}</c>.</summary>
    External,
}
