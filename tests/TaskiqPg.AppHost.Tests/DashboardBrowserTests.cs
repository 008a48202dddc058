using OpenQA.Selenium;
using OpenQA.Selenium.Chrome;

namespace TaskiqPg.AppHost.Tests;

/// <summary>A real browser (headless Debian Chromium driven by chromedriver) opens the Aspire dashboard.</summary>
public sealed class DashboardBrowserTests(AppHostFixture fixture) : IClassFixture<AppHostFixture>
{
    private const string Chromium = "/usr/bin/chromium";
    private const string ChromeDriver = "/usr/bin/chromedriver";

    [Fact]
    public async Task Dashboard_resources_page_lists_every_resource_running_and_healthy()
    {
        if (!File.Exists(Chromium) || !File.Exists(ChromeDriver))
        {
            Assert.Skip("Chromium is not installed (Debian: apt-get install chromium chromium-driver); .ci/run installs it.");
        }

        var profile = Directory.CreateTempSubdirectory("taskiqpg-chromium-");
        var options = new ChromeOptions { BinaryLocation = Chromium };
        options.AddArguments("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage",
            "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync", "--window-size=1600,900",
            $"--user-data-dir={profile.FullName}");
        using var service = ChromeDriverService.CreateDefaultService(Path.GetDirectoryName(ChromeDriver)!, Path.GetFileName(ChromeDriver));
        service.SuppressInitialDiagnosticInformation = true;
        using var driver = new ChromeDriver(service, options, TimeSpan.FromMinutes(1));
        try
        {
            driver.Navigate().GoToUrl(fixture.DashboardUrl);

            // The resources grid renders over a live connection: wait until every resource shows as Running, none unhealthy.
            string[] resources = ["postgres", "db", "tasks", "worker", "scheduler", "api"];
            var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(1);
            string text;
            while (true)
            {
                text = driver.FindElement(By.TagName("body")).Text;
                var ready = resources.All(r => text.Contains(r, StringComparison.Ordinal))
                            && text.Contains("Running", StringComparison.Ordinal)
                            && !text.Contains("Unhealthy", StringComparison.Ordinal)
                            && !text.Contains("Starting", StringComparison.Ordinal)
                            && !text.Contains("Waiting", StringComparison.Ordinal);
                if (ready)
                {
                    break;
                }

                Assert.True(DateTime.UtcNow < deadline, $"The dashboard never showed every resource running and healthy. It showed:\n{text}");
                await Task.Delay(250);
            }

            var screenshot = Path.Combine(AppContext.BaseDirectory, "dashboard.png");
            driver.GetScreenshot().SaveAsFile(screenshot);
            Assert.True(new FileInfo(screenshot).Length > 10_000, "the screenshot is not empty");
            if (Environment.GetEnvironmentVariable("TASKIQPG_UPDATE_SCREENSHOT") == "1")
            {
                File.Copy(screenshot, Path.Combine(RepositoryRoot(), "docs", "dashboard.png"), overwrite: true);
            }
        }
        finally
        {
            driver.Quit();
            profile.Delete(recursive: true);
        }
    }

    private static string RepositoryRoot()
    {
        var folder = new DirectoryInfo(AppContext.BaseDirectory);
        while (folder is not null && !File.Exists(Path.Combine(folder.FullName, "TaskiqPg.slnx")))
        {
            folder = folder.Parent;
        }

        return folder?.FullName ?? throw new InvalidOperationException("TaskiqPg.slnx not found above the test output.");
    }
}
