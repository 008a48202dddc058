using System.Collections.Concurrent;

namespace TaskiqPg;

/// <summary>
/// The claims a worker holds, shared by its loops: the claim loop adds them, the executors start and finish them, the
/// completion flusher removes them once their outcome is written (or gives them up when it cannot be), and the lease
/// renewer renews every one still held. Keyed by claim (<see cref="LeaseRef"/>), so a row lost and claimed again is
/// another entry.
/// </summary>
internal sealed class HeldClaims
{
    private readonly ConcurrentDictionary<LeaseRef, HeldTask> _held = new();
    private readonly ConcurrentDictionary<LeaseRef, long> _givenUp = new(); // claim → when its outcome was given up (ticks)
    private int _claimInFlight; // 1 from sending a claim until its rows are added

    /// <summary>
    /// True while a claim is in flight: its rows may be leased to this worker before they are added here, so the
    /// renewal then covers every row leased to the worker.
    /// </summary>
    public bool ClaimInFlight => Volatile.Read(ref _claimInFlight) == 1;

    public void BeginClaim() => Volatile.Write(ref _claimInFlight, 1);

    public void EndClaim() => Volatile.Write(ref _claimInFlight, 0);

    public void Add(ClaimedTask task) => _held[task.Lease] = new HeldTask(task);

    public bool TryGet(LeaseRef lease, out HeldTask held) => _held.TryGetValue(lease, out held!);

    public bool Contains(LeaseRef lease) => _held.ContainsKey(lease);

    /// <returns>True when the claim was held.</returns>
    public bool Remove(LeaseRef lease) => _held.TryRemove(lease, out _);

    /// <summary>The claims whose lease is not known to be lost: what a renewal round renews.</summary>
    public HeldTask[] NotLost() => _held.Values.Where(h => !h.LeaseLost).ToArray();

    /// <summary>
    /// The outcome of this claim could not be written: it is no longer held, but its row stays leased to this worker
    /// until rescued, so it must not be taken for an orphan meanwhile.
    /// </summary>
    public void GiveUp(LeaseRef lease)
    {
        _givenUp[lease] = Environment.TickCount64;
        _held.TryRemove(lease, out _);
    }

    public LeaseRef[] GivenUp() => _givenUp.Keys.ToArray();

    /// <summary>Drops given-up claims older than <paramref name="age"/>: their leases have expired and they were rescued.</summary>
    public void ForgetGivenUpOlderThan(TimeSpan age)
    {
        var before = Environment.TickCount64 - (long)age.TotalMilliseconds;
        foreach (var lease in _givenUp.Where(g => g.Value < before).Select(g => g.Key).ToArray())
        {
            _givenUp.TryRemove(lease, out _);
        }
    }

    /// <summary>Rows this worker knows it holds or gave up: everything else leased to it is an orphan.</summary>
    public long[] KnownClaimIds() => [.. _held.Keys.Select(k => k.Id), .. _givenUp.Keys.Select(k => k.Id)];
}
