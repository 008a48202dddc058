// graphile-worker side of the TaskiqPg benchmark: bulk-add N no-op jobs (add_jobs, 5,000 per call), then drain them
// with one runOnce() process. Usage: node bench.mjs <postgres-url> <jobs> <default|batched>
import { Logger, makeWorkerUtils, runMigrations, runOnce } from "graphile-worker";

const [connectionString, jobsArg, mode] = process.argv.slice(2);
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
await runOnce({ preset, logger, taskList: { noop: async () => {} } });
const drainRate = jobs / ((performance.now() - start) / 1000);
console.log(JSON.stringify({ addRate, drainRate }));
