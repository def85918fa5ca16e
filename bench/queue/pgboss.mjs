// pg-boss peer for bench/queue (run by run.sh; see docs/PERFORMANCE.md).
//
//   node pgboss.mjs throughput URL JOBS WORKERS BATCH
//   node pgboss.mjs latency    URL SAMPLES GAP_MS
//
// Same method as btl_queue_bench: a fresh database; throughput enqueues all
// jobs first, then drains them with WORKERS work() loops (batchSize BATCH,
// pollingIntervalSeconds 0.5 = pg-boss's minimum); time runs from the first
// job picked up to the last one marked completed in the table. Latency
// sends one job at a time and measures send() start -> handler start.
// pg-boss 10 has no LISTEN/NOTIFY: an idle worker only finds new work on
// its next poll.
import PgBoss from 'pg-boss';
import pg from 'pg';
import { performance } from 'node:perf_hooks';

const QUEUE = 'bench';
const POLL_S = 0.5;
const CHUNK = 5000;

const [mode, url, ...rest] = process.argv.slice(2);
if (!['throughput', 'latency'].includes(mode) || !url) {
  console.error('usage: pgboss.mjs throughput URL JOBS WORKERS BATCH | latency URL SAMPLES GAP_MS');
  process.exit(2);
}

function intArg(s, name) {
  const v = Number(s);
  if (!Number.isInteger(v) || v < 0) throw new Error(`bad ${name}: ${s}`);
  return v;
}

function pct(sorted, p) {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[i];
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function newBoss() {
  // schedule: false turns off cron handling only; maintenance stays default.
  const boss = new PgBoss({ connectionString: url, max: 10, schedule: false });
  boss.on('error', (e) => console.error('pg-boss error:', e.message));
  await boss.start();
  await boss.createQueue(QUEUE);
  return boss;
}

async function throughput(jobs, workers, batch) {
  const boss = await newBoss();
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  for (let left = jobs; left > 0; left -= CHUNK) {
    const n = Math.min(CHUNK, left);
    await boss.insert(Array.from({ length: n }, () => ({ name: QUEUE, data: {} })));
  }
  await client.query('VACUUM ANALYZE pgboss.job');

  let handled = 0;
  let t0 = 0;
  let allHandled;
  const handledAll = new Promise((r) => (allHandled = r));
  const handler = async (batchJobs) => {
    if (t0 === 0) t0 = performance.now();
    handled += batchJobs.length;
    if (handled >= jobs) allHandled();
  };
  for (let i = 0; i < workers; i++) {
    await boss.work(QUEUE, { batchSize: batch, pollingIntervalSeconds: POLL_S }, handler);
  }
  await handledAll;
  // complete() is not awaited by pg-boss's worker: wait for the table.
  let t1;
  for (;;) {
    const r = await client.query(
      "SELECT count(*)::int AS n FROM pgboss.job WHERE name = $1 AND state <> 'completed'",
      [QUEUE]);
    t1 = performance.now();
    if (r.rows[0].n === 0) break;
    await sleep(2);
  }
  const secs = (t1 - t0) / 1000;
  console.log(`RESULT impl=pg-boss mode=throughput jobs=${jobs} workers=${workers} batch=${batch} ` +
    `poll_s=${POLL_S} seconds=${secs.toFixed(3)} jobs_per_s=${(jobs / secs).toFixed(0)}`);
  await client.end();
  await boss.stop({ graceful: false, wait: true, timeout: 2000 });
}

async function latency(samples, gapMs) {
  const boss = await newBoss();
  let pending = null; // { t0, resolve }
  await boss.work(QUEUE, { batchSize: 1, pollingIntervalSeconds: POLL_S }, async () => {
    const t = performance.now();
    if (pending) pending.resolve(t);
  });
  await sleep(1000);
  const lat = [];
  for (let i = 0; i < samples; i++) {
    const picked = new Promise((resolve) => (pending = { resolve }));
    const t0 = performance.now();
    await boss.send(QUEUE, {});
    const t1 = await picked;
    pending = null;
    lat.push(t1 - t0);
    if (gapMs > 0) await sleep(Math.random() * gapMs);
  }
  lat.sort((a, b) => a - b);
  const f = (v) => v.toFixed(3);
  console.log(`RESULT impl=pg-boss mode=latency samples=${samples} gap_ms=0..${gapMs} ` +
    `wake=poll poll_s=${POLL_S} p50_ms=${f(pct(lat, 0.5))} p90_ms=${f(pct(lat, 0.9))} ` +
    `p99_ms=${f(pct(lat, 0.99))} max_ms=${f(lat[lat.length - 1])}`);
  await boss.stop({ graceful: false, wait: true, timeout: 2000 });
}

try {
  if (mode === 'throughput') {
    await throughput(intArg(rest[0], 'JOBS'), intArg(rest[1], 'WORKERS'), intArg(rest[2], 'BATCH'));
  } else {
    await latency(intArg(rest[0], 'SAMPLES'), intArg(rest[1], 'GAP_MS'));
  }
  process.exit(0);
} catch (e) {
  console.error(`pgboss.mjs: ${e.stack || e}`);
  process.exit(1);
}
