// End to end over real sockets, every real adapter at once: an SIU^S12 over MLLP books an
// appointment; the confirmation email reaches a real SMTP server (STARTTLS, AUTH) and a signed
// webhook the sink at once; the clock is moved to the day before and the reminder SMS reaches
// the Twilio stand-in while a FHIR Communication records it on the FHIR test server; Twilio's
// status callback (signed, posted by the stand-in to CareRelay's hook) marks the SMS delivered.
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, expect, it } from 'vitest';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { makeTestPki, type TestPki } from './helpers/certs.ts';
import { startFhirTestServer, type FhirTestServer } from './helpers/fhir-server.ts';
import { captureLogger, hl7Field, mllpExchange, siuMessage, writeConfigDir, type TestConfigDir } from './helpers/server.ts';
import { startSmtpServer, type TestSmtpServer } from './helpers/smtp.ts';
import { startTwilioStandIn, type TwilioStandIn } from './helpers/twilio-standin.ts';
import { startWebhookSink, type WebhookSink } from './helpers/webhook-sink.ts';

const WEBHOOK_SECRET = `whsec_${Buffer.alloc(32, 9).toString('base64')}`;
const START = new Date('2030-03-16T13:30:00Z');

const RULES = `rules:
  - id: confirm-email
    on: appointment.booked
    purpose: care.logistics
    channel: email
    send: { output: mail, template: confirm, fields: [patient.name.given, appointment.start] }
    at: now
  - id: scheduling-sync
    on: appointment.booked
    purpose: care.logistics
    channel: webhook
    send: { output: scheduling, fields: [appointment.id, appointment.start] }
    at: now
  - id: sms-reminder
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: reminder, fields: [appointment.start] }
    at: appointment.start - 24h
    expires: appointment.start - 2h
  - id: reminder-writeback
    on: appointment.booked
    purpose: care.logistics
    channel: fhir
    send: { output: ehr, fields: [] }
    at: appointment.start - 24h
`;

let pki: TestPki;
let config: TestConfigDir;
let smtp: TestSmtpServer;
let twilio: TwilioStandIn;
let sink: WebhookSink;
let fhir: FhirTestServer;
let server: RunningCarerelay | undefined;
let clock: number;

beforeAll(() => {
  config = writeConfigDir();
  pki = makeTestPki(path.join(config.dir, 'pki'));
});
afterAll(() => config.remove());

beforeEach(async () => {
  clock = Date.parse('2030-03-01T09:15:00Z');
  smtp = await startSmtpServer(pki);
  twilio = await startTwilioStandIn();
  sink = await startWebhookSink({ secrets: [WEBHOOK_SECRET], now: () => clock });
  fhir = await startFhirTestServer();
});
afterEach(async () => {
  await server?.stop();
  server = undefined;
  await Promise.all([smtp.close(), twilio.close(), sink.close(), fhir.close()]);
});

/** A port nobody listens on now (the callback URL must be known before the server starts). */
function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

function writeConfig(httpPort: number): void {
  const file = path.join(config.dir, 'connectors', 'test.yaml');
  writeFileSync(
    file,
    `server:
  http: { host: 127.0.0.1, port: ${httpPort} }
  dataDir: ${JSON.stringify(config.dataDir)}
  admin: {}
inputs:
  - { name: ehr-mllp, type: hl7v2-mllp, host: 127.0.0.1, port: 0, plain: true, timezone: UTC }
outputs:
  - name: mail
    type: smtp
    host: 127.0.0.1
    port: ${smtp.port}
    security: starttls
    auth: { user: ${smtp.user}, pass: { env: SMTP_PASS } }
    tls: { ca: { file: ${JSON.stringify(pki.ca.certPath)} }, servername: localhost }
    from: "North Clinic <appointments@northclinic.example.org>"
    baa: true
  - name: scheduling
    type: webhook
    url: ${sink.url}
    secrets: [{ env: WEBHOOK_SECRET }]
    allowPrivateAddresses: [127.0.0.1]
    baa: true
  - name: sms
    type: twilio
    accountSid: ${twilio.accountSid}
    authToken: { env: TWILIO_AUTH_TOKEN }
    from: "+15005550006"
    apiBaseUrl: ${twilio.baseUrl}
    statusCallback: { baseUrl: "http://127.0.0.1:${httpPort}" }
    baa: true
  - name: ehr
    type: fhir-communication
    server: { baseUrl: ${fhir.baseUrl} }
    category: reminder
    baa: true
`,
  );
  const mappings = path.join(config.dir, 'mappings');
  mkdirSync(path.join(mappings, 'templates'), { recursive: true });
  writeFileSync(path.join(mappings, 'rules.yaml'), RULES);
  writeFileSync(path.join(mappings, 'templates', 'confirm.subject.liquid'), 'Your appointment is booked\n');
  writeFileSync(path.join(mappings, 'templates', 'confirm.text.liquid'), 'Hello {{ patient.name.given | first }}, see you {{ appointment.start | local_date }}.\n');
  writeFileSync(path.join(mappings, 'templates', 'confirm.html.liquid'), '<p>Hello {{ patient.name.given | first }}</p>\n');
  writeFileSync(path.join(mappings, 'templates', 'reminder.liquid'), 'Reminder: see you tomorrow at {{ appointment.start | local_time }}\n');
}

