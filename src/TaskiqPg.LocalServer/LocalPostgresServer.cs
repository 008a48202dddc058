using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;

namespace TaskiqPg.LocalServer;

/// <summary>
/// A real PostgreSQL server run from the installed binaries: initdb, a free port on 127.0.0.1, password auth.
/// A throwaway server (no <see cref="LocalPostgresServerOptions.DataDirectory"/>) deletes its folder on dispose.
/// </summary>
public sealed class LocalPostgresServer : IAsyncDisposable
{
    private readonly Process _process;
    private readonly bool _ownsDirectory;
    private readonly string _rootDirectory;
    private int _disposed;

    private LocalPostgresServer(PostgresCluster cluster, Process process, int port, string username, string password,
        bool ownsDirectory, string rootDirectory)
    {
        Cluster = cluster;
        _process = process;
        Port = port;
        Username = username;
        Password = password;
        _ownsDirectory = ownsDirectory;
        _rootDirectory = rootDirectory;
    }

    /// <summary>The data folder and its commands.</summary>
    public PostgresCluster Cluster { get; }

    /// <summary>Host the server listens on.</summary>
    public string Host => "127.0.0.1";

    /// <summary>TCP port the server listens on.</summary>
    public int Port { get; }

    /// <summary>Superuser name.</summary>
    public string Username { get; }

    /// <summary>Superuser password.</summary>
    public string Password { get; }

    /// <summary>A connection string for <paramref name="database"/> as the superuser.</summary>
    /// <param name="database">The database name.</param>
    /// <returns>An Npgsql connection string (host 127.0.0.1, this server's port, superuser and password).</returns>
    public string GetConnectionString(string database = "postgres")
        => $"Host={Host};Port={Port};Username={Username};Password={Password};Database={database}";

    /// <summary>Creates (if needed) and starts a server; returns once it accepts connections.</summary>
    /// <param name="options">Data folder, port, credentials and server settings; default: a throwaway server on a free port.</param>
    /// <param name="cancellationToken">Cancels the start (the server is stopped again).</param>
    /// <returns>The running server; dispose it to stop it.</returns>
    /// <exception cref="PostgresNotFoundException">No PostgreSQL server binaries are installed.</exception>
    /// <exception cref="InvalidOperationException">initdb or the server failed (the message carries its output).</exception>
    /// <exception cref="TimeoutException">The server did not accept connections in time.</exception>
    public static async Task<LocalPostgresServer> StartAsync(LocalPostgresServerOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        options ??= new LocalPostgresServerOptions();
        var binaries = options.Binaries ?? PostgresBinaries.Find();
        var ownsDirectory = options.DataDirectory is null;
        var root = options.DataDirectory ?? Path.Combine(Path.GetTempPath(), "taskiqpg-" + Guid.NewGuid().ToString("N")[..12]);
        var cluster = new PostgresCluster(ownsDirectory ? Path.Combine(root, "data") : root, binaries);
        var password = options.Password ?? GeneratePassword();
        try
        {
            await cluster.StopStaleServerAsync(cancellationToken);
            await cluster.InitializeAsync(options.Username, password, cancellationToken);
            for (var attempt = 1; ; attempt++)
            {
                var port = options.Port != 0 ? options.Port : FreePort();
                var output = new Queue<string>();
                var process = Launch(cluster, port, options.Settings, output);
                try
                {
                    await WaitUntilReadyAsync(cluster, process, output, options.StartTimeout, cancellationToken);
                    return new LocalPostgresServer(cluster, process, port, options.Username, password, ownsDirectory, root);
                }
                catch (InvalidOperationException) when (options.Port == 0 && attempt < 3 && process.HasExited)
                {
                    process.Dispose(); // most likely the free port was taken in between: try another one
                }
            }
        }
        catch
        {
            if (ownsDirectory)
            {
                await cluster.StopAsync(CancellationToken.None);
                TryDelete(root);
            }

            throw;
        }
    }

    /// <summary>Stops the server (fast shutdown) and, for a throwaway server, deletes its folder.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }

        await Cluster.StopAsync();
        if (!_process.WaitForExit(TimeSpan.FromSeconds(30)))
        {
            _process.Kill(entireProcessTree: true);
        }

        _process.Dispose();
        if (_ownsDirectory)
        {
            TryDelete(_rootDirectory);
        }
    }

    private static Process Launch(PostgresCluster cluster, int port, IReadOnlyDictionary<string, string> settings,
        Queue<string> output)
    {
        var (file, args) = cluster.ServerCommand(port, settings);
        var info = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        var process = new Process { StartInfo = info };
        DataReceivedEventHandler keep = (_, e) =>
        {
            if (e.Data is null)
            {
                return;
            }

            lock (output)
            {
                output.Enqueue(e.Data);
                while (output.Count > 50)
                {
                    output.Dequeue();
                }
            }
        };
        process.OutputDataReceived += keep;
        process.ErrorDataReceived += keep;
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    private static async Task WaitUntilReadyAsync(PostgresCluster cluster, Process process, Queue<string> output,
        TimeSpan timeout, CancellationToken cancellationToken)
    {
        var pidFile = Path.Combine(cluster.DataDirectory, "postmaster.pid");
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (process.HasExited)
            {
                process.WaitForExit(); // flush the output readers
                string lastLines;
                lock (output)
                {
                    lastLines = string.Join(Environment.NewLine, output);
                }

                throw new InvalidOperationException(
                    $"PostgreSQL exited with code {process.ExitCode} before accepting connections. Its output:{Environment.NewLine}{lastLines}");
            }

            // postmaster.pid's 8th line turns to "ready" once the server accepts connections.
            if (File.Exists(pidFile))
            {
                try
                {
                    var lines = await File.ReadAllLinesAsync(pidFile, cancellationToken);
                    if (lines.Length >= 8 && lines[7].Trim() == "ready")
                    {
                        return;
                    }
                }
                catch (IOException)
                {
                    // being rewritten by the server
                }
            }

            if (deadline.Elapsed > timeout)
            {
                process.Kill(entireProcessTree: true);
                throw new TimeoutException($"PostgreSQL did not accept connections within {timeout.TotalSeconds:0} s.");
            }

            await Task.Delay(50, cancellationToken);
        }
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static string GeneratePassword() => Convert.ToHexString(RandomNumberGenerator.GetBytes(16)).ToLowerInvariant();

    private static void TryDelete(string folder)
    {
        try
        {
            if (Directory.Exists(folder))
            {
                Directory.Delete(folder, recursive: true);
            }
        }
        catch (IOException)
        {
            // best effort: a temp folder left behind does no harm
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
