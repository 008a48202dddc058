using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using Microsoft.Extensions.DependencyInjection;
using OpenQA.Selenium;

namespace TaskiqPg.AppHost.Tests;

/// <summary>
/// The task browser the sample api maps at /taskiq, on the real AppHost: every page action through its HTTP API checked
/// in the database, and a real browser retrying a dead letter and watching a paused queue hold a task.
/// </summary>
public sealed class TaskBrowserTests(AppHostFixture fixture) : IClassFixture<AppHostFixture>, IAsyncLifetime
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);
    private PostgresBroker _broker = null!;
    private PostgresScheduleSource _schedules = null!;

    public async ValueTask InitializeAsync()
    {
        var connectionString = (await fixture.App.GetConnectionStringAsync("tasks"))!;
        _broker = new PostgresBroker(connectionString, new PostgresBrokerOptions { RunMigrations = false });
        _schedules = new PostgresScheduleSource(connectionString, new PostgresScheduleSourceOptions { RunMigrations = false });
    }

    public async ValueTask DisposeAsync()
    {
        await _broker.ResumeQueueAsync();
        await _broker.DisposeAsync();
        await _schedules.DisposeAsync();
    }

    private async Task<JsonElement> PostAsync(string path, HttpStatusCode expected = HttpStatusCode.OK)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/taskiq/api/" + path);
        request.Headers.Add("X-Taskiq-Dashboard", "1");
        using var response = await fixture.Api.SendAsync(request);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.True(expected == response.StatusCode, $"POST {path}: {(int)response.StatusCode} {body}");
        return body;
    }

    private async Task<JsonElement> GetAsync(string path)
        => await fixture.Api.GetFromJsonAsync<JsonElement>("/taskiq/api/" + path);

    private async Task<TaskRecord?> TaskAsync(string taskId, Func<TaskRecord?, bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + Bound;
        while (true)
        {
            var record = await _broker.GetTaskAsync(taskId);
            if (condition(record))
            {
                return record;
            }

            Assert.True(DateTime.UtcNow < deadline, $"task {taskId} never {what} (last seen {record?.State.ToString() ?? "gone"})");
            await Task.Delay(100);
        }
    }

    private async Task<string> KickAsync(string task, object[] args, double? delaySeconds = null, int? maxAttempts = null)
    {
        using var response = await fixture.Api.PostAsJsonAsync($"/tasks/{task}", new { args, delaySeconds, maxAttempts });
        response.EnsureSuccessStatusCode();
        return (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("taskId").GetString()!;
    }

    [Fact]
    public async Task The_api_resource_links_the_task_browser_and_serves_it_offline()
    {
        var api = fixture.App.Services.GetRequiredService<ResourceNotificationService>();
        using var timeout = new CancellationTokenSource(Bound);
        string? url = null;
        await foreach (var update in api.WatchAsync(timeout.Token))
        {
            if (update.Resource.Name == "api" && update.Snapshot.Urls.FirstOrDefault(u => u.DisplayProperties.DisplayName == "Task browser") is { } link)
            {
                url = link.Url;
                break;
            }
        }

        Assert.NotNull(url);
        Assert.EndsWith("/taskiq/", url);
        using var page = await fixture.Api.GetAsync(new Uri(url).PathAndQuery);
        page.EnsureSuccessStatusCode();
        var html = await page.Content.ReadAsStringAsync();
        Assert.Contains("app.js", html);
        Assert.DoesNotMatch("(src|href)=\"(https?:)?//", html); // no CDN: every asset is relative, served from this assembly
        using var script = await fixture.Api.GetAsync("/taskiq/app.js");
        Assert.Equal("text/javascript", script.Content.Headers.ContentType?.MediaType);
        using var bare = await fixture.Api.GetAsync("/taskiq");
        Assert.EndsWith("/taskiq/", bare.RequestMessage!.RequestUri!.AbsolutePath); // redirected: relative assets resolve
    }

    [Fact]
    public async Task Every_task_and_queue_action_of_the_browser_changes_the_database()
    {
        // Run now: a task delayed by ten minutes runs at once.
        var delayed = await KickAsync("add", [20, 22], delaySeconds: 600);
        await TaskAsync(delayed, t => t?.State == TaskState.Scheduled, "was scheduled");
        await PostAsync($"tasks/{delayed}/run-now");
        Assert.Equal(42, (await fixture.ResultAsync(delayed)).GetProperty("returnValue").GetInt32());
        await PostAsync($"tasks/{delayed}/run-now", HttpStatusCode.Conflict); // completed: nothing to run now

        // Cancel a queued task, then delete its finished row.
        var cancelled = await KickAsync("add", [1, 1], delaySeconds: 600);
        await TaskAsync(cancelled, t => t?.State == TaskState.Scheduled, "was scheduled");
        await PostAsync($"tasks/{cancelled}/delete", HttpStatusCode.Conflict); // unfinished: cancel first
        await PostAsync($"tasks/{cancelled}/cancel");
        await TaskAsync(cancelled, t => t?.State == TaskState.Cancelled, "was cancelled");
        await PostAsync($"tasks/{cancelled}/delete");
        await TaskAsync(cancelled, t => t is null, "was deleted");

        // Retry a dead letter: it gets one more attempt and completes.
        var flaky = await KickAsync("flaky", [1], maxAttempts: 1);
        await TaskAsync(flaky, t => t?.State == TaskState.Discarded, "was dead-lettered");
        await PostAsync($"tasks/{flaky}/retry");
        var retried = await TaskAsync(flaky, t => t?.State == TaskState.Completed, "completed after the retry");
        Assert.Equal(2, retried!.History.Count);
        await PostAsync($"tasks/{flaky}/retry", HttpStatusCode.Conflict);

        // Pause and resume the queue.
        await PostAsync("queues/default/pause");
        Assert.NotNull(await _broker.GetQueuePausedAtAsync("default"));
        await PostAsync("queues/default/resume");
        Assert.Null(await _broker.GetQueuePausedAtAsync("default"));

        // The reads show what happened.
        var overview = await GetAsync("overview");
        var queue = overview.GetProperty("queues").EnumerateArray().Single(q => q.GetProperty("name").GetString() == "default");
        Assert.True(queue.GetProperty("counts").GetProperty("completed").GetInt64() >= 2);
        Assert.Equal(2, queue.GetProperty("liveWorkers").GetInt32());
        var list = await GetAsync("tasks?queue=default&state=completed&name=flaky&order=newest");
        Assert.Contains(list.GetProperty("tasks").EnumerateArray(), t => t.GetProperty("taskId").GetString() == flaky);
        Assert.All(list.GetProperty("tasks").EnumerateArray(), t => Assert.Equal("flaky", t.GetProperty("taskName").GetString()));
        var detail = await GetAsync($"tasks/{flaky}");
        Assert.Equal(2, detail.GetProperty("history").GetArrayLength());
        Assert.Equal(1, detail.GetProperty("args")[0].GetInt32());
        Assert.Equal(2, detail.GetProperty("result").GetProperty("returnValue").GetInt32());

        // Without the action header an action is refused and changes nothing.
        using var forged = await fixture.Api.PostAsync("/taskiq/api/queues/default/pause", null);
        Assert.Equal(HttpStatusCode.BadRequest, forged.StatusCode);
        Assert.Null(await _broker.GetQueuePausedAtAsync("default"));
    }

    [Fact]
    public async Task Schedules_can_be_paused_resumed_and_fired_now_from_the_browser()
    {
        var schedules = await GetAsync("schedules");
        var report = schedules.GetProperty("schedules").EnumerateArray().Single(s => s.GetProperty("taskName").GetString() == "report");
        var id = report.GetProperty("id").GetGuid();

        await PostAsync($"schedules/{id}/pause");
        Assert.False((await _schedules.ListSchedulesAsync()).Single(s => s.Id == id).Enabled);
        await PostAsync($"schedules/{id}/resume");
        Assert.True((await _schedules.ListSchedulesAsync()).Single(s => s.Id == id).Enabled);

        var fired = await PostAsync($"schedules/{id}/fire");
        var taskId = fired.GetProperty("taskId").GetString()!;
        var result = await fixture.ResultAsync(taskId);
        Assert.False(result.GetProperty("isError").GetBoolean());
        await PostAsync($"schedules/{Guid.NewGuid()}/fire", HttpStatusCode.NotFound);
    }

    [Fact]
    public async Task In_a_real_browser_a_dead_letter_is_found_retried_and_seen_completing()
    {
        var flaky = await KickAsync("flaky", [1], maxAttempts: 1);
        await TaskAsync(flaky, t => t?.State == TaskState.Discarded, "was dead-lettered");

        using var browser = new HeadlessChromium();
        var root = new Uri(fixture.Api.BaseAddress!, "/taskiq/");
        browser.Driver.Navigate().GoToUrl(new Uri(root, "#/queues"));
        (await browser.WaitForAsync(d => d.FindElement(By.CssSelector("tr[data-queue='default'] a[data-count='discarded']")), "the discarded count of the default queue")).Click();
        (await browser.WaitForAsync(d => d.FindElement(By.CssSelector($"tr[data-task='{flaky}'] a[data-testid='task-link']")), "the dead letter in the discarded list")).Click();
        await browser.WaitForAsync(d => d.FindElement(By.CssSelector("[data-testid='task-state']")) is { Text: "discarded" } e ? e : null, "the task's detail, discarded");
        Assert.Contains("failing on purpose", browser.Driver.FindElement(By.CssSelector("[data-testid='task-summary']")).Text);

        browser.Driver.FindElement(By.CssSelector("[data-testid='retry-task']")).Click();
        await browser.WaitForAsync(d => d.FindElement(By.CssSelector("[data-testid='task-state']")) is { Text: "completed" } e ? e : null, "the retried task completed");
        Assert.Contains("2", browser.Driver.FindElement(By.CssSelector("[data-testid='task-result']")).Text);
        Assert.Equal(2, browser.Driver.FindElements(By.CssSelector("[data-testid='attempts'] tbody tr")).Count);
        browser.Screenshot("task-browser-detail.png");
    }

    [Fact]
    public async Task In_a_real_browser_a_queue_paused_by_the_Aspire_command_holds_a_kicked_task_until_resumed()
    {
        var commands = fixture.App.Services.GetRequiredService<ResourceCommandService>();
        Assert.True((await commands.ExecuteCommandAsync("tasks", "pause-queue")).Success);
        var held = await KickAsync("add", [5, 6]);

        using var browser = new HeadlessChromium();
        browser.Driver.Navigate().GoToUrl(new Uri(fixture.Api.BaseAddress!, "/taskiq/#/tasks?queue=default&state=available"));
        await browser.WaitForAsync(d => d.FindElement(By.CssSelector($"tr[data-task='{held}'] [data-state='available']")), "the kicked task queued (available) while paused");
        browser.Driver.Navigate().GoToUrl(new Uri(fixture.Api.BaseAddress!, "/taskiq/#/queues"));
        await browser.WaitForAsync(d => d.FindElement(By.CssSelector("tr[data-queue='default'] [data-testid='queue-state']")) is { Text: "Paused" } e ? e : null, "the queue shown paused");
        Assert.Equal(TaskState.Available, (await _broker.GetTaskAsync(held))!.State); // still queued: nothing claimed it

        browser.Driver.Navigate().GoToUrl(new Uri(fixture.Api.BaseAddress!, "/taskiq/#/tasks?queue=default&state=available"));
        await browser.WaitForAsync(d => d.FindElement(By.CssSelector($"tr[data-task='{held}']")), "the held task in the list");
        browser.Screenshot("task-browser-list.png");

        Assert.True((await commands.ExecuteCommandAsync("tasks", "resume-queue")).Success);
        browser.Driver.Navigate().GoToUrl(new Uri(fixture.Api.BaseAddress!, $"/taskiq/#/task/{held}"));
        await browser.WaitForAsync(d => d.FindElement(By.CssSelector("[data-testid='task-state']")) is { Text: "completed" } e ? e : null, "the task run once the queue resumed");
        Assert.Contains("11", browser.Driver.FindElement(By.CssSelector("[data-testid='task-result']")).Text);
    }
}
