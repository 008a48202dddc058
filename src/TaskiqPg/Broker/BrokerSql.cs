namespace TaskiqPg;

/// <summary>Every SQL statement of the broker, built once from validated, quoted names. Values are always parameters.</summary>
internal sealed class BrokerSql
{
    public BrokerSql(PostgresBrokerOptions options)
    {
        var t = PgIdentifier.QualifiedName(options.Schema, nameof(options.Schema), options.MessagesTable, nameof(options.MessagesTable));
        var queues = PgIdentifier.QualifiedName(options.Schema, nameof(options.Schema), options.QueuesTable, nameof(options.QueuesTable));
        var workers = PgIdentifier.QualifiedName(options.Schema, nameof(options.Schema), options.WorkersTable, nameof(options.WorkersTable)); // validated plain identifiers: no quote can occur in them
        Migrations = BrokerMigrations.Steps(options);

        // $1 task_id, $2 task_name, $3 message, $4 labels, $5 queue, $6 priority, $7 run_at, $8 delay, $9 max_attempts, $10 channel
        // Scheduled when due later than the transaction's now(), available otherwise.
        const string insert =
            "INSERT INTO {0} (task_id, task_name, message, labels, queue, priority, run_at, max_attempts, status) " +
            "SELECT $1, $2, $3, $4::jsonb, $5, $6, d.at, $9, CASE WHEN d.at > now() THEN 'scheduled' ELSE 'pending' END " +
            "FROM (SELECT COALESCE($7, now() + $8) AS at) AS d";
        Kick = string.Format(System.Globalization.CultureInfo.InvariantCulture, insert, t) + " RETURNING id";
        RowExists = $"SELECT EXISTS (SELECT FROM {t} WHERE id = $1)";

        // Unique kicks: $1..$9 as above, $10 key, $11 period in seconds (null: none), $12 states mask, $13 channel. A
        // duplicate inserts nothing (no row returned, no NOTIFY).
        var insertUnique =
            $"INSERT INTO {t} (task_id, task_name, message, labels, queue, priority, run_at, max_attempts, status, unique_key, unique_states) " +
            $"SELECT $1, $2, $3, $4::jsonb, $5, $6, d.at, $9, CASE WHEN d.at > now() THEN 'scheduled' ELSE 'pending' END, {KeyWithPeriod("$10", "$11")}, $12 " +
            $"FROM (SELECT COALESCE($7, now() + $8) AS at) AS d " +
            $"ON CONFLICT (unique_key) WHERE {UniquePredicate} DO NOTHING";
        KickUnique = insertUnique + " RETURNING id";
        KickUniqueAndNotify = $"WITH ins AS ({insertUnique} RETURNING id) SELECT id, pg_notify($13, $5) FROM ins";
        KickUniqueAndNotifyId = $"WITH ins AS ({insertUnique} RETURNING id) SELECT id, pg_notify($13, id::text) FROM ins";

        // $1 key, $2 period seconds: the task that holds a unique key.
        FindUnique = $"SELECT id, task_id FROM {t} WHERE unique_key = {KeyWithPeriod("$1", "$2")} AND {UniquePredicate} LIMIT 1";

        // Many unique kicks in one statement (COPY cannot skip conflicts): arrays $1 task ids, $2 names, $3 messages,
        // $4 labels, $9 keys; $5 queue, $6 priority, $7 max attempts, $8 run_at (null: now()), $10 period seconds,
        // $11 states mask. Duplicates (also within the batch) are skipped; returns how many were inserted.
        KickManyUnique =
            $"""
             WITH ins AS (
                 INSERT INTO {t} (task_id, task_name, message, labels, queue, priority, max_attempts, run_at, status, unique_key, unique_states)
                 SELECT r.task_id, r.task_name, r.message, r.labels::jsonb, $5, $6, $7, d.at,
                        CASE WHEN d.at > now() THEN 'scheduled' ELSE 'pending' END, {KeyWithPeriod("r.key", "$10")}, $11
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $9::text[]) WITH ORDINALITY AS r(task_id, task_name, message, labels, key, n),
                      (SELECT COALESCE($8::timestamptz, now()) AS at) AS d
                 ORDER BY r.n
                 ON CONFLICT (unique_key) WHERE {UniquePredicate} DO NOTHING
                 RETURNING 1
             )
             SELECT count(*) FROM ins
             """;
        KickAndNotify = $"WITH ins AS ({string.Format(System.Globalization.CultureInfo.InvariantCulture, insert, t)} RETURNING id) SELECT id, pg_notify($10, $5) FROM ins";
        // NotifyTaskIds: the payload is the row id, as taskiq-postgres sends it.
        KickAndNotifyId = $"WITH ins AS ({string.Format(System.Globalization.CultureInfo.InvariantCulture, insert, t)} RETURNING id) SELECT id, pg_notify($10, id::text) FROM ins";

        // $1 channel, $2 task ids just inserted in this transaction (their newest rows): one NOTIFY per row id.
        NotifyIds = $"SELECT count(pg_notify($1, m.id::text)) FROM {t} AS m WHERE m.task_id = ANY($2) AND m.id = (SELECT max(id) FROM {t} WHERE task_id = m.task_id)";

        // Binary COPY (no per-row statement, no array decoding); run_at left to its default now() when not given.
        KickManyCopy = $"COPY {t} (task_id, task_name, message, labels, queue, priority, max_attempts, run_at, status) FROM STDIN (FORMAT BINARY)";
        KickManyCopyAtNow = $"COPY {t} (task_id, task_name, message, labels, queue, priority, max_attempts) FROM STDIN (FORMAT BINARY)";

        // $1 queue, $2 limit, $3 worker, $4 lease
        Claim =
            $"""
             WITH next AS (
                 SELECT id FROM {t}
                 WHERE status = 'pending' AND queue = $1 AND run_at <= now()
                   AND NOT EXISTS (SELECT 1 FROM {queues} AS q WHERE q.name = $1 AND q.paused_at IS NOT NULL)
                 ORDER BY priority DESC, run_at, id
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE {t} AS m
             SET status = 'processing', attempts = m.attempts + 1, claims = m.claims + 1, started = false, attempted_at = now(),
                 locked_by = $3, locked_until = now() + $4
             FROM next
             WHERE m.id = next.id
             RETURNING m.id, m.task_id, m.task_name, m.message, m.attempts, m.max_attempts, m.priority, m.run_at, m.created_at, now(), m.claims, m.queue
             """;

        // $1 ids, $2 claim numbers, $3 worker. With a completed retention the row is kept as completed (the worker that ran
        // it stays in locked_by); without, it is deleted.
        var keepCompleted = options.CompletedRetention != TimeSpan.Zero;
        Ack = CompleteStatement(t, keepCompleted, "unnest($1::bigint[], $2::integer[]) AS a(id, claim)", "$3");

        // The ack at receipt (AckMode.WhenReceived), safe to repeat: $1 ids, $2 claim numbers, $3 worker, $4 whether an
        // earlier attempt failed. Besides the claims acked now it returns those an earlier attempt acked although its
        // reply was lost: completed by this worker under the same claim number, or (rows deleted at ack) gone.
        AckOnReceipt =
            $"""
             WITH a AS (SELECT * FROM unnest($1::bigint[], $2::integer[]) AS a(id, claim)),
             acked AS ({CompleteStatement(t, keepCompleted, "a", "$3")})
             SELECT id, claims FROM acked
             UNION ALL
             SELECT a.id, a.claim FROM a
             WHERE $4 AND {AckRecordedBy(t, keepCompleted, "$3")}
             """;

        // $1 ids, $2 claim numbers, $3 errors, $4 retry flags, $5 worker, $6 base delay seconds, $7 max delay seconds,
        // $8..$11 per failure: snooze seconds, max attempts, base and max delay seconds (null: none, the row's, the broker's)
        Fail =
            $"""
             UPDATE {t} AS m
             SET {FailAssignments("$6", "$7")}
             FROM {FailuresUnnest(1, 2, 3, 4, 8)}
             WHERE {LeaseHeld("f", "$5")}
             RETURNING m.id, m.status, m.claims
             """;

        // Fail, safe to repeat after a failure (results on another data source): also the failures an earlier attempt
        // recorded although its reply was lost.
        FailRepeatable =
            $"""
             WITH failed AS ({Fail})
             SELECT id, status, claims FROM failed
             UNION ALL
             SELECT f.id, m.status, f.claim FROM unnest($1::bigint[], $2::integer[]) AS f(id, claim) JOIN {t} AS m ON m.id = f.id
             WHERE {FailureRecordedBy("$5")}
             """;

        // $1 queues, $2 channel; arrays $3 task ids, $4 task names, $5 messages, $6 labels, $7 priorities, $8 max attempts,
        // $9 attempts already used, $10 row ids. Tasks acked at claim (AckMode.WhenReceived) that never started: a row kept
        // as completed becomes available again; a deleted one (no completed retention) is inserted again.
        Requeue =
            $"""
             WITH r AS (
                 SELECT * FROM unnest($10::bigint[], $1::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::integer[], $8::integer[], $9::integer[])
                     AS r(id, queue, task_id, task_name, message, labels, priority, max_attempts, attempts)
             ), back AS (
                 UPDATE {t} AS m
                 SET status = 'pending', attempts = r.attempts, finished_at = NULL, locked_by = NULL, locked_until = NULL, run_at = now()
                 FROM r
                 WHERE m.id = r.id AND m.status = 'completed' AND NOT {UniqueTakenByAnother(t, "m")}
                 RETURNING m.id
             ), ins AS (
                 INSERT INTO {t} (task_id, task_name, message, labels, queue, priority, max_attempts, attempts)
                 SELECT r.task_id, r.task_name, r.message, r.labels::jsonb, r.queue, r.priority, r.max_attempts, r.attempts
                 FROM r WHERE NOT EXISTS (SELECT 1 FROM {t} AS e WHERE e.id = r.id)
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM back) + (SELECT count(*) FROM ins),
                    (SELECT count(pg_notify($2, q.queue)) FROM (SELECT DISTINCT queue FROM r) AS q)
             """;

        // $1 ids, $2 claim numbers, $3 worker: back to pending without using up an attempt
        Release =
            $"""
             UPDATE {t} AS m
             SET {HandBackAssignments}
             FROM unnest($1::bigint[], $2::integer[]) AS a(id, claim)
             WHERE {LeaseHeld("a", "$3")}
             RETURNING m.id
             """;

        // The renewal thread's two statements never wait for a row lock: they lock what is free (SKIP LOCKED) and report
        // the rows another transaction holds as busy (renewed next round; PostgreSQL does not say who holds them). A
        // renewal that waited deadlocked now and then with the worker's own settle over the same rows, whose join order
        // the planner picks (a hash join over a sequential scan on a small table), and PostgreSQL takes deadlock_timeout
        // (1 s) to see one (LeaseOwnershipTests.Settles_and_renewals_over_the_same_rows_never_deadlock: 9 in 15 s).
        // Rows: (id, claim, cancel requested, busy). The set tests are NOT IN over a subquery (ids are never null), which
        // PostgreSQL runs as one hashed subplan: as NOT EXISTS the planner joined the CTE in a nested loop, once per
        // claim (72 ms for 1,000 claims; LeasePlanTests).

        // $1 worker, $2 lease, $3 the worker's queues, $4 ids and $5 claim numbers of the claims the worker gave up (left to their leases)
        RenewAllOfWorker =
            $"""
             WITH mine AS MATERIALIZED (
                 SELECT m.id, m.claims FROM {t} AS m
                 WHERE m.status = 'processing' AND m.locked_by = $1 AND m.queue = ANY($3)
                   AND (m.id, m.claims) NOT IN (SELECT g.id, g.claim FROM unnest($4::bigint[], $5::integer[]) AS g(id, claim))
             ), free AS MATERIALIZED (
                 SELECT mine.id, mine.claims FROM mine JOIN {t} AS m ON m.id = mine.id FOR UPDATE OF m SKIP LOCKED
             ), renewed AS (
                 UPDATE {t} AS m SET locked_until = now() + $2
                 FROM free
                 WHERE {LeaseHeld("free", "$1", "claims")}
                 RETURNING m.id, m.claims, m.cancel_requested_at IS NOT NULL AS cancel
             )
             SELECT id, claims, cancel, false FROM renewed
             UNION ALL SELECT mine.id, mine.claims, false, true FROM mine WHERE mine.id NOT IN (SELECT id FROM free)
             """;

        // $1 ids, $2 claim numbers, $3 worker, $4 lease, $5 whether each claim has started (recorded for the rescue)
        RenewHeld =
            $"""
             WITH a AS MATERIALIZED (
                 SELECT * FROM unnest($1::bigint[], $2::integer[], $5::boolean[]) AS a(id, claim, started)
             ), free AS MATERIALIZED (
                 SELECT a.id, a.claim, a.started FROM a JOIN {t} AS m ON m.id = a.id FOR UPDATE OF m SKIP LOCKED
             ), renewed AS (
                 UPDATE {t} AS m
                 SET locked_until = now() + $4, started = m.started OR free.started
                 FROM free
                 WHERE {LeaseHeld("free", "$3")}
                 RETURNING m.id, m.claims, m.cancel_requested_at IS NOT NULL AS cancel
             )
             SELECT id, claims, cancel, false FROM renewed
             UNION ALL SELECT a.id, a.claim, false, true FROM a
             WHERE a.id NOT IN (SELECT id FROM free) AND EXISTS (SELECT 1 FROM {t} AS m WHERE m.id = a.id)
             """;

        // $1 worker, $2 ids the worker holds, $3 the worker's queues
        ReleaseOrphans =
            $"""
             UPDATE {t} AS m
             SET {HandBackAssignments}
             WHERE m.status = 'processing' AND m.locked_by = $1 AND m.queue = ANY($3) AND NOT (m.id = ANY($2))
             RETURNING m.id
             """;

        // $1 ids, $2 claim numbers, $3 worker, $4 lease, $5 whether each claim has started (recorded for the rescue)
        Renew =
            $"""
             UPDATE {t} AS m
             SET locked_until = now() + $4, started = m.started OR a.started
             FROM unnest($1::bigint[], $2::integer[], $5::boolean[]) AS a(id, claim, started)
             WHERE {LeaseHeld("a", "$3")}
             RETURNING m.id, m.claims, m.cancel_requested_at IS NOT NULL
             """;

        // $1 batch size, $2 how many times at least a claim that was never seen to start gets its attempt back (a task
        // whose worker dies before its first renewal, every time, still ends: then its attempts count), $3 whether rows of
        // workers silent for longer than their own registered bound (stale_after) are rescued before their leases expire.
        // Each worker's bound is its own: a rescuer never judges another worker by its settings. The running rows are as
        // many as the workers' slots: reading them all on the lease index stays cheap.
        Rescue =
            $"""
             WITH expired AS (
                 SELECT id, NOT started AND unstarted_rescues < greatest(max_attempts, $2) AS refund FROM {t}
                 WHERE status = 'processing'
                   AND (locked_until < now()
                        OR ($3 AND locked_by IN (SELECT w.id FROM {workers} AS w WHERE w.heartbeat_at < now() - w.stale_after)))
                 ORDER BY locked_until
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE {t} AS m
             SET status = CASE WHEN m.cancel_requested_at IS NOT NULL THEN 'cancelled'
                               WHEN e.refund OR m.attempts < m.max_attempts THEN 'pending' ELSE 'discarded' END,
                 finished_at = CASE WHEN m.cancel_requested_at IS NULL AND (e.refund OR m.attempts < m.max_attempts) THEN NULL ELSE now() END,
                 attempts = m.attempts - CASE WHEN e.refund THEN 1 ELSE 0 END,
                 unstarted_rescues = m.unstarted_rescues + CASE WHEN e.refund THEN 1 ELSE 0 END,
                 last_error = CASE WHEN m.locked_until < now() THEN 'lease expired: worker ' || coalesce(m.locked_by, '?') || ' stopped renewing attempt ' || m.attempts
                                   ELSE 'worker ' || coalesce(m.locked_by, '?') || ' stopped heartbeating during attempt ' || m.attempts END
                              || CASE WHEN e.refund THEN ' before it was seen to start (attempt not counted)' ELSE '' END,
                 history = {HistoryAppend("'lost'", "CASE WHEN m.locked_until < now() THEN 'lease expired' ELSE 'worker stopped heartbeating' END")},
                 locked_by = NULL, locked_until = NULL, run_at = now()
             FROM expired AS e
             WHERE m.id = e.id
             RETURNING m.task_id, m.task_name, m.status
             """;

        // $1 task_id: the newest row of that task id (a task id kicked twice has two rows).
        State = $"SELECT {RecordColumns} FROM {t} WHERE task_id = $1 ORDER BY id DESC LIMIT 1";

        // $1 queue, $2 most rows counted per state (null: all). Every count reads one partial index, only rows of its own
        // queue and state: available on the claim index, scheduled and retryable on the due index, running on the lease
        // index, finished states on the finished index. Literal states, so a generic plan still proves the predicates.
        Counts = string.Join("\nUNION ALL ", TaskStates.All.Select(state =>
            $"SELECT '{TaskStates.ToStored(state)}', count(*) FROM (SELECT 1 FROM {t} WHERE status = '{TaskStates.ToStored(state)}' AND queue = $1 LIMIT $2) AS c"));

        // $1 queue, $2 state: the planner's row estimate (no rows read), for counts past the bound.
        EstimateCount = $"EXPLAIN (FORMAT JSON) SELECT 1 FROM {t} WHERE status = $2 AND queue = $1";

        // $1 queue, $2 limit (per state), $3 channel: scheduled and retryable rows that are due become available; the queue's
        // other workers are woken. Reads only due rows of the due index, so a million future rows cost nothing. One select
        // per state, each with its own literal: `status IN (both)` is implied by the index predicate, and the planner may
        // drop it from the index condition, which then scans every future row of the queue. ORDER BY run_at (the index's
        // order after queue and state): without it, misjudging how many rows are due, the planner chose a sequential scan
        // of the whole table for a LIMIT. (Both plans are in docs/ARCHITECTURE.md, "Measured".)
        // With NotifyTaskIds each promoted row's id is notified instead of the queue: a Python worker claims only ids it
        // is told of (and logs an error for a payload that is not one); an id wakes every TaskiqPg worker.
        Promote =
            $"""
             WITH scheduled AS (
                 SELECT id FROM {t} WHERE queue = $1 AND status = 'scheduled' AND run_at <= now() ORDER BY run_at LIMIT $2 FOR UPDATE SKIP LOCKED
             ), retryable AS (
                 SELECT id FROM {t} WHERE queue = $1 AND status = 'retryable' AND run_at <= now() ORDER BY run_at LIMIT $2 FOR UPDATE SKIP LOCKED
             ), promoted AS (
                 UPDATE {t} AS m SET status = 'pending'
                 WHERE m.id IN (SELECT id FROM scheduled UNION ALL SELECT id FROM retryable)
                 RETURNING m.queue{(options.NotifyTaskIds ? ", pg_notify($3, m.id::text)" : "")}
             )
             SELECT q.queue, q.n, {(options.NotifyTaskIds ? "NULL::void" : "pg_notify($3, q.queue)")} FROM (SELECT queue, count(*) AS n FROM promoted GROUP BY queue) AS q
             """;

        // $1 queues: how long until the next scheduled or retryable row of these queues is due (null: none), on the
        // database clock. One index probe per queue and state.
        NextDue =
            $"""
             SELECT min(least(
                 (SELECT run_at FROM {t} WHERE queue = q.name AND status = 'scheduled' ORDER BY run_at LIMIT 1),
                 (SELECT run_at FROM {t} WHERE queue = q.name AND status = 'retryable' ORDER BY run_at LIMIT 1))) - now()
             FROM unnest($1::text[]) AS q(name)
             """;

        // $1 the queue: NextDue for a worker of one queue (most). Without the array PostgreSQL settles on the prepared
        // statement's generic plan; over unnest it planned every call again (a custom plan looked cheaper): 0.2 ms a call.
        NextDueOfQueue =
            $"""
             SELECT least(
                 (SELECT run_at FROM {t} WHERE queue = $1 AND status = 'scheduled' ORDER BY run_at LIMIT 1),
                 (SELECT run_at FROM {t} WHERE queue = $1 AND status = 'retryable' ORDER BY run_at LIMIT 1)) - now()
             """;

        // $1 task id, $2 reason, $3 channel: cancels the newest row of a task id. Queued → cancelled at once; running → a
        // cancel request the worker running it sees on this NOTIFY or, failing that, its next renewal. Returns the state
        // it was in (none: no row) and the task id of a cancelled row.
        Cancel =
            $"""
             WITH target AS (
                 SELECT id, status FROM {t} WHERE task_id = $1 ORDER BY id DESC LIMIT 1 FOR UPDATE
             ), queued AS (
                 UPDATE {t} AS m SET status = 'cancelled', finished_at = now(), last_error = $2
                 FROM target WHERE m.id = target.id AND target.status IN ('pending', 'scheduled', 'retryable')
                 RETURNING m.id
             ), running AS (
                 UPDATE {t} AS m SET cancel_requested_at = coalesce(m.cancel_requested_at, now())
                 FROM target WHERE m.id = target.id AND target.status = 'processing'
                 RETURNING m.id
             )
             SELECT target.status, CASE WHEN EXISTS (SELECT 1 FROM running) THEN pg_notify($3, '{CancelPayloadPrefix}' || target.id) END
             FROM target
             """;

        // Per queued state (a literal each, so the planner proves its partial index): $1 queue, $2 task name (null: any),
        // $3 reason, $4 limit. Returns the cancelled rows' task ids.
        CancelQueued = new[] { TaskStates.Available, TaskStates.Scheduled, TaskStates.Retryable }.ToDictionary(state => state, state =>
            $"""
             WITH batch AS (
                 SELECT id FROM {t} WHERE queue = $1 AND status = '{state}' AND ($2::text IS NULL OR task_name = $2)
                 ORDER BY {(state == TaskStates.Available ? "priority DESC, run_at, id" : "run_at, id")} LIMIT $4 FOR UPDATE SKIP LOCKED
             )
             UPDATE {t} AS m SET status = 'cancelled', finished_at = now(), last_error = $3
             FROM batch WHERE m.id = batch.id
             RETURNING m.task_id
             """);

        // $1 queue, $2 task name (null: any), $3 channel: cancel requests for every running task of the queue, one NOTIFY
        // for all (each worker renews at once and sees its own).
        CancelRunning =
            $"""
             WITH requested AS (
                 UPDATE {t} AS m SET cancel_requested_at = now()
                 WHERE m.status = 'processing' AND m.queue = $1 AND ($2::text IS NULL OR m.task_name = $2) AND m.cancel_requested_at IS NULL
                 RETURNING m.id
             )
             SELECT count(*), CASE WHEN count(*) > 0 THEN pg_notify($3, '{CancelPayloadPrefix}*') END FROM requested
             """;

        // $1 queue, $2 paused (true: pause, false: resume), $3 channel. Resuming wakes the queue's workers.
        SetPaused =
            $"""
             WITH up AS (
                 INSERT INTO {queues} AS q (name, paused_at, updated_at) VALUES ($1, CASE WHEN $2 THEN now() END, now())
                 ON CONFLICT (name) DO UPDATE
                     SET paused_at = CASE WHEN $2 THEN coalesce(q.paused_at, now()) END, updated_at = now()
                 RETURNING q.paused_at
             )
             SELECT paused_at, CASE WHEN NOT $2 THEN pg_notify($3, $1) END FROM up
             """;

        // $1 queue
        Paused = $"SELECT paused_at FROM {queues} WHERE name = $1";

        // $1 limit. Queue names without scanning the table: a skip scan (one index probe per queue) over each partial
        // index that leads with the queue (available, scheduled/retryable, finished), plus the queues table (paused once)
        // and the workers' queues (running tasks).
        static string SkipScan(string t, string predicate) =>
            $"""
             (WITH RECURSIVE q(queue) AS (
                 (SELECT m.queue FROM {t} AS m WHERE {predicate} ORDER BY m.queue LIMIT 1)
                 UNION ALL
                 SELECT (SELECT m.queue FROM {t} AS m WHERE {predicate} AND m.queue > q.queue ORDER BY m.queue LIMIT 1)
                 FROM q WHERE q.queue IS NOT NULL
             ) SELECT queue FROM q WHERE queue IS NOT NULL)
             """;
        ListQueues =
            $"""
             SELECT queue FROM (
                 {SkipScan(t, "m.status = 'pending'")}
                 UNION {SkipScan(t, "m.status IN ('scheduled', 'retryable')")}
                 UNION {SkipScan(t, "m.status IN ('completed', 'cancelled', 'discarded')")}
                 UNION SELECT name FROM {queues}
                 UNION SELECT unnest(queues) FROM {workers}
             ) AS all_queues ORDER BY queue LIMIT $1
             """;

        // $1 task id, $2 channel: the newest row of a task id, if scheduled or retryable, available now (no attempt used).
        RunNow =
            $"""
             WITH now_due AS (
                 UPDATE {t} AS m SET status = 'pending', run_at = now()
                 WHERE m.id = (SELECT id FROM {t} WHERE task_id = $1 ORDER BY id DESC LIMIT 1) AND m.status IN ('scheduled', 'retryable')
                 RETURNING m.queue
             )
             SELECT (SELECT count(*) FROM now_due), (SELECT pg_notify($2, queue) FROM now_due LIMIT 1)
             """;

        // $1 task id: the newest row of a task id, if finished (completed, cancelled or discarded), deleted.
        DeleteFinished =
            $"""
             DELETE FROM {t} WHERE id = (SELECT id FROM {t} WHERE task_id = $1 ORDER BY id DESC LIMIT 1)
               AND status IN ('completed', 'cancelled', 'discarded')
             """;

        // $1 task id, $2 reset attempts, $3 channel: the newest row of a task id, if discarded, back to available.
        RetryOne =
            $"""
             WITH back AS (
                 UPDATE {t} AS m
                 SET status = 'pending', run_at = now(), finished_at = NULL, cancel_requested_at = NULL, locked_by = NULL,
                     attempts = CASE WHEN $2 THEN 0 ELSE m.attempts END,
                     max_attempts = CASE WHEN $2 THEN m.max_attempts ELSE m.max_attempts + 1 END,
                     unstarted_rescues = 0
                 WHERE m.id = (SELECT id FROM {t} WHERE task_id = $1 ORDER BY id DESC LIMIT 1) AND m.status = 'discarded'
                   AND NOT {UniqueTakenByAnother(t, "m")}
                 RETURNING m.queue
             )
             SELECT (SELECT count(*) FROM back), (SELECT pg_notify($3, queue) FROM back LIMIT 1)
             """;

        // $1 queue, $2 task name (null: any), $3 reset attempts, $4 limit: a batch of discarded rows back to available.
        RetryDiscarded =
            $"""
             WITH batch AS (
                 SELECT id FROM {t} WHERE queue = $1 AND status = 'discarded' AND ($2::text IS NULL OR task_name = $2)
                 ORDER BY finished_at LIMIT $4 FOR UPDATE SKIP LOCKED
             )
             UPDATE {t} AS m
             SET status = 'pending', run_at = now(), finished_at = NULL, cancel_requested_at = NULL, locked_by = NULL,
                 attempts = CASE WHEN $3 THEN 0 ELSE m.attempts END,
                 max_attempts = CASE WHEN $3 THEN m.max_attempts ELSE m.max_attempts + 1 END,
                 unstarted_rescues = 0
             FROM batch WHERE m.id = batch.id AND NOT {UniqueTakenByAnother(t, "m")}
             RETURNING m.id
             """;

        // $1 queue, $2 task name (null: any), $3 limit: a batch of discarded rows deleted.
        DeleteDiscarded =
            $"""
             DELETE FROM {t} WHERE id IN (
                 SELECT id FROM {t} WHERE queue = $1 AND status = 'discarded' AND ($2::text IS NULL OR task_name = $2)
                 ORDER BY finished_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING id
             """;

        // $1 queue, $2 most rows counted per state: tasks that ended in the last minute, per finished state, each a bounded
        // range scan of the finished index (queue, status, finished_at, id).
        FinishedLastMinute = string.Join("\nUNION ALL ", new[] { TaskStates.Completed, TaskStates.Cancelled, TaskStates.Discarded }.Select(state =>
            $"SELECT '{state}', count(*) FROM (SELECT 1 FROM {t} WHERE queue = $1 AND status = '{state}' AND finished_at > now() - interval '1 minute' LIMIT $2) AS c"));

        // $1 queue: how long the oldest available task has been due (null: none). Available rows are in the claim index by
        // priority first, so the oldest is found per priority: a skip scan over the priorities present (a recursive
        // CTE), then one probe each: as many index probes as there are distinct priorities, whatever the backlog.
        OldestAvailable =
            $"""
             WITH RECURSIVE p AS (
                 (SELECT priority FROM {t} WHERE queue = $1 AND status = 'pending' ORDER BY priority DESC LIMIT 1)
                 UNION ALL
                 SELECT (SELECT priority FROM {t} WHERE queue = $1 AND status = 'pending' AND priority < p.priority ORDER BY priority DESC LIMIT 1)
                 FROM p WHERE p.priority IS NOT NULL
             )
             SELECT now() - min((SELECT run_at FROM {t} WHERE queue = $1 AND status = 'pending' AND priority = p.priority ORDER BY run_at LIMIT 1))
             FROM p WHERE p.priority IS NOT NULL
             """;

        // $1 id, $2 host, $3 pid, $4 queues, $5 tasks in flight, $6 capacity, $7 its stale bound (null: never taken for
        // dead by its heartbeat): registers or heartbeats a worker.
        Heartbeat =
            $"""
             INSERT INTO {workers} AS w (id, host, pid, queues, in_flight, capacity, stale_after) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE
                 SET heartbeat_at = now(), in_flight = EXCLUDED.in_flight, capacity = EXCLUDED.capacity, queues = EXCLUDED.queues,
                     stale_after = EXCLUDED.stale_after
             """;

        // $1 id
        Deregister = $"DELETE FROM {workers} WHERE id = $1";

        Workers = $"SELECT id, host, pid, queues, started_at, heartbeat_at, in_flight, capacity, coalesce(heartbeat_at < now() - stale_after, false) FROM {workers} ORDER BY started_at, id";

        // $1 age for workers without a bound: registry rows of workers silent for ten times their bound are deleted
        // (their rows were rescued long before).
        ForgetWorkers = $"DELETE FROM {workers} WHERE heartbeat_at < now() - coalesce(stale_after * 10, $1)";

        // $1 queue, $2..$4 retention of completed, cancelled, discarded rows (null: kept), $5 most rows per state. Oldest
        // first, on the finished index; SKIP LOCKED so workers pruning at once never wait for each other.
        Prune =
            $"""
             WITH c AS ({PruneState(t, TaskStates.Completed, "$2")}),
                  x AS ({PruneState(t, TaskStates.Cancelled, "$3")}),
                  d AS ({PruneState(t, TaskStates.Discarded, "$4")})
             SELECT (SELECT count(*) FROM c) + (SELECT count(*) FROM x) + (SELECT count(*) FROM d)
             """;
    }

