// End to end: the real CareRelay (startCarerelay, in process) receiving FHIR notifications
// on POST /ingest/fhir/<input> over HTTP, with a local FHIR test server as the configured
// server (fetch-back, $events, searches). Every notification example of fixtures/fhir is
// posted and must give what the IG and docs/trigger.md say; bad input gets a 4xx problem body
// with nothing stored and no outgoing request; 2xx only after commit.
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { SqliteStore } from '../src/store/sqlite.ts';
import { MessageStatus, type Trigger } from '../src/types.ts';
import { startFhirTestServer, type FhirTestServer, type TestFhirResource } from './helpers/fhir-server.ts';
import { testAppointment, testEncounter, testPatient, topicBundle, type Json } from './helpers/fhir-notifications.ts';
import { startServer, type InProcessServer } from './helpers/server.ts';

const FIXTURES = fileURLToPath(new URL('../fixtures/fhir/', import.meta.url));
const TOKEN = 'fhir-hook-token-4b1d';
const HMAC_SECRET = 'medplum-style-secret';
const SW_SECRET = `whsec_${Buffer.from('standard-webhooks-signing-key-0123').toString('base64')}`;
const ENV = { FHIR_HOOK_TOKEN: TOKEN, FHIR_HMAC_SECRET: HMAC_SECRET, FHIR_SW_SECRET: SW_SECRET };

/** Standard Webhooks headers signing `body` as sent at `atSeconds` (Unix time). */
function standardWebhooksHeaders(body: string, atSeconds: number, id = `msg_${atSeconds}`): Record<string, string> {
  const key = Buffer.from(SW_SECRET.slice('whsec_'.length), 'base64');
  const signature = createHmac('sha256', key).update(`${id}.${atSeconds}.${body}`).digest('base64');
  return { 'webhook-id': id, 'webhook-timestamp': String(atSeconds), 'webhook-signature': `v1,${signature}` };
}

let fhir: FhirTestServer;
const dirs: string[] = [];

function writeConfig(baseUrl: string, subscriptions: string[]): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carerelay-fhir-e2e-'));
  dirs.push(dir);
  fs.mkdirSync(path.join(dir, 'connectors'));
  const subs = subscriptions.flatMap((id) => [`      - id: ${id}`, '        topic: http://example.org/SubscriptionTopic/any', '        heartbeatPeriodSeconds: 0']);
  fs.writeFileSync(
    path.join(dir, 'connectors', 'fhir.yaml'),
    [
      'server:',
      '  http: { host: 127.0.0.1, port: 0 }',
      `  dataDir: ${JSON.stringify(path.join(dir, 'data'))}`,
      'inputs:',
      '  - name: ehr-fhir',
      '    type: fhir-rest-hook',
      `    server: { baseUrl: ${JSON.stringify(baseUrl)}, timeoutSeconds: 5 }`,
      '    auth: { bearer: { token: { env: FHIR_HOOK_TOKEN } } }',
      '    maxBodyBytes: 65536',
      '    subscriptions:',
      ...subs,
      '  - name: ehr-medplum',
      '    type: fhir-rest-hook',
      `    server: { baseUrl: ${JSON.stringify(baseUrl)} }`,
      '    auth: { hmac: { secret: { env: FHIR_HMAC_SECRET } } }',
      '  - name: ehr-sw',
      '    type: fhir-rest-hook',
      `    server: { baseUrl: ${JSON.stringify(baseUrl)} }`,
      '    auth: { standardWebhooks: { secret: { env: FHIR_SW_SECRET }, toleranceSeconds: 300 } }',
      'outputs: []',
      '',
    ].join('\n'),
  );
  return dir;
}

interface Posted {
  status: number;
  type: string | null;
  retryAfter: string | null;
  json: Json;
}

