import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { LogFields, Logger } from '../log.ts';
import { createOutbox } from '../outputs/outbox/spec.ts';
import type { OutboundAdapter, OutboundMessage } from '../outputs/spec.ts';
import { compileTemplate, TemplateSet } from '../pipeline/render.ts';
import { makeTrigger, rules, type TriggerOverrides } from '../pipeline/test-helpers.ts';
import { SqliteQueue } from '../queue/sqlite.ts';
import { testRecord } from '../store/conformance.ts';
import { openSqliteDatabase, type Database } from '../store/sqlite-db.ts';
import { SqliteStore } from '../store/sqlite.ts';
import type { SubjectState } from '../store/store.ts';
import { RecipientError } from '../errors.ts';
import { defaultPolicy } from '../pipeline/policy.ts';
import { ConsentService } from './consent.ts';
import { createDeliverHandler, recordDeadDeliveries, storeOutboxSink } from './deliver.ts';
import { createDeliveryQueue } from './runtime.ts';
import { Router, deliveryJobId, type DeliveryJob } from './router.ts';

const RULES = rules(
  {
    id: 'reminder',
    on: 'appointment.booked',
    purpose: 'care.logistics',
    channel: 'sms',
    send: { output: 'sms-main', template: 'reminder', fields: ['appointment.start'] },
    at: 'appointment.start - 24h',
    expires: 'appointment.start',
  },
  {
    id: 'followup',
    on: 'encounter.finished',
    purpose: 'care.followup',
    channel: 'sms',
    send: { output: 'sms-main', template: 'followup', fields: [] },
    at: 'occurredAt + 2h',
  },
  {
    id: 'broken',
    on: 'appointment.checked_in',
    purpose: 'care.logistics',
    channel: 'sms',
    send: { output: 'sms-main', template: 'broken', fields: [] },
    at: 'now',
  },
);
const REMINDER = 'reminder@appointment/A100#0';

function templates(): TemplateSet {
  const compiled = [
    { name: 'reminder', text: 'See you at {{ appointment.start | local_time }}\n' },
    { name: 'followup', text: 'How are you feeling?' },
    // Reads a field the rule does not allow: fails at render time (strict variables).
    { name: 'broken', text: 'Hello {{ patient.name.family }}' },
  ].map(({ name, text }) => compileTemplate({ name, part: 'body', file: `${name}.liquid`, text }).template!);
  return new TemplateSet(compiled);
}

function captureLog(): Logger & { lines: Array<{ message: string } & LogFields> } {
  const lines: Array<{ message: string } & LogFields> = [];
  const at = (message: string, fields?: LogFields) => void lines.push({ message, ...fields });
  return { lines, info: at, warn: at, error: at, debug: at };
}

let dir: string;
let db: Database;
let store: SqliteStore;
let queue: SqliteQueue<DeliveryJob>;
let router: Router;
let clock: number;
let log: ReturnType<typeof captureLog>;
let outbox: OutboundAdapter;
let handler: ReturnType<typeof createDeliverHandler>;

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'carerelay-deliver-'));
  db = openSqliteDatabase(path.join(dir, 'carerelay.db'));
  store = new SqliteStore(db);
  clock = Date.parse('2025-06-01T09:00:00+02:00');
  log = captureLog();
  queue = new SqliteQueue<DeliveryJob>(db, { name: 'deliveries', now: () => clock, retry: { maxAttempts: 2 } });
  router = new Router({ store, queue, rules: () => RULES, zoneFor: () => 'Europe/Paris', log, now: () => clock });
  outbox = createOutbox(
    { name: 'sms-main', type: 'outbox', channel: 'sms', baa: true, allowedPurposes: ['care.logistics', 'care.followup'] },
    { sink: storeOutboxSink(store), now: () => new Date(clock) },
  );
  handler = createDeliverHandler({
    store,
    output: (name) => (name === 'sms-main' ? outbox : undefined),
    templates,
    displayZone: async () => 'Europe/Paris',
    log,
    now: () => clock,
  });
});
afterEach(async () => {
  await router.close();
  await queue.close();
  await store.close();
  db.close();
  rmSync(dir, { recursive: true, force: true });
});

