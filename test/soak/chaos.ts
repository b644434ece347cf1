// Multi-process chaos (docs/reliability.md promise 15, docs/scale-out.md "Chaos run"): CareRelay
// as a site runs it scaled out — `carerelay start --role ingest --processes 2` and
// `--role worker --processes 2` on one PostgreSQL store and one Redis queue — takes a stream of
// bookings over MLLP from senders that resend whatever was not acknowledged AA, while
//   - a random one of its four processes is killed with SIGKILL at random moments (its
//     supervisor starts another), at least `kills` times,
//   - Redis is restarted once (SIGTERM: it writes its append-only file; started again on the
//     same port and files),
//   - PostgreSQL is restarted once (pg_ctl stop -m immediate: no checkpoint, as a crash; then
//     started again on the same port and files).
// Each booking's confirmation is due at once and goes to a signed webhook receiver (the Standard
// Webhooks stand-in, test/helpers/webhook-sink.ts) that answers 500 to every 20th first attempt
// and records every request with its webhook-id (the delivery id: the idempotency key).
// Afterwards, once no delivery is pending, the run checks:
//   1. every message acknowledged AA is stored exactly once (and nothing is stored twice);
//   2. every booking has its one confirmation, ended sent, failed (dead-lettered) or in review
//      with a reason, none pending or cancelled; every sent one reached the receiver;
//   3. the receiver saw a delivery more than once only under the same idempotency key: no
//      booking's confirmation arrived under two keys, and each request's body names its key.
// The kill moments, roles and victims come from a seeded generator (printed): a failing run can
// be replayed with its seed. PostgreSQL and Redis are throwaway servers on 127.0.0.1 started for
// the run (test/helpers/postgres.ts, test/helpers/redis.ts); everything is removed at the end.
//
//   npm run chaos [-- --messages N --kills K --seed S --senders C]     (default 10,000 / 24 / 1 / 8)
//
// CHAOS_STDERR=FILE appends the processes' own stderr (their JSON logs, and the stack of a
// process that crashed) to FILE, for finding out why a run failed.
//
// test/chaos.test.ts runs a short variant of the same function inside `npm test`.
import { spawnSync } from 'node:child_process';
import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { MllpClient } from '../../src/hl7v2/mllp-client.ts';
import { parseHl7 } from '../../src/hl7v2/parse.ts';
import { adminQuery, startPostgresCluster, withDatabase, type PostgresCluster } from '../helpers/postgres.ts';
import { prng } from '../helpers/random.ts';
import { spawnRedis } from '../helpers/redis.ts';
import { siuMessage, startChildServer, writeYamlConfig, type ChildServer, type TestConfigDir } from '../helpers/server.ts';
import { startWebhookSink, webhookOutputLines, writeConfirmRule, type WebhookSink } from '../helpers/webhook-sink.ts';

export interface ChaosOptions {
  messages: number;
  /** SIGKILLs of a random ingest or worker process (at least). */
  kills: number;
  seed: number;
  /** MLLP senders on the one address, each resending what was not acknowledged AA. */
  senders: number;
  /** Progress lines (phases); silent when absent. */
  progress?: (line: string) => void;
  /** Give up (a failed run) when the stream is not acknowledged and delivered within this time. Default 20 min. */
  limitMs?: number;
}

export type Role = 'ingest' | 'worker';

export interface ChaosFigures {
  seed: number;
  messages: number;
  /** AA acknowledgements received (one per message: a resend stops at its AA). */
  aas: number;
  /** MLLP sends, first attempts and resends. */
  sends: number;
  /** Sends without an ACK (connection lost, timeout) or with AE: resent. */
  resends: number;
  kills: Record<Role, number>;
  /** Processes that died without being killed by the run (a crash of CareRelay). */
  unplannedExits: number;
  redisRestarts: number;
  postgresRestarts: number;
  /** Rows in `messages`, and how many control ids are stored more than once. */
  stored: number;
  storedTwice: number;
  deliveries: Record<string, number>;
  /** Requests the receiver got, distinct keys, repeats under the same key, and bookings that arrived under two keys. */
  requests: number;
  keys: number;
  duplicatesSameKey: number;
  duplicatesOtherKey: number;
  elapsedMs: number;
  /** What failed (empty: every invariant held). */
  failures: string[];
}