    /// <summary>Handing a claim back unrun: available again without using an attempt, or cancelled when that was requested.</summary>
    private const string HandBackAssignments =
        """
        status = CASE WHEN m.cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE 'pending' END,
                 finished_at = CASE WHEN m.cancel_requested_at IS NOT NULL THEN now() END,
                 attempts = m.attempts - 1, locked_by = NULL, locked_until = NULL
        """;

    /// <summary>The predicate of the unique index: rows with a key whose state is in their own mask.</summary>
    internal static readonly string UniquePredicate = $"unique_key IS NOT NULL AND (unique_states & {UniqueOptions.StateBitSql("status")}) <> 0";

    /// <summary>SQL: the stored key, with the period the transaction's now() falls in when a period is given.</summary>
    private static string KeyWithPeriod(string key, string periodSeconds)
        => $"CASE WHEN {periodSeconds}::float8 IS NULL THEN {key} ELSE {key} || ':' || floor(extract(epoch FROM now()) / {periodSeconds}::float8)::bigint END";

    /// <summary>
    /// SQL: another row holds row <paramref name="m"/>'s unique key. A finished row that comes back (a retried dead
    /// letter, a handed-back WhenReceived claim) is skipped then, instead of failing the statement on the unique index.
    /// </summary>
    private static string UniqueTakenByAnother(string table, string m)
        => $"({m}.unique_key IS NOT NULL AND EXISTS (SELECT 1 FROM {table} AS o WHERE o.unique_key = {m}.unique_key AND o.id <> {m}.id " +
           $"AND (o.unique_states & {UniqueOptions.StateBitSql("o.status")}) <> 0))";

