using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace TaskiqPg.Faults;

/// <summary>A child process of the runner (worker, producer or scheduler): started, awaited ready, killed or stopped.</summary>
internal sealed partial class Child : IDisposable
{
    private readonly Process _process;
    private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<string> _errors = [];
    private readonly List<string> _acked = []; // task ids a producer reported committed ("acked <id>" lines)

    private Child(string name, Process process)
    {
        Name = name;
        _process = process;
    }

    public string Name { get; }

    public int ProcessId => _process.Id;

    public bool HasExited => _process.HasExited;

    public int ExitCode => _process.ExitCode;

    public static Child Start(string connectionString, string name, params string[] args)
        => StartWithListenConnection(connectionString, listenConnectionString: null, name, args);

    /// <summary>Starts a child whose LISTEN connections use <paramref name="listenConnectionString"/> (a pooler in between).</summary>
    public static Child StartWithListenConnection(string connectionString, string? listenConnectionString, string name, string[] args)
    {
        var info = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet")
        {
            info.ArgumentList.Add(typeof(Child).Assembly.Location);
        }

        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        info.Environment[Roles.ConnectionVariable] = connectionString;
        if (listenConnectionString is not null)
        {
            info.Environment[Roles.ListenConnectionVariable] = listenConnectionString;
        }
        var process = new Process { StartInfo = info, EnableRaisingEvents = true };
        var child = new Child(name, process);
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data?.StartsWith(Roles.Ready, StringComparison.Ordinal) == true)
            {
                child._ready.TrySetResult();
            }
            else if (e.Data?.StartsWith(Roles.Acked, StringComparison.Ordinal) == true)
            {
                lock (child._acked)
                {
                    child._acked.Add(e.Data[Roles.Acked.Length..]);
                }
            }
        };
        // TASKIQPG_FAULTS_LOG_DIR: every stderr line of every child also goes to <dir>/<name>.log (to follow one run).
        var logFile = Environment.GetEnvironmentVariable("TASKIQPG_FAULTS_LOG_DIR") is { Length: > 0 } logDirectory
            ? Path.Combine(Directory.CreateDirectory(logDirectory).FullName, name + ".log") : null;
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is { } line)
            {
                lock (child._errors)
                {
                    child._errors.Add(line);
                    if (logFile is not null)
                    {
                        File.AppendAllText(logFile, line + "\n");
                    }
                }
            }
        };
        process.Exited += (_, _) => child._ready.TrySetException(new InvalidOperationException($"{name} exited before it was ready: {child.Errors}"));
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return child;
    }

    public string Errors
    {
        get
        {
            lock (_errors)
            {
                return string.Join('\n', _errors.TakeLast(20));
            }
        }
    }

    /// <summary>The task ids this producer reported as committed (its kick's COMMIT returned), in order.</summary>
    public IReadOnlyList<string> Acked
    {
        get
        {
            lock (_acked)
            {
                return _acked.ToArray();
            }
        }
    }

    /// <summary>Every stderr line mentioning <paramref name="text"/> (e.g. a task id).</summary>
    public IReadOnlyList<string> ErrorLinesContaining(string text)
    {
        lock (_errors)
        {
            return _errors.Where(l => l.Contains(text, StringComparison.Ordinal)).ToArray();
        }
    }

    public Task WaitReadyAsync() => _ready.Task.WaitAsync(TimeSpan.FromSeconds(60));

    public Task WaitForExitAsync(TimeSpan timeout) => _process.WaitForExitAsync().WaitAsync(timeout);

    /// <summary>SIGKILL: no shutdown code runs.</summary>
    public void Kill9() => _process.Kill();

    /// <summary>SIGTERM: the graceful stop a supervisor (systemd, Kubernetes, Aspire) sends.</summary>
    public void Terminate() => _ = SendSignal(_process.Id, 15);

    /// <summary>Resident memory of the process, from /proc.</summary>
    public double RssMb()
    {
        try
        {
            var line = File.ReadLines($"/proc/{_process.Id}/status").FirstOrDefault(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
            return line is null ? 0 : double.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024.0;
        }
        catch (IOException)
        {
            return 0;
        }
    }

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill();
                _process.WaitForExit(5_000);
            }
        }
        catch (InvalidOperationException)
        {
            // never started or already gone
        }

        _process.Dispose();
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int SendSignal(int pid, int signal);
}
