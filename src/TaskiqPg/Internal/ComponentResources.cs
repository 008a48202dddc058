using Npgsql;

namespace TaskiqPg.Internal;

/// <summary>
/// What broker, result backend and schedule source each hold: the data source (disposed only when owned: a borrowed
/// pool stays the caller's), a LISTEN connection and a start gate. Disposing releases exactly what the component owns.
/// </summary>
internal sealed class ComponentResources : IAsyncDisposable
{
    private readonly bool _ownsDataSource;
    private int _disposed;

    public ComponentResources(NpgsqlDataSource dataSource, bool ownsDataSource, NotificationListener listener)
    {
        DataSource = dataSource;
        _ownsDataSource = ownsDataSource;
        Listener = listener;
    }

    public NpgsqlDataSource DataSource { get; }

    public NotificationListener Listener { get; }

    public StartGate Start { get; } = new();

    /// <summary>Runs <paramref name="validate"/>; if it throws, an owned data source is disposed before the exception leaves the constructor.</summary>
    public static void ValidateOrDispose(NpgsqlDataSource dataSource, bool ownsDataSource, Action validate)
    {
        ArgumentNullException.ThrowIfNull(dataSource);
        try
        {
            validate();
        }
        catch when (ownsDataSource)
        {
            dataSource.Dispose();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }

        await Listener.DisposeAsync();
        if (_ownsDataSource)
        {
            await DataSource.DisposeAsync();
        }

        Start.Dispose();
    }
}
