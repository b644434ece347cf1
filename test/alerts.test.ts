// Alerts over real sockets (docs/operations.md "Alerts"): a silent input and a failing output
// fire alerts through a signed webhook (a Standard Webhooks receiver on 127.0.0.1) and email (a
// real SMTP server), once each — a second check while they hold sends nothing — and each is
// resolved, with a notice, once its condition clears. The clock is injected; nothing sleeps.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { makeTestPki, type TestPki } from './helpers/certs.ts';
import { captureLogger, hl7Field, mllpExchange, siuMessage, writeConfigDir, type TestConfigDir } from './helpers/server.ts';
import { startSmtpServer, type TestSmtpServer } from './helpers/smtp.ts';
import { startWebhookSink, type WebhookSink } from './helpers/webhook-sink.ts';

const OPS_SECRET = 'whsec_b3BzLWFsZXJ0cy1zZWNyZXQtZm9yLXRlc3Rz';
const PARTNER_SECRET = 'whsec_cGFydG5lci1zZWNyZXQtZm9yLXRoZS10ZXN0cw==';
const CANARY = { family: 'ZANZIBARIUS', given: 'Quintilla' };
const T0 = Date.parse('2030-03-01T09:00:00Z');
const MINUTE = 60_000;

let config: TestConfigDir;
let pki: TestPki;
let smtp: TestSmtpServer;
let ops: WebhookSink;
let partner: WebhookSink;
let server: RunningCarerelay | undefined;
let clock: number;

beforeEach(async () => {
  clock = T0;
  config = writeConfigDir();
  pki = makeTestPki(path.join(config.dir, 'pki'));
  smtp = await startSmtpServer(pki);
  ops = await startWebhookSink({ secrets: [OPS_SECRET], now: () => clock });
  partner = await startWebhookSink({ secrets: [PARTNER_SECRET], now: () => clock });
  writeFileSync(
    path.join(config.dir, 'connectors', 'test.yaml'),
    `server:
  http: { host: 127.0.0.1, port: 0 }
  dataDir: ${JSON.stringify(config.dataDir)}
policy:
  quietHours: { channels: [] }
inputs:
  - { name: ehr-mllp, type: hl7v2-mllp, host: 127.0.0.1, port: 0, plain: true, timezone: UTC }
  - { name: lab-http, type: hl7v2-http, timezone: UTC }
outputs:
  - name: partner
    type: webhook
    url: ${partner.url}
    secrets: [{ env: PARTNER_SECRET }]
    allowPrivateAddresses: [127.0.0.1]
    baa: true
  - name: ops-hook
    type: webhook
    url: ${ops.url}
    secrets: [{ env: OPS_SECRET }]
    allowPrivateAddresses: [127.0.0.1]
    includeMessage: true
  - name: ops-mail
    type: smtp
    host: 127.0.0.1
    port: ${smtp.port}
    security: starttls
    auth: { user: ${smtp.user}, pass: { env: SMTP_PASS } }
    tls: { ca: { file: ${JSON.stringify(pki.ca.certPath)} }, servername: localhost }
    from: "CareRelay <carerelay@clinic.example.org>"
alerts:
  notify:
    - { output: ops-hook }
    - { output: ops-mail, to: oncall@clinic.example.org }
  silentInput: { afterMinutes: 30, inputs: { ehr-mllp: 0 } }
  errorRate: { threshold: 0.5, windowMinutes: 60, minEvents: 3 }
  deadLetters: { threshold: 1, windowMinutes: 60 }
`,
  );
  mkdirSync(path.join(config.dir, 'mappings'), { recursive: true });
  writeFileSync(
    path.join(config.dir, 'mappings', 'rules.yaml'),
    `rules:
  - id: notify-partner
    on: appointment.booked
    purpose: care.logistics
    channel: webhook
    send: { output: partner, fields: [patient.name.family, appointment.start] }
    at: now
`,
  );
});
afterEach(async () => {
  await server?.stop();
  server = undefined;
  await Promise.all([smtp.close(), ops.close(), partner.close()]);
  config.remove();
});

async function book(controlId: string): Promise<void> {
  const text = siuMessage({ controlId, appointmentId: `A-${controlId}`, sentAt: new Date(clock), start: new Date(clock + 7 * 86_400_000) }).replace('DOE^Test', `${CANARY.family}^${CANARY.given}`);
  expect(hl7Field((await mllpExchange([...server!.mllpPorts.values()][0]!, text))!, 'MSA', 1)).toBe('AA');
}

type Notice = { state: string; kind: string; subject: string; since: string; resolvedAt?: string; summary: string; detail: Record<string, unknown> };
const notices = (sink: WebhookSink): Notice[] => sink.requests.filter((r) => r.status === 204).map((r) => JSON.parse(r.body).fields.alert as Notice);

