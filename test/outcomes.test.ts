// Outcomes (ROI) end to end, against the hand-computed fixture (fixtures/outcomes/README.md):
// 240 appointments booked over HTTP ingest, reminders sent (or cancelled) as the clock moves
// through the fortnight, then how each appointment ended (checked in, fulfilled, no-show,
// cancelled with its lead time). GET /api/outcomes must give the fixture's figures — counts,
// rates, Wilson intervals and Newcombe differences — and the CSV export no ids and no small cells.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { consentConfigDir, http } from './helpers/consent.ts';
import { captureLogger, hl7Time, type TestConfigDir } from './helpers/server.ts';

const FIXTURE = path.join(import.meta.dirname, '..', 'fixtures', 'outcomes');
const BOOKED_AT = Date.parse('2026-03-02T08:00:00Z');

interface Appointment {
  patient: string;
  appointment: string;
  start: string;
  reminder_arm: string;
  tips_arm: string;
  outcome: string;
  messages: string;
  cancel_lead_minutes: string;
}

function readAppointments(): Appointment[] {
  const [header, ...lines] = readFileSync(path.join(FIXTURE, 'appointments.csv'), 'utf8').trim().split('\n');
  const names = header!.split(',');
  return lines.map((line) => Object.fromEntries(line.split(',').map((v, i) => [names[i], v])) as unknown as Appointment);
}

const RULES = `rules:
  - id: reminder-24h
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: reminder, fields: [appointment.start] }
    at: appointment.start - 24h
    expires: appointment.start
    variants:
      - { id: short, weight: 1 }
      - { id: friendly, weight: 1, template: reminder-friendly }
  - id: prep-tips
    on: appointment.booked
    purpose: service.info
    channel: email
    send: { output: mail, template: tips, fields: [patient.language] }
    at: now
    holdout: 0.3
`;

/** An SIU for the fixture's patient: event, filler status (SCH-25) and when it happened (MSH-7). */
function siu(a: Appointment, controlId: string, event: string, status: string, at: number): string {
  const start = new Date(a.start);
  const end = new Date(start.getTime() + 30 * 60_000);
  return [
    `MSH|^~\\&|EPIC|NORTHCLINIC|CARERELAY|CR|${hl7Time(new Date(at))}||SIU^${event}^SIU_S12|${controlId}|P|2.5.1`,
    `SCH|PL-${a.appointment}|${a.appointment}||||NEW|CHK^Check-up^LOCAL||30|MIN|||||||||||||||${status}`,
    `TQ1|1||||||${hl7Time(start)}|${hl7Time(end)}`,
    `PID|1||${a.patient}^^^NORTHCLINIC^MR||DOE^Test||19600101|M|||||^PRN^CP^^1^555^0100${a.patient.slice(1)}~^NET^Internet^${a.patient.toLowerCase()}@example.org||ENG`,
    'AIL|1||CARDIO1^^^NORTHCLINIC',
  ].join('\r') + '\r';
}

/** What each appointment's sender says after the booking, and when (the fixture's `messages`). */
function outcomeMessages(a: Appointment): Array<{ at: number; text: string }> {
  const start = Date.parse(a.start);
  const id = a.appointment;
  const checkIn = { at: start - 10 * 60_000, text: siu(a, `I-${id}`, 'S14', 'Arrived', start - 10 * 60_000) };
  const fulfil = { at: start + 45 * 60_000, text: siu(a, `F-${id}`, 'S14', 'Complete', start + 45 * 60_000) };
  switch (a.messages) {
    case 'fulfilled':
      return [fulfil];
    case 'checked_in':
      return [checkIn];
    case 'checked_in+fulfilled':
      return [checkIn, fulfil];
    case 'noshow':
      return [{ at: start + 2 * 3_600_000, text: siu(a, `N-${id}`, 'S26', 'Noshow', start + 2 * 3_600_000) }];
    case 'cancelled': {
      const at = start - Number(a.cancel_lead_minutes) * 60_000;
      return [{ at, text: siu(a, `C-${id}`, 'S15', 'Cancelled', at) }];
    }
    default:
      throw new Error(`unknown fixture messages "${a.messages}"`);
  }
}

