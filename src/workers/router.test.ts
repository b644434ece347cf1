import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { makeTrigger, rules, type TriggerOverrides } from '../pipeline/test-helpers.ts';
import type { Rule } from '../pipeline/rule.ts';
import { SqliteQueue } from '../queue/sqlite.ts';
import { testRecord } from '../store/conformance.ts';
import { openSqliteDatabase, type Database } from '../store/sqlite-db.ts';
import { SqliteStore } from '../store/sqlite.ts';
import type { Trigger } from '../types.ts';
import { Router, deliveryJobId, parseDeliveryJobId, type DeliveryJob } from './router.ts';
import type { LogFields, Logger } from '../log.ts';

const REMINDER = rules({
  id: 'reminder',
  on: 'appointment.booked',
  purpose: 'care.logistics',
  channel: 'sms',
  send: { output: 'sms-main', template: 'reminder', fields: ['appointment.start'] },
  at: 'appointment.start - 24h',
  expires: 'appointment.start',
});
function captureLog(): Logger & { lines: Array<{ message: string } & LogFields> } {
  const lines: Array<{ message: string } & LogFields> = [];
  const at = (message: string, fields?: LogFields) => void lines.push({ message, ...fields });
  return { lines, info: at, warn: at, error: at, debug: at };
}

const ID = (appointment = 'A100') => `reminder@appointment/${appointment}#0`;

let dir: string;
let file: string;
let db: Database;
let store: SqliteStore;
let queue: SqliteQueue<DeliveryJob>;
let router: Router;
let clock: number;
let currentRules: readonly Rule[];
let zone: string;
let log: ReturnType<typeof captureLog>;

function open(): void {
  db = openSqliteDatabase(file);
  store = new SqliteStore(db);
  queue = new SqliteQueue<DeliveryJob>(db, { name: 'deliveries', now: () => clock });
  router = new Router({ store, queue, rules: () => currentRules, zoneFor: () => zone, log, now: () => clock });
}

async function shut(): Promise<void> {
  await router.close();
  await queue.close();
  await store.close();
  db.close();
}

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'carerelay-router-'));
  file = path.join(dir, 'carerelay.db');
  clock = Date.parse('2025-06-01T09:00:00+02:00');
  currentRules = REMINDER;
  zone = 'Europe/Paris';
  log = captureLog();
  open();
});
afterEach(async () => {
  if (db.open) await shut();
  rmSync(dir, { recursive: true, force: true });
});

let seq = 0;
/** Commits the trigger as ingest does (so it is stored, unrouted), without routing it. */
async function commit(o: TriggerOverrides): Promise<Trigger> {
  const trigger = makeTrigger({ id: `t${++seq}`, ...o });
  const outcome = await store.commitInbound(testRecord({ controlId: trigger.id, triggers: [trigger] }));
  expect(outcome.outcome).toBe('stored');
  return trigger;
}

async function ingest(o: TriggerOverrides) {
  return router.route(await commit(o));
}

const booked = (o: TriggerOverrides = {}): TriggerOverrides => ({ type: 'appointment.booked', occurredAt: '2025-06-01T09:00:00+02:00', ...o });
const cancelled = (o: TriggerOverrides = {}): TriggerOverrides => ({
  type: 'appointment.cancelled',
  occurredAt: '2025-06-02T09:00:00+02:00',
  ...o,
  appointment: { status: 'cancelled', ...o.appointment },
});
const rescheduled = (start: string, o: TriggerOverrides = {}): TriggerOverrides => ({
  type: 'appointment.rescheduled',
  occurredAt: '2025-06-02T09:00:00+02:00',
  ...o,
  appointment: { start, previousStart: '2025-06-10T14:30:00+02:00', ...o.appointment },
});

/** The store's next saveRouting fails as a full disk would; later ones work. */
function failNextSave(): void {
  const realSave = store.saveRouting.bind(store);
  let failNext = true;
  store.saveRouting = async (...args) => {
    if (failNext) {
      failNext = false;
      throw new Error('disk I/O error');
    }
    return realSave(...args);
  };
}

