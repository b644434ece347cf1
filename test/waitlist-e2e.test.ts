// The waitlist end to end over real sockets (docs/waitlist.md): two patients' later appointments
// come in as SIU^S12 over MLLP; an SIU^S15 frees an earlier slot of the same service and
// practitioner; both get the offer at the Twilio stand-in; the first signed "1" on the Twilio
// webhook books the slot at the FHIR stand-in (a conditional create), and only then is that
// patient's later appointment cancelled with pat-swl; the second patient's late "1" is told the slot
// is taken, and their appointment stands. No log line names a patient, a number or what was sent.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { twilioSignature } from '../src/twilio/signature.ts';
import { startFhirAppointmentStandIn, type AppointmentStandIn } from './helpers/appointment-standins.ts';
import { smsAndEhrConfigDir } from './helpers/consent.ts';
import { startSrrResponder, type SrrResponder } from './helpers/srr-responder.ts';
import { captureLogger, hl7Field, mllpExchange, siuMessage, type TestConfigDir } from './helpers/server.ts';
import { startTwilioStandIn, type TwilioStandIn } from './helpers/twilio-standin.ts';

const EARLY = '+33611111111';
const LATE = '+33622222222';
const RULES = `rules:
  - id: waitlist-offer
    on: appointment.waitlist_offered
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: offer, fields: [appointment.start] }
    at: now
    reply:
      answers:
        - { action: accept, words: ["1", "YES"] }
        - { action: decline, words: ["2"] }
  - id: waitlist-taken
    on: appointment.waitlist_taken
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: taken }
    at: now
  - id: waitlist-booked
    on: appointment.waitlist_accepted
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: booked, fields: [appointment.start] }
    at: now
`;
const WAITLIST = `waitlist:
  book: ehr
  minNoticeMinutes: 60
  waves: { size: 2, everyMinutes: 15, expiresMinutes: 30, stopMinutesBefore: 120 }
`;

let clock: number;
let config: TestConfigDir;
let server: RunningCarerelay | undefined;
let twilio: TwilioStandIn;
let fhir: AppointmentStandIn;

beforeEach(async () => {
  clock = Date.parse('2030-03-10T10:00:00Z');
  [twilio, fhir] = await Promise.all([startTwilioStandIn(), startFhirAppointmentStandIn()]);
  config = smsAndEhrConfigDir({ twilio, fhir }, {
    rules: RULES,
    templates: {
      'offer.liquid': 'An earlier visit is free on {{ appointment.start | local_time }}. Reply 1 to take it, 2 to keep yours.\n',
      'taken.liquid': 'Sorry, that visit has been taken. Your appointment stands.\n',
      'booked.liquid': 'Booked: your visit is now on {{ appointment.start | local_time }}.\n',
    },
  });
  writeFileSync(path.join(config.dir, 'connectors', 'waitlist.yaml'), WAITLIST);
});
afterEach(async () => {
  await server?.stop();
  server = undefined;
  await Promise.all([twilio.close(), fhir.close()]);
  config.remove();
});

function siu(o: { controlId: string; event?: string; appointmentId: string; patientId: string; start: string; phone?: string }): string {
  const text = siuMessage({ controlId: o.controlId, ...(o.event ? { event: o.event } : {}), appointmentId: o.appointmentId, patientId: o.patientId, start: new Date(o.start) });
  return o.phone ? text.replace('|19600101|M', `|19600101|F|||||${o.phone}^PRN^CP`) : text;
}

async function answer(publicUrl: string, from: string, sid: string, body: string): Promise<number> {
  const hook = `${publicUrl}/hooks/sms/sms`;
  const params = { MessageSid: sid, AccountSid: twilio.accountSid, From: from, To: '+15005550006', Body: body };
  const res = await fetch(hook, {
    method: 'POST',
    body: new URLSearchParams(params).toString(),
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': twilioSignature(twilio.authToken, hook, params) },
  });
  await res.text();
  return res.status;
}

