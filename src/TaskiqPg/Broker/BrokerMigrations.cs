namespace TaskiqPg;

/// <summary>
/// The messages, queues and workers tables' schema history: one <see cref="MigrationStep"/> per schema version, in
/// order, never edited once released (a new version appends a step). <see cref="SchemaMigrator"/> runs the steps a
/// database lacks; names are validated and quoted here, once.
/// </summary>
internal static class BrokerMigrations
{
    public static IReadOnlyList<MigrationStep> Steps(PostgresBrokerOptions options)
    {
        var t = PgIdentifier.QualifiedName(options.Schema, nameof(options.Schema), options.MessagesTable, nameof(options.MessagesTable));
        var claimIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.MessagesTable, "claim"), "index");
        var leaseIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.MessagesTable, "lease"), "index");
        var taskIdIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.MessagesTable, "task_id"), "index");
        var taskIdHashIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.MessagesTable, "task_id_hash"), "index");
        var deadIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.MessagesTable, "dead"), "index");
        var dueIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.MessagesTable, "due"), "index");
        var finishedIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.MessagesTable, "finished"), "index");
        var uniqueIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.MessagesTable, "unique"), "index");
        var schema = PgIdentifier.Quote(options.Schema, nameof(options.Schema));
        var stateCheck = PgIdentifier.Quote(SchemaMigrator.IndexName(options.MessagesTable, "state_check"), "constraint");
        var regclass = $"'{t}'::regclass";
        var queues = PgIdentifier.QualifiedName(options.Schema, nameof(options.Schema), options.QueuesTable, nameof(options.QueuesTable));
        var workers = PgIdentifier.QualifiedName(options.Schema, nameof(options.Schema), options.WorkersTable, nameof(options.WorkersTable)); // validated plain identifiers: no quote can occur in them

        return
        [
            $"""
             CREATE TABLE IF NOT EXISTS {t} (
                 id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 task_id      text        NOT NULL,
                 task_name    text        NOT NULL,
                 message      text        NOT NULL,
                 labels       jsonb       NOT NULL DEFAULT jsonb_build_object(),
                 status       text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'processing', 'dead')),
                 queue        text        NOT NULL DEFAULT 'default',
                 priority     integer     NOT NULL DEFAULT 0,
                 run_at       timestamptz NOT NULL DEFAULT now(),
                 attempts     integer     NOT NULL DEFAULT 0,
                 max_attempts integer     NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
                 locked_until timestamptz,
                 locked_by    text,
                 last_error   text,
                 created_at   timestamptz NOT NULL DEFAULT now()
             ) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_insert_scale_factor = 0.01,
                     autovacuum_vacuum_cost_delay = 0, fillfactor = 90);
             {AdoptPythonTable(t, regclass)}
             CREATE INDEX IF NOT EXISTS {claimIndex} ON {t} (queue, priority DESC, run_at, id) WHERE status = 'pending';
             CREATE INDEX IF NOT EXISTS {leaseIndex} ON {t} (locked_until) WHERE status = 'processing';
             CREATE INDEX IF NOT EXISTS {taskIdIndex} ON {t} (task_id);
             """,

            // 2: task ids are random text looked up by equality only; a hash index costs a kick less than the b-tree
            // (see docs/ARCHITECTURE.md, "Measured").
            $"""
             DROP INDEX IF EXISTS {PgIdentifier.Quote(options.Schema, nameof(options.Schema))}.{taskIdIndex};
             CREATE INDEX IF NOT EXISTS {taskIdHashIndex} ON {t} USING hash (task_id);
             """,

            // 3: dead letters by queue, so counting (and listing) them never scans the table; built without blocking
            // kicks and claims on a large live table.
            new MigrationStep($"CREATE INDEX CONCURRENTLY IF NOT EXISTS {deadIndex} ON {t} (queue, id) WHERE status = 'dead'",
                ConcurrentIndex: SchemaMigrator.IndexName(options.MessagesTable, "dead")),

            // 4: a lease is identified by the claim number (never decremented), no longer by the attempt, so a rescue can
            // give back the attempt of a claim that never started without two claims sharing one identity. `started`
            // is set by the renewals of a started claim; `unstarted_rescues` bounds how often an attempt is given back.
            // Constant defaults: no table rewrite.
            $"""
             ALTER TABLE {t}
                 ADD COLUMN IF NOT EXISTS claims integer NOT NULL DEFAULT 0,
                 ADD COLUMN IF NOT EXISTS started boolean NOT NULL DEFAULT false,
                 ADD COLUMN IF NOT EXISTS unstarted_rescues integer NOT NULL DEFAULT 0;
             """,

            // 5: named task states (TaskState). Scheduled and retryable rows leave the claim index, so the claim reads
            // only due work; finished rows may be kept (completed, cancelled, discarded) with the time they ended.
            // 'dead' becomes 'discarded'. Older code would write 'dead', which the new check refuses: it breaks older code.
            new MigrationStep(
                $"""
                 ALTER TABLE {t} ADD COLUMN IF NOT EXISTS finished_at timestamptz;
                 DO $$
                 DECLARE c text;
                 BEGIN
                     FOR c IN SELECT conname FROM pg_constraint
                              WHERE conrelid = {regclass} AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%status%'
                                AND conname <> {SqlLiteral(SchemaMigrator.IndexName(options.MessagesTable, "state_check"))}
                     LOOP
                         EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', {regclass}, c);
                     END LOOP;
                 END $$;
                 ALTER TABLE {t} ALTER COLUMN status SET DEFAULT 'pending';
                 UPDATE {t} SET status = 'discarded', finished_at = coalesce(finished_at, now()) WHERE status = 'dead';
                 UPDATE {t} SET status = CASE WHEN attempts > 0 THEN 'retryable' ELSE 'scheduled' END
                 WHERE status = 'pending' AND run_at > now();
                 ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {stateCheck};
                 ALTER TABLE {t} ADD CONSTRAINT {stateCheck}
                     CHECK (status IN ('pending', 'scheduled', 'retryable', 'processing', 'completed', 'cancelled', 'discarded')) NOT VALID;
                 ALTER TABLE {t} VALIDATE CONSTRAINT {stateCheck};
                 """, BreaksOlderCode: true),

            // 6: what becomes due, per queue and state: promotion to available and the next due time read only due rows.
            new MigrationStep($"CREATE INDEX CONCURRENTLY IF NOT EXISTS {dueIndex} ON {t} (queue, status, run_at, id) WHERE status IN ('scheduled', 'retryable')",
                ConcurrentIndex: SchemaMigrator.IndexName(options.MessagesTable, "due")),

            // 7: finished rows per queue and state by the time they ended: counts, listing and retention pruning.
            new MigrationStep($"CREATE INDEX CONCURRENTLY IF NOT EXISTS {finishedIndex} ON {t} (queue, status, finished_at, id) WHERE status IN ('completed', 'cancelled', 'discarded')",
                ConcurrentIndex: SchemaMigrator.IndexName(options.MessagesTable, "finished")),

            // 8: the dead-letter index of step 3 covers no row any more (its rows are 'discarded', in the finished index).
            $"DROP INDEX IF EXISTS {schema}.{deadIndex}",

            // 9: cancel requests of running tasks (read by the renewals of the worker running it), and the queues' settings:
            // a paused queue is claimed from by no worker. Added columns are nullable: no rewrite, older code unaffected.
            $"""
             ALTER TABLE {t} ADD COLUMN IF NOT EXISTS cancel_requested_at timestamptz;
             CREATE TABLE IF NOT EXISTS {queues} (
                 name       text        PRIMARY KEY,
                 paused_at  timestamptz,
                 updated_at timestamptz NOT NULL DEFAULT now()
             );
             """,

            // 10: unique tasks: the key (a hash of queue, task name, key or arguments, and the period) and the states (a
            // bitmask of TaskState bits) in which a duplicate counts.
            $"""
             ALTER TABLE {t} ADD COLUMN IF NOT EXISTS unique_key text, ADD COLUMN IF NOT EXISTS unique_states integer;
             """,

            // 11: the database enforces uniqueness: one row per key among the rows whose state is in their own mask.
            new MigrationStep($"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {uniqueIndex} ON {t} (unique_key) WHERE {BrokerSql.UniquePredicate}",
                ConcurrentIndex: SchemaMigrator.IndexName(options.MessagesTable, "unique")),

            // 12: live workers: each registers, heartbeats, and deregisters on stop.
            $"""
             CREATE TABLE IF NOT EXISTS {workers} (
                 id           text        PRIMARY KEY,
                 host         text        NOT NULL,
                 pid          integer     NOT NULL,
                 queues       text[]      NOT NULL,
                 started_at   timestamptz NOT NULL DEFAULT now(),
                 heartbeat_at timestamptz NOT NULL DEFAULT now(),
                 in_flight    integer     NOT NULL DEFAULT 0,
                 capacity     integer     NOT NULL DEFAULT 0,
                 stale_after  interval
             );
             """,

            // 13: each task's history: one entry per ended attempt (worker, start, end, outcome, error). Constant default:
            // no rewrite.
            $"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS attempted_at timestamptz, ADD COLUMN IF NOT EXISTS history jsonb NOT NULL DEFAULT '[]'::jsonb",

            // 14: taskiq's labels on rows another producer (Python's taskiq-postgres) inserted with only
            // (task_id, task_name, message, labels): see TaskiqLabelsTrigger.
            TaskiqLabelsTrigger(t, schema, PgIdentifier.Quote(SchemaMigrator.IndexName(options.MessagesTable, "labels"), "function")),
        ];
    }

    /// <summary>A validated plain identifier as an SQL string literal (it holds no quote to escape).</summary>
    private static string SqlLiteral(string plainIdentifier) => "'" + plainIdentifier + "'";

    /// <summary>
    /// The part of the first migration that adopts a messages table Python's taskiq-postgres created first
    /// (<c>id serial, task_id varchar, task_name varchar, message text, labels jsonb, status text, created_at</c>): it adds
    /// TaskiqPg's columns with their defaults (its rows become available tasks of the default queue), widens <c>id</c>
    /// to bigint and the varchar columns to text, and keeps every row. On a table TaskiqPg just created it changes nothing.
    /// </summary>
    private static string AdoptPythonTable(string t, string regclass) =>
        $"""
         ALTER TABLE {t}
             ADD COLUMN IF NOT EXISTS queue        text        NOT NULL DEFAULT 'default',
             ADD COLUMN IF NOT EXISTS priority     integer     NOT NULL DEFAULT 0,
             ADD COLUMN IF NOT EXISTS run_at       timestamptz NOT NULL DEFAULT now(),
             ADD COLUMN IF NOT EXISTS attempts     integer     NOT NULL DEFAULT 0,
             ADD COLUMN IF NOT EXISTS max_attempts integer     NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
             ADD COLUMN IF NOT EXISTS locked_until timestamptz,
             ADD COLUMN IF NOT EXISTS locked_by    text,
             ADD COLUMN IF NOT EXISTS last_error   text;
         DO $adopt$
         DECLARE seq text;
         BEGIN
             IF (SELECT atttypid FROM pg_attribute WHERE attrelid = {regclass} AND attname = 'id') = 'integer'::regtype THEN
                 EXECUTE format('ALTER TABLE %s ALTER COLUMN id TYPE bigint', {regclass});
                 seq := pg_get_serial_sequence({regclass}::text, 'id');
                 IF seq IS NOT NULL THEN
                     EXECUTE format('ALTER SEQUENCE %s AS bigint', seq);
                 END IF;
             END IF;
             IF (SELECT atttypid FROM pg_attribute WHERE attrelid = {regclass} AND attname = 'task_id') <> 'text'::regtype THEN
                 EXECUTE format('ALTER TABLE %s ALTER COLUMN task_id TYPE text, ALTER COLUMN task_name TYPE text', {regclass});
             END IF;
             IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {regclass} AND attname = 'created_at' AND NOT attnotnull) THEN
                 EXECUTE format('UPDATE %s SET created_at = now() WHERE created_at IS NULL', {regclass});
                 EXECUTE format('ALTER TABLE %s ALTER COLUMN created_at SET NOT NULL', {regclass});
                 EXECUTE format('ALTER TABLE %s ALTER COLUMN labels SET DEFAULT jsonb_build_object()', {regclass});
                 EXECUTE format('ALTER TABLE %s SET (autovacuum_vacuum_scale_factor = 0.01, '
                     'autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0, fillfactor = 90)', {regclass});
             END IF;
         END $adopt$;
         """;

    /// <summary>
    /// A row trigger that reads taskiq's scheduling labels into TaskiqPg's columns, for producers that write only the
    /// labels (taskiq-postgres inserts <c>task_id, task_name, message, labels</c>): <c>priority</c> (an integer; only
    /// over the default 0), <c>max_retries</c> (taskiq counts every attempt: 3 means three in all) and
    /// <c>retry_on_error</c> (anything but true means one attempt), and <c>delay</c> (seconds, integer or decimal,
    /// JSON number or string; only on a row due now that was never attempted: it becomes scheduled at the database's
    /// now() + delay). A label that does not parse discards the row with the reason in <c>last_error</c>: it is
    /// visible and retryable as a dead letter, never run at the wrong time.
    /// It runs AFTER the insert and updates the row (still invisible to others: same transaction): a BEFORE row
    /// trigger, even one whose WHEN clause never matches, turns off COPY's multi-row inserts and slows every bulk kick;
    /// this one costs a row without these labels only the WHEN clause's key test.
    /// </summary>
    private static string TaskiqLabelsTrigger(string t, string schema, string function) =>
        $$"""
          CREATE OR REPLACE FUNCTION {{schema}}.{{function}}() RETURNS trigger LANGUAGE plpgsql AS $labels$
          DECLARE
              v text;
              seconds numeric;
              why text;
              new_priority integer := NEW.priority;
              new_max_attempts integer := NEW.max_attempts;
              new_run_at timestamptz := NEW.run_at;
              new_status text := NEW.status;
          BEGIN
              v := NEW.labels ->> 'priority';
              IF v IS NOT NULL AND NEW.priority = 0 THEN
                  IF v ~ '^\s*[+-]?[0-9]{1,9}\s*$' THEN
                      new_priority := v::integer;
                  ELSE
                      why := format('the priority label %s is not an integer', NEW.labels -> 'priority');
                  END IF;
              END IF;
              v := NEW.labels ->> 'max_retries';
              IF why IS NULL AND v IS NOT NULL THEN
                  IF v ~ '^\s*[+-]?[0-9]{1,9}\s*$' THEN
                      new_max_attempts := greatest(1, v::integer);
                  ELSE
                      why := format('the max_retries label %s is not an integer', NEW.labels -> 'max_retries');
                  END IF;
              END IF;
              IF why IS NULL AND NEW.labels ? 'retry_on_error' AND lower(NEW.labels ->> 'retry_on_error') IS DISTINCT FROM 'true' THEN
                  new_max_attempts := 1;
              END IF;
              v := NEW.labels ->> 'delay';
              IF why IS NULL AND v IS NOT NULL AND NEW.status = 'pending' AND NEW.attempts = 0 AND NEW.run_at <= now() THEN
                  IF v !~ '^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?\s*$' THEN
                      why := format('the delay label %s is not a number of seconds', NEW.labels -> 'delay');
                  ELSE
                      seconds := v::numeric;
                      IF seconds > 3153600000 THEN
                          why := format('the delay label %s is more than 100 years', NEW.labels -> 'delay');
                      ELSIF seconds > 0 THEN
                          new_run_at := now() + make_interval(secs => seconds::float8);
                          new_status := 'scheduled';
                      END IF;
                  END IF;
              END IF;
              IF why IS NOT NULL THEN
                  UPDATE {{t}} SET status = 'discarded', finished_at = now(), last_error = why WHERE id = NEW.id;
              ELSIF (new_priority, new_max_attempts, new_run_at, new_status) IS DISTINCT FROM (NEW.priority, NEW.max_attempts, NEW.run_at, NEW.status) THEN
                  UPDATE {{t}} SET priority = new_priority, max_attempts = new_max_attempts, run_at = new_run_at, status = new_status
                  WHERE id = NEW.id;
              END IF;
              RETURN NULL;
          END $labels$;
          DROP TRIGGER IF EXISTS {{function}} ON {{t}};
          CREATE TRIGGER {{function}} AFTER INSERT ON {{t}} FOR EACH ROW
              WHEN (NEW.labels ?| ARRAY['delay', 'priority', 'retry_on_error', 'max_retries'])
              EXECUTE FUNCTION {{schema}}.{{function}}();
          """;
}
