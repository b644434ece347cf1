// GET /metrics after a known load (docs/operations.md "Metrics"): the scrape has the exact
// counts of what was sent in, and a canary patient — in the names, the phone, the sender and
// even in a made-up message type — appears in no metric. The endpoint answers loopback callers
// without a token, and only its own token once one is configured.
import { afterEach, describe, expect, it } from 'vitest';
import { fromLoopback } from '../src/api/metrics-route.ts';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { messageTypeLabel } from '../src/workers/metrics.ts';
import { consentConfigDir } from './helpers/consent.ts';
import { captureLogger, hl7Field, mllpExchange, siuMessage, type TestConfigDir } from './helpers/server.ts';

const CANARY = { family: 'ZANZIBARIUS', given: 'Quintilla', phone: '+33699887766', id: 'CANARY-0042' };
const RULES = `rules:
  - id: confirmation
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: confirmation, fields: [patient.name.given] }
    at: now
`;

let config: TestConfigDir | undefined;
let server: RunningCarerelay | undefined;
afterEach(async () => {
  await server?.stop();
  config?.remove();
  server = undefined;
  config = undefined;
});

async function start(env: Record<string, string> = {}): Promise<RunningCarerelay> {
  config = consentConfigDir({
    policy: ['  region: us', '  quietHours: { channels: [] }', '  usExemptSms: { perDay: 1000, perWeek: 1000 }'],
    outputs: ['{ name: sms, type: outbox, channel: sms, allowedPurposes: [care.logistics] }'],
    rules: RULES,
    templates: { 'confirmation.liquid': 'Hello {{ patient.name.given }}, see you soon.\n' },
  });
  server = await startCarerelay({ configDir: config.dir, env, log: captureLogger(), watchMappings: false });
  return server;
}

/** One booking of the canary over MLLP; `phone: false` leaves the mobile out. */
function booking(controlId: string, appointmentId: string, options: { phone?: boolean; event?: string; sendingApp?: string } = {}): string {
  const text = siuMessage({ controlId, appointmentId, patientId: CANARY.id, start: new Date(Date.now() + 7 * 86_400_000), sentAt: new Date(), ...(options.event ? { event: options.event } : {}), ...(options.sendingApp ? { sendingApp: options.sendingApp } : {}) }).replace(
    'DOE^Test',
    `${CANARY.family}^${CANARY.given}`,
  );
  return options.phone === false ? text : text.replace('|19600101|M', `|19600101|F|||||${CANARY.phone}^PRN^CP`);
}

