// Several CareRelay processes on one Redis (server.queue type bullmq): ingest processes commit
// and ACK, worker processes route (one at a time, by lease) and deliver; a reload reaches every
// process; /readyz answers per role; Redis and worker processes may go away and nothing
// accepted is lost. A redis-server of this file's own (it is stopped and started again), the
// embedded SQLite store shared by the processes of this one host.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, afterEach, expect, it } from 'vitest';
import { MllpClient } from '../src/hl7v2/mllp-client.ts';
import { parseHl7 } from '../src/hl7v2/parse.ts';
import type { LogFields, Logger } from '../src/log.ts';
import { silentLogger } from '../src/log.ts';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { describeWithRedis, spawnRedis, stopAndRemoveRedis } from './helpers/redis.ts';
import { addConfirmations, siuMessage, startChildServer, writeConfigDir, type ChildServer, type LogLine, type TestConfigDir } from './helpers/server.ts';

const dirs: TestConfigDir[] = [];
const running: RunningCarerelay[] = [];
const children: ChildServer[] = [];
let redis: { url: string; port: number; child: ChildProcess; dir: string } | undefined;

afterEach(async () => {
  for (const c of children.splice(0)) c.kill();
  await Promise.allSettled(running.splice(0).map((r) => r.stop()));
});

afterAll(async () => {
  if (redis) await stopAndRemoveRedis(redis.child, redis.dir);
  for (const d of dirs) d.remove();
});

let redisRunning = false;

/** This file's own Redis: started once, or again (same port and files) after stopRedis(). */
async function startRedis(): Promise<string> {
  if (redis && redisRunning) return redis.url;
  const dir = redis?.dir ?? mkdtempSync(path.join(tmpdir(), 'carerelay-scale-redis-'));
  const started = await spawnRedis(dir, redis?.port);
  redis = { ...started, dir };
  redisRunning = true;
  return started.url;
}

/** A clean shutdown (SIGTERM: Redis writes its append-only file and exits). */
async function stopRedis(): Promise<void> {
  const child = redis!.child;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
  redisRunning = false;
}

let prefixes = 0;

/** A config dir whose queue is on this file's Redis, with a confirmation per booking kept by an outbox. */
function config(options: { durable?: boolean } = {}): TestConfigDir {
  const dir = writeConfigDir({
    queue: ['    type: bullmq', '    url: { env: REDIS_URL }', `    prefix: scale-${process.pid}-${++prefixes}`, '    leaseSeconds: 2', ...(options.durable === false ? ['    durable: false'] : [])],
  });
  dirs.push(dir);
  addConfirmations(dir);
  return dir;
}

/** A logger keeping its lines, with a wait for a line to come. */
function watchedLogger(): Logger & { lines: LogLine[]; next(match: (l: LogLine) => boolean): Promise<LogLine> } {
  const lines: LogLine[] = [];
  let waiters: Array<{ match: (l: LogLine) => boolean; resolve: (l: LogLine) => void }> = [];
  const at =
    (level: string) =>
    (message: string, fields?: LogFields): void => {
      const line = { level, message, ...fields };
      lines.push(line);
      waiters = waiters.filter((w) => !(w.match(line) && (w.resolve(line), true)));
    };
  return {
    lines,
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    debug: at('debug'),
    next: (match) => new Promise((resolve) => waiters.push({ match, resolve })),
  };
}

async function start(dir: TestConfigDir, role: 'ingest' | 'worker' | 'all', url: string, log: Logger = silentLogger): Promise<RunningCarerelay> {
  const r = await startCarerelay({ configDir: dir.dir, env: { REDIS_URL: url }, log, role, watchMappings: false });
  running.push(r);
  return r;
}

async function readyz(r: RunningCarerelay): Promise<{ status: number; detail: string }> {
  const res = await fetch(`http://127.0.0.1:${r.httpPort}/readyz`);
  const body = (await res.json()) as { detail?: string };
  return { status: res.status, detail: body.detail ?? '' };
}

function ackCode(ack: Buffer): string {
  return parseHl7(ack).get('MSA-1');
}

