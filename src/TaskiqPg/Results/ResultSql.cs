namespace TaskiqPg;

/// <summary>Every SQL statement of the result backend, built once from validated, quoted names.</summary>
internal sealed class ResultSql
{
    public ResultSql(PostgresResultBackendOptions options)
    {
        var r = PgIdentifier.QualifiedName(options.Schema, nameof(options.Schema), options.ResultsTable, nameof(options.ResultsTable));
        var expiresIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.ResultsTable, "expires"), "index");
        Migrations =
        [
            $"""
             CREATE TABLE IF NOT EXISTS {r} (
                 task_id     text PRIMARY KEY,
                 result      text,
                 stack_trace text,
                 progress    text,
                 created_at  timestamptz NOT NULL DEFAULT now(),
                 expires_at  timestamptz
             ) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
             CREATE INDEX IF NOT EXISTS {expiresIndex} ON {r} (expires_at) WHERE expires_at IS NOT NULL;
             """,
        ];

        // arrays $1 task ids, $2 results, $3 stack traces; $4 ttl (null = forever), $5 channel
        SetMany =
            $"""
             WITH up AS (
                 INSERT INTO {r} AS r (task_id, result, stack_trace, created_at, expires_at)
                 SELECT s.task_id, s.result, s.stack_trace, now(), now() + $4
                 FROM unnest($1::text[], $2::text[], $3::text[]) AS s(task_id, result, stack_trace)
                 ON CONFLICT (task_id) DO UPDATE
                     SET result = EXCLUDED.result, stack_trace = EXCLUDED.stack_trace, expires_at = EXCLUDED.expires_at
                 RETURNING r.task_id
             )
             SELECT pg_notify($5, ids) FROM (SELECT string_agg(task_id, ',') AS ids FROM up) AS n WHERE ids IS NOT NULL
             """;

        // $1 task id
        Get = $"SELECT result, stack_trace FROM {r} WHERE task_id = $1 AND result IS NOT NULL AND (expires_at IS NULL OR expires_at > now())";
        IsReady = $"SELECT EXISTS (SELECT 1 FROM {r} WHERE task_id = $1 AND result IS NOT NULL AND (expires_at IS NULL OR expires_at > now()))";
        Delete = $"DELETE FROM {r} WHERE task_id = $1";

        // $1 task id, $2 progress json, $3 ttl
        SetProgress =
            $"""
             INSERT INTO {r} (task_id, progress, expires_at) VALUES ($1, $2, now() + $3)
             ON CONFLICT (task_id) DO UPDATE SET progress = EXCLUDED.progress
             """;
        GetProgress = $"SELECT progress FROM {r} WHERE task_id = $1 AND (expires_at IS NULL OR expires_at > now())";

        // $1 batch size
        Prune =
            $"""
             DELETE FROM {r} WHERE ctid = ANY (ARRAY(
                 SELECT ctid FROM {r} WHERE expires_at < now() LIMIT $1 FOR UPDATE SKIP LOCKED))
             """;
    }

    public IReadOnlyList<MigrationStep> Migrations { get; }

    public string SetMany { get; }

    public string Get { get; }

    public string IsReady { get; }

    public string Delete { get; }

    public string SetProgress { get; }

    public string GetProgress { get; }

    public string Prune { get; }
}