    /// <summary>The payload prefix of a cancel request on the broker's channel (a queue name can never contain ':').</summary>
    internal const string CancelPayloadPrefix = "cancel:";

    /// <summary>The columns <see cref="PostgresBroker"/> reads into a <see cref="TaskRecord"/>, in this order.</summary>
    internal const string RecordColumns =
        "id, task_id, task_name, queue, status, priority, attempts, max_attempts, run_at, created_at, finished_at, last_error, locked_by, message, labels::text, history::text";

    /// <summary>Entries kept in a task's history (a task snoozing for ever must not grow its row for ever).</summary>
    internal const int HistoryLimit = 50;

    /// <summary>
    /// SQL: row <c>m</c>'s history with an entry for the attempt ending now (the SET list sees the row's old values:
    /// its worker, attempt and start). The oldest entry goes once <see cref="HistoryLimit"/> are kept; errors are cut at 1,000 characters.
    /// </summary>
    internal static string HistoryAppend(string outcome, string error)
        => $"(CASE WHEN jsonb_array_length(m.history) >= {HistoryLimit} THEN m.history - 0 ELSE m.history END) || jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(" +
           $"'attempt', m.attempts, 'worker', m.locked_by, 'started', m.attempted_at, 'ended', now(), 'outcome', {outcome}, 'error', left({error}, 1000))))";

