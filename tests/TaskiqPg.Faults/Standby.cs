using System.Diagnostics;
using Npgsql;
using TaskiqPg.LocalServer;

namespace TaskiqPg.Faults;

/// <summary>
/// A streaming-replication standby of a running PostgreSQL server, on this machine: <c>pg_basebackup -R</c> into a
/// folder of its own, then the server started on a free port (as the <c>postgres</c> user when the runner is root). It
/// can be promoted (<c>pg_promote()</c>) or killed like a crashed primary (<c>pg_ctl stop -m immediate</c>).
/// </summary>
internal sealed class Standby : IAsyncDisposable
{
    private readonly PostgresCluster _cluster;
    private readonly Process _process;
    private readonly string _password;

    private Standby(PostgresCluster cluster, Process process, int port, string password)
    {
        _cluster = cluster;
        _process = process;
        Port = port;
        _password = password;
    }

    public int Port { get; }

    /// <summary>Clones the server at <paramref name="sourcePort"/> (superuser <c>postgres</c>) into <paramref name="dataDirectory"/> and starts it.</summary>
    public static async Task<Standby> StartAsync(PostgresBinaries binaries, int sourcePort, string password, string dataDirectory, int port,
        IReadOnlyDictionary<string, string> settings)
    {
        Directory.CreateDirectory(dataDirectory);
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(dataDirectory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute); // the server demands 0700
        }
        if (PostgresCluster.RunsAsServiceUser)
        {
            await RunAsync("chown", [$"{PostgresCluster.ServiceUser}:{PostgresCluster.ServiceUser}", dataDirectory], wrap: false);
        }

        await RunAsync(Path.Combine(binaries.BinDirectory, "pg_basebackup"),
            ["-D", dataDirectory, "-d", $"host=127.0.0.1 port={sourcePort} user=postgres password={password} application_name=standby{port}",
             "-X", "stream", "-R", "-c", "fast"]);
        var cluster = new PostgresCluster(dataDirectory, binaries);
        var (file, args) = cluster.ServerCommand(port, settings);
        var info = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        var process = Process.Start(info)!;
        var output = new List<string>();
        DataReceivedEventHandler keep = (_, e) =>
        {
            if (e.Data is { } line)
            {
                lock (output)
                {
                    output.Add(line);
                }
            }
        };
        process.OutputDataReceived += keep;
        process.ErrorDataReceived += keep;
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        var standby = new Standby(cluster, process, port, password);
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                await using var connection = new NpgsqlConnection(standby.ConnectionString("postgres"));
                await connection.OpenAsync();
                return standby;
            }
            catch (Exception) when (deadline.Elapsed < TimeSpan.FromSeconds(60) && !process.HasExited)
            {
                await Task.Delay(100);
            }
            catch (Exception ex)
            {
                lock (output)
                {
                    throw new InvalidOperationException($"The standby on port {port} did not start: {ex.Message}\n{string.Join('\n', output.TakeLast(20))}", ex);
                }
            }
        }
    }

    public string ConnectionString(string database)
        => $"Host=127.0.0.1;Port={Port};Username=postgres;Password={_password};Database={database};Pooling=false";


    /// <summary>Ends recovery: the standby becomes a primary that accepts writes (waits for it).</summary>
    public async Task PromoteAsync()
    {
        await using var connection = new NpgsqlConnection(ConnectionString("postgres"));
        await connection.OpenAsync();
        await using var promote = new NpgsqlCommand("SELECT pg_promote(true, 60)", connection);
        if (!(bool)(await promote.ExecuteScalarAsync())!)
        {
            throw new InvalidOperationException($"The standby on port {Port} was not promoted within 60 s.");
        }
    }

    /// <summary>Stops the server the way a crash does (no checkpoint, clients cut off).</summary>
    public Task KillAsync() => _cluster.StopAsync("immediate");

    private static async Task RunAsync(string fileName, IReadOnlyList<string> args, bool wrap = true)
    {
        var (file, arguments) = wrap ? PostgresCluster.Wrap(fileName, args) : (fileName, args);
        var info = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in arguments)
        {
            info.ArgumentList.Add(arg);
        }

        using var process = Process.Start(info)!;
        var error = process.StandardError.ReadToEndAsync();
        await process.StandardOutput.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{Path.GetFileName(fileName)} failed ({process.ExitCode}): {await error}");
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _cluster.StopAsync("fast");
        if (!_process.WaitForExit(TimeSpan.FromSeconds(30)))
        {
            _process.Kill(entireProcessTree: true);
        }

        _process.Dispose();
    }
}
