using Npgsql;
using TaskiqPg.LocalServer;

namespace TaskiqPg.Tests;

public sealed class LocalServerTests
{
    [Fact]
    public void Missing_binaries_raise_an_error_that_says_where_it_looked_and_what_to_install()
    {
        var error = new PostgresNotFoundException(["/nowhere/bin", "/usr/lib/postgresql/*/bin"]);

        Assert.Contains("/nowhere/bin", error.Message);
        Assert.Contains("apt-get install postgresql", error.Message);
        Assert.Contains(PostgresBinaries.BinDirEnvironmentVariable, error.Message);
    }

    [Fact]
    public async Task Kept_data_folder_survives_a_restart_and_a_stale_server_is_stopped_first()
    {
        if (!string.IsNullOrEmpty(Environment.GetEnvironmentVariable(PostgresServerFixture.ConnectionVariable)))
        {
            Assert.Skip("An external server is configured; no local binaries are assumed.");
        }

        var folder = Path.Combine(Path.GetTempPath(), "taskiqpg-kept-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            var options = new LocalPostgresServerOptions { DataDirectory = folder, Password = "s3cret-pw" };
            var first = await LocalPostgresServer.StartAsync(options);
            await using (var connection = new NpgsqlConnection(first.GetConnectionString()))
            {
                await connection.OpenAsync();
                await using var create = new NpgsqlCommand("CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)", connection);
                await create.ExecuteNonQueryAsync();
            }

            // Simulate an AppHost that died without stopping its server: start again on the same folder.
            await using var second = await LocalPostgresServer.StartAsync(options);
            await using (var connection = new NpgsqlConnection(second.GetConnectionString()))
            {
                await connection.OpenAsync();
                await using var read = new NpgsqlCommand("SELECT v FROM kept", connection);
                Assert.Equal(7, await read.ExecuteScalarAsync());
            }

            NpgsqlConnection.ClearAllPools();
            await first.DisposeAsync(); // its server was already replaced; disposing must not hurt the second
        }
        finally
        {
            if (Directory.Exists(folder))
            {
                Directory.Delete(folder, recursive: true);
            }
        }
    }
}
