// FhirIngest against a real local FHIR server (test/helpers/fhir-server.ts) and a real
// SQLite store: R4 rest-hooks, topic notifications, dedupe, gaps and their recovery,
// heartbeat silence with an injected clock, bad input and store failures.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startFhirTestServer, type FhirTestServer } from '../../test/helpers/fhir-server.ts';
import {
  eventTime,
  testAppointment,
  testEncounter,
  testPatient,
  topicBundle,
  type Json,
  type TestEvent,
} from '../../test/helpers/fhir-notifications.ts';
import { captureLogger } from '../../test/helpers/server.ts';
import { FhirClient } from '../fhir/client.ts';
import { SqliteStore } from '../store/sqlite.ts';
import type { Store } from '../store/store.ts';
import type { Trigger } from '../types.ts';
import { FhirIngest, type FhirIngestResult, type FhirIngestSettings } from './fhir-ingest.ts';
import { cursorKeys } from './fhir-state.ts';

let dir: string;
let store: SqliteStore;
let server: FhirTestServer;
let clock: number;
let log: ReturnType<typeof captureLogger>;

/** Ingests made by a test, stopped after it. */
let ingests: FhirIngest[];
/** Delays the recovery's backoff timer was armed with (it never fires by itself here: tests call recoverNow). */
let armed: number[];

function makeIngest(overrides: Partial<FhirIngestSettings> = {}, deps: { store?: Store } = {}): FhirIngest {
  const client = new FhirClient({ baseUrl: server.baseUrl, maxRetries: 0, timeoutMs: 5_000 });
  const ingest = new FhirIngest(
    {
      input: 'ehr-fhir',
      subscriptions: [{ id: 'sub1', heartbeatPeriodSeconds: 60 }],
      searchResources: ['Appointment', 'Encounter'],
      searchLookbackSeconds: 3600,
      ...overrides,
    },
    {
      store: deps.store ?? store,
      log,
      client,
      now: () => new Date(clock),
      random: () => 0.5,
      timer: { setTimeout: (_fn, ms) => armed.push(ms), clearTimeout: () => {} },
    },
  );
  ingests.push(ingest);
  return ingest;
}

/** Handles a notification, then waits for the background recovery it started. */
async function handled(ingest: FhirIngest, raw: Buffer): Promise<FhirIngestResult> {
  const result = await ingest.handle(raw);
  await ingest.recoveryIdle();
  return result;
}

async function position(): Promise<Record<string, any>> {
  return JSON.parse((await store.getCursor(cursorKeys.subscription('ehr-fhir', 'sub1')))!) as Record<string, any>;
}

function body(json: unknown): Buffer {
  return Buffer.from(JSON.stringify(json));
}

function accepted(result: FhirIngestResult): Extract<FhirIngestResult, { kind: 'accepted' }> {
  if (result.kind !== 'accepted') throw new Error(`expected accepted, got ${JSON.stringify(result)}`);
  return result;
}

function sub(id = 'sub1'): string {
  return `${server.baseUrl}/Subscription/${id}`;
}

function event(number: number, focus?: string, extra: Partial<TestEvent> = {}): TestEvent {
  return { number, ...(focus !== undefined ? { focus } : {}), ...extra };
}

function eventsBundle(events: TestEvent[], extra: Partial<Parameters<typeof topicBundle>[0]> = {}): Json {
  return topicBundle({ subscription: sub(), type: 'event-notification', events, ...extra });
}

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carerelay-fhir-ingest-'));
  store = SqliteStore.open(path.join(dir, 'carerelay.db'));
  server = await startFhirTestServer();
  clock = Date.now();
  log = captureLogger();
  ingests = [];
  armed = [];
});

