// graphile-worker side of the TaskiqPg benchmark: bulk-add N no-op jobs (add_jobs, 5,000 per call), then drain them
// with one runOnce() process; then, if asked, idle latency: add one job, wait until it starts, repeat.
// Usage: TASKIQPG_BENCH_PEER_URL=<postgres-url> node graphile.mjs <jobs> <default|batched> <0.17|0.18> [latencySamples]
// (the URL carries the password: passed by environment, never on the command line where ps would show it)
const connectionString = process.env.TASKIQPG_BENCH_PEER_URL;
const [jobsArg, mode, version, latencyArg] = process.argv.slice(2);
const { Logger, makeWorkerUtils, run, runMigrations, runOnce } = await import(version === "0.18" ? "graphile-worker-0.18" : "graphile-worker");
const jobs = Number(jobsArg);
const batched = mode === "batched";
const worker = {
  connectionString,
  concurrentJobs: 24,
  ...(batched ? { maxPoolSize: 25, localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } : {}),
};
const preset = { worker };
const logger = new Logger(() => () => {});

await runMigrations({ preset, logger });
const utils = await makeWorkerUtils({ preset, logger });
let start = performance.now();
for (let sent = 0; sent < jobs; sent += 5000) {
  const n = Math.min(5000, jobs - sent);
  await utils.addJobs(Array.from({ length: n }, () => ({ identifier: "noop", payload: {} })));
}
const addRate = jobs / ((performance.now() - start) / 1000);
await utils.release();

start = performance.now();
let ran = 0;
await runOnce({ preset, logger, taskList: { noop: async () => { ran++; } } });
// The jobs that ran, not the jobs added: a runOnce that returned early must not look fast.
const drainRate = ran / ((performance.now() - start) / 1000);
if (ran !== jobs) {
  console.error(`runOnce returned after ${ran} of ${jobs} jobs`);
}

const latencies = [];
const samples = Number(latencyArg ?? 0);
if (samples > 0) {
  const waiting = new Map();
  const runner = await run({ preset, logger, taskList: { ping: async (payload) => waiting.get(payload.id)?.(performance.now()) } });
  const pinger = await makeWorkerUtils({ preset, logger });
  for (let i = 0; i < samples; i++) {
    const id = `p${i}`;
    const startedAt = new Promise((resolve) => waiting.set(id, resolve));
    const t0 = performance.now();
    await pinger.addJob("ping", { id });
    latencies.push((await startedAt) - t0);
  }
  await pinger.release();
  await runner.stop();
}
console.log(JSON.stringify({ addRate, drainRate, latencies }));