const SECRET = `whsec_${Buffer.alloc(32, 7).toString('base64')}`;
const SENDER_BACKOFF_MS = 100;

/** Resolves after `ms` (a sender's backoff before a resend, never a synchronisation). */
const pause = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function controlId(i: number): string {
  return `CHAOS-${String(i).padStart(6, '0')}`;
}

/** A port free now on 127.0.0.1. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

// A fixed MLLP port, as a site has: with port 0, a new process started after every process of
// the ingest role had died would listen on another port than the one the senders know.
function configFor(sink: WebhookSink, mllpPort: number): TestConfigDir {
  const config = writeYamlConfig(
    [
      'server:',
      '  http: { host: 127.0.0.1, port: 0 }',
      '  dataDir: {dataDir}',
      '  store:',
      '    type: postgres',
      '    url: { env: DATABASE_URL }',
      '    pool: { max: 5, connectionTimeoutSeconds: 5 }',
      '  queue:',
      '    type: bullmq',
      '    url: { env: REDIS_URL }',
      '    prefix: chaos',
      // Short leases: the jobs a killed worker held come back within seconds.
      '    leaseSeconds: 2',
      '  deliveries:',
      '    leaseSeconds: 2',
      '    retry: { firstDelaySeconds: 1, maxDelaySeconds: 2, spanHours: 1 }',
      'inputs:',
      `  - { name: ehr-mllp, type: hl7v2-mllp, host: 127.0.0.1, port: ${mllpPort}, plain: true, timezone: UTC }`,
      ...webhookOutputLines(sink),
      '',
    ].join('\n'),
  );
  writeConfirmRule(config.dir, 'now');
  return config;
}

/** Waiters on the count of AAs received. */
class Progress {
  count = 0;
  private waiters: Array<{ at: number; resolve: () => void }> = [];
  add(): void {
    this.count++;
    this.waiters = this.waiters.filter((w) => !(w.at <= this.count && (w.resolve(), true)));
  }
  reached(at: number): Promise<void> {
    if (at <= this.count) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ at, resolve }));
  }
}

/** The pids a supervisor's processes run as now: started and not exited. */
function livePids(server: ChildServer): number[] {
  const exited = new Set(server.logs.filter((l) => l.message === 'processes.exited').map((l) => Number(l.pid)));
  return [...new Set(server.logs.filter((l) => l.message === 'carerelay.started').map((l) => Number(l.pid)))].filter((p) => !exited.has(p));
}

/** Resolves like `promise`, or rejects naming `what` after `ms` (a bound on a wait). */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

