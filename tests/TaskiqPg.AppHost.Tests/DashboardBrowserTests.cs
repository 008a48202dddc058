using OpenQA.Selenium;

namespace TaskiqPg.AppHost.Tests;

/// <summary>A real browser (headless Debian Chromium driven by chromedriver) opens the Aspire dashboard.</summary>
public sealed class DashboardBrowserTests(AppHostFixture fixture) : IClassFixture<AppHostFixture>
{
    [Fact]
    public async Task Dashboard_resources_page_lists_every_resource_running_and_healthy()
    {
        using var browser = new HeadlessChromium();
        browser.Driver.Navigate().GoToUrl(fixture.DashboardUrl);

        // The resources grid renders over a live connection: wait until every resource shows as Running, none unhealthy.
        string[] resources = ["postgres", "db", "tasks", "worker", "scheduler", "api"];
        await browser.WaitForAsync(d =>
        {
            var text = d.FindElement(By.TagName("body")).Text;
            var ready = resources.All(r => text.Contains(r, StringComparison.Ordinal))
                        && text.Contains("Running", StringComparison.Ordinal)
                        && !text.Contains("Unhealthy", StringComparison.Ordinal)
                        && !text.Contains("Starting", StringComparison.Ordinal)
                        && !text.Contains("Waiting", StringComparison.Ordinal);
            return ready ? d.FindElement(By.TagName("body")) : null;
        }, "every resource running and healthy");

        browser.Screenshot("dashboard.png");
    }

    [Fact]
    public async Task Metrics_page_shows_the_TaskiqPg_instruments_of_a_worker()
    {
        // A few tasks, so the duration, wait-time and outcome instruments have measurements.
        foreach (var i in Enumerable.Range(0, 5))
        {
            await fixture.ResultAsync(await fixture.KickAsync("add", [i, i]));
        }

        var replica = await WorkerReplicaAsync();
        using var browser = new HeadlessChromium();
        browser.Driver.Navigate().GoToUrl($"{fixture.DashboardUrl.TrimEnd('/')}/metrics/resource/{replica}?meter=TaskiqPg&instrument=taskiqpg.task.duration");
        string[] instruments = ["taskiqpg.queue.depth", "taskiqpg.task.queue_wait", "taskiqpg.task.duration", "taskiqpg.tasks.completed"];
        await browser.WaitForAsync(d =>
        {
            var text = d.FindElement(By.TagName("body")).Text;
            return instruments.All(i => text.Contains(i, StringComparison.Ordinal)) ? d.FindElement(By.TagName("body")) : null;
        }, "TaskiqPg's instruments in the worker's metrics", TimeSpan.FromSeconds(90));
        // The duration histogram's chart has drawn its percentiles from this worker's measurements.
        await browser.WaitForAsync(d => d.FindElements(By.CssSelector(".js-plotly-plot")).FirstOrDefault(e => e.Text.Contains("P50", StringComparison.Ordinal)),
            "the duration chart with its percentiles", TimeSpan.FromSeconds(60));

        browser.Screenshot("dashboard-metrics.png");
    }

    private async Task<string> WorkerReplicaAsync()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await foreach (var update in fixture.App.ResourceNotifications.WatchAsync(timeout.Token))
        {
            if (update.Resource.Name == "worker" && update.ResourceId != "worker")
            {
                return update.ResourceId;
            }
        }

        throw new TimeoutException("no worker replica was reported");
    }
}
