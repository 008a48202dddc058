namespace TaskiqPg;

/// <summary>Every SQL statement of the result backend, built once from validated, quoted names.</summary>
internal sealed class ResultSql
{
    public ResultSql(PostgresResultBackendOptions options)
    {
        var r = PgIdentifier.QualifiedName(options.Schema, nameof(options.Schema), options.ResultsTable, nameof(options.ResultsTable));
        var expiresIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.ResultsTable, "expires"), "index");
        var regclass = $"'{r}'::regclass";
        Migrations =
        [
            // 1: the layout Python's taskiq-postgres shares: its statements insert without a column list
            // (VALUES ($1, $2, NULL) for a result, ($1, NULL, $2) for progress), so the first three columns are task_id,
            // result, progress, and both hold the serializer's bytes (here UTF-8 JSON, which taskiq's JSONSerializer reads).
            // A table Python created first (task_id varchar UNIQUE, result bytea, progress bytea) gets TaskiqPg's columns.
            $"""
             CREATE TABLE IF NOT EXISTS {r} (
                 task_id     text PRIMARY KEY,
                 result      bytea,
                 progress    bytea,
                 stack_trace text,
                 created_at  timestamptz NOT NULL DEFAULT now(),
                 expires_at  timestamptz
             ) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
             ALTER TABLE {r}
                 ADD COLUMN IF NOT EXISTS stack_trace text,
                 ADD COLUMN IF NOT EXISTS created_at  timestamptz NOT NULL DEFAULT now(),
                 ADD COLUMN IF NOT EXISTS expires_at  timestamptz;
             DO $adopt$
             BEGIN
                 IF (SELECT atttypid FROM pg_attribute WHERE attrelid = {regclass} AND attname = 'task_id') <> 'text'::regtype THEN
                     EXECUTE format('ALTER TABLE %s ALTER COLUMN task_id TYPE text', {regclass});
                 END IF;
             END $adopt$;
             CREATE INDEX IF NOT EXISTS {expiresIndex} ON {r} (expires_at) WHERE expires_at IS NOT NULL;
             """,

            // 2: tables of TaskiqPg before this step held text in (task_id, result, stack_trace, progress): the third
            // column becomes progress and result and progress become bytes, in one rewrite (every USING reads the old
            // row). Older code writes text into bytea columns: it breaks older code.
            new MigrationStep(
                $"""
                 DO $bytes$
                 BEGIN
                     IF (SELECT atttypid FROM pg_attribute WHERE attrelid = {regclass} AND attname = 'result') = 'text'::regtype THEN
                         EXECUTE format('ALTER TABLE %s RENAME COLUMN stack_trace TO progress_bytes', {regclass});
                         EXECUTE format('ALTER TABLE %s RENAME COLUMN progress TO stack_trace_text', {regclass});
                         EXECUTE format('ALTER TABLE %s ALTER COLUMN result TYPE bytea USING convert_to(result, %L), '
                             'ALTER COLUMN progress_bytes TYPE bytea USING convert_to(stack_trace_text, %L), '
                             'ALTER COLUMN stack_trace_text TYPE text USING progress_bytes', {regclass}, 'UTF8', 'UTF8');
                         EXECUTE format('ALTER TABLE %s RENAME COLUMN progress_bytes TO progress', {regclass});
                         EXECUTE format('ALTER TABLE %s RENAME COLUMN stack_trace_text TO stack_trace', {regclass});
                     END IF;
                 END $bytes$;
                 """, BreaksOlderCode: true),
        ];

        // arrays $1 task ids, $2 results, $3 stack traces; $4 ttl (null = forever), $5 channel
        SetMany =
            $"""
             WITH up AS (
                 INSERT INTO {r} AS r (task_id, result, stack_trace, created_at, expires_at)
                 SELECT s.task_id, convert_to(s.result, 'UTF8'), s.stack_trace, now(), now() + $4
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
             INSERT INTO {r} (task_id, progress, expires_at) VALUES ($1, convert_to($2, 'UTF8'), now() + $3)
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