    private static string PruneState(string table, string state, string retention)
        => $"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE queue = $1 AND status = '{state}' AND finished_at < now() - {retention} " +
           "ORDER BY finished_at LIMIT $5 FOR UPDATE SKIP LOCKED) RETURNING 1";

    /// <summary>
    /// Completes claims <c>a(id, claim)</c> whose lease is still <paramref name="worker"/>'s: marks them completed (kept
    /// for the retention) or deletes them. Returns <c>(id, claims)</c>. Shared by the broker's ack and the settle statement.
    /// </summary>
    internal static string CompleteStatement(string table, bool keep, string claims, string worker)
        => keep
            ? $"""
               UPDATE {table} AS m
               SET status = 'completed', finished_at = now(), locked_until = NULL, history = {HistoryAppend("'completed'", "NULL")}
               FROM {claims}
               WHERE {LeaseHeld("a", worker)}
               RETURNING m.id, m.claims
               """
            : $"""
               DELETE FROM {table} AS m
               USING {claims}
               WHERE {LeaseHeld("a", worker)}
               RETURNING m.id, m.claims
               """;

    /// <summary>
    /// Claim <c>a.(id, claim)</c> was acked by <paramref name="worker"/> in an earlier attempt: its row completed by that
    /// worker under the same claim number, or (<paramref name="keep"/> false: rows deleted at the ack) gone. For the
    /// retry of an ack whose reply was lost.
    /// </summary>
    internal static string AckRecordedBy(string table, bool keep, string worker)
        => keep
            ? $"EXISTS (SELECT 1 FROM {table} AS m WHERE m.id = a.id AND m.claims = a.claim AND m.locked_by = {worker} AND m.status = 'completed')"
            : $"NOT EXISTS (SELECT 1 FROM {table} AS m WHERE m.id = a.id)";

