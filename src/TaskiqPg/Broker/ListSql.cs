using System.Collections.Concurrent;

namespace TaskiqPg;

/// <summary>
/// The statements of <see cref="PostgresBroker.ListTasksAsync"/>: one per state, order and first/next page, each on the
/// state's partial index in that index's order, with a keyset cursor (never an OFFSET). They run unprepared, so their
/// plans are custom: the <c>$n IS NULL OR …</c> filters fold away at planning.
/// </summary>
/// <remarks>
/// Parameters: $1 queue, $2 task name (null: any), $3 from, $4 to (null: open), $5 rows scanned at most; with a cursor
/// $6 priority, $7 time, $8 id of the last row of the previous page. Rows: id, priority, state time, whether the task
/// name matches.
/// </remarks>
internal sealed class ListSql(string table)
{
    private readonly ConcurrentDictionary<(TaskState, TaskOrder, bool), string> _statements = new();

    public string Scan(TaskState state, TaskOrder order, bool withCursor)
        => _statements.GetOrAdd((state, order, withCursor), key => Build(key.Item1, key.Item2, key.Item3));

    public string Records { get; } = $"SELECT {BrokerSql.RecordColumns} FROM {table} WHERE id = ANY($1)";

    private string Build(TaskState state, TaskOrder order, bool withCursor)
    {
        var asc = order == TaskOrder.Oldest;
        var dir = asc ? "ASC" : "DESC";
        var after = asc ? ">" : "<";
        var (time, stored) = state switch
        {
            TaskState.Running => ("created_at", TaskStates.Running),
            _ when TaskStates.IsFinished(state) => ("finished_at", TaskStates.ToStored(state)),
            _ => ("run_at", TaskStates.ToStored(state)),
        };
        var from = $"FROM {table} WHERE queue = $1 AND status = '{stored}' " +
                   $"AND ($3::timestamptz IS NULL OR {time} >= $3) AND ($4::timestamptz IS NULL OR {time} < $4)";
        var select = $"SELECT id, priority AS p, {time} AS at, ($2::text IS NULL OR task_name = $2) AS matches ";

        if (state == TaskState.Available)
        {
            // The claim index's order: priority first (highest first when oldest first), then due time and id.
            var byPriority = asc ? "p DESC, at ASC, id ASC" : "p ASC, at DESC, id DESC";
            var columns = asc ? "priority DESC, run_at ASC, id ASC" : "priority ASC, run_at DESC, id DESC";
            if (!withCursor)
            {
                return $"{select}{from} ORDER BY {columns} LIMIT $5";
            }

            // Same priority after the cursor, then the lower (or higher) priorities: two index ranges, merged in order.
            return $"""
                    SELECT * FROM (
                        ({select}{from} AND priority = $6 AND (run_at, id) {after} ($7, $8) ORDER BY run_at {dir}, id {dir} LIMIT $5)
                        UNION ALL
                        ({select}{from} AND priority {(asc ? "<" : ">")} $6 ORDER BY {columns} LIMIT $5)
                    ) AS c ORDER BY {byPriority} LIMIT $5
                    """;
        }

        if (state == TaskState.Running)
        {
            // Running rows are as many as the workers' slots: their lease index is read whole, sorted by id.
            return $"{select}{from}{(withCursor ? $" AND id {after} $8" : "")} ORDER BY id {dir} LIMIT $5";
        }

        return $"{select}{from}{(withCursor ? $" AND ({time}, id) {after} ($7, $8)" : "")} ORDER BY {time} {dir}, id {dir} LIMIT $5";
    }
}
