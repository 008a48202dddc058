using System.Reflection;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using TaskiqPg;
using TaskiqPg.Dashboard;

namespace Microsoft.AspNetCore.Builder;

/// <summary>
/// Maps the TaskiqPg task browser: <c>app.MapTaskiqDashboard("/taskiq")</c>. A page that works offline (its script and
/// styles are embedded in this assembly) over a small JSON API under <c>{prefix}/api</c>.
/// </summary>
public static class TaskiqDashboardEndpointRouteBuilderExtensions
{
    /// <summary>
    /// Maps the task browser at <paramref name="prefix"/>: queues with their counts and pause state, tasks by state with
    /// filters and keyset paging, a task's detail (arguments, labels, attempts, result, progress), live workers and
    /// schedules, with the actions cancel, retry, delete and run now for tasks, pause and resume for queues and schedules,
    /// and fire now for schedules. It uses the <see cref="PostgresBroker"/>, <see cref="TaskiqClient"/> and (when
    /// registered) <see cref="PostgresScheduleSource"/> of the app's TaskiqPg registration.
    /// </summary>
    /// <param name="endpoints">The app's route builder.</param>
    /// <param name="prefix">The path the browser is served at, e.g. <c>/taskiq</c>.</param>
    /// <param name="configure">Changes the <see cref="TaskiqDashboardOptions"/> (read-only mode, title, service key).</param>
    /// <returns>
    /// The endpoints' convention builder: protect them with the standard ASP.NET Core hooks, e.g.
    /// <c>.RequireAuthorization("ops")</c>. Actions are POSTs that must carry the header <c>X-Taskiq-Dashboard: 1</c>,
    /// which a cross-site form cannot send.
    /// </returns>
    /// <exception cref="ArgumentNullException"><paramref name="endpoints"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="prefix"/> does not start with '/'.</exception>
    public static RouteGroupBuilder MapTaskiqDashboard(this IEndpointRouteBuilder endpoints, string prefix = "/taskiq",
        Action<TaskiqDashboardOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        ArgumentException.ThrowIfNullOrEmpty(prefix);
        if (!prefix.StartsWith('/'))
        {
            throw new ArgumentException($"The dashboard prefix must start with '/' (got '{prefix}').", nameof(prefix));
        }

        var options = new TaskiqDashboardOptions();
        configure?.Invoke(options);
        var group = endpoints.MapGroup(prefix.TrimEnd('/'));
        var api = new DashboardApi(options);

        group.MapGet("/", (HttpContext context) => Asset(context, "index.html", "text/html; charset=utf-8")).ExcludeFromDescription();
        group.MapGet("/app.js", (HttpContext context) => Asset(context, "app.js", "text/javascript; charset=utf-8")).ExcludeFromDescription();
        group.MapGet("/app.css", (HttpContext context) => Asset(context, "app.css", "text/css; charset=utf-8")).ExcludeFromDescription();
        api.Map(group.MapGroup("/api"));
        return group;
    }

    private static IResult Asset(HttpContext context, string name, string contentType)
    {
        // Without a trailing slash the page's relative asset URLs would resolve one level up.
        if (name == "index.html" && !context.Request.Path.Value!.EndsWith('/'))
        {
            return Results.Redirect(context.Request.PathBase + context.Request.Path + "/" + context.Request.QueryString);
        }

        var stream = typeof(DashboardApi).Assembly.GetManifestResourceStream("TaskiqPg.Dashboard." + name)
                     ?? throw new InvalidOperationException($"The dashboard asset '{name}' is missing from {typeof(DashboardApi).Assembly.GetName().Name}.");
        context.Response.Headers.CacheControl = "no-cache";
        context.Response.Headers["X-Content-Type-Options"] = "nosniff";
        context.Response.Headers["Content-Security-Policy"] = "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; frame-ancestors 'none'";
        return Results.Stream(stream, contentType);
    }
}
