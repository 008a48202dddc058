using Npgsql;
using TaskiqPg.Faults;
using TaskiqPg.Internal;

namespace TaskiqPg.Tests;

/// <summary>Which failures the worker's loops retry (transient) and which split a batch as refused content.</summary>
public sealed class TransientErrorTests
{
    [Fact]
    public async Task No_reachable_host_of_a_multi_host_connection_string_is_a_connection_failure()
    {
        // Mid-failover every host can be down or not yet writable: Npgsql then throws "Unable to connect to a suitable
        // host" (IsTransient false) around an AggregateException of the per-host errors. Taken for refused content, it
        // made the flusher give outcomes up, and the tasks ran again once their leases expired.
        var (first, second) = (Ports.Free(), Ports.Free());
        await using var dataSource = NpgsqlDataSource.Create(
            $"Host=127.0.0.1:{first},127.0.0.1:{second};Username=x;Password=y;Target Session Attributes=read-write;Timeout=2");

        var error = await Assert.ThrowsAnyAsync<NpgsqlException>(async () => await dataSource.OpenConnectionAsync());

        Assert.IsType<AggregateException>(error.InnerException);
        Assert.True(TransientErrors.IsConnectionFailure(error));
        Assert.True(TransientErrors.IsTransient(error));

        // Within Host Recheck Seconds both hosts are remembered as offline: Npgsql tries none and throws a bare
        // "No suitable host was found." (no inner exception) — the form a worker met in the failover scenario.
        var remembered = await Assert.ThrowsAnyAsync<NpgsqlException>(async () => await dataSource.OpenConnectionAsync());
        Assert.Null(remembered.InnerException);
        Assert.True(TransientErrors.IsConnectionFailure(remembered), remembered.Message);
        Assert.True(TransientErrors.IsTransient(remembered));
    }

    [Fact]
    public async Task A_refused_connection_to_one_host_is_a_connection_failure_and_bad_data_is_not()
    {
        await using var dataSource = NpgsqlDataSource.Create($"Host=127.0.0.1;Port={Ports.Free()};Username=x;Password=y;Timeout=2");
        var refused = await Assert.ThrowsAnyAsync<NpgsqlException>(async () => await dataSource.OpenConnectionAsync());
        Assert.True(TransientErrors.IsTransient(refused));

        Assert.False(TransientErrors.IsTransient(new InvalidOperationException("not a database failure")));
        Assert.False(TransientErrors.IsTransientSqlState("22P02")); // invalid text
        Assert.True(TransientErrors.IsTransientSqlState("40P01")); // deadlock
    }
}
