using Microsoft.Extensions.Logging;
using Npgsql;

namespace TaskiqPg.Tests;

public sealed class SchedulerTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    /// <summary>A broker queue, a schedule source on tables of its own, and any number of schedulers.</summary>
    private sealed class Rig : IAsyncDisposable
    {
        private readonly List<TaskiqScheduler> _schedulers = [];

        public Rig(DatabaseFixture db, IReadOnlyCollection<string>? knownTasks = null)
        {
            var suffix = Guid.NewGuid().ToString("N")[..8];
            DataSource = db.CreateDataSource();
            Broker = new PostgresBroker(DataSource, new PostgresBrokerOptions { Queue = "q" + suffix });
            SourceOptions = new PostgresScheduleSourceOptions { SchedulesTable = "s" + suffix, FiresTable = "f" + suffix, Channel = "c" + suffix, KnownTaskNames = knownTasks };
            Source = new PostgresScheduleSource(DataSource, SourceOptions);
        }

        public NpgsqlDataSource DataSource { get; }

        public PostgresBroker Broker { get; }

        public PostgresScheduleSourceOptions SourceOptions { get; }

        public PostgresScheduleSource Source { get; }

        public async Task<TaskiqScheduler> StartSchedulerAsync(TaskiqSchedulerOptions? options = null, PostgresScheduleSource? source = null)
        {
            var scheduler = new TaskiqScheduler(source ?? Source, Broker, options ?? new TaskiqSchedulerOptions { RefreshInterval = TimeSpan.FromMilliseconds(500) },
                Microsoft.Extensions.Logging.LoggerFactory.Create(b => b.AddConsole()));
            _schedulers.Add(scheduler);
            await scheduler.StartAsync(CancellationToken.None);
            return scheduler;
        }

        public async Task StopSchedulerAsync(TaskiqScheduler scheduler)
        {
            await scheduler.StopAsync(CancellationToken.None);
            _schedulers.Remove(scheduler);
            scheduler.Dispose();
        }

        public async Task<long> KickedAsync()
            => (await Broker.GetQueueCountsAsync()).Values.Sum();

        public async Task<DateTimeOffset> DbNowAsync()
        {
            await using var command = DataSource.CreateCommand("SELECT now()");
            return new DateTimeOffset((DateTime)(await command.ExecuteScalarAsync())!, TimeSpan.Zero);
        }

        public async Task ExecuteAsync(string sql)
        {
            await using var command = DataSource.CreateCommand(sql);
            await command.ExecuteNonQueryAsync();
        }

        public async ValueTask DisposeAsync()
        {
            foreach (var scheduler in _schedulers.ToArray())
            {
                await StopSchedulerAsync(scheduler);
            }

            await Source.DisposeAsync();
            await Broker.DisposeAsync();
        }
    }

    [Fact]
    public async Task Cron_with_seconds_fires_at_its_instants_and_kicks_one_task_each()
    {
        await using var rig = new Rig(db);
        var id = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "tick", Cron = "*/2 * * * * *", Args = [7] });
        await rig.StartSchedulerAsync();

        await Eventually.TrueAsync(async () => (await rig.Source.GetFiresAsync(id)).Count >= 3, Bound, "three fires");

        var fires = await rig.Source.GetFiresAsync(id);
        Assert.All(fires, f => Assert.Equal((0, 0), (f.FireAt.Second % 2, f.FireAt.Millisecond)));
        Assert.All(fires.Zip(fires.Skip(1)), pair => Assert.Equal(TimeSpan.FromSeconds(2), pair.Second.FireAt - pair.First.FireAt));
        Assert.True(await rig.KickedAsync() >= fires.Count);
        var task = await rig.Broker.GetTaskAsync(fires[0].TaskId);
        Assert.NotNull(task);
        await using var labels = rig.DataSource.CreateCommand("SELECT labels->>'schedule_id', message FROM taskiq_messages WHERE task_id = $1");
        labels.Parameters.Add(new NpgsqlParameter<string> { TypedValue = fires[0].TaskId });
        await using var reader = await labels.ExecuteReaderAsync();
        Assert.True(await reader.ReadAsync());
        Assert.Equal(id.ToString(), reader.GetString(0));
        Assert.Equal([7], TaskMessage.FromJson(reader.GetString(1)).Args.Select(a => a.GetInt32()));
    }

    [Fact]
    public async Task Interval_schedule_fires_every_interval()
    {
        await using var rig = new Rig(db);
        var id = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "beat", Interval = TimeSpan.FromSeconds(1) });
        await rig.StartSchedulerAsync();

        await Eventually.TrueAsync(async () => (await rig.Source.GetFiresAsync(id)).Count >= 3, Bound, "three fires");

        var fires = await rig.Source.GetFiresAsync(id);
        Assert.All(fires.Zip(fires.Skip(1)), pair => Assert.Equal(TimeSpan.FromSeconds(1), pair.Second.FireAt - pair.First.FireAt));
    }

    [Fact]
    public async Task One_shot_fires_once_then_is_marked_done_and_kept()
    {
        await using var rig = new Rig(db);
        var id = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "once", RunAt = (await rig.DbNowAsync()).AddSeconds(1) });
        var scheduler = await rig.StartSchedulerAsync();

        await Eventually.TrueAsync(async () => (await rig.Source.ListSchedulesAsync()).Single().Done, Bound, "the one-shot is done");
        var ticks = scheduler.LastTick;
        await Eventually.TrueAsync(() => scheduler.LastTick > ticks.AddSeconds(1), Bound, "the scheduler keeps ticking");

        Assert.Single(await rig.Source.GetFiresAsync(id));
        Assert.Equal(1, await rig.KickedAsync());
    }

    [Fact]
    public async Task Three_schedulers_fire_each_instant_of_an_every_second_cron_exactly_once()
    {
        await using var rig = new Rig(db);
        var id = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "tick", Cron = "* * * * * *", MissedFires = MissedFirePolicy.CatchUp });
        var sources = new List<PostgresScheduleSource>();
        for (var i = 0; i < 3; i++)
        {
            var source = new PostgresScheduleSource(rig.DataSource, rig.SourceOptions); // each with its own listener
            sources.Add(source);
            await rig.StartSchedulerAsync(new TaskiqSchedulerOptions { RefreshInterval = TimeSpan.FromMilliseconds(300) }, source);
        }

        var start = await rig.DbNowAsync();
        await Eventually.TrueAsync(async () => await rig.DbNowAsync() > start.AddSeconds(30), TimeSpan.FromSeconds(60), "30 s pass");
        await rig.Source.PauseScheduleAsync(id);
        await Task.Delay(1500); // let in-flight fires commit

        var fires = await rig.Source.GetFiresAsync(id);
        await using var count = rig.DataSource.CreateCommand(
            "SELECT count(*), count(DISTINCT labels->>'schedule_fire_at') FROM taskiq_messages WHERE queue = $1");
        count.Parameters.Add(new NpgsqlParameter<string> { TypedValue = rig.Broker.Options.Queue });
        await using var reader = await count.ExecuteReaderAsync();
        await reader.ReadAsync();
        var (tasks, distinctInstants) = (reader.GetInt64(0), reader.GetInt64(1));

        Assert.InRange(fires.Count, 28, 34);
        Assert.Equal(fires.Count, tasks);            // one task per fire
        Assert.Equal(tasks, distinctInstants);       // and no instant twice
        Assert.Equal(fires.Count, (int)(fires[^1].FireAt - fires[0].FireAt).TotalSeconds + 1); // no instant missed
        foreach (var source in sources)
        {
            await source.DisposeAsync();
        }
    }

    [Fact]
    public async Task Schedules_due_at_one_instant_fire_together_once_across_three_schedulers()
    {
        // 20 every-second schedules, 3 schedulers on one counted data source: every (schedule, instant) kicked once, no
        // instant skipped, and the fire rows written one statement per tick, not one per schedule (which fired the
        // twentieth schedule of a second after the nineteen before it).
        await using var rig = new Rig(db);
        using var claims = new CommandCounter(sql => sql.Contains($"\"{rig.SourceOptions.FiresTable}\" (schedule_id, fire_at, task_id)", StringComparison.Ordinal));
        await using var counted = claims.CreateDataSource(db.ConnectionString);
        var ids = new List<Guid>();
        for (var i = 0; i < 20; i++)
        {
            ids.Add(await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "tick", Cron = "* * * * * *", Args = [i] }));
        }

        var sources = new List<PostgresScheduleSource>();
        for (var i = 0; i < 3; i++)
        {
            sources.Add(new PostgresScheduleSource(counted, rig.SourceOptions));
            await rig.StartSchedulerAsync(new TaskiqSchedulerOptions { RefreshInterval = TimeSpan.FromMilliseconds(300) }, sources[^1]);
        }

        var start = await rig.DbNowAsync();
        await Eventually.TrueAsync(async () => await rig.DbNowAsync() > start.AddSeconds(6), TimeSpan.FromSeconds(30), "6 s pass");
        foreach (var id in ids)
        {
            await rig.Source.PauseScheduleAsync(id);
        }

        await Task.Delay(1500); // let in-flight fires commit
        var fires = 0;
        foreach (var id in ids)
        {
            var ofSchedule = await rig.Source.GetFiresAsync(id);
            Assert.True(ofSchedule.Count >= 4, $"schedule {id} fired {ofSchedule.Count} times in 6 s");
            Assert.Equal(ofSchedule.Count, (int)(ofSchedule[^1].FireAt - ofSchedule[0].FireAt).TotalSeconds + 1); // none skipped
            fires += ofSchedule.Count;
        }

        await using var count = rig.DataSource.CreateCommand(
            "SELECT count(*), count(DISTINCT (labels->>'schedule_id', labels->>'schedule_fire_at')) FROM taskiq_messages WHERE queue = $1");
        count.Parameters.Add(new NpgsqlParameter<string> { TypedValue = rig.Broker.Options.Queue });
        await using var reader = await count.ExecuteReaderAsync();
        await reader.ReadAsync();
        Assert.Equal(fires, reader.GetInt64(0));  // one task per fire
        Assert.Equal(fires, reader.GetInt64(1));  // and no (schedule, instant) twice
        // About one statement per scheduler and tick (3 × ~8 here), against one per schedule and instant (≥ fires) before.
        Assert.True(claims.Count * 3 < fires, $"{claims.Count} fire statements for {fires} fires");
        foreach (var source in sources)
        {
            await source.DisposeAsync();
        }
    }

    [Fact]
    public async Task Runtime_schedules_survive_a_restart_and_static_ones_keep_stable_ids()
    {
        await using var rig = new Rig(db);
        var runtime = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "runtime_task", Cron = "0 0 1 1 *" });
        var keep = new ScheduleDefinition { TaskName = "report", Cron = "0 0 * * *", TimeZone = "Europe/Berlin", Args = ["daily"] };
        var drop = new ScheduleDefinition { TaskName = "old", Interval = TimeSpan.FromHours(1) };

        var first = await rig.StartSchedulerAsync(new TaskiqSchedulerOptions { StaticSchedules = [keep, drop] });
        await Eventually.TrueAsync(async () => (await rig.Source.ListSchedulesAsync()).Count == 3, Bound, "static schedules synced");
        var firstIds = (await rig.Source.ListSchedulesAsync()).Where(s => s.IsStatic).ToDictionary(s => s.Definition.TaskName, s => s.Id);
        await rig.StopSchedulerAsync(first);

        // The next deployment no longer declares "old".
        await rig.StartSchedulerAsync(new TaskiqSchedulerOptions { StaticSchedules = [keep with { }] });
        await Eventually.TrueAsync(async () => (await rig.Source.ListSchedulesAsync()).Count == 2, Bound, "the removed static schedule is gone");

        var schedules = await rig.Source.ListSchedulesAsync();
        Assert.Contains(schedules, s => s.Id == runtime && !s.IsStatic && s.Definition.Cron == "0 0 1 1 *");
        var report = Assert.Single(schedules, s => s.IsStatic);
        Assert.Equal(firstIds["report"], report.Id);
        Assert.Equal("Europe/Berlin", report.Definition.TimeZone);
    }

    [Fact]
    public async Task A_static_sync_with_one_invalid_definition_stores_none_of_them()
    {
        await using var rig = new Rig(db);
        var good = new ScheduleDefinition { TaskName = "report", Cron = "0 0 * * *" };
        var bad = new ScheduleDefinition { TaskName = "broken", Cron = "not a cron" };

        var error = await Assert.ThrowsAsync<ScheduleValidationException>(() => rig.Source.SyncStaticSchedulesAsync([good, bad]));

        Assert.Equal("Cron", error.ParamName);
        Assert.Empty(await rig.Source.ListSchedulesAsync());
    }

    [Fact]
    public async Task Invalid_schedules_are_refused_at_add_with_the_field_named()
    {
        await using var rig = new Rig(db, knownTasks: ["known"]);

        async Task<string?> Field(ScheduleDefinition d) => (await Assert.ThrowsAsync<ScheduleValidationException>(() => rig.Source.AddScheduleAsync(d))).ParamName;

        Assert.Equal("Cron", await Field(new ScheduleDefinition { TaskName = "known", Cron = "every day" }));
        Assert.Equal("TimeZone", await Field(new ScheduleDefinition { TaskName = "known", Cron = "* * * * *", TimeZone = "Nowhere/City" }));
        Assert.Equal("Interval", await Field(new ScheduleDefinition { TaskName = "known", Interval = TimeSpan.FromMilliseconds(10) }));
        Assert.Equal("TaskName", await Field(new ScheduleDefinition { TaskName = "unknown", Cron = "* * * * *" }));
        Assert.Equal("Labels", await Field(new ScheduleDefinition { TaskName = "known", Cron = "* * * * *", Labels = new Dictionary<string, string> { ["k"] = "a\0b" } }));
        Assert.Equal("Kwargs", await Field(new ScheduleDefinition { TaskName = "known", Cron = "* * * * *", Kwargs = new Dictionary<string, object?> { ["\uD800"] = 1 } }));
        Assert.Empty(await rig.Source.ListSchedulesAsync());
    }

    [Fact]
    public async Task Corrupted_stored_schedule_is_disabled_with_its_reason_and_the_others_still_fire()
    {
        await using var rig = new Rig(db);
        var good = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "good", Interval = TimeSpan.FromSeconds(1) });
        var bad = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "bad", Interval = TimeSpan.FromSeconds(1) });
        await rig.ExecuteAsync($"UPDATE \"{rig.SourceOptions.SchedulesTable}\" SET schedule = '{{\"cron\": \"not cron at all\"}}' WHERE id = '{bad}'");

        await rig.StartSchedulerAsync();

        await Eventually.TrueAsync(async () => (await rig.Source.GetFiresAsync(good)).Count >= 2, Bound, "the good schedule fires");
        var disabled = Assert.Single(await rig.Source.ListSchedulesAsync(), s => s.Id == bad);
        Assert.False(disabled.Enabled);
        Assert.Contains("no longer parses", disabled.DisabledReason);
        Assert.Empty(await rig.Source.GetFiresAsync(bad));
    }

    [Fact]
    public async Task A_zone_missing_on_this_machine_never_disables_the_schedule_and_the_others_keep_firing()
    {
        await using var rig = new Rig(db);
        var good = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "good", Interval = TimeSpan.FromSeconds(1) });
        var elsewhere = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "zoned", Cron = "* * * * * *" });
        // Added by a replica that has this zone; this machine's time zone data lacks it.
        await rig.ExecuteAsync($"UPDATE \"{rig.SourceOptions.SchedulesTable}\" SET schedule = schedule || '{{\"time_zone\": \"Mars/Olympus_Mons\"}}' WHERE id = '{elsewhere}'");

        var scheduler = await rig.StartSchedulerAsync();
        await Eventually.TrueAsync(async () => (await rig.Source.GetFiresAsync(good)).Count >= 2, Bound, "the good schedule fires");
        await Eventually.TrueAsync(() => scheduler.FailedSchedules == 1, Bound, "the tick reports the schedule it could not fire");
        var health = await new TaskiqSchedulerReadinessCheck(scheduler).CheckHealthAsync(new Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckContext());
        Assert.Equal(Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus.Degraded, health.Status);
        var zoned = Assert.Single(await rig.Source.ListSchedulesAsync(), s => s.Id == elsewhere);
        Assert.True(zoned.Enabled);
        Assert.Null(zoned.DisabledReason);
    }

    [Fact]
    public async Task A_schedule_whose_task_can_never_be_kicked_is_disabled_with_the_reason_and_the_others_fire()
    {
        await using var rig = new Rig(db);
        var good = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "good", Interval = TimeSpan.FromSeconds(1) });
        var huge = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "huge", Interval = TimeSpan.FromSeconds(1), Args = [new string('x', 2_000_000)] });

        await rig.StartSchedulerAsync();
        await Eventually.TrueAsync(async () => !(await rig.Source.ListSchedulesAsync()).Single(s => s.Id == huge).Enabled, Bound, "the oversized schedule is disabled");
        await Eventually.TrueAsync(async () => (await rig.Source.GetFiresAsync(good)).Count >= 2, Bound, "the good schedule fires");
        Assert.Contains("cannot be kicked", (await rig.Source.ListSchedulesAsync()).Single(s => s.Id == huge).DisabledReason);
        Assert.Empty(await rig.Source.GetFiresAsync(huge));
    }

    [Fact]
    public async Task One_shot_with_an_offset_fires_and_the_schedules_beside_it_keep_firing()
    {
        await using var rig = new Rig(db);
        var now = await rig.DbNowAsync();
        var oneShot = await rig.Source.AddScheduleAsync(new ScheduleDefinition
        {
            TaskName = "once", RunAt = (now + TimeSpan.FromSeconds(1)).ToOffset(TimeSpan.FromHours(2)),
        });
        var west = await rig.Source.AddScheduleAsync(new ScheduleDefinition
        {
            TaskName = "once_west", RunAt = (now + TimeSpan.FromSeconds(1)).ToOffset(TimeSpan.FromHours(-7)),
        });
        var every = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "every", Interval = TimeSpan.FromSeconds(1) });

        var scheduler = await rig.StartSchedulerAsync();
        await Eventually.TrueAsync(async () => (await rig.Source.GetFiresAsync(oneShot)).Count == 1 && (await rig.Source.GetFiresAsync(west)).Count == 1,
            Bound, "both one-shots fire");
        await Eventually.TrueAsync(async () => (await rig.Source.GetFiresAsync(every)).Count >= 2, Bound, "the interval schedule fires");
        Assert.Equal(0, scheduler.FailedSchedules);
        var fire = Assert.Single(await rig.Source.GetFiresAsync(oneShot));
        Assert.Equal((now + TimeSpan.FromSeconds(1)).UtcDateTime, fire.FireAt.UtcDateTime, TimeSpan.FromMilliseconds(1));
    }

    [Fact]
    public async Task A_stored_schedule_without_its_optional_fields_gets_their_defaults_and_fires()
    {
        await using var rig = new Rig(db);
        var id = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "minimal", Interval = TimeSpan.FromSeconds(1) });
        // Written by hand or by an older version: only what is required.
        await rig.ExecuteAsync($"UPDATE \"{rig.SourceOptions.SchedulesTable}\" SET schedule = '{{\"interval_seconds\": 1}}' WHERE id = '{id}'");

        await rig.StartSchedulerAsync();
        await Eventually.TrueAsync(async () => (await rig.Source.GetFiresAsync(id)).Count >= 2, Bound, "the minimal schedule fires");
        var listed = Assert.Single(await rig.Source.ListSchedulesAsync());
        Assert.True(listed.Enabled, listed.DisabledReason);
        Assert.Equal((MissedFirePolicy.Skip, 100), (listed.Definition.MissedFires, listed.Definition.MaxCatchUp));
    }

    [Theory]
    [InlineData(MissedFirePolicy.Skip, 1, 1)]
    [InlineData(MissedFirePolicy.CatchUp, 10, 12)]
    public async Task Missed_instants_follow_the_schedules_policy(MissedFirePolicy policy, int min, int max)
    {
        await using var rig = new Rig(db);
        var id = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "t", Cron = "0 * * * * *", MissedFires = policy });
        // All schedulers were down for the last ~10 minutes: ten per-minute instants were missed.
        await rig.ExecuteAsync($"UPDATE \"{rig.SourceOptions.SchedulesTable}\" SET created_at = now() - interval '10 minutes 30 seconds' WHERE id = '{id}'");

        var scheduler = await rig.StartSchedulerAsync();
        await Eventually.TrueAsync(async () => (await rig.Source.GetFiresAsync(id)).Count >= min, Bound, "missed instants fired");
        var tick = scheduler.LastTick;
        await Eventually.TrueAsync(() => scheduler.LastTick > tick.AddSeconds(1), Bound, "more ticks pass");

        Assert.InRange((await rig.Source.GetFiresAsync(id)).Count, min, max);
    }

    [Fact]
    public async Task Paused_schedule_does_not_fire_until_resumed()
    {
        await using var rig = new Rig(db);
        var id = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "t", Interval = TimeSpan.FromSeconds(1) });
        Assert.True(await rig.Source.PauseScheduleAsync(id));
        var scheduler = await rig.StartSchedulerAsync();
        var tick = scheduler.LastTick;
        await Eventually.TrueAsync(() => scheduler.LastTick > tick.AddSeconds(2), Bound, "ticks pass");
        Assert.Empty(await rig.Source.GetFiresAsync(id));

        Assert.True(await rig.Source.ResumeScheduleAsync(id));

        await Eventually.TrueAsync(async () => (await rig.Source.GetFiresAsync(id)).Count >= 1, Bound, "fires after resume");
        Assert.False(await rig.Source.DeleteScheduleAsync(Guid.NewGuid()));
        Assert.True(await rig.Source.DeleteScheduleAsync(id));
    }

    [Fact]
    public async Task Schedule_added_at_runtime_is_picked_up_at_once_through_notify()
    {
        await using var rig = new Rig(db);
        var scheduler = await rig.StartSchedulerAsync(new TaskiqSchedulerOptions { RefreshInterval = TimeSpan.FromMinutes(10) });
        var tick = scheduler.LastTick;
        await Eventually.TrueAsync(() => scheduler.LastTick > tick, Bound, "the first tick is done");

        // With a 10-minute refresh, only the change notification can make this fire within the bound.
        var id = await rig.Source.AddScheduleAsync(new ScheduleDefinition { TaskName = "now", RunAt = await rig.DbNowAsync() });

        await Eventually.TrueAsync(async () => (await rig.Source.GetFiresAsync(id)).Count == 1, TimeSpan.FromSeconds(10), "the new one-shot fires");
    }

    [Fact]
    public async Task Owned_and_borrowed_data_sources_follow_the_pool_contract()
    {
        var owned = new PostgresScheduleSource(db.ConnectionString, new PostgresScheduleSourceOptions { SchedulesTable = "owned_s", FiresTable = "owned_f" });
        await owned.ListSchedulesAsync();
        await owned.DisposeAsync();
        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await owned.DataSource.OpenConnectionAsync());

        var dataSource = db.CreateDataSource();
        var borrowed = new PostgresScheduleSource(dataSource, new PostgresScheduleSourceOptions { SchedulesTable = "borrowed_s", FiresTable = "borrowed_f" });
        await borrowed.ListSchedulesAsync();
        await borrowed.DisposeAsync();
        await using var command = dataSource.CreateCommand("SELECT 1");
        Assert.Equal(1, await command.ExecuteScalarAsync());
    }
}
