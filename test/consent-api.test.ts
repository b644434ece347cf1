// The ways in of consent over real sockets (docs/consent.md; src/api/consent-routes.ts): the
// admin API, POST /api/consents, Twilio's inbound SMS webhook and the unsubscribe links. Each
// change takes effect before its answer: the pending deliveries it forbids are suppressed with
// the reason, and bad input (unsigned, forged, expired, malformed, unknown patient) changes nothing.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { twilioSignature } from '../src/twilio/signature.ts';
import { unsubscribeLinks } from '../src/workers/unsubscribe.ts';
import { consentConfigDir, http } from './helpers/consent.ts';
import { topicBundle } from './helpers/fhir-notifications.ts';
import { captureLogger, hl7Field, mllpExchange, siuMessage, type TestConfigDir } from './helpers/server.ts';

const TOKEN = 'twilio-test-token';
const PUBLIC = 'https://carerelay.example.org';
const RULES = `rules:
  - id: reminder
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: reminder, fields: [appointment.start] }
    at: appointment.start - 24h
  - id: promo
    on: appointment.booked
    purpose: marketing
    channel: email
    send: { output: mail, template: promo, fields: [patient.name.given] }
    at: appointment.start - 48h
  - id: survey
    on: appointment.booked
    purpose: survey
    channel: email
    send: { output: mail, template: survey, fields: [patient.name.given] }
    at: appointment.start - 72h
`;

let config: TestConfigDir;
let server: RunningCarerelay;
let logs: ReturnType<typeof captureLogger>;
let clock: number;

beforeEach(async () => {
  config = consentConfigDir({
    policy: ['  region: us', '  quietHours: { channels: [] }', `  publicUrl: ${PUBLIC}`, '  smsWebhooks: [{ output: sms, authToken: { env: TWILIO_TOKEN } }]'],
    // A FHIR rest-hook input: Consent resources arrive on it too.
    inputs:
      '  - name: ehr-fhir\n    type: fhir-rest-hook\n    server: { baseUrl: "http://127.0.0.1:9/fhir" }\n    auth: { bearer: { token: { env: FHIR_HOOK_TOKEN } } }\n' +
      '    subscriptions:\n      - { id: sub-consent, topic: "http://example.org/SubscriptionTopic/consent", heartbeatPeriodSeconds: 0 }\n',
    outputs: ['{ name: sms, type: outbox, channel: sms, allowedPurposes: [care.logistics] }', '{ name: mail, type: outbox, channel: email, allowedPurposes: [marketing, survey] }'],
    rules: RULES,
    templates: {
      'reminder.liquid': 'See you {{ appointment.start | local_time }}\n',
      'promo.subject.liquid': 'promo',
      'promo.text.liquid': 'Hello. Unsubscribe: {{ unsubscribe_url }}\n',
      'survey.subject.liquid': 'survey',
      'survey.text.liquid': 'Hello. Unsubscribe: {{ unsubscribe_url }}\n',
    },
  });
  logs = captureLogger();
  clock = Date.parse('2030-03-01T09:30:00Z');
  server = await startCarerelay({ configDir: config.dir, env: { TWILIO_TOKEN: TOKEN, FHIR_HOOK_TOKEN: 'fhir-token' }, log: logs, watchMappings: false, now: () => clock });
});
afterEach(async () => {
  await server?.stop();
  config.remove();
});

const base = () => `http://127.0.0.1:${server.httpPort}`;

const api = (method: string, pathAndQuery: string, body?: unknown, type?: string) => http(base(), method, pathAndQuery, body, type);

/** A booking for E200001 with a mobile and an email, over MLLP, routed. */
async function book(appointmentId: string, controlId = `C-${appointmentId}`, patientId = 'E200001'): Promise<void> {
  const text = siuMessage({ controlId, appointmentId, patientId, start: new Date('2030-03-16T13:30:00Z') }).replace(
    '|19600101|M',
    '|19600101|M|||||+33612345678^PRN^CP~^NET^Internet^pat@example.org',
  );
  expect(hl7Field((await mllpExchange([...server.mllpPorts.values()][0]!, text))!, 'MSA', 1)).toBe('AA');
  await server.deliveries.idle();
}

const delivery = async (id: string) => (await api('GET', `/api/deliveries/${encodeURIComponent(id)}`)).json;

/** Twilio's POST to the webhook, signed with `token` (null: no signature). */
async function sms(body: Record<string, string>, token: string | null = TOKEN, output = 'sms'): Promise<{ status: number; text: string }> {
  const form = new URLSearchParams(body).toString();
  const path = `/hooks/sms/${output}`;
  const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
  if (token !== null) headers['x-twilio-signature'] = twilioSignature(token, `${PUBLIC}${path}`, body);
  const res = await fetch(`${base()}${path}`, { method: 'POST', body: form, headers });
  return { status: res.status, text: await res.text() };
}

