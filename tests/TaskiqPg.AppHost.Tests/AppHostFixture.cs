using System.Net.Http.Json;
using System.Text.Json;


namespace TaskiqPg.AppHost.Tests;

/// <summary>
/// Runs the real AppHost (local PostgreSQL as an executable resource, two worker replicas, the api) once per test
/// class, with a throwaway data folder and a short lease so lease expiry is quick to observe.
/// </summary>
public sealed class AppHostFixture : IAsyncLifetime
{
    public static readonly TimeSpan StartTimeout = TimeSpan.FromMinutes(3);

    private readonly string _dataDirectory = Path.Combine(Path.GetTempPath(), "taskiqpg-apphost-" + Guid.NewGuid().ToString("N")[..8]);

    public DistributedApplication App { get; private set; } = null!;

    public HttpClient Api { get; private set; } = null!;

    /// <summary>The dashboard's URL (plain http, anonymous access: what a developer opens).</summary>
    public string DashboardUrl { get; private set; } = "";

    public async ValueTask InitializeAsync()
    {
        DashboardUrl = $"http://127.0.0.1:{FreePort()}";
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.TaskiqPg_AppHost>(
        [
            "--TaskiqPg:PostgresMode=local",
            $"--TaskiqPg:LocalDataDirectory={_dataDirectory}/postgres",
            "--TaskiqPg:LeaseDuration=00:00:04",
            $"--ASPNETCORE_URLS={DashboardUrl}",
            $"--ASPIRE_DASHBOARD_OTLP_ENDPOINT_URL=http://127.0.0.1:{FreePort()}",
            "--ASPIRE_ALLOW_UNSECURED_TRANSPORT=true",
            "--ASPIRE_DASHBOARD_UNSECURED_ALLOW_ANONYMOUS=true",
        ], (options, _) => options.DisableDashboard = false);
        App = await builder.BuildAsync().WaitAsync(StartTimeout);
        await App.StartAsync().WaitAsync(StartTimeout);
        foreach (var resource in new[] { "postgres", "db", "tasks", "api", "scheduler" })
        {
            await App.ResourceNotifications.WaitForResourceHealthyAsync(resource).WaitAsync(StartTimeout);
        }

        await WaitForHealthyReplicasAsync("worker", 2);
        Api = App.CreateHttpClient("api");
        DashboardUrl = App.GetEndpoint("aspire-dashboard", "http").ToString(); // ports are randomized under test
    }

    /// <summary>Waits until <paramref name="count"/> replicas of <paramref name="resource"/> report Healthy.</summary>
    public async Task WaitForHealthyReplicasAsync(string resource, int count)
    {
        var healthy = new HashSet<string>();
        using var timeout = new CancellationTokenSource(StartTimeout);
        await foreach (var update in App.ResourceNotifications.WatchAsync(timeout.Token))
        {
            if (update.Resource.Name != resource)
            {
                continue;
            }

            if (update.Snapshot.HealthStatus == Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus.Healthy)
            {
                healthy.Add(update.ResourceId);
            }
            else
            {
                healthy.Remove(update.ResourceId);
            }

            if (healthy.Count >= count)
            {
                return;
            }
        }
    }

    public async Task<string> KickAsync(string task, object[] args, object? extra = null)
    {
        using var response = await Api.PostAsJsonAsync($"/tasks/{task}", new { args, delaySeconds = (extra as KickExtra)?.DelaySeconds });
        response.EnsureSuccessStatusCode();
        return (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("taskId").GetString()!;
    }

    public async Task<JsonElement> ResultAsync(string taskId, int timeoutSeconds = 30)
    {
        using var response = await Api.GetAsync($"/tasks/{taskId}/result?timeoutSeconds={timeoutSeconds}");
        response.EnsureSuccessStatusCode();
        return await response.Content.ReadFromJsonAsync<JsonElement>();
    }

    public async Task<JsonElement> StateAsync(string taskId)
    {
        using var response = await Api.GetAsync($"/tasks/{taskId}");
        response.EnsureSuccessStatusCode();
        return await response.Content.ReadFromJsonAsync<JsonElement>();
    }

    private static int FreePort()
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
    }

    public async ValueTask DisposeAsync()
    {
        Api?.Dispose();
        if (App is not null)
        {
            await App.StopAsync().WaitAsync(TimeSpan.FromMinutes(1));
            await App.DisposeAsync();
        }

        try
        {
            Directory.Delete(_dataDirectory, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }
    }

    public sealed record KickExtra(double DelaySeconds);
}
