// Replies end to end over real sockets (mappings/README.md "Replies", docs/hl7-fhir.md
// "Write-back"): an SIU^S12 over MLLP plans the 24 h reminder, which goes to the Twilio stand-in
// asking for a reply; the patient's "1" comes in on the signed Twilio webhook; the confirmation is
// written back to a FHIR stand-in (found by the filler id, updated with If-Match) and the patient
// is thanked by a rule on appointment.confirmed. No log line names the patient, the number or
// what was written.
import { afterEach, beforeEach, expect, it } from 'vitest';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { twilioSignature } from '../src/twilio/signature.ts';
import { startFhirAppointmentStandIn, type AppointmentStandIn } from './helpers/appointment-standins.ts';
import { smsAndEhrConfigDir } from './helpers/consent.ts';
import { captureLogger, hl7Field, mllpExchange, siuMessage, type TestConfigDir } from './helpers/server.ts';
import { startTwilioStandIn, type TwilioStandIn } from './helpers/twilio-standin.ts';

const PHONE = '+33699887766';
const RULES = `rules:
  - id: sms-reminder-24h
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: reminder, fields: [appointment.start] }
    at: appointment.start - 24h
    reply:
      writeBack: ehr
      answers:
        - { action: confirm, words: ["1", "YES"] }
        - { action: cancel, words: ["2"] }
  - id: thanks
    on: appointment.confirmed
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: thanks, fields: [appointment.start] }
    at: now
`;

let clock: number;
let config: TestConfigDir;
let server: RunningCarerelay | undefined;
let twilio: TwilioStandIn;
let fhir: AppointmentStandIn;

beforeEach(async () => {
  clock = Date.parse('2030-03-15T13:30:00Z');
  [twilio, fhir] = await Promise.all([startTwilioStandIn(), startFhirAppointmentStandIn()]);
  config = smsAndEhrConfigDir({ twilio, fhir }, {
    rules: RULES,
    templates: {
      'reminder.liquid': 'Your visit tomorrow at {{ appointment.start | local_time }}. Reply 1 to confirm, 2 to cancel. Reply STOP to opt out.\n',
      'thanks.liquid': 'Thank you, your visit is confirmed.\n',
    },
  });
});
afterEach(async () => {
  await server?.stop();
  server = undefined;
  await Promise.all([twilio.close(), fhir.close()]);
  config.remove();
});

it('SIU^S12 in → the reminder at Twilio → "1" on the Twilio webhook → the FHIR Appointment updated with If-Match, and a thank-you', async () => {
  // The EHR's FHIR server holds the appointment the HL7 feed announces, its filler id an identifier.
  fhir.book('fhir-77', 'E200001', { value: 'A1' });
  const log = captureLogger();
  server = await startCarerelay({ configDir: config.dir, env: { TWILIO_AUTH_TOKEN: twilio.authToken, FHIR_TOKEN: fhir.token }, log, watchMappings: false, now: () => clock });
  const publicUrl = `http://127.0.0.1:${server.httpPort}`;

  const siu = siuMessage({ controlId: 'R-E2E-1', appointmentId: 'A1', start: new Date('2030-03-16T13:30:00Z') }).replace('|19600101|M', `|19600101|F|||||${PHONE}^PRN^CP`);
  expect(hl7Field((await mllpExchange(server.mllpPorts.get('ehr-mllp')!, siu))!, 'MSA', 1)).toBe('AA');
  await server.deliveries.idle();
  expect(twilio.messages).toEqual([expect.objectContaining({ to: PHONE, body: expect.stringContaining('Reply 1 to confirm') })]);
  expect(fhir.writes()).toEqual([]);

  // Her answer, signed as Twilio signs it.
  const hook = `${publicUrl}/hooks/sms/sms`;
  const params = { MessageSid: 'SMreply0001', AccountSid: twilio.accountSid, From: PHONE, To: '+15005550006', Body: ' 1 ' };
  const res = await fetch(hook, {
    method: 'POST',
    body: new URLSearchParams(params).toString(),
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': twilioSignature(twilio.authToken, hook, params) },
  });
  expect(res.status).toBe(200);
  // An answer gets no automatic reply in the webhook's answer: the thank-you is a rule's message.
  expect(await res.text()).not.toContain('<Message>');
  await server.deliveries.idle();

  // Written back: found by identifier, then a version-aware PUT of the patient participant accepted.
  expect(fhir.state('fhir-77')).toEqual({ confirmed: true, cancelled: false });
  const writes = fhir.writes();
  expect(writes.map((w) => [w.method, w.path, w.headers['if-match']])).toEqual([['PUT', '/fhir/Appointment/fhir-77', 'W/"1"']]);
  expect(writes[0]!.headers['content-type']).toMatch(/^application\/fhir\+json/);
  expect(await server.store.listStaffTasks({})).toEqual([]);

  // The thank-you, from the rule on appointment.confirmed.
  expect(twilio.messages.map((m) => m.body)).toEqual([expect.stringContaining('Reply 1 to confirm'), 'Thank you, your visit is confirmed.']);

  // A resend of the same SMS by Twilio changes nothing.
  const again = await fetch(hook, {
    method: 'POST',
    body: new URLSearchParams(params).toString(),
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': twilioSignature(twilio.authToken, hook, params) },
  });
  expect(again.status).toBe(200);
  await server.deliveries.idle();
  expect(fhir.writes()).toHaveLength(1);
  expect(twilio.messages).toHaveLength(2);

  expect(JSON.stringify(log.lines)).not.toMatch(/DOE|Test|Thank you|\+3369|33699887766|fhir-77|E200001/);
});
