using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Npgsql;

namespace TaskiqPg.Tests;

/// <summary>Ordinary inputs that used to break kicks and workers (issue 10): offsets, NULs, extremes, shared messages.</summary>
public sealed class OrdinaryInputTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    [Theory]
    [InlineData(2)]
    [InlineData(-7)]
    public async Task RunAt_with_a_non_UTC_offset_is_stored_as_the_same_instant_by_every_kick_path(int offsetHours)
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        var instant = new DateTimeOffset(2031, 5, 6, 7, 8, 9, TimeSpan.FromHours(offsetHours));
        var options = new KickOptions { RunAt = instant };
        var single = TaskMessage.Create("later");
        var many = TaskMessage.Create("later");
        var inTransaction = TaskMessage.Create("later");

        await harness.Broker.KickAsync(single, options);
        await harness.Broker.KickManyAsync([many], options);
        await using (var connection = await harness.DataSource.OpenConnectionAsync())
        await using (var transaction = await connection.BeginTransactionAsync())
        {
            await harness.Broker.KickAsync(inTransaction, connection, transaction, options);
            await transaction.CommitAsync();
        }

        foreach (var message in new[] { single, many, inTransaction })
        {
            var state = await harness.Broker.GetTaskAsync(message.TaskId);
            Assert.Equal(instant.UtcDateTime, state!.RunAt.UtcDateTime);
        }
    }

    [Theory]
    [InlineData("task_name")]
    [InlineData("task_id")]
    [InlineData("label key")]
    [InlineData("label value")]
    [InlineData("option label")]
    [InlineData("kwarg name")]
    [InlineData("lone surrogate")]
    [InlineData("long task id")]
    public async Task A_message_field_PostgreSQL_cannot_store_is_refused_at_kick_with_a_typed_error_naming_it(string what)
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        KickOptions? options = null;
        var (message, field) = what switch
        {
            "task_name" => (TaskMessage.Create("bad\0name"), "task_name"),
            "task_id" => (TaskMessage.Create("ok", taskId: "id\0"), "task_id"),
            "label key" => (WithLabel(TaskMessage.Create("ok"), "k\0", "v"), "labels"),
            "label value" => (WithLabel(TaskMessage.Create("ok"), "k", "v\0"), "labels"),
            "kwarg name" => (TaskMessage.Create("ok", kwargs: new Dictionary<string, object?> { ["a\0"] = 1 }), "kwargs"),
            "lone surrogate" => (TaskMessage.Create("bad\uD800name"), "task_name"),
            "long task id" => (TaskMessage.Create("ok", taskId: new string('x', TaskMessage.MaxTaskIdLength + 1)), "task_id"),
            _ => (TaskMessage.Create("ok"), "labels"),
        };
        if (what == "option label")
        {
            options = new KickOptions { Labels = new Dictionary<string, string> { ["tenant"] = "a\0b" } };
        }

        Assert.Equal(field, (await Assert.ThrowsAsync<InvalidTaskMessageException>(() => harness.Broker.KickAsync(message, options))).Field);
        Assert.Equal(field, (await Assert.ThrowsAsync<InvalidTaskMessageException>(() => harness.Broker.KickManyAsync([message], options))).Field);
        Assert.Equal(0L, (await harness.Broker.GetQueueCountsAsync()).Values.Sum());

        static TaskMessage WithLabel(TaskMessage message, string key, string value)
        {
            message.Labels[key] = value;
            return message;
        }
    }

    [Fact]
    public async Task Extreme_delays_and_timeouts_are_refused_at_kick_with_a_clear_message()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        var delay = await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() =>
            harness.Broker.KickAsync(TaskMessage.Create("x"), new KickOptions { Delay = TimeSpan.MaxValue }));
        Assert.Contains(nameof(KickOptions.Delay), delay.Message);
        var timeout = await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() =>
            harness.Broker.KickManyAsync([TaskMessage.Create("x")], new KickOptions { Timeout = TimeSpan.FromDays(60) }));
        Assert.Contains(nameof(KickOptions.Timeout), timeout.Message);
        var attempts = await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() =>
            harness.Broker.KickAsync(TaskMessage.Create("x"), new KickOptions { MaxAttempts = 0 }));
        Assert.Contains(nameof(KickOptions.MaxAttempts), attempts.Message);

        // The far end that is accepted can be read back.
        var far = TaskMessage.Create("x");
        await harness.Broker.KickAsync(far, new KickOptions { Delay = KickOptions.MaxDelay });
        Assert.True((await harness.Broker.GetTaskAsync(far.TaskId))!.RunAt > DateTimeOffset.UtcNow.AddYears(99));
        var last = TaskMessage.Create("x");
        await harness.Broker.KickAsync(last, new KickOptions { RunAt = DateTimeOffset.MaxValue.AddDays(-1) });
        Assert.Equal(9999, (await harness.Broker.GetTaskAsync(last.TaskId))!.RunAt.Year);
    }

    [Theory]
    [InlineData("1e300")]
    [InlineData("4300000")] // 49.8 days: more than a cancellation timer holds
    [InlineData("NaN")]
    [InlineData("-5")]
    public async Task A_timeout_label_from_another_producer_that_no_timer_can_hold_runs_the_task_without_one(string label)
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("quick", () => "ran"));
        await harness.StartWorkerAsync();
        var message = TaskMessage.Create("quick");
        message.Labels[TaskLabels.Timeout] = label;
        await harness.Broker.KickAsync(message);

        var result = await harness.Results.WaitForResultAsync(message.TaskId, Bound);
        Assert.False(result.IsError, result.Error?.Message);
        Assert.Equal("ran", result.GetReturnValue<string>());
    }

    [Fact]
    public async Task A_result_that_cannot_be_serialized_fails_permanently_at_once()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r
            .Add("nan", () => double.NaN)
            .Add("cycle", () => { var node = new Node(); node.Next = node; return node; }));
        await harness.StartWorkerAsync();
        var nan = await harness.Client.KickAsync<double>("nan");
        var cycle = await harness.Client.KickAsync<Node>("cycle");

        foreach (var taskId in new[] { nan.TaskId, cycle.TaskId })
        {
            var result = await harness.Results.WaitForResultAsync(taskId, Bound);
            Assert.Equal("ResultNotSerializable", result.Error!.Type);
            var state = await harness.Broker.GetTaskAsync(taskId);
            Assert.Equal((TaskState.Discarded, 1), (state!.State, state.Attempts)); // not retried: it would fail the same way
        }
    }

    [Fact]
    public async Task A_short_MaxTaskNameLength_refuses_long_names_with_the_typed_error()
    {
        await using var harness = await QueueHarness.CreateAsync(db, broker: new PostgresBrokerOptions { MaxTaskNameLength = 10 });
        var error = await Assert.ThrowsAsync<InvalidTaskMessageException>(() => harness.Broker.KickAsync(TaskMessage.Create("a_name_of_twenty_chr")));
        Assert.Equal("task_name", error.Field);
        Assert.Contains(nameof(PostgresBrokerOptions.MaxTaskNameLength), error.Message);
    }

    [Fact]
    public async Task One_message_kicked_from_many_threads_at_once_is_never_changed()
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        var message = TaskMessage.Create("shared");
        var options = new KickOptions { Labels = new Dictionary<string, string> { ["tenant"] = "a" }, Timeout = TimeSpan.FromSeconds(5) };
        using var activitySource = new System.Diagnostics.ActivityListener
        {
            ShouldListenTo = s => s.Name == TaskiqDiagnostics.SourceName,
            Sample = (ref System.Diagnostics.ActivityCreationOptions<System.Diagnostics.ActivityContext> _) => System.Diagnostics.ActivitySamplingResult.AllData,
        };
        System.Diagnostics.ActivitySource.AddActivityListener(activitySource); // trace context is injected too

        await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(async () =>
        {
            for (var i = 0; i < 50; i++)
            {
                await harness.Broker.KickAsync(message, options);
                await harness.Broker.KickManyAsync([message, message], options);
            }
        })));

        Assert.Empty(message.Labels);
        Assert.Equal(1200L, (await harness.Broker.GetQueueCountsAsync())[TaskState.Available]);
        var stored = await harness.ScalarAsync<string>("SELECT labels::text FROM taskiq_messages WHERE queue = $1 LIMIT 1", harness.Broker.Options.Queue);
        Assert.Contains("\"tenant\": \"a\"", stored);
        Assert.Contains("traceparent", stored);
    }

    [Fact]
    public async Task Task_names_nobody_registered_share_one_metric_series()
    {
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("known", (Action)(() => throw new InvalidOperationException("no"))));
        var names = new ConcurrentDictionary<string, byte>();
        using var listener = new MeterListener
        {
            InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == TaskiqDiagnostics.MeterName && instrument.Name == "taskiqpg.tasks.dead_lettered")
                {
                    l.EnableMeasurementEvents(instrument);
                }
            },
        };
        var queue = harness.Broker.Options.Queue;
        listener.SetMeasurementEventCallback<long>((_, _, tags, _) =>
        {
            string? q = null, name = null;
            foreach (var tag in tags)
            {
                if (tag.Key == "messaging.destination.name") q = tag.Value as string;
                if (tag.Key == "taskiq.task_name") name = tag.Value as string;
            }

            if (q == queue && name is not null)
            {
                names[name] = 0;
            }
        });
        listener.Start();

        var random = Enumerable.Range(0, 40).Select(i => TaskMessage.Create("random_" + Guid.NewGuid().ToString("N"))).ToArray();
        await harness.Broker.KickManyAsync([.. random, TaskMessage.Create("known")], new KickOptions { MaxAttempts = 1 });
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });
        await Eventually.TrueAsync(async () => (await harness.Broker.GetQueueCountsAsync())[TaskState.Discarded] == 41, Bound, "all are dead-lettered");
        await Eventually.TrueAsync(() => names.Count == 2, Bound, "both series are recorded");

        Assert.Equal(["(unknown)", "known"], names.Keys.Order());
    }

    public sealed class Node
    {
        public Node? Next { get; set; }
    }
}