const stop = { MessageSid: 'SM001', AccountSid: 'AC1', From: '+33 6 12 34 56 78', To: '+33700000000', Body: 'Stop' };

describe('inbound SMS webhook (Twilio format)', () => {
  it('unsigned 401, forged 403, unknown output 404, wrong type 415: nothing changes', async () => {
    await book('A1');
    expect((await sms(stop, null)).status).toBe(401);
    expect((await sms(stop, 'not-the-token')).status).toBe(403);
    expect((await sms(stop, TOKEN, 'mail')).status).toBe(404);
    const res = await fetch(`${base()}/hooks/sms/sms`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json', 'x-twilio-signature': 'x' } });
    expect(res.status).toBe(415);
    expect((await delivery('reminder@appointment/A1#0')).status).toBe('pending');
    expect((await server.store.consentRecords({ patientIds: [], addresses: ['+33612345678'] })).events).toEqual([]);
  });

  it('a signed STOP opts the number out: the pending SMS is suppressed opted_out before the answer, confirmed once; START lifts it', async () => {
    await book('A1');
    const first = await sms(stop);
    expect(first.status).toBe(200);
    expect(first.text).toMatch(/^<\?xml version="1\.0" encoding="UTF-8"\?><Response><Message>You are unsubscribed[^<]*<\/Message><\/Response>$/);
    const d = await delivery('reminder@appointment/A1#0');
    expect(d).toMatchObject({ status: 'suppressed', reason: 'opted_out' });
    expect(d.decisions).toEqual([expect.objectContaining({ result: 'deny', checkRule: 2, reason: 'opted_out' })]);
    // Twilio resending the same message: no second confirmation, nothing new.
    expect((await sms(stop)).text).toBe('<?xml version="1.0" encoding="UTF-8"?><Response></Response>');
    // Emails are not the number's: they stay.
    expect((await delivery('survey@appointment/A1#0')).status).toBe('pending');
    // A new booking's SMS to the same number is planned, then refused at send time.
    expect((await sms({ ...stop, MessageSid: 'SM002', Body: 'HELP' })).text).toContain('<Message>Messages about your appointments');
    expect((await sms({ ...stop, MessageSid: 'SM003', Body: 'please call me' })).text).toBe('<?xml version="1.0" encoding="UTF-8"?><Response></Response>');
    expect((await sms({ ...stop, MessageSid: 'SM004', Body: 'START' })).text).toContain('<Message>You are subscribed again');
    const { events } = await server.store.consentRecords({ patientIds: [], addresses: ['+33612345678'] });
    expect(events.map((e) => [e.action, e.method, e.output])).toEqual([
      ['opt_out', 'keyword:STOP', 'sms'],
      ['opt_in', 'keyword:START', 'sms'],
    ]);
  });
});

describe('admin API', () => {
  it('an unknown patient is 404 on every patient endpoint, a bad body 400 naming the field', async () => {
    for (const [method, p] of [
      ['GET', 'consent'],
      ['GET', 'decisions'],
      ['GET', 'disclosures'],
      ['POST', 'opt-outs'],
      ['PUT', 'no-contact'],
      ['POST', 'erase'],
    ] as const) {
      expect((await api(method, `/api/patients/NOBODY/${p}`, method === 'POST' ? {} : undefined)).status, `${method} ${p}`).toBe(404);
    }
    await book('A1');
    const bad = await api('POST', '/api/patients/E200001/grants', { purposes: ['newsletters'], channel: 'email' });
    expect(bad.status).toBe(400);
    expect(bad.json.detail).toMatch(/purposes must be a list of care\.logistics/);
    expect((await api('POST', '/api/patients/E200001/grants', { purposes: ['survey'] })).json.detail).toMatch(/channel is required/);
  });

  it('opt-out, revocation and no-contact suppress what they forbid at once; the views say why', async () => {
    await book('A1');
    const optOut = await api('POST', '/api/patients/E200001/opt-outs', { channel: 'email', purposes: ['marketing'] });
    expect(optOut.status).toBe(201);
    expect(optOut.json.suppressed).toEqual([{ deliveryId: 'promo@appointment/A1#0', reason: 'opted_out' }]);
    const revoke = await api('POST', '/api/patients/E200001/revocations', { purposes: ['survey'], channel: 'email' });
    expect(revoke.json.suppressed).toEqual([{ deliveryId: 'survey@appointment/A1#0', reason: 'consent_denied' }]);
    expect((await delivery('reminder@appointment/A1#0')).status).toBe('pending');

    const view = (await api('GET', '/api/patients/E200001/consent')).json;
    const state = (purpose: string, channel: string) => view.states.find((s: any) => s.purpose === purpose && s.channel === channel);
    expect(state('marketing', 'email')).toMatchObject({ allowed: false, reason: 'opted_out' });
    expect(state('survey', 'email')).toMatchObject({ allowed: false, reason: 'consent_denied' });
    expect(state('care.logistics', 'sms')).toMatchObject({ allowed: true, basis: expect.stringContaining('us default allows') });
    expect(view.events).toHaveLength(2);

    const noContact = await api('PUT', '/api/patients/E200001/no-contact');
    expect(noContact.json.suppressed).toEqual([{ deliveryId: 'reminder@appointment/A1#0', reason: 'no_contact' }]);
    const decisions = (await api('GET', '/api/patients/E200001/decisions')).json.items;
    expect(decisions.map((d: any) => d.reason).sort()).toEqual(['consent_denied', 'no_contact', 'opted_out']);
    expect((await api('DELETE', '/api/patients/E200001/no-contact')).status).toBe(201);
    expect((await api('GET', '/api/patients/E200001/consent')).json.states.find((s: any) => s.purpose === 'care.logistics' && s.channel === 'sms').allowed).toBe(true);
  });

  it('erase: pending deliveries suppressed erased, the patient\'s data removed, an erasure record kept', async () => {
    await book('A1');
    const res = await api('POST', '/api/patients/E200001/erase');
    expect(res.status).toBe(200);
    expect(res.json.erasures[0].cancelled.map((c: any) => c.deliveryId).sort()).toEqual(['promo@appointment/A1#0', 'reminder@appointment/A1#0', 'survey@appointment/A1#0']);
    expect(await delivery('reminder@appointment/A1#0')).toMatchObject({ status: 'suppressed', reason: 'erased' });
    const messages = (await api('GET', '/api/messages?limit=5')).json.items;
    const message = (await api('GET', `/api/messages/${messages[0].id}`)).json;
    expect(message.raw).toBe('');
    expect(JSON.stringify(message.triggers)).not.toMatch(/DOE|pat@example\.org|33612345678/);
    expect((await api('GET', '/api/patients/E200001/disclosures')).json.erasures).toHaveLength(1);
    // Nothing is left in the queue for them.
    expect(await server.deliveries.queue.list({ state: 'pending' })).toEqual([]);
  });
});

describe('POST /api/consents (FHIR R4 Consent)', () => {
  const consent = (patient: string, code: string) => ({
    resourceType: 'Consent',
    id: 'c-1',
    status: 'active',
    scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
    category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }],
    patient: { reference: `Patient/${patient}` },
    dateTime: '2030-03-01T09:00:00Z',
    provision: { type: 'deny', purpose: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code }] },
  });

  it('a deny for HMARKT is kept (201) and stops marketing only', async () => {
    await book('A1');
    const res = await api('POST', '/api/consents', consent('E200001', 'HMARKT'), 'application/fhir+json');
    expect(res.status).toBe(201);
    expect(res.json).toMatchObject({ id: expect.any(String), patientId: 'E200001', suppressed: [{ deliveryId: 'promo@appointment/A1#0', reason: 'consent_denied' }] });
    expect((await delivery('survey@appointment/A1#0')).status).toBe('pending');
    const kept = (await api('GET', '/api/patients/E200001/consent')).json.consents;
    expect(kept[0].resource).toEqual(consent('E200001', 'HMARKT'));
  });

  it('a Consent arriving on a FHIR input is kept and enforced before its 2xx; a malformed one is recorded as rejected', async () => {
    await book('A1');
    const post = (body: unknown) =>
      fetch(`${base()}/ingest/fhir/ehr-fhir`, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/fhir+json', authorization: 'Bearer fhir-token' } });
    const res = await post({ ...consent('E200001', 'HOPERAT'), meta: { versionId: '1' } });
    expect(res.status).toBe(200);
    expect((await delivery('survey@appointment/A1#0')).reason).toBe('consent_denied');
    expect((await delivery('promo@appointment/A1#0')).status).toBe('pending');
    expect((await post({ ...consent('E200001', 'HOPERAT'), id: 'c-2', meta: { versionId: '1' }, status: 'approved' })).status).toBe(200);
    const rejected = (await api('GET', '/api/messages?status=rejected')).json.items;
    expect(rejected).toEqual([expect.objectContaining({ messageType: 'Consent', reason: 'consent_invalid' })]);
  });

  it('a Consent announced by a topic notification (full-resource) is kept and enforced before its 2xx', async () => {
    await book('A1');
    const resource = { ...consent('E200001', 'HOPERAT'), meta: { versionId: '1' } };
    const bundle = topicBundle({
      subscription: 'http://127.0.0.1:9/fhir/Subscription/sub-consent',
      topic: 'http://example.org/SubscriptionTopic/consent',
      type: 'event-notification',
      events: [{ number: 1, focus: 'Consent/c-1', resource }],
    });
    const res = await fetch(`${base()}/ingest/fhir/ehr-fhir`, {
      method: 'POST',
      body: JSON.stringify(bundle),
      headers: { 'content-type': 'application/fhir+json', authorization: 'Bearer fhir-token' },
    });
    expect(res.status).toBe(200);
    expect((await delivery('survey@appointment/A1#0')).reason).toBe('consent_denied');
    expect((await delivery('promo@appointment/A1#0')).status).toBe('pending');
    const kept = (await api('GET', '/api/patients/E200001/consent')).json.consents;
    expect(kept.map((c: any) => c.resource)).toEqual([resource]);
  });

  it('a malformed Consent is 422 with an OperationOutcome naming the element; an unknown patient 404; nothing kept', async () => {
    await book('A1');
    const bad = await api('POST', '/api/consents', { ...consent('E200001', 'HMARKT'), status: 'approved', provision: { type: 'allow' } }, 'application/fhir+json');
    expect(bad.status).toBe(422);
    expect(bad.headers.get('content-type')).toMatch(/^application\/fhir\+json/);
    expect(bad.json.resourceType).toBe('OperationOutcome');
    expect(bad.json.issue.map((i: any) => i.expression[0])).toEqual(['Consent.status', 'Consent.provision.type']);
    expect((await api('POST', '/api/consents', consent('NOBODY', 'HMARKT'))).status).toBe(404);
    expect((await api('POST', '/api/consents', '{"resourceType": "Consent",')).status).toBe(400);
    expect((await server.store.consentRecords({ patientIds: ['E200001', 'NOBODY'] })).consents).toEqual([]);
    expect((await delivery('promo@appointment/A1#0')).status).toBe('pending');
  });
});