async function post(carerelay: InProcessServer, body: string | Buffer, options: { input?: string; headers?: Record<string, string> } = {}): Promise<Posted> {
  const res = await fetch(`http://127.0.0.1:${carerelay.httpPort}/ingest/fhir/${options.input ?? 'ehr-fhir'}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/fhir+json', ...options.headers },
    body,
  });
  const text = await res.text();
  return { status: res.status, type: res.headers.get('content-type'), retryAfter: res.headers.get('retry-after'), json: text ? (JSON.parse(text) as Json) : {} };
}

beforeEach(async () => {
  fhir = await startFhirTestServer();
});

afterEach(async () => {
  await fhir.close();
});

afterAll(() => {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------

interface FixtureContext {
  previous?: Array<{ kind: 'appointment' | 'encounter'; id: string; asOf: string; [k: string]: unknown }>;
  fetched?: Record<string, TestFhirResource>;
}

const fixtureNames = fs
  .readdirSync(FIXTURES)
  .filter((f) => f.endsWith('.json') && !f.endsWith('.context.json') && !f.endsWith('.joins.json'))
  .map((f) => f.slice(0, -'.json'.length))
  .sort();

/** The fixtures name example.org servers; here the configured server is the local one. */
function localized(text: string): string {
  return text.replaceAll('https://ehr.example.org/fhir', fhir.baseUrl).replaceAll('https://example.org/fhir', fhir.baseUrl);
}

/** What must be equal between the golden trigger and the one from the running server. */
function essence(t: Trigger): unknown {
  const { id: _id, receivedAt: _r, source, ...rest } = t;
  return { ...rest, source: { ...source, sender: '' } };
}

describe('every notification example, posted to the running server', () => {
  it.each(fixtureNames)('%s', async (name) => {
    const body = localized(fs.readFileSync(`${FIXTURES}${name}.json`, 'utf8'));
    const contextFile = `${FIXTURES}${name}.context.json`;
    const context = fs.existsSync(contextFile) ? (JSON.parse(localized(fs.readFileSync(contextFile, 'utf8'))) as FixtureContext) : {};
    for (const resource of Object.values(context.fetched ?? {})) fhir.put(resource);
    if (name === 'backport-r4-id-only') {
      // The example names only the focus: the server holds it, CareRelay fetches it.
      fhir.put(testPatient('p-idonly'));
      fhir.put(testEncounter('86009987-eabe-42bf-8c02-b112b18cb616', 'Patient/p-idonly'));
    }
    const carerelay = await startServer(writeConfig(fhir.baseUrl, ['admission', 'patient-feed', 'appointments']), ENV);
    try {
      if (context.previous !== undefined) {
        await carerelay.store.commitInbound({
          input: 'seed', format: 'fhir', sender: 'seed', controlId: '', messageType: 'seed', contentHash: '', raw: Buffer.from('seed'),
          status: MessageStatus.Accepted, ack: '', ackCode: '', receivedAt: '2000-01-01T00:00:00Z', triggers: [],
          subjectStates: context.previous as never,
        });
      }
      const before = fhir.requests.length;
      const answer = await post(carerelay, body);
      expect(answer.status, JSON.stringify(answer.json)).toBe(200);
      const triggers = await carerelay.store.listTriggers({});
      const golden = fs.readFileSync(`${FIXTURES}${name}.triggers.ndjson`, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Trigger);
      const requests = fhir.requests.slice(before).map((r) => `${r.method} ${r.path}`);

      if (name === 'backport-r4-id-only') {
        expect(requests).toEqual(['GET /fhir/Encounter/86009987-eabe-42bf-8c02-b112b18cb616', 'GET /fhir/Patient/p-idonly']);
        expect(triggers.map((t) => [t.type, t.source.messageId])).toEqual([['encounter.started', 'admission#2']]);
        return;
      }
      expect(triggers.map(essence)).toEqual(golden.map(essence));
      for (const t of triggers) expect(t.source.sender).toBe(fhir.baseUrl);
      const messages = (await carerelay.store.listMessages({ input: 'ehr-fhir' }));
      expect(messages.length).toBeGreaterThanOrEqual(1);
      if (name === 'backport-r4-handshake' || name === 'backport-r4-heartbeat' || name === 'backport-r4-error') {
        // Answered and recorded, no trigger, nothing fetched.
        expect(messages.map((m) => [m.messageType, m.triggerIds])).toEqual([[name === 'backport-r4-error' ? 'query-status' : name.slice('backport-r4-'.length), []]]);
        expect(requests).toEqual([]);
      }
      if (name === 'backport-r4-empty') {
        // Empty payload: the event is recorded and the configured server searched.
        expect(requests).toEqual(['GET /fhir/Appointment', 'GET /fhir/Encounter']);
      }
      if (name === 'backport-r4-error') expect(carerelay.logs.some((l) => l.message === 'fhir.subscription_error')).toBe(true);
    } finally {
      await carerelay.stop();
    }
  });
});

// ---------------------------------------------------------------------------------------

describe('the running server', () => {
  let carerelay: InProcessServer;

  // Started in each test: the FHIR test server (and so the configured base URL) is new per test.
  async function start(): Promise<InProcessServer> {
    carerelay = await startServer(writeConfig(fhir.baseUrl, ['sub1']), ENV);
    return carerelay;
  }

  afterEach(async () => {
    await carerelay?.stop();
  });

  const sub = (): string => `${fhir.baseUrl}/Subscription/sub1`;

  async function adminMessages(query = ''): Promise<Json[]> {
    const res = await fetch(`http://127.0.0.1:${carerelay.httpPort}/api/messages${query}`);
    return ((await res.json()) as { items: Json[] }).items;
  }

  it('bad input: 4xx with a problem body naming the reason, recorded like an HL7 reject (no body when not authenticated), no outgoing request', async () => {
    await start();
    const big = Buffer.alloc(100_000, 0x20);
    const hmacBody = JSON.stringify(topicBundle({ subscription: sub(), type: 'heartbeat' }));
    const latin1 = Buffer.from('{"resourceType":"Patient","id":"p1","name":[{"family":"M\u00fcller"}]}', 'latin1');
    /** `kept`: the body is recorded; `recorded: false`: nothing to record it against. */
    const cases: Array<{ what: string; status: number; reason: string; kept?: boolean; recorded?: false; send: () => Promise<Posted> }> = [
      { what: 'invalid JSON', status: 400, reason: 'invalid_json', kept: true, send: () => post(carerelay, '{"resourceType": "Appointment",') },
      { what: '__proto__ key', status: 400, reason: 'invalid_json', kept: true, send: () => post(carerelay, '{"resourceType":"Appointment","__proto__":{"polluted":true}}') },
      {
        what: 'a JSON string holding a resource',
        status: 400,
        reason: 'not_a_resource',
        kept: true,
        send: () => post(carerelay, JSON.stringify('{"resourceType":"Appointment","__proto__":{"polluted":true}}')),
      },
      { what: 'null (not an empty body)', status: 400, reason: 'not_a_resource', kept: true, send: () => post(carerelay, 'null') },
      { what: 'bytes that are not UTF-8', status: 400, reason: 'invalid_utf8', kept: true, send: () => post(carerelay, latin1) },
      {
        what: 'an id-only focus with the id ".."',
        status: 422,
        reason: 'fhir_reference_malformed',
        kept: true,
        send: () => post(carerelay, JSON.stringify(topicBundle({ subscription: sub(), type: 'event-notification', events: [{ number: 1, focus: 'Appointment/..' }] }))),
      },
      {
        what: 'not a notification',
        status: 400,
        reason: 'fhir_notification_invalid',
        kept: true,
        send: () => post(carerelay, JSON.stringify({ resourceType: 'Bundle', type: 'batch', entry: [{}] })),
      },
      {
        what: 'wrong content type',
        status: 415,
        reason: 'unsupported_media_type',
        send: () => post(carerelay, '<Appointment/>', { headers: { 'content-type': 'application/fhir+xml' } }),
      },
      { what: 'body over the limit', status: 413, reason: 'body_too_large', send: () => post(carerelay, big) },
      { what: 'no token', status: 401, reason: 'auth_failed', send: () => post(carerelay, big, { headers: { authorization: 'Bearer wrong' } }) },
      { what: 'unknown input', status: 404, reason: '', recorded: false, send: () => post(carerelay, '{}', { input: 'nope' }) },
      {
        what: 'unknown subscription',
        status: 404,
        reason: 'unknown_subscription',
        kept: true,
        send: () => post(carerelay, JSON.stringify(topicBundle({ subscription: `${fhir.baseUrl}/Subscription/other`, type: 'heartbeat' }))),
      },
      {
        what: 'focus on another server',
        status: 422,
        reason: 'fhir_reference_outside_base',
        kept: true,
        send: () => post(carerelay, JSON.stringify(topicBundle({ subscription: sub(), type: 'event-notification', events: [{ number: 1, focus: 'https://attacker.example.net/fhir/Appointment/a1' }] }))),
      },
      { what: 'bad signature', status: 401, reason: 'bad_signature', send: () => post(carerelay, hmacBody, { input: 'ehr-medplum', headers: { 'x-signature': 'a'.repeat(64) } }) },
      { what: 'no signature', status: 401, reason: 'auth_failed', send: () => post(carerelay, hmacBody, { input: 'ehr-medplum' }) },
    ];
    let recorded = 0;
    for (const c of cases) {
      const answer = await c.send();
      expect([c.what, answer.status]).toEqual([c.what, c.status]);
      expect([c.what, answer.type]).toEqual([c.what, 'application/problem+json; charset=utf-8']);
      expect(answer.json).toMatchObject({ status: c.status, title: expect.any(String), detail: expect.any(String) });
      const listed = await adminMessages();
      if (c.recorded === false) {
        expect([c.what, listed.length]).toEqual([c.what, recorded]);
        continue;
      }
      recorded += 1;
      // The reason is said in the answer, and recorded with it.
      expect([c.what, answer.json.reason]).toEqual([c.what, c.reason]);
      expect([c.what, listed.length]).toEqual([c.what, recorded]);
      const [newest] = listed;
      expect([c.what, newest]).toEqual([c.what, expect.objectContaining({ status: 'rejected', ackCode: String(c.status), reason: c.reason, controlId: '', triggerIds: [] })]);
      const detail = (await (await fetch(`http://127.0.0.1:${carerelay.httpPort}/api/messages/${String(newest!.id)}`)).json()) as Json;
      expect([c.what, JSON.parse(String(detail.ack))]).toEqual([c.what, answer.json]);
      expect([c.what, String(detail.rawBase64).length > 0]).toEqual([c.what, c.kept === true]);
    }
    const bytes = (await carerelay.store.listMessages({ status: 'rejected', limit: 1000 })).find((m) => m.reason === 'invalid_utf8');
    expect((await carerelay.store.getMessage(bytes!.id))!.raw.equals(latin1)).toBe(true);
    expect(fhir.requests).toEqual([]);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('a valid HMAC signature (hex or sha256=) is accepted', async () => {
    await start();
    const body = JSON.stringify(topicBundle({ subscription: sub(), type: 'heartbeat' }));
    const signature = createHmac('sha256', HMAC_SECRET).update(body).digest('hex');
    // ehr-medplum lists no subscriptions: a valid signature gets as far as the subscription check.
    expect((await post(carerelay, body, { input: 'ehr-medplum', headers: { 'x-signature': signature } })).status).toBe(404);
    fhir.put(testPatient('p1'));
    const appointment = JSON.stringify(fhir.put(testAppointment('a1', 'Patient/p1')));
    const sig = createHmac('sha256', HMAC_SECRET).update(appointment).digest('hex');
    const answer = await post(carerelay, appointment, { input: 'ehr-medplum', headers: { 'x-signature': `sha256=${sig}` } });
    expect(answer.status).toBe(200);
    expect((await carerelay.store.listTriggers({})).map((t) => t.type)).toEqual(['appointment.booked']);
  });

  it('Standard Webhooks: a fresh valid signature is accepted; stale, future, forged or unsigned requests get 401, recorded without their body', async () => {
    await start();
    fhir.put(testPatient('p1'));
    const appointment = JSON.stringify(fhir.put(testAppointment('a1', 'Patient/p1')));
    const now = Math.floor(Date.now() / 1000);
    const refused: Array<{ what: string; headers: Record<string, string>; detail: RegExp }> = [
      { what: 'stale (an hour old)', headers: standardWebhooksHeaders(appointment, now - 3600), detail: /is 360[01] s in the past \(tolerance 300 s\)/ },
      { what: 'from the future', headers: standardWebhooksHeaders(appointment, now + 3600), detail: /is 3[56][0-9]{2} s in the future/ },
      {
        what: 'signed for another body',
        headers: standardWebhooksHeaders(appointment.replace('"a1"', '"a2"'), now),
        detail: /no webhook-signature v1 entry matches/,
      },
      {
        what: 'signature replayed under a new timestamp',
        headers: { ...standardWebhooksHeaders(appointment, now - 400), 'webhook-timestamp': String(now) },
        detail: /no webhook-signature v1 entry matches/,
      },
      { what: 'no signature headers', headers: {}, detail: /webhook-id, webhook-timestamp and webhook-signature/ },
      { what: 'timestamp in milliseconds', headers: { ...standardWebhooksHeaders(appointment, now), 'webhook-timestamp': `${now}000.5` }, detail: /integer Unix time/ },
    ];
    for (const r of refused) {
      const answer = await post(carerelay, appointment, { input: 'ehr-sw', headers: r.headers });
      expect([r.what, answer.status]).toEqual([r.what, 401]);
      expect([r.what, String(answer.json.detail)]).toEqual([r.what, expect.stringMatching(r.detail)]);
    }
    const refusals = await carerelay.store.listMessages({});
    expect(refusals.map((m) => [m.status, m.ackCode, m.triggerIds.length])).toEqual(Array(refused.length).fill(['rejected', '401', 0]));
    expect(refusals.map((m) => m.reason).sort()).toEqual(['auth_failed', 'auth_failed', 'bad_signature', 'bad_signature', 'stale_signature', 'stale_signature']);
    for (const m of refusals) expect((await carerelay.store.getMessage(m.id))!.raw).toHaveLength(0);
    expect(fhir.requests).toEqual([]);

    // Within the tolerance (4 minutes old), with a rotated key's signature listed first.
    const headers = standardWebhooksHeaders(appointment, now - 240);
    headers['webhook-signature'] = `v1,${Buffer.alloc(32).toString('base64')} ${headers['webhook-signature']}`;
    const answer = await post(carerelay, appointment, { input: 'ehr-sw', headers });
    expect(answer.status).toBe(200);
    expect((await carerelay.store.listTriggers({})).map((t) => t.type)).toEqual(['appointment.booked']);
  });

  it('2xx only after commit; a store that cannot commit gives 503 + Retry-After and the resend lands once', async () => {
    await start();
    fhir.put(testPatient('p1'));
    fhir.put(testAppointment('a1', 'Patient/p1'));
    const body = JSON.stringify(topicBundle({ subscription: sub(), type: 'event-notification', events: [{ number: 1, focus: 'Appointment/a1' }] }));
    const db = (carerelay.store as SqliteStore).db;
    db.pragma('query_only = ON');
    try {
      const refused = await post(carerelay, body);
      expect(refused.status).toBe(503);
      expect(refused.retryAfter).toMatch(/^\d+$/);
    } finally {
      db.pragma('query_only = OFF');
    }
    expect(await carerelay.store.listMessages({})).toEqual([]);
    const ok = await post(carerelay, body);
    expect(ok.status).toBe(200);
    // Answered 200: already durable.
    expect((await carerelay.store.findMessage(fhir.baseUrl, 'sub1#1'))?.triggerIds).toHaveLength(1);
  });

  it('the same notification 20 times gives one trigger; a skipped event number runs the recovery', async () => {
    await start();
    fhir.put(testPatient('p1'));
    for (const id of ['a1', 'a2', 'a3']) {
      fhir.put(testAppointment(id, 'Patient/p1'));
      fhir.pushEvent('sub1', `Appointment/${id}`);
    }
    const one = JSON.stringify(topicBundle({ subscription: sub(), type: 'event-notification', events: [{ number: 1, focus: 'Appointment/a1' }] }));
    const answers = await Promise.all(Array.from({ length: 20 }, () => post(carerelay, one)));
    expect(answers.map((a) => a.status)).toEqual(Array(20).fill(200));
    expect(await carerelay.store.listTriggers({})).toHaveLength(1);

    const three = JSON.stringify(topicBundle({ subscription: sub(), type: 'event-notification', events: [{ number: 3, focus: 'Appointment/a3' }] }));
    expect((await post(carerelay, three)).status).toBe(200);
    // The gap is recovered in the background, right after the answer.
    await carerelay.fhirIngests.get('ehr-fhir')!.recoveryIdle();
    expect(fhir.requests.filter((r) => r.path.endsWith('/$events')).map((r) => r.query)).toEqual([
      '?eventsSinceNumber=2&eventsUntilNumber=2&content=full-resource',
    ]);
    expect((await carerelay.store.listTriggers({})).map((t) => t.source.messageId).sort()).toEqual(['sub1#1', 'sub1#2', 'sub1#3']);
    expect(carerelay.logs.some((l) => l.message === 'fhir.gap_detected' && l.reason === 'event_gap')).toBe(true);
  });

  it('an event whose FHIR server is unreachable is accepted pending (202), and its full-resource resend gives the trigger', async () => {
    await start();
    const patient = testPatient('p1');
    const a1 = fhir.put(testAppointment('a1', 'Patient/p1'));
    await fhir.close(); // the configured server is unreachable from here on
    const empty = JSON.stringify(topicBundle({ subscription: sub(), type: 'event-notification', events: [{ number: 2 }] }));
    for (let i = 0; i < 3; i++) {
      const answer = await post(carerelay, empty);
      expect(answer.status).toBe(202);
      expect(JSON.stringify(answer.json)).toContain('1 event(s) pending');
    }
    expect((await adminMessages()).map((m) => [m.controlId, m.status, m.ackCode, m.reason])).toEqual([['sub1#2', 'accepted', '202', 'trigger_pending']]);
    // What the subscription owes and its failing recovery are visible on the admin API.
    await carerelay.fhirIngests.get('ehr-fhir')!.recoveryIdle();
    const states = (await (await fetch(`http://127.0.0.1:${carerelay.httpPort}/api/fhir/subscriptions`)).json()) as { items: Json[] };
    expect(states.items).toEqual([
      expect.objectContaining({
        input: 'ehr-fhir',
        subscription: 'sub1',
        lastEventNumber: 2,
        owed: { search: {}, events: ['sub1#2'] },
        // (Its backoff timer may already have tried again by now.)
        recovery: expect.objectContaining({ attempts: expect.any(Number), lastError: 'fhir_unreachable', nextAt: expect.any(String) }),
      }),
    ]);

    const full = JSON.stringify(
      topicBundle({
        subscription: sub(),
        type: 'event-notification',
        events: [{ number: 2, focus: 'Appointment/a1', resource: a1 }],
        extraEntries: [{ fullUrl: 'Patient/p1', resource: patient }],
      }),
    );
    const answer = await post(carerelay, full);
    expect(answer.status).toBe(200);
    const triggers = await carerelay.store.listTriggers({});
    expect(triggers.map((t) => [t.type, t.source.messageId])).toEqual([['appointment.booked', 'sub1#2']]);
    expect((await adminMessages()).map((m) => [m.controlId, m.status, m.reason ?? null, m.triggerIds])).toEqual([
      ['sub1#2', 'accepted', null, [triggers[0]!.id]],
    ]);
  });

  it('a gap whose recovery gets 404 on /metadata: the event is accepted and the gap searched in the background', async () => {
    await start();
    fhir.put(testPatient('p1'));
    const a1 = fhir.put(testAppointment('a1', 'Patient/p1'));
    const patient = { fullUrl: 'Patient/p1', resource: fhir.get('Patient', 'p1')! };
    const notify = (n: number, resource: TestFhirResource) =>
      post(
        carerelay,
        JSON.stringify(topicBundle({ subscription: sub(), type: 'event-notification', events: [{ number: n, focus: `Appointment/${resource.id}`, resource, timestamp: resource.meta!.lastUpdated! }], extraEntries: [patient] })),
      );
    expect((await notify(1, a1)).status).toBe(200);
    fhir.put(testAppointment('a2', 'Patient/p1'));
    const a3 = fhir.put(testAppointment('a3', 'Patient/p1'));
    fhir.failNext(404, 1); // GET /metadata
    const answer = await notify(3, a3);
    expect([answer.status, answer.json.resourceType]).toEqual([200, 'OperationOutcome']);
    await carerelay.fhirIngests.get('ehr-fhir')!.recoveryIdle();
    expect(fhir.requests.map((r) => r.path)).toEqual(expect.arrayContaining(['/fhir/metadata', '/fhir/Appointment']));
    expect((await carerelay.store.listTriggers({})).map((t) => t.appointment?.id).sort()).toEqual(['a1', 'a2', 'a3']);
  });

  it('logs carry ids and reason codes, never patient data', async () => {
    await start();
    fhir.put(testPatient('p1', { name: [{ family: 'CANARYNAME', given: ['ZED'] }] }));
    fhir.put(testAppointment('a1', 'Patient/p1'));
    await post(carerelay, JSON.stringify(topicBundle({ subscription: sub(), type: 'event-notification', events: [{ number: 5, focus: 'Appointment/a1' }] })));
    await post(carerelay, '{"resourceType":"Patient","name":[{"family":"CANARYNAME"}],"x":');
    expect((await carerelay.store.listTriggers({}))[0]?.patient!.name?.family).toBe('CANARYNAME');
    expect(JSON.stringify(carerelay.logs)).not.toContain('CANARYNAME');
  });
});