describe('alerts', () => {
  it('a silent input and a failing output fire once through the webhook and email, and resolve when they clear', async () => {
    server = await startCarerelay({
      configDir: config.dir,
      env: { PARTNER_SECRET, OPS_SECRET, SMTP_PASS: smtp.pass },
      log: captureLogger(),
      watchMappings: false,
      now: () => clock,
    });
    // The partner's endpoint refuses every delivery (400: permanent, dead-lettered at once).
    partner.failNext({ kind: 'status', status: 400 }, 3);
    for (const id of ['B1', 'B2', 'B3']) await book(id);
    await server.deliveries.idle();
    expect((await server.store.countDeliveries()).failed).toBe(3);

    // The failures fire at once; lab-http has been quiet 10 minutes only.
    clock = T0 + 10 * MINUTE;
    const early = await server.alerts.check();
    expect(early.map((n) => `${n.state} ${n.kind}/${n.subject}`).sort()).toEqual(['firing dead_letters/deliveries', 'firing output_error_rate/partner']);
    await server.alerts.idle();
    clock = T0 + 31 * MINUTE;
    const fired = await server.alerts.check();
    expect(fired.map((n) => `${n.state} ${n.kind}/${n.subject}`)).toEqual(['firing input_silent/lab-http']);
    await server.alerts.idle();
    await ops.waitFor(3);
    await smtp.waitFor(3);

    const firing = notices(ops);
    expect(firing.map((n) => `${n.state} ${n.kind}/${n.subject}`).sort()).toEqual(['firing dead_letters/deliveries', 'firing input_silent/lab-http', 'firing output_error_rate/partner']);
    expect(ops.requests.every((r) => r.signed)).toBe(true);
    expect(firing.find((n) => n.kind === 'output_error_rate')).toMatchObject({ detail: { failed: 3, total: 3, rate: 1, threshold: 0.5 } });
    expect(firing.find((n) => n.kind === 'input_silent')).toMatchObject({ summary: 'input "lab-http" has had no message for 31 min (none since the start); alert after 30 min' });
    const body = JSON.parse(ops.requests[0]!.body);
    expect(body).toMatchObject({ type: 'carerelay.delivery', rule: 'carerelay.alerts', message: { language: 'en' } });
    const subjects = smtp.received.map((m) => m.parsed.subject).sort();
    expect(subjects).toEqual(['[CareRelay] FIRING dead_letters: deliveries', '[CareRelay] FIRING input_silent: lab-http', '[CareRelay] FIRING output_error_rate: partner']);
    expect(smtp.received.every((m) => m.to.includes('oncall@clinic.example.org'))).toBe(true);
    expect(smtp.received[0]!.parsed.headers.has('list-unsubscribe')).toBe(false);

    // Still true a minute later: deduplicated, nothing new goes out.
    clock = T0 + 32 * MINUTE;
    expect(await server.alerts.check()).toEqual([]);
    await server.alerts.idle();
    expect(ops.requests).toHaveLength(3);
    expect(smtp.received).toHaveLength(3);

    // The lab speaks again; the failures age out of their windows.
    const res = await fetch(`http://127.0.0.1:${server.httpPort}/ingest/hl7v2/lab-http`, {
      method: 'POST',
      body: siuMessage({ controlId: 'L1', appointmentId: 'A-L1', sentAt: new Date(clock) }),
      headers: { 'content-type': 'x-application/hl7-v2+er7' },
    });
    expect(res.status).toBe(200);
    await server.deliveries.idle();
    clock = T0 + 33 * MINUTE;
    expect((await server.alerts.check()).map((n) => `${n.state} ${n.kind}/${n.subject}`)).toEqual(['resolved input_silent/lab-http']);
    // (Sends finish before the clock jumps: a jump past a running job's lease would take it again.)
    await server.alerts.idle();
    clock = T0 + 61 * MINUTE;
    expect((await server.alerts.check()).map((n) => `${n.state} ${n.kind}/${n.subject}`).sort()).toEqual(['resolved dead_letters/deliveries', 'resolved output_error_rate/partner']);
    await server.alerts.idle();
    await ops.waitFor(6);
    await smtp.waitFor(6);
    const resolved = notices(ops).filter((n) => n.state === 'resolved');
    expect(resolved.map((n) => `${n.kind}/${n.subject}`).sort()).toEqual(['dead_letters/deliveries', 'input_silent/lab-http', 'output_error_rate/partner']);
    expect(resolved.find((n) => n.kind === 'input_silent')).toMatchObject({ since: new Date(T0 + 31 * MINUTE).toISOString(), resolvedAt: new Date(T0 + 33 * MINUTE).toISOString() });
    expect(smtp.received.filter((m) => m.parsed.subject!.startsWith('[CareRelay] RESOLVED'))).toHaveLength(3);

    // No patient data in any alert.
    const sent = [...ops.requests.map((r) => r.body), ...smtp.received.map((m) => m.raw)].join('\n');
    for (const value of [CANARY.family, CANARY.given, 'E200001', 'A-B1']) expect(sent, value).not.toContain(value);
  });
});
