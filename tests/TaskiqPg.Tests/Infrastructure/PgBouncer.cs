using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>
/// A real PgBouncer (Debian's <c>pgbouncer</c>, installed by <c>.ci/run</c>) in transaction mode in front of a test
/// database: started on a free port in a temp folder (as user postgres when the tests run as root, which PgBouncer
/// refuses), stopped and deleted on dispose.
/// </summary>
public sealed class PgBouncer : IAsyncDisposable
{
    private readonly Process _process;
    private readonly string _folder;

    private PgBouncer(Process process, string folder, string connectionString)
    {
        _process = process;
        _folder = folder;
        ConnectionString = connectionString;
    }

    /// <summary>A connection string to the database through the pooler.</summary>
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

        var port = FreePort();
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
        var process = Process.Start(info)!;
        var through = new NpgsqlConnectionStringBuilder(databaseConnectionString) { Host = "127.0.0.1", Port = port, Pooling = true }.ConnectionString;
        var bouncer = new PgBouncer(process, folder, through);
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (true)
        {
            try
            {
                await using var connection = new NpgsqlConnection(through);
                await connection.OpenAsync();
                return bouncer;
            }
            catch (Exception) when (DateTime.UtcNow < deadline && !process.HasExited)
            {
                await Task.Delay(100);
            }
            catch (Exception ex)
            {
                var log = File.Exists(Path.Combine(folder, "pgbouncer.log")) ? await File.ReadAllTextAsync(Path.Combine(folder, "pgbouncer.log")) : "";
                await bouncer.DisposeAsync();
                throw new InvalidOperationException($"pgbouncer did not accept connections: {ex.Message}\n{log}", ex);
            }
        }
    }

    private static int FreePort()
    {
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        var port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        return port;
    }

    public async ValueTask DisposeAsync()
    {
        NpgsqlConnection.ClearAllPools();
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }

        _process.Dispose();
        try
        {
            Directory.Delete(_folder, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
