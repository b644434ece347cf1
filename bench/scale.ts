// Scale-out benchmark: deliveries per second with 1 and with 2 worker processes on Redis
// (server.queue type bullmq), side by side in one run, each beside its floor.
//   - workers: the shipped configuration (mappings/ and the connectors naming their outputs)
//     with the queue on Redis. An ingest process (`--role ingest`, in this process) takes
//     BOOKINGS bookings over MLLP (8 connections) while no worker runs; then
//     `carerelay start --role worker --processes K` routes and delivers them (each booking's
//     confirmation is due at once; its reminders are not). Measured from the moment all K
//     processes run until every confirmation is kept by the outbox: the deliveries BullMQ
//     counts done in that window, per second. What the first process delivered while the
//     second was still starting is left out of both the count and the time.
//   - floor: the same queue with a handler that does nothing (no store, no output), in K
//     processes: the most BullMQ and this Redis run on this machine, the ceiling of any
//     delivery on them. Every delivery figure is read as a share of its floor.
//   - goal: 2 worker processes deliver >= 1.6x one (2 cores: the figure says what this host
//     allows; the ratio is what sizing uses).
// Redis: CARERELAY_BENCH_REDIS_URL or CARERELAY_TEST_REDIS_URL when set, else a redis-server
// started for the run (test/helpers/redis.ts). Run alone with
// `node --expose-gc --import tsx bench/scale.ts`, or through bench/run.ts (`npm run bench scale`).
// `node --import tsx bench/scale.ts floor-worker URL PREFIX NAME` is the floor's child process.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { randomBytes } from 'node:crypto';
import { MllpClient } from '../src/hl7v2/mllp-client.ts';
import { silentLogger } from '../src/log.ts';
import { startCarerelay } from '../src/main.ts';
import { BullMqQueue } from '../src/queue/bullmq.ts';
import { connectRedis } from '../src/queue/redis.ts';
import { openSqliteDatabase } from '../src/store/sqlite-db.ts';
import { DEFAULT_DELIVERY_CONCURRENCY, DELIVERY_QUEUE } from '../src/workers/runtime.ts';
import { spawnRedis } from '../test/helpers/redis.ts';
import { startChildServer } from '../test/helpers/server.ts';
import { benchConnectorLines, bookingSiu, writeConfig } from './measure.ts';

// CARERELAY_BENCH_SCALE_BOOKINGS shrinks the run for a quick check of the benchmark itself.
const BOOKINGS = Number(process.env.CARERELAY_BENCH_SCALE_BOOKINGS ?? 4_000);
const FLOOR_JOBS = Number(process.env.CARERELAY_BENCH_SCALE_FLOOR_JOBS ?? 20_000);
const CONNECTIONS = 8;
const PROCESSES = [1, 2] as const;
const thisFile = fileURLToPath(import.meta.url);
const repoRoot = fileURLToPath(new URL('..', import.meta.url));

