using System.Diagnostics;
using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>
/// Counts the statements of one data source whose SQL matches: Npgsql calls a data source's tracing filters for every
/// command and batch while anything listens to its activities, so a listener that samples nothing and filters that
/// count and return false observe without recording anything.
/// </summary>
public sealed class CommandCounter : IDisposable
{
    private readonly ActivityListener _listener;
    private readonly Func<string, bool> _matches;
    private int _count;

    public CommandCounter(Func<string, bool> matches)
    {
        _matches = matches;
        _listener = new ActivityListener
        {
            ShouldListenTo = source => source.Name == "Npgsql",
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.None,
        };
        ActivitySource.AddActivityListener(_listener);
    }

    /// <summary>Matching statements run so far (a batch counts once).</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>A data source whose statements are counted; the caller disposes it.</summary>
    public NpgsqlDataSource CreateDataSource(string connectionString)
    {
        var builder = new NpgsqlDataSourceBuilder(connectionString);
        builder.ConfigureTracing(t => t
            .ConfigureCommandFilter(command => Counted(command.CommandText))
            .ConfigureBatchFilter(batch => Counted(batch.BatchCommands.Cast<NpgsqlBatchCommand>().Select(c => c.CommandText).ToArray())));
        return builder.Build();
    }

    private bool Counted(params string[] statements)
    {
        if (statements.Any(_matches))
        {
            Interlocked.Increment(ref _count);
        }

        return false;
    }

    public void Dispose() => _listener.Dispose();
}
