using TaskiqPg.Faults;

// The fault suite: real processes, a real PostgreSQL server the runner can restart, a ledger of every execution.
//   dotnet run -c Release --project tests/TaskiqPg.Faults -- [--smoke] [--only kill9,restart,...] [--out summary.json]
// Child roles (started by the runner itself; connection string in TASKIQPG_FAULTS_CONNECTION, never on argv):
//   --worker <queue> <name> [key=value ...] | --producer <queue> <count> <delaySeconds> | --scheduler <name>
//   | --local-time-kick <queue> <schedulesTable> (kicks and schedules with DateTimeOffset.Now of this process's TZ)
//   | --acked-producer <queue> <count> <pauseMs> (one kick per transaction; prints "acked <id>" once committed)
//   | --unique-producer <queue> <name> <count> <startAtUnixMs> <single|many> (races other producers on unique kicks)
return args switch
{
    ["--worker", var queue, var name, .. var settings] => await Roles.WorkerAsync(queue, name, Settings.Parse(settings)),
    ["--producer", var queue, var count, var delay] => await Roles.ProducerAsync(queue, int.Parse(count), int.Parse(delay)),
    ["--acked-producer", var queue, var count, var pauseMs] => await Roles.AckedProducerAsync(queue, int.Parse(count), int.Parse(pauseMs)),
    ["--scheduler", var name, .. var settings] => await Roles.SchedulerAsync(name, Settings.Parse(settings)),
    ["--local-time-kick", var queue, var schedules, ..] => await Roles.LocalTimeKickAsync(queue, schedules),
    ["--unique-producer", var queue, var name, var count, var startAt, var mode] =>
        await Roles.UniqueProducerAsync(queue, name, int.Parse(count), long.Parse(startAt), mode == "many"),
    _ => await FaultRunner.MainAsync(args),
};