it('SIU^S15 frees a slot → offers by SMS → the first "1" books it at the FHIR server, then cancels the later appointment (pat-swl) → a late "1" is told it is taken', async () => {
  // The EHR's FHIR server holds the two later appointments the feed announces (filler ids as identifiers).
  fhir.book('fhir-late-1', 'E300001', { value: 'LATE-1' });
  fhir.book('fhir-late-2', 'E300002', { value: 'LATE-2' });
  const log = captureLogger();
  server = await startCarerelay({ configDir: config.dir, env: { TWILIO_AUTH_TOKEN: twilio.authToken, FHIR_TOKEN: fhir.token }, log, watchMappings: false, now: () => clock });
  const port = server.mllpPorts.get('ehr-mllp')!;
  const publicUrl = `http://127.0.0.1:${server.httpPort}`;

  // Two later appointments of the same service (CHK) with the same practitioner (DR-22), and the one that will free.
  for (const m of [
    siu({ controlId: 'W-1', appointmentId: 'LATE-1', patientId: 'E300001', start: '2030-04-20T09:00:00Z', phone: EARLY }),
    siu({ controlId: 'W-2', appointmentId: 'LATE-2', patientId: 'E300002', start: '2030-04-10T09:00:00Z', phone: LATE }),
    siu({ controlId: 'W-3', appointmentId: 'FREE-1', patientId: 'E300009', start: '2030-03-12T09:00:00Z' }),
  ]) {
    expect(hl7Field((await mllpExchange(port, m))!, 'MSA', 1)).toBe('AA');
  }
  await server.deliveries.idle();
  expect(twilio.messages).toEqual([]);

  // The cancellation frees the slot: one wave of two offers, latest appointment first.
  expect(hl7Field((await mllpExchange(port, siu({ controlId: 'W-4', event: 'S15', appointmentId: 'FREE-1', patientId: 'E300009', start: '2030-03-12T09:00:00Z' })))!, 'MSA', 1)).toBe('AA');
  await server.deliveries.idle();
  expect(twilio.messages.map((m) => m.to).sort()).toEqual([EARLY, LATE].sort());
  expect(twilio.messages[0]!.body).toContain('Reply 1 to take it');
  expect(fhir.creates()).toEqual([]);

  // The patient of LATE-2 answers first: the slot is booked for them…
  expect(await answer(publicUrl, LATE, 'SMwl0001', '1')).toBe(200);
  await server.deliveries.idle();
  const creates = fhir.creates();
  expect(creates).toHaveLength(1);
  const made = JSON.parse(creates[0]!.text) as { status: string; start: string; participant: Array<{ actor: { type?: string; identifier?: { value: string } } }> };
  expect(made).toMatchObject({ status: 'booked', start: '2030-03-12T09:00:00+00:00' });
  expect(made.participant[0]!.actor).toEqual({ type: 'Patient', identifier: { value: 'E300002' } });
  expect(creates[0]!.headers['if-none-exist']).toMatch(/^identifier=urn%3Acarerelay%3Awaitlist-booking%7Cwl~wl-/);
  // …and only then is their later appointment cancelled, Scheduled from Wait List.
  expect(fhir.state('fhir-late-2')).toEqual({ confirmed: false, cancelled: true, cancelReason: 'pat-swl' });
  const order = fhir.http.requests.filter((r) => r.method === 'POST' || r.method === 'PUT').map((r) => `${r.method} ${r.path}`);
  expect(order).toEqual(['POST /fhir/Appointment', 'PUT /fhir/Appointment/fhir-late-2']);
  expect(twilio.messages.filter((m) => m.to === LATE).map((m) => m.body)).toEqual([expect.stringContaining('Reply 1'), expect.stringContaining('Booked: your visit')]);

  // The other patient's yes comes too late: told the slot is taken; their appointment stands.
  expect(await answer(publicUrl, EARLY, 'SMwl0002', 'yes')).toBe(200);
  await server.deliveries.idle();
  expect(fhir.creates()).toHaveLength(1);
  expect(fhir.state('fhir-late-1')).toEqual({ confirmed: false, cancelled: false });
  expect(twilio.messages.filter((m) => m.to === EARLY).map((m) => m.body)).toEqual([expect.stringContaining('Reply 1'), 'Sorry, that visit has been taken. Your appointment stands.']);
  expect(await server.store.listStaffTasks({})).toEqual([]);

  // The outcomes view counts it: one slot, two offers, one booked, ten days sooner.
  const outcomes = await fetch(`${publicUrl}/api/outcomes?from=2030-03-01&to=2030-03-31`);
  const body = (await outcomes.json()) as { waitlist?: unknown };
  expect(body.waitlist).toMatchObject({ slotsFreed: 1, offers: 2, accepted: 1, booked: 1, daysGained: { total: 29 } });

  expect(JSON.stringify(log.lines)).not.toMatch(/DOE|Test|\+336|33611111111|33622222222|E30000|Sorry|Booked/);
});

