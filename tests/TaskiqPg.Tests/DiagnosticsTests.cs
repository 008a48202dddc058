using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace TaskiqPg.Tests;

public sealed class DiagnosticsTests(DatabaseFixture db) : IClassFixture<DatabaseFixture>
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(15);

    [Fact]
    public async Task Kick_and_execution_land_in_one_trace_with_producer_and_consumer_spans()
    {
        var stopped = new ConcurrentQueue<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name is TaskiqDiagnostics.SourceName or "test",
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = stopped.Enqueue,
        };
        ActivitySource.AddActivityListener(listener);
        using var testSource = new ActivitySource("test");
        string? handlerTraceId = null;
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("traced", () => { handlerTraceId = Activity.Current?.TraceId.ToString(); }));
        await harness.StartWorkerAsync();

        TaskHandle handle;
        ActivityTraceId requestTrace;
        using (var request = testSource.StartActivity("POST /tasks", ActivityKind.Server)!)
        {
            requestTrace = request.TraceId;
            handle = await harness.Client.KickAsync("traced");
        }

        await handle.WaitForResultAsync(Bound);
        await Eventually.TrueAsync(() => stopped.Any(a => a.Kind == ActivityKind.Consumer && (string?)a.GetTagItem("messaging.message.id") == handle.TaskId),
            Bound, "the consumer span ends");

        var send = Assert.Single(stopped, a => a.Kind == ActivityKind.Producer && (string?)a.GetTagItem("messaging.message.id") == handle.TaskId);
        var process = Assert.Single(stopped, a => a.Kind == ActivityKind.Consumer && (string?)a.GetTagItem("messaging.message.id") == handle.TaskId);
        var queue = harness.Broker.Options.Queue;
        Assert.Equal($"send {queue}", send.DisplayName);
        Assert.Equal($"process {queue}", process.DisplayName);
        Assert.Equal(requestTrace, send.TraceId);
        Assert.Equal(requestTrace, process.TraceId);
        Assert.Equal(send.SpanId, process.ParentSpanId);
        Assert.Equal(send.SpanId, Assert.Single(process.Links).Context.SpanId);
        Assert.Equal(requestTrace.ToString(), handlerTraceId);
        foreach (var span in new[] { send, process })
        {
            Assert.Equal("taskiq", span.GetTagItem("messaging.system"));
            Assert.Equal(queue, span.GetTagItem("messaging.destination.name"));
        }

        Assert.Equal("send", send.GetTagItem("messaging.operation.type"));
        Assert.Equal("process", process.GetTagItem("messaging.operation.type"));
    }

    [Fact]
    public async Task Failed_execution_marks_the_consumer_span_as_error()
    {
        var stopped = new ConcurrentQueue<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == TaskiqDiagnostics.SourceName,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = stopped.Enqueue,
        };
        ActivitySource.AddActivityListener(listener);
        await using var harness = await QueueHarness.CreateAsync(db, r => r.Add("broken", (Action)(() => throw new FormatException("bad"))));
        await harness.StartWorkerAsync();

        var handle = await harness.Client.KickAsync("broken", options: new KickOptions { MaxAttempts = 1 });
        await Assert.ThrowsAsync<TaskExecutionException>(() => handle.WaitForResultAsync(Bound));

        await Eventually.TrueAsync(() => stopped.Any(a => a.Kind == ActivityKind.Consumer && (string?)a.GetTagItem("messaging.message.id") == handle.TaskId), Bound, "span ends");
        var process = stopped.Single(a => a.Kind == ActivityKind.Consumer && (string?)a.GetTagItem("messaging.message.id") == handle.TaskId);
        Assert.Equal(ActivityStatusCode.Error, process.Status);
        Assert.Equal(nameof(FormatException), process.GetTagItem("error.type"));
    }

    [Fact]
    public async Task Counters_histograms_and_queue_depth_are_reported_per_queue()
    {
        var harness = await QueueHarness.CreateAsync(db, r => r
            .Add("ok", () => 1)
            .Add("fail", (Action)(() => throw new InvalidOperationException("no"))),
            broker: new PostgresBrokerOptions { RetryBaseDelay = TimeSpan.FromMilliseconds(20) });
        await using var _ = harness;
        var queue = harness.Broker.Options.Queue;
        var sums = new ConcurrentDictionary<string, double>();
        var depth = new ConcurrentDictionary<string, long>();
        using var meterListener = new MeterListener
        {
            InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == TaskiqDiagnostics.MeterName)
                {
                    l.EnableMeasurementEvents(instrument);
                }
            },
        };
        void Record(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            string? q = null, status = null;
            foreach (var tag in tags)
            {
                if (tag.Key == "messaging.destination.name") q = tag.Value as string;
                if (tag.Key == "taskiq.state") status = tag.Value as string;
            }

            if (q != queue)
            {
                return;
            }

            if (instrument.Name == "taskiqpg.queue.depth")
            {
                depth[status!] = (long)value;
            }
            else
            {
                sums.AddOrUpdate(instrument.Name + (instrument is Histogram<double> ? ".count" : ""), instrument is Histogram<double> ? 1 : value,
                    (_, old) => old + (instrument is Histogram<double> ? 1 : value));
            }
        }

        meterListener.SetMeasurementEventCallback<long>((i, v, t, _) => Record(i, v, t));
        meterListener.SetMeasurementEventCallback<double>((i, v, t, _) => Record(i, v, t));
        meterListener.Start();

        // A parked task (delayed an hour) keeps the depth gauge non-zero.
        await harness.Client.KickAsync("ok", options: new KickOptions { Delay = TimeSpan.FromHours(1) });
        await harness.StartWorkerAsync(new TaskiqWorkerOptions { PollInterval = TimeSpan.FromMilliseconds(50) });
        var ok = await harness.Client.KickAsync("ok");
        var fail = await harness.Client.KickAsync("fail", options: new KickOptions { MaxAttempts = 2 });
        await ok.WaitForResultAsync(Bound);
        await Assert.ThrowsAsync<TaskExecutionException>(() => fail.WaitForResultAsync(Bound));

        await Eventually.TrueAsync(() =>
        {
            meterListener.RecordObservableInstruments();
            return depth.GetValueOrDefault("scheduled") == 1 && depth.GetValueOrDefault("completed") == 1 && depth.GetValueOrDefault("discarded") == 1
                   && depth.GetValueOrDefault("available") == 0;
        }, Bound, "the depth gauge shows the delayed task scheduled, one completed and one discarded");
        await Eventually.TrueAsync(() => sums.GetValueOrDefault("taskiqpg.tasks.dead_lettered") == 1, Bound, "the dead letter is counted");
        Assert.Equal(3, sums["taskiqpg.tasks.kicked"]);
        Assert.Equal(1, sums["taskiqpg.tasks.completed"]);
        Assert.Equal(2, sums["taskiqpg.tasks.failed"]);
        Assert.Equal(1, sums["taskiqpg.tasks.retried"]);
        Assert.Equal(3, sums["taskiqpg.task.duration.count"]);
        Assert.Equal(3, sums["taskiqpg.task.queue_wait.count"]);
    }
}
