namespace TaskiqPg.LocalServer;

/// <summary>Thrown when no PostgreSQL server binaries (initdb, postgres, pg_ctl) can be found on this machine.</summary>
public sealed class PostgresNotFoundException : Exception
{
    /// <summary>Creates the exception listing every folder that was searched.</summary>
    /// <param name="searchedFolders">Every folder searched, in order.</param>
    public PostgresNotFoundException(IReadOnlyList<string> searchedFolders)
        : base("No PostgreSQL server binaries (initdb, postgres, pg_ctl) were found. Looked in: "
               + string.Join(", ", searchedFolders)
               + $". Install the server (Debian/Ubuntu: 'apt-get install postgresql'; macOS: 'brew install postgresql') "
               + $"or set {PostgresBinaries.BinDirEnvironmentVariable} to the folder that holds initdb.")
    {
        SearchedFolders = searchedFolders;
    }

    /// <summary>The folders that were searched, in order.</summary>
    public IReadOnlyList<string> SearchedFolders { get; }
}
