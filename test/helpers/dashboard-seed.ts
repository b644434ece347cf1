// A running CareRelay with a little of everything the dashboard shows: bookings over MLLP with
// confirmations sent and reminders pending (two variants), a patient who opted out (her
// next confirmation suppressed `opted_out`), a cancellation, a rejected message, a quarantined
// copy, a webhook receiver that refuses its first calls (dead letters to replay) and another
// whose outcome stays unknown (a review item). Three named tokens: every scope, read +
// operate, read only. Used by the browser tests and `npm run screenshots`.
//
// All patients are invented; the canary name lets tests search pages and logs for PHI.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { startCarerelay, type RunningCarerelay } from '../../src/main.ts';
import { captureLogger, hl7Field, hl7Time, mllpExchange, writeYamlConfig, type LogLine, type TestConfigDir } from './server.ts';
import { startWebhookSink, type WebhookSink } from './webhook-sink.ts';

export const TOKENS = {
  /** read, phi, operate */
  lead: 'lead-token-7f3a9c2e5b1d4f6a8c0e2b4d6f8a1c3e',
  /** read, operate */
  oncall: 'oncall-token-2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a',
  /** read */
  viewer: 'viewer-token-9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b',
};
const WEBHOOK_SECRET = `whsec_${Buffer.from('dashboard-seed-webhook-secret-32b').toString('base64')}`;

/** A family name no page may show without the phi scope, and no log line ever. */
export const CANARY = 'CANARYFAMILY';

const RULES = `description: Confirmations, reminders in two variants, and the scheduling system kept in step.
rules:
  - id: booking-confirmation
    description: Confirms a new booking by email right away.
    on: appointment.booked
    purpose: care.logistics
    channel: email
    send: { output: outbox-email, template: confirm, fields: [patient.name.given, appointment.start] }
    at: now
  - id: sms-reminder-24h
    description: Text reminder the day before, in two wordings.
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: outbox-sms, template: reminder, fields: [patient.name.given, appointment.start] }
    at: appointment.start - 24h
    expires: appointment.start - 2h
    variants:
      - { id: short, weight: 1 }
      - { id: friendly, weight: 1, template: reminder-friendly }
  - id: scheduling-sync
    description: Tells the scheduling system about each booking.
    on: appointment.booked
    purpose: care.logistics
    channel: webhook
    send: { output: scheduling-hook, fields: [appointment.id, appointment.start] }
    at: now
  - id: crm-sync
    description: Keeps the CRM in step (its receiver does not dedupe).
    on: appointment.booked
    where:
      appointment.serviceType.code: { in: [NEWPAT] }
    purpose: care.logistics
    channel: webhook
    send: { output: crm-hook, fields: [appointment.id] }
    at: now
`;

export interface SeededDashboard {
  server: RunningCarerelay;
  config: TestConfigDir;
  logs: LogLine[];
  baseUrl: string;
  /** The scheduling system's receiver: refused its first two calls (dead letters). */
  scheduling: WebhookSink;
  crm: WebhookSink;
  /** Ids worth opening. */
  ids: {
    /** A booking accepted over MLLP. */
    bookingControlId: string;
    bookingMessageId: string;
    /** The patient whose second confirmation was suppressed (opted out of email). */
    optedOutPatient: string;
    /** A patient whose name is CANARY. */
    canaryPatient: string;
    canaryControlId: string;
    /** A rejected message (no patient id). */
    rejectedMessageId: string;
    /** Dead letters of scheduling-sync. */
    deadLetters: string[];
  };
  stop(): Promise<void>;
}

interface Booking {
  controlId: string;
  appointmentId: string;
  patientId: string;
  name: string;
  event?: string;
  /** Hours from now. */
  inHours: number;
  service?: string;
  phone?: string;
  email?: string;
}

