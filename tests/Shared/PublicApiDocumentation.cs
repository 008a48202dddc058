using System.Reflection;
using System.Xml.Linq;
using Xunit;

namespace TaskiqPg.Tests;

/// <summary>
/// Every public method and constructor of a package carries a <c>&lt;param&gt;</c> for each parameter and a
/// <c>&lt;returns&gt;</c> when it returns something: read from the XML documentation that ships in the package, so a
/// member added without them fails (the compiler only checks that a summary exists). Linked into each test project
/// that references a package.
/// </summary>
internal static class PublicApiDocumentation
{
    /// <summary>Asserts that every public member of <paramref name="assemblyName"/> documents its parameters and result.</summary>
    public static void AssertComplete(string assemblyName)
    {
        var assembly = Assembly.Load(assemblyName);
        var members = ReadDocumentation(assembly);
        var missing = new List<string>();
        foreach (var type in assembly.GetExportedTypes())
        {
            foreach (var method in PublicMembersDeclaredBy(type))
            {
                if (FindProblem(type, method, members) is { } problem)
                {
                    missing.Add($"{type.FullName}.{method.Name}: {problem}");
                }
            }
        }

        Assert.True(missing.Count == 0, $"{missing.Count} public members of {assemblyName} lack documentation:\n" + string.Join('\n', missing));
    }

    private static IEnumerable<MethodBase> PublicMembersDeclaredBy(Type type)
    {
        const BindingFlags flags = BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        var isRecord = type.GetMethod("<Clone>$") is not null || type.GetProperty("EqualityContract", BindingFlags.NonPublic | BindingFlags.Instance) is not null;
        foreach (var method in type.GetMethods(flags))
        {
            // Accessors, operators and what a record or an override generates are documented where they come from.
            if (method.IsSpecialName || method.GetBaseDefinition().DeclaringType != type || method.Name.Contains('<') || method.Name == "Deconstruct")
            {
                continue;
            }

            if (isRecord && method.Name is "Equals" or "GetHashCode" or "ToString" or "PrintMembers")
            {
                continue;
            }

            yield return method;
        }

        foreach (var constructor in type.GetConstructors(flags))
        {
            var parameters = constructor.GetParameters();
            if (parameters.Length > 0 && !(isRecord && parameters.Length == 1 && parameters[0].ParameterType == type))
            {
                yield return constructor;
            }
        }
    }

    internal static string? FindProblem(Type type, MethodBase method, Dictionary<string, List<XElement>> members)
    {
        var name = method is ConstructorInfo ? "#ctor" : method.Name + (method.IsGenericMethod ? "``" + method.GetGenericArguments().Length : "");
        var id = "M:" + type.FullName!.Replace('+', '.') + "." + name;
        // A primary constructor's parameters are documented on its type.
        var typeDocs = method is ConstructorInfo && members.TryGetValue("T:" + type.FullName!.Replace('+', '.'), out var t) ? t : [];
        var candidates = members.Where(m => m.Key == id || m.Key.StartsWith(id + "(", StringComparison.Ordinal)).SelectMany(m => m.Value).ToList();
        if (candidates.Count == 0 && typeDocs.Count == 0)
        {
            return "no documentation";
        }

        string? problem = null;
        foreach (var doc in candidates.Count > 0 ? candidates : typeDocs)
        {
            if (doc.Element("inheritdoc") is not null)
            {
                return null;
            }

            var documented = doc.Elements("param").Concat(typeDocs.SelectMany(d => d.Elements("param")))
                .Select(p => (string?)p.Attribute("name")).ToHashSet();
            var undocumented = method.GetParameters().FirstOrDefault(p => !documented.Contains(p.Name));
            var returnType = (method as MethodInfo)?.ReturnType;
            var returnsSomething = returnType is not null && returnType != typeof(void) && returnType != typeof(Task) && returnType != typeof(ValueTask);
            problem = undocumented is not null ? $"no <param name=\"{undocumented.Name}\">"
                : returnsSomething && doc.Element("returns") is null ? "no <returns>"
                : null;
            if (problem is null)
            {
                return null;
            }
        }

        return problem;
    }

    private static Dictionary<string, List<XElement>> ReadDocumentation(Assembly assembly)
    {
        var path = Path.ChangeExtension(assembly.Location, ".xml");
        Assert.True(File.Exists(path), $"{path} is missing: the package ships no XML documentation.");
        return XDocument.Load(path).Descendants("member")
            .GroupBy(m => (string)m.Attribute("name")!)
            .ToDictionary(g => g.Key, g => g.ToList());
    }
}
