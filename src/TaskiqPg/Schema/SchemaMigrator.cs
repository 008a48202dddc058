using Npgsql;

namespace TaskiqPg;

/// <summary>
/// Applies versioned, idempotent migration steps for one table. All migrations of all components are serialized by
/// one transaction-scoped advisory lock, so any number of processes may start at once.
/// </summary>
internal static class SchemaMigrator
{
    // Fixed key for pg_advisory_xact_lock: every TaskiqPg migration in a database takes the same lock.
    private const long LockKey = 0x7461736B6971_0001; // "taskiq" + 1

    public const string VersionTable = "taskiq_schema_versions";

    /// <summary>Runs the steps of <paramref name="objectName"/> that the schema-version table has not recorded yet.</summary>
    /// <returns>The number of steps applied (0 when the schema was already current).</returns>
    public static async Task<int> MigrateAsync(NpgsqlDataSource dataSource, string schema, string objectName,
        IReadOnlyList<string> steps, CancellationToken cancellationToken)
    {
        var quotedSchema = PgIdentifier.Quote(schema, "Schema");
        var versions = quotedSchema + "." + PgIdentifier.Quote(VersionTable, "VersionTable");
        await using var connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using var transaction = await connection.BeginTransactionAsync(cancellationToken);

        await using (var lockCommand = new NpgsqlCommand("SELECT pg_advisory_xact_lock($1)", connection, transaction))
        {
            lockCommand.Parameters.Add(new NpgsqlParameter<long> { TypedValue = LockKey });
            await lockCommand.ExecuteNonQueryAsync(cancellationToken);
        }

        await using (var setup = new NpgsqlCommand(
            $"""
             CREATE SCHEMA IF NOT EXISTS {quotedSchema};
             CREATE TABLE IF NOT EXISTS {versions} (
                 object_name text PRIMARY KEY,
                 version integer NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );
             """, connection, transaction))
        {
            await setup.ExecuteNonQueryAsync(cancellationToken);
        }

        int current;
        await using (var read = new NpgsqlCommand($"SELECT version FROM {versions} WHERE object_name = $1", connection, transaction))
        {
            read.Parameters.Add(new NpgsqlParameter<string> { TypedValue = objectName });
            current = await read.ExecuteScalarAsync(cancellationToken) is int v ? v : 0;
        }

        for (var i = current; i < steps.Count; i++)
        {
            await using var step = new NpgsqlCommand(steps[i], connection, transaction);
            await step.ExecuteNonQueryAsync(cancellationToken);
        }

        if (current < steps.Count)
        {
            await using var record = new NpgsqlCommand(
                $"""
                 INSERT INTO {versions} (object_name, version) VALUES ($1, $2)
                 ON CONFLICT (object_name) DO UPDATE SET version = EXCLUDED.version, applied_at = now()
                 """, connection, transaction);
            record.Parameters.Add(new NpgsqlParameter<string> { TypedValue = objectName });
            record.Parameters.Add(new NpgsqlParameter<int> { TypedValue = steps.Count });
            await record.ExecuteNonQueryAsync(cancellationToken);
        }

        await transaction.CommitAsync(cancellationToken);
        return Math.Max(0, steps.Count - current);
    }

    /// <summary>Runs <see cref="MigrateAsync"/> and logs how many steps were applied.</summary>
    public static async Task MigrateAndLogAsync(NpgsqlDataSource dataSource, string schema, string objectName, IReadOnlyList<string> steps,
        Microsoft.Extensions.Logging.ILogger logger, CancellationToken cancellationToken)
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
}