export async function runChaos(options: ChaosOptions): Promise<ChaosFigures> {
  const started = Date.now();
  const say = options.progress ?? (() => {});
  const limitMs = options.limitMs ?? 20 * 60_000;
  const deadline = started + limitMs;
  const random = prng(options.seed);
  const figures: ChaosFigures = {
    seed: options.seed,
    messages: options.messages,
    aas: 0,
    sends: 0,
    resends: 0,
    kills: { ingest: 0, worker: 0 },
    unplannedExits: 0,
    redisRestarts: 0,
    postgresRestarts: 0,
    stored: 0,
    storedTwice: 0,
    deliveries: {},
    requests: 0,
    keys: 0,
    duplicatesSameKey: 0,
    duplicatesOtherKey: 0,
    elapsedMs: 0,
    failures: [],
  };
  const cleanups: Array<() => Promise<void> | void> = [];
  const supervisors: ChildServer[] = [];
  /** Pids this run killed (an exit of any other is unplanned). */
  const killed = new Set<number>();
  let stopping = false;
  try {
    // The servers: a PostgreSQL cluster and a Redis of this run's own (each restarted once).
    // Durable settings (fsync, synchronous commit): an ACK after the commit promises only what
    // the database keeps across its crash; the tests' cluster (synchronous_commit off) loses its
    // last commits to an immediate stop by design.
    const cluster: PostgresCluster = await startPostgresCluster({ durable: true });
    cleanups.push(() => cluster.stop());
    await adminQuery(cluster.url, 'CREATE DATABASE carerelay_chaos');
    const databaseUrl = withDatabase(cluster.url, 'carerelay_chaos');
    const redisDir = mkdtempSync(path.join(tmpdir(), 'carerelay-chaos-redis-'));
    let redis = await spawnRedis(redisDir);
    cleanups.push(() => {
      redis.child.kill('SIGKILL');
      rmSync(redisDir, { recursive: true, force: true });
    });

    let firsts = 0;
    const sink = await startWebhookSink({ secrets: [SECRET], answer: (_id, earlier) => (earlier === 0 && ++firsts % 20 === 0 ? { kind: 'status', status: 500 } : undefined) });
    cleanups.push(() => sink.close());
    const config = configFor(sink, await freePort());
    cleanups.push(() => config.remove());

    const env = { DATABASE_URL: databaseUrl, REDIS_URL: redis.url, WEBHOOK_SECRET: SECRET };
    const start = async (role: Role): Promise<ChildServer> => {
      const server = await startChildServer(config, { env, args: ['--role', role, '--processes', '2'], processes: 2, startTimeoutMs: 90_000 });
      supervisors.push(server);
      if (process.env.CHAOS_STDERR) server.child.stderr!.on('data', (chunk: Buffer | string) => appendFileSync(process.env.CHAOS_STDERR!, `[${role}] ${String(chunk)}`));
      return server;
    };
    // The ingest pair first (it runs the migrations the workers need), then the workers.
    const ingest = await start('ingest');
    const workers = await start('worker');
    const roles: Record<Role, ChildServer> = { ingest, worker: workers };
    for (const [role, server] of Object.entries(roles) as Array<[Role, ChildServer]>) {
      void server.exited.then((exit) => {
        if (!stopping) figures.failures.push(`the ${role} supervisor exited during the run (${JSON.stringify(exit)})`);
      });
    }
    const port = ingest.mllpPorts.get('ehr-mllp')!;
    say(`servers up in ${Date.now() - started} ms: PostgreSQL :${cluster.port}, Redis ${redis.url}, ingest :${port}`);

    // The stream, and senders taking the next message each, resending until AA.
    const messages = Array.from({ length: options.messages }, (_, i) =>
      siuMessage({ controlId: controlId(i), appointmentId: `AP-CHAOS-${i}`, patientId: `P-${i % 97}`, start: new Date(Date.UTC(2030, 0, 1, 8) + i * 900_000) }),
    );
    const acked = new Array<boolean>(options.messages).fill(false);
    const progress = new Progress();
    let next = 0;
    // The senders stay within a few messages of the next event's point: every event then falls
    // inside the stream, however fast the stream goes next to the event's own delay.
    let gateAt = 0;
    let gateWaiters: Array<() => void> = [];
    const openGate = (at: number): void => {
      gateAt = at;
      for (const wake of gateWaiters.splice(0)) wake();
    };
    const gate = async (i: number): Promise<void> => {
      while (i > gateAt + 2 * options.senders) await new Promise<void>((resolve) => gateWaiters.push(resolve));
    };
    const sender = async (): Promise<void> => {
      let client: MllpClient | undefined;
      try {
        for (let i = next++; i < options.messages; i = next++) {
          await gate(i);
          for (;;) {
            if (Date.now() > deadline) throw new Error(`message ${controlId(i)} not acknowledged AA within ${limitMs} ms`);
            figures.sends++;
            let code = '';
            try {
              if (client === undefined) {
                client = new MllpClient({ host: '127.0.0.1', port, ackTimeoutMs: 15_000, connectTimeoutMs: 2_000 });
                await client.connect();
              }
              code = parseHl7(await client.send(messages[i]!)).get('MSA-1');
            } catch {
              // No ACK (the process died, the connection was refused or cut, the ACK timed out):
              // not acknowledged, so sent again on a new connection.
              const lost = client;
              client = undefined;
              await lost?.close().catch(() => {});
            }
            if (code === 'AA') break;
            if (code === 'AR' || code === 'CR') throw new Error(`message ${controlId(i)} rejected (${code})`);
            figures.resends++;
            await pause(SENDER_BACKOFF_MS);
          }
          acked[i] = true;
          figures.aas++;
          progress.add();
        }
      } finally {
        await client?.close().catch(() => {});
      }
    };
    const schedule: string[] = [];
    const shown = new Map<ChildServer, number>();
    const ticker = setInterval(() => {
      for (const server of supervisors) {
        const from = shown.get(server) ?? 0;
        for (const line of server.logs.slice(from)) if (line.level === 'error' && line.message !== 'processes.exited') say(`  log: ${JSON.stringify(line)}`);
        shown.set(server, server.logs.length);
      }
      say(`${progress.count} AAs, ${figures.resends} resends, kills ${JSON.stringify(figures.kills)}, live ingest ${livePids(ingest).length} worker ${livePids(workers).length}; events ${schedule.join(' ')}`);
    }, 5_000);
    cleanups.push(() => clearInterval(ticker));
    const sending = Promise.all(Array.from({ length: options.senders }, () => sender()));
    let sendingFailed: unknown;
    const sent = sending.then(
      () => true,
      (error: unknown) => {
        sendingFailed = error;
        return false;
      },
    );

    // The schedule: each event at a random point of the stream (by AAs received), plus a random
    // delay of up to 300 ms; the kills' roles and victims drawn as they come.
    type Event = { at: number; kind: 'kill' | 'redis' | 'postgres' };
    const point = (from: number, to: number) => Math.floor(options.messages * (from + random() * (to - from)));
    const events: Event[] = [
      ...Array.from({ length: options.kills }, (): Event => ({ at: point(0.02, 0.95), kind: 'kill' })),
      { at: point(0.2, 0.45), kind: 'redis' } satisfies Event,
      { at: point(0.55, 0.8), kind: 'postgres' } satisfies Event,
    ].sort((a, b) => a.at - b.at);
    openGate(events[0]!.at);
    const chaos = async (): Promise<void> => {
      for (const [n, event] of events.entries()) {
        const reached = await Promise.race([progress.reached(event.at).then(() => true), sent.then(() => false)]);
        if (!reached && progress.count < event.at) throw new Error(`the stream ended at ${progress.count} AAs before the event planned at ${event.at}`);
        await pause(Math.floor(random() * 300));
        if (event.kind === 'redis') {
          const exit = new Promise((resolve) => redis.child.once('exit', resolve));
          redis.child.kill('SIGTERM');
          await exit;
          redis = await spawnRedis(redisDir, redis.port);
          figures.redisRestarts++;
          schedule.push(`redis@${progress.count}`);
        } else if (event.kind === 'postgres') {
          cluster.restart();
          figures.postgresRestarts++;
          schedule.push(`postgres@${progress.count}`);
        } else {
          const role: Role = random() < 0.5 ? 'ingest' : 'worker';
          const server = roles[role];
          // Both of the role's processes may be down (their supervisor waits before starting
          // another, longer after each early death): wait for one to run.
          while (livePids(server).length === 0) await within(server.nextLog((l) => l.message === 'carerelay.started'), 120_000, `a ${role} process to start`);
          const pids = livePids(server);
          const victim = pids[Math.floor(random() * pids.length)]!;
          killed.add(victim);
          try {
            process.kill(victim, 'SIGKILL');
            figures.kills[role]++;
            schedule.push(`${role}@${progress.count}`);
          } catch {
            // It exited on its own just now (counted as unplanned below).
            killed.delete(victim);
          }
        }
        openGate(events[n + 1]?.at ?? Number.POSITIVE_INFINITY);
      }
    };
    await chaos();
    const allSent = await sent;
    if (!allSent) throw sendingFailed;
    say(`stream acknowledged in ${Date.now() - started} ms: ${figures.aas} AAs, ${figures.resends} resends; events ${schedule.join(' ')}`);

    // Drain: wait until every booking has its delivery and none is pending (read from the
    // database each half second; bounded by the run's limit).
    const db = new pg.Client({ connectionString: databaseUrl });
    await db.connect();
    cleanups.push(() => db.end().catch(() => {}));
    const countBy = async (): Promise<Record<string, number>> => {
      const { rows } = await db.query<{ status: string; n: number }>('SELECT status, COUNT(*)::int AS n FROM deliveries GROUP BY status');
      return Object.fromEntries(rows.map((r) => [r.status, r.n]));
    };
    for (let round = 1; ; round++) {
      const counts = await countBy();
      const total = Object.values(counts).reduce((a, b) => a + b, 0);
      // Done when every trigger was routed to its delivery and none is pending (a message
      // stored without its trigger is reported by the checks below).
      const triggers = (await db.query<{ n: number }>('SELECT COUNT(*)::int AS n FROM triggers')).rows[0]!.n;
      if (total >= triggers && (counts.pending ?? 0) === 0) break;
      if (round % 20 === 0) say(`deliveries ${JSON.stringify(counts)}, triggers ${triggers}`);
      if (Date.now() > deadline) {
        figures.failures.push(`deliveries not finished within ${limitMs} ms: ${JSON.stringify(counts)} of ${options.messages}`);
        break;
      }
      await pause(500);
    }
    say(`deliveries ended in ${Date.now() - started} ms`);

    // The processes stop (SIGTERM to each supervisor); then the checks, on what is stored.
    stopping = true;
    for (const server of supervisors) await within(server.stop(), 60_000, 'a supervisor to stop').catch(() => server.kill());
    for (const server of supervisors) {
      for (const line of server.logs) {
        if (line.message === 'processes.exited' && !killed.has(Number(line.pid))) figures.unplannedExits++;
      }
    }
    if (figures.unplannedExits > 0) figures.failures.push(`${figures.unplannedExits} process(es) exited without being killed`);

    // 1. Every AA stored exactly once.
    const stored = await db.query<{ control_id: string; n: number }>('SELECT control_id, COUNT(*)::int AS n FROM messages GROUP BY control_id');
    const storedCount = new Map(stored.rows.map((r) => [r.control_id, r.n]));
    figures.stored = stored.rows.reduce((a, r) => a + r.n, 0);
    figures.storedTwice = stored.rows.filter((r) => r.n > 1).length;
    const lostAas = acked.map((a, i) => (a && storedCount.get(controlId(i)) !== 1 ? controlId(i) : undefined)).filter((x) => x !== undefined);
    if (lostAas.length > 0) {
      const detail = await db.query<{ control_id: string; status: string; ack_code: string; trigger_ids: string; origin: string }>(
        'SELECT control_id, status, ack_code, trigger_ids, origin FROM messages WHERE control_id = ANY($1)',
        [lostAas.slice(0, 5)],
      );
      say(`not stored once: ${JSON.stringify(detail.rows)}`);
    }
    if (lostAas.length > 0) figures.failures.push(`${lostAas.length} AA-acknowledged message(s) not stored exactly once (first: ${lostAas.slice(0, 5).join(', ')})`);
    if (figures.storedTwice > 0) figures.failures.push(`${figures.storedTwice} control id(s) stored more than once`);
    if (figures.aas !== options.messages) figures.failures.push(`${figures.aas} AAs for ${options.messages} messages`);

    // 2. One confirmation per booking, each ended sent, failed or in review with a reason.
    const deliveries = await db.query<{ id: string; status: string; reason: string | null; subject: string }>('SELECT id, status, reason, subject FROM deliveries');
    figures.deliveries = await countBy();
    const subjects = new Map(deliveries.rows.map((d) => [d.id, d.subject]));
    const perSubject = new Map<string, number>();
    for (const d of deliveries.rows) perSubject.set(d.subject, (perSubject.get(d.subject) ?? 0) + 1);
    const missing = acked.map((_, i) => `appointment/AP-CHAOS-${i}`).filter((s) => perSubject.get(s) !== 1);
    if (missing.length > 0) {
      const ids = missing.slice(0, 5).map((m) => controlId(Number(m.slice('appointment/AP-CHAOS-'.length))));
      const detail = await db.query('SELECT control_id, status, ack_code, trigger_ids, reason FROM messages WHERE control_id = ANY($1)', [ids]);
      say(`bookings without one delivery: ${JSON.stringify(detail.rows)}`);
    }
    if (missing.length > 0) figures.failures.push(`${missing.length} booking(s) without exactly one delivery (first: ${missing.slice(0, 5).join(', ')})`);
    const accepted = sink.accepted();
    const unended = deliveries.rows.filter((d) => !['sent', 'failed', 'review'].includes(d.status) || (d.status !== 'sent' && !/^[a-z_]+$/.test(d.reason ?? '')));
    if (unended.length > 0) figures.failures.push(`${unended.length} deliveries not ended sent, failed or in review with a reason (first: ${unended.slice(0, 3).map((d) => `${d.id} ${d.status} ${d.reason}`).join('; ')})`);
    const unreceived = deliveries.rows.filter((d) => d.status === 'sent' && !accepted.has(d.id));
    if (unreceived.length > 0) figures.failures.push(`${unreceived.length} sent deliveries the receiver never accepted (first: ${unreceived[0]!.id})`);

    // 3. Repeats only under the same key.
    figures.requests = sink.requests.length;
    const keys = new Set(sink.requests.map((r) => r.id));
    figures.keys = keys.size;
    figures.duplicatesSameKey = figures.requests - keys.size;
    const keysPerSubject = new Map<string, Set<string>>();
    let foreign = 0;
    for (const request of sink.requests) {
      const subject = request.id === undefined ? undefined : subjects.get(request.id);
      const named = (JSON.parse(request.body) as { deliveryId?: string }).deliveryId;
      if (!request.signed || subject === undefined || named !== request.id) {
        foreign++;
        continue;
      }
      keysPerSubject.set(subject, (keysPerSubject.get(subject) ?? new Set()).add(request.id!));
    }
    figures.duplicatesOtherKey = [...keysPerSubject.values()].filter((s) => s.size > 1).length;
    if (foreign > 0) figures.failures.push(`${foreign} request(s) unsigned, of no planned delivery, or naming another delivery than their key`);
    if (figures.duplicatesOtherKey > 0) figures.failures.push(`${figures.duplicatesOtherKey} booking(s) sent under more than one idempotency key`);
    if (figures.kills.ingest + figures.kills.worker < options.kills) figures.failures.push(`only ${figures.kills.ingest + figures.kills.worker} of ${options.kills} kills`);
  } catch (error) {
    figures.failures.push(`run aborted: ${error instanceof Error ? error.message : String(error)}`);
  } finally {
    stopping = true;
    for (const server of supervisors) {
      // A supervisor that did not stop, and any process of it still running, end here.
      for (const pid of livePids(server)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      server.kill();
      await server.exited;
    }
    for (const cleanup of cleanups.reverse()) await cleanup();
    figures.elapsedMs = Date.now() - started;
  }
  return figures;
}

/** One line per figure, as printed by `npm run chaos`. */
export function formatFigures(f: ChaosFigures): string {
  return [
    `chaos run (seed ${f.seed}): 2 ingest + 2 worker processes, PostgreSQL + Redis on 127.0.0.1`,
    `  messages        ${f.messages} (sends ${f.sends}, resends ${f.resends})`,
    `  AAs             ${f.aas}; stored ${f.stored}, control ids stored twice ${f.storedTwice}`,
    `  kills (-9)      ingest ${f.kills.ingest}, worker ${f.kills.worker}; unplanned exits ${f.unplannedExits}`,
    `  restarts        Redis ${f.redisRestarts}, PostgreSQL ${f.postgresRestarts}`,
    `  deliveries      ${JSON.stringify(f.deliveries)}`,
    `  receiver        ${f.requests} requests, ${f.keys} keys; duplicates with the same key ${f.duplicatesSameKey}, with another key ${f.duplicatesOtherKey}`,
    `  elapsed         ${(f.elapsedMs / 1000).toFixed(1)} s`,
    f.failures.length === 0 ? '  result          every invariant held' : `  FAILED\n${f.failures.map((x) => `    - ${x}`).join('\n')}`,
  ].join('\n');
}

function argument(args: string[], name: string, fallback: number): number {
  const at = args.indexOf(`--${name}`);
  if (at === -1) return fallback;
  const value = Number(args[at + 1]);
  if (!Number.isInteger(value) || value < 1) {
    console.error(`--${name} must be a positive whole number, got ${JSON.stringify(args[at + 1])}`);
    process.exit(2);
  }
  return value;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const args = process.argv.slice(2);
  if (spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' }).status !== 0) {
    console.error('npm run chaos needs redis-server and PostgreSQL installed (Debian: apt-get install redis-server postgresql): it starts throwaway ones on 127.0.0.1');
    process.exit(2);
  }
  const figures = await runChaos({
    messages: argument(args, 'messages', 10_000),
    kills: argument(args, 'kills', 24),
    seed: argument(args, 'seed', 1),
    senders: argument(args, 'senders', 8),
    progress: (line) => console.info(`[${new Date().toISOString().slice(11, 19)}] ${line}`),
  });
  console.info(formatFigures(figures));
  process.exit(figures.failures.length === 0 ? 0 : 1);
}
