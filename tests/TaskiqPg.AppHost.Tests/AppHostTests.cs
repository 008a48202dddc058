using System.Net.Http.Json;
using System.Text.Json;

namespace TaskiqPg.AppHost.Tests;

public sealed class AppHostTests(AppHostFixture fixture) : IClassFixture<AppHostFixture>
{
    [Fact]
    public async Task Task_kicked_through_the_api_is_run_by_a_worker_and_its_result_returned()
    {
        var taskId = await fixture.KickAsync("add", [20, 22]);

        var result = await fixture.ResultAsync(taskId);

        Assert.False(result.GetProperty("isError").GetBoolean());
        Assert.Equal(42, result.GetProperty("returnValue").GetInt32());
        Assert.Equal("completed", (await fixture.StateAsync(taskId)).GetProperty("status").GetString());
    }

    [Fact]
    public async Task Both_worker_replicas_execute_tasks_from_one_burst()
    {
        // One replica holds at most 20 tasks (10 running + 10 prefetched), so with 40 kicked at once and each holding
        // its slot for 3 s, at least 20 wait in the queue for the other replica for that long: a replica that claims
        // nothing fails this test, however the claim races between the two fall.
        var ids = await Task.WhenAll(Enumerable.Range(0, 40).Select(_ => fixture.KickAsync("sleep", [3000])));

        var workers = new HashSet<string>();
        foreach (var id in ids)
        {
            workers.Add((await fixture.ResultAsync(id, 60)).GetProperty("returnValue").GetProperty("workerId").GetString()!);
        }

        Assert.Equal(2, workers.Count);
    }

    [Fact]
    public async Task Scheduler_fires_its_static_schedule_and_runtime_schedules_are_validated_and_fired()
    {
        // The scheduler role declares "whoami" every 10 seconds.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(40);
        while (true)
        {
            var schedules = await fixture.Api.GetFromJsonAsync<JsonElement>("/schedules");
            var heartbeat = schedules.EnumerateArray().Single(s => s.GetProperty("taskName").GetString() == "whoami");
            Assert.True(heartbeat.GetProperty("isStatic").GetBoolean());
            if (heartbeat.GetProperty("lastFireAt").ValueKind != JsonValueKind.Null)
            {
                break;
            }

            Assert.True(DateTime.UtcNow < deadline, "the static schedule never fired");
            await Task.Delay(250);
        }

        using var unknown = await fixture.Api.PostAsJsonAsync("/schedules", new { taskName = "no_such_task", cron = "* * * * *" });
        Assert.Equal(System.Net.HttpStatusCode.BadRequest, unknown.StatusCode);
        Assert.Equal("TaskName", (await unknown.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("field").GetString());

        using var created = await fixture.Api.PostAsJsonAsync("/schedules", new { taskName = "add", runAt = DateTimeOffset.UtcNow, args = new[] { 4, 5 } });
        created.EnsureSuccessStatusCode();
        var id = (await created.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("id").GetString();
        deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (true)
        {
            var schedules = await fixture.Api.GetFromJsonAsync<JsonElement>("/schedules");
            if (schedules.EnumerateArray().Single(s => s.GetProperty("id").GetString() == id).GetProperty("done").GetBoolean())
            {
                break;
            }

            Assert.True(DateTime.UtcNow < deadline, "the runtime one-shot never fired");
            await Task.Delay(100);
        }
    }

    [Fact]
    public async Task Failing_task_is_retried_and_its_result_reports_the_successful_attempt()
    {
        var taskId = await fixture.KickAsync("flaky", [1]);

        var result = await fixture.ResultAsync(taskId, 60);

        Assert.Equal(2, result.GetProperty("returnValue").GetInt32());
    }
}
