using System.Diagnostics;

namespace TaskiqPg.Tests;

/// <summary>
/// Runs one of the hand-run tools copied next to the tests (the benchmark, the fault suite) as a process of its own,
/// with its report written to a temp JSON file; environment variables carry secrets, never the command line.
/// </summary>
public static class ToolRun
{
    public sealed record Result(int ExitCode, string Output, string Error, string ReportPath);

    public static async Task<Result> RunAsync(string assembly, IEnumerable<string> args, TimeSpan timeout,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var report = Path.Combine(Path.GetTempPath(), $"{Path.GetFileNameWithoutExtension(assembly)}-{Guid.NewGuid():N}.json");
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, assembly));
        foreach (var arg in args.Concat(["--out", report]))
        {
            info.ArgumentList.Add(arg);
        }

        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            info.Environment[name] = value;
        }

        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(timeout);
        return new Result(process.ExitCode, await stdout, await stderr, report);
    }
}
