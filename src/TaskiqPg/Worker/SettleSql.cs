namespace TaskiqPg;

/// <summary>
/// The worker's completion statement when broker and result backend share one database: acks, failures and results of
/// many tasks in one statement. A result is stored only for a claim whose ack or failure matched its lease, so a worker
/// that lost its lease (a zombie) can never overwrite the result of the task's rerun.
/// </summary>
internal sealed class SettleSql
{
    // A NOTIFY payload must stay under 8000 bytes: stored task ids are announced in chunks of about this many bytes.
    private const int NotifyChunkBytes = 7000;

    public SettleSql(PostgresBrokerOptions broker, PostgresResultBackendOptions results)
    {
        var t = PgIdentifier.QualifiedName(broker.Schema, nameof(broker.Schema), broker.MessagesTable, nameof(broker.MessagesTable));
        var r = PgIdentifier.QualifiedName(results.Schema, nameof(results.Schema), results.ResultsTable, nameof(results.ResultsTable));

        // $1/$2 ack ids and claim numbers; $3..$6 fail ids, claim numbers, errors, retry flags; $7 worker; $8 base and $9
        // max retry delay (seconds); $10..$14 results: row ids, claim numbers, task ids, result JSON, stack traces; $15
        // result ttl; $16 channel; $17..$20 per failure: snooze seconds, max attempts, base and max retry delay seconds.
        // Rows: (0, id, claim, null) acked, (1, id, claim, new status) failed, (2, notifications, 0, null).
        // The retry statement (used only after a failure) also returns what an earlier attempt committed although its
        // reply was lost (the connection died after the commit): acks (BrokerSql.AckRecordedBy) and failures
        // (BrokerSql.FailureRecordedBy) of this worker under the same claim numbers. Without it they read as claims
        // another worker had won ("completion rejected", no metric).
        Settle = Build(t, r, broker, withFailures: true, retry: false);
        SettleAcks = Build(t, r, broker, withFailures: false, retry: false);
        SettleRetry = Build(t, r, broker, withFailures: true, retry: true);
    }

    /// <summary><see cref="Settle"/> with the acks and failures an earlier attempt committed although its reply was lost:
    /// for a retry after a failure only (kept out of the others: a branch is planned on every call, used or not).</summary>
    public string SettleRetry { get; }

    /// <summary>Acks, failures and results (any batch).</summary>
    public string Settle { get; }

    /// <summary>
    /// <see cref="Settle"/> without the failures' update, for a batch of successes only (the common case; same
    /// parameters, the failures' ones unused): its planning, paid on every call (PostgreSQL keeps choosing a custom plan
    /// for a prepared statement over arrays), was the worker's largest server cost of an idle kick — 0.53 ms, against
    /// 0.22 ms to execute it (pg_stat_statements, the benchmark's idle timeline).
    /// </summary>
    public string SettleAcks { get; }

    private static string Build(string t, string r, PostgresBrokerOptions broker, bool withFailures, bool retry)
        => $"""
            WITH acked AS (
            {BrokerSql.CompleteStatement(t, broker.CompletedRetention != TimeSpan.Zero, "unnest($1::bigint[], $2::integer[]) AS a(id, claim)", "$7")}
            ){(withFailures ? $"""
            , failed AS (
                UPDATE {t} AS m
                SET {BrokerSql.FailAssignments("$8", "$9")}
                FROM {BrokerSql.FailuresUnnest(3, 4, 5, 6, 17)}
                WHERE {BrokerSql.LeaseHeld("f", "$7")}
                RETURNING m.id, m.claims, m.status
            )
            """ : "")}, stored AS (
                INSERT INTO {r} AS r (task_id, result, stack_trace, created_at, expires_at)
                SELECT s.task_id, convert_to(s.result, 'UTF8'), s.stack_trace, now(), now() + $15
                FROM unnest($10::bigint[], $11::integer[], $12::text[], $13::text[], $14::text[]) AS s(row_id, claim, task_id, result, stack_trace)
                WHERE (s.row_id, s.claim) IN (SELECT id, claims FROM acked{(withFailures ? " UNION ALL SELECT id, claims FROM failed" : "")})
                ON CONFLICT (task_id) DO UPDATE
                    SET result = EXCLUDED.result, stack_trace = EXCLUDED.stack_trace, expires_at = EXCLUDED.expires_at
                RETURNING r.task_id
            ), chunked AS (
                SELECT task_id, sum(octet_length(task_id) + 1) OVER (ORDER BY task_id) / {NotifyChunkBytes} AS chunk FROM stored
            )
            SELECT 0, id, claims, NULL::text FROM acked{(retry ? $"""

            UNION ALL SELECT 0, a.id, a.claim, NULL FROM unnest($1::bigint[], $2::integer[]) AS a(id, claim)
                      WHERE {BrokerSql.AckRecordedBy(t, broker.CompletedRetention != TimeSpan.Zero, "$7")}
            """ : "")}{(withFailures ? """

            UNION ALL SELECT 1, id, claims, status FROM failed
            """ : "")}{(withFailures && retry ? $"""

            UNION ALL SELECT 1, f.id, f.claim, m.status FROM unnest($3::bigint[], $4::integer[]) AS f(id, claim) JOIN {t} AS m ON m.id = f.id
                      WHERE {BrokerSql.FailureRecordedBy("$7")}
            """ : "")}
            UNION ALL SELECT 2, count(pg_notify($16, n.ids)), 0, NULL
                      FROM (SELECT string_agg(task_id, ',') AS ids FROM chunked GROUP BY chunk) AS n
            """;
}
