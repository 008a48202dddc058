namespace TaskiqPg.Tests;

/// <summary>
/// Test classes that start many processes of their own (benchmark and fault-suite smoke runs): they run after the
/// parallel classes, one at a time, so their timing-sensitive scenarios do not share 2 cores with everything else.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class RunsAlone
{
    public const string Name = "runs alone";
}
