using System.Diagnostics;
using System.Globalization;
using System.Net;

namespace TaskiqPg.AppHost.Tests;

public sealed class AppHostFaultTests(AppHostFixture fixture) : IClassFixture<AppHostFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Database_outage_turns_worker_health_unhealthy_and_queued_tasks_complete_after_restart()
    {
        // Queued before the outage, due during it.
        var queued = new List<string>();
        for (var i = 0; i < 5; i++)
        {
            queued.Add(await fixture.KickAsync("add", [i, 1], new AppHostFixture.KickExtra(DelaySeconds: 3)));
        }

        await fixture.App.ResourceCommands.ExecuteCommandAsync("postgres", KnownResourceCommands.StopCommand).WaitAsync(Bound);

        await WaitForResourceHealthAsync("worker", Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus.Unhealthy);
        using var worker = fixture.App.CreateHttpClient("worker");
        Assert.Equal(HttpStatusCode.ServiceUnavailable, (await worker.GetAsync("/health")).StatusCode);

        await fixture.App.ResourceCommands.ExecuteCommandAsync("postgres", KnownResourceCommands.StartCommand).WaitAsync(Bound);
        await fixture.App.ResourceNotifications.WaitForResourceHealthyAsync("postgres").WaitAsync(Bound);
        await WaitForResourceHealthAsync("worker", Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus.Healthy);

        for (var i = 0; i < queued.Count; i++)
        {
            Assert.Equal(i + 1, (await fixture.ResultAsync(queued[i], 60)).GetProperty("returnValue").GetInt32());
        }
    }

    [Fact]
    public async Task Task_of_a_killed_worker_replica_is_completed_by_the_other_after_its_lease_expires()
    {
        var taskId = await fixture.KickAsync("sleep", [6000]);
        string? lockedBy = null;
        var deadline = DateTime.UtcNow + Bound;
        while (lockedBy is null)
        {
            var state = await fixture.StateAsync(taskId);
            if (state.GetProperty("status").GetString() == "running" && state.GetProperty("lockedBy").GetString() is { } owner)
            {
                lockedBy = owner;
            }
            else if (DateTime.UtcNow > deadline)
            {
                Assert.Fail("the task was never claimed");
            }
            else
            {
                await Task.Delay(50);
            }
        }

        // The worker id is host:pid:suffix. Kill that replica's process outright: it cannot release or renew anything.
        var pid = int.Parse(lockedBy.Split(':')[1], CultureInfo.InvariantCulture);
        Process.GetProcessById(pid).Kill(entireProcessTree: true);

        var result = await fixture.ResultAsync(taskId, 60);

        var info = result.GetProperty("returnValue");
        Assert.NotEqual(lockedBy, info.GetProperty("workerId").GetString());
        var state2 = await fixture.StateAsync(taskId);
        Assert.Equal("completed", state2.GetProperty("status").GetString());
    }

    private async Task WaitForResourceHealthAsync(string resource, Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus status)
    {
        using var timeout = new CancellationTokenSource(Bound);
        await foreach (var update in fixture.App.ResourceNotifications.WatchAsync(timeout.Token))
        {
            if (update.Resource.Name == resource && update.Snapshot.HealthStatus == status)
            {
                return;
            }
        }
    }
}
