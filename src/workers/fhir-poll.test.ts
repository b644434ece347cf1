// FhirPoller against the local FHIR test server and a real SQLite store: paging, the
// durable cursor, dedupe of the `ge` overlap, a failed commit that must not skip anything,
// and the timer loop driven by an injected timer (no sleeping).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startFhirTestServer, type FhirTestServer } from '../../test/helpers/fhir-server.ts';
import { testAppointment, testEncounter, testPatient } from '../../test/helpers/fhir-notifications.ts';
import { captureLogger } from '../../test/helpers/server.ts';
import { FhirClient } from '../fhir/client.ts';
import { SqliteStore } from '../store/sqlite.ts';
import type { Store } from '../store/store.ts';
import { FhirIngest } from './fhir-ingest.ts';
import { cursorKeys } from './fhir-state.ts';
import { FhirPoller, type FhirPollSettings } from './fhir-poll.ts';
import type { Timer } from './timer.ts';

let dir: string;
let store: SqliteStore;
let server: FhirTestServer;
let clock: number;
let log: ReturnType<typeof captureLogger>;

function makePoller(settings: Partial<FhirPollSettings> = {}, options: { store?: Store; timer?: Timer } = {}): FhirPoller {
  const client = new FhirClient({ baseUrl: server.baseUrl, maxRetries: 0, timeoutMs: 5_000 });
  const s = options.store ?? store;
  const ingest = new FhirIngest(
    { input: 'ehr-poll', subscriptions: [], searchResources: [], searchLookbackSeconds: 3600 },
    { store: s, log, client, now: () => new Date(clock) },
  );
  return new FhirPoller(
    { input: 'ehr-poll', resources: ['Appointment', 'Encounter'], intervalSeconds: 60, pageSize: 2, since: '2020-01-01T00:00:00Z', ...settings },
    { ingest, store: s, log, now: () => new Date(clock), ...(options.timer ? { timer: options.timer } : {}) },
  );
}

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carerelay-fhir-poll-'));
  store = SqliteStore.open(path.join(dir, 'carerelay.db'));
  let serverClock = Date.UTC(2026, 2, 1, 8, 0, 0);
  // Each stored version one second after the previous: distinct, ordered lastUpdated.
  server = await startFhirTestServer({ now: () => (serverClock += 1000), defaultPageSize: 2 });
  clock = Date.UTC(2026, 2, 1, 9, 0, 0);
  log = captureLogger();
});

afterEach(async () => {
  await server.close();
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('FhirPoller', () => {
  it('pages through every change since the cursor, then finds nothing new', async () => {
    server.put(testPatient('p1'));
    for (let i = 1; i <= 5; i++) server.put(testAppointment(`a${i}`, 'Patient/p1'));
    server.put(testEncounter('e1', 'Patient/p1'));
    const poller = makePoller();
    const first = await poller.pollOnce();
    expect(first).toEqual({ read: 6, stored: 6, triggers: 6 });
    // pageSize 2: three pages of appointments, following next links.
    const pages = server.requests.filter((r) => r.path === '/fhir/Appointment').map((r) => new URLSearchParams(r.query).get('_offset'));
    expect(pages).toEqual([null, '2', '4']);
    expect(await store.getCursor(cursorKeys.poll('ehr-poll', 'Appointment'))).toBe(server.get('Appointment', 'a5')!.meta!.lastUpdated);

    const second = await poller.pollOnce();
    // `ge` re-reads the version at the cursor; it is already stored.
    expect(second).toEqual({ read: 2, stored: 0, triggers: 0 });
    expect(await store.listTriggers({})).toHaveLength(6);
  });

  it('a new version is polled once and compared with the stored state', async () => {
    server.put(testPatient('p1'));
    server.put(testAppointment('a1', 'Patient/p1'));
    const poller = makePoller({ resources: ['Appointment'] });
    await poller.pollOnce();
    server.put(testAppointment('a1', 'Patient/p1', { status: 'cancelled' }));
    const result = await poller.pollOnce();
    expect(result.triggers).toBe(1);
    const types = (await store.listTriggers({ appointmentId: 'a1' })).map((t) => t.type).sort();
    expect(types).toEqual(['appointment.booked', 'appointment.cancelled']);
  });

  it('without a configured start, the first poll starts now and remembers it (no history)', async () => {
    server.put(testPatient('p1'));
    server.put(testAppointment('old', 'Patient/p1'));
    clock = Date.UTC(2026, 2, 1, 8, 0, 30);
    const poller = makePoller({ since: '', resources: ['Appointment'] });
    expect(await poller.pollOnce()).toEqual({ read: 0, stored: 0, triggers: 0 });
    expect(await store.getCursor(cursorKeys.poll('ehr-poll', 'Appointment'))).toBe('2026-03-01T08:00:30.000Z');
    server.put(testAppointment('new', 'Patient/p1'));
    const next = await poller.pollOnce();
    expect(next.stored).toBe(0); // 'new' was stored at 08:00:03 server time, before the cursor
  });

  it('a failed commit stops the page there: the cursor never passes an uncommitted resource', async () => {
    server.put(testPatient('p1'));
    for (let i = 1; i <= 4; i++) server.put(testAppointment(`a${i}`, 'Patient/p1'));
    let commits = 0;
    const flaky: Store = new Proxy(store, {
      get(target, prop, receiver) {
        if (prop === 'commitInbound') {
          return (record: Parameters<Store['commitInbound']>[0]) =>
            ++commits === 3 ? Promise.reject(new Error('disk full')) : target.commitInbound(record);
        }
        const value = Reflect.get(target, prop, receiver) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    const poller = makePoller({ resources: ['Appointment'] }, { store: flaky });
    await expect(poller.pollOnce()).rejects.toThrow();
    expect(await store.getCursor(cursorKeys.poll('ehr-poll', 'Appointment'))).toBe(server.get('Appointment', 'a2')!.meta!.lastUpdated);
    expect((await store.listTriggers({})).map((t) => t.appointment?.id).sort()).toEqual(['a1', 'a2']);
    const retry = await poller.pollOnce();
    expect(retry.stored).toBe(2);
    expect((await store.listTriggers({})).map((t) => t.appointment?.id).sort()).toEqual(['a1', 'a2', 'a3', 'a4']);
  });

  it('runs on its timer: poll, wait intervalSeconds, poll; stop() ends the loop', async () => {
    server.put(testPatient('p1'));
    server.put(testAppointment('a1', 'Patient/p1'));
    const scheduled: Array<{ fn: () => void; ms: number }> = [];
    const timer: Timer = {
      setTimeout: (fn, ms) => scheduled.push({ fn, ms }),
      clearTimeout: () => {},
    };
    const poller = makePoller({ resources: ['Appointment'], intervalSeconds: 45 }, { timer });
    poller.start();
    expect(scheduled.map((s) => s.ms)).toEqual([0]);
    const polled = new Promise<void>((resolve) => {
      const push = scheduled.push.bind(scheduled);
      scheduled.push = (...items) => {
        const n = push(...items);
        resolve();
        return n;
      };
    });
    scheduled[0]!.fn();
    await polled;
    expect(scheduled.map((s) => s.ms)).toEqual([0, 45_000]);
    expect(await store.listTriggers({})).toHaveLength(1);
    await poller.stop();
    scheduled[1]!.fn(); // a tick after stop does nothing
    expect(server.requests.filter((r) => r.path === '/fhir/Appointment')).toHaveLength(1);
  });
});
