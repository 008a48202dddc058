namespace TaskiqPg;

/// <summary>One versioned step of a component's schema.</summary>
/// <param name="Sql">The statements. Idempotent (<c>IF NOT EXISTS</c>): a step may meet a half-applied earlier attempt.</param>
/// <param name="BreaksOlderCode">
/// Code that knows fewer steps cannot run against the schema once this step is applied (a dropped column, a changed
/// constraint). Steps that only add (indexes, nullable columns) leave older code running during a rolling deploy.
/// </param>
/// <param name="ConcurrentIndex">
/// Set for a step that is one <c>CREATE INDEX CONCURRENTLY</c> of this (unquoted) index name: it runs outside a
/// transaction, so building it on a large live table blocks no kick and no claim. An invalid index of that name (left
/// by a build that was interrupted) is dropped first.
/// </param>
internal sealed record MigrationStep(string Sql, bool BreaksOlderCode = false, string? ConcurrentIndex = null)
{
    public static implicit operator MigrationStep(string sql) => new(sql);
}
