using OpenQA.Selenium;
using OpenQA.Selenium.Chrome;

namespace TaskiqPg.AppHost.Tests;

/// <summary>A real headless Debian Chromium driven by chromedriver, with a throwaway profile; skips the test when absent.</summary>
public sealed class HeadlessChromium : IDisposable
{
    private const string Chromium = "/usr/bin/chromium";
    private const string ChromeDriver = "/usr/bin/chromedriver";
    private readonly DirectoryInfo _profile;
    private readonly ChromeDriverService _service;

    public HeadlessChromium(int width = 1600, int height = 900)
    {
        if (!File.Exists(Chromium) || !File.Exists(ChromeDriver))
        {
            Assert.Skip("Chromium is not installed (Debian: apt-get install chromium chromium-driver); .ci/run installs it.");
        }

        _profile = Directory.CreateTempSubdirectory("taskiqpg-chromium-");
        var options = new ChromeOptions { BinaryLocation = Chromium };
        options.AddArguments("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage",
            "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync", $"--window-size={width},{height}",
            $"--user-data-dir={_profile.FullName}");
        _service = ChromeDriverService.CreateDefaultService(Path.GetDirectoryName(ChromeDriver)!, Path.GetFileName(ChromeDriver));
        _service.SuppressInitialDiagnosticInformation = true;
        Driver = new ChromeDriver(_service, options, TimeSpan.FromMinutes(1));
    }

    public ChromeDriver Driver { get; }

    /// <summary>Waits until <paramref name="find"/> returns an element (the page renders over fetches and refreshes).</summary>
    public async Task<IWebElement> WaitForAsync(Func<ISearchContext, IWebElement?> find, string what, TimeSpan? within = null)
    {
        var deadline = DateTime.UtcNow + (within ?? TimeSpan.FromSeconds(60));
        while (true)
        {
            try
            {
                if (find(Driver) is { } element)
                {
                    return element;
                }
            }
            catch (Exception ex) when (ex is NoSuchElementException or StaleElementReferenceException)
            {
            }

            Assert.True(DateTime.UtcNow < deadline, $"The page never showed {what}. It showed:\n{Driver.FindElement(By.TagName("body")).Text}");
            await Task.Delay(100);
        }
    }

    /// <summary>Saves a screenshot next to the tests and, with TASKIQPG_UPDATE_SCREENSHOT=1, into the repository's docs/.</summary>
    public void Screenshot(string fileName)
    {
        var path = Path.Combine(AppContext.BaseDirectory, fileName);
        Driver.GetScreenshot().SaveAsFile(path);
        Assert.True(new FileInfo(path).Length > 10_000, "the screenshot is not empty");
        if (Environment.GetEnvironmentVariable("TASKIQPG_UPDATE_SCREENSHOT") == "1")
        {
            File.Copy(path, Path.Combine(RepositoryRoot(), "docs", fileName), overwrite: true);
        }
    }

    public void Dispose()
    {
        Driver.Quit();
        Driver.Dispose();
        _service.Dispose();
        _profile.Delete(recursive: true);
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
