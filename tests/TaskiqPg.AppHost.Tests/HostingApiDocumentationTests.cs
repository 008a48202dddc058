using TaskiqPg.Tests;

namespace TaskiqPg.AppHost.Tests;

/// <summary>The AppHost package's public API documents its parameters and results (see <see cref="PublicApiDocumentation"/>).</summary>
public sealed class HostingApiDocumentationTests
{
    [Fact]
    public void Public_members_document_their_parameters_and_results()
        => PublicApiDocumentation.AssertComplete("TaskiqPg.Aspire.Hosting");
}