// The same scenario booked the two other ways a scheduling system takes a booking: the
// Argonaut Scheduling Appointment/$book operation on the FHIR stand-in, and SRM^S01 over MLLP to
// the SRR responder (a scheduling system behind an interface engine), which then also takes the
// cancellation of the later appointment as SRM^S04.
describe('booking styles', () => {
  let srr: SrrResponder;
  afterEach(async () => srr?.close());

  /** The later appointments, the freed slot, the offers, and the first "1" (from LATE's patient). */
  async function offerAndAccept(book: string): Promise<{ publicUrl: string }> {
    writeFileSync(path.join(config.dir, 'connectors', 'waitlist.yaml'), WAITLIST.replace('book: ehr', `book: ${book}`));
    server = await startCarerelay({ configDir: config.dir, env: { TWILIO_AUTH_TOKEN: twilio.authToken, FHIR_TOKEN: fhir.token }, log: captureLogger(), watchMappings: false, now: () => clock });
    const port = server.mllpPorts.get('ehr-mllp')!;
    const publicUrl = `http://127.0.0.1:${server.httpPort}`;
    for (const m of [
      siu({ controlId: 'B-1', appointmentId: 'LATE-1', patientId: 'E300001', start: '2030-04-20T09:00:00Z', phone: EARLY }),
      siu({ controlId: 'B-2', appointmentId: 'LATE-2', patientId: 'E300002', start: '2030-04-10T09:00:00Z', phone: LATE }),
      siu({ controlId: 'B-3', event: 'S15', appointmentId: 'FREE-1', patientId: 'E300009', start: '2030-03-12T09:00:00Z' }),
    ]) {
      expect(hl7Field((await mllpExchange(port, m))!, 'MSA', 1)).toBe('AA');
    }
    await server.deliveries.idle();
    expect(twilio.messages.map((m) => m.to).sort()).toEqual([EARLY, LATE].sort());
    expect(await answer(publicUrl, LATE, 'SMbk0001', '1')).toBe(200);
    await server.deliveries.idle();
    return { publicUrl };
  }

  it('$book: the slot is booked with Appointment/$book, then the later appointment is cancelled (pat-swl)', async () => {
    fhir.book('fhir-late-2', 'E300002', { value: 'LATE-2' });
    writeFileSync(
      path.join(config.dir, 'connectors', 'book.yaml'),
      `outputs:\n  - { name: ehr-book, type: fhir-appointment, book: $book, appointments: identifier, server: { baseUrl: "${fhir.baseUrl}", auth: { bearer: { token: { env: FHIR_TOKEN } } } } }\n`,
    );
    await offerAndAccept('ehr-book');
    expect(fhir.creates()).toEqual([]);
    const [call] = fhir.bookings();
    const appt = (JSON.parse(call!.text) as { parameter: Array<{ name: string; resource?: { status: string; start: string; participant: Array<{ actor: unknown }> } }> }).parameter[0]!.resource!;
    expect(appt).toMatchObject({ status: 'proposed', start: '2030-03-12T09:00:00+00:00' });
    expect(appt.participant[0]!.actor).toEqual({ type: 'Patient', identifier: { value: 'E300002' } });
    expect(fhir.appointments.get('booked-1')).toMatchObject({ status: 'booked' });
    expect(fhir.state('fhir-late-2')).toEqual({ confirmed: false, cancelled: true, cancelReason: 'pat-swl' });
    const order = fhir.http.requests.filter((r) => r.method === 'POST' || r.method === 'PUT').map((r) => `${r.method} ${r.path}`);
    expect(order).toEqual(['POST /fhir/Appointment/$book', 'PUT /fhir/Appointment/fhir-late-2']);
    expect(await server!.store.listStaffTasks({})).toEqual([]);
  });

  it('SRM^S01: the slot is booked over MLLP (SRR AA with the filler id), then the later appointment is cancelled with SRM^S04 (pat-swl)', async () => {
    srr = await startSrrResponder();
    srr.offer('20300312090000+0000');
    srr.appointments.set('LATE-2', { confirmed: false, cancelled: false });
    writeFileSync(
      path.join(config.dir, 'connectors', 'srm.yaml'),
      `outputs:\n  - { name: sched, type: hl7v2-srm, host: 127.0.0.1, port: ${srr.port}, receivingApplication: SCHED, receivingFacility: HOSP, patientAssigningAuthority: NORTHCLINIC }\n`,
    );
    const { publicUrl } = await offerAndAccept('sched');
    expect(srr.received.map((r) => `${r.type} ${r.answered}`)).toEqual(['SRM^S01^SRM_S01 AA', 'SRM^S04^SRM_S01 AA']);
    expect(srr.booked).toEqual([expect.objectContaining({ filler: 'FILL-1', start: '20300312090000+0000', patient: 'E300002^^^NORTHCLINIC^MR', practitioner: expect.stringMatching(/^DR-22/) })]);
    expect(srr.received[1]!.arq).toMatchObject({ 1: 'PL-LATE-2', 2: 'LATE-2' });
    expect(srr.appointments.get('LATE-2')).toMatchObject({ cancelled: true, cancelReason: 'pat-swl' });
    expect(fhir.http.requests).toEqual([]);
    expect(await server!.store.listStaffTasks({})).toEqual([]);
    const outcomes = (await (await fetch(`${publicUrl}/api/outcomes?from=2030-03-01&to=2030-03-31`)).json()) as { waitlist?: unknown };
    expect(outcomes.waitlist).toMatchObject({ booked: 1 });
  });

  it('SRM^S01 answered AE (the filler no longer has the slot): nothing is cancelled, a staff task says why', async () => {
    srr = await startSrrResponder();
    srr.appointments.set('LATE-2', { confirmed: false, cancelled: false });
    writeFileSync(path.join(config.dir, 'connectors', 'srm.yaml'), `outputs:\n  - { name: sched, type: hl7v2-srm, host: 127.0.0.1, port: ${srr.port}, receivingApplication: SCHED, receivingFacility: HOSP }\n`);
    await offerAndAccept('sched');
    expect(srr.received.map((r) => `${r.type} ${r.answered}`)).toEqual(['SRM^S01^SRM_S01 AE']);
    expect(srr.appointments.get('LATE-2')).toMatchObject({ cancelled: false });
    expect((await server!.store.listStaffTasks({})).map((t) => [t.kind, t.code])).toEqual([['waitlist_booking_failed', 'hl7_ae']]);
  });
});
