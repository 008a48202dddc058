using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace TaskiqPg.AppHost.Tests;

/// <summary>Publishing the AppHost (here, on a machine without a container runtime) describes the real PostgreSQL resource.</summary>
public sealed partial class ManifestTests
{
    [Fact]
    public async Task A_manifest_published_without_docker_describes_a_postgres_container_and_references_only_resources_it_has()
    {
        var output = Path.Combine(Path.GetTempPath(), "taskiqpg-manifest-" + Guid.NewGuid().ToString("N")[..8], "aspire-manifest.json");
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in new[] { "run", "--project", Path.Combine(RepositoryRoot(), "src", "TaskiqPg.AppHost"), "--no-build", "--no-launch-profile", "--",
                     "--publisher", "manifest", "--output-path", output })
        {
            info.ArgumentList.Add(arg);
        }

        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(3));
        Assert.True(process.ExitCode == 0, $"publish failed: {await stdout}\n{await stderr}");
        try
        {
            var text = await File.ReadAllTextAsync(output);
            using var manifest = JsonDocument.Parse(text);
            var resources = manifest.RootElement.GetProperty("resources");
            var postgres = resources.GetProperty("postgres");
            Assert.Equal("container.v0", postgres.GetProperty("type").GetString());
            Assert.Contains("postgres", postgres.GetProperty("image").GetString());
            Assert.Contains("{postgres.connectionString}", resources.GetProperty("tasks").GetProperty("connectionString").GetString());
            Assert.Equal("{tasks.connectionString}", resources.GetProperty("worker").GetProperty("env").GetProperty("ConnectionStrings__tasks").GetString());

            // No dangling reference: every {resource.…} placeholder names a resource of the manifest.
            var names = resources.EnumerateObject().Select(r => r.Name).ToHashSet();
            var referenced = Placeholder().Matches(text).Select(m => m.Groups[1].Value).ToHashSet();
            Assert.Empty(referenced.Except(names));
            Assert.DoesNotContain(resources.EnumerateObject(), r => r.Value.GetProperty("type").GetString() == "executable.v0");
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(output)!, recursive: true);
        }
    }

    [GeneratedRegex(@"\{([A-Za-z0-9_-]+)\.(?:connectionString|bindings|value|inputs)")]
    private static partial Regex Placeholder();

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
