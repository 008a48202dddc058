using System.Text.Json;
using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>
/// The statements that renew or settle a worker's claims are driven by the claims they are given. Statistics taken
/// right after a bulk kick say no row is running; a plan built on them once read the running rows through the lease
/// index and, for each, the whole list of claims again (quadratic: 0.2 s per settle and up to 0.8 s per renewal at
/// 1,000 claims, the burn-down 3.5× slower after an ANALYZE).
/// </summary>
public sealed class LeasePlanTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private const int Claims = 1_000;

    [Fact]
    public async Task Renewal_and_settle_read_each_claim_once_when_statistics_say_nothing_runs()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        await harness.Broker.KickManyAsync(Enumerable.Range(0, 5 * Claims).Select(_ => TaskMessage.Create("t")).ToArray());
        await harness.ScalarAsync<object>("ANALYZE taskiq_messages"); // every row pending: "processing" looks empty
        var ids = new List<long>();
        var claims = new List<int>();
        var taskIds = new List<string>();
        await using (var claim = harness.DataSource.CreateCommand(
                         """
                         UPDATE taskiq_messages SET status = 'processing', locked_by = 'plan-test', claims = claims + 1, attempts = attempts + 1,
                                locked_until = now() + interval '1 minute', attempted_at = now()
                         WHERE id IN (SELECT id FROM taskiq_messages WHERE queue = $1 AND status = 'pending' ORDER BY id LIMIT $2)
                         RETURNING id, claims, task_id
                         """))
        {
            claim.Parameters.Add(new NpgsqlParameter<string> { TypedValue = harness.Broker.Options.Queue });
            claim.Parameters.Add(new NpgsqlParameter<int> { TypedValue = Claims });
            await using var reader = await claim.ExecuteReaderAsync();
            while (await reader.ReadAsync())
            {
                ids.Add(reader.GetInt64(0));
                claims.Add(reader.GetInt32(1));
                taskIds.Add(reader.GetString(2));
            }
        }

        var broker = new BrokerSql(harness.Broker.Options);
        var renew = await GenericPlanAsync(harness.DataSource, broker.Renew,
            "bigint[], integer[], text, interval, boolean[]",
            ids.ToArray(), claims.ToArray(), "plan-test", TimeSpan.FromMinutes(1), new bool[ids.Count]);
        AssertEachClaimReadOnce(renew, "renewal");
        var renewHeld = await GenericPlanAsync(harness.DataSource, broker.RenewHeld,
            "bigint[], integer[], text, interval, boolean[]",
            ids.ToArray(), claims.ToArray(), "plan-test", TimeSpan.FromMinutes(1), new bool[ids.Count]);
        AssertEachClaimReadOnce(renewHeld, "renewal thread's renewal");
        var renewAll = await GenericPlanAsync(harness.DataSource, broker.RenewAllOfWorker,
            "text, interval, text[], bigint[], integer[]",
            "plan-test", TimeSpan.FromMinutes(1), new[] { harness.Broker.Options.Queue }, new[] { -1L }, new[] { 0 });
        AssertEachClaimReadOnce(renewAll, "renewal of every row of the worker (while a claim is in flight)");

        var settleSql = new SettleSql(harness.Broker.Options, new PostgresResultBackendOptions());
        foreach (var settle in new[] { settleSql.Settle, settleSql.SettleAcks, settleSql.SettleRetry })
        {
        var plan = await GenericPlanAsync(harness.DataSource, settle,
            "bigint[], integer[], bigint[], integer[], text[], boolean[], text, float8, float8, bigint[], integer[], text[], text[], text[], interval, text, float8[], integer[], float8[], float8[]",
            ids.ToArray(), claims.ToArray(), Array.Empty<long>(), Array.Empty<int>(), Array.Empty<string>(), Array.Empty<bool>(), "plan-test", 1.0, 60.0,
            ids.ToArray(), claims.ToArray(), taskIds.ToArray(), taskIds.Select(_ => "null").ToArray(), taskIds.Select(_ => (string?)null).ToArray(),
            TimeSpan.FromDays(1), "plan_test", Array.Empty<double>(), Array.Empty<int>(), Array.Empty<double>(), Array.Empty<double>());
        AssertEachClaimReadOnce(plan, "settle");
        }
    }

    /// <summary>Every scan of a function (the claims' <c>unnest</c>) or of a CTE over them ran at most once (a branch its parameters switch off: never), and the statement touched every claim.</summary>
    private static void AssertEachClaimReadOnce(JsonElement plan, string statement)
    {
        var functionScans = Nodes(plan).Where(n => n.GetProperty("Node Type").GetString() is "Function Scan" or "CTE Scan").ToList();
        Assert.NotEmpty(functionScans);
        foreach (var scan in functionScans)
        {
            var loops = scan.GetProperty("Actual Loops").GetInt64();
            Assert.True(loops <= 1, $"the {statement} read the claims {loops} times: {plan}");
        }

        var updated = Nodes(plan).Where(n => n.GetProperty("Node Type").GetString() == "ModifyTable" && n.GetProperty("Operation").GetString() == "Update")
            .Sum(n => n.GetProperty("Actual Rows").GetDouble());
        Assert.True(updated >= Claims, $"the {statement} updated {updated} rows");
    }

    private static IEnumerable<JsonElement> Nodes(JsonElement node)
    {
        yield return node;
        if (node.TryGetProperty("Plans", out var children))
        {
            foreach (var child in children.EnumerateArray().SelectMany(Nodes))
            {
                yield return child;
            }
        }
    }

    /// <summary>
    /// The plan PostgreSQL keeps for a prepared statement after its first executions (the generic plan, planned without
    /// the parameters' values), run with EXPLAIN ANALYZE in a transaction that is rolled back.
    /// </summary>
    private static async Task<JsonElement> GenericPlanAsync(NpgsqlDataSource dataSource, string sql, string types, params object?[] parameters)
    {
        await using var connection = await dataSource.OpenConnectionAsync();
        var name = "plan_test_" + Guid.NewGuid().ToString("N")[..8];
        await using (var prepare = new NpgsqlCommand($"PREPARE {name}({types}) AS {sql}", connection))
        {
            await prepare.ExecuteNonQueryAsync();
        }

        try
        {
            await using var transaction = await connection.BeginTransactionAsync();
            await using (var mode = new NpgsqlCommand("SET LOCAL plan_cache_mode = force_generic_plan", connection, transaction))
            {
                await mode.ExecuteNonQueryAsync();
            }

            // EXECUTE takes no bind parameters (a utility statement): each value goes through a transaction-local setting.
            var typeList = types.Split(", ");
            for (var i = 0; i < parameters.Length; i++)
            {
                await using var set = new NpgsqlCommand($"SELECT set_config('plan_test.p{i + 1}', $1::text, true)", connection, transaction);
                set.Parameters.Add(new NpgsqlParameter { Value = parameters[i] ?? DBNull.Value });
                await set.ExecuteNonQueryAsync();
            }

            var arguments = string.Join(", ", typeList.Select((type, i) => $"current_setting('plan_test.p{i + 1}')::{type}"));
            await using var explain = new NpgsqlCommand($"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}({arguments})", connection, transaction);
            var json = (string)(await explain.ExecuteScalarAsync())!;
            await transaction.RollbackAsync();
            return JsonDocument.Parse(json).RootElement[0].GetProperty("Plan").Clone();
        }
        finally
        {
            await using var deallocate = new NpgsqlCommand($"DEALLOCATE {name}", connection);
            await deallocate.ExecuteNonQueryAsync();
        }
    }
}