afterEach(async () => {
  await Promise.all(ingests.map((i) => i.stop()));
  await server.close();
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('R4 criteria rest-hook', () => {
  it('a full resource gives its trigger; the patient is fetched from the configured server only', async () => {
    server.put(testPatient('p1'));
    const appointment = server.put(testAppointment('a1', 'Patient/p1'));
    const ingest = makeIngest();
    const result = accepted(await ingest.handle(body(appointment)));
    expect(result.triggers.map((t) => t.type)).toEqual(['appointment.booked']);
    const [trigger] = result.triggers;
    expect(trigger!.source).toEqual({ format: 'fhir', sender: server.baseUrl, messageType: 'Appointment', messageId: 'Appointment/a1/_history/1' });
    expect(trigger!.patient!.id).toBe('MRN-p1');
    expect(server.requests.map((r) => `${r.method} ${r.path}`)).toEqual(['GET /fhir/Patient/p1']);
    const stored = await store.findMessage(server.baseUrl, 'Appointment/a1/_history/1');
    expect(stored?.triggerIds).toEqual([trigger!.id]);
  });

  it('the same resource 20 times in parallel gives one record and one trigger', async () => {
    server.put(testPatient('p1'));
    const appointment = server.put(testAppointment('a1', 'Patient/p1'));
    const ingest = makeIngest();
    const results = await Promise.all(Array.from({ length: 20 }, () => ingest.handle(body(appointment))));
    expect(results.every((r) => r.kind === 'accepted')).toBe(true);
    expect(results.flatMap((r) => accepted(r).triggers)).toHaveLength(1);
    expect(await store.listMessages({})).toHaveLength(1);
    expect(await store.listTriggers({})).toHaveLength(1);
    expect(server.countRequests('/fhir/Patient')).toBe(1);
  });

  it('a later version that changes the start is a reschedule against the stored state', async () => {
    server.put(testPatient('p1'));
    const v1 = server.put(testAppointment('a1', 'Patient/p1'));
    const v2 = server.put(testAppointment('a1', 'Patient/p1', { start: '2026-03-11T14:00:00+01:00', end: '2026-03-11T14:30:00+01:00' }));
    const ingest = makeIngest();
    accepted(await ingest.handle(body(v1)));
    const result = accepted(await ingest.handle(body(v2)));
    expect(result.triggers.map((t) => [t.type, t.appointment?.previousStart])).toEqual([
      ['appointment.rescheduled', '2026-03-10T09:30:00+01:00'],
    ]);
  });

  it('an empty body searches the configured server for what changed since the last search', async () => {
    server.put(testPatient('p1'));
    server.put(testAppointment('a1', 'Patient/p1'));
    server.put(testEncounter('e1', 'Patient/p1'));
    const ingest = makeIngest();
    const result = accepted(await ingest.handle(Buffer.alloc(0)));
    expect(result.triggers.map((t) => t.type).sort()).toEqual(['appointment.booked', 'encounter.started']);
    const searches = server.requests.filter((r) => r.path === '/fhir/Appointment' || r.path === '/fhir/Encounter');
    expect(searches).toHaveLength(2);
    expect(searches[0]!.query).toMatch(/_lastUpdated=ge/);
    expect(await store.getCursor(cursorKeys.search('ehr-fhir', 'Appointment'))).toBe(server.get('Appointment', 'a1')!.meta!.lastUpdated);
    // Nothing new: the second empty notification stores nothing more.
    expect(accepted(await ingest.handle(Buffer.alloc(0))).triggers).toEqual([]);
    expect(await store.listTriggers({})).toHaveLength(2);
  });

  it("searchWaitlist ingests the server's Appointments in status waitlist with their patients, once", async () => {
    server.put(testPatient('p1'));
    server.put(testPatient('p2'));
    server.put(testAppointment('w1', 'Patient/p1', { status: 'waitlist', requestedPeriod: [{ start: '2026-03-10T08:00:00+01:00', end: '2026-03-20T18:00:00+01:00' }] }));
    server.put(testAppointment('a2', 'Patient/p2'));
    const committed: Trigger[] = [];
    const ingest = new FhirIngest(
      { input: 'ehr-fhir', subscriptions: [], searchResources: ['Appointment'], searchLookbackSeconds: 3600 },
      { store, log, client: new FhirClient({ baseUrl: server.baseUrl, maxRetries: 0, timeoutMs: 5_000 }), now: () => new Date(clock), onCommitted: (t) => void committed.push(...t) },
    );
    ingests.push(ingest);
    await ingest.searchWaitlist();
    expect(committed.map((t) => [t.type, t.appointment?.id, t.appointment?.status, t.patient?.id])).toEqual([['appointment.booked', 'w1', 'waitlist', 'MRN-p1']]);
    expect(committed[0]!.appointment!.requestedPeriod).toEqual([{ start: '2026-03-10T08:00:00+01:00', end: '2026-03-20T18:00:00+01:00' }]);
    expect(server.requests.find((r) => r.path === '/fhir/Appointment')!.query).toMatch(/status=waitlist/);
    await ingest.searchWaitlist();
    expect(committed).toHaveLength(1);
  });

  it('a contained Patient is read inside the resource: nothing fetched', async () => {
    const appointment = testAppointment('a1', '#p1', { meta: { versionId: '1' }, contained: [testPatient('p1')] });
    const result = accepted(await makeIngest().handle(body(appointment)));
    expect(result.triggers.map((t) => [t.type, t.patient!.id])).toEqual([['appointment.booked', 'MRN-p1']]);
    expect(server.requests).toEqual([]);
  });

  it('a patient reference to another server is refused before any request', async () => {
    const appointment = testAppointment('a1', 'https://elsewhere.example.org/fhir/Patient/p1', { meta: { versionId: '1' } });
    const result = await makeIngest().handle(body(appointment));
    expect(result).toMatchObject({ kind: 'refused', status: 422, reason: 'fhir_reference_outside_base' });
    expect(server.requests).toEqual([]);
    expect(await store.listMessages({})).toEqual([]);
  });
});

describe('bad input', () => {
  it('refuses invalid JSON, prototype keys and non-notifications with 400, storing nothing', async () => {
    const ingest = makeIngest();
    expect(await ingest.handle(Buffer.from('{"resourceType": "Appointment",'))).toMatchObject({ kind: 'refused', status: 400, reason: 'invalid_json' });
    expect(await ingest.handle(Buffer.from('{"resourceType":"Patient","__proto__":{"x":1}}'))).toMatchObject({ status: 400, reason: 'invalid_json' });
    expect(await ingest.handle(Buffer.from('{"resourceType":"Patient","a":{"\\u0063onstructor":{}}}'))).toMatchObject({ status: 400 });
    expect(await ingest.handle(body({ resourceType: 'Bundle', type: 'searchset', entry: [] }))).toMatchObject({
      status: 400,
      reason: 'fhir_notification_invalid',
    });
    expect(await ingest.handle(body([1, 2]))).toMatchObject({ status: 400 });
    expect(await store.listMessages({})).toEqual([]);
    expect(server.requests).toEqual([]);
  });

  it('refuses a JSON string (never parsed a second time) and null (never a search) with 400', async () => {
    const ingest = makeIngest();
    const wrapped = JSON.stringify('{"resourceType":"Appointment","__proto__":{"polluted":true}}');
    expect(await ingest.handle(Buffer.from(wrapped))).toMatchObject({ kind: 'refused', status: 400, reason: 'not_a_resource' });
    expect(await ingest.handle(Buffer.from('null'))).toMatchObject({ kind: 'refused', status: 400, reason: 'not_a_resource' });
    expect(await ingest.handle(Buffer.from(' 42 '))).toMatchObject({ kind: 'refused', status: 400, reason: 'not_a_resource' });
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(server.requests).toEqual([]);
  });

  it('refuses bytes that are not UTF-8 with 400 instead of reading U+FFFD into names', async () => {
    server.put(testPatient('p1'));
    // A Latin-1 "ü" (0xFC) where UTF-8 was due.
    const latin1 = Buffer.from(JSON.stringify(testAppointment('a1', 'Patient/p1', { meta: { versionId: '1' }, comment: 'M\u00fcller' })), 'latin1');
    expect(await makeIngest().handle(latin1)).toMatchObject({ kind: 'refused', status: 400, reason: 'invalid_utf8' });
    expect(server.requests).toEqual([]);
  });

  it('an id-only focus or a patient reference with the id "." or ".." is refused, nothing fetched', async () => {
    const ingest = makeIngest();
    expect(await ingest.handle(body(eventsBundle([event(1, 'Appointment/..')])))).toMatchObject({ status: 422, reason: 'fhir_reference_malformed' });
    // "Patient/." names no patient: the appointment is kept as rejected, nothing is fetched.
    accepted(await ingest.handle(body(testAppointment('a1', 'Patient/.', { meta: { versionId: '1' } }))));
    expect((await store.findMessage(server.baseUrl, 'Appointment/a1/_history/1'))).toMatchObject({ status: 'rejected', reason: 'fhir_not_normalizable' });
    expect(server.requests).toEqual([]);
  });

  it('accepts a body that starts with a UTF-8 byte order mark', async () => {
    const n = topicBundle({ subscription: sub(), type: 'heartbeat' });
    expect(await makeIngest().handle(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), body(n)]))).toMatchObject({ kind: 'accepted' });
  });

  it('refuses a notification for a subscription that is not configured, or on another server', async () => {
    const ingest = makeIngest();
    const unknown = topicBundle({ subscription: sub('other'), type: 'heartbeat' });
    expect(await ingest.handle(body(unknown))).toMatchObject({ kind: 'refused', status: 404, reason: 'unknown_subscription' });
    const foreign = topicBundle({ subscription: 'https://elsewhere.example.org/fhir/Subscription/sub1', type: 'heartbeat' });
    expect(await ingest.handle(body(foreign))).toMatchObject({ status: 404 });
    expect(await store.listMessages({})).toEqual([]);
  });

  it('an id-only focus on another server is refused with no fetch and nothing stored', async () => {
    const n = eventsBundle([event(1, 'https://elsewhere.example.org/fhir/Appointment/a1')]);
    const result = await makeIngest().handle(body(n));
    expect(result).toMatchObject({ kind: 'refused', status: 422, reason: 'fhir_reference_outside_base' });
    expect(server.requests).toEqual([]);
    expect(await store.listMessages({})).toEqual([]);
  });

  it('a commit failure answers unavailable (503) and the resend lands once', async () => {
    server.put(testPatient('p1'));
    const appointment = server.put(testAppointment('a1', 'Patient/p1'));
    let failing = true;
    const flaky: Store = new Proxy(store, {
      get(target, prop, receiver) {
        if (prop === 'commitInbound' && failing) return () => Promise.reject(new Error('disk full'));
        const value = Reflect.get(target, prop, receiver) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    const ingest = makeIngest({}, { store: flaky });
    expect(await ingest.handle(body(appointment))).toMatchObject({ kind: 'unavailable', reason: 'store_unavailable' });
    expect(await store.listMessages({})).toEqual([]);
    failing = false;
    expect(accepted(await ingest.handle(body(appointment))).triggers).toHaveLength(1);
  });

  it('a rest-hook resource whose patient cannot be fetched now answers unavailable with the server\'s Retry-After', async () => {
    server.failNext(503, 1, 7);
    const appointment = testAppointment('a1', 'Patient/p1', { meta: { versionId: '1' } });
    expect(await makeIngest().handle(body(appointment))).toMatchObject({ kind: 'unavailable', retryAfterSeconds: 7, reason: 'fhir_unavailable' });
    expect(await store.listMessages({})).toEqual([]);
  });
});

describe('topic-based notifications', () => {
  it('handshake and heartbeat are recorded with zero triggers and move the subscription cursor', async () => {
    const ingest = makeIngest();
    const hs = accepted(await ingest.handle(body(topicBundle({ subscription: sub(), type: 'handshake', status: 'requested', eventsSinceSubscriptionStart: 0 }))));
    expect(hs).toMatchObject({ stored: 1, triggers: [] });
    clock += 30_000;
    const hb = accepted(await ingest.handle(body(topicBundle({ subscription: sub(), type: 'heartbeat', eventsSinceSubscriptionStart: 0 }))));
    expect(hb).toMatchObject({ stored: 1, triggers: [] });
    const messages = await store.listMessages({});
    expect(messages.map((m) => [m.messageType, m.status, m.triggerIds.length])).toEqual([
      ['heartbeat', 'accepted', 0],
      ['handshake', 'accepted', 0],
    ]);
    const cursor = JSON.parse((await store.getCursor(cursorKeys.subscription('ehr-fhir', 'sub1')))!);
    expect(cursor).toMatchObject({ n: 0, status: 'active', seen: new Date(clock).toISOString() });
    expect(server.requests).toEqual([]);
  });

  it('full-resource: one trigger per event, messageId <subscription>#<event-number>', async () => {
    const patient = testPatient('p1');
    const n = eventsBundle([event(1, `${server.baseUrl}/Appointment/a1`, { resource: { ...testAppointment('a1', 'Patient/p1'), meta: { versionId: '1' } } })], {
      extraEntries: [{ fullUrl: `${server.baseUrl}/Patient/p1`, resource: patient }],
    });
    const result = accepted(await makeIngest().handle(body(n)));
    expect(result.triggers.map((t) => [t.type, t.source.messageId, t.occurredAt])).toEqual([['appointment.booked', 'sub1#1', eventTime(1)]]);
    expect(server.requests).toEqual([]);
  });

  it('id-only: the focus and its patient are fetched, then normalized', async () => {
    server.put(testPatient('p1'));
    server.put(testEncounter('e1', 'Patient/p1'));
    const n = eventsBundle([event(1, `${server.baseUrl}/Encounter/e1`, { additionalContext: [`${server.baseUrl}/Patient/p1`] })]);
    const result = accepted(await makeIngest().handle(body(n)));
    expect(result.triggers.map((t) => t.type)).toEqual(['encounter.started']);
    expect(server.requests.map((r) => r.path)).toEqual(['/fhir/Encounter/e1', '/fhir/Patient/p1']);
  });

  it('US Core Patient Data Feed: the v2 trigger code makes a first-seen in-progress encounter a transfer', async () => {
    server.put(testPatient('p1'));
    server.put(testEncounter('e1', 'Patient/p1'));
    const n = eventsBundle([
      event(1, `${server.baseUrl}/Encounter/e1`, {
        triggers: [
          { system: 'http://hl7.org/fhir/us/core/CodeSystem/trigger', code: 'feed-event' },
          { system: 'http://terminology.hl7.org/CodeSystem/v2-0003', code: 'A02' },
        ],
      }),
    ], { topic: 'http://hl7.org/fhir/us/core/SubscriptionTopic/patient-data-feed' });
    expect(accepted(await makeIngest().handle(body(n))).triggers.map((t) => t.type)).toEqual(['encounter.transferred']);
  });

  it('the same notification 20 times (in parallel and after) gives one trigger and one fetch', async () => {
    server.put(testPatient('p1'));
    server.put(testAppointment('a1', 'Patient/p1'));
    const ingest = makeIngest();
    const n = body(eventsBundle([event(1, 'Appointment/a1')]));
    const first = await Promise.all(Array.from({ length: 10 }, () => ingest.handle(n)));
    const later = [];
    for (let i = 0; i < 10; i++) later.push(await ingest.handle(n));
    const all = [...first, ...later].map(accepted);
    expect(all.flatMap((r) => r.triggers)).toHaveLength(1);
    expect(all.reduce((sum, r) => sum + r.duplicates, 0)).toBe(19);
    expect(await store.listTriggers({})).toHaveLength(1);
    expect(server.countRequests('/fhir/Appointment/a1')).toBe(1);
  });

  it('an empty payload records the event and searches for what changed', async () => {
    server.put(testPatient('p1'));
    server.put(testAppointment('a1', 'Patient/p1'));
    const result = accepted(await makeIngest().handle(body(eventsBundle([event(1)]))));
    expect(result.triggers.map((t) => t.type)).toEqual(['appointment.booked']);
    expect((await store.findMessage(server.baseUrl, 'sub1#1'))?.triggerIds).toEqual([]);
    expect(server.requests.some((r) => r.path === '/fhir/Appointment' && r.query.includes('_lastUpdated'))).toBe(true);
  });

  it('an empty-payload event whose search failed stays pending: its resend searches again and completes it', async () => {
    server.put(testPatient('p1'));
    server.put(testAppointment('a1', 'Patient/p1'));
    const ingest = makeIngest();
    server.failNext(503, 2); // the search, then the background recovery's (no retries in this client)
    const first = accepted(await handled(ingest, body(eventsBundle([event(1)]))));
    expect(first).toMatchObject({ stored: 1, pending: 1, triggers: [] });
    expect(await store.findMessage(server.baseUrl, 'sub1#1')).toMatchObject({ status: 'accepted', reason: 'trigger_pending', ackCode: '202' });
    expect((await position()).owed).toEqual({ search: {}, events: ['sub1#1'] });
    // The resend is not a duplicate of the pending event: it searches again and completes it.
    const again = accepted(await handled(ingest, body(eventsBundle([event(1)]))));
    expect(again.triggers.map((t) => t.type)).toEqual(['appointment.booked']);
    expect(again.pending).toBe(0);
    const m = await store.findMessage(server.baseUrl, 'sub1#1');
    expect(m).toMatchObject({ status: 'accepted', triggerIds: [] });
    expect(m!.reason).toBeUndefined();
    expect((await position()).owed).toBeUndefined();
  });

  it('an event answered while its FHIR server is unreachable is never lost: pending, then made by the resend', async () => {
    // Issue: an empty payload answered 503 was stored as accepted, and the full-resource
    // resend of the same event was "already known" and never gave a trigger.
    server.put(testPatient('p1'));
    const a1 = server.put(testAppointment('a1', 'Patient/p1'));
    const ingest = makeIngest();
    await server.close(); // unreachable: nothing answers on its port
    const first = accepted(await handled(ingest, body(eventsBundle([event(2)]))));
    expect(first).toMatchObject({ pending: 1, triggers: [] });
    const pending = await store.findMessage(server.baseUrl, 'sub1#2');
    expect(pending).toMatchObject({ status: 'accepted', reason: 'trigger_pending', ackCode: '202' });
    expect((await position()).recovery).toMatchObject({ attempts: 1, lastError: 'fhir_unreachable' });
    // The same event with its resource: completes the pending record (same id) with its trigger.
    const full = accepted(await handled(ingest, body(eventsBundle([event(2, 'Appointment/a1', { resource: a1 })], { extraEntries: [{ fullUrl: 'Patient/p1', resource: testPatient('p1') }] }))));
    expect(full.triggers.map((t) => [t.type, t.source.messageId])).toEqual([['appointment.booked', 'sub1#2']]);
    const done = await store.findMessage(server.baseUrl, 'sub1#2');
    expect(done).toMatchObject({ id: pending!.id, status: 'accepted', triggerIds: [full.triggers[0]!.id] });
    expect((await position()).owed).toEqual({ search: {} });
  });

  it('an id-only event whose focus cannot be fetched now is accepted pending; the recovery makes its trigger later', async () => {
    server.put(testPatient('p1'));
    server.put(testAppointment('a1', 'Patient/p1'));
    const ingest = makeIngest();
    server.failNext(503, 2, 7); // the fetch, and the recovery's first try right after the answer
    const result = accepted(await handled(ingest, body(eventsBundle([event(1, 'Appointment/a1')]))));
    expect(result).toMatchObject({ stored: 1, pending: 1, triggers: [] });
    expect(log.lines.filter((l) => l.message === 'fhir.trigger_pending').map((l) => l.reason)).toEqual(['fhir_unavailable']);
    // The recovery failed too: its state says when it tries again (not before the Retry-After).
    const failing = await position();
    expect(failing.owed).toEqual({ events: ['sub1#1'] });
    expect(failing.recovery).toMatchObject({ attempts: 1, lastError: 'fhir_unavailable' });
    expect(Date.parse(failing.recovery.nextAt) - clock).toBeGreaterThanOrEqual(7000);
    expect(armed.at(-1)).toBeGreaterThanOrEqual(7000);
    // The same event resent while pending: still pending, nothing stored twice.
    server.failNext(503, 1);
    expect(accepted(await ingest.handle(body(eventsBundle([event(1, 'Appointment/a1')]))))).toMatchObject({ stored: 0, duplicates: 1, pending: 1 });
    // Later the server answers: the recovery completes the stored event.
    await ingest.recoverNow();
    const triggers = await store.listTriggers({});
    expect(triggers.map((t) => [t.type, t.source.messageId])).toEqual([['appointment.booked', 'sub1#1']]);
    expect(await store.findMessage(server.baseUrl, 'sub1#1')).toMatchObject({ status: 'accepted', triggerIds: [triggers[0]!.id] });
    const recovered = await position();
    expect(recovered.owed).toBeUndefined();
    expect(recovered.recovery).toBeUndefined();
    expect(log.lines.filter((l) => l.message === 'fhir.recovered').map((l) => l.attempt)).toEqual([2]);
    expect(await store.listMessages({})).toHaveLength(1);
  });

  it('a multi-event notification stores one record per event, each with its own slice of the Bundle', async () => {
    server.put(testPatient('p1'));
    server.put(testPatient('p2'));
    const a1 = { ...testAppointment('a1', 'Patient/p1'), meta: { versionId: '1' } };
    const a2 = { ...testAppointment('a2', 'Patient/p2'), meta: { versionId: '1' } };
    const n = eventsBundle([event(1, 'Appointment/a1', { resource: a1 }), event(2, 'Appointment/a2', { resource: a2 })]);
    const result = accepted(await makeIngest().handle(body(n)));
    expect(result.triggers.map((t) => t.source.messageId)).toEqual(['sub1#1', 'sub1#2']);
    const m2 = await store.findMessage(server.baseUrl, 'sub1#2');
    const raw = JSON.parse((await store.getMessage(m2!.id))!.raw.toString('utf8')) as Json;
    const params = ((raw.entry as Json[])[0]!.resource as Json).parameter as Json[];
    expect(params.filter((p) => p.name === 'notification-event')).toHaveLength(1);
    expect((raw.entry as Json[]).slice(1).map((e) => (e.resource as Json).id)).toEqual(['a2']);
  });
});

describe('gaps and recovery', () => {
  async function prime(ingest: FhirIngest): Promise<void> {
    accepted(await ingest.handle(body(topicBundle({ subscription: sub(), type: 'handshake', eventsSinceSubscriptionStart: 0 }))));
  }

  it('a skipped event number runs $events for the missing numbers first', async () => {
    server.put(testPatient('p1'));
    for (const id of ['a1', 'a2', 'a3']) {
      server.put(testAppointment(id, 'Patient/p1'));
      server.pushEvent('sub1', `Appointment/${id}`);
    }
    const ingest = makeIngest();
    await prime(ingest);
    accepted(await ingest.handle(body(eventsBundle([event(1, 'Appointment/a1')]))));
    const result = accepted(await handled(ingest, body(eventsBundle([event(3, 'Appointment/a3')]))));
    const events = server.requests.filter((r) => r.path.endsWith('/$events'));
    expect(events.map((r) => r.query)).toEqual(['?eventsSinceNumber=2&eventsUntilNumber=2&content=full-resource']);
    expect((await store.listTriggers({})).map((t) => t.source.messageId).sort()).toEqual(['sub1#1', 'sub1#2', 'sub1#3']);
    expect(result.triggers.map((t) => t.source.messageId)).toEqual(['sub1#3']);
    expect(log.lines.some((l) => l.message === 'fhir.gap_detected' && l.reason === 'event_gap' && l.count === 1)).toBe(true);
    // Event 2 arriving late is now a duplicate.
    const late = accepted(await ingest.handle(body(eventsBundle([event(2, 'Appointment/a2')]))));
    expect(late).toMatchObject({ stored: 0, duplicates: 1 });
  });

  it('a gap whose recovery cannot read /metadata is not the sender\'s fault: the event is accepted, the gap searched', async () => {
    server.put(testPatient('p1'));
    const ingest = makeIngest({ searchResources: ['Appointment'] });
    await prime(ingest);
    const a1 = server.put(testAppointment('a1', 'Patient/p1'));
    accepted(await ingest.handle(body(eventsBundle([event(1, 'Appointment/a1', { resource: a1, timestamp: a1.meta!.lastUpdated! })]))));
    server.put(testAppointment('a2', 'Patient/p1'));
    const a3 = server.put(testAppointment('a3', 'Patient/p1'));
    server.failNext(404, 1); // GET /metadata, the recovery's first request
    const patient = { fullUrl: 'Patient/p1', resource: server.get('Patient', 'p1')! };
    const before = server.requests.length;
    const result = await handled(ingest, body(eventsBundle([event(3, 'Appointment/a3', { resource: a3 })], { extraEntries: [patient] })));
    expect(result).toMatchObject({ kind: 'accepted', stored: 1, pending: 0 });
    // After the answer: the CapabilityStatement (404), then the search from event 1's time (and a2's patient).
    expect(server.requests.slice(before).map((r) => r.path)).toEqual(['/fhir/metadata', '/fhir/Appointment', '/fhir/Patient/p1']);
    expect(log.lines.filter((l) => l.message === 'fhir.capabilities_unreadable').map((l) => l.reason)).toEqual(['fhir_not_found']);
    expect((await store.listTriggers({})).map((t) => t.appointment?.id).sort()).toEqual(['a1', 'a2', 'a3']);
    expect((await position()).owed).toBeUndefined();
  });

  it('a recovery that keeps failing backs off, says so in the position, and recovers when the server answers', async () => {
    server.put(testPatient('p1'));
    for (const id of ['a1', 'a2']) {
      server.put(testAppointment(id, 'Patient/p1'));
      server.pushEvent('sub1', `Appointment/${id}`);
    }
    const ingest = makeIngest();
    await prime(ingest);
    server.failNext(503, 3);
    const a2 = { resource: server.get('Appointment', 'a2')! };
    accepted(await handled(ingest, body(eventsBundle([event(2, 'Appointment/a2', a2)], { extraEntries: [{ fullUrl: 'Patient/p1', resource: server.get('Patient', 'p1')! }] }))));
    const first = await position();
    expect(first).toMatchObject({ n: 2, owed: { gaps: [{ from: 1, to: 1 }] }, recovery: { attempts: 1, lastError: 'fhir_unavailable' } });
    // Backoff: 5 s ceiling after one failure (random 0.5 of it), 10 s after two.
    expect(Date.parse(first.recovery.nextAt) - clock).toBe(2500);
    // Not due yet: another notification does not make it run early.
    accepted(await handled(ingest, body(topicBundle({ subscription: sub(), type: 'heartbeat', eventsSinceSubscriptionStart: 2 }))));
    expect(server.countRequests('/fhir/metadata')).toBe(1);
    clock += 2500;
    await ingest.recoverNow();
    expect((await position()).recovery).toMatchObject({ attempts: 2, failingSince: first.recovery.failingSince });
    expect(Date.parse((await position()).recovery.nextAt) - clock).toBe(5000);
    await ingest.recoverNow(); // the third 503
    await ingest.recoverNow();
    expect((await store.listTriggers({})).map((t) => t.source.messageId).sort()).toEqual(['sub1#1', 'sub1#2']);
    const done = await position();
    expect(done.owed).toBeUndefined();
    expect(done.recovery).toBeUndefined();
    expect(log.lines.filter((l) => l.message === 'fhir.recovery_failed').map((l) => l.attempt)).toEqual([1, 2, 3]);
    expect(log.lines.filter((l) => l.message === 'fhir.recovered').map((l) => l.attempt)).toEqual([4]);
  });

  it('a refused notification does not move the subscription position: the gap it leaves is recovered', async () => {
    server.put(testPatient('p1'));
    for (const id of ['a1', 'a2', 'a3', 'a4']) {
      server.put(testAppointment(id, 'Patient/p1'));
      server.pushEvent('sub1', `Appointment/${id}`);
    }
    const ingest = makeIngest();
    await prime(ingest);
    accepted(await ingest.handle(body(eventsBundle([event(1, 'Appointment/a1')]))));
    // Events 2 and 3 in one notification; 3 points at another server: refused, nothing stored.
    const refused = await ingest.handle(body(eventsBundle([event(2, 'Appointment/a2'), event(3, 'https://evil.example/fhir/Appointment/a3')])));
    expect(refused.kind).toBe('refused');
    accepted(await handled(ingest, body(eventsBundle([event(4, 'Appointment/a4')]))));
    const events = server.requests.filter((r) => r.path.endsWith('/$events'));
    expect(events.map((r) => r.query)).toEqual(['?eventsSinceNumber=2&eventsUntilNumber=3&content=full-resource']);
    expect((await store.listTriggers({})).map((t) => t.source.messageId).sort()).toEqual(['sub1#1', 'sub1#2', 'sub1#3', 'sub1#4']);
  });

  it('without $events the recovery searches by _lastUpdated since the last event time', async () => {
    await server.close();
    server = await startFhirTestServer({ supportsEvents: false });
    server.put(testPatient('p1'));
    const ingest = makeIngest({ searchResources: ['Appointment'] });
    await prime(ingest);
    const e1 = server.put(testAppointment('a1', 'Patient/p1'));
    accepted(await ingest.handle(body(eventsBundle([event(1, 'Appointment/a1', { timestamp: e1.meta!.lastUpdated! })]))));
    server.put(testAppointment('a2', 'Patient/p1'));
    server.put(testAppointment('a3', 'Patient/p1'));
    accepted(await handled(ingest, body(eventsBundle([event(3, 'Appointment/a3')]))));
    const search = server.requests.find((r) => r.path === '/fhir/Appointment');
    expect(decodeURIComponent(search!.query)).toContain(`_lastUpdated=ge${e1.meta!.lastUpdated}`);
    expect(server.requests.some((r) => r.path.endsWith('$events'))).toBe(false);
    const types = (await store.listTriggers({})).map((t) => `${t.appointment?.id}`).sort();
    expect(types).toEqual(['a1', 'a2', 'a3']);
  });

  describe('a restarted event numbering', () => {
    const RESTART = '2026-03-02T10:00:00Z';
    const after = (seconds: number) => new Date(Date.parse(RESTART) + seconds * 1000).toISOString();
    const restartHandshake = (since: number) =>
      body(topicBundle({ subscription: sub(), type: 'handshake', eventsSinceSubscriptionStart: since, timestamp: RESTART }));

    it('a new handshake counting fewer events starts a new numbering: events 1, 2… are new, late old ones are still known', async () => {
      server.put(testPatient('p1'));
      for (const id of ['a1', 'a2', 'a3']) server.put(testAppointment(id, 'Patient/p1'));
      const ingest = makeIngest();
      await prime(ingest);
      accepted(await ingest.handle(body(eventsBundle([event(1, 'Appointment/a1'), event(2, 'Appointment/a2')]))));
      // The subscription is re-created on the server: a new handshake, counting from 0.
      accepted(await ingest.handle(restartHandshake(0)));
      expect(log.lines.filter((l) => l.message === 'fhir.numbering_restarted')).toHaveLength(1);

      const fresh = accepted(await ingest.handle(body(eventsBundle([event(1, 'Appointment/a3', { timestamp: after(1) })]))));
      expect(fresh).toMatchObject({ stored: 1, duplicates: 0 });
      // source.messageId keeps its docs/trigger.md form; the trigger id and the stored key tell it apart.
      expect(fresh.triggers.map((t) => t.source.messageId)).toEqual(['sub1#1']);
      expect((await store.listMessages({ controlId: 'sub1@1#1' })).map((m) => m.status)).toEqual(['accepted']);
      expect(accepted(await ingest.handle(body(eventsBundle([event(1, 'Appointment/a3', { timestamp: after(1) })]))))).toMatchObject({
        stored: 0,
        duplicates: 1,
      });

      // New event 2 about a1 again (now cancelled): new, although old event 1 was about a1 too.
      server.put(testAppointment('a1', 'Patient/p1', { status: 'cancelled' }));
      const cancelled = accepted(await ingest.handle(body(eventsBundle([event(2, 'Appointment/a1', { timestamp: after(2) })]))));
      expect(cancelled.triggers.map((t) => t.type)).toEqual(['appointment.cancelled']);
      // Old event 2, resent late with its old stamp: still a duplicate, and it moves nothing.
      expect(accepted(await ingest.handle(body(eventsBundle([event(2, 'Appointment/a2')]))))).toMatchObject({ stored: 0, duplicates: 1 });
      // The same restart handshake resent is a resend, not another restart.
      accepted(await ingest.handle(restartHandshake(0)));
      expect(log.lines.filter((l) => l.message === 'fhir.numbering_restarted')).toHaveLength(1);

      const triggers = await store.listTriggers({});
      expect(triggers.map((t) => t.appointment?.id).sort()).toEqual(['a1', 'a1', 'a2', 'a3']);
      expect(new Set(triggers.map((t) => t.id)).size).toBe(4);
      expect(server.requests.filter((r) => r.path.endsWith('$events'))).toEqual([]);
      expect(JSON.parse((await store.getCursor(cursorKeys.subscription('ehr-fhir', 'sub1')))!)).toMatchObject({ epoch: 1, n: 2, epochStarts: [RESTART] });
      // The position survives a restart of CareRelay.
      expect(accepted(await makeIngest().handle(body(eventsBundle([event(2, 'Appointment/a1', { timestamp: after(2) })]))))).toMatchObject({
        stored: 0,
        duplicates: 1,
      });
    });

    it('after a second restart, late traffic is placed in the numbering it was stamped in', async () => {
      server.put(testPatient('p1'));
      for (const id of ['a1', 'a2', 'a3', 'a4']) server.put(testAppointment(id, 'Patient/p1'));
      const ingest = makeIngest();
      await prime(ingest);
      accepted(await ingest.handle(body(eventsBundle([event(1, 'Appointment/a1'), event(2, 'Appointment/a2'), event(3, 'Appointment/a3')]))));
      accepted(await ingest.handle(restartHandshake(0)));
      accepted(await ingest.handle(body(eventsBundle([event(1, 'Appointment/a4', { timestamp: after(1) })]))));
      const SECOND = after(3600);
      accepted(await ingest.handle(body(topicBundle({ subscription: sub(), type: 'handshake', eventsSinceSubscriptionStart: 0, timestamp: SECOND }))));
      expect(JSON.parse((await store.getCursor(cursorKeys.subscription('ehr-fhir', 'sub1')))!)).toMatchObject({ epoch: 2, n: 0, epochStarts: [RESTART, SECOND] });
      // Old event 3 of the first numbering and event 1 of the second, both resent late.
      expect(accepted(await ingest.handle(body(eventsBundle([event(3, 'Appointment/a3')]))))).toMatchObject({ stored: 0, duplicates: 1 });
      expect(accepted(await ingest.handle(body(eventsBundle([event(1, 'Appointment/a4', { timestamp: after(1) })]))))).toMatchObject({ stored: 0, duplicates: 1 });
      expect(JSON.parse((await store.getCursor(cursorKeys.subscription('ehr-fhir', 'sub1')))!)).toMatchObject({ epoch: 2, n: 0 });
    });

    it('a restart whose recovery fails is still accepted, with the event behind it; the recovery retries and recovers once', async () => {
      server.put(testPatient('p1'));
      for (const id of ['a1', 'a2', 'a3', 'a4', 'a5', 'a6']) server.put(testAppointment(id, 'Patient/p1'));
      const ingest = makeIngest();
      await prime(ingest);
      accepted(await ingest.handle(body(eventsBundle([event(1, 'Appointment/a1'), event(2, 'Appointment/a2'), event(3, 'Appointment/a3')]))));
      for (const id of ['a4', 'a5']) server.pushEvent('sub1', `Appointment/${id}`);
      server.failNext(503, 1); // the recovery's first request
      // The restart handshake and a new event (full resource: nothing to fetch) behind it on the same subscription.
      const a6 = { resource: server.get('Appointment', 'a6')!, timestamp: after(5) };
      const [handshake, next] = await Promise.all([
        ingest.handle(restartHandshake(2)),
        ingest.handle(body(eventsBundle([event(3, 'Appointment/a6', a6)], { extraEntries: [{ fullUrl: 'Patient/p1', resource: server.get('Patient', 'p1')! }] }))),
      ]);
      await ingest.recoveryIdle();
      expect([handshake.kind, next.kind]).toEqual(['accepted', 'accepted']);
      expect((await store.listMessages({ controlId: 'sub1@1#3' })).map((m) => m.status)).toEqual(['accepted']);
      expect(await position()).toMatchObject({ epoch: 1, n: 3, owed: { gaps: [{ from: 1, to: 2 }] }, recovery: { attempts: 1, lastError: 'fhir_unavailable' } });
      // The server resends the handshake: a resend, not another restart.
      accepted(await ingest.handle(restartHandshake(2)));
      await ingest.recoverNow();
      expect(log.lines.filter((l) => l.message === 'fhir.numbering_restarted')).toHaveLength(1);
      expect(await position()).toMatchObject({ epoch: 1, n: 3 });
      expect((await position()).owed).toBeUndefined();
      expect((await store.listMessages({ controlId: 'sub1@1#2' })).map((m) => m.status)).toEqual(['accepted']);
      expect((await store.listTriggers({})).map((t) => t.appointment?.id).sort()).toEqual(['a1', 'a2', 'a3', 'a4', 'a5', 'a6']);
    });

    it('events the restart handshake counts are recovered in the new numbering; late heartbeats and events from before move nothing', async () => {
      await server.close();
      server = await startFhirTestServer({ now: () => Date.parse(RESTART) - 60_000 });
      server.put(testPatient('p1'));
      for (const id of ['a1', 'a2', 'a3', 'a4', 'a5']) server.put(testAppointment(id, 'Patient/p1'));
      const ingest = makeIngest();
      await prime(ingest);
      accepted(await ingest.handle(body(eventsBundle([event(1, 'Appointment/a1'), event(2, 'Appointment/a2'), event(3, 'Appointment/a3')]))));
      // After the restart the server had already numbered two events before the handshake
      // reached us, stamped (09:59) before the handshake (10:00): they belong to the new numbering.
      server.pushEvent('sub1', 'Appointment/a4');
      server.pushEvent('sub1', 'Appointment/a5');
      accepted(await handled(ingest, restartHandshake(2)));
      expect(server.requests.filter((r) => r.path.endsWith('$events')).map((r) => r.query)).toEqual([
        '?eventsSinceNumber=1&eventsUntilNumber=2&content=full-resource',
      ]);
      expect((await store.listMessages({ controlId: 'sub1@1#2' })).map((m) => m.status)).toEqual(['accepted']);

      // A heartbeat stamped before the restart, counting 3: no recovery in the new numbering.
      accepted(await ingest.handle(body(topicBundle({ subscription: sub(), type: 'heartbeat', eventsSinceSubscriptionStart: 3 }))));
      // Old event 3 resent late: a duplicate of the old numbering.
      expect(accepted(await ingest.handle(body(eventsBundle([event(3, 'Appointment/a3')]))))).toMatchObject({ stored: 0, duplicates: 1 });
      expect(server.requests.filter((r) => r.path.endsWith('$events'))).toHaveLength(1);
      expect(JSON.parse((await store.getCursor(cursorKeys.subscription('ehr-fhir', 'sub1')))!)).toMatchObject({ epoch: 1, n: 2 });
      expect((await store.listTriggers({})).map((t) => t.appointment?.id).sort()).toEqual(['a1', 'a2', 'a3', 'a4', 'a5']);
    });
  });

  it('a heartbeat counting more events than seen starts a recovery', async () => {
    server.put(testPatient('p1'));
    server.put(testAppointment('a1', 'Patient/p1'));
    server.pushEvent('sub1', 'Appointment/a1');
    const ingest = makeIngest();
    await prime(ingest);
    accepted(await handled(ingest, body(topicBundle({ subscription: sub(), type: 'heartbeat', eventsSinceSubscriptionStart: 1 }))));
    expect(server.requests.filter((r) => r.path.endsWith('$events')).map((r) => r.query)).toEqual([
      '?eventsSinceNumber=1&eventsUntilNumber=1&content=full-resource',
    ]);
    expect((await store.listTriggers({})).map((t) => t.source.messageId)).toEqual(['sub1#1']);
    expect(JSON.parse((await store.getCursor(cursorKeys.subscription('ehr-fhir', 'sub1')))!).n).toBe(1);
  });

  it('heartbeat silence past twice the period warns and recovers once, without sleeping', async () => {
    server.put(testPatient('p1'));
    server.put(testAppointment('a1', 'Patient/p1'));
    const ingest = makeIngest();
    await prime(ingest);
    let tick: (() => void) | undefined;
    let intervalMs = 0;
    ingest.startHeartbeatMonitor((fn, ms) => {
      tick = fn;
      intervalMs = ms;
      return { clear: () => (tick = undefined) };
    });
    expect(intervalMs).toBe(30_000);
    clock += 119_000; // within 2 × 60 s
    expect(await ingest.checkHeartbeats()).toEqual([]);
    server.pushEvent('sub1', 'Appointment/a1');
    clock += 2_000; // 121 s of silence
    expect(await ingest.checkHeartbeats()).toEqual(['sub1']);
    expect(log.lines.filter((l) => l.message === 'fhir.heartbeat_missed').map((l) => l.reason)).toEqual(['heartbeat_silence']);
    expect(server.requests.filter((r) => r.path.endsWith('$events')).map((r) => r.query)).toEqual(['?eventsSinceNumber=1&content=full-resource']);
    expect((await store.listTriggers({})).map((t) => t.source.messageId)).toEqual(['sub1#1']);
    // Measured from the recovery now: the timer's next tick does nothing more.
    tick!();
    await ingest.stop();
    expect(server.requests.filter((r) => r.path.endsWith('$events'))).toHaveLength(1);
    expect(tick).toBeUndefined();
  });

  it('a subscription never heard from only warns on silence (no replay of its whole history)', async () => {
    server.pushEvent('sub1', 'Appointment/a1');
    const ingest = makeIngest();
    clock += 121_000;
    expect(await ingest.checkHeartbeats()).toEqual([]);
    expect(log.lines.filter((l) => l.message === 'fhir.heartbeat_missed')).toHaveLength(1);
    expect(server.requests).toEqual([]);
    clock += 60_000; // within 2 periods of the warning: not repeated
    await ingest.checkHeartbeats();
    expect(log.lines.filter((l) => l.message === 'fhir.heartbeat_missed')).toHaveLength(1);
  });

  it('the position survives a restart: a new ingest on the same store still detects the gap', async () => {
    server.put(testPatient('p1'));
    server.put(testAppointment('a1', 'Patient/p1'));
    server.put(testAppointment('a2', 'Patient/p1'));
    server.pushEvent('sub1', 'Appointment/a1');
    server.pushEvent('sub1', 'Appointment/a2');
    const first = makeIngest();
    await prime(first);
    accepted(await first.handle(body(eventsBundle([event(1, 'Appointment/a1')]))));
    const second = makeIngest();
    accepted(await handled(second, body(topicBundle({ subscription: sub(), type: 'heartbeat', eventsSinceSubscriptionStart: 2 }))));
    expect(server.requests.filter((r) => r.path.endsWith('$events')).map((r) => r.query)).toEqual([
      '?eventsSinceNumber=2&eventsUntilNumber=2&content=full-resource',
    ]);
  });
});
