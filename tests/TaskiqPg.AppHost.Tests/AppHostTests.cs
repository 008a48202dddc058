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
        var ids = new List<string>();
        for (var i = 0; i < 40; i++)
        {
            ids.Add(await fixture.KickAsync("sleep", [300]));
        }

        var workers = new HashSet<string>();
        foreach (var id in ids)
        {
            workers.Add((await fixture.ResultAsync(id, 60)).GetProperty("returnValue").GetProperty("workerId").GetString()!);
        }

        Assert.Equal(2, workers.Count);
    }

    [Fact]
    public async Task Failing_task_is_retried_and_its_result_reports_the_successful_attempt()
    {
        var taskId = await fixture.KickAsync("flaky", [1]);

        var result = await fixture.ResultAsync(taskId, 60);

        Assert.Equal(2, result.GetProperty("returnValue").GetInt32());
    }
}