let seq = 0;
/** Commits a trigger with its subject state (as ingest does) and routes it. */
async function ingest(o: TriggerOverrides, state?: Partial<SubjectState>) {
  const trigger = makeTrigger({ id: `t${++seq}`, ...o });
  const subjectStates: SubjectState[] = [];
  if (trigger.appointment) {
    subjectStates.push({ kind: 'appointment', id: trigger.appointment.id, patientId: trigger.patient.id, status: trigger.appointment.status, start: trigger.appointment.start, asOf: trigger.occurredAt, ...state } as SubjectState);
  } else if (trigger.encounter?.id) {
    subjectStates.push({ kind: 'encounter', id: trigger.encounter.id, patientId: trigger.patient.id, status: trigger.encounter.status, asOf: trigger.occurredAt, ...state } as SubjectState);
  }
  await store.commitInbound(testRecord({ controlId: trigger.id, triggers: [trigger], subjectStates }));
  return router.route(trigger);
}

/** Only a subject-state change, not routed (e.g. a status the rules do not react to). */
async function setState(state: SubjectState): Promise<void> {
  await store.commitInbound(testRecord({ controlId: `s${++seq}`, subjectStates: [state] }));
}

const job = (deliveryId: string, generation = 1, attempt = 1) => ({
  id: deliveryJobId(deliveryId, generation),
  data: { deliveryId, generation },
  attempt,
  signal: new AbortController().signal,
});

