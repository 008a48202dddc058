using System.Xml.Linq;

namespace TaskiqPg.Tests;

public sealed class PublicApiDocumentationTests
{
    public static TheoryData<string> Packages => new() { "TaskiqPg", "TaskiqPg.LocalServer", "TaskiqPg.Aspire", "TaskiqPg.Dashboard" };

    [Theory]
    [MemberData(nameof(Packages))]
    public void Public_members_document_their_parameters_and_results(string assemblyName)
        => PublicApiDocumentation.AssertComplete(assemblyName);

    [Fact]
    public void The_check_notices_a_missing_parameter_tag()
    {
        // Guards the check itself: a documented member seen with a parameter it does not document is reported.
        var members = new Dictionary<string, List<XElement>>
        {
            ["M:TaskiqPg.TaskNameAttribute.Of(System.Type)"] = [XElement.Parse("<member><summary>x</summary><returns>y</returns></member>")],
        };
        var method = typeof(TaskNameAttribute).GetMethod(nameof(TaskNameAttribute.Of), [typeof(Type)])!;

        Assert.Equal("no <param name=\"handlerType\">", PublicApiDocumentation.FindProblem(typeof(TaskNameAttribute), method, members));
    }
}