function siu(b: Booking, sentAt: Date): string {
  const start = new Date(sentAt.getTime() + b.inHours * 3_600_000);
  start.setUTCMinutes(start.getUTCMinutes() < 30 ? 0 : 30, 0, 0);
  const end = new Date(start.getTime() + 30 * 60_000);
  const telecom = [b.phone !== undefined ? `^PRN^CP^^${b.phone.slice(1, 3)}^${b.phone.slice(3, 4)}^${b.phone.slice(4)}` : '', b.email !== undefined ? `^NET^Internet^${b.email}` : ''].filter((t) => t !== '').join('~');
  const [family, given] = b.name.split('^');
  return [
    `MSH|^~\\&|EPIC|NORTHCLINIC|CARERELAY|CR|${hl7Time(sentAt)}||SIU^${b.event ?? 'S12'}^SIU_S12|${b.controlId}|P|2.5.1`,
    `SCH|PL-${b.appointmentId}|${b.appointmentId}||||NEW|${b.service ?? 'CHK'}^${b.service === 'NEWPAT' ? 'New patient' : 'Check-up'}^LOCAL||30|MIN|||||||||||||||${b.event === 'S15' ? 'Cancelled' : 'Booked'}`,
    `TQ1|1||||||${hl7Time(start)}|${hl7Time(end)}`,
    `PID|1||${b.patientId}^^^NORTHCLINIC^MR||${family}^${given}||19800101|F|||12 RUE DES LILAS^^LYON^^69003^FRA||${telecom}||FRE`,
    'RGS|1',
    `AIS|1||${b.service ?? 'CHK'}^${b.service === 'NEWPAT' ? 'New patient' : 'Check-up'}^LOCAL`,
    'AIL|1||CARDIO1^^^NORTHCLINIC',
    'AIP|1||DR-22^PETIT^Jean',
    '',
  ].join('\r');
}

async function send(server: RunningCarerelay, text: string): Promise<string> {
  const ack = await mllpExchange(server.mllpPorts.get('ehr-mllp')!, text);
  return hl7Field(ack!, 'MSA', 1);
}