    /// <summary>
    /// Row <c>m</c> holds a failure that <paramref name="worker"/> recorded for claim <c>f.(id, claim)</c>: same claim
    /// number, no lease, and its last history entry that worker's failed, cancelled or snoozed attempt (a rescue of the
    /// claim writes <c>lost</c> there). For the retry of a failure whose reply was lost.
    /// </summary>
    internal static string FailureRecordedBy(string worker)
        => $"m.claims = f.claim AND m.locked_by IS NULL AND m.status <> 'processing' AND m.history -> -1 ->> 'worker' = {worker} " +
           "AND m.history -> -1 ->> 'outcome' IN ('failed', 'cancelled', 'snoozed')";

    /// <summary>
    /// The lease predicate every statement that settles, renews or gives back a claim shares: row <c>m</c> is still
    /// the claim <paramref name="claims"/><c>.(id, claim)</c> of <paramref name="worker"/> and still running. The claim
    /// number (not the attempt) identifies a lease: a row rescued and claimed again is another claim, so a late ack of
    /// the first never settles the second.
    /// </summary>
    /// <remarks>
    /// The state test is wrapped in a <c>CASE</c> on purpose: written plainly it matches the lease index's predicate,
    /// and with statistics taken while every row was pending (right after a bulk kick) the planner drove the join from
    /// that index, believing it held one row, and read the whole claim list once per running row — 0.2 s per settle and
    /// up to 0.8 s per renewal at 1,000 claims (<c>LeasePlanTests</c>). Wrapped, the join can only start from the claims
    /// and find each row by its primary key.
    /// </remarks>
    internal static string LeaseHeld(string claims, string worker, string claim = "claim")
        => $"m.id = {claims}.id AND m.claims = {claims}.{claim} AND m.locked_by = {worker} AND CASE WHEN m.status = 'processing' THEN true ELSE false END";

