using System.Text;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>
/// Random hostile strings (NUL, lone surrogates, 1 MB text, RTL marks, JSON-breaking quotes) in every place user text
/// goes (issue 10). Each is refused at kick with a typed error naming the field, or runs and settles with a result or a
/// dead letter with its reason, while a stream of normal tasks keeps completing; nothing stays processing.
/// </summary>
public sealed class HostileInputPropertyTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);

    private static readonly string[] Pieces =
        ["\0", "\uD800", "\uDC00", "\u202E", "\u200F", "\"}\\", "\"]}", "'; DROP TABLE taskiq_messages; --", "é", "\U0001F600", "\uFFFF", "\r\n", "\t", "\\u0000", "{{", "%s%n"];

    [Fact]
    public async Task Hostile_strings_anywhere_are_refused_by_field_at_kick_or_run_and_settle_while_normal_tasks_flow()
    {
        var random = new Random(20261201);
        await using var harness = await QueueHarness.CreateAsync(db, r => r
            .Add("hostile", async (string mode, string value, TaskContext context) =>
            {
                switch (mode)
                {
                    case "throw":
                        throw new InvalidOperationException(value);
                    case "progress":
                        await context.SetProgressAsync(value);
                        return "ok";
                    default:
                        return value;
                }
            })
            .Add("normal", (int i) => i));
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { MaxConcurrentTasks = 8, PollInterval = TimeSpan.FromMilliseconds(50) });

        var normal = Enumerable.Range(0, 400).Select(i => TaskMessage.Create("normal", [i])).ToArray();
        var producing = Task.Run(async () =>
        {
            foreach (var chunk in normal.Chunk(20))
            {
                await harness.Broker.KickManyAsync(chunk);
            }
        });

        var accepted = new List<string>();
        var refused = new Dictionary<string, int>();
        for (var i = 0; i < 200; i++)
        {
            var hostile = Hostile(random, i);
            var place = i % 5;
            var message = place switch
            {
                0 => TaskMessage.Create("hostile", ["return", hostile]),
                1 => TaskMessage.Create("hostile", ["throw", hostile]),
                2 => TaskMessage.Create("hostile", ["progress", hostile]),
                3 => TaskMessage.Create("hostile", kwargs: new Dictionary<string, object?> { ["mode"] = "return", ["value"] = "v", [hostile] = 1 }),
                _ => TaskMessage.Create("hostile", ["return", "v"]),
            };
            var options = place == 4 ? new KickOptions { Labels = new Dictionary<string, string> { ["tenant"] = hostile }, MaxAttempts = 1 } : new KickOptions { MaxAttempts = 1 };
            try
            {
                await harness.Broker.KickAsync(message, options);
                accepted.Add(message.TaskId);
            }
            catch (InvalidTaskMessageException ex)
            {
                // Only names and labels are refused, and only for what PostgreSQL cannot store.
                Assert.Equal(place == 3 ? "kwargs" : "labels", ex.Field);
                Assert.True(place is 3 or 4, $"case {i} refused: {ex.Message}");
                Assert.True(hostile.Contains('\0') || hostile.Any(char.IsSurrogate), $"case {i} refused without cause: {ex.Message}");
                refused[ex.Field] = refused.GetValueOrDefault(ex.Field) + 1;
            }
            catch (MessageTooLargeException)
            {
                Assert.True(Encoding.UTF8.GetByteCount(hostile) > harness.Broker.Options.MaxMessageBytes / 2, $"case {i} too large");
            }
        }

        await producing;
        await Eventually.TrueAsync(async () => await harness.ScalarAsync<long>(
                "SELECT count(*) FROM taskiq_messages WHERE queue = $1 AND status NOT IN ('completed', 'cancelled', 'discarded')", harness.Broker.Options.Queue) == 0,
            Bound, "every task settles");

        foreach (var message in normal)
        {
            Assert.False((await harness.Results.GetResultAsync(message.TaskId)).IsError);
        }

        foreach (var taskId in accepted)
        {
            var result = await harness.Results.GetResultAsync(taskId); // a result or an error result: never nothing
            if (result.IsError)
            {
                Assert.False(string.IsNullOrEmpty(result.Error!.Message));
            }
        }

        Assert.True(accepted.Count > 100, $"only {accepted.Count} accepted");
        Assert.True(refused.Count == 2, $"refused by field: {string.Join(", ", refused)}"); // both kinds of refusal were exercised
    }

    [Fact]
    public async Task Worker_health_is_Unhealthy_while_outcomes_cannot_be_written_and_Healthy_once_they_are()
    {
        var target = new NpgsqlConnectionStringBuilder(db.ConnectionString);
        await using var proxy = new TcpProxy(target.Host!, target.Port);
        await using var proxied = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(db.ConnectionString) { Port = proxy.Port, Timeout = 2 }.ConnectionString);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var running = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("gated", async () =>
        {
            running.TrySetResult();
            await gate.Task;
            return "done";
        }), broker: new PostgresBrokerOptions { LeaseDuration = TimeSpan.FromSeconds(1) }, dataSource: proxied);
        var worker = await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(100) });
        var check = new TaskiqWorkerReadinessCheck(worker);
        var message = TaskMessage.Create("gated");
        await harness.Broker.KickAsync(message);
        await running.Task.WaitAsync(Bound);

        proxy.Cut(); // the database is unreachable for this worker when its outcome is ready
        gate.SetResult();
        await Eventually.TrueAsync(async () => (await check.CheckHealthAsync(new HealthCheckContext())).Status == HealthStatus.Unhealthy, Bound,
            "health turns Unhealthy once outcomes have failed for longer than a lease");
        Assert.Contains("outcomes", (await check.CheckHealthAsync(new HealthCheckContext())).Description);

        proxy.Restore();
        await using var direct = new PostgresResultBackend(db.ConnectionString);
        Assert.Equal("done", (await direct.WaitForResultAsync(message.TaskId, Bound)).GetReturnValue<string>());
        await Eventually.TrueAsync(async () => (await check.CheckHealthAsync(new HealthCheckContext())).Status == HealthStatus.Healthy, Bound,
            "health is back once outcomes are written");
    }

    private static string Hostile(Random random, int i)
    {
        if (i % 50 == 7)
        {
            return new string('x', 1_000_000) + "\0"; // 1 MB of text (and a NUL at the end)
        }

        var builder = new StringBuilder();
        for (var n = random.Next(1, 5); n > 0; n--)
        {
            builder.Append(Pieces[random.Next(Pieces.Length)]);
            builder.Append((char)random.Next('a', 'z' + 1));
        }

        return builder.ToString();
    }
}
