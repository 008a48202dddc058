using Microsoft.Extensions.Logging;
using Npgsql;

namespace TaskiqPg;

/// <summary>
/// Applies versioned, idempotent migration steps for one table. All migrations of all components in a database are
/// serialized by one advisory lock, so any number of processes may start at once. Each step commits with its version
/// record; a <see cref="MigrationStep.ConcurrentIndex"/> step (an index built without blocking writes) runs outside any
/// transaction. A schema newer than the code is accepted only while it declares itself compatible with the code.
/// </summary>
internal static class SchemaMigrator
{
    // Fixed key for the advisory lock: every TaskiqPg migration in a database takes the same lock.
    private const long LockKey = 0x7461736B6971_0001; // "taskiq" + 1
    private static readonly TimeSpan LockPoll = TimeSpan.FromMilliseconds(200);

    public const string VersionTable = "taskiq_schema_versions";

    /// <summary>Runs the steps of <paramref name="objectName"/> that the schema-version table has not recorded yet.</summary>
    /// <returns>The number of steps applied (0 when the schema was already current).</returns>
    /// <exception cref="SchemaVersionException">The database's schema is newer and not compatible with this code.</exception>
    public static async Task<int> MigrateAsync(NpgsqlDataSource dataSource, string schema, string objectName,
        IReadOnlyList<MigrationStep> steps, CancellationToken cancellationToken)
    {
        var quotedSchema = PgIdentifier.Quote(schema, "Schema");
        var versions = VersionsTable(schema);
        // A session of its own: the advisory lock is session state, which a multiplexing data source would spread over
        // several physical connections (the unlock then misses the lock and every later migration waits forever).
        await using var connection = Internal.PhysicalConnection.Create(dataSource, "migrations");
        await connection.OpenAsync(cancellationToken);
        await LockAsync(connection, cancellationToken);
        try
        {
            await ExecuteAsync(connection,
                $"""
                 CREATE SCHEMA IF NOT EXISTS {quotedSchema};
                 CREATE TABLE IF NOT EXISTS {versions} (
                     object_name text PRIMARY KEY,
                     version integer NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 );
                 ALTER TABLE {versions} ADD COLUMN IF NOT EXISTS min_code_version integer NOT NULL DEFAULT 0;
                 """, cancellationToken);

            var (current, minimumCode) = await ReadVersionAsync(connection, versions, objectName, cancellationToken) ?? (0, 0);
            EnsureCompatible(objectName, current, minimumCode, steps.Count);
            for (var i = current; i < steps.Count; i++)
            {
                var step = steps[i];
                var version = i + 1;
                minimumCode = step.BreaksOlderCode ? version : minimumCode;
                if (step.ConcurrentIndex is { } index)
                {
                    await DropIfInvalidAsync(connection, schema, index, cancellationToken); // a CONCURRENTLY build that died leaves one
                    await ExecuteAsync(connection, step.Sql, cancellationToken);
                    await RecordAsync(connection, null, versions, objectName, version, minimumCode, cancellationToken);
                }
                else
                {
                    await using var transaction = await connection.BeginTransactionAsync(cancellationToken);
                    await using (var command = new NpgsqlCommand(step.Sql, connection, transaction))
                    {
                        await command.ExecuteNonQueryAsync(cancellationToken);
                    }

                    await RecordAsync(connection, transaction, versions, objectName, version, minimumCode, cancellationToken);
                    await transaction.CommitAsync(cancellationToken);
                }
            }

            return Math.Max(0, steps.Count - current);
        }
        finally
        {
            await UnlockQuietlyAsync(connection);
        }
    }

    /// <summary>
    /// For components started with migrations turned off: refuses a schema newer than <paramref name="codeVersion"/>
    /// unless it declares itself compatible. A missing version table or row (not migrated yet) passes.
    /// </summary>
    public static async Task VerifyAsync(NpgsqlDataSource dataSource, string schema, string objectName, int codeVersion,
        CancellationToken cancellationToken)
    {
        await using var connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using (var exists = new NpgsqlCommand("SELECT to_regclass($1) IS NOT NULL", connection))
        {
            exists.Parameters.Add(new NpgsqlParameter<string> { TypedValue = VersionsTable(schema) });
            if (!(bool)(await exists.ExecuteScalarAsync(cancellationToken))!)
            {
                return;
            }
        }

        if (await ReadVersionAsync(connection, VersionsTable(schema), objectName, cancellationToken) is { } found)
        {
            EnsureCompatible(objectName, found.Version, found.MinimumCode, codeVersion);
        }
    }

