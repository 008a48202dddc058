namespace TaskiqPg;

/// <summary>Every SQL statement of the schedule source, built once from validated, quoted names.</summary>
internal sealed class ScheduleSql
{
    public ScheduleSql(PostgresScheduleSourceOptions options)
    {
        var s = PgIdentifier.QualifiedName(options.Schema, nameof(options.Schema), options.SchedulesTable, nameof(options.SchedulesTable));
        var f = PgIdentifier.QualifiedName(options.Schema, nameof(options.Schema), options.FiresTable, nameof(options.FiresTable));
        var firedIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.FiresTable, "fired_at"), "index");
        var activeIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.SchedulesTable, "active"), "index");
        var doneIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.SchedulesTable, "done"), "index");
        Migrations =
        [
            $"""
             CREATE TABLE IF NOT EXISTS {s} (
                 id              uuid PRIMARY KEY,
                 task_name       text        NOT NULL,
                 schedule        jsonb       NOT NULL,
                 source          text        NOT NULL DEFAULT 'runtime' CHECK (source IN ('static', 'runtime')),
                 enabled         boolean     NOT NULL DEFAULT true,
                 done            boolean     NOT NULL DEFAULT false,
                 disabled_reason text,
                 last_fire_at    timestamptz,
                 created_at      timestamptz NOT NULL DEFAULT now(),
                 updated_at      timestamptz NOT NULL DEFAULT now()
             );
             {AdoptPythonTable(s)}
             CREATE TABLE IF NOT EXISTS {f} (
                 schedule_id uuid        NOT NULL,
                 fire_at     timestamptz NOT NULL,
                 task_id     text        NOT NULL,
                 fired_at    timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (schedule_id, fire_at)
             );
             CREATE INDEX IF NOT EXISTS {firedIndex} ON {f} (fired_at);
             """,

            // 2: every tick reads the enabled, unfinished schedules only: finished one-shots (kept for a retention) and
            // paused schedules must not be scanned.
            new MigrationStep($"CREATE INDEX CONCURRENTLY IF NOT EXISTS {activeIndex} ON {s} (created_at, id) WHERE enabled AND NOT done",
                ConcurrentIndex: SchemaMigrator.IndexName(options.SchedulesTable, "active")),
            new MigrationStep($"CREATE INDEX CONCURRENTLY IF NOT EXISTS {doneIndex} ON {s} (last_fire_at) WHERE done",
                ConcurrentIndex: SchemaMigrator.IndexName(options.SchedulesTable, "done")),
        ];

        // $1 id, $2 task, $3 schedule json, $4 source, $5 channel
        Upsert =
            $"""
             WITH up AS (
                 INSERT INTO {s} (id, task_name, schedule, source) VALUES ($1, $2, $3::jsonb, $4)
                 ON CONFLICT (id) DO UPDATE SET task_name = EXCLUDED.task_name, schedule = EXCLUDED.schedule, updated_at = now()
                 RETURNING id
             )
             SELECT id, pg_notify($5, id::text) FROM up
             """;

        // $1 ids to keep, $2 channel
        DeleteStaleStatic =
            $"""
             WITH gone AS (DELETE FROM {s} WHERE source = 'static' AND NOT (id = ANY ($1)) RETURNING id)
             SELECT count(*), pg_notify($2, 'static') FROM gone
             """;

        // $1 id, $2 channel
        Delete = $"WITH gone AS (DELETE FROM {s} WHERE id = $1 RETURNING id) SELECT count(*), pg_notify($2, $1::text) FROM gone";

        // $1 id, $2 enabled, $3 channel
        SetEnabled =
            $"""
             WITH changed AS (
                 UPDATE {s} SET enabled = $2, disabled_reason = NULL, updated_at = now() WHERE id = $1 RETURNING id
             )
             SELECT count(*), pg_notify($3, $1::text) FROM changed
             """;

        // $1 id, $2 reason
        Disable = $"UPDATE {s} SET enabled = false, disabled_reason = $2, updated_at = now() WHERE id = $1";

        List = $"SELECT id, task_name, schedule::text, source, enabled, done, disabled_reason, last_fire_at FROM {s} ORDER BY created_at, id";

        Active = $"SELECT id, task_name, schedule::text, last_fire_at, created_at, now() FROM {s} WHERE enabled AND NOT done";

        Now = "SELECT now()";

        // $1 schedule ids, $2 fire instants, $3 task ids (in schedule, instant order): the task ids of the rows inserted
        ClaimFires =
            $"""
             INSERT INTO {f} (schedule_id, fire_at, task_id)
             SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[])
             ON CONFLICT DO NOTHING
             RETURNING task_id
             """;

        // $1 schedule ids, $2 fire instants, $3 one-shot flags: each schedule's latest instant recorded once
        RecordFires =
            $"""
             UPDATE {s} AS s SET last_fire_at = greatest(s.last_fire_at, r.fire_at), done = s.done OR r.one_shot, updated_at = now()
             FROM (SELECT id, max(fire_at) AS fire_at, bool_or(one_shot) AS one_shot
                   FROM unnest($1::uuid[], $2::timestamptz[], $3::boolean[]) AS r(id, fire_at, one_shot) GROUP BY id) AS r
             WHERE s.id = r.id
             """;

        // $1 retention
        PruneFires = $"DELETE FROM {f} WHERE fired_at < now() - $1";

        // $1 retention: one-shots that fired longer ago than the retention are finished for good
        PruneDone = $"DELETE FROM {s} WHERE done AND last_fire_at < now() - $1";

        // $1 schedule id
        Fires = $"SELECT fire_at, task_id FROM {f} WHERE schedule_id = $1 ORDER BY fire_at";
    }

    public IReadOnlyList<MigrationStep> Migrations { get; }

    public string Upsert { get; }

    public string DeleteStaleStatic { get; }

    public string Delete { get; }

    public string SetEnabled { get; }

    public string Disable { get; }

    public string List { get; }

    public string Active { get; }

    public string Now { get; }

    public string ClaimFires { get; }

    public string RecordFires { get; }

    public string PruneFires { get; }

    public string PruneDone { get; }

    public string Fires { get; }

    /// <summary>
    /// The part of the first migration that adopts a schedules table Python's taskiq-postgres created first
    /// (<c>id uuid, task_name varchar(100), schedule jsonb, created_at, updated_at</c>, both nullable): it adds
    /// TaskiqPg's columns with their defaults (Python's rows become enabled runtime schedules), widens the task name to
    /// text and makes the times NOT NULL. On a table TaskiqPg just created it changes nothing.
    /// </summary>
    private static string AdoptPythonTable(string s) =>
        $"""
         ALTER TABLE {s}
             ADD COLUMN IF NOT EXISTS source          text    NOT NULL DEFAULT 'runtime' CHECK (source IN ('static', 'runtime')),
             ADD COLUMN IF NOT EXISTS enabled         boolean NOT NULL DEFAULT true,
             ADD COLUMN IF NOT EXISTS done            boolean NOT NULL DEFAULT false,
             ADD COLUMN IF NOT EXISTS disabled_reason text,
             ADD COLUMN IF NOT EXISTS last_fire_at    timestamptz,
             ALTER COLUMN task_name TYPE text;
         UPDATE {s} SET created_at = coalesce(created_at, now()), updated_at = coalesce(updated_at, now())
         WHERE created_at IS NULL OR updated_at IS NULL;
         ALTER TABLE {s} ALTER COLUMN created_at SET NOT NULL, ALTER COLUMN updated_at SET NOT NULL;
         """;
}
