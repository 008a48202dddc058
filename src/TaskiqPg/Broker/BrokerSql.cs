namespace TaskiqPg;

/// <summary>Every SQL statement of the broker, built once from validated, quoted names. Values are always parameters.</summary>
internal sealed class BrokerSql
{
    public BrokerSql(PostgresBrokerOptions options)
    {
        var t = PgIdentifier.QualifiedName(options.Schema, nameof(options.Schema), options.MessagesTable, nameof(options.MessagesTable));
        var claimIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.MessagesTable, "claim"), "index");
        var leaseIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.MessagesTable, "lease"), "index");
        var taskIdIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.MessagesTable, "task_id"), "index");
        var taskIdHashIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.MessagesTable, "task_id_hash"), "index");
        var deadIndex = PgIdentifier.Quote(SchemaMigrator.IndexName(options.MessagesTable, "dead"), "index");

        Migrations =
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
             CREATE INDEX IF NOT EXISTS {claimIndex} ON {t} (queue, priority DESC, run_at, id) WHERE status = 'pending';
             CREATE INDEX IF NOT EXISTS {leaseIndex} ON {t} (locked_until) WHERE status = 'processing';
             CREATE INDEX IF NOT EXISTS {taskIdIndex} ON {t} (task_id);
             """,

            // 2: task ids are random text looked up by equality only; a hash index costs a kick about a quarter less
            // than the b-tree (measured: 200k-row insert 1.25 s → 0.94 s).
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
        ];

        // $1 task_id, $2 task_name, $3 message, $4 labels, $5 queue, $6 priority, $7 run_at, $8 delay, $9 max_attempts, $10 channel
        const string insert =
            "INSERT INTO {0} (task_id, task_name, message, labels, queue, priority, run_at, max_attempts) " +
            "VALUES ($1, $2, $3, $4::jsonb, $5, $6, COALESCE($7, now() + $8), $9)";
        Kick = string.Format(System.Globalization.CultureInfo.InvariantCulture, insert, t) + " RETURNING id";
        KickAndNotify = $"WITH ins AS ({string.Format(System.Globalization.CultureInfo.InvariantCulture, insert, t)} RETURNING id) SELECT id, pg_notify($10, $5) FROM ins";

        // Binary COPY (no per-row statement, no array decoding); run_at left to its default now() when not given.
        KickManyCopy = $"COPY {t} (task_id, task_name, message, labels, queue, priority, max_attempts, run_at) FROM STDIN (FORMAT BINARY)";
        KickManyCopyAtNow = $"COPY {t} (task_id, task_name, message, labels, queue, priority, max_attempts) FROM STDIN (FORMAT BINARY)";

        // $1 queue, $2 limit, $3 worker, $4 lease
        Claim =
            $"""
             WITH next AS (
                 SELECT id FROM {t}
                 WHERE status = 'pending' AND queue = $1 AND run_at <= now()
                 ORDER BY priority DESC, run_at, id
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE {t} AS m
             SET status = 'processing', attempts = m.attempts + 1, claims = m.claims + 1, started = false,
                 locked_by = $3, locked_until = now() + $4
             FROM next
             WHERE m.id = next.id
             RETURNING m.id, m.task_id, m.task_name, m.message, m.attempts, m.max_attempts, m.priority, m.run_at, m.created_at, now(), m.claims
             """;

        // $1 ids, $2 claim numbers, $3 worker
        Ack =
            $"""
             DELETE FROM {t} AS m
             USING unnest($1::bigint[], $2::integer[]) AS a(id, claim)
             WHERE m.id = a.id AND m.claims = a.claim AND m.locked_by = $3 AND m.status = 'processing'
             RETURNING m.id, m.claims
             """;

        // $1 ids, $2 claim numbers, $3 errors, $4 retry flags, $5 worker, $6 base delay seconds, $7 max delay seconds
        Fail =
            $"""
             UPDATE {t} AS m
             SET {FailAssignments("$6", "$7")}
             FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::boolean[]) AS f(id, claim, error, retry)
             WHERE m.id = f.id AND m.claims = f.claim AND m.locked_by = $5 AND m.status = 'processing'
             RETURNING m.id, m.status, m.claims
             """;

        // $1 queue, $2 channel; arrays $3 task ids, $4 task names, $5 messages, $6 labels, $7 priorities, $8 max attempts,
        // $9 attempts already used. Tasks whose rows were deleted at claim (AckMode.WhenReceived) and never started.
        Requeue =
            $"""
             WITH ins AS (
                 INSERT INTO {t} (task_id, task_name, message, labels, queue, priority, max_attempts, attempts)
                 SELECT r.task_id, r.task_name, r.message, r.labels::jsonb, $1, r.priority, r.max_attempts, r.attempts
                 FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::integer[], $8::integer[], $9::integer[])
                     AS r(task_id, task_name, message, labels, priority, max_attempts, attempts)
                 RETURNING 1
             )
             SELECT count(*), pg_notify($2, $1) FROM ins
             """;

        // $1 ids, $2 claim numbers, $3 worker: back to pending without using up an attempt
        Release =
            $"""
             UPDATE {t} AS m
             SET status = 'pending', attempts = m.attempts - 1, locked_by = NULL, locked_until = NULL
             FROM unnest($1::bigint[], $2::integer[]) AS a(id, claim)
             WHERE m.id = a.id AND m.claims = a.claim AND m.locked_by = $3 AND m.status = 'processing'
             RETURNING m.id
             """;

        // $1 worker, $2 lease, $3 queue, $4 ids and $5 claim numbers of the claims the worker gave up (left to their leases)
        RenewAllOfWorker =
            $"""
             UPDATE {t} AS m SET locked_until = now() + $2
             WHERE m.status = 'processing' AND m.locked_by = $1 AND m.queue = $3
               AND NOT EXISTS (SELECT 1 FROM unnest($4::bigint[], $5::integer[]) AS g(id, claim) WHERE g.id = m.id AND g.claim = m.claims)
             RETURNING m.id, m.claims
             """;

        // $1 worker, $2 ids the worker holds, $3 queue
        ReleaseOrphans =
            $"""
             UPDATE {t} AS m
             SET status = 'pending', attempts = m.attempts - 1, locked_by = NULL, locked_until = NULL
             WHERE m.status = 'processing' AND m.locked_by = $1 AND m.queue = $3 AND NOT (m.id = ANY($2))
             RETURNING m.id
             """;

        // $1 ids, $2 claim numbers, $3 worker, $4 lease, $5 whether each claim has started (recorded for the rescue)
        Renew =
            $"""
             UPDATE {t} AS m
             SET locked_until = now() + $4, started = m.started OR a.started
             FROM unnest($1::bigint[], $2::integer[], $5::boolean[]) AS a(id, claim, started)
             WHERE m.id = a.id AND m.claims = a.claim AND m.locked_by = $3 AND m.status = 'processing'
             RETURNING m.id, m.claims
             """;

        // $1 batch size, $2 how many times at least a claim that was never seen to start gets its attempt back (a task
        // whose worker dies before its first renewal, every time, still ends: then its attempts count).
        Rescue =
            $"""
             WITH expired AS (
                 SELECT id, NOT started AND unstarted_rescues < greatest(max_attempts, $2) AS refund FROM {t}
                 WHERE status = 'processing' AND locked_until < now()
                 ORDER BY locked_until
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE {t} AS m
             SET status = CASE WHEN e.refund OR m.attempts < m.max_attempts THEN 'pending' ELSE 'dead' END,
                 attempts = m.attempts - CASE WHEN e.refund THEN 1 ELSE 0 END,
                 unstarted_rescues = m.unstarted_rescues + CASE WHEN e.refund THEN 1 ELSE 0 END,
                 last_error = 'lease expired: worker ' || coalesce(m.locked_by, '?') || ' stopped renewing attempt ' || m.attempts
                              || CASE WHEN e.refund THEN ' before it was seen to start (attempt not counted)' ELSE '' END,
                 locked_by = NULL, locked_until = NULL, run_at = now()
             FROM expired AS e
             WHERE m.id = e.id
             RETURNING m.task_id, m.task_name, m.status
             """;

        // $1 task_id
        State = $"SELECT status, attempts, max_attempts, run_at, last_error, locked_by FROM {t} WHERE task_id = $1 ORDER BY id DESC LIMIT 1";

        // $1 queue
        // $1 queue, $2 most rows counted per status (null: all). One partial index per status, so no count ever reads
        // rows of another status: due, scheduled and retrying work on the claim index, dead letters on the dead index.
        Counts =
            $"""
             SELECT 'pending', count(*) FROM (SELECT 1 FROM {t} WHERE status = 'pending' AND queue = $1 LIMIT $2) AS p
             UNION ALL SELECT 'processing', count(*) FROM (SELECT 1 FROM {t} WHERE status = 'processing' AND queue = $1 LIMIT $2) AS r
             UNION ALL SELECT 'dead', count(*) FROM (SELECT 1 FROM {t} WHERE status = 'dead' AND queue = $1 LIMIT $2) AS d
             """;

        // $1 queue, $2 status: the planner's row estimate (no rows read), for counts past the bound.
        EstimateCount = $"EXPLAIN (FORMAT JSON) SELECT 1 FROM {t} WHERE status = $2 AND queue = $1";
    }

    /// <summary>
    /// The SET list of a failed attempt over rows <c>m</c> and failures <c>f(retry, error)</c>: retry after an exponential
    /// backoff with jitter while attempts remain, else dead. Shared by <see cref="Fail"/> and the worker's settle statement.
    /// </summary>
    internal static string FailAssignments(string baseDelaySeconds, string maxDelaySeconds)
        => $"""
            status = CASE WHEN f.retry AND m.attempts < m.max_attempts THEN 'pending' ELSE 'dead' END,
                run_at = CASE WHEN f.retry AND m.attempts < m.max_attempts
                              THEN now() + make_interval(secs => least({baseDelaySeconds} * power(2, m.attempts - 1), {maxDelaySeconds}) * (0.5 + random() * 0.5))
                              ELSE m.run_at END,
                last_error = f.error, locked_by = NULL, locked_until = NULL
            """;

    public IReadOnlyList<MigrationStep> Migrations { get; }

    /// <summary>Insert only: the broker's coalescing notifier sends the NOTIFY after the commit.</summary>
    public string Kick { get; }

    /// <summary>Insert + NOTIFY in the caller's transaction (delivered on commit, dropped on rollback).</summary>
    public string KickAndNotify { get; }

    /// <summary>COPY of many messages with an explicit run_at.</summary>
    public string KickManyCopy { get; }

    /// <summary>COPY of many messages due at the transaction's now().</summary>
    public string KickManyCopyAtNow { get; }

    /// <summary>$1 channel, $2 payload.</summary>
    public const string Notify = "SELECT pg_notify($1, $2)";

    /// <summary>The transaction's timestamp: the now() every statement of the transaction sees.</summary>
    public const string TransactionNow = "SELECT now()";

    public string Claim { get; }

    public string Ack { get; }

    public string Fail { get; }

    public string Release { get; }

    public string Requeue { get; }

    public string Renew { get; }

    public string ReleaseOrphans { get; }

    public string RenewAllOfWorker { get; }

    public string Rescue { get; }

    public string State { get; }

    public string Counts { get; }

    public string EstimateCount { get; }
}
