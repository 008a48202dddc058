using System.Diagnostics;
using System.Text.Json;

namespace TaskiqPg.AppHost.Tests;

/// <summary>
/// The packages as someone who never saw this repository uses them: <c>dotnet pack</c> into a folder feed, then a
/// brand-new AppHost, service and test runner written outside the repository, referencing TaskiqPg's packages by
/// version from that feed only (every other package from the usual source), built, the AppHost started under
/// Aspire.Hosting.Testing, a task kicked through the service and its result read back.
/// </summary>
public sealed class PackageConsumerTests
{
    private static readonly string[] Packages = ["TaskiqPg", "TaskiqPg.LocalServer", "TaskiqPg.Aspire", "TaskiqPg.Aspire.Hosting", "TaskiqPg.Dashboard"];

    // The versions the consumer asks for: the same as this repository uses (Directory.Packages.props).
    private const string AspireVersion = "13.6.5";
    private const string AspireSdkVersion = "13.6.4";

    [Fact]
    public async Task A_new_AppHost_and_service_built_from_the_packed_packages_run_a_task()
    {
        var root = RepositoryRoot();
        var work = Path.Combine(Path.GetTempPath(), "taskiqpg-consumer-" + Guid.NewGuid().ToString("N")[..8]);
        var feed = Path.Combine(work, "feed");
        // A version no earlier run used: NuGet's global cache never serves a stale build of the same version.
        var version = $"0.0.1-consumer.{DateTime.UtcNow:yyyyMMddHHmmss}.{Guid.NewGuid().ToString("N")[..6]}";
        Directory.CreateDirectory(feed);
        try
        {
            foreach (var package in Packages)
            {
                var project = Path.Combine(root, "src", package, package + ".csproj");
                await RunAsync(root, TimeSpan.FromMinutes(5), "pack", project, "-c", "Release", "-o", feed, $"-p:Version={version}", "-nologo");
            }

            Assert.Equal(Packages.Order(), Directory.GetFiles(feed, "*.nupkg").Select(f => Path.GetFileName(f)[..^($".{version}.nupkg".Length)]).Order());
            Assert.Equal(Packages.Length, Directory.GetFiles(feed, "*.snupkg").Length); // symbol packages beside them

            WriteConsumer(work, feed, version);
            Assert.False(work.StartsWith(root, StringComparison.Ordinal));
            await RunAsync(work, TimeSpan.FromMinutes(10), "build", Path.Combine(work, "Check", "Check.csproj"), "-nologo");

            // Restored from the feed, by version: the service's assets name the packed package, not a project.
            using (var assets = JsonDocument.Parse(await File.ReadAllTextAsync(Path.Combine(work, "Service", "obj", "project.assets.json"))))
            {
                var library = assets.RootElement.GetProperty("libraries").GetProperty($"TaskiqPg.Aspire/{version}");
                Assert.Equal("package", library.GetProperty("type").GetString());
            }

            var output = await RunAsync(work, TimeSpan.FromMinutes(5), "run", "--no-build", "--project", Path.Combine(work, "Check", "Check.csproj"),
                "--", Path.Combine(work, "pgdata"));
            Assert.Contains("CONSUMER RESULT 5", output);
            Assert.Contains("CONSUMER DASHBOARD html", output); // the task browser's embedded page, served from the package
        }
        finally
        {
            DeleteQuietly(work);
            foreach (var package in Packages)
            {
                var id = Path.Combine(NuGetPackagesFolder(), package.ToLowerInvariant());
                DeleteQuietly(Path.Combine(id, version));
                if (Directory.Exists(id) && !Directory.EnumerateFileSystemEntries(id).Any())
                {
                    DeleteQuietly(id);
                }
            }
        }
    }

