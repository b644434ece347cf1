// Routing benchmark: the router over a temp-file SQLite store and queue (WAL,
// synchronous=FULL, as in production).
//   - routed deliveries per second: booked triggers routed one by one (route() + store reads
//     + queue timers and saveRouting in one fsynced transaction each), on an empty file and again with
//     1,000,000 pending deliveries in it;
//   - cancel-by-appointment latency, median and p99 over 1,000 cancels among 1,000,000
//     pending deliveries, through the router's cancel path (route the cancel trigger, find
//     the deliveries by cancel key, cancel the job, save) — goal ≤ 1 ms — with the
//     production fsync per commit and again without it (the index work alone);
//   - restart: open the file, the store, the queue and the router and be ready to process
//     (schema check, unrouted-trigger scan, first poll) — goal ≤ 5 s.
// The 1,000,000 deliveries are built from one routed delivery and written in transactions
// of 10,000 (saveRouting and queue.addMany), as routing them one by one would take hours
// of fsyncs. Run alone with `node --expose-gc --import tsx bench/route.ts`, or through
// bench/run.ts.
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { silentLogger } from '../src/log.ts';
import { route } from '../src/pipeline/route.ts';
import { compileRules, type Rule } from '../src/pipeline/rule.ts';
import type { NewJob } from '../src/queue/queue.ts';
import { SqliteQueue } from '../src/queue/sqlite.ts';
import { openSqliteDatabase, type Database } from '../src/store/sqlite-db.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { DeliveryWrite } from '../src/store/store.ts';
import type { Trigger } from '../src/types.ts';
import { Router, deliveryJobId, type DeliveryJob } from '../src/workers/router.ts';

// CARERELAY_BENCH_PENDING shrinks the fill for a quick check of the benchmark itself.
const PENDING = Number(process.env.CARERELAY_BENCH_PENDING ?? 1_000_000);
const BATCH = 10_000;
const CANCELS = 1_000;
const ROUTED = 2_000;
const ZONE = 'Europe/Paris';
const NOW = Date.parse('2030-01-01T08:00:00Z');

function compile(): Rule[] {
  const { rules, issues } = compileRules(
    [
      {
        id: 'reminder',
        on: 'appointment.booked',
        purpose: 'care.logistics',
        channel: 'sms',
        send: { output: 'sms', template: 'reminder', fields: ['appointment.start', 'patient.name.given'] },
        at: 'appointment.start - 24h',
        expires: 'appointment.start',
      },
    ],
    { outputs: [{ name: 'sms', channel: 'sms', baa: true, allowedPurposes: ['care.logistics'] }] },
  );
  if (issues.length > 0) throw new Error(JSON.stringify(issues));
  return rules;
}