    /// <summary>
    /// The SET list of a failed attempt over rows <c>m</c> and failures <c>f(retry, error)</c>: retry after an exponential
    /// backoff with jitter while attempts remain (retryable), else discarded; cancelled when a cancel was requested. Shared by <see cref="Fail"/> and the worker's settle statement.
    /// </summary>
    internal static string FailAssignments(string baseDelaySeconds, string maxDelaySeconds)
        => $"""
            status = CASE WHEN m.cancel_requested_at IS NOT NULL THEN 'cancelled'
                          WHEN f.snooze IS NOT NULL THEN 'scheduled'
                          WHEN f.retry AND m.attempts < coalesce(f.max_attempts, m.max_attempts) THEN 'retryable' ELSE 'discarded' END,
                finished_at = CASE WHEN m.cancel_requested_at IS NULL
                                    AND (f.snooze IS NOT NULL OR f.retry AND m.attempts < coalesce(f.max_attempts, m.max_attempts)) THEN NULL ELSE now() END,
                run_at = CASE WHEN m.cancel_requested_at IS NOT NULL THEN m.run_at
                              WHEN f.snooze IS NOT NULL THEN now() + make_interval(secs => f.snooze)
                              WHEN f.retry AND m.attempts < coalesce(f.max_attempts, m.max_attempts)
                              THEN now() + make_interval(secs => least(coalesce(f.base_delay, {baseDelaySeconds}) * power(2, m.attempts - 1),
                                                                       coalesce(f.max_delay, {maxDelaySeconds})) * (0.5 + random() * 0.5))
                              ELSE m.run_at END,
                attempts = m.attempts - CASE WHEN m.cancel_requested_at IS NULL AND f.snooze IS NOT NULL THEN 1 ELSE 0 END,
                max_attempts = coalesce(f.max_attempts, m.max_attempts),
                last_error = CASE WHEN f.snooze IS NOT NULL AND m.cancel_requested_at IS NULL THEN m.last_error ELSE f.error END,
                history = {HistoryAppend("CASE WHEN m.cancel_requested_at IS NOT NULL THEN 'cancelled' WHEN f.snooze IS NOT NULL THEN 'snoozed' ELSE 'failed' END",
                    "CASE WHEN f.snooze IS NULL THEN f.error END")},
                locked_by = NULL, locked_until = NULL
            """;

