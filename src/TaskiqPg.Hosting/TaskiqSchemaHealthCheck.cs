using Microsoft.Extensions.Diagnostics.HealthChecks;
using Npgsql;
using TaskiqPg;

namespace Aspire.Hosting;

/// <summary>
/// The database is healthy once TaskiqPg's schema is migrated. The AppHost runs the migration here, once, before any
/// resource that waits for the database starts, so worker replicas never race to create the schema.
/// </summary>
internal sealed class TaskiqSchemaHealthCheck(Func<string?> connectionString, PostgresBrokerOptions broker, PostgresResultBackendOptions results,
    PostgresScheduleSourceOptions schedules)
    : IHealthCheck
{
    private volatile bool _migrated;

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var value = connectionString();
        if (value is null)
        {
            return HealthCheckResult.Unhealthy("The database's connection string is not available yet.");
        }

        try
        {
            await using var dataSource = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(value) { Pooling = false }.ConnectionString);
            if (!_migrated)
            {
                await using (var brokerSchema = new PostgresBroker(dataSource, broker))
                {
                    await brokerSchema.MigrateAsync(cancellationToken);
                }

                await using (var resultSchema = new PostgresResultBackend(dataSource, results))
                {
                    await resultSchema.MigrateAsync(cancellationToken);
                }

                await using (var scheduleSchema = new PostgresScheduleSource(dataSource, schedules))
                {
                    await scheduleSchema.MigrateAsync(cancellationToken);
                }

                _migrated = true;
            }
            else
            {
                await using var command = dataSource.CreateCommand("SELECT 1");
                await command.ExecuteScalarAsync(cancellationToken);
            }

            return HealthCheckResult.Healthy();
        }
        catch (Exception ex) when (ex is NpgsqlException or TimeoutException or InvalidOperationException)
        {
            // The message names the failure, never the connection string (it carries the password).
            return HealthCheckResult.Unhealthy($"TaskiqPg schema not ready: {ex.GetType().Name}: {ex.Message}");
        }
    }
}
