using System.Diagnostics;
using System.Text;

namespace TaskiqPg.LocalServer;

/// <summary>
/// A PostgreSQL data folder and the commands that initialise, run and stop it. PostgreSQL refuses to run as root,
/// so when this process is privileged every command runs as the <c>postgres</c> OS user through <c>runuser</c>
/// and the folder is handed to that user. Used by <see cref="LocalPostgresServer"/> (tests) and by the AppHost,
/// which runs <see cref="ServerCommand"/> as an executable resource.
/// </summary>
public sealed class PostgresCluster
{
    /// <summary>OS user that runs the server when this process is root.</summary>
    public const string ServiceUser = "postgres";

    /// <summary>Creates a handle for the given data folder (nothing is touched until a method runs).</summary>
    /// <param name="dataDirectory">The cluster's data folder.</param>
    /// <param name="binaries">The server binaries to run.</param>
    public PostgresCluster(string dataDirectory, PostgresBinaries binaries)
    {
        DataDirectory = Path.GetFullPath(dataDirectory);
        Binaries = binaries;
    }

    /// <summary>The data folder (also the unix-socket folder).</summary>
    public string DataDirectory { get; }

    /// <summary>The server binaries.</summary>
    public PostgresBinaries Binaries { get; }

    /// <summary>True when commands run as <see cref="ServiceUser"/> because this process is root.</summary>
    public static bool RunsAsServiceUser => Environment.IsPrivilegedProcess;

    /// <summary>True when the folder already holds an initialised cluster.</summary>
    public bool IsInitialized => File.Exists(Path.Combine(DataDirectory, "PG_VERSION"));

    /// <summary>Runs initdb (scram-sha-256 auth, UTF8) unless the folder already holds a cluster.</summary>
    /// <param name="username">The superuser name.</param>
    /// <param name="password">The superuser password.</param>
    /// <param name="cancellationToken">Cancels the wait for initdb.</param>
    /// <returns>Completes once the cluster exists.</returns>
    /// <exception cref="InvalidOperationException">initdb failed (the message carries its output).</exception>
    public async Task InitializeAsync(string username, string password, CancellationToken cancellationToken = default)
    {
        if (IsInitialized)
        {
            return;
        }

        Directory.CreateDirectory(DataDirectory);
        var passwordFile = Path.Combine(Path.GetDirectoryName(DataDirectory)!, $".pwfile-{Guid.NewGuid():N}");
        await File.WriteAllTextAsync(passwordFile, password, cancellationToken);
        try
        {
            await GiveToServiceUserAsync(passwordFile, cancellationToken);
            await GiveToServiceUserAsync(DataDirectory, cancellationToken);
            await RunToEndAsync(Binaries.InitDb,
                ["-D", DataDirectory, "-U", username, "--auth=scram-sha-256", $"--pwfile={passwordFile}",
                 "-E", "UTF8", "--no-locale", "--no-sync"], cancellationToken);
        }
        finally
        {
            File.Delete(passwordFile);
        }
    }

    /// <summary>
    /// Stops a server left running on this folder by an earlier run (a live <c>postmaster.pid</c>), so a quick
    /// restart does not fail with "lock file already exists".
    /// </summary>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>Completes once no server runs on this folder.</returns>
    public async Task StopStaleServerAsync(CancellationToken cancellationToken = default)
    {
        var pidFile = Path.Combine(DataDirectory, "postmaster.pid");
        if (!File.Exists(pidFile))
        {
            return;
        }

        var firstLine = (await File.ReadAllLinesAsync(pidFile, cancellationToken)).FirstOrDefault();
        if (!int.TryParse(firstLine, out var pid) || !IsAlive(pid))
        {
            return; // stale file of a dead server: postgres removes it itself on start
        }

        await StopAsync(cancellationToken);
    }

    /// <summary>
    /// The command that runs the server in the foreground (file name and arguments). The port comes from
    /// <paramref name="port"/>, or from the <c>PGPORT</c> environment variable when null. A small shell wrapper turns
    /// SIGTERM (what process supervisors such as Aspire's DCP send) into PostgreSQL's fast shutdown, so a stop is
    /// prompt instead of waiting for every client to disconnect.
    /// </summary>
    /// <param name="port">The port; null to read <c>PGPORT</c> from the environment.</param>
    /// <param name="settings">Server settings passed as <c>-c name=value</c>.</param>
    /// <returns>The file name and arguments to start.</returns>
    public (string FileName, IReadOnlyList<string> Arguments) ServerCommand(int? port, IReadOnlyDictionary<string, string> settings)
    {
        var args = new List<string> { "-D", DataDirectory, "-k", DataDirectory, "-c", "listen_addresses=127.0.0.1" };
        if (port is { } p)
        {
            args.AddRange(["-p", p.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        }

        foreach (var (name, value) in settings)
        {
            args.AddRange(["-c", $"{name}={value}"]);
        }

        const string script = "\"$0\" \"$@\" & pid=$!; trap 'kill -INT $pid' TERM INT; wait $pid; trap - TERM INT; wait $pid";
        return Wrap("/bin/sh", ["-c", script, Binaries.Postgres, .. args]);
    }

    /// <summary>
    /// Picks the data folder: <paramref name="preferred"/>, unless this process is root and the <c>postgres</c> user
    /// cannot reach it (e.g. a checkout under <c>/root</c>); then a folder under <c>/var/tmp</c> derived from it.
    /// </summary>
    /// <param name="preferred">The folder the caller would like.</param>
    /// <returns>The folder to use.</returns>
    public static string ResolveDataDirectory(string preferred)
    {
        var full = Path.GetFullPath(preferred);
        if (!RunsAsServiceUser || ServiceUserCanReach(Path.GetDirectoryName(full)!))
        {
            return full;
        }

        var hash = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(full)))[..12].ToLowerInvariant();
        return Path.Combine("/var/tmp", "taskiqpg-" + hash, Path.GetFileName(full));
    }