it('MLLP SIU^S12 in: email, signed webhook, then SMS and a FHIR Communication the day before; the callback marks the SMS delivered', async () => {
  const httpPort = await freePort();
  writeConfig(httpPort);
  const log = captureLogger();
  server = await startCarerelay({
    configDir: config.dir,
    env: { SMTP_PASS: smtp.pass, WEBHOOK_SECRET, TWILIO_AUTH_TOKEN: twilio.authToken },
    log,
    watchMappings: false,
    now: () => clock,
  });
  const telecom = '|19600101|M|||||+15005550006^PRN^CP~^NET^Internet^test.doe@patients.example.org';
  const ack = await mllpExchange(server.mllpPorts.get('ehr-mllp')!, siuMessage({ controlId: 'E2E1', appointmentId: 'A1', start: START }).replace('|19600101|M', telecom));
  expect(hl7Field(ack!, 'MSA', 1)).toBe('AA');
  await server.deliveries.idle();

  // At once: the confirmation email and the webhook.
  expect(smtp.received).toHaveLength(1);
  expect(smtp.received[0]).toMatchObject({ to: ['test.doe@patients.example.org'], from: 'appointments@northclinic.example.org' });
  expect(smtp.received[0]!.parsed.text).toContain('Hello Test, see you');
  expect(sink.requests).toEqual([expect.objectContaining({ id: 'scheduling-sync@appointment/A1#0', signed: true, status: 204 })]);
  expect(JSON.parse(sink.requests[0]!.body)).toEqual({
    type: 'carerelay.delivery',
    deliveryId: 'scheduling-sync@appointment/A1#0',
    rule: 'scheduling-sync',
    purpose: 'care.logistics',
    fields: { appointment: { id: 'A1', start: '2030-03-16T13:30:00+00:00' } },
  });
  expect(twilio.messages).toHaveLength(0);

  // The day before: the reminder SMS and its record on the EHR.
  clock = Date.parse('2030-03-15T13:30:00Z');
  await server.deliveries.queue.poke();
  await server.deliveries.idle();
  expect(twilio.messages).toEqual([
    expect.objectContaining({
      to: '+15005550006',
      // Luxon's time format may put a narrow no-break space before PM (ICU data).
      body: expect.stringMatching(/^Reminder: see you tomorrow at 1:30\sPM$/),
      validityPeriod: 36_000,
      statusCallback: `http://127.0.0.1:${httpPort}/hooks/twilio/status/sms`,
    }),
  ]);
  const sms = await server.store.getDelivery('sms-reminder@appointment/A1#0');
  expect(sms).toMatchObject({ status: 'sent', providerId: twilio.messages[0]!.sid });
  const communication = fhir.get('Communication', '1');
  expect(communication).toMatchObject({
    status: 'completed',
    identifier: [{ value: 'reminder-writeback@appointment/A1#0' }],
    subject: { reference: 'Patient/E200001' },
    about: [{ reference: 'Appointment/A1' }],
    sent: '2030-03-15T13:30:00.000Z',
  });

  // Twilio reports delivery; a repeat of the same callback changes nothing.
  expect(await twilio.sendStatus(twilio.messages[0]!.sid, 'sent')).toBe(204);
  expect(await twilio.sendStatus(twilio.messages[0]!.sid, 'delivered')).toBe(204);
  expect(await twilio.sendStatus(twilio.messages[0]!.sid, 'delivered')).toBe(204);
  expect(await twilio.sendStatus(twilio.messages[0]!.sid, 'delivered', { signWith: 'f'.repeat(32) })).toBe(401);
  const receipts = await server.store.listDeliveryReceipts({ deliveryId: 'sms-reminder@appointment/A1#0' });
  expect(receipts.map((r) => r.status)).toEqual(['sending', 'accepted', 'sent', 'delivered']);

  // Nothing of the patient in the logs.
  expect(JSON.stringify(log.lines)).not.toMatch(/DOE|Test|patients\.example|\+1500555/);
});