async function send(port: number, messages: string[]): Promise<string[]> {
  const client = new MllpClient({ host: '127.0.0.1', port, ackTimeoutMs: 15_000, connectTimeoutMs: 5_000 });
  await client.connect();
  try {
    const codes: string[] = [];
    for (const m of messages) codes.push(ackCode(await client.send(m)));
    return codes;
  } finally {
    await client.close();
  }
}

const bookings = (from: number, count: number, tag: string) =>
  Array.from({ length: count }, (_, i) =>
    siuMessage({ controlId: `${tag}-${from + i}`, appointmentId: `AP-${tag}-${from + i}`, patientId: `P-${(from + i) % 17}`, start: new Date(Date.UTC(2030, 0, 1, 8) + (from + i) * 900_000) }),
  );

/** What the shared store holds in the end: per status, and the outbox's deliveries. */
async function outcome(dir: TestConfigDir): Promise<{ messages: number; finished: number; notFinished: number; outboxDeliveries: number; outboxRows: number }> {
  const store = SqliteStore.open(dir.dbFile);
  try {
    const one = (sql: string) => (store.db.prepare(sql).get() as { n: number }).n;
    return {
      messages: one('SELECT COUNT(*) AS n FROM messages'),
      finished: one("SELECT COUNT(*) AS n FROM deliveries WHERE rule = 'confirm' AND status = 'finished'"),
      notFinished: one("SELECT COUNT(*) AS n FROM deliveries WHERE status <> 'finished'"),
      outboxDeliveries: one('SELECT COUNT(DISTINCT delivery_id) AS n FROM outbox'),
      outboxRows: one('SELECT COUNT(*) AS n FROM outbox'),
    };
  } finally {
    await store.close();
  }
}