/// <summary>A process whose local time zone is not UTC kicks and schedules with <c>DateTimeOffset.Now</c> (issue 10).</summary>
public sealed class LocalTimeZoneTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    [Theory]
    [InlineData("America/Los_Angeles")]
    [InlineData("Asia/Kolkata")]
    public async Task Kicks_and_schedules_with_local_now_work_in_a_process_outside_UTC(string zone)
    {
        await using var harness = await QueueHarness.CreateAsync(db);
        var schedulesTable = "s" + Guid.NewGuid().ToString("N")[..8];
        var run = await ToolRun.RunAsync("TaskiqPg.Faults.dll", ["--local-time-kick", harness.Broker.Options.Queue, schedulesTable], TimeSpan.FromMinutes(2),
            new Dictionary<string, string> { ["TZ"] = zone, ["TASKIQPG_FAULTS_CONNECTION"] = db.ConnectionString });

        Assert.True(run.ExitCode == 0, run.Error);
        Assert.DoesNotContain("offset=00:00:00", run.Output); // the child really ran outside UTC
        var instant = DateTime.Parse(run.Output.Split("at=")[1].Trim(), null, System.Globalization.DateTimeStyles.RoundtripKind);
        foreach (var taskId in new[] { "local-single", "local-many", "local-tx" })
        {
            var state = await harness.Broker.GetTaskAsync(taskId);
            Assert.Equal(instant, state!.RunAt.UtcDateTime, TimeSpan.FromMilliseconds(1));
        }

        await using var source = new PostgresScheduleSource(harness.DataSource, new PostgresScheduleSourceOptions { SchedulesTable = schedulesTable });
        var schedule = Assert.Single(await source.ListSchedulesAsync());
        Assert.Equal(instant, schedule.Definition.RunAt!.Value.UtcDateTime, TimeSpan.FromMilliseconds(1));
    }
}
