// graphile-worker peer for bench/queue (run by run.sh; see docs/PERFORMANCE.md).
//
//   node graphile.mjs throughput URL JOBS WORKERS
//   node graphile.mjs latency    URL SAMPLES GAP_MS
//
// Same method as btl_queue_bench: a fresh database; throughput enqueues all
// jobs first (graphile_worker.add_job in one statement per 5,000), then one
// runner with concurrency WORKERS drains them; time runs from the first job
// picked up to the last job completed (graphile deletes completed jobs, so
// the table is empty). graphile-worker 0.16 fetches and completes one job
// per statement (no batch setting). Latency adds one job at a time with
// addJob() and measures addJob() start -> task start; an idle worker is
// woken by LISTEN/NOTIFY (the jobs:insert trigger), pollInterval is the
// fallback.
import { Logger, makeWorkerUtils, run, runMigrations } from 'graphile-worker';
import pg from 'pg';
import { performance } from 'node:perf_hooks';

const POLL_MS = 2000; // graphile-worker's default
const CHUNK = 5000;

const [mode, url, ...rest] = process.argv.slice(2);
if (!['throughput', 'latency'].includes(mode) || !url) {
  console.error('usage: graphile.mjs throughput URL JOBS WORKERS | latency URL SAMPLES GAP_MS');
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

// Quiet: graphile logs every job at info level by default.
const quiet = new Logger(() => (level, message) => {
  if (level === 'error' || level === 'warning') console.error(`graphile ${level}: ${message}`);
});

async function throughput(jobs, workers) {
  await runMigrations({ connectionString: url, logger: quiet });
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  for (let left = jobs; left > 0; left -= CHUNK) {
    const n = Math.min(CHUNK, left);
    await client.query(
      "SELECT count(graphile_worker.add_job('noop', '{}'::json)) FROM generate_series(1, $1)", [n]);
  }
  await client.query('VACUUM ANALYZE');

  let handled = 0;
  let t0 = 0;
  let allHandled;
  const handledAll = new Promise((r) => (allHandled = r));
  const runner = await run({
    connectionString: url,
    concurrency: workers,
    pollInterval: POLL_MS,
    noHandleSignals: true,
    logger: quiet,
    taskList: {
      noop: async () => {
        if (t0 === 0) t0 = performance.now();
        if (++handled >= jobs) allHandled();
      },
    },
  });
  await handledAll;
  let t1;
  for (;;) {
    const r = await client.query('SELECT count(*)::int AS n FROM graphile_worker._private_jobs');
    t1 = performance.now();
    if (r.rows[0].n === 0) break;
    await sleep(2);
  }
  const secs = (t1 - t0) / 1000;
  console.log(`RESULT impl=graphile-worker mode=throughput jobs=${jobs} workers=${workers} ` +
    `batch=1 poll_ms=${POLL_MS} seconds=${secs.toFixed(3)} jobs_per_s=${(jobs / secs).toFixed(0)}`);
  await runner.stop();
  await client.end();
}

async function latency(samples, gapMs) {
  await runMigrations({ connectionString: url, logger: quiet });
  let pending = null;
  const runner = await run({
    connectionString: url,
    concurrency: 1,
    pollInterval: POLL_MS,
    noHandleSignals: true,
    logger: quiet,
    taskList: {
      noop: async () => {
        const t = performance.now();
        if (pending) pending.resolve(t);
      },
    },
  });
  const utils = await makeWorkerUtils({ connectionString: url, logger: quiet });
  await sleep(1000);
  const lat = [];
  for (let i = 0; i < samples; i++) {
    const picked = new Promise((resolve) => (pending = { resolve }));
    const t0 = performance.now();
    await utils.addJob('noop', {});
    const t1 = await picked;
    pending = null;
    lat.push(t1 - t0);
    if (gapMs > 0) await sleep(Math.random() * gapMs);
  }
  lat.sort((a, b) => a - b);
  const f = (v) => v.toFixed(3);
  console.log(`RESULT impl=graphile-worker mode=latency samples=${samples} gap_ms=0..${gapMs} ` +
    `wake=listen-notify poll_ms=${POLL_MS} p50_ms=${f(pct(lat, 0.5))} p90_ms=${f(pct(lat, 0.9))} ` +
    `p99_ms=${f(pct(lat, 0.99))} max_ms=${f(lat[lat.length - 1])}`);
  await utils.release();
  await runner.stop();
}

try {
  if (mode === 'throughput') {
    await throughput(intArg(rest[0], 'JOBS'), intArg(rest[1], 'WORKERS'));
  } else {
    await latency(intArg(rest[0], 'SAMPLES'), intArg(rest[1], 'GAP_MS'));
  }
  process.exit(0);
} catch (e) {
  console.error(`graphile.mjs: ${e.stack || e}`);
  process.exit(1);
}