    private static void WriteConsumer(string work, string feed, string version)
    {
        File.WriteAllText(Path.Combine(work, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <clear />
                <add key="local" value="{feed}" />
                <add key="nuget.org" value="https://api.nuget.org/v3/index.json" />
              </packageSources>
              <packageSourceMapping>
                <packageSource key="local"><package pattern="TaskiqPg" /><package pattern="TaskiqPg.*" /></packageSource>
                <packageSource key="nuget.org"><package pattern="*" /></packageSource>
              </packageSourceMapping>
            </configuration>
            """);
        // Outside any repository: no Directory.Build.props or central package versions reach these projects.
        File.WriteAllText(Path.Combine(work, "Directory.Build.props"), "<Project />");
        File.WriteAllText(Path.Combine(work, "Directory.Packages.props"), "<Project />");

        Write(work, "Service/Service.csproj", $"""
            <Project Sdk="Microsoft.NET.Sdk.Web">
              <PropertyGroup><TargetFramework>net10.0</TargetFramework><Nullable>enable</Nullable><ImplicitUsings>enable</ImplicitUsings></PropertyGroup>
              <ItemGroup>
                <PackageReference Include="TaskiqPg.Aspire" Version="{version}" />
                <PackageReference Include="TaskiqPg.Dashboard" Version="{version}" />
              </ItemGroup>
            </Project>
            """);
        Write(work, "Service/Program.cs", """
            using TaskiqPg;

            var builder = WebApplication.CreateBuilder(args);
            builder.AddTaskiqPgClient("tasks").AddTask("add", (int a, int b) => a + b).AddWorker();
            var app = builder.Build();
            app.MapGet("/add", async (int a, int b, TaskiqClient client) =>
                await (await client.KickAsync<int>("add", [a, b])).WaitForResultAsync(TimeSpan.FromSeconds(30)));
            app.MapTaskiqDashboard("/taskiq");
            app.Run();
            """);

        Write(work, "AppHost/AppHost.csproj", $"""
            <Project Sdk="Aspire.AppHost.Sdk/{AspireSdkVersion}">
              <PropertyGroup><OutputType>Exe</OutputType><TargetFramework>net10.0</TargetFramework><Nullable>enable</Nullable><ImplicitUsings>enable</ImplicitUsings></PropertyGroup>
              <ItemGroup>
                <PackageReference Include="Aspire.Hosting.AppHost" Version="{AspireVersion}" />
                <PackageReference Include="TaskiqPg.Aspire.Hosting" Version="{version}" />
              </ItemGroup>
              <ItemGroup><ProjectReference Include="../Service/Service.csproj" /></ItemGroup>
            </Project>
            """);
        Write(work, "AppHost/Program.cs", """
            var builder = DistributedApplication.CreateBuilder(args);
            var tasks = builder.AddTaskiqPgDatabase("postgres", "db").AddTaskiqPgQueue("tasks");
            builder.AddProject<Projects.Service>("service", launchProfileName: null).WithHttpEndpoint().WithReference(tasks).WaitFor(tasks);
            builder.Build().Run();
            """);

        Write(work, "Check/Check.csproj", $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup><OutputType>Exe</OutputType><TargetFramework>net10.0</TargetFramework><Nullable>enable</Nullable><ImplicitUsings>enable</ImplicitUsings></PropertyGroup>
              <ItemGroup><PackageReference Include="Aspire.Hosting.Testing" Version="{AspireVersion}" /></ItemGroup>
              <ItemGroup><ProjectReference Include="../AppHost/AppHost.csproj" /></ItemGroup>
            </Project>
            """);
        Write(work, "Check/Program.cs", """
            using Aspire.Hosting;
            using Aspire.Hosting.ApplicationModel;
            using Aspire.Hosting.Testing;

            // No container runtime here: the local PostgreSQL server, in a throwaway folder.
            var appHost = await DistributedApplicationTestingBuilder.CreateAsync<Projects.AppHost>(
                ["--TaskiqPg:PostgresMode=local", $"--TaskiqPg:LocalDataDirectory={args[0]}"]);
            await using var app = await appHost.BuildAsync();
            await app.StartAsync();
            await app.ResourceNotifications.WaitForResourceAsync("service", KnownResourceStates.Running).WaitAsync(TimeSpan.FromMinutes(3));
            using var http = app.CreateHttpClient("service");
            var deadline = DateTime.UtcNow.AddMinutes(2);
            while (true)
            {
                try
                {
                    Console.WriteLine("CONSUMER RESULT " + await http.GetStringAsync("/add?a=2&b=3"));
                    var page = await http.GetStringAsync("/taskiq/");
                    Console.WriteLine("CONSUMER DASHBOARD " + (page.Contains("<html", StringComparison.OrdinalIgnoreCase) ? "html" : page[..Math.Min(200, page.Length)]));
                    return 0;
                }
                catch (HttpRequestException) when (DateTime.UtcNow < deadline)
                {
                    await Task.Delay(500); // the service is Running before it listens
                }
            }
            """);
    }

    private static void Write(string work, string relative, string text)
    {
        var path = Path.Combine(work, relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, text);
    }

    /// <summary>
    /// Runs <c>dotnet</c>; once more when NuGet's restore failed without saying why ("The "RestoreTask" task returned
    /// false but did not log an error", a known intermittent failure of the SDK's restore: NuGet/Home#13460, seen once
    /// in this test's pack step in CI on 2026-12-03 after many green runs). Any other failure, or that one twice, fails.
    /// </summary>
    private static async Task<string> RunAsync(string directory, TimeSpan timeout, params string[] args)
    {
        var (exitCode, output) = await RunOnceAsync(directory, timeout, args);
        if (exitCode != 0 && output.Contains("The \"RestoreTask\" task returned false but did not log an error", StringComparison.Ordinal))
        {
            (exitCode, output) = await RunOnceAsync(directory, timeout, args);
        }

        Assert.True(exitCode == 0, $"dotnet {string.Join(' ', args)} exited with {exitCode}:\n{Tail(output)}");
        return output;
    }

    private static async Task<(int ExitCode, string Output)> RunOnceAsync(string directory, TimeSpan timeout, string[] args)
    {
        var info = new ProcessStartInfo("dotnet") { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        // The test host's own MSBuild and Aspire variables must not leak into the child builds.
        foreach (var name in new[] { "MSBuildExtensionsPath", "MSBUILD_EXE_PATH", "MSBuildSDKsPath", "DOTNET_LAUNCH_PROFILE" })
        {
            info.Environment.Remove(name);
        }

        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cancel = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cancel.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"dotnet {string.Join(' ', args)} did not finish within {timeout}:\n{Tail(await stdout)}");
        }

        return (process.ExitCode, await stdout + await stderr);
    }

    private static string Tail(string text) => text.Length <= 6000 ? text : text[^6000..];

    private static string RepositoryRoot()
    {
        var directory = new DirectoryInfo(AppContext.BaseDirectory);
        while (directory is not null && !File.Exists(Path.Combine(directory.FullName, "TaskiqPg.slnx")))
        {
            directory = directory.Parent;
        }

        return directory?.FullName ?? throw new InvalidOperationException("TaskiqPg.slnx not found above " + AppContext.BaseDirectory);
    }

    private static string NuGetPackagesFolder()
        => Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } folder
            ? folder
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");

    private static void DeleteQuietly(string path)
    {
        try
        {
            if (Directory.Exists(path))
            {
                Directory.Delete(path, recursive: true);
            }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
