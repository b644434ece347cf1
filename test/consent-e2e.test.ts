// Consent end to end over real sockets (docs/consent.md): HL7v2 over MLLP in, deliveries
// planned, the ways in used as a patient and an EHR would use them, and what is sent or
// suppressed read back through the admin API — with a canary patient whose name, number and
// address must appear in no log line, whatever path they took.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { twilioSignature } from '../src/twilio/signature.ts';
import { consentConfigDir, http } from './helpers/consent.ts';
import { CLI_PATH, captureLogger, hl7Field, mllpExchange, siuMessage, type TestConfigDir } from './helpers/server.ts';

const TOKEN = 'twilio-e2e-token';
const CANARY = { family: 'ZANZIBARIUS', given: 'Quintilla', phone: '+33699887766', email: 'quintilla.canary@example.org', id: 'CANARY-0042' };
const RULES = `rules:
  - id: sms-reminder-24h
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: reminder, fields: [patient.name.given, appointment.start] }
    at: appointment.start - 24h
  - id: confirmation
    on: appointment.booked
    purpose: care.logistics
    channel: email
    send: { output: mail, template: confirmation, fields: [patient.name.given, appointment.start] }
    at: now
  - id: survey
    on: appointment.booked
    purpose: survey
    channel: email
    send: { output: mail, template: survey, fields: [patient.name.given] }
    at: now
  - id: news
    on: appointment.booked
    purpose: service.info
    channel: email
    send: { output: mail, template: news, fields: [patient.name.given] }
    at: appointment.start - 48h
  - id: offer
    on: appointment.booked
    purpose: marketing
    channel: email
    send: { output: mail, template: news, fields: [patient.name.given] }
    at: appointment.start - 72h
`;

let config: TestConfigDir;
let server: RunningCarerelay;
let logs: ReturnType<typeof captureLogger>;
let publicUrl: string;

beforeEach(async () => {
  const email = 'Hello {{ patient.name.given.first }}.\nUnsubscribe: {{ unsubscribe_url }}\n';
  config = consentConfigDir({
    policy: ['  region: us', '  quietHours: { channels: [] }', '  smsWebhooks: [{ output: sms, authToken: { env: TWILIO_TOKEN } }]'],
    outputs: ['{ name: sms, type: outbox, channel: sms, allowedPurposes: [care.logistics] }', '{ name: mail, type: outbox, channel: email, allowedPurposes: [care.logistics, survey, service.info, marketing] }'],
    rules: RULES,
    templates: {
      'reminder.liquid': 'Hello {{ patient.name.given.first }}, see you {{ appointment.start | local_time }}\n',
      'confirmation.subject.liquid': 'Booked',
      'confirmation.text.liquid': 'Hello {{ patient.name.given.first }}, booked for {{ appointment.start | local_time }}\n',
      'survey.subject.liquid': 'survey',
      'survey.text.liquid': email,
      'news.subject.liquid': 'news',
      'news.text.liquid': email,
    },
  });
  logs = captureLogger();
  server = await startCarerelay({ configDir: config.dir, env: { TWILIO_TOKEN: TOKEN }, log: logs, watchMappings: false });
  // No publicUrl configured: the default names the bound port.
  publicUrl = `http://127.0.0.1:${server.httpPort}`;
});
afterEach(async () => {
  await server?.stop();
  config.remove();
});

const api = (method: string, p: string, body?: string, type?: string) => http(publicUrl, method, p, body, type);

/** The canary's booking (SIU^S12) over MLLP, a week ahead; resolves once routed and due sends are done. */
async function book(appointmentId: string, controlId: string): Promise<void> {
  const start = new Date(Date.now() + 7 * 86_400_000);
  const text = siuMessage({ controlId, appointmentId, patientId: CANARY.id, start, sentAt: new Date() })
    .replace('DOE^Test', `${CANARY.family}^${CANARY.given}`)
    .replace('|19600101|M', `|19600101|F|||||${CANARY.phone}^PRN^CP~^NET^Internet^${CANARY.email}`);
  expect(hl7Field((await mllpExchange([...server.mllpPorts.values()][0]!, text))!, 'MSA', 1)).toBe('AA');
  await server.deliveries.idle();
}

