namespace TaskiqPg.LocalServer;

/// <summary>How a <see cref="LocalPostgresServer"/> is laid out and started.</summary>
public sealed record LocalPostgresServerOptions
{
    /// <summary>
    /// Data folder. <c>null</c> (default): a new folder under the system temp folder, deleted when the server is disposed.
    /// A given folder is kept between runs and initialised only when it holds no cluster yet.
    /// </summary>
    public string? DataDirectory { get; init; }

    /// <summary>TCP port on 127.0.0.1. <c>0</c> (default): a free port is picked.</summary>
    public int Port { get; init; }

    /// <summary>Superuser name created by initdb. Default <c>postgres</c>.</summary>
    public string Username { get; init; } = "postgres";

    /// <summary>Superuser password (scram-sha-256 auth). <c>null</c> (default): a random one is generated.
    /// For a kept <see cref="DataDirectory"/> it must match the password the cluster was created with.</summary>
    public string? Password { get; init; }

    /// <summary>Extra server settings passed as <c>-c name=value</c> (e.g. <c>fsync=off</c> for throwaway test servers).</summary>
    public IReadOnlyDictionary<string, string> Settings { get; init; } = new Dictionary<string, string>();

    /// <summary>How long to wait for the server to accept connections. Default 60 s.</summary>
    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Server binaries to use. <c>null</c> (default): <see cref="PostgresBinaries.Find"/>.</summary>
    public PostgresBinaries? Binaries { get; init; }
}