async function redisUrl(): Promise<{ url: string; stop: () => void }> {
  const given = process.env.CARERELAY_BENCH_REDIS_URL || process.env.CARERELAY_TEST_REDIS_URL;
  if (given) return { url: given, stop: () => {} };
  const dir = mkdtempSync(join(tmpdir(), 'carerelay-bench-redis-'));
  const { url, child } = await spawnRedis(dir);
  return {
    url,
    stop: () => {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Polls `read` every 50 ms until it gives true (a benchmark's progress, not a test's sync). */
async function until(read: () => boolean | Promise<boolean>, limitMs: number, what: string): Promise<void> {
  const deadline = performance.now() + limitMs;
  while (!(await read())) {
    if (performance.now() > deadline) throw new Error(`${what}: not reached within ${limitMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Deliveries/s of the shipped configuration with `processes` worker processes. */
async function workersRun(url: string, processes: number): Promise<{ deliveriesPerS: number; deliveries: number; seconds: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'carerelay-bench-scale-'));
  const prefix = `bench-scale-${processes}-${randomBytes(4).toString('hex')}`;
  writeConfig(dir, benchConnectorLines(dir, [`  queue: { type: bullmq, url: { env: REDIS_URL }, prefix: ${prefix} }`]), true);
  const env = { ...process.env, REDIS_URL: url } as Record<string, string>;
  try {
    // Bookings in, nothing routed yet: the ingest process only commits.
    const ingest = await startCarerelay({ configDir: dir, env, log: silentLogger, role: 'ingest', watchMappings: false });
    const port = ingest.mllpPorts.get('bench-mllp')!;
    const clients = Array.from({ length: CONNECTIONS }, () => new MllpClient({ host: '127.0.0.1', port, ackTimeoutMs: 60_000 }));
    await Promise.all(clients.map((c) => c.connect()));
    let next = 0;
    await Promise.all(
      clients.map(async (client) => {
        for (let n = next++; n < BOOKINGS; n = next++) {
          const ack = await client.send(bookingSiu(`S${processes}-${n}`, n));
          if (ack.indexOf('MSA|AA|') === -1) throw new Error(`booking ${n} was not accepted: ${ack.toString('latin1')}`);
        }
      }),
    );
    await Promise.all(clients.map((c) => c.close()));
    await ingest.stop();

    const db = openSqliteDatabase(join(dir, 'data', 'carerelay.db'), { readonly: true });
    const confirmations = db.prepare("SELECT COUNT(*) AS n FROM outbox WHERE delivery_id LIKE 'booking-confirmation@%'");
    const redis = connectRedis({ url }, 'commands', 'carerelay-bench');
    const deliveries = new BullMqQueue({ name: DELIVERY_QUEUE, prefix, connection: redis });
    try {
      const workers = await startChildServer(dir, { env: { REDIS_URL: url }, args: ['--role', 'worker', '--processes', String(processes)], processes, startTimeoutMs: 120_000 });
      try {
        const t0 = performance.now();
        const doneAtStart = (await deliveries.counts()).done;
        await until(() => (confirmations.get() as { n: number }).n >= BOOKINGS, 30 * 60_000, `${BOOKINGS} confirmations with ${processes} worker process(es)`);
        const seconds = (performance.now() - t0) / 1000;
        const done = (await deliveries.counts()).done - doneAtStart;
        return { deliveriesPerS: Math.round(done / seconds), deliveries: done, seconds: Number(seconds.toFixed(1)) };
      } finally {
        await workers.stop();
      }
    } finally {
      await deliveries.close();
      redis.disconnect();
      db.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** No-op jobs/s of BullMQ on this Redis with `processes` processes (the floor). */
async function floorRun(url: string, processes: number): Promise<number> {
  const prefix = `bench-floor-${processes}-${randomBytes(4).toString('hex')}`;
  const redis = connectRedis({ url }, 'commands', 'carerelay-bench');
  const queue = new BullMqQueue<{ n: number }>({ name: 'floor', prefix, connection: redis });
  const children: ChildProcess[] = [];
  try {
    const runAt = new Date();
    for (let at = 0; at < FLOOR_JOBS; at += 1_000) {
      await queue.addMany(Array.from({ length: Math.min(1_000, FLOOR_JOBS - at) }, (_, i) => ({ id: `f${at + i}`, data: { n: at + i }, runAt })));
    }
    // Every child says "ready" once it takes jobs; the clock starts when all have.
    const ready: Array<Promise<void>> = [];
    for (let i = 0; i < processes; i++) {
      const child = spawn(process.execPath, ['--import', 'tsx', thisFile, 'floor-worker', url, prefix, 'floor'], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'inherit'] });
      children.push(child);
      ready.push(
        new Promise<void>((resolve, reject) => {
          child.stdout!.setEncoding('utf8').once('data', () => resolve());
          child.once('exit', (code) => reject(new Error(`floor worker exited (${code})`)));
        }),
      );
    }
    await Promise.all(ready);
    const t0 = performance.now();
    const doneAtStart = (await queue.counts()).done;
    await until(async () => (await queue.counts()).done >= FLOOR_JOBS, 10 * 60_000, `${FLOOR_JOBS} no-op jobs with ${processes} process(es)`);
    return Math.round(((await queue.counts()).done - doneAtStart) / ((performance.now() - t0) / 1000));
  } finally {
    for (const child of children) {
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      await exited;
    }
    await queue.close();
    redis.disconnect();
  }
}

export async function benchScale(): Promise<Record<string, number>> {
  const { url, stop } = await redisUrl();
  const figures: Record<string, number> = {};
  try {
    for (const k of PROCESSES) {
      figures[`scale_floor_noop_${k}proc_jobs_per_s`] = await floorRun(url, k);
      (globalThis as { gc?: () => void }).gc?.();
      const run = await workersRun(url, k);
      figures[`scale_shipped_${k}proc_deliveries_per_s`] = run.deliveriesPerS;
      figures[`scale_shipped_${k}proc_deliveries`] = run.deliveries;
      figures[`scale_shipped_${k}proc_seconds`] = run.seconds;
      figures[`scale_shipped_vs_floor_${k}proc_pct`] = Math.round((run.deliveriesPerS / figures[`scale_floor_noop_${k}proc_jobs_per_s`]!) * 1000) / 10;
      (globalThis as { gc?: () => void }).gc?.();
    }
  } finally {
    stop();
  }
  const ratio = (a: number, b: number) => Math.round((a / b) * 100) / 100;
  figures.scale_shipped_2proc_vs_1proc_x = ratio(figures.scale_shipped_2proc_deliveries_per_s!, figures.scale_shipped_1proc_deliveries_per_s!);
  figures.scale_floor_2proc_vs_1proc_x = ratio(figures.scale_floor_noop_2proc_jobs_per_s!, figures.scale_floor_noop_1proc_jobs_per_s!);

  console.log('\nworkers  shipped deliveries/s  floor no-op jobs/s  % floor');
  for (const k of PROCESSES) {
    console.log(
      `${String(k).padStart(7)}  ${String(figures[`scale_shipped_${k}proc_deliveries_per_s`]).padStart(20)}  ` +
        `${String(figures[`scale_floor_noop_${k}proc_jobs_per_s`]).padStart(18)}  ${String(figures[`scale_shipped_vs_floor_${k}proc_pct`]).padStart(7)}`,
    );
  }
  console.log(
    `goal: 2 worker processes deliver >= 1.6x one — shipped ${figures.scale_shipped_2proc_vs_1proc_x}x ` +
      `(the floor itself: ${figures.scale_floor_2proc_vs_1proc_x}x on this machine)\n`,
  );
  return figures;
}

/** The floor's child: takes jobs of the queue and does nothing with them, until SIGTERM. */
async function floorWorker(url: string, prefix: string, name: string): Promise<void> {
  const connection = connectRedis({ url }, 'commands', 'carerelay-bench-floor');
  const queue = new BullMqQueue<{ n: number }>({ name, prefix, connection });
  queue.process(async () => {}, { concurrency: DEFAULT_DELIVERY_CONCURRENCY });
  process.stdout.write('ready\n');
  await once(process, 'SIGTERM');
  await queue.close();
  connection.disconnect();
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  if (process.argv[2] === 'floor-worker') await floorWorker(process.argv[3]!, process.argv[4]!, process.argv[5]!);
  else console.log(await benchScale());
}