describe('deliver', () => {
  it('at its due time, renders the delivery into the outbox and finishes it, through the queue', async () => {
    await ingest({ type: 'appointment.booked' });
    queue.process(handler, { concurrency: 2 });
    await queue.idle();
    expect(await store.listOutbox({})).toEqual([]);

    clock = Date.parse('2025-06-09T14:30:00+02:00');
    await queue.poke();
    await queue.idle();
    const entries = await store.listOutbox({});
    expect(entries).toEqual([
      expect.objectContaining({ deliveryId: REMINDER, output: 'sms-main', channel: 'sms', to: '+33612345678', language: 'en', text: 'See you at 2:30 PM', keptAt: '2025-06-09T12:30:00.000Z' }),
    ]);
    expect(await store.getDelivery(REMINDER)).toMatchObject({
      status: 'sent',
      providerId: `sms-main/${REMINDER}`,
      message: { language: 'en', to: '+33612345678', text: 'See you at 2:30 PM' },
    });
    expect((await queue.get(deliveryJobId(REMINDER, 1)))?.state).toBe('done');
    expect(log.lines.find((l) => l.message === 'deliver.sent')).toEqual({ message: 'deliver.sent', deliveryId: REMINDER, rule: 'reminder', output: 'sms-main', attempt: 1 });
  });

  it('a replay of the same job sends nothing more', async () => {
    await ingest({ type: 'appointment.booked' });
    clock = Date.parse('2025-06-09T14:30:00+02:00');
    expect((await handler.run(job(REMINDER))).outcome).toBe('sent');
    const [first] = await store.listOutbox({});
    clock += 60_000;
    expect(await handler.run(job(REMINDER, 1, 2))).toEqual({ outcome: 'skipped', deliveryId: REMINDER, reason: 'not_current' });
    expect(await store.listOutbox({})).toEqual([first]);
  });

  it('suppresses as stale a reminder whose appointment was cancelled, deleted or marked no-show', async () => {
    for (const [i, status] of ['cancelled', 'entered-in-error', 'noshow'].entries()) {
      const appointment = { id: `S${i}` };
      await ingest({ type: 'appointment.booked', appointment });
      await setState({ kind: 'appointment', id: `S${i}`, patientId: 'MRN1', status, start: '2025-06-10T14:30:00+02:00', asOf: '2025-06-02T09:00:00+02:00' });
      clock = Date.parse('2025-06-09T14:30:00+02:00');
      const id = `reminder@appointment/S${i}#0`;
      expect(await handler.run(job(id))).toEqual({ outcome: 'suppressed', deliveryId: id, reason: 'stale' });
      expect(await store.getDelivery(id)).toMatchObject({ status: 'suppressed', reason: 'stale' });
    }
    expect(await store.listOutbox({})).toEqual([]);
    expect(log.lines.filter((l) => l.message === 'deliver.suppressed').map((l) => l.reason)).toEqual(['stale', 'stale', 'stale']);
  });

  it('suppresses as stale a reminder for an appointment moved to another time (compared as instants)', async () => {
    await ingest({ type: 'appointment.booked' });
    // Same instant written with another offset: still current.
    await setState({ kind: 'appointment', id: 'A100', patientId: 'MRN1', status: 'booked', start: '2025-06-10T12:30:00Z', asOf: '2025-06-02T09:00:00+02:00' });
    clock = Date.parse('2025-06-09T14:30:00+02:00');
    expect((await handler.run(job(REMINDER))).outcome).toBe('sent');

    await ingest({ type: 'appointment.booked', appointment: { id: 'A101' } });
    await setState({ kind: 'appointment', id: 'A101', patientId: 'MRN1', status: 'booked', start: '2025-06-10T16:00:00+02:00', asOf: '2025-06-02T09:00:00+02:00' });
    expect((await handler.run(job('reminder@appointment/A101#0'))).outcome).toBe('suppressed');
  });

  it('a reschedule committed but not routed yet when the job runs moves the reminder instead of losing it as stale', async () => {
    await ingest({ type: 'appointment.booked' });
    // Moved by a day: committed (the subject state says the new start), routing still to come.
    const moved = makeTrigger({
      id: `t${++seq}`,
      type: 'appointment.rescheduled',
      occurredAt: '2025-06-02T09:00:00+02:00',
      appointment: { start: '2025-06-11T14:30:00+02:00', previousStart: '2025-06-10T14:30:00+02:00' },
    });
    const state: SubjectState = { kind: 'appointment', id: 'A100', patientId: moved.patient.id, status: 'booked', start: '2025-06-11T14:30:00+02:00', asOf: moved.occurredAt };
    await store.commitInbound(testRecord({ controlId: moved.id, triggers: [moved], subjectStates: [state] }));
    clock = Date.parse('2025-06-09T14:30:00+02:00');

    // Routing elsewhere (another process, a retry): try again later, nothing decided.
    await expect(handler.run(job(REMINDER))).rejects.toMatchObject({ failureClass: 'transient', code: 'routing_pending' });
    expect(await store.getDelivery(REMINDER)).toMatchObject({ status: 'pending' });

    // Routing under way in this process: the job waits for it and follows the new plan.
    const waiting = createDeliverHandler({
      store,
      output: () => outbox,
      templates,
      displayZone: async () => 'Europe/Paris',
      log,
      now: () => clock,
      routingSettled: async () => {
        await router.route(moved);
      },
    });
    await expect(waiting.run(job(REMINDER))).rejects.toMatchObject({ code: 'not_due_yet' });
    expect(await store.getDelivery(REMINDER)).toMatchObject({ status: 'pending', subjectStart: '2025-06-11T14:30:00+02:00', delivery: { dueAt: '2025-06-10T14:30:00+02:00' } });
    clock = Date.parse('2025-06-10T14:30:00+02:00');
    expect((await waiting.run(job(REMINDER))).outcome).toBe('sent');
    expect(log.lines.filter((l) => l.message === 'deliver.suppressed')).toEqual([]);
  });

  it('suppresses a post-discharge message once the discharge was cancelled (A13)', async () => {
    await ingest({ type: 'encounter.finished', appointment: null, encounter: { id: 'V1', status: 'sent' } });
    await setState({ kind: 'encounter', id: 'V1', patientId: 'MRN1', status: 'in-progress', asOf: '2025-06-01T10:00:00+02:00' });
    clock = Date.parse('2025-06-01T11:00:00+02:00');
    expect(await handler.run(job('followup@encounter/V1#0'))).toMatchObject({ outcome: 'suppressed', reason: 'stale' });
  });

  it('suppresses as expired a delivery that runs at or after its expiry', async () => {
    await ingest({ type: 'appointment.booked' });
    clock = Date.parse('2025-06-10T14:30:00+02:00');
    expect(await handler.run(job(REMINDER))).toMatchObject({ outcome: 'suppressed', reason: 'expired' });
    expect(await store.getDelivery(REMINDER)).toMatchObject({ status: 'suppressed', reason: 'expired' });
    expect(await store.listOutbox({})).toEqual([]);
  });

  it('a job run well before its delivery is due (replanned later while it ran) waits instead of sending early', async () => {
    await ingest({ type: 'appointment.booked' });
    clock = Date.parse('2025-06-02T09:00:00+02:00'); // a week before the reminder's due time
    await expect(handler.run(job(REMINDER, 1, 2))).rejects.toMatchObject({ failureClass: 'transient', code: 'not_due_yet' });
    expect(await store.listOutbox({})).toEqual([]);
    expect((await store.getDelivery(REMINDER))?.status).toBe('pending');
  });

  it('ignores the job of an older generation (cancelled, then booked again)', async () => {
    await ingest({ type: 'appointment.booked' });
    await ingest({ type: 'appointment.cancelled', occurredAt: '2025-06-02T09:00:00+02:00', appointment: { status: 'cancelled' } });
    await ingest({ type: 'appointment.booked', occurredAt: '2025-06-03T09:00:00+02:00' });
    clock = Date.parse('2025-06-09T14:30:00+02:00');
    expect((await handler.run(job(REMINDER, 1))).outcome).toBe('skipped');
    expect((await handler.run(job(REMINDER, 2))).outcome).toBe('sent');
  });

  it('a job that starts before its routing is saved waits for it, else retries later', async () => {
    clock = Date.parse('2025-06-09T14:30:00+02:00');
    const trigger = makeTrigger({ id: 'early-1', occurredAt: '2025-06-01T09:00:00+02:00' });
    await store.commitInbound(testRecord({ controlId: 'early-1', triggers: [trigger] }));
    const waiting = createDeliverHandler({
      store,
      output: () => outbox,
      templates,
      displayZone: async () => 'Europe/Paris',
      log,
      now: () => clock,
      // The routing that added the job is saved while the job waits.
      routingSettled: async () => {
        await router.route(trigger);
      },
    });
    expect((await waiting.run(job(REMINDER))).outcome).toBe('sent');
    // Without a saved delivery, the job is retried later rather than dropped.
    await expect(handler.run(job('reminder@appointment/NOT-YET#0'))).rejects.toMatchObject({ failureClass: 'transient', code: 'routing_pending' });
  });

  it('a render failure is permanent: the job is dead-lettered and the delivery marked failed in the same write', async () => {
    // The queue as the server builds it: its writes in the store's group commit.
    await queue.close();
    await router.close();
    queue = createDeliveryQueue(db, store, { now: () => clock, retry: { maxAttempts: 2 } });
    router = new Router({ store, queue, rules: () => RULES, zoneFor: () => 'Europe/Paris', log, now: () => clock });
    const dead = new Promise<void>((resolve) => queue.subscribe((e) => e.type === 'dead' && resolve()));
    await ingest({ type: 'appointment.checked_in', appointment: { status: 'arrived' } });
    queue.process(handler, { concurrency: 1 });
    await dead;
    const id = 'broken@appointment/A100#0';
    expect(await queue.get(deliveryJobId(id, 1))).toMatchObject({ state: 'dead', lastError: { failureClass: 'permanent', code: 'render_failed' } });
    // Marked failed by the dead-letter's own transaction: nothing to wait for.
    expect(await store.getDelivery(id)).toMatchObject({ status: 'failed', reason: 'render_failed' });
    expect(await store.listOutbox({})).toEqual([]);
  });

  it('hands the adapter the mapped fields, the patient, what it is about, its expiry; unsubscribe links only off care', async () => {
    await ingest({ type: 'appointment.booked' });
    const seen: OutboundMessage[] = [];
    const capture: OutboundAdapter = { ...outbox, send: async (message, context) => (seen.push(message), outbox.send(message, context)) };
    const withLinks = createDeliverHandler({
      store,
      output: () => capture,
      templates,
      displayZone: async () => 'Europe/Paris',
      log,
      now: () => clock,
      unsubscribeLinks: (d) => ({ url: `https://carerelay.example.org/u/${encodeURIComponent(d.id)}` }),
    });
    clock = Date.parse('2025-06-09T14:30:00+02:00');
    expect((await withLinks.run(job(REMINDER))).outcome).toBe('sent');
    expect(seen[0]).toMatchObject({
      fields: { appointment: { start: '2025-06-10T14:30:00+02:00' } },
      patientId: 'MRN1',
      about: { kind: 'appointment', id: 'A100' },
      expiresAt: '2025-06-10T14:30:00+02:00',
    });
    // A care reminder carries no unsubscribe link (docs/consent.md: care email stops only with the channel).
    expect(seen[0]!.unsubscribe).toBeUndefined();
  });
});

