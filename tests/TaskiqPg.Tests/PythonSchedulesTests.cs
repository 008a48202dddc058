using System.Text.Json;

namespace TaskiqPg.Tests;

/// <summary>
/// Schedules written by Python taskiq (<c>ScheduledTask.model_dump_json(exclude={"schedule_id", "task_name"})</c>, as
/// taskiq-postgres stores them) read by TaskiqPg, and TaskiqPg's stored JSON carrying every key Python's source reads.
/// </summary>
public sealed class PythonSchedulesTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    [Fact]
    public void A_Python_cron_schedule_keeps_its_zone_and_native_labels()
    {
        var definition = StoredSchedule.FromJson(
            """{"labels":{"priority":2,"retry_on_error":true,"note":"x"},"args":[1,"a"],"kwargs":{"k":1.5},"task_id":null,"cron":"30 2 * * *","cron_offset":"Europe/Berlin","time":null,"interval":null}""")
            .ToDefinition("shop:report");

        Assert.Equal(("30 2 * * *", "Europe/Berlin"), (definition.Cron, definition.TimeZone));
        Assert.Equal("2", definition.Labels!["priority"]);
        Assert.Equal("true", definition.Labels["retry_on_error"]);
        Assert.Null(definition.Interval);
        Assert.Null(definition.RunAt);
        var next = CompiledSchedule.Compile(definition).NextAfter(new DateTimeOffset(2026, 7, 1, 0, 0, 0, TimeSpan.Zero), default);
        Assert.Equal(new DateTimeOffset(2026, 7, 1, 0, 30, 0, TimeSpan.Zero), next); // 02:30 in Berlin summer time
    }

    [Theory]
    [InlineData("60")]       // pydantic 1 / an int
    [InlineData("\"PT1M\"")] // pydantic 2 timedelta
    public void A_Python_interval_in_seconds_or_as_a_duration_reads_as_that_interval(string interval)
    {
        var definition = StoredSchedule.FromJson($$"""{"labels":{},"args":[],"kwargs":{},"cron":null,"cron_offset":null,"time":null,"interval":{{interval}}}""").ToDefinition("tick");

        Assert.Equal(TimeSpan.FromMinutes(1), definition.Interval);
    }

    [Theory]
    [InlineData("2026-12-24T18:00:00", "2026-12-24T18:00:00Z")]        // naive: UTC
    [InlineData("2026-12-24T18:00:00+01:00", "2026-12-24T17:00:00Z")]
    public void A_Python_one_shot_time_reads_as_its_UTC_instant(string time, string expected)
    {
        var definition = StoredSchedule.FromJson($$"""{"labels":{},"args":[],"kwargs":{},"cron":null,"cron_offset":null,"time":"{{time}}","interval":null}""").ToDefinition("once");

        Assert.Equal(DateTimeOffset.Parse(expected, System.Globalization.CultureInfo.InvariantCulture), definition.RunAt);
    }

    [Theory]
    [InlineData("\"PT2H\"", "Etc/GMT-2", 10)]  // UTC+2: noon there is 10:00 UTC
    [InlineData("-18000", "Etc/GMT+5", 17)]   // pydantic 1 seconds, UTC-5
    [InlineData("\"PT0S\"", "UTC", 12)]
    public void A_whole_hour_cron_offset_becomes_a_fixed_offset_zone(string offset, string zone, int utcHour)
    {
        var definition = StoredSchedule.FromJson($$"""{"labels":{},"args":[],"kwargs":{},"cron":"0 12 * * *","cron_offset":{{offset}},"time":null,"interval":null}""").ToDefinition("noon");

        Assert.Equal(zone, definition.TimeZone);
        Assert.Equal(utcHour, CompiledSchedule.Compile(definition).NextAfter(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero), default)!.Value.UtcDateTime.Hour);
    }

    [Fact]
    public void A_cron_offset_that_no_zone_can_express_is_refused_with_the_reason()
    {
        var error = Assert.Throws<JsonException>(() => StoredSchedule.FromJson(
            """{"labels":{},"args":[],"kwargs":{},"cron":"0 12 * * *","cron_offset":"PT5H30M","time":null,"interval":null}""").ToDefinition("x"));
        Assert.Contains("time zone name", error.Message);
    }

    [Fact]
    public void TaskiqPgs_stored_schedule_has_every_key_Pythons_source_indexes_and_its_stable_id_input_is_unchanged()
    {
        var cron = StoredSchedule.From(new ScheduleDefinition { TaskName = "r", Cron = "0 3 * * *", TimeZone = "Asia/Tokyo", Args = [5], Labels = new Dictionary<string, string> { ["a"] = "b" } }, TaskiqSerializer.DefaultOptions);
        var interval = StoredSchedule.From(new ScheduleDefinition { TaskName = "i", Interval = TimeSpan.FromSeconds(2.5) }, TaskiqSerializer.DefaultOptions);
        var once = StoredSchedule.From(new ScheduleDefinition { TaskName = "o", RunAt = new DateTimeOffset(2027, 1, 2, 3, 4, 5, TimeSpan.Zero) }, TaskiqSerializer.DefaultOptions);

        foreach (var (stored, key, expected) in new[] { (cron, "cron_offset", "\"Asia/Tokyo\""), (interval, "interval", "3"), (once, "time", "\"2027-01-02T03:04:05.000000+00:00\"") })
        {
            using var json = JsonDocument.Parse(stored.ToStoredJson());
            foreach (var pythonKey in new[] { "labels", "args", "kwargs", "cron", "cron_offset", "time", "interval" })
            {
                Assert.True(json.RootElement.TryGetProperty(pythonKey, out _), $"missing '{pythonKey}' in {json.RootElement}");
            }

            using var expectedJson = JsonDocument.Parse(expected);
            Assert.True(JsonElement.DeepEquals(expectedJson.RootElement, json.RootElement.GetProperty(key)), $"{key}: {json.RootElement.GetProperty(key)}");
            // Read back by TaskiqPg: its own keys win (2.5 s stays 2.5 s).
            Assert.Equal(stored.ToDefinition("t") with { TaskName = "t" }, StoredSchedule.FromJson(stored.ToStoredJson()).ToDefinition("t"), new DefinitionComparer());
            // The static-schedule id is hashed from TaskiqPg's keys only: adding Python's keys changes no id.
            Assert.DoesNotContain("cron_offset", stored.ToJson());
        }
    }

    [Fact]
    public async Task A_schedule_inserted_by_Pythons_schedule_source_is_listed_and_fired_by_TaskiqPg()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("tick", () => "ticked"));
        var table = "s" + Guid.NewGuid().ToString("N")[..8];
        await using var source = new PostgresScheduleSource(harness.DataSource, new PostgresScheduleSourceOptions { SchedulesTable = table, FiresTable = table + "_fires" });
        await source.StartAsync();
        var id = Guid.NewGuid();
        // taskiq-postgres INSERT_SCHEDULE_QUERY with ScheduledTask.model_dump_json(exclude=...) (pydantic 2, compact).
        await using (var insert = harness.DataSource.CreateCommand(
            $"INSERT INTO \"{table}\" (id, task_name, schedule) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET task_name = EXCLUDED.task_name, schedule = EXCLUDED.schedule, updated_at = NOW()"))
        {
            insert.Parameters.AddWithValue(id);
            insert.Parameters.AddWithValue("tick");
            insert.Parameters.Add(new Npgsql.NpgsqlParameter { Value = """{"labels":{"n":1},"args":[],"kwargs":{},"task_id":null,"cron":null,"cron_offset":null,"time":null,"interval":1}""", NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Jsonb });
            await insert.ExecuteNonQueryAsync();
        }

        var listed = Assert.Single(await source.ListSchedulesAsync());
        Assert.Equal((id, TimeSpan.FromSeconds(1), true), (listed.Id, listed.Definition.Interval, listed.Enabled));

        using var scheduler = new TaskiqScheduler(source, harness.Broker, new TaskiqSchedulerOptions { RefreshInterval = TimeSpan.FromMilliseconds(200) });
        await scheduler.StartAsync(CancellationToken.None);
        await Eventually.TrueAsync(async () => (await source.GetFiresAsync(id)).Count >= 2, TimeSpan.FromSeconds(20), "the Python-written interval fires");
        await scheduler.StopAsync(CancellationToken.None);
        Assert.True((await source.ListSchedulesAsync()).Single().Enabled); // never disabled for its shape
    }

    [Fact]
    public async Task A_schedules_table_created_by_taskiq_postgres_is_adopted_with_its_rows()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("tick", () => "ticked"));
        var table = "py" + Guid.NewGuid().ToString("N")[..8];
        var id = Guid.NewGuid();
        // taskiq-postgres CREATE_SCHEDULES_TABLE_QUERY and a row its source wrote (pydantic 1: interval in seconds).
        await using (var create = harness.DataSource.CreateCommand(
            $"""
             CREATE TABLE IF NOT EXISTS "{table}" (
                 id UUID PRIMARY KEY,
                 task_name VARCHAR(100) NOT NULL,
                 schedule JSONB NOT NULL,
                 created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
                 updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
             );
             """))
        {
            await create.ExecuteNonQueryAsync();
        }

        await using (var insert = harness.DataSource.CreateCommand($"INSERT INTO \"{table}\" (id, task_name, schedule) VALUES ($1, 'tick', $2::jsonb)"))
        {
            insert.Parameters.AddWithValue(id);
            insert.Parameters.AddWithValue("""{"labels": {}, "args": [], "kwargs": {}, "cron": null, "cron_offset": null, "time": null, "interval": 1}""");
            await insert.ExecuteNonQueryAsync();
        }

        await using var source = new PostgresScheduleSource(harness.DataSource, new PostgresScheduleSourceOptions { SchedulesTable = table, FiresTable = table + "_fires" });
        await source.StartAsync();

        var listed = Assert.Single(await source.ListSchedulesAsync());
        Assert.Equal((id, TimeSpan.FromSeconds(1), true, false), (listed.Id, listed.Definition.Interval, listed.Enabled, listed.IsStatic));
        var longName = new string('t', 150); // TaskiqPg's names are not bounded by Python's varchar(100)
        Assert.NotEqual(Guid.Empty, await source.AddScheduleAsync(new ScheduleDefinition { TaskName = longName, Interval = TimeSpan.FromHours(1) }));

        using var scheduler = new TaskiqScheduler(source, harness.Broker, new TaskiqSchedulerOptions { RefreshInterval = TimeSpan.FromMilliseconds(200) });
        await scheduler.StartAsync(CancellationToken.None);
        await Eventually.TrueAsync(async () => (await source.GetFiresAsync(id)).Count >= 1, TimeSpan.FromSeconds(20), "the adopted schedule fires");
        await scheduler.StopAsync(CancellationToken.None);
    }

    private sealed class DefinitionComparer : IEqualityComparer<ScheduleDefinition>
    {
        public bool Equals(ScheduleDefinition? x, ScheduleDefinition? y)
            => x!.Cron == y!.Cron && x.TimeZone == y.TimeZone && x.Interval == y.Interval && x.RunAt == y.RunAt
               && x.Labels!.SequenceEqual(y.Labels!) && x.Args!.Count == y.Args!.Count;

        public int GetHashCode(ScheduleDefinition obj) => 0;
    }
}
