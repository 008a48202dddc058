using System.Net;
using System.Net.Sockets;
using System.Text;

namespace TaskiqPg.Tests;

/// <summary>
/// Property test: hundreds of generated hostile names (quotes, semicolons, comments, whitespace, backslashes, NUL,
/// non-ASCII letters, 64+ bytes) for every identifier option of every component → a clear ArgumentException naming
/// the option, and not one connection attempt: the components point at a TCP listener of the test that counts them.
/// </summary>
public sealed class HostileNameFuzzTests : IDisposable
{
    private static readonly string[] Fragments =
        ["\"", "'", ";", "--", "/*", "*/", " ", "\t", "\n", "\\", "\0", "$1", "%", ")", "(", "ä", "名", "😀", "drop table x", "a.b", "-"];

    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private int _connections;

    public HostileNameFuzzTests()
    {
        _listener.Start();
        _ = CountConnectionsAsync();
    }

    private string ConnectionString => $"Host=127.0.0.1;Port={((IPEndPoint)_listener.LocalEndpoint).Port};Username=x;Password=secret;Timeout=2";

    public static IEnumerable<string> HostileNames(int seed, int count)
    {
        var random = new Random(seed);
        for (var i = 0; i < count; i++)
        {
            var name = new StringBuilder(random.Next(2) == 0 ? "t" : "");
            var parts = random.Next(1, 4);
            for (var p = 0; p < parts; p++)
            {
                name.Append(Fragments[random.Next(Fragments.Length)]);
                if (random.Next(2) == 0)
                {
                    name.Append("x");
                }
            }

            yield return name.ToString();
        }

        yield return new string('a', 64); // one byte too long
        yield return new string('é', 32); // 32 characters, 64 bytes in UTF-8
        yield return "";
    }

    [Fact]
    public async Task Every_hostile_name_for_every_option_is_refused_before_any_connection()
    {
        var constructors = new (string Option, Func<string, IAsyncDisposable> Create)[]
        {
            ("Schema", n => new PostgresBroker(ConnectionString, new PostgresBrokerOptions { Schema = n })),
            ("MessagesTable", n => new PostgresBroker(ConnectionString, new PostgresBrokerOptions { MessagesTable = n })),
            ("Channel", n => new PostgresBroker(ConnectionString, new PostgresBrokerOptions { Channel = n })),
            ("Queue", n => new PostgresBroker(ConnectionString, new PostgresBrokerOptions { Queue = n })),
            ("Schema", n => new PostgresResultBackend(ConnectionString, new PostgresResultBackendOptions { Schema = n })),
            ("ResultsTable", n => new PostgresResultBackend(ConnectionString, new PostgresResultBackendOptions { ResultsTable = n })),
            ("Channel", n => new PostgresResultBackend(ConnectionString, new PostgresResultBackendOptions { Channel = n })),
            ("Schema", n => new PostgresScheduleSource(ConnectionString, new PostgresScheduleSourceOptions { Schema = n })),
            ("SchedulesTable", n => new PostgresScheduleSource(ConnectionString, new PostgresScheduleSourceOptions { SchedulesTable = n })),
            ("FiresTable", n => new PostgresScheduleSource(ConnectionString, new PostgresScheduleSourceOptions { FiresTable = n })),
            ("Channel", n => new PostgresScheduleSource(ConnectionString, new PostgresScheduleSourceOptions { Channel = n })),
        };
        var names = HostileNames(seed: 20261124, count: 300).ToArray();
        var refused = 0;
        foreach (var name in names)
        {
            foreach (var (option, create) in constructors)
            {
                var error = Record.Exception(() => create(name)) as ArgumentException;
                Assert.True(error is not null, $"{option} = '{name}' was not refused");
                Assert.Equal(option, error.ParamName);
                Assert.DoesNotContain("secret", error.Message, StringComparison.Ordinal);
                refused++;
            }
        }

        Assert.Equal(names.Length * constructors.Length, refused);
        Assert.Equal(0, Volatile.Read(ref _connections)); // not one connection attempt for any hostile name

        // The counter does count: a valid name on the same dead-end server connects once used (and fails there).
        await using (var broker = new PostgresBroker(ConnectionString, new PostgresBrokerOptions { Queue = "fine" }))
        {
            await Assert.ThrowsAnyAsync<Exception>(() => broker.StartAsync());
        }

        await Eventually.TrueAsync(() => Task.FromResult(Volatile.Read(ref _connections) >= 1), TimeSpan.FromSeconds(10),
            "the valid broker's connection reached the listener");
    }

    public void Dispose() => _listener.Stop();

    private async Task CountConnectionsAsync()
    {
        try
        {
            while (true)
            {
                var client = await _listener.AcceptTcpClientAsync();
                Interlocked.Increment(ref _connections);
                client.Dispose(); // not a PostgreSQL server: the connection attempt fails at once
            }
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // listener stopped
        }
    }
}