/** The value of one series in the exposition text (labels in the order they are written). */
function series(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(',');
  const line = text.split('\n').find((l) => (wanted === '' ? l.startsWith(`${name} `) : l.startsWith(`${name}{${wanted}}`)));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('GET /metrics', () => {
  it('has the exact counts of a known load, and no patient data anywhere', async () => {
    const running = await start();
    const port = [...running.mllpPorts.values()][0]!;
    const ack = async (text: string) => hl7Field((await mllpExchange(port, text))!, 'MSA', 1);
    // 4 bookings with a mobile (confirmation sent), 1 without (suppressed no_address).
    const first = booking('M-1', 'A1', { sendingApp: `${CANARY.family}APP` });
    expect(await ack(first)).toBe('AA');
    for (let i = 2; i <= 4; i++) expect(await ack(booking(`M-${i}`, `A${i}`, { sendingApp: `${CANARY.family}APP` }))).toBe('AA');
    expect(await ack(booking('M-5', 'A5', { phone: false }))).toBe('AA');
    // A resend of M-1 (same bytes): answered AA again from the store, stored once.
    expect(await ack(first)).toBe('AA');
    // Refused: an SIU without an appointment id (AR).
    expect(await ack(booking('M-6', '').replace(/^SCH\|[^\r]*/m, 'SCH||||||NEW'))).toBe('AR');
    // A message type the sender made up, carrying the canary's name: accepted as ignored, labelled "other".
    expect(await ack(booking('M-7', 'A7').replace('SIU^S12^SIU_S12', `${CANARY.given.toUpperCase()}^Z01`))).toBe('AA');
    // A cancellation: a trigger, no delivery change (the confirmation went already).
    expect(await ack(booking('M-8', 'A2', { event: 'S15' }))).toBe('AA');
    await running.deliveries.idle();

    const res = await fetch(`http://127.0.0.1:${running.httpPort}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    const input = 'ehr-mllp';
    expect(series(text, 'carerelay_messages_received_total', { input, message_type: 'SIU^S12', ack_code: 'AA', status: 'accepted' })).toBe(5);
    expect(series(text, 'carerelay_messages_received_total', { input, message_type: 'SIU^S12', ack_code: 'AA', status: 'duplicate' })).toBe(1);
    expect(series(text, 'carerelay_messages_received_total', { input, message_type: 'SIU^S12', ack_code: 'AR', status: 'rejected' })).toBe(1);
    expect(series(text, 'carerelay_messages_received_total', { input, message_type: 'other', ack_code: 'AA', status: 'ignored' })).toBe(1);
    expect(series(text, 'carerelay_messages_received_total', { input, message_type: 'SIU^S15', ack_code: 'AA', status: 'accepted' })).toBe(1);
    expect(series(text, 'carerelay_triggers_total', { type: 'appointment.booked' })).toBe(5);
    expect(series(text, 'carerelay_triggers_total', { type: 'appointment.cancelled' })).toBe(1);
    expect(series(text, 'carerelay_triggers_total', { type: 'encounter.started' })).toBe(0);
    expect(series(text, 'carerelay_deliveries_total', { rule: 'confirmation', output: 'sms', status: 'planned' })).toBe(5);
    expect(series(text, 'carerelay_deliveries_total', { rule: 'confirmation', output: 'sms', status: 'sent' })).toBe(4);
    expect(series(text, 'carerelay_deliveries_total', { rule: 'confirmation', output: 'sms', status: 'suppressed' })).toBe(1);
    expect(series(text, 'carerelay_decisions_total', { rule: 'confirmation', result: 'allow', reason: 'none' })).toBe(4);
    expect(series(text, 'carerelay_decisions_total', { rule: 'confirmation', result: 'deny', reason: 'no_address' })).toBe(1);
    expect(series(text, 'carerelay_send_latency_seconds_count', { output: 'sms', result: 'ok' })).toBe(4);
    expect(series(text, 'carerelay_ack_latency_seconds_count', { input })).toBe(8);
    expect(series(text, 'carerelay_deliveries', { status: 'sent' })).toBe(4);
    expect(series(text, 'carerelay_queue_depth', { queue: 'deliveries' })).toBe(0);
    expect(series(text, 'carerelay_queue_oldest_due_age_seconds', { queue: 'deliveries' })).toBe(0);
    expect(series(text, 'carerelay_input_last_message_timestamp_seconds', { input })).toBeGreaterThan(0);
    expect(series(text, 'carerelay_input_last_message_timestamp_seconds', { input: 'ehr-http' })).toBe(0);
    expect(series(text, 'carerelay_process_resident_memory_bytes')).toBeGreaterThan(0);
    for (const value of [CANARY.family, CANARY.given, CANARY.given.toUpperCase(), CANARY.phone, CANARY.phone.slice(1), CANARY.id, 'A1', 'M-1']) {
      expect(text, value).not.toContain(value);
    }
  });

  it('wants its own token once one is configured (the admin token is not it)', async () => {
    const running = await start({ CARERELAY_METRICS_TOKEN: 'scrape-secret', CARERELAY_ADMIN_TOKEN: 'admin-secret' });
    const url = `http://127.0.0.1:${running.httpPort}/metrics`;
    expect((await fetch(url)).status).toBe(401);
    expect((await fetch(url, { headers: { authorization: 'Bearer admin-secret' } })).status).toBe(401);
    expect((await fetch(url, { headers: { authorization: 'Bearer scrape-secret' } })).status).toBe(200);
    // And the metrics token opens nothing else.
    expect((await fetch(`http://127.0.0.1:${running.httpPort}/api/messages`, { headers: { authorization: 'Bearer scrape-secret' } })).status).toBe(401);
  });

  it('answers only loopback callers without a token', () => {
    const req = (remoteAddress: string) => ({ socket: { remoteAddress } }) as Parameters<typeof fromLoopback>[0];
    expect(['127.0.0.1', '127.8.0.1', '::1', '::ffff:127.0.0.1'].map((a) => fromLoopback(req(a)))).toEqual([true, true, true, true]);
    expect(['10.0.0.5', '::ffff:10.0.0.5', '192.168.1.127', 'fe80::1', ''].map((a) => fromLoopback(req(a)))).toEqual([false, false, false, false, false]);
  });

  it('labels message types from a fixed list only', () => {
    expect(['SIU^S12^SIU_S12', 'ADT^A04', 'ACK^S12^ACK', 'Appointment', 'heartbeat', '', 'SIU^S99', 'QUINTILLA^Z01'].map(messageTypeLabel)).toEqual([
      'SIU^S12',
      'ADT^A04',
      'ACK',
      'Appointment',
      'heartbeat',
      'none',
      'other',
      'other',
    ]);
  });
});
