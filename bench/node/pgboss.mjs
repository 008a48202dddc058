// pg-boss side of the TaskiqPg benchmark: bulk-insert N no-op jobs (insert, 5,000 per call), then drain them with one
// process (work(): batches of 100, 4 local workers, fetching back to back while batches come back full; each batch
// completed, and its output stored, when the handler returns); then, if asked, idle latency with LISTEN/NOTIFY on:
// send one job, wait until its handler starts, repeat.
// Usage: TASKIQPG_BENCH_PEER_URL=<postgres-url> node pgboss.mjs <jobs> [latencySamples]
// (the URL carries the password: passed by environment, never on the command line where ps would show it)
import { PgBoss } from "pg-boss";
import pg from "pg";

const connectionString = process.env.TASKIQPG_BENCH_PEER_URL;
const [jobsArg, latencyArg] = process.argv.slice(2);
const jobs = Number(jobsArg);
const boss = new PgBoss({ connectionString, max: 10, useListenNotify: true });
boss.on("error", (error) => console.error(error));
await boss.start();
await boss.createQueue("noop", { notify: true });
await boss.createQueue("ping", { notify: true });

let start = performance.now();
for (let sent = 0; sent < jobs; sent += 5000) {
  const n = Math.min(5000, jobs - sent);
  await boss.insert("noop", Array.from({ length: n }, () => ({ data: {} })));
}
const addRate = jobs / ((performance.now() - start) / 1000);

let handled = 0;
let allHandled;
const drained = new Promise((resolve) => (allHandled = resolve));
start = performance.now();
await boss.work("noop", { batchSize: 100, localConcurrency: 4, burstWhenBatchFull: true, pollingIntervalSeconds: 0.5 }, async (batch) => {
  handled += batch.length;
  if (handled >= jobs) allHandled();
});
await drained;
await boss.offWork("noop", { wait: true }); // the last batches' completions written
const drainRate = jobs / ((performance.now() - start) / 1000);

// Every job must have completed (the drain rate of a queue that dropped jobs would mean nothing).
const client = new pg.Client({ connectionString });
await client.connect();
const { rows } = await client.query("SELECT count(*)::int AS n FROM pgboss.job WHERE name = 'noop' AND state = 'completed'");
await client.end();
if (rows[0].n !== jobs) {
  console.error(`pg-boss completed ${rows[0].n} of ${jobs} jobs`);
  process.exit(1);
}

const latencies = [];
const samples = Number(latencyArg ?? 0);
if (samples > 0) {
  const waiting = new Map();
  await boss.work("ping", { pollingIntervalSeconds: 0.5 }, async ([job]) => waiting.get(job.data.id)?.(performance.now()));
  for (let i = 0; i < samples; i++) {
    const id = `p${i}`;
    const startedAt = new Promise((resolve) => waiting.set(id, resolve));
    const t0 = performance.now();
    await boss.send("ping", { id });
    latencies.push((await startedAt) - t0);
  }
}

await boss.stop({ graceful: true, wait: true });
console.log(JSON.stringify({ addRate, drainRate, latencies }));