describe('job ids', () => {
  it('carry the delivery id and generation, even when the id holds "~"', () => {
    const id = deliveryJobId('r@appointment/A~1#0', 3);
    expect(id).toBe('r@appointment/A~1#0~3');
    expect(parseDeliveryJobId(id)).toEqual({ deliveryId: 'r@appointment/A~1#0', generation: 3 });
    expect(parseDeliveryJobId('other-job')).toBeUndefined();
    expect(parseDeliveryJobId('x~0')).toBeUndefined();
  });
});

describe('Router', () => {
  it('booked: a pending delivery in the store and a job due at its time', async () => {
    const routed = await ingest(booked());
    expect(routed.changes.map((c) => c.change)).toEqual(['added']);
    const stored = await store.getDelivery(ID());
    expect(stored).toMatchObject({ status: 'pending', generation: 1, subjectStart: '2025-06-10T14:30:00+02:00' });
    expect(stored!.delivery.dueAt).toBe('2025-06-09T14:30:00+02:00');
    const job = await queue.get(deliveryJobId(ID(), 1));
    expect(job).toMatchObject({ state: 'pending', runAt: '2025-06-09T12:30:00.000Z', data: null, cancelKeys: [] });
    expect(await store.listUnroutedTriggers(10)).toEqual([]);
  });

  it('explains every rule for the trigger and names the trigger that cancelled a delivery', async () => {
    currentRules = [
      ...REMINDER,
      ...rules({
        id: 'week-ahead',
        on: 'appointment.booked',
        where: { 'appointment.start': { gte: 'occurredAt + 7d' } },
        purpose: 'care.logistics',
        channel: 'sms',
        send: { output: 'sms-main', template: 'reminder', fields: ['appointment.start'] },
        at: 'appointment.start - 7d',
      }),
    ];
    // Booked five days ahead: not a week.
    const booking = await ingest(booked({ appointment: { start: '2025-06-06T14:30:00+02:00' } }));
    expect(await store.getRoutingExplanation(booking.triggerId)).toEqual({
      triggerId: booking.triggerId,
      routedAt: new Date(clock).toISOString(),
      rules: [
        { rule: 'reminder', outcome: 'planned', deliveryId: ID() },
        { rule: 'week-ahead', outcome: 'skipped', reason: 'condition_false', condition: 'appointment.start gte occurredAt + 7d' },
      ],
    });
    expect((await store.getDelivery(ID()))!.cause).toEqual({ triggerId: booking.triggerId, change: 'added' });
    const cancel = await ingest(cancelled());
    expect((await store.getDelivery(ID()))!.cause).toEqual({ triggerId: cancel.triggerId, change: 'cancelled' });
    expect((await store.getRoutingExplanation(cancel.triggerId))!.rules).toEqual([{ rule: 'reminder', outcome: 'cancelled', deliveryId: ID() }]);
  });

  it('triggers committed together are routed in one pass, in order, and saved together', async () => {
    const triggers = [
      await commit(booked({ appointment: { id: 'B1' } })),
      await commit(booked({ appointment: { id: 'B2' } })),
      await commit(cancelled({ appointment: { id: 'B1' } })),
      await commit(booked({ appointment: { id: 'B3' } })),
    ];
    router.onCommitted(triggers);
    await router.idle();
    // B1 was booked then cancelled within the pass: cancelled, its job too.
    expect((await store.getDelivery(ID('B1')))?.status).toBe('cancelled');
    expect((await queue.get(deliveryJobId(ID('B1'), 1)))?.state).toBe('cancelled');
    for (const id of ['B2', 'B3']) {
      expect((await store.getDelivery(ID(id)))?.status).toBe('pending');
      expect((await queue.get(deliveryJobId(ID(id), 1)))?.state).toBe('pending');
    }
    expect(await store.listUnroutedTriggers(10)).toEqual([]);
  });

  it('after a pass that cannot be saved, later triggers wait and everything is routed in commit order', async () => {
    failNextSave();
    const booking = await commit(booked({ appointment: { id: 'O1' } }));
    router.onCommitted([booking]);
    await router.idle();
    // The reschedule comes while the booking is still unrouted: it must not be applied first.
    const moved = await commit(rescheduled('2025-06-20T10:00:00+02:00', { appointment: { id: 'O1' } }));
    router.onCommitted([moved]);
    await router.idle();
    expect(await store.getDelivery(ID('O1'))).toBeUndefined();
    expect(await router.routeUnrouted()).toBe(2);
    const stored = await store.getDelivery(ID('O1'));
    expect(stored).toMatchObject({ status: 'pending', subjectStart: '2025-06-20T10:00:00+02:00' });
    expect(stored!.delivery.dueAt).toBe('2025-06-19T10:00:00+02:00');
    expect((await queue.get(deliveryJobId(ID('O1'), 1)))?.runAt).toBe('2025-06-19T08:00:00.000Z');
    // Recovered: live routing resumes.
    router.onCommitted([await commit(booked({ appointment: { id: 'O2' } }))]);
    await router.idle();
    expect((await store.getDelivery(ID('O2')))?.status).toBe('pending');
  });

  it('a job id left cancelled by an unsaved pass is not mistaken for a live timer', async () => {
    await ingest(booked({ appointment: { id: 'G1' } }));
    failNextSave();
    // Cancel and a newer re-booking in one pass: cancels G1~1, adds G1~2, then the save fails.
    router.onCommitted([
      await commit(cancelled({ appointment: { id: 'G1' } })),
      await commit(booked({ occurredAt: '2025-06-03T09:00:00+02:00', appointment: { id: 'G1' } })),
    ]);
    await router.idle();
    // The sweep routes them one by one: the cancel cancels G1~2; the re-booking needs a new timer.
    expect(await router.routeUnrouted()).toBe(2);
    const stored = await store.getDelivery(ID('G1'));
    expect(stored?.status).toBe('pending');
    const job = await queue.get(deliveryJobId(ID('G1'), stored!.generation));
    expect(job?.state).toBe('pending');
  });

  it('a trigger the rules cannot route is skipped by the sweep, not blocking the others', async () => {
    const bad = await commit(booked({ appointment: { id: 'Z1' } }));
    await commit(booked({ appointment: { id: 'Z2' } }));
    // Only Z1 is unroutable (its zone is unknown); Z2, committed after it, still gets routed.
    await router.close();
    router = new Router({ store, queue, rules: () => currentRules, zoneFor: (t) => (t.id === bad.id ? 'Mars/Olympus' : 'Europe/Paris'), log, now: () => clock });
    expect(await router.routeUnrouted()).toBe(1);
    expect((await store.getDelivery(ID('Z2')))?.status).toBe('pending');
    expect((await store.listUnroutedTriggers(10)).map((t) => t.id)).toEqual([bad.id]);
    expect(log.lines.find((l) => l.message === 'route.failed')).toMatchObject({ triggerId: bad.id, code: 'route_failed' });
  });

  it('a routing lock that cannot be taken (store unreachable) is logged and retried, never an unhandled rejection', async () => {
    const trigger = await commit(booked({ appointment: { id: 'L1' } }));
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => void unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    const withLock = store.withLock.bind(store);
    try {
      // PostgreSQL restarting: the lock's connection is refused before any routing work runs.
      store.withLock = () => Promise.reject(Object.assign(new Error('the database system is starting up'), { code: '57P03' }));
      const failed = new Promise<void>((resolve) => {
        const error = log.error;
        log.error = (message, fields) => {
          error(message, fields);
          if (message === 'route.failed') resolve();
        };
      });
      // Nothing awaits this pass (an ingest hook): only the router's own handling sees it fail.
      router.onCommitted([trigger]);
      await failed;
      // Node reports an unhandled rejection once the microtasks of its turn have run.
      await new Promise((resolve) => setImmediate(resolve));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      store.withLock = withLock;
    }
    expect(await router.routeUnrouted()).toBe(1);
    expect((await store.getDelivery(ID('L1')))?.status).toBe('pending');
  });

  it('a pass that cannot be saved leaves its triggers unrouted for the retry sweep', async () => {
    const trigger = await commit(booked({ appointment: { id: 'F1' } }));
    db.pragma('query_only = ON');
    router.onCommitted([trigger]);
    await router.idle();
    expect(log.lines.some((l) => l.message === 'route.failed' && l.triggerId === trigger.id)).toBe(true);
    db.pragma('query_only = OFF');
    expect((await store.listUnroutedTriggers(10)).map((t) => t.id)).toEqual([trigger.id]);
    expect(await router.routeUnrouted()).toBe(1);
    expect((await store.getDelivery(ID('F1')))?.status).toBe('pending');
  });

  it('cancelled: the delivery is cancelled and its job too', async () => {
    await ingest(booked());
    await ingest(cancelled());
    expect((await store.getDelivery(ID()))?.status).toBe('cancelled');
    expect((await queue.get(deliveryJobId(ID(), 1)))?.state).toBe('cancelled');
  });

  it('rescheduled: the same job moves to the new time', async () => {
    await ingest(booked());
    await ingest(rescheduled('2025-06-12T10:00:00+02:00'));
    const stored = await store.getDelivery(ID());
    expect(stored).toMatchObject({ status: 'pending', generation: 1, subjectStart: '2025-06-12T10:00:00+02:00' });
    expect(stored!.delivery.dueAt).toBe('2025-06-11T10:00:00+02:00');
    expect(await queue.get(deliveryJobId(ID(), 1))).toMatchObject({ state: 'pending', runAt: '2025-06-11T08:00:00.000Z' });
    expect(await queue.counts()).toMatchObject({ pending: 1, cancelled: 0 });
  });

  it('rescheduled then cancelled: nothing left to send', async () => {
    await ingest(booked());
    await ingest(rescheduled('2025-06-12T10:00:00+02:00'));
    await ingest(cancelled({ occurredAt: '2025-06-03T09:00:00+02:00', appointment: { start: '2025-06-12T10:00:00+02:00' } }));
    expect((await store.getDelivery(ID()))?.status).toBe('cancelled');
    expect(await queue.counts()).toMatchObject({ pending: 0, cancelled: 1 });
  });

  it('cancelled, then booked again under a new appointment id: a new delivery beside the cancelled one', async () => {
    await ingest(booked());
    await ingest(cancelled());
    await ingest(booked({ occurredAt: '2025-06-02T09:05:00+02:00', appointment: { id: 'A200', start: '2025-06-11T09:00:00+02:00' } }));
    expect((await store.getDelivery(ID()))?.status).toBe('cancelled');
    expect(await store.getDelivery(ID('A200'))).toMatchObject({ status: 'pending', generation: 1 });
    expect(await queue.get(deliveryJobId(ID('A200'), 1))).toMatchObject({ state: 'pending', runAt: '2025-06-10T07:00:00.000Z' });
  });

  it('the same appointment booked again after a cancel: generation 2 and a new job', async () => {
    await ingest(booked());
    await ingest(cancelled());
    const routed = await ingest(booked({ occurredAt: '2025-06-03T09:00:00+02:00', appointment: { start: '2025-06-20T09:00:00+02:00' } }));
    expect(routed.changes.map((c) => c.change)).toEqual(['revived']);
    expect(await store.getDelivery(ID())).toMatchObject({ status: 'pending', generation: 2, subjectStart: '2025-06-20T09:00:00+02:00' });
    expect((await queue.get(deliveryJobId(ID(), 1)))?.state).toBe('cancelled');
    expect(await queue.get(deliveryJobId(ID(), 2))).toMatchObject({ state: 'pending', runAt: '2025-06-19T07:00:00.000Z' });
  });

  it('an older cancel arriving late does not cancel a newer booking', async () => {
    await ingest(booked({ occurredAt: '2025-06-03T09:00:00+02:00' }));
    await ingest(cancelled({ occurredAt: '2025-06-02T09:00:00+02:00' }));
    expect((await store.getDelivery(ID()))?.status).toBe('pending');
    expect((await queue.get(deliveryJobId(ID(), 1)))?.state).toBe('pending');
  });

  it('a replan whose job is gone gets a new generation rather than no timer', async () => {
    await ingest(booked());
    // The timer was lost (e.g. dead-lettered or cancelled by hand) while the delivery stayed pending.
    expect(await queue.cancel(deliveryJobId(ID(), 1), 'test')).toBe(1);
    await ingest(rescheduled('2025-06-12T10:00:00+02:00'));
    expect(await store.getDelivery(ID())).toMatchObject({ status: 'pending', generation: 2 });
    expect(await queue.get(deliveryJobId(ID(), 2))).toMatchObject({ state: 'pending', runAt: '2025-06-11T08:00:00.000Z' });
  });

  it('the same trigger routed twice adds nothing', async () => {
    const trigger = await commit(booked());
    await router.route(trigger);
    const before = await store.getDelivery(ID());
    const again = await router.route(trigger);
    expect(again.written).toEqual([]);
    expect(again.changes.map((c) => [c.change, c.reason])).toEqual([['unchanged', 'same']]);
    expect(await store.getDelivery(ID())).toEqual(before);
    expect(await queue.counts()).toMatchObject({ pending: 1 });
  });

  it('a trigger committed but never routed (crash) is routed at start, once', async () => {
    await commit(booked());
    await commit(booked({ appointment: { id: 'A200' } }));
    await shut();
    open();
    expect((await store.listUnroutedTriggers(10)).length).toBe(2);
    expect(await router.routeUnrouted()).toBe(2);
    expect((await store.getDelivery(ID()))?.status).toBe('pending');
    expect((await queue.get(deliveryJobId(ID('A200'), 1)))?.state).toBe('pending');
    expect(await router.routeUnrouted()).toBe(0);
  });

  it('a crash after the queue ops but before saveRouting is repaired by routing again', async () => {
    const trigger = await commit(booked());
    // The queue op of a first attempt happened; its saveRouting did not.
    await queue.add({ id: deliveryJobId(ID(), 1), data: { deliveryId: ID(), generation: 1 }, runAt: '2025-06-09T14:30:00+02:00', cancelKeys: [ID()] });
    expect(await router.routeUnrouted()).toBe(1);
    expect(await store.getDelivery(ID())).toMatchObject({ status: 'pending', generation: 1 });
    expect(await queue.counts()).toMatchObject({ pending: 1 });
    expect(trigger.id).toBe((await store.listTriggers({}))[0]!.id);
  });

  it('onCommitted routes in order; idle() waits for it', async () => {
    const a = await commit(booked());
    const b = await commit(cancelled());
    router.onCommitted([a, b]);
    await router.idle();
    expect((await store.getDelivery(ID()))?.status).toBe('cancelled');
  });

  it('uses the rules current when each trigger is routed', async () => {
    await ingest(booked());
    currentRules = rules({ ...rawReminder(), id: 'reminder-48h', at: 'appointment.start - 48h' });
    await ingest(booked({ appointment: { id: 'A200' } }));
    expect(await store.getDelivery('reminder-48h@appointment/A200#0')).toBeDefined();
    expect(await store.getDelivery(ID('A200'))).toBeUndefined();
  });

  it('a trigger that cannot be routed stays unrouted, is logged by id, and is routed once fixed', async () => {
    zone = 'Mars/Olympus';
    const trigger = await commit(booked());
    router.onCommitted([trigger]);
    await router.idle();
    expect(log.lines.find((l) => l.message === 'route.failed')).toMatchObject({ triggerId: trigger.id, reason: 'route_failed', code: 'route_failed' });
    expect((await store.listUnroutedTriggers(10)).map((t) => t.id)).toEqual([trigger.id]);
    zone = 'Europe/Paris';
    expect(await router.routeUnrouted()).toBe(1);
    expect((await store.getDelivery(ID()))?.status).toBe('pending');
  });
});

function rawReminder() {
  return {
    id: 'reminder',
    on: 'appointment.booked',
    purpose: 'care.logistics',
    channel: 'sms',
    send: { output: 'sms-main', template: 'reminder', fields: ['appointment.start'] },
    at: 'appointment.start - 24h',
    expires: 'appointment.start',
  };
}
