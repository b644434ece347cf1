import { describe, expect, it } from 'vitest';
import { parseHl7 } from '../../hl7v2/parse.ts';
import type { SubjectState } from '../../store/store.ts';
import { hasPatient, type PatientTrigger, type Trigger } from '../../types.ts';
import { applyStoredState, normalizeHl7, scheduledMinutes, type Hl7Normalized, type Hl7StateLookup } from './normalize.ts';

const CTX = { receivedAt: '2026-01-01T00:00:00+00:00', timezone: 'UTC' };

/** Builds a CR-separated message; each argument is one segment. */
function hl7(...segments: string[]): string {
  return segments.join('\r');
}

function run(text: string, ctx = CTX): Hl7Normalized {
  return normalizeHl7(parseHl7(Buffer.from(text, 'latin1')), ctx);
}

function triggersOf(result: Hl7Normalized): Trigger[] {
  if (result.kind !== 'triggers') throw new Error(`expected triggers, got ${JSON.stringify(result)}`);
  return result.triggers;
}

function only(result: Hl7Normalized): PatientTrigger {
  const triggers = triggersOf(result);
  expect(triggers).toHaveLength(1);
  const t = triggers[0]!;
  if (!hasPatient(t)) throw new Error(`expected a trigger about a patient, got ${t.type}`);
  return t;
}

const PID = 'PID|1||E200001^^^NORTHCLINIC^MR||BERNARD^Paul||19600101|M';

function siu(event: string, opts: { msh7?: string; id?: string; start?: string; sch25?: string; ais10?: string; ail12?: string; aip12?: string; sch9?: string; sch10?: string } = {}): string {
  const sch = ['SCH', 'PL-1', 'AP-1', '', '', '', '', 'CHK^Check-up^LOCAL', '', opts.sch9 ?? '', opts.sch10 ?? ''];
  while (sch.length < 25) sch.push('');
  sch.push(opts.sch25 ?? '');
  return hl7(
    `MSH|^~\\&|EPIC|NC|CR|CR|${opts.msh7 ?? '20260305091000+0100'}||SIU^${event}^SIU_S12|${opts.id ?? 'M-1'}|P|2.5.1`,
    sch.join('|'),
    `TQ1|1||||||${opts.start ?? '20260317100000+0100'}|`,
    PID,
    'RGS|1',
    `AIS|1||CHK^Check-up^LOCAL|||||||${opts.ais10 ?? ''}`,
    `AIL|1||ROOM1^^^NC|||||||||${opts.ail12 ?? ''}`,
    `AIP|1||DR-1^DOE^John|||||||||${opts.aip12 ?? ''}`,
  );
}

function stored(over: Partial<SubjectState> = {}): SubjectState {
  return {
    kind: 'appointment',
    id: 'AP-1',
    patientId: 'E200001',
    status: 'booked',
    start: '2026-03-16T14:30:00+01:00',
    end: '2026-03-16T15:00:00+01:00',
    asOf: '2026-03-01T10:15:00+01:00',
    ...over,
  };
}

function lookupOf(states: SubjectState[]): Hl7StateLookup {
  return {
    appointment: (id) => states.find((s) => s.kind === 'appointment' && s.id === id),
    appointmentsOfPatient: (patientId) => states.filter((s) => s.kind === 'appointment' && s.patientId === patientId),
    encounter: (id) => states.find((s) => s.kind === 'encounter' && s.id === id),
  };
}

