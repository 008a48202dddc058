using System.Diagnostics;
using System.Globalization;
using Npgsql;

namespace TaskiqPg.Faults;

/// <summary>
/// A real PgBouncer (Debian's <c>pgbouncer</c>, installed by <c>.ci/run</c>) in transaction mode in front of a test
/// database: started on a free port in a temp folder (as user postgres when the tests run as root, which PgBouncer
/// refuses), stopped and deleted on dispose.
/// </summary>
public sealed class PgBouncer : IAsyncDisposable
{
    private readonly ProcessStartInfo _start;
    private readonly string _folder;
    private readonly CancellationTokenSource _sampling = new();
    private Process _process;
    private Task _sampler = Task.CompletedTask;

    private PgBouncer(ProcessStartInfo start, string folder, string connectionString)
    {
        _start = start;
        _process = Process.Start(start)!;
        _folder = folder;
        ConnectionString = connectionString;
    }

    /// <summary>A connection string to the database through the pooler (pooled, with <c>No Reset On Close=true</c>).</summary>
    public string ConnectionString { get; }

    public static async Task<PgBouncer> StartAsync(string databaseConnectionString, int serverConnections)
    {
        var binary = new[] { "/usr/sbin/pgbouncer", "/usr/bin/pgbouncer" }.FirstOrDefault(File.Exists)
            ?? throw new InvalidOperationException("pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run installs it).");
        var server = new NpgsqlConnectionStringBuilder(databaseConnectionString);
        var folder = Path.Combine(Path.GetTempPath(), "taskiqpg-pgbouncer-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(folder);
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(folder, (UnixFileMode)0x1FF); // the postgres user writes its log here
        }

        var port = Ports.Free();
        var config = Path.Combine(folder, "pgbouncer.ini");
        await File.WriteAllTextAsync(config, $"""
            [databases]
            * = host={server.Host} port={server.Port} user={server.Username} password={server.Password}
            [pgbouncer]
            listen_addr = 127.0.0.1
            listen_port = {port}
            unix_socket_dir =
            auth_type = any
            pool_mode = transaction
            default_pool_size = {serverConnections}
            max_client_conn = 1000
            ignore_startup_parameters = extra_float_digits,options
            logfile = {Path.Combine(folder, "pgbouncer.log")}
            """);
        var info = new ProcessStartInfo(binary) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        if (Environment.UserName == "root")
        {
            info.ArgumentList.Add("-u");
            info.ArgumentList.Add("postgres");
        }

        info.ArgumentList.Add(config);
        // No Reset On Close: what a transaction-mode pooler needs (PostgresBrokerOptions.PrepareStatements explains why).
        var through = new NpgsqlConnectionStringBuilder(databaseConnectionString) { Host = "127.0.0.1", Port = port, Pooling = true, NoResetOnClose = true }
            .ConnectionString;
        var bouncer = new PgBouncer(info, folder, through);
        try
        {
            await bouncer.WaitUntilAcceptingAsync();
            if (LogDirectory is not null)
            {
                bouncer._sampler = bouncer.SamplePoolsAsync(port);
            }

            return bouncer;
        }
        catch
        {
            await bouncer.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// Kills the pooler (every client and server connection through it drops at once, as in a crash or a redeploy) and
    /// starts it again on the same port; returns once it accepts connections.
    /// </summary>
    public async Task RestartAsync()
    {
        await StopProcessAsync();
        _process = Process.Start(_start)!;
        await WaitUntilAcceptingAsync();
    }

    private async Task WaitUntilAcceptingAsync()
    {
        // A fresh connection string each try: no pool holds a connection from before.
        var probe = new NpgsqlConnectionStringBuilder(ConnectionString) { Pooling = false }.ConnectionString;
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (true)
        {
            try
            {
                await using var connection = new NpgsqlConnection(probe);
                await connection.OpenAsync();
                return;
            }
            catch (Exception) when (DateTime.UtcNow < deadline && !_process.HasExited)
            {
                await Task.Delay(100);
            }
            catch (Exception ex)
            {
                var logFile = Path.Combine(_folder, "pgbouncer.log");
                var log = File.Exists(logFile) ? await File.ReadAllTextAsync(logFile) : "";
                throw new InvalidOperationException($"pgbouncer did not accept connections: {ex.Message}\n{log}", ex);
            }
        }
    }

    /// <summary><c>TASKIQPG_FAULTS_LOG_DIR</c>: where the pooler's log and its sampled pools go (to follow one run).</summary>
    private static string? LogDirectory => Environment.GetEnvironmentVariable("TASKIQPG_FAULTS_LOG_DIR") is { Length: > 0 } d ? d : null;

    /// <summary>Every second, the admin console's pools, clients and servers (psql: the console speaks only the simple protocol).</summary>
    private async Task SamplePoolsAsync(int port)
    {
        var psql = Path.Combine(TaskiqPg.LocalServer.PostgresBinaries.Find().BinDirectory, "psql");
        var output = Path.Combine(Directory.CreateDirectory(LogDirectory!).FullName, "pgbouncer-pools.log");
        while (!_sampling.IsCancellationRequested)
        {
            var info = new ProcessStartInfo(psql) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var arg in new[] { "-h", "127.0.0.1", "-p", port.ToString(CultureInfo.InvariantCulture), "-U", "postgres", "-d", "pgbouncer", "-X",
                         "-c", "SHOW POOLS", "-c", "SHOW CLIENTS", "-c", "SHOW SERVERS" })
            {
                info.ArgumentList.Add(arg);
            }

            using var process = Process.Start(info)!;
            var text = await process.StandardOutput.ReadToEndAsync() + await process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync();
            await File.AppendAllTextAsync(output, $"--- {DateTime.UtcNow:HH:mm:ss.fff}\n{text}");
            try
            {
                await Task.Delay(1000, _sampling.Token);
            }
            catch (OperationCanceledException)
            {
            }
        }
    }

    private async Task StopProcessAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }

        _process.Dispose();
    }


    public async ValueTask DisposeAsync()
    {
        NpgsqlConnection.ClearAllPools();
        await _sampling.CancelAsync();
        await _sampler;
        await StopProcessAsync();
        if (LogDirectory is not null && File.Exists(Path.Combine(_folder, "pgbouncer.log")))
        {
            File.Copy(Path.Combine(_folder, "pgbouncer.log"), Path.Combine(LogDirectory, "pgbouncer.log"), overwrite: true);
        }

        try
        {
            Directory.Delete(_folder, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
