namespace TaskiqPg;

/// <summary>
/// The database's schema for a TaskiqPg table is newer than this code and declares that code of this version cannot
/// run against it. Upgrade this service (or roll the database back); see the README's "Schema versions" section.
/// </summary>
public sealed class SchemaVersionException : InvalidOperationException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="table">The table whose schema is too new.</param>
    /// <param name="databaseVersion">The schema version recorded in the database.</param>
    /// <param name="codeVersion">The newest schema version this code knows.</param>
    /// <param name="minimumCodeVersion">The oldest code version the database's schema lets run against it.</param>
    public SchemaVersionException(string table, int databaseVersion, int codeVersion, int minimumCodeVersion)
        : base($"The schema of '{table}' is at version {databaseVersion}, newer than this code's version {codeVersion}, and it needs code of "
               + $"at least version {minimumCodeVersion}. Deploy the newer TaskiqPg version to this service.")
    {
        Table = table;
        DatabaseVersion = databaseVersion;
        CodeVersion = codeVersion;
        MinimumCodeVersion = minimumCodeVersion;
    }

    /// <summary>The table whose schema is newer.</summary>
    public string Table { get; }

    /// <summary>The schema version recorded in the database.</summary>
    public int DatabaseVersion { get; }

    /// <summary>The newest schema version this code knows.</summary>
    public int CodeVersion { get; }

    /// <summary>The oldest code version the database's schema still supports.</summary>
    public int MinimumCodeVersion { get; }
}