describe('filler status sources', () => {
  it('reads SCH-25 first, then the first AIS-10, then AIL-12, then AIP-12', () => {
    expect(only(run(siu('S14', { sch25: 'Complete', ais10: 'ARRIVED' }))).type).toBe('appointment.fulfilled');
    expect(only(run(siu('S14', { ais10: 'ARRIVED', ail12: 'Booked' }))).type).toBe('appointment.checked_in');
    expect(only(run(siu('S14', { ail12: 'Cancelled', aip12: 'Booked' }))).type).toBe('appointment.cancelled');
    expect(only(run(siu('S14', { aip12: 'Noshow' }))).type).toBe('appointment.noshow');
    const arrived = only(run(siu('S14', { ais10: 'Checked In' })));
    expect(arrived.type).toBe('appointment.checked_in');
    expect(arrived.appointment?.status).toBe('checked-in');
  });

  it('a Waitlist filler status (table 0278): status waitlist, and the TQ1-7…TQ1-8 timing as given is the requested period', () => {
    const text = siu('S12', { sch25: 'Waitlist' }).replace(/\rTQ1\|[^\r]*/, '\rTQ1|1||||||20260317080000+0100|20260320180000+0100');
    expect(only(run(text)).appointment).toMatchObject({ status: 'waitlist', requestedPeriod: [{ start: '2026-03-17T08:00:00+01:00', end: '2026-03-20T18:00:00+01:00' }] });
    // Only the end the sender gave: a start with a duration is no window.
    expect(only(run(siu('S14', { sch25: 'Wait list', sch9: '30', sch10: 'MIN' }))).appointment).toMatchObject({ status: 'waitlist', requestedPeriod: [{ start: '2026-03-17T10:00:00+01:00' }] });
    expect(only(run(siu('S12'))).appointment?.requestedPeriod).toBeUndefined();
  });

  it('takes the type from MSH-9, never from EVN-1', () => {
    const text = siu('S15', { sch25: 'Cancelled' }).replace('\rSCH|', '\rEVN|S12|20260305091000+0100\rSCH|');
    expect(only(run(text)).type).toBe('appointment.cancelled');
  });
});

describe('stored state: reschedule (server only)', () => {
  it('stateless, an S14 with no status change is modified and has no previousStart', () => {
    const t = only(run(siu('S14', { sch25: 'Booked' })));
    expect(t.type).toBe('appointment.modified');
    expect(t.appointment?.previousStart).toBeUndefined();
  });

  it('an S14 whose start differs from the stored one becomes rescheduled with previousStart and a new id', () => {
    const plain = run(siu('S14', { sch25: 'Booked' }));
    const applied = applyStoredState(plain, lookupOf([stored()]));
    const t = only(applied);
    expect(t.type).toBe('appointment.rescheduled');
    expect(t.appointment?.previousStart).toBe('2026-03-16T14:30:00+01:00');
    expect(t.appointment?.start).toBe('2026-03-17T10:00:00+01:00');
    expect(t.id).not.toBe(only(plain).id);
    // Deterministic: the same message with the same stored state gives the same id.
    expect(only(applyStoredState(run(siu('S14', { sch25: 'Booked' })), lookupOf([stored()]))).id).toBe(t.id);
  });

  it('an S14 Booked for an appointment stored on the waitlist is booked (taken off the waitlist), a new time or not', () => {
    const onWaitlist = lookupOf([stored({ status: 'waitlist' })]);
    const t = only(applyStoredState(run(siu('S14', { sch25: 'Booked' })), onWaitlist));
    expect(t.type).toBe('appointment.booked');
    expect(t.appointment).toMatchObject({ status: 'booked', start: '2026-03-17T10:00:00+01:00' });
    expect(t.appointment?.previousStart).toBeUndefined();
    // Still waiting (another S14 Waitlist), or already booked: no new booking.
    expect(only(applyStoredState(run(siu('S14', { sch25: 'Waitlist' })), onWaitlist)).type).not.toBe('appointment.booked');
    expect(only(applyStoredState(run(siu('S14', { sch25: 'Booked' })), lookupOf([stored({ status: 'booked', start: '2026-03-17T10:00:00+01:00' })]))).type).toBe('appointment.modified');
  });

  it('the same instant written at another offset is not a new time', () => {
    const applied = applyStoredState(run(siu('S14', { sch25: 'Booked' })), lookupOf([stored({ start: '2026-03-17T09:00:00+00:00' })]));
    expect(only(applied).type).toBe('appointment.modified');
  });

  it('a status from the filler still wins over a new time (S14 ARRIVED stays checked_in)', () => {
    const applied = applyStoredState(run(siu('S14', { sch25: 'ARRIVED' })), lookupOf([stored()]));
    expect(only(applied).type).toBe('appointment.checked_in');
    expect(only(applied).appointment?.previousStart).toBeUndefined();
  });

  it('an S13 gets previousStart from the stored state', () => {
    const applied = applyStoredState(run(siu('S13', { sch25: 'Booked' })), lookupOf([stored()]));
    expect(only(applied).type).toBe('appointment.rescheduled');
    expect(only(applied).appointment?.previousStart).toBe('2026-03-16T14:30:00+01:00');
  });

  it('an S12 for a known appointment stays booked (rules replan, docs/trigger.md)', () => {
    expect(only(applyStoredState(run(siu('S12', { sch25: 'Booked' })), lookupOf([stored()]))).type).toBe('appointment.booked');
  });

  it('a message without a status keeps the stored status, in the trigger and in the state', () => {
    const applied = applyStoredState(run(siu('S14')), lookupOf([stored({ start: '2026-03-17T10:00:00+01:00', status: 'pending' })]));
    expect(only(applied).appointment?.status).toBe('pending');
    if (applied.kind === 'triggers') expect(applied.states[0]?.status).toBe('pending');
  });

  it('out of order: a stored state newer than the message is not compared with (no reschedule, no carried status)', () => {
    // The stored state comes from an event at 12:00 on 03-06; this S14 happened on 03-05.
    const newer = stored({ asOf: '2026-03-06T12:00:00+01:00', start: '2026-03-20T08:00:00+01:00', status: 'pending' });
    const plain = run(siu('S14'));
    const applied = applyStoredState(plain, lookupOf([newer]));
    const t = only(applied);
    expect(t.type).toBe('appointment.modified');
    expect(t.appointment?.previousStart).toBeUndefined();
    expect(t.appointment?.status).toBeUndefined();
    // The state returned keeps the message's own asOf, so the store (which keeps the newest
    // asOf) will not roll the appointment back.
    if (applied.kind === 'triggers') expect(applied.states[0]?.asOf).toBe('2026-03-05T09:10:00+01:00');
    // The same instant as asOf is not "newer": equal asOf is compared with.
    const same = stored({ asOf: '2026-03-05T09:10:00+01:00' });
    expect(only(applyStoredState(run(siu('S14')), lookupOf([same]))).type).toBe('appointment.rescheduled');
  });

  it('the stateless state carries status, start, end, patient and asOf = occurredAt', () => {
    const r = run(siu('S12', { sch25: 'Booked' }));
    expect(r.kind === 'triggers' && r.states).toEqual([
      {
        kind: 'appointment',
        id: 'AP-1',
        patientId: 'E200001',
        status: 'booked',
        start: '2026-03-17T10:00:00+01:00',
        asOf: '2026-03-05T09:10:00+01:00',
        data: { serviceType: 'LOCAL|CHK', locationId: 'ROOM1', practitionerId: 'DR-1' },
      },
    ]);
  });
});