    /// <summary>The failures' <c>unnest</c>: ids, claim numbers, errors, retry flags, then snooze seconds, max attempts, base and
    /// max delays (each nullable per row) at <paramref name="first"/>, <paramref name="first"/>+1, …</summary>
    internal static string FailuresUnnest(int ids, int claims, int errors, int retry, int first)
        => $"unnest(${ids}::bigint[], ${claims}::integer[], ${errors}::text[], ${retry}::boolean[], ${first}::float8[], ${first + 1}::integer[], " +
           $"${first + 2}::float8[], ${first + 3}::float8[]) AS f(id, claim, error, retry, snooze, max_attempts, base_delay, max_delay)";



    /// <summary>The messages table's schema history (<see cref="BrokerMigrations"/>).</summary>
    public IReadOnlyList<MigrationStep> Migrations { get; }

    /// <summary>Insert only: the wake-up NOTIFY follows as a transaction of its own, in the same round trip or from the coalescing notifier.</summary>
    public string Kick { get; }

    /// <summary>$1 row id: whether the row is there (a kick whose reply carried an error after its row: committed or not).</summary>
    public string RowExists { get; }

    /// <summary>Insert + NOTIFY in the caller's transaction (delivered on commit, dropped on rollback).</summary>
    public string KickAndNotify { get; }

