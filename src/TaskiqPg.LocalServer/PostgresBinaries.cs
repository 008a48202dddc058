using System.Diagnostics;

namespace TaskiqPg.LocalServer;

/// <summary>Locates an installed PostgreSQL server (the folder holding <c>initdb</c>, <c>postgres</c> and <c>pg_ctl</c>).</summary>
public sealed class PostgresBinaries
{
    /// <summary>Environment variable that, when set, names the folder holding the server binaries.</summary>
    public const string BinDirEnvironmentVariable = "TASKIQPG_PG_BIN";

    private PostgresBinaries(string binDirectory) => BinDirectory = binDirectory;

    /// <summary>The folder with <c>initdb</c>, <c>postgres</c> and <c>pg_ctl</c>.</summary>
    public string BinDirectory { get; }

    /// <summary>Full path of <c>initdb</c>.</summary>
    public string InitDb => Path.Combine(BinDirectory, "initdb");

    /// <summary>Full path of <c>postgres</c>.</summary>
    public string Postgres => Path.Combine(BinDirectory, "postgres");

    /// <summary>Full path of <c>pg_ctl</c>.</summary>
    public string PgCtl => Path.Combine(BinDirectory, "pg_ctl");

    /// <summary>
    /// Finds the server binaries: <c>$TASKIQPG_PG_BIN</c>, <c>pg_config --bindir</c>, the <c>PATH</c>,
    /// <c>/usr/lib/postgresql/*/bin</c> (newest first) and a few common install folders.
    /// </summary>
    /// <exception cref="PostgresNotFoundException">No folder holds all of initdb, postgres and pg_ctl.</exception>
    /// <returns>The folder found and its programs.</returns>
    public static PostgresBinaries Find()
    {
        var looked = new List<string>();
        foreach (var candidate in Candidates())
        {
            if (string.IsNullOrWhiteSpace(candidate) || looked.Contains(candidate))
            {
                continue;
            }

            looked.Add(candidate);
            if (File.Exists(Path.Combine(candidate, "initdb")) && File.Exists(Path.Combine(candidate, "postgres"))
                && File.Exists(Path.Combine(candidate, "pg_ctl")))
            {
                return new PostgresBinaries(candidate);
            }
        }

        throw new PostgresNotFoundException(looked);
    }

    private static IEnumerable<string> Candidates()
    {
        yield return Environment.GetEnvironmentVariable(BinDirEnvironmentVariable) ?? "";
        yield return PgConfigBinDir() ?? "";
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator))
        {
            yield return dir;
        }

        foreach (var root in new[] { "/usr/lib/postgresql", "/usr/pgsql", "/opt/homebrew/opt" })
        {
            if (!Directory.Exists(root))
            {
                continue;
            }

            var versions = Directory.GetDirectories(root)
                .OrderByDescending(d => VersionOf(Path.GetFileName(d)));
            foreach (var version in versions)
            {
                yield return Path.Combine(version, "bin");
            }
        }

        yield return "/usr/local/pgsql/bin";
        yield return "/usr/local/bin";
    }

    private static int VersionOf(string folderName)
    {
        var digits = new string(folderName.SkipWhile(c => !char.IsDigit(c)).TakeWhile(char.IsDigit).ToArray());
        return int.TryParse(digits, out var v) ? v : 0;
    }

    private static string? PgConfigBinDir()
    {
        try
        {
            using var process = Process.Start(new ProcessStartInfo("pg_config", "--bindir")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            });
            if (process is null)
            {
                return null;
            }

            var output = process.StandardOutput.ReadToEnd().Trim();
            process.WaitForExit(5000);
            return process.ExitCode == 0 ? output : null;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null; // pg_config is not installed
        }
    }
}