    private static bool ServiceUserCanReach(string folder)
    {
        // Walk up to the first existing ancestor: the folders below it are created by us and handed over.
        while (!Directory.Exists(folder))
        {
            folder = Path.GetDirectoryName(folder) ?? "/";
        }

        var (file, args) = Wrap("test", ["-x", folder]);
        var info = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardError = true };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        using var process = Process.Start(info)!;
        process.WaitForExit();
        return process.ExitCode == 0;
    }

    /// <summary>Stops the server on this folder with <c>pg_ctl stop -m fast</c> and waits for it to exit.</summary>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>Completes once the server has exited.</returns>
    public Task StopAsync(CancellationToken cancellationToken = default) => StopAsync("fast", cancellationToken);

    /// <summary>
    /// Stops the server on this folder with <c>pg_ctl stop -m <paramref name="mode"/></c> (<c>smart</c>, <c>fast</c> or
    /// <c>immediate</c>: the last one is a crash as far as clients are concerned; the next start recovers from WAL).
    /// </summary>
    /// <param name="mode"><c>smart</c>, <c>fast</c> or <c>immediate</c>.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>Completes once the server has exited.</returns>
    /// <exception cref="ArgumentException"><paramref name="mode"/> is not one of the three.</exception>
    public async Task StopAsync(string mode, CancellationToken cancellationToken = default)
    {
        if (mode is not ("smart" or "fast" or "immediate"))
        {
            throw new ArgumentException($"Unknown shutdown mode '{mode}': use smart, fast or immediate.", nameof(mode));
        }

        if (!File.Exists(Path.Combine(DataDirectory, "postmaster.pid")))
        {
            return;
        }

        await RunToEndAsync(Binaries.PgCtl, ["stop", "-D", DataDirectory, "-m", mode, "-w", "-t", "60"], cancellationToken,
            tolerateFailure: true);
    }

    /// <summary>
    /// Runs <paramref name="fileName"/> as <see cref="ServiceUser"/> when this process is root. <c>setpriv</c> execs the
    /// program in place (signals reach it directly); <c>runuser</c> is the fallback where setpriv is missing.
    /// </summary>
    /// <param name="fileName">The program.</param>
    /// <param name="args">Its arguments.</param>
    /// <returns>The program and arguments to start: unchanged, or wrapped to run as <see cref="ServiceUser"/>.</returns>
    public static (string FileName, IReadOnlyList<string> Arguments) Wrap(string fileName, IReadOnlyList<string> args)
    {
        if (!RunsAsServiceUser)
        {
            return (fileName, args);
        }

        return File.Exists("/usr/bin/setpriv") || File.Exists("/bin/setpriv")
            ? ("setpriv", [$"--reuid={ServiceUser}", $"--regid={ServiceUser}", "--init-groups", "--", fileName, .. args])
            : ("runuser", ["-u", ServiceUser, "--", fileName, .. args]);
    }

    private static async Task GiveToServiceUserAsync(string path, CancellationToken cancellationToken)
    {
        if (RunsAsServiceUser)
        {
            await RunToEndAsync("chown", ["-R", $"{ServiceUser}:{ServiceUser}", path], cancellationToken, wrap: false);
        }
    }

    private static bool IsAlive(int pid)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }

    private static async Task RunToEndAsync(string fileName, IReadOnlyList<string> args, CancellationToken cancellationToken,
        bool wrap = true, bool tolerateFailure = false)
    {
        var (file, arguments) = wrap ? Wrap(fileName, args) : (fileName, args);
        var info = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in arguments)
        {
            info.ArgumentList.Add(a);
        }

        using var process = Process.Start(info) ?? throw new InvalidOperationException($"Could not start '{file}'.");
        var output = new StringBuilder();
        var stdout = process.StandardOutput.ReadToEndAsync(cancellationToken);
        var stderr = process.StandardError.ReadToEndAsync(cancellationToken);
        await process.WaitForExitAsync(cancellationToken);
        output.Append(await stdout).Append(await stderr);
        if (process.ExitCode != 0 && !tolerateFailure)
        {
            throw new InvalidOperationException(
                $"'{Path.GetFileName(fileName)}' exited with code {process.ExitCode}: {output.ToString().Trim()}");
        }
    }
}