describe('unsubscribe links', () => {
  const key = () => readFileSync(path.join(config.dataDir, 'unsubscribe.key'), 'utf8').trim();
  const link = (deliveryId: string, k = key(), at = clock) => unsubscribeLinks({ key: Buffer.from(k), publicUrl: PUBLIC, ttlDays: 60 }).url(deliveryId, at).slice(PUBLIC.length);

  it('forged or expired: 403 and nothing changes', async () => {
    await book('A1');
    expect((await api('POST', link('survey@appointment/A1#0', 'another-key'), 'scope=all', 'application/x-www-form-urlencoded')).status).toBe(403);
    const old = link('survey@appointment/A1#0', key(), clock - 61 * 86_400_000);
    const expired = await api('GET', old);
    expect(expired.status).toBe(403);
    expect(expired.text).toContain('expired');
    expect((await api('POST', old, 'List-Unsubscribe=One-Click', 'application/x-www-form-urlencoded')).status).toBe(403);
    expect((await api('GET', '/unsubscribe/not-a-token')).status).toBe(403);
    expect((await server.store.consentRecords({ patientIds: ['E200001'] })).events).toEqual([]);
  });

  it('GET shows the choice; RFC 8058 one-click stops the purpose the email was for, "all" every non-care email', async () => {
    await book('A1');
    const page = await api('GET', link('survey@appointment/A1#0'));
    expect(page.status).toBe(200);
    expect(page.text).toContain('Unsubscribe from surveys');
    const oneClick = await api('POST', link('survey@appointment/A1#0'), 'List-Unsubscribe=One-Click', 'application/x-www-form-urlencoded');
    expect(oneClick.status).toBe(200);
    expect((await delivery('survey@appointment/A1#0')).reason).toBe('opted_out');
    expect((await delivery('promo@appointment/A1#0')).status).toBe('pending');
    await api('POST', link('survey@appointment/A1#0'), 'scope=all', 'application/x-www-form-urlencoded');
    expect((await delivery('promo@appointment/A1#0')).reason).toBe('opted_out');
    expect(await delivery('reminder@appointment/A1#0')).toMatchObject({ status: 'pending' });
    const methods = (await server.store.consentRecords({ patientIds: ['E200001'] })).events.map((e) => [e.method, e.purposes.length]);
    expect(methods).toEqual([
      ['one-click', 1],
      ['link', 5],
    ]);
  });
});