    public string KickUnique { get; }

    public string KickUniqueAndNotify { get; }

    public string FindUnique { get; }

    public string KickManyUnique { get; }

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

    public string FinishedLastMinute { get; }

    public string AckOnReceipt { get; }

    public string Fail { get; }

    public string Release { get; }

    public string Requeue { get; }

    public string Renew { get; }

    public string ReleaseOrphans { get; }

    public string RenewAllOfWorker { get; }

    public string FailRepeatable { get; }

    public string NextDueOfQueue { get; }

    /// <summary>The renewal thread's renewal of the claims it holds: never waits for a row lock (busy rows reported).</summary>
    public string RenewHeld { get; }

    public string Rescue { get; }

    public string State { get; }

    public string Counts { get; }

    public string EstimateCount { get; }

    public string Promote { get; }

    public string NextDue { get; }

    public string Prune { get; }

    public string Cancel { get; }

    public string Heartbeat { get; }

    public string OldestAvailable { get; }

    public string Deregister { get; }

    public string Workers { get; }

    public string ForgetWorkers { get; }

    public IReadOnlyDictionary<string, string> CancelQueued { get; }

    public string CancelRunning { get; }

    public string SetPaused { get; }

    public string Paused { get; }

    public string KickAndNotifyId { get; }

    public string KickUniqueAndNotifyId { get; }

    public string NotifyIds { get; }

    public string ListQueues { get; }

    public string RetryOne { get; }

    public string RunNow { get; }

    public string DeleteFinished { get; }

    public string RetryDiscarded { get; }

    public string DeleteDiscarded { get; }
}