async function api(baseUrl: string, method: string, path_: string, body?: unknown): Promise<unknown> {
  const res = await fetch(`${baseUrl}${path_}`, {
    method,
    headers: { authorization: `Bearer ${TOKENS.lead}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  if (!res.ok) throw new Error(`${method} ${path_}: ${res.status} ${await res.text()}`);
  return res.json();
}

/** Starts the seeded instance (in this process, real clock) and waits until everything due is done. */
export async function startSeededDashboard(): Promise<SeededDashboard> {
  const scheduling = await startWebhookSink({ secrets: [WEBHOOK_SECRET] });
  const crm = await startWebhookSink({ secrets: [WEBHOOK_SECRET] });
  const config = writeYamlConfig(`server:
  http: { host: 127.0.0.1, port: 0 }
  dataDir: {dataDir}
  admin:
    tokens:
      - { name: integration-lead, token: { env: LEAD_TOKEN }, scopes: [read, phi, operate] }
      - { name: oncall, token: { env: ONCALL_TOKEN }, scopes: [read, operate] }
      - { name: viewer, token: { env: VIEWER_TOKEN }, scopes: [read] }
policy:
  timezone: Europe/Paris
  quietHours: { channels: [] }
  usExemptSms: { perDay: 1000, perWeek: 1000 }
inputs:
  - { name: ehr-mllp, type: hl7v2-mllp, host: 127.0.0.1, port: 0, plain: true, timezone: Europe/Paris }
  - { name: lab-mllp, type: hl7v2-mllp, host: 127.0.0.1, port: 0, plain: true, timezone: Europe/Paris }
  - { name: ehr-http, type: hl7v2-http, timezone: Europe/Paris }
outputs:
  - { name: outbox-sms, type: outbox, channel: sms }
  - { name: outbox-email, type: outbox, channel: email }
  - name: scheduling-hook
    type: webhook
    url: ${scheduling.url}
    secrets: [{ env: WEBHOOK_SECRET }]
    allowPrivateAddresses: [127.0.0.1]
    baa: true
  - name: crm-hook
    type: webhook
    url: ${crm.url}
    secrets: [{ env: WEBHOOK_SECRET }]
    allowPrivateAddresses: [127.0.0.1]
    receiverDedupes: false
    baa: true
`);
  const mappings = path.join(config.dir, 'mappings');
  mkdirSync(path.join(mappings, 'templates'), { recursive: true });
  writeFileSync(path.join(mappings, 'rules.yaml'), RULES);
  writeFileSync(path.join(mappings, 'templates', 'confirm.subject.liquid'), 'Your appointment is booked\n');
  writeFileSync(path.join(mappings, 'templates', 'confirm.text.liquid'), 'Hello {{ patient.name.given | first }}, see you on {{ appointment.start | local_date }}.\n');
  writeFileSync(path.join(mappings, 'templates', 'reminder.liquid'), 'Reminder: appointment tomorrow at {{ appointment.start | local_time }}.\n');
  writeFileSync(path.join(mappings, 'templates', 'reminder-friendly.liquid'), 'Hi {{ patient.name.given | first }}! See you tomorrow at {{ appointment.start | local_time }}.\n');

  const logs = captureLogger();
  const server = await startCarerelay({
    configDir: config.dir,
    env: { LEAD_TOKEN: TOKENS.lead, ONCALL_TOKEN: TOKENS.oncall, VIEWER_TOKEN: TOKENS.viewer, WEBHOOK_SECRET },
    log: logs,
    watchMappings: false,
  });
  const baseUrl = `http://127.0.0.1:${server.httpPort}`;
  const now = new Date();
  const bookings: Booking[] = [
    { controlId: 'SIU-240611-0001', appointmentId: 'AP-3101', patientId: 'E1001', name: 'MARTIN^Claire', inHours: 50, phone: '+33612345678', email: 'claire.martin@example.org' },
    { controlId: 'SIU-240611-0002', appointmentId: 'AP-3102', patientId: 'E1002', name: 'BERNARD^Louis', inHours: 28, phone: '+33623456789', email: 'louis.bernard@example.org', service: 'NEWPAT' },
    { controlId: 'SIU-240611-0003', appointmentId: 'AP-3103', patientId: 'E1003', name: 'DUBOIS^Emma', inHours: 74, phone: '+33634567890', email: 'emma.dubois@example.org' },
    { controlId: 'SIU-240611-0004', appointmentId: 'AP-3104', patientId: 'E1004', name: `${CANARY}^Hugo`, inHours: 98, phone: '+33645678901', email: 'hugo@example.org' },
    { controlId: 'SIU-240611-0005', appointmentId: 'AP-3105', patientId: 'E1005', name: 'ROBERT^Lea', inHours: 122, phone: '+33656789012', email: 'lea.robert@example.org' },
  ];
  // The scheduling system refuses its first two calls for good (400): two dead letters.
  scheduling.failNext({ kind: 'status', status: 400 }, 2);
  // The CRM answers 500 once: with no dedupe on its side, the delivery waits for review.
  crm.failNext({ kind: 'status', status: 500 }, 1);
  for (const b of bookings) {
    const code = await send(server, siu(b, now));
    if (code !== 'AA') throw new Error(`seed: ${b.controlId} got ${code}`);
    await server.deliveries.idle();
  }
  // Emma opts out of email; her next booking's confirmation is suppressed.
  await api(baseUrl, 'POST', '/api/patients/E1003/opt-outs', { channel: 'email' });
  await send(server, siu({ controlId: 'SIU-240611-0006', appointmentId: 'AP-3106', patientId: 'E1003', name: 'DUBOIS^Emma', inHours: 146, phone: '+33634567890', email: 'emma.dubois@example.org' }, now));
  // Lea cancels: her reminder is cancelled.
  await send(server, siu({ ...bookings[4]!, controlId: 'SIU-240611-0007', event: 'S15' }, now));
  // A message without a patient id: AR, kept for review.
  const rejected = siu({ controlId: 'SIU-240611-0008', appointmentId: 'AP-3108', patientId: '', name: 'PETIT^Jules', inHours: 30 }, now);
  if ((await send(server, rejected)) !== 'AR') throw new Error('seed: the message without a patient id was not rejected');
  // The same control id as the first booking with other bytes: quarantined.
  await send(server, siu({ ...bookings[0]!, inHours: 51 }, now));
  await server.deliveries.idle();

  const [booking] = await server.store.listMessages({ controlId: bookings[0]!.controlId, status: 'accepted' });
  const [rejectedMessage] = await server.store.listMessages({ status: 'rejected' });
  const failed = await server.store.listDeliveries({ status: 'failed' });
  return {
    server,
    config,
    logs: logs.lines,
    baseUrl,
    scheduling,
    crm,
    ids: {
      bookingControlId: bookings[0]!.controlId,
      bookingMessageId: booking!.id,
      optedOutPatient: 'E1003',
      canaryPatient: 'E1004',
      canaryControlId: bookings[3]!.controlId,
      rejectedMessageId: rejectedMessage!.id,
      deadLetters: failed.map((d) => d.delivery.id),
    },
    async stop() {
      await server.stop();
      await Promise.all([scheduling.close(), crm.close()]);
      config.remove();
    },
  };
}