describe('deliver with the consent gate (docs/consent.md rules 2–8)', () => {
  let gated: ReturnType<typeof createDeliverHandler>;
  let consent: ConsentService;
  const rulesWithNoName = () =>
    rules({
      id: 'reminder',
      on: 'appointment.booked',
      purpose: 'care.logistics',
      channel: 'sms',
      send: { output: 'sms-main', template: 'reminder', noNameTemplate: 'reminder-noname', fields: ['appointment.start'] },
      at: 'appointment.start - 24h',
      expires: 'appointment.start',
    });
  const withNoName = () =>
    new TemplateSet([...templates().all(), compileTemplate({ name: 'reminder-noname', part: 'body', file: 'n.liquid', text: 'An appointment at {{ appointment.start | local_time }}' }).template!]);

  beforeEach(() => {
    consent = new ConsentService({ store, policy: defaultPolicy({ region: 'eu', timezone: 'Europe/Paris' }), output: () => outbox, log, now: () => clock });
    gated = createDeliverHandler({ store, gate: consent, output: () => outbox, templates: withNoName, displayZone: async () => 'Europe/Paris', log, now: () => clock });
  });

  it('revoked between planning and sending: nothing sent, decision suppressed opted_out recorded', async () => {
    await ingest({ type: 'appointment.booked' });
    await store.addConsentEvent({ patientId: 'MRN1', action: 'opt_out', purposes: [], channel: 'sms', source: 'admin', method: 'api', at: '2025-06-05T10:00:00+02:00', policyVersion: '1', recordedAt: '2025-06-05T08:00:00Z' });
    clock = Date.parse('2025-06-09T14:30:00+02:00');
    expect(await gated.run(job(REMINDER))).toEqual({ outcome: 'suppressed', deliveryId: REMINDER, reason: 'opted_out' });
    expect(await store.listOutbox({})).toEqual([]);
    expect(await store.listDecisions({ deliveryId: REMINDER })).toEqual([expect.objectContaining({ result: 'deny', checkRule: 2, reason: 'opted_out', settings: expect.objectContaining({ region: 'eu', zone: 'Europe/Paris' }) })]);
  });

  it('in quiet hours the job is retried at 08:00 (move recorded), then sent and disclosed', async () => {
    router = new Router({ store, queue, rules: () => rules({ ...RULE_AT_NIGHT }), zoneFor: () => 'Europe/Paris', log, now: () => clock });
    await ingest({ type: 'encounter.finished', appointment: null, encounter: { id: 'V9', status: 'finished', end: '2025-06-01T20:30:00+02:00' } });
    queue.process(gated, { concurrency: 1 });
    clock = Date.parse('2025-06-01T22:30:00+02:00');
    await queue.poke();
    await queue.idle();
    const id = 'night@encounter/V9#0';
    expect(await queue.get(deliveryJobId(id, 1))).toMatchObject({ state: 'pending', runAt: '2025-06-02T06:00:00.000Z', lastError: { code: 'quiet_hours' } });
    expect(await store.listDecisions({ deliveryId: id })).toEqual([expect.objectContaining({ result: 'move', reason: 'quiet_hours', retryAt: '2025-06-02T08:00:00+02:00' })]);
    clock = Date.parse('2025-06-02T08:00:00+02:00');
    await queue.poke();
    await queue.idle();
    expect(await store.getDelivery(id)).toMatchObject({ status: 'sent' });
    expect(await store.listDisclosures({ patientIds: ['MRN1'] })).toEqual([expect.objectContaining({ deliveryId: id, purpose: 'care.followup', channel: 'sms', recipient: '+33612345678', at: '2025-06-02T06:00:00.000Z' })]);
  });

  it('a waitlist offer held back by quiet hours is not sent after the offer expired: suppressed offer_expired', async () => {
    const offer = { id: 'offer', on: 'appointment.waitlist_offered', purpose: 'care.logistics', channel: 'sms', send: { output: 'sms-main', template: 'followup', fields: [] }, at: 'now' } as const;
    router = new Router({ store, queue, rules: () => rules(offer), zoneFor: () => 'Europe/Paris', log, now: () => clock });
    const expiresAt = Date.parse('2025-06-01T23:00:00+02:00');
    const asked: string[] = [];
    const withOffers = createDeliverHandler({
      store,
      gate: consent,
      output: () => outbox,
      templates,
      displayZone: async () => 'Europe/Paris',
      log,
      now: () => clock,
      offerClosed: async (offerId) => {
        asked.push(offerId);
        return clock >= expiresAt ? 'offer_expired' : undefined;
      },
    });
    clock = Date.parse('2025-06-01T22:30:00+02:00');
    await ingest({ type: 'appointment.waitlist_offered', appointment: { id: 'wl-1', status: 'proposed', start: '2025-06-03T09:00:00+02:00' } });
    queue.process(withOffers, { concurrency: 1 });
    await queue.poke();
    await queue.idle();
    const id = 'offer@appointment/wl-1#0';
    expect(await queue.get(deliveryJobId(id, 1))).toMatchObject({ state: 'pending', lastError: { code: 'quiet_hours' } });
    clock = Date.parse('2025-06-02T08:00:00+02:00');
    await queue.poke();
    await queue.idle();
    expect(await store.getDelivery(id)).toMatchObject({ status: 'suppressed', reason: 'offer_expired' });
    expect(await store.listOutbox({})).toEqual([]);
    expect(asked).toEqual(['wl-1', 'wl-1']);
    expect(log.lines).toContainEqual(expect.objectContaining({ message: 'deliver.suppressed', deliveryId: id, reason: 'offer_expired' }));
  });

  it('an address shared with another patient gets the no-name variant', async () => {
    router = new Router({ store, queue, rules: rulesWithNoName, zoneFor: () => 'Europe/Paris', log, now: () => clock });
    await ingest({ type: 'appointment.booked' });
    await store.notePatientFacts([makeTrigger({ id: 'sibling', patient: { id: 'MRN2' } })]);
    clock = Date.parse('2025-06-09T14:30:00+02:00');
    expect((await gated.run(job(REMINDER))).outcome).toBe('sent');
    expect((await store.listOutbox({}))[0]!.text).toMatch(/^An appointment at 2:30\sPM$/);
  });

  it("a provider's opt-out (RecipientError opted_out) stops that output's SMS to the number from then on", async () => {
    const refusing: OutboundAdapter = {
      ...outbox,
      send: async () => {
        throw new RecipientError('opted_out', 'recipient_opted_out', 'the number replied STOP to this sender', { providerCode: '21610' });
      },
    };
    const refused = createDeliverHandler({ store, gate: consent, output: () => refusing, templates: withNoName, displayZone: async () => 'Europe/Paris', log, now: () => clock });
    await ingest({ type: 'appointment.booked' });
    await ingest({ type: 'appointment.booked', appointment: { id: 'A102', start: '2025-06-12T14:30:00+02:00' } });
    clock = Date.parse('2025-06-09T14:30:00+02:00');
    await expect(refused.run(job(REMINDER))).rejects.toBeInstanceOf(RecipientError);
    const { events } = await store.consentRecords({ patientIds: [], addresses: ['+33612345678'] });
    expect(events).toEqual([expect.objectContaining({ action: 'opt_out', channel: 'sms', output: 'sms-main', source: 'provider', method: 'opted_out:21610', reference: REMINDER })]);
    // The other pending reminder to that number was suppressed at once.
    expect(await store.getDelivery('reminder@appointment/A102#0')).toMatchObject({ status: 'suppressed', reason: 'opted_out' });
  });

  it("a care message's check reads no care episodes (rule 5 withholds only survey, service.info, marketing, fundraising)", async () => {
    await ingest({ type: 'appointment.booked' });
    clock = Date.parse('2025-06-09T14:30:00+02:00');
    const original = store.listSubjectStates.bind(store);
    let reads = 0;
    store.listSubjectStates = async (...args) => {
      reads++;
      return original(...args);
    };
    try {
      expect((await gated.run(job(REMINDER))).outcome).toBe('sent');
      expect(reads).toBe(0);
      // The patient's view covers every purpose: it reads them.
      await consent.effectiveConsent('MRN1');
      expect(reads).toBeGreaterThan(0);
    } finally {
      store.listSubjectStates = original;
    }
  });

  it('fails closed: without the ledger only care goes, and only on a fresh suppression cache', async () => {
    await ingest({ type: 'appointment.booked' });
    await ingest({ type: 'appointment.booked', appointment: { id: 'A102' } });
    clock = Date.parse('2025-06-09T14:30:00+02:00');
    // A first check reads the ledger (and fills the cache) — then the ledger goes away.
    expect((await gated.run(job(REMINDER))).outcome).toBe('sent');
    const original = store.consentRecords.bind(store);
    store.consentRecords = async () => {
      throw new Error('SQLITE_IOERR');
    };
    try {
      expect((await gated.run(job('reminder@appointment/A102#0'))).outcome).toBe('sent');
      clock += 16 * 60_000; // older than failClosed.cacheMaxAgeSeconds (900 s)
      await ingest({ type: 'appointment.booked', appointment: { id: 'A103', start: '2025-06-10T14:40:00+02:00' } });
      await expect(gated.run(job('reminder@appointment/A103#0'))).rejects.toMatchObject({ failureClass: 'transient', code: 'ledger_unavailable' });
    } finally {
      store.consentRecords = original;
    }
  });
});

const RULE_AT_NIGHT = {
  id: 'night',
  on: 'encounter.finished',
  purpose: 'care.followup',
  channel: 'sms',
  send: { output: 'sms-main', template: 'followup', fields: [] },
  at: 'encounter.end + 2h',
} as const;