/** An appointment over the next 30 days (deterministic spread), booked at `occurredMs`. */
function trigger(i: number, type: 'appointment.booked' | 'appointment.cancelled', occurredMs: number): Trigger {
  const start = new Date(NOW + 2 * 86_400_000 + ((i * 2_654_435_761) % (30 * 86_400_000))).toISOString();
  const occurredAt = new Date(occurredMs).toISOString();
  return {
    id: `${type}-${i}-${occurredMs}`,
    type,
    occurredAt,
    receivedAt: occurredAt,
    source: { format: 'hl7v2', sender: 'EPIC^GHH', messageType: type === 'appointment.booked' ? 'SIU^S12' : 'SIU^S15', messageId: `M${i}` },
    patient: {
      id: `P${i % 400_000}`,
      identifiers: [{ value: `P${i % 400_000}` }],
      name: { family: 'Test', given: ['Alex'] },
      deceased: false,
      telecom: [{ system: 'phone', use: 'mobile', value: '+15550100' }],
    },
    appointment: { id: `A${i}`, status: type === 'appointment.booked' ? 'booked' : 'cancelled', start, durationMinutes: 30 },
  };
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

interface Open {
  db: Database;
  store: SqliteStore;
  queue: SqliteQueue<DeliveryJob>;
  router: Router;
}

function open(file: string, rules: Rule[]): Open {
  const db = openSqliteDatabase(file);
  const store = new SqliteStore(db);
  const queue = new SqliteQueue<DeliveryJob>(db, { name: 'deliveries', now: () => NOW });
  const router = new Router({ store, queue, rules: () => rules, zoneFor: () => ZONE, log: silentLogger, now: () => NOW });
  return { db, store, queue, router };
}

async function shut(o: Open): Promise<void> {
  await o.router.close();
  await o.queue.close();
  await o.store.close();
  o.db.close();
}

/** Routes `count` booked triggers for appointments from `first`; deliveries per second. */
async function routeBooked(o: Open, first: number, count: number): Promise<number> {
  const t = performance.now();
  let added = 0;
  for (let i = first; i < first + count; i++) {
    const routed = await o.router.route(trigger(i, 'appointment.booked', NOW - 3_600_000));
    added += routed.written.length;
  }
  if (added !== count) throw new Error(`expected ${count} deliveries, got ${added}`);
  return (added / (performance.now() - t)) * 1_000;
}

async function cancels(o: Open, keyOffset: number): Promise<number[]> {
  const latencies: number[] = [];
  for (let k = 0; k < CANCELS; k++) {
    const i = (k * 7_919 + keyOffset) % PENDING;
    const cancel = trigger(i, 'appointment.cancelled', NOW - 60_000);
    const t = performance.now();
    const routed = await o.router.route(cancel);
    latencies.push(performance.now() - t);
    if (!routed.changes.some((c) => c.change === 'cancelled')) throw new Error(`appointment A${i} was not cancelled`);
  }
  return latencies.sort((a, b) => a - b);
}

export async function benchRoute(): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(tmpdir(), 'carerelay-bench-route-'));
  const file = join(dir, 'carerelay.db');
  const rules = compile();
  try {
    let o = open(file, rules);
    const emptyPerS = await routeBooked(o, PENDING, ROUTED);

    // Fill: one routed delivery as the model, then 1,000,000 like it, in big transactions.
    const model = route(trigger(0, 'appointment.booked', NOW - 3_600_000), rules, NOW, { zoneFor: () => ZONE }).deliveries[0]!;
    const fillStart = performance.now();
    const updatedAt = new Date(NOW).toISOString();
    for (let base = 0; base < PENDING; base += BATCH) {
      const writes: DeliveryWrite[] = [];
      const jobs: NewJob<DeliveryJob>[] = [];
      for (let i = base; i < Math.min(base + BATCH, PENDING); i++) {
        const t = trigger(i, 'appointment.booked', NOW - 3_600_000);
        const subjectKey = `appointment/A${i}`;
        const id = `reminder@${subjectKey}#0`;
        const due = new Date(Date.parse(t.appointment!.start!) - 86_400_000).toISOString();
        const delivery = {
          ...model,
          id,
          subjectKey,
          subjectId: `A${i}`,
          patientId: t.patient!.id,
          triggerId: t.id,
          plannedAt: due,
          dueAt: due,
          expiresAt: t.appointment!.start!,
          cancelKeys: [id, subjectKey, `patient/${t.patient!.id}`, 'rule/reminder', `appointment.cancelled@${subjectKey}`, `appointment.deleted@${subjectKey}`, `appointment.noshow@${subjectKey}`],
          payload: { appointment: { start: t.appointment!.start }, patient: { name: { given: ['Alex'] } } },
        };
        writes.push({ delivery, status: 'pending', asOf: t.occurredAt, generation: 1, subjectStart: t.appointment!.start!, updatedAt });
        jobs.push({ id: deliveryJobId(id, 1), data: { deliveryId: id, generation: 1 }, runAt: due, cancelKeys: [id] });
      }
      await o.queue.addMany(jobs);
      await o.store.saveRouting(`bench-fill-${base}`, writes, updatedAt);
    }
    const fillMs = performance.now() - fillStart;
    (globalThis as { gc?: () => void }).gc?.();

    const fullPerS = await routeBooked(o, PENDING + ROUTED, ROUTED);
    (globalThis as { gc?: () => void }).gc?.();
    const synced = await cancels(o, 0);
    // Without the per-commit fsync (synchronous=NORMAL): the index work alone.
    o.db.pragma('synchronous = NORMAL');
    const noSync = await cancels(o, 1);
    o.db.pragma('synchronous = FULL');
    await shut(o);
    const fileMb = statSync(file).size / 1_048_576;

    // Restart: open everything, recover unrouted triggers (none), take the first poll.
    const restartStart = performance.now();
    o = open(file, rules);
    const recovered = await o.router.routeUnrouted();
    o.queue.process(async () => {}, { concurrency: 4 });
    await o.queue.poke();
    const restartMs = performance.now() - restartStart;
    const pending = (await o.queue.counts()).pending;
    await shut(o);
    if (recovered !== 0) throw new Error(`expected no unrouted trigger, found ${recovered}`);
    if (pending !== PENDING + 2 * ROUTED - 2 * CANCELS) throw new Error(`unexpected pending job count ${pending}`);

    return {
      route_deliveries_per_s_empty: Math.round(emptyPerS),
      route_deliveries_per_s_with_1m: Math.round(fullPerS),
      route_pending_deliveries: PENDING,
      route_fill_ms: Math.round(fillMs),
      route_file_mb: Math.round(fileMb),
      route_cancel_median_ms: Number(percentile(synced, 0.5).toFixed(3)),
      route_cancel_p99_ms: Number(percentile(synced, 0.99).toFixed(3)),
      route_cancel_nosync_median_ms: Number(percentile(noSync, 0.5).toFixed(3)),
      route_cancel_nosync_p99_ms: Number(percentile(noSync, 0.99).toFixed(3)),
      route_restart_ready_ms: Number(restartMs.toFixed(1)),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const figures = await benchRoute();
  for (const [name, value] of Object.entries(figures)) console.log(`${name.padEnd(34)} ${value}`);
}