describe('stored state: A04/A10 arrival → appointment.checked_in', () => {
  const a04 = (evn2: string, klass = 'O') =>
    hl7(
      'MSH|^~\\&|EPIC|NC|CR|CR|20260317094500+0100||ADT^A04^ADT_A01|A04-1|P|2.5.1',
      `EVN|A04|${evn2}`,
      PID,
      `PV1|1|${klass}|ROOM1^^^NC||||||||||||||||V-1`,
    );

  it('adds checked_in for the stored appointment starting within two hours, with status arrived', () => {
    const applied = applyStoredState(run(a04('20260317094000+0100')), lookupOf([stored({ start: '2026-03-17T10:00:00+01:00' })]));
    const triggers = triggersOf(applied);
    expect(triggers.map((t) => t.type)).toEqual(['encounter.started', 'appointment.checked_in']);
    expect(triggers[1]!.appointment).toEqual({ id: 'AP-1', status: 'arrived', start: '2026-03-17T10:00:00+01:00', end: '2026-03-16T15:00:00+01:00' });
    expect(triggers[1]!.patient!.id).toBe('E200001');
    expect(triggers[1]!.id).not.toBe(triggers[0]!.id);
    if (applied.kind === 'triggers') {
      expect(applied.states.find((s) => s.kind === 'appointment')).toMatchObject({ id: 'AP-1', status: 'arrived', asOf: '2026-03-17T09:40:00+01:00' });
    }
  });

  it('ignores appointments more than two hours away, closed ones, and pre-registrations', () => {
    const far = stored({ id: 'FAR', start: '2026-03-17T12:41:00+01:00' });
    const cancelled = stored({ id: 'CANC', start: '2026-03-17T10:00:00+01:00', status: 'cancelled' });
    expect(triggersOf(applyStoredState(run(a04('20260317104000+0100')), lookupOf([far, cancelled]))).map((t) => t.type)).toEqual(['encounter.started']);
    // Exactly two hours is within the window.
    const edge = stored({ id: 'EDGE', start: '2026-03-17T12:40:00+01:00' });
    expect(triggersOf(applyStoredState(run(a04('20260317104000+0100')), lookupOf([edge]))).map((t) => t.type)).toContain('appointment.checked_in');
    // A04 with PV1-2 = P is a pre-registration: no arrival.
    const planned = run(a04('20260317094000+0100', 'P'));
    expect(planned.kind === 'triggers' && planned.arrival).toBeUndefined();
  });

  it('picks the closest appointment when several are in the window', () => {
    const early = stored({ id: 'EARLY', start: '2026-03-17T08:30:00+01:00' });
    const close = stored({ id: 'CLOSE', start: '2026-03-17T10:00:00+01:00' });
    const applied = triggersOf(applyStoredState(run(a04('20260317094000+0100')), lookupOf([early, close])));
    expect(applied[1]!.appointment?.id).toBe('CLOSE');
  });

  it('stateless A10 gives no trigger but describes the arrival', () => {
    const text = hl7('MSH|^~\\&|EPIC|NC|CR|CR|20260317094500+0100||ADT^A10^ADT_A09|A10-1|P|2.5.1', 'EVN|A10|20260317094000+0100', PID, 'PV1|1|O');
    const r = run(text);
    expect(r.kind === 'triggers' && r.triggers).toEqual([]);
    expect(r.kind === 'triggers' && r.arrival?.patientId).toBe('E200001');
    const applied = applyStoredState(r, lookupOf([stored({ start: '2026-03-17T10:00:00+01:00' })]));
    expect(triggersOf(applied).map((t) => t.type)).toEqual(['appointment.checked_in']);
  });
});