describeWithRedis('scale-out on Redis', () => {
  it('refuses a split or several processes without Redis, and a Redis that may lose jobs', async () => {
    const embedded = writeConfigDir();
    dirs.push(embedded);
    await expect(startCarerelay({ configDir: embedded.dir, env: {}, log: silentLogger, role: 'worker', watchMappings: false })).rejects.toThrow(
      /--role worker needs the queue on Redis: set server.queue type: bullmq/,
    );

    const url = await startRedis();
    // One data directory: a process with the embedded queue is alone on it (test/data-dir-lock.test.ts),
    // so one with the queue on Redis is refused beside it, and the other way round.
    const switchable = writeConfigDir({ queue: ['    type: ${CARERELAY_QUEUE}', '    url: { env: REDIS_URL }', `    prefix: scale-${process.pid}-${++prefixes}`] });
    dirs.push(switchable);
    const alone = await startCarerelay({ configDir: switchable.dir, env: { REDIS_URL: url, CARERELAY_QUEUE: 'sqlite' }, log: silentLogger, watchMappings: false });
    running.push(alone);
    await expect(startCarerelay({ configDir: switchable.dir, env: { REDIS_URL: url, CARERELAY_QUEUE: 'bullmq' }, log: silentLogger, role: 'ingest', watchMappings: false })).rejects.toThrow(
      /a CareRelay process with the embedded queue \(server.queue type sqlite\) is using the data directory/,
    );
    await alone.stop();
    running.push(await startCarerelay({ configDir: switchable.dir, env: { REDIS_URL: url, CARERELAY_QUEUE: 'bullmq' }, log: silentLogger, role: 'worker', watchMappings: false }));
    running.push(await startCarerelay({ configDir: switchable.dir, env: { REDIS_URL: url, CARERELAY_QUEUE: 'bullmq' }, log: silentLogger, role: 'ingest', watchMappings: false }));
    await expect(startCarerelay({ configDir: switchable.dir, env: { REDIS_URL: url, CARERELAY_QUEUE: 'sqlite' }, log: silentLogger, watchMappings: false })).rejects.toThrow(
      /another CareRelay process is using the data directory/,
    );

    const dir = config();
    const client = new Redis(url);
    try {
      await client.config('SET', 'appendonly', 'no');
      await expect(start(dir, 'worker', url)).rejects.toThrow(/appendonly is "no", must be yes/);
      // durable: false starts on it (development), and says so.
      const log = watchedLogger();
      const devConfig = config({ durable: false });
      const dev = await start(devConfig, 'all', url, log);
      expect(log.lines).toContainEqual(expect.objectContaining({ level: 'warn', message: 'queue.not_durable', reason: 'durable_false' }));
      await dev.stop();
    } finally {
      await client.config('SET', 'appendonly', 'yes');
      client.disconnect();
    }
  });

  it('answers /readyz per role; the ingest process keeps ACKing while Redis is away, and what it took is delivered once Redis is back', async () => {
    const url = await startRedis();
    const dir = config();
    const ingest = await start(dir, 'ingest', url);
    const worker = await start(dir, 'worker', url);
    expect(ingest.mllpPorts.size).toBe(1);
    expect(worker.mllpPorts.size).toBe(0);
    expect(await readyz(ingest)).toEqual({ status: 200, detail: '' });
    expect(await readyz(worker)).toEqual({ status: 200, detail: '' });
    // A worker answers probes only.
    expect((await fetch(`http://127.0.0.1:${worker.httpPort}/api/messages`)).status).toBe(404);

    const port = ingest.mllpPorts.get('ehr-mllp')!;
    expect(await send(port, bookings(0, 5, 'RZ'))).toEqual(['AA', 'AA', 'AA', 'AA', 'AA']);
    await worker.deliveries.idle();
    expect((await outcome(dir)).finished).toBe(5);

    await stopRedis();
    expect(await readyz(worker)).toMatchObject({ status: 503, detail: expect.stringContaining('queue_unreachable') });
    // Committing and ACKing needs the store only.
    expect(await readyz(ingest)).toEqual({ status: 200, detail: '' });
    expect(await send(port, bookings(5, 5, 'RZ'))).toEqual(['AA', 'AA', 'AA', 'AA', 'AA']);

    await startRedis();
    expect(await readyz(worker)).toEqual({ status: 200, detail: '' });
    await worker.deliveries.idle();
    expect(await outcome(dir)).toEqual({ messages: 10, finished: 10, notFinished: 0, outboxDeliveries: 10, outboxRows: 10 });
  });

  it('reloads every process when one of them reloads', async () => {
    const url = await startRedis();
    const first = config();
    // A second host: its own copy of the configuration, on the same Redis.
    const second = config();
    writeFileSync(path.join(second.dir, 'connectors', 'test.yaml'), readFileSync(path.join(first.dir, 'connectors', 'test.yaml'), 'utf8').replace(first.dataDir, second.dataDir));
    const log = watchedLogger();
    const a = await start(first, 'ingest', url);
    const b = await start(second, 'worker', url, log);
    expect(b.deliveries.rules.map((r) => r.id)).toEqual(['confirm']);
    writeFileSync(
      path.join(second.dir, 'mappings', 'remind.yaml'),
      ['rules:', '  - id: remind', '    on: appointment.booked', '    purpose: care.logistics', '    channel: webhook', '    send: { output: hook, fields: [appointment.start] }', '    at: appointment.start - 1d', ''].join('\n'),
    );
    const reloaded = log.next((l) => l.message === 'config.reloaded');
    expect(await a.reloadMappings()).toMatchObject({ ok: true });
    await reloaded;
    expect(b.deliveries.rules.map((r) => r.id).sort()).toEqual(['confirm', 'remind']);
    expect(log.lines).toContainEqual(expect.objectContaining({ message: 'config.reloading', reason: 'cluster_signal' }));
  });

  it('restarts every process when all of them die at once (kill -9 of both), and stops cleanly after', { timeout: 120_000 }, async () => {
    const url = await startRedis();
    const dir = config();
    const workers = await startChildServer(dir, { env: { REDIS_URL: url }, args: ['--role', 'worker', '--processes', '2'], processes: 2, startTimeoutMs: 60_000 });
    children.push(workers);
    const first = workers.logs.filter((l) => l.message === 'carerelay.started').map((l) => Number(l.pid));
    expect(new Set(first).size).toBe(2);
    // Both die before either is restarted: the supervisor is left with pending restarts only.
    const fresh = new Set<number>();
    const bothBack = workers.nextLog((l) => l.message === 'carerelay.started' && fresh.add(Number(l.pid)).size === 2);
    for (const pid of first) process.kill(pid, 'SIGKILL');
    const outcome = await Promise.race([bothBack.then(() => 'restarted'), workers.exited.then((exit) => `supervisor exited ${JSON.stringify(exit)}`)]);
    expect(outcome).toBe('restarted');
    expect([...fresh].some((pid) => first.includes(pid))).toBe(false);
    await workers.stop();
    expect(await workers.exited).toEqual({ code: 0, signal: null });
  });

  it(
    '2 ingest + 2 worker processes (each pair sharing its ports): every booking ACKed AA is confirmed exactly once across a Redis restart and a worker killed',
    { timeout: 180_000 },
    async () => {
      const url = await startRedis();
      const dir = config();
      const env = { REDIS_URL: url };
      const ingest = await startChildServer(dir, { env, args: ['--role', 'ingest', '--processes', '2'], processes: 2, startTimeoutMs: 60_000 });
      children.push(ingest);
      const workers = await startChildServer(dir, { env, args: ['--role', 'worker', '--processes', '2'], processes: 2, startTimeoutMs: 60_000 });
      children.push(workers);
      const port = ingest.mllpPorts.get('ehr-mllp')!;

      // Four senders on the one MLLP address, a quarter of the stream each.
      const TOTAL = 160;
      const stream = bookings(0, TOTAL, 'MP');
      const quarter = TOTAL / 4;
      const firstHalf = await Promise.all([0, 1, 2, 3].map((s) => send(port, stream.slice(s * quarter, s * quarter + quarter / 2))));
      expect(firstHalf.flat().every((c) => c === 'AA')).toBe(true);

      // Redis restarts, and one worker process dies (its primary starts another).
      await stopRedis();
      const workerPids = workers.logs.filter((l) => l.message === 'carerelay.started').map((l) => Number(l.pid));
      expect(new Set(workerPids).size).toBe(2);
      const restarted = workers.nextLog((l) => l.message === 'carerelay.started');
      process.kill(workerPids[0]!, 'SIGKILL');
      await startRedis();
      const secondHalf = await Promise.all([0, 1, 2, 3].map((s) => send(port, stream.slice(s * quarter + quarter / 2, (s + 1) * quarter))));
      expect(secondHalf.flat().every((c) => c === 'AA')).toBe(true);

      // Both ingest processes took connections: each logged its start, and both answered.
      expect(new Set(ingest.logs.filter((l) => l.message === 'carerelay.started').map((l) => l.pid)).size).toBe(2);

      // SIGHUP to the ingest processes' supervisor: each of them reloads, and the worker
      // processes (other process trees, here as on other hosts) hear it over Redis and reload too.
      const live = [workerPids[1], (await restarted).pid].sort();
      const heard = new Set<unknown>();
      const bothHeard = workers.nextLog((l) => l.message === 'config.reloading' && l.reason === 'cluster_signal' && heard.add(l.pid).size === 2);
      process.kill(ingest.pid, 'SIGHUP');
      await bothHeard;
      expect([...heard].sort()).toEqual(live);

      // Graceful stops: the primaries pass SIGTERM on and exit once their processes have.
      await ingest.stop();
      await workers.stop();
      expect(await ingest.exited).toEqual({ code: 0, signal: null });
      expect(await workers.exited).toEqual({ code: 0, signal: null });
      expect(workers.logs).toContainEqual(expect.objectContaining({ message: 'processes.exited', pid: workerPids[0] }));

      // A last worker finishes what is due. The jobs the killed process held come back once
      // their leases lapse (the stalled check runs every leaseSeconds), after which idle() may
      // already have returned: wait on the queue's events until no job is held or due.
      const last = await start(dir, 'worker', url);
      const queue = last.deliveries.queue;
      for (;;) {
        const ended = new Promise<void>((resolve) => {
          const off = queue.subscribe((event) => {
            if (event.type === 'done' || event.type === 'dead' || event.type === 'parked') {
              off();
              resolve();
            }
          });
        });
        await last.deliveries.idle();
        const counts = await queue.counts();
        if (counts.active === 0 && counts.pending === 0) break;
        await ended;
      }
      await last.stop();
      expect(await outcome(dir)).toEqual({ messages: TOTAL, finished: TOTAL, notFinished: 0, outboxDeliveries: TOTAL, outboxRows: TOTAL });
    },
  );
});