let config: TestConfigDir;
let server: RunningCarerelay;
let clock = BOOKED_AT;
const appointments = readAppointments();
const expected = JSON.parse(readFileSync(path.join(FIXTURE, 'expected.json'), 'utf8'));
const base = () => `http://127.0.0.1:${server.httpPort}`;

async function ingest(text: string): Promise<void> {
  const res = await fetch(`${base()}/ingest/hl7v2/ehr-http`, { method: 'POST', body: text, headers: { 'content-type': 'x-application/hl7-v2+er7' } });
  const ack = await res.text();
  if (!/\rMSA\|AA\|/.test(ack)) throw new Error(`not accepted: ${ack}`);
}

beforeAll(async () => {
  config = consentConfigDir({
    policy: ['  region: us', '  timezone: UTC', '  quietHours: { channels: [] }', '  usExemptSms: { perDay: 1000, perWeek: 1000 }'],
    outputs: ['{ name: sms, type: outbox, channel: sms, allowedPurposes: [care.logistics] }', '{ name: mail, type: outbox, channel: email, allowedPurposes: [service.info] }'],
    rules: RULES,
    templates: {
      'reminder.liquid': 'Reminder: {{ appointment.start | local_time }}\n',
      'reminder-friendly.liquid': 'We look forward to seeing you {{ appointment.start | local_time }}\n',
      'tips.subject.liquid': 'Before your visit',
      'tips.text.liquid': 'Tips. Unsubscribe: {{ unsubscribe_url }}\n',
    },
  });
  server = await startCarerelay({ configDir: config.dir, env: {}, log: captureLogger(), watchMappings: false, now: () => clock });
  // Every booking at once, then the fortnight in event order: what the senders say at each
  // instant, then whatever is due then (the 24 h reminders), so a cancellation 24 h ahead
  // beats its reminder and one a minute later does not.
  for (let i = 0; i < appointments.length; i += 24) {
    await Promise.all(appointments.slice(i, i + 24).map((a) => ingest(siu(a, `B-${a.appointment}`, 'S12', 'Booked', BOOKED_AT))));
  }
  await server.deliveries.idle();
  const events = new Map<number, string[]>();
  for (const a of appointments) {
    for (const m of outcomeMessages(a)) events.set(m.at, [...(events.get(m.at) ?? []), m.text]);
    const due = Date.parse(a.start) - 24 * 3_600_000;
    if (!events.has(due)) events.set(due, []);
  }
  for (const at of [...events.keys()].sort((x, y) => x - y)) {
    clock = at;
    for (const text of events.get(at)!) await ingest(text);
    await server.deliveries.router.idle();
    await server.deliveries.queue.poke();
    await server.deliveries.idle();
  }
}, 120_000);

afterAll(async () => {
  await server?.stop();
  config?.remove();
});

/** The fixture's figures of one arm, as the API gives them. */
function row(figures: any, rule: string, arm: string, comparedTo: string | null, period: string | null) {
  const holdout = arm === 'holdout';
  const close = (e: { value: number; low: number; high: number }) => ({ value: expect.closeTo(e.value, 10), low: expect.closeTo(e.low, 10), high: expect.closeTo(e.high, 10) });
  const rates = (f: any) => ({ showRate: close(f.showRate), noShowRate: close(f.noShowRate), advanceCancellationRate: close(f.advanceCancellationRate) });
  return {
    rule,
    variant: holdout || rule === 'prep-tips' ? null : arm,
    holdout,
    period,
    appointments: figures.appointments,
    sent: figures.sent,
    showed: figures.showed,
    noShows: figures.noShows,
    cancelledAdvance: figures.cancelledAdvance,
    cancelledLate: figures.cancelledLate,
    ...rates(figures),
    comparedTo: comparedTo === null ? null : { variant: comparedTo === 'holdout' ? null : comparedTo, holdout: comparedTo === 'holdout' },
    difference: figures.difference === null ? null : rates(figures.difference),
  };
}