describe('stored state: sensitivity sticks to an encounter', () => {
  it('a later A08 without PV2-22 keeps "restricted" from the stored encounter', () => {
    const a08 = hl7(
      'MSH|^~\\&|EPIC|NC|CR|CR|20260317094500+0100||ADT^A08^ADT_A01|A08-1|P|2.5.1',
      PID,
      'PV1|1|I|W1^^^NC||||||||||||||||V-7|||||||||||||||||||||||||20260317090000+0100|20260317094000+0100',
    );
    const encounter: SubjectState = { kind: 'encounter', id: 'V-7', patientId: 'E200001', status: 'in-progress', asOf: '2026-03-17T09:00:00+01:00', data: { sensitivity: ['restricted'] } };
    const applied = applyStoredState(run(a08), lookupOf([encounter]));
    expect(only(applied).sensitivity).toEqual(['restricted']);
    if (applied.kind === 'triggers') expect(applied.states[0]?.data?.sensitivity).toEqual(['restricted']);
    expect(only(run(a08)).sensitivity).toBeUndefined();
  });
});

describe('field rules', () => {
  it('SCH-9/SCH-10 units, rounded to the nearest minute', () => {
    expect(scheduledMinutes('60', 's')).toBe(1);
    expect(scheduledMinutes('90', 'S')).toBe(2);
    expect(scheduledMinutes('150', 's')).toBe(3);
    expect(scheduledMinutes('20', 'MIN')).toBe(20);
    expect(scheduledMinutes('70', 'Min')).toBe(70);
    expect(scheduledMinutes('15', 'M')).toBe(15);
    expect(scheduledMinutes('15', '')).toBe(15);
    expect(scheduledMinutes('1.5', 'H')).toBe(90);
    expect(scheduledMinutes('2', 'HR')).toBe(120);
    expect(scheduledMinutes('1', 'D')).toBe(1440);
    expect(scheduledMinutes('3', 'wk')).toBeUndefined();
    expect(scheduledMinutes('abc', 'MIN')).toBeUndefined();
    expect(scheduledMinutes('', 'MIN')).toBeUndefined();
  });

  it('duration falls back to end − start; end to start + duration', () => {
    const noSch9 = only(run(siu('S12', { sch25: 'Booked' }).replace('TQ1|1||||||20260317100000+0100|', 'TQ1|1||||||20260317100000+0100|20260317104500+0100')));
    expect(noSch9.appointment?.durationMinutes).toBe(45);
    const noEnd = only(run(siu('S12', { sch9: '25', sch10: 'MIN' })));
    expect(noEnd.appointment?.end).toBe('2026-03-17T10:25:00+01:00');
    expect(noEnd.appointment?.durationMinutes).toBe(25);
  });

  it('source.sender is MSH-3.1^MSH-4.1, "EPIC^" when MSH-4 is empty', () => {
    expect(only(run(siu('S12'))).source.sender).toBe('EPIC^NC');
    expect(only(run(siu('S12').replace('MSH|^~\\&|EPIC|NC|', 'MSH|^~\\&|EPIC^1.2.3^ISO||'))).source.sender).toBe('EPIC^');
  });

  it('occurredAt: EVN-6, else EVN-2, else MSH-7', () => {
    const base = siu('S12');
    expect(only(run(base)).occurredAt).toBe('2026-03-05T09:10:00+01:00');
    expect(only(run(base.replace('\rSCH|', '\rEVN|S12|20260304080000+0100\rSCH|'))).occurredAt).toBe('2026-03-04T08:00:00+01:00');
    expect(only(run(base.replace('\rSCH|', '\rEVN|S12|20260304080000+0100||||20260303070000+0100\rSCH|'))).occurredAt).toBe('2026-03-03T07:00:00+01:00');
  });

  it('patient identity, name, dates, gender, language, deceased', () => {
    const text = hl7(
      'MSH|^~\\&|EPIC|NC|CR|CR|20260317094500+0100||ADT^A28^ADT_A05|A28-1|P|2.5.1',
      'PID|1|OLD^^^LEG|X1^^^NC^PI~X2^^^NC^MR|ALT^^^NC2|DOE&van^Jane^Q~ALIAS^Al||20001231|N|||||||||||||||||||||20250101',
    );
    const p = only(run(text)).patient;
    expect(p.id).toBe('X2');
    expect(p.identifiers).toEqual([
      { value: 'OLD', system: 'LEG' },
      { value: 'X1', system: 'NC', type: 'PI' },
      { value: 'X2', system: 'NC', type: 'MR' },
      { value: 'ALT', system: 'NC2' },
    ]);
    expect(p.name).toEqual({ family: 'DOE', given: ['Jane', 'Q'] });
    expect(p.birthDate).toBe('2000-12-31');
    expect(p.gender).toBe('other');
    expect(p.deceased).toBe(true); // PID-29 valued
    expect(p.language).toBeUndefined();
    for (const [code, lang] of [['en-US', 'en'], ['ENG', 'en'], ['FRE', 'fr'], ['fra', 'fr'], ['spa', 'es'], ['ESP', 'es'], ['DEU', 'de'], ['ger', 'de'], ['fr_CA', 'fr']] as const) {
      const withLang = text.replace('|20001231|N||||||||', `|20001231|N|||||||${code}|`);
      expect(only(run(withLang)).patient.language, code).toBe(lang);
    }
    const unknown = only(run(text.replace('|20001231|N|', '|20001231||'))).patient;
    expect(unknown.gender).toBe('unknown');
  });

  it('telecom: XTN.12, else XTN.1, else +XTN.5 XTN.6 XTN.7; CP mobile; Internet/X.400/@ email; defaults home/work', () => {
    const pid13 = ['^^PH^^^0478^000000', '^^CP^^33^6^12345678', 'x^PRN^PH^^^^^^^^^(01) 23-45.67', '^NET^Internet^a@b.example', '^^^c@d.example', '^WPN^X.400^e@f.example', '^^Internet^no-at-sign'].join('~');
    const text = hl7(
      'MSH|^~\\&|EPIC|NC|CR|CR|20260317094500+0100||ADT^A31^ADT_A05|A31-1|P|2.5.1',
      `PID|1||X2^^^NC^MR||DOE^Jane||20001231|F|||||${pid13}|555 1234^^PH~^ORN^PH^^^^99`,
    );
    expect(only(run(text)).patient.telecom).toEqual([
      { system: 'phone', use: 'home', value: '0478000000' },
      { system: 'phone', use: 'mobile', value: '+33612345678' },
      { system: 'phone', use: 'home', value: '01234567' },
      { system: 'email', use: 'home', value: 'a@b.example' },
      { system: 'email', use: 'home', value: 'c@d.example' },
      { system: 'email', use: 'work', value: 'e@f.example' },
      { system: 'phone', use: 'work', value: '5551234' },
      { system: 'phone', use: 'other', value: '99' },
    ]);
  });

  it('sensitivity "restricted" from PV2-22 = Y or PD1-12 = Y; PV1 class mapping', () => {
    const a01 = (extra: string) =>
      hl7('MSH|^~\\&|EPIC|NC|CR|CR|20260317094500+0100||ADT^A01^ADT_A01|A01-1|P|2.5.1', PID, extra, 'PV1|1|E|ER^^^NC||||||||||||||||V-1');
    expect(only(run(a01('PD1||||||||||||Y'))).sensitivity).toEqual(['restricted']);
    expect(only(run(a01('PD1||||||||||||N'))).sensitivity).toBeUndefined();
    const t = only(run(a01('PD1|')));
    expect(t.encounter).toMatchObject({ id: 'V-1', status: 'in-progress', class: 'EMER' });
  });
});

