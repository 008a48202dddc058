using System.Net;
using System.Net.Http.Json;
using System.Security.Claims;
using System.Text.Encodings.Web;
using System.Text.Json;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>
/// The task browser's API in a real Kestrel app over a real database: read-only mode, the authorization hook, queue
/// discovery, keyset paging, filters and bad input. (The AppHost tests drive its actions and a real browser.)
/// </summary>
public sealed class TaskBrowserApiTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private sealed class App : IAsyncDisposable
    {
        public required WebApplication Web { get; init; }

        public required HttpClient Http { get; init; }

        public required PostgresBroker Broker { get; init; }

        public async ValueTask DisposeAsync()
        {
            Http.Dispose();
            await Web.StopAsync();
            await Web.DisposeAsync();
        }
    }

    private async Task<App> StartAsync(string schema, Action<TaskiqDashboardOptions>? configure = null, bool requireRole = false)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(NpgsqlDataSource.Create(db.ConnectionString));
        builder.Services.AddTaskiqPg(sp => sp.GetRequiredService<NpgsqlDataSource>(), o =>
        {
            o.Broker.Schema = schema;
            o.Results.Schema = schema;
            o.Schedules.Schema = schema;
        });
        if (requireRole)
        {
            builder.Services.AddAuthentication("header").AddScheme<AuthenticationSchemeOptions, HeaderAuthentication>("header", null);
            builder.Services.AddAuthorization(o => o.AddPolicy("ops", p => p.RequireRole("ops")));
        }

        var web = builder.Build();
        if (requireRole)
        {
            web.UseAuthentication();
            web.UseAuthorization();
        }

        var endpoints = web.MapTaskiqDashboard("/ops/taskiq", configure);
        if (requireRole)
        {
            endpoints.RequireAuthorization("ops");
        }

        await web.StartAsync();
        var address = web.Urls.First();
        return new App { Web = web, Http = new HttpClient { BaseAddress = new Uri(address) }, Broker = web.Services.GetRequiredService<PostgresBroker>() };
    }

    private static HttpRequestMessage Action(string path) => new(HttpMethod.Post, "/ops/taskiq/api/" + path) { Headers = { { "X-Taskiq-Dashboard", "1" } } };

    [Fact]
    public async Task Read_only_mode_shows_everything_and_refuses_every_action()
    {
        await using var app = await StartAsync("browser_ro", o => o.ReadOnly = true);
        await app.Broker.KickAsync(TaskMessage.Create("x"), new KickOptions { Delay = TimeSpan.FromHours(1) });

        var overview = await app.Http.GetFromJsonAsync<JsonElement>("/ops/taskiq/api/overview");
        Assert.True(overview.GetProperty("readOnly").GetBoolean());
        foreach (var path in new[] { "queues/default/pause", "tasks/any/cancel", "tasks/any/retry", "tasks/any/delete", "tasks/any/run-now", $"schedules/{Guid.NewGuid()}/fire" })
        {
            using var response = await app.Http.SendAsync(Action(path));
            Assert.Equal(HttpStatusCode.Forbidden, response.StatusCode);
        }

        Assert.Null(await app.Broker.GetQueuePausedAtAsync());
        var page = await app.Http.GetFromJsonAsync<JsonElement>("/ops/taskiq/api/tasks?queue=default&state=scheduled");
        Assert.Equal(1, page.GetProperty("tasks").GetArrayLength());
    }

    [Fact]
    public async Task The_returned_endpoints_take_a_standard_authorization_policy()
    {
        await using var app = await StartAsync("browser_auth", requireRole: true);

        using var anonymous = await app.Http.GetAsync("/ops/taskiq/api/overview");
        Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);
        using var page = await app.Http.GetAsync("/ops/taskiq/");
        Assert.Equal(HttpStatusCode.Unauthorized, page.StatusCode);
        using var wrongRole = new HttpRequestMessage(HttpMethod.Get, "/ops/taskiq/api/overview") { Headers = { { "X-Role", "viewer" } } };
        Assert.Equal(HttpStatusCode.Forbidden, (await app.Http.SendAsync(wrongRole)).StatusCode);
        using var ops = new HttpRequestMessage(HttpMethod.Get, "/ops/taskiq/api/overview") { Headers = { { "X-Role", "ops" } } };
        Assert.Equal(HttpStatusCode.OK, (await app.Http.SendAsync(ops)).StatusCode);
    }

    [Fact]
    public async Task Tasks_page_by_cursor_through_a_large_state_and_filter_by_name_and_time()
    {
        await using var app = await StartAsync("browser_pages");
        var messages = Enumerable.Range(0, 260).Select(i => TaskMessage.Create(i % 2 == 0 ? "even" : "odd", [i])).ToArray();
        await app.Broker.KickManyAsync(messages, new KickOptions { Delay = TimeSpan.FromHours(1) });

        var seen = new List<string>();
        string? cursor = null;
        var pages = 0;
        do
        {
            var page = await app.Http.GetFromJsonAsync<JsonElement>($"/ops/taskiq/api/tasks?queue=default&state=scheduled&limit=100&cursor={Uri.EscapeDataString(cursor ?? "")}");
            seen.AddRange(page.GetProperty("tasks").EnumerateArray().Select(t => t.GetProperty("taskId").GetString()!));
            cursor = page.GetProperty("nextCursor").GetString();
            pages++;
        }
        while (cursor is not null);

        Assert.Equal(3, pages);
        Assert.Equal(messages.Select(m => m.TaskId).Order(), seen.Order());

        var evens = await app.Http.GetFromJsonAsync<JsonElement>("/ops/taskiq/api/tasks?queue=default&state=scheduled&name=even&limit=1000");
        Assert.Equal(130, evens.GetProperty("tasks").GetArrayLength());
        var future = Uri.EscapeDataString(DateTimeOffset.UtcNow.AddHours(2).ToString("O"));
        var none = await app.Http.GetFromJsonAsync<JsonElement>($"/ops/taskiq/api/tasks?queue=default&state=scheduled&from={future}");
        Assert.Equal(0, none.GetProperty("tasks").GetArrayLength());

        using var badState = await app.Http.GetAsync("/ops/taskiq/api/tasks?queue=default&state=lost");
        Assert.Equal(HttpStatusCode.BadRequest, badState.StatusCode);
        Assert.Contains("available", (await badState.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("error").GetString());
        using var badQueue = await app.Http.GetAsync("/ops/taskiq/api/tasks?queue=bad%3Bname&state=available");
        Assert.Equal(HttpStatusCode.BadRequest, badQueue.StatusCode);
        using var missing = await app.Http.GetAsync("/ops/taskiq/api/tasks/no-such-task");
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
    }

    [Fact]
    public async Task Every_queue_of_the_table_is_found_without_configuration()
    {
        await using var app = await StartAsync("browser_queues");
        await app.Broker.KickAsync(TaskMessage.Create("x"), new KickOptions { Queue = "emails" }); // available
        await app.Broker.KickAsync(TaskMessage.Create("x"), new KickOptions { Queue = "reports", Delay = TimeSpan.FromHours(1) }); // scheduled
        await app.Broker.PauseQueueAsync("idle_but_paused");

        var queues = await app.Broker.ListQueuesAsync();
        Assert.Equal(["emails", "idle_but_paused", "reports"], queues);
        var overview = await app.Http.GetFromJsonAsync<JsonElement>("/ops/taskiq/api/overview");
        var names = overview.GetProperty("queues").EnumerateArray().Select(q => q.GetProperty("name").GetString()).ToArray();
        Assert.Equal(["default", "emails", "idle_but_paused", "reports"], names);
        var emails = overview.GetProperty("queues").EnumerateArray().Single(q => q.GetProperty("name").GetString() == "emails");
        Assert.Equal(1, emails.GetProperty("counts").GetProperty("available").GetInt64());
    }

    /// <summary>Authenticates every request; the role comes from the X-Role header (none: anonymous).</summary>
    private sealed class HeaderAuthentication(IOptionsMonitor<AuthenticationSchemeOptions> options, ILoggerFactory logger, UrlEncoder encoder)
        : AuthenticationHandler<AuthenticationSchemeOptions>(options, logger, encoder)
    {
        protected override Task<AuthenticateResult> HandleAuthenticateAsync()
        {
            if (Request.Headers["X-Role"].FirstOrDefault() is not { } role)
            {
                return Task.FromResult(AuthenticateResult.NoResult());
            }

            var identity = new ClaimsIdentity([new Claim(ClaimTypes.Name, "tester"), new Claim(ClaimTypes.Role, role)], Scheme.Name);
            return Task.FromResult(AuthenticateResult.Success(new AuthenticationTicket(new ClaimsPrincipal(identity), Scheme.Name)));
        }
    }
}