    /// <summary>Runs <see cref="MigrateAsync"/> and logs how many steps were applied.</summary>
    public static async Task MigrateAndLogAsync(NpgsqlDataSource dataSource, string schema, string objectName, IReadOnlyList<MigrationStep> steps,
        ILogger logger, CancellationToken cancellationToken)
    {
        var applied = await MigrateAsync(dataSource, schema, objectName, steps, cancellationToken);
        if (applied > 0)
        {
            Log.Migrated(logger, applied, objectName);
        }
    }

    /// <summary>An index name derived from a table name that stays within 63 bytes.</summary>
    public static string IndexName(string table, string suffix)
    {
        var room = PgIdentifier.MaxBytes - suffix.Length - 1;
        return (table.Length > room ? table[..room] : table) + "_" + suffix;
    }

    private static string VersionsTable(string schema)
        => PgIdentifier.Quote(schema, "Schema") + "." + PgIdentifier.Quote(VersionTable, "VersionTable");

    private static void EnsureCompatible(string objectName, int databaseVersion, int minimumCode, int codeVersion)
    {
        if (databaseVersion > codeVersion && minimumCode > codeVersion)
        {
            throw new SchemaVersionException(objectName, databaseVersion, codeVersion, minimumCode);
        }
    }

    /// <summary>
    /// Takes the session-level lock by polling <c>pg_try_advisory_lock</c>: a session blocked inside a statement holds
    /// a snapshot, which a concurrent <c>CREATE INDEX CONCURRENTLY</c> of the lock holder would wait for (a deadlock).
    /// </summary>
    private static async Task LockAsync(NpgsqlConnection connection, CancellationToken cancellationToken)
    {
        await using var command = new NpgsqlCommand("SELECT pg_try_advisory_lock($1)", connection);
        command.Parameters.Add(new NpgsqlParameter<long> { TypedValue = LockKey });
        while (!(bool)(await command.ExecuteScalarAsync(cancellationToken))!)
        {
            await Task.Delay(LockPoll, cancellationToken);
        }
    }

    private static async Task UnlockQuietlyAsync(NpgsqlConnection connection)
    {
        try
        {
            await using var command = new NpgsqlCommand("SELECT pg_advisory_unlock($1)", connection);
            command.Parameters.Add(new NpgsqlParameter<long> { TypedValue = LockKey });
            await command.ExecuteNonQueryAsync();
        }
        catch (Exception ex) when (ex is NpgsqlException or InvalidOperationException)
        {
            // the connection is broken: the server released the lock with the session
        }
    }

    private static async Task<(int Version, int MinimumCode)?> ReadVersionAsync(NpgsqlConnection connection, string versions, string objectName,
        CancellationToken cancellationToken)
    {
        await using var read = new NpgsqlCommand($"SELECT version, min_code_version FROM {versions} WHERE object_name = $1", connection);
        read.Parameters.Add(new NpgsqlParameter<string> { TypedValue = objectName });
        await using var reader = await read.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken) ? (reader.GetInt32(0), reader.GetInt32(1)) : null;
    }

    private static async Task RecordAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string versions, string objectName,
        int version, int minimumCode, CancellationToken cancellationToken)
    {
        await using var record = new NpgsqlCommand(
            $"""
             INSERT INTO {versions} (object_name, version, min_code_version) VALUES ($1, $2, $3)
             ON CONFLICT (object_name) DO UPDATE SET version = EXCLUDED.version, min_code_version = EXCLUDED.min_code_version, applied_at = now()
             """, connection, transaction);
        record.Parameters.Add(new NpgsqlParameter<string> { TypedValue = objectName });
        record.Parameters.Add(new NpgsqlParameter<int> { TypedValue = version });
        record.Parameters.Add(new NpgsqlParameter<int> { TypedValue = minimumCode });
        await record.ExecuteNonQueryAsync(cancellationToken);
    }

    private static async Task DropIfInvalidAsync(NpgsqlConnection connection, string schema, string index, CancellationToken cancellationToken)
    {
        await using (var find = new NpgsqlCommand(
            """
            SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE NOT i.indisvalid AND n.nspname = $1 AND c.relname = $2)
            """, connection))
        {
            find.Parameters.Add(new NpgsqlParameter<string> { TypedValue = schema });
            find.Parameters.Add(new NpgsqlParameter<string> { TypedValue = index });
            if (!(bool)(await find.ExecuteScalarAsync(cancellationToken))!)
            {
                return;
            }
        }

        // A leftover of an interrupted build: none is in progress, as every TaskiqPg build holds the lock we hold.
        await ExecuteAsync(connection, $"DROP INDEX CONCURRENTLY IF EXISTS {PgIdentifier.Quote(schema, "Schema")}.{PgIdentifier.Quote(index, "index")}", cancellationToken);
    }

    private static async Task ExecuteAsync(NpgsqlConnection connection, string sql, CancellationToken cancellationToken)
    {
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync(cancellationToken);
    }
}