describe('outcomes against the hand-computed fixture', () => {
  it('per rule and arm over the whole range: counts, rates with Wilson intervals, differences with Newcombe intervals', async () => {
    const res = await http(base(), 'GET', '/api/outcomes');
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({ period: null, advanceLeadHours: 24, confidence: 0.95 });
    expect(res.json.items).toEqual([
      row(expected['prep-tips'].holdout, 'prep-tips', 'holdout', null, null),
      row(expected['prep-tips'].sent, 'prep-tips', 'sent', 'holdout', null),
      row(expected['reminder-24h'].friendly, 'reminder-24h', 'friendly', null, null),
      row(expected['reminder-24h'].short, 'reminder-24h', 'short', 'friendly', null),
    ]);
  });

  it('per ISO week for one rule, and one variant', async () => {
    const weekly = await http(base(), 'GET', '/api/outcomes?rule=reminder-24h&period=week');
    const byWeek = expected['reminder-24h by week'];
    expect(weekly.json.items).toEqual([
      row(byWeek['2026-03-09'].friendly, 'reminder-24h', 'friendly', null, '2026-03-09'),
      row(byWeek['2026-03-09'].short, 'reminder-24h', 'short', 'friendly', '2026-03-09'),
      row(byWeek['2026-03-16'].friendly, 'reminder-24h', 'friendly', null, '2026-03-16'),
      row(byWeek['2026-03-16'].short, 'reminder-24h', 'short', 'friendly', '2026-03-16'),
    ]);
    const oneWeek = await http(base(), 'GET', '/api/outcomes?rule=reminder-24h&variant=short&from=2026-03-16&to=2026-03-22');
    expect(oneWeek.json.items).toEqual([row(byWeek['2026-03-16'].short, 'reminder-24h', 'short', 'friendly', null)]);
  });

  it('refuses a bad filter with the reason', async () => {
    expect((await http(base(), 'GET', '/api/outcomes?period=year')).json.detail).toMatch(/period must be one of day, week, month/);
    expect((await http(base(), 'GET', '/api/outcomes?from=03/01/2026')).json.detail).toMatch(/from must be a day, YYYY-MM-DD/);
    expect((await http(base(), 'GET', '/api/outcomes?patient=P0001')).status).toBe(400);
  });

  it('exports de-identified aggregates as CSV: no ids, counts of 1 to 10 withheld with a complement', async () => {
    const res = await http(base(), 'GET', '/api/outcomes.csv?rule=reminder-24h&period=week');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/csv/);
    expect(res.text).not.toMatch(/P0\d{3}|APT-|example\.org/);
    const [header, ...lines] = res.text.trim().split('\r\n');
    const columns = header!.split(',');
    const rows = lines.map((l) => Object.fromEntries(l.split(',').map((v, i) => [columns[i], v])));
    // Week of 9 March, friendly: 63 appointments, 44 showed, 3 no-shows, 11 advance and 5 late
    // cancellations, 52 sent. 3 and 5 are withheld (two small cells hide each other), and so are
    // their rates; 11 advance cancellations and 52 sent (11 not sent) are shown.
    const friendly = rows.find((r) => r.variant === 'friendly' && r.period === '2026-03-09')!;
    expect(friendly).toMatchObject({ appointments: '63', sent: '52', showed: '44', no_shows: '', cancelled_advance: '11', cancelled_late: '', no_show_rate: '', show_rate: '0.6984' });
    expect(friendly.withheld).toBe('cells of 1 to 10 withheld');
    // Week of 16 March, short: 58 appointments, 9 advance cancellations and 0 late ones: the 9 is
    // withheld, and since it alone could be recovered from the total, the smallest shown count
    // (12 no-shows) too; the zero stays.
    const short = rows.find((r) => r.variant === 'short' && r.period === '2026-03-16')!;
    expect(short).toMatchObject({ appointments: '58', showed: '37', no_shows: '', cancelled_advance: '', cancelled_late: '0', show_rate: '0.6379' });
    expect(short.show_rate_difference).toBe('-0.1363');
    // A difference needs both rates shown.
    expect(short.no_show_rate_difference).toBe('');
  });
});