describe('rejected and ignored', () => {
  it('rejects an SIU without an appointment id and names the fields', () => {
    const r = run(siu('S12').replace('SCH|PL-1|AP-1|', 'SCH|||'));
    expect(r).toEqual({ kind: 'rejected', reason: 'SIU^S12 without an appointment id (SCH-2.1 and SCH-1.1 empty)', field: 'SCH-2' });
  });

  it('uses SCH-1.1 when SCH-2.1 is empty', () => {
    expect(only(run(siu('S12').replace('SCH|PL-1|AP-1|', 'SCH|PL-1||'))).appointment?.id).toBe('PL-1');
  });

  it('ignores ACKs, queries, unknown types and S23/S24 without a patient', () => {
    expect(run('MSH|^~\\&|A|B|C|D|20260101||ACK|X1|P|2.5.1\rMSA|AA|Y').kind).toBe('ignored');
    expect(run('MSH|^~\\&|A|B|C|D|20260101||QBP^Q22^QBP_Q21|X2|P|2.5.1\rQPD|x').kind).toBe('ignored');
    const unknown = run('MSH|^~\\&|A|B|C|D|20260101||ORU^R01^ORU_R01|X3|P|2.5.1\rPID|1||1');
    expect(unknown).toEqual({ kind: 'ignored', reason: 'unsupported message type ORU^R01' });
    expect(run('MSH|^~\\&|A|B|C|D|20260101||ADT^A17^ADT_A17|X4|P|2.5.1\rPID|1||1').kind).toBe('ignored');
    expect(run(siu('S23').replace(`\r${PID}`, '')).kind).toBe('ignored');
    // With a patient, a slot event is read like an S14.
    expect(only(run(siu('S24', { sch25: 'Booked' }))).type).toBe('appointment.modified');
  });

  it('an S24 without a patient (opened, "unblocked" time, v2.5 §10.3) is slot.freed: the slot, no patient', () => {
    const t = triggersOf(run(siu('S24', { sch9: '30', sch10: 'MIN' }).replace(`\r${PID}`, '')));
    expect(t).toHaveLength(1);
    expect(t[0]).toMatchObject({
      type: 'slot.freed',
      source: { format: 'hl7v2', sender: 'EPIC^NC', messageType: 'SIU^S24', messageId: 'M-1' },
      slot: { id: 'AP-1', status: 'free', start: '2026-03-17T10:00:00+01:00', end: '2026-03-17T10:30:00+01:00', durationMinutes: 30, serviceType: { code: 'CHK' }, location: { id: 'ROOM1' }, practitioner: { id: 'DR-1' } },
    });
    expect(t[0]!.patient).toBeUndefined();
    expect(t[0]!.appointment).toBeUndefined();
    // No slot id in SCH: the practitioner's time at that start.
    expect(triggersOf(run(siu('S24').replace(`\r${PID}`, '').replace('SCH|PL-1|AP-1|', 'SCH|||')))[0]!.slot!.id).toBe('DR-1');
    expect(run(siu('S24').replace(`\r${PID}`, '').replace(/\rTQ1\|[^\r]*/, '').replace(/\rAI[SLP]\|[^\r]*/g, ''))).toMatchObject({ kind: 'rejected', field: 'TQ1-7' });
  });

  it('rejects an A40 without MRG-1', () => {
    const r = run(hl7('MSH|^~\\&|A|B|C|D|20260101||ADT^A40^ADT_A39|X5|P|2.5.1', 'EVN|A40|20260101', PID));
    expect(r).toMatchObject({ kind: 'rejected', field: 'MRG-1' });
  });
});