const delivery = async (id: string) => (await api('GET', `/api/deliveries/${encodeURIComponent(id)}`)).json;

/** Every log line must be free of the canary's personal data. */
function expectNoCanaryInLogs(): void {
  const text = JSON.stringify(logs.lines);
  for (const value of [CANARY.family, CANARY.given, CANARY.phone, CANARY.phone.slice(1), CANARY.email, 'Hello']) expect(text, value).not.toContain(value);
}

describe('consent end to end', () => {
  it('MLLP S12 in → a signed STOP on the SMS webhook → the pending 24 h SMS is suppressed opted_out before the answer', async () => {
    await book('A1', 'E2E-1');
    expect(await delivery('sms-reminder-24h@appointment/A1#0')).toMatchObject({ status: 'pending' });
    const params = { MessageSid: 'SMe2e1', AccountSid: 'ACe2e', From: CANARY.phone, To: '+33700000000', Body: 'STOP' };
    const res = await fetch(`${publicUrl}/hooks/sms/sms`, {
      method: 'POST',
      body: new URLSearchParams(params).toString(),
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': twilioSignature(TOKEN, `${publicUrl}/hooks/sms/sms`, params) },
    });
    expect(res.status).toBe(200);
    expect(await res.text()).toContain('<Message>You are unsubscribed');
    // Already suppressed when the webhook answered, its queue timer cancelled with it.
    const sms = await delivery('sms-reminder-24h@appointment/A1#0');
    expect(sms).toMatchObject({ status: 'suppressed', reason: 'opted_out' });
    expect(sms.decisions[0]).toMatchObject({ result: 'deny', checkRule: 2, reason: 'opted_out' });
    expect((await server.deliveries.queue.list({ state: 'pending', cancelKey: 'sms-reminder-24h@appointment/A1#0' }))).toEqual([]);
    expectNoCanaryInLogs();
  });

  it('the signed unsubscribe link of a survey email stops surveys only (one-click and the confirmation page)', async () => {
    await book('A1', 'E2E-1');
    const survey = await delivery('survey@appointment/A1#0');
    expect(survey.status).toBe('sent');
    // RFC 8058: the link is in the text and in List-Unsubscribe, with List-Unsubscribe-Post.
    const link = /Unsubscribe: (\S+)/.exec(survey.message.text)![1]!;
    expect(survey.message.unsubscribe).toBe(link);
    expect(link.startsWith(`${publicUrl}/unsubscribe/`)).toBe(true);
    expect((await api('GET', link.slice(publicUrl.length))).text).toContain('Unsubscribe from surveys');
    const oneClick = await api('POST', link.slice(publicUrl.length), 'List-Unsubscribe=One-Click', 'application/x-www-form-urlencoded');
    expect(oneClick.status).toBe(200);

    await book('A2', 'E2E-2');
    expect(await delivery('survey@appointment/A2#0')).toMatchObject({ status: 'suppressed', reason: 'opted_out' });
    expect(await delivery('confirmation@appointment/A2#0')).toMatchObject({ status: 'sent' });
    expect(await delivery('news@appointment/A2#0')).toMatchObject({ status: 'pending' });
    expect(await delivery('sms-reminder-24h@appointment/A2#0')).toMatchObject({ status: 'pending' });
    const state = (await api('GET', `/api/patients/${CANARY.id}/consent`)).json.states;
    expect(state.find((s: any) => s.purpose === 'survey' && s.channel === 'email')).toMatchObject({ allowed: false, reason: 'opted_out' });
    expect(state.find((s: any) => s.purpose === 'service.info' && s.channel === 'email')).toMatchObject({ allowed: true });
    expectNoCanaryInLogs();
  });

  it('POST /api/consents with a deny for HMARKT stops marketing, and the patient views show why', async () => {
    await book('A1', 'E2E-1');
    await api('POST', `/api/patients/${CANARY.id}/grants`, JSON.stringify({ purposes: ['marketing'], channel: 'email' }));
    expect(await delivery('offer@appointment/A1#0')).toMatchObject({ status: 'pending' });
    const consent = {
      resourceType: 'Consent',
      status: 'active',
      scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
      category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }],
      patient: { identifier: { value: CANARY.id } },
      dateTime: new Date(Date.now() + 1000).toISOString(),
      provision: { type: 'deny', purpose: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'HMARKT' }] },
    };
    const res = await api('POST', '/api/consents', JSON.stringify(consent), 'application/fhir+json');
    expect(res.status).toBe(201);
    expect(res.json.suppressed).toEqual([{ deliveryId: 'offer@appointment/A1#0', reason: 'consent_denied' }]);
    expect(await delivery('news@appointment/A1#0')).toMatchObject({ status: 'pending' });

    const decisions = (await api('GET', `/api/patients/${CANARY.id}/decisions`)).json.items;
    expect(decisions.map((d: any) => [d.deliveryId, d.result, d.reason ?? null])).toEqual(
      expect.arrayContaining([
        ['offer@appointment/A1#0', 'deny', 'consent_denied'],
        ['survey@appointment/A1#0', 'allow', null],
        ['confirmation@appointment/A1#0', 'allow', null],
      ]),
    );
    const disclosures = (await api('GET', `/api/patients/${CANARY.id}/disclosures`)).json.items;
    expect(disclosures.map((d: any) => [d.deliveryId, d.purpose, d.output, d.recipient]).sort()).toEqual([
      ['confirmation@appointment/A1#0', 'care.logistics', 'mail', CANARY.email],
      ['survey@appointment/A1#0', 'survey', 'mail', CANARY.email],
    ]);
    expectNoCanaryInLogs();
  });

  it("erasure removes the canary's data everywhere it was kept, and no log line ever named it", async () => {
    await book('A1', 'E2E-1');
    const erased = await api('POST', `/api/patients/${CANARY.id}/erase`);
    expect(erased.status).toBe(200);
    const everything = JSON.stringify([
      (await api('GET', '/api/deliveries')).json,
      (await api('GET', '/api/outbox')).json,
      (await api('GET', '/api/triggers')).json,
      ...(await Promise.all((await api('GET', '/api/messages')).json.items.map((m: any) => api('GET', `/api/messages/${m.id}`).then((r) => r.json)))),
      (await api('GET', `/api/patients/${CANARY.id}/disclosures`)).json,
    ]);
    for (const value of [CANARY.family, CANARY.given, CANARY.phone, CANARY.email]) expect(everything, value).not.toContain(value);
    expectNoCanaryInLogs();
  });

  it('the CLI records an opt-out through the running server and shows the effective consent', async () => {
    await book('A1', 'E2E-1');
    const cli = (...args: string[]) => promisify(execFile)(process.execPath, [CLI_PATH, ...args, '--url', publicUrl], { env: { ...process.env, CARERELAY_ADMIN_TOKEN: '' } });
    const optOut = await cli('patient', 'opt-out', CANARY.id, '--channel', 'email', '--purpose', 'service.info');
    expect(optOut.stdout).toMatch(/^recorded opt_out ce-\d+; 1 pending message\(s\) suppressed$/m);
    expect(await delivery('news@appointment/A1#0')).toMatchObject({ status: 'suppressed', reason: 'opted_out' });
    const { stdout } = await cli('patient', 'consent', CANARY.id);
    expect(stdout).toMatch(/service\.info\s+email\s+denied \(opted_out\) — opted out \(admin, api\)/);
    expect(stdout).toMatch(/care\.logistics\s+sms\s+allowed/);
    await expect(cli('patient', 'consent', 'NOBODY')).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('404 no patient NOBODY is known') });
  });
});
