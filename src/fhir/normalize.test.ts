import { describe, expect, it } from 'vitest';
import type { SubjectState } from '../store/store.ts';
import { hasPatient, type PatientTrigger, type Trigger } from '../types.ts';
import {
  FhirNormalizeError,
  normalizeFhir,
  normalizeFhirDeletion,
  normalizeLanguage,
  normalizeNotification,
  patientReferenceOf,
  resourceMessageId,
  triggerId,
  type NormalizeContext,
  type NormalizeResult,
} from './normalize.ts';
import { readNotification, type FhirResource } from './notification.ts';

const V2_0203 = 'http://terminology.hl7.org/CodeSystem/v2-0203';
const RECEIVED = '2024-03-01T10:00:00Z';
const SENDER = 'https://ehr.example.org/fhir';

const patient: FhirResource = {
  resourceType: 'Patient',
  id: 'p1',
  identifier: [
    { system: 'urn:ssn', value: '999', type: { coding: [{ system: V2_0203, code: 'SS' }] } },
    { system: 'urn:mrn', value: 'MRN-1', type: { coding: [{ system: V2_0203, code: 'MR' }] } },
  ],
  name: [{ family: 'Durand', given: ['Claire'] }],
  gender: 'female',
  birthDate: '1970-02-03',
};

function appointment(extra: Record<string, unknown> = {}): FhirResource {
  return {
    resourceType: 'Appointment',
    id: 'a1',
    meta: { versionId: '2', lastUpdated: '2024-03-01T09:00:00+01:00' },
    status: 'booked',
    start: '2024-03-10T09:00:00+01:00',
    end: '2024-03-10T09:30:00+01:00',
    serviceType: [{ coding: [{ system: 'urn:svc', code: 'CARDIO', display: 'Cardiology' }] }],
    participant: [
      { actor: { reference: 'Patient/p1' } },
      { actor: { reference: 'Location/L1', display: 'Room 1' } },
      { actor: { reference: 'Practitioner/D1', display: 'Dr One' } },
    ],
    ...extra,
  };
}

function apptState(extra: Partial<SubjectState> = {}): SubjectState {
  return {
    kind: 'appointment',
    id: 'a1',
    patientId: 'MRN-1',
    status: 'booked',
    start: '2024-03-10T09:00:00+01:00',
    end: '2024-03-10T09:30:00+01:00',
    asOf: '2024-02-01T00:00:00Z',
    data: { serviceType: 'urn:svc|CARDIO', locationId: 'L1', practitionerId: 'D1', virtual: null },
    ...extra,
  };
}

function ctx(extra: Partial<NormalizeContext> = {}): NormalizeContext {
  return { receivedAt: RECEIVED, sender: SENDER, messageId: 'Appointment/a1/_history/2', patient, ...extra };
}

function only(result: NormalizeResult): PatientTrigger {
  expect(result.triggers).toHaveLength(1);
  const t = result.triggers[0]!;
  if (!hasPatient(t)) throw new Error(`expected a trigger about a patient, got ${t.type}`);
  return t;
}

function normalizeError(fn: () => unknown): FhirNormalizeError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(FhirNormalizeError);
    return e as FhirNormalizeError;
  }
  throw new Error('expected a FhirNormalizeError');
}

describe('Appointment → type (docs/trigger.md FHIR column)', () => {
  const cases: Array<[string, Record<string, unknown>, Partial<SubjectState> | undefined, string | undefined]> = [
    ['created booked', {}, undefined, 'appointment.booked'],
    ['created pending', { status: 'pending' }, undefined, 'appointment.booked'],
    ['created proposed', { status: 'proposed' }, undefined, 'appointment.booked'],
    ['first seen cancelled', { status: 'cancelled' }, undefined, 'appointment.cancelled'],
    ['proposed → booked', {}, { status: 'proposed' }, 'appointment.booked'],
    ['booked → pending', { status: 'pending' }, {}, 'appointment.booked'],
    ['booked → arrived', { status: 'arrived' }, {}, 'appointment.checked_in'],
    ['booked → checked-in', { status: 'checked-in' }, {}, 'appointment.checked_in'],
    ['arrived → checked-in is the same check-in', { status: 'checked-in' }, { status: 'arrived' }, undefined],
    ['checked-in → fulfilled', { status: 'fulfilled' }, { status: 'checked-in' }, 'appointment.fulfilled'],
    ['booked → cancelled', { status: 'cancelled' }, {}, 'appointment.cancelled'],
    ['booked → entered-in-error', { status: 'entered-in-error' }, {}, 'appointment.deleted'],
    ['booked → noshow', { status: 'noshow' }, {}, 'appointment.noshow'],
    ['cancelled with a new start is still a cancellation', { status: 'cancelled', start: '2024-03-11T09:00:00+01:00' }, {}, 'appointment.cancelled'],
    ['start changed', { start: '2024-03-12T14:00:00+01:00' }, {}, 'appointment.rescheduled'],
    ['pending → booked with a new start', { start: '2024-03-12T14:00:00+01:00' }, { status: 'pending' }, 'appointment.rescheduled'],
    ['same instant, other offset: not a reschedule', { start: '2024-03-10T08:00:00Z' }, {}, undefined],
    ['practitioner changed', { participant: [{ actor: { reference: 'Patient/p1' } }, { actor: { reference: 'Location/L1' } }, { actor: { reference: 'Practitioner/D2' } }] }, {}, 'appointment.modified'],
    ['location removed', { participant: [{ actor: { reference: 'Patient/p1' } }, { actor: { reference: 'Practitioner/D1' } }] }, {}, 'appointment.modified'],
    ['service changed', { serviceType: [{ coding: [{ system: 'urn:svc', code: 'DERM' }] }] }, {}, 'appointment.modified'],
    ['no relevant change (comment only)', { comment: 'bring your card' }, {}, undefined],
    ['cancelled, then a change of room: no news', { status: 'cancelled', participant: [{ actor: { reference: 'Patient/p1' } }] }, { status: 'cancelled' }, undefined],
    ['stored state without FHIR comparison data', {}, { data: undefined }, 'appointment.modified'],
    ['booked → waitlist', { status: 'waitlist' }, {}, 'appointment.modified'],
  ];

  it.each(cases)('%s', (_name, extra, previous, type) => {
    const result = normalizeFhir(appointment(extra), ctx({ previous: previous ? apptState(previous) : undefined }));
    expect(result.triggers.map((t) => t.type)).toEqual(type ? [type] : []);
    // The state is returned whether or not the update gave a trigger.
    expect(result.states).toHaveLength(1);
  });
});

describe('Appointment fields', () => {
  it('maps every field and returns the state to store', () => {
    const result = normalizeFhir(
      appointment({ start: '2024-03-12T14:00:00+01:00', end: '2024-03-12T14:45:00+01:00' }),
      ctx({ previous: apptState(), occurredAt: '2024-03-01T09:00:05+01:00' }),
    );
    const t = only(result);
    expect(t).toEqual({
      id: triggerId(SENDER, 'Appointment/a1/_history/2', 'appointment.rescheduled'),
      type: 'appointment.rescheduled',
      occurredAt: '2024-03-01T09:00:05+01:00',
      receivedAt: RECEIVED,
      source: { format: 'fhir', sender: SENDER, messageType: 'Appointment', messageId: 'Appointment/a1/_history/2' },
      patient: {
        id: 'MRN-1',
        identifiers: [
          { value: '999', system: 'urn:ssn', type: 'SS' },
          { value: 'MRN-1', system: 'urn:mrn', type: 'MR' },
        ],
        name: { family: 'Durand', given: ['Claire'] },
        birthDate: '1970-02-03',
        gender: 'female',
        deceased: false,
        telecom: [],
      },
      appointment: {
        id: 'a1',
        status: 'booked',
        start: '2024-03-12T14:00:00+01:00',
        end: '2024-03-12T14:45:00+01:00',
        durationMinutes: 45,
        previousStart: '2024-03-10T09:00:00+01:00',
        serviceType: { code: 'CARDIO', display: 'Cardiology', system: 'urn:svc' },
        location: { id: 'L1', name: 'Room 1' },
        practitioner: { id: 'D1', name: 'Dr One' },
      },
    });
    expect(result.states).toEqual([
      {
        kind: 'appointment',
        id: 'a1',
        patientId: 'MRN-1',
        status: 'booked',
        start: '2024-03-12T14:00:00+01:00',
        end: '2024-03-12T14:45:00+01:00',
        asOf: '2024-03-01T09:00:05+01:00',
        data: { serviceType: 'urn:svc|CARDIO', locationId: 'L1', practitionerId: 'D1', virtual: null, patientReference: 'Patient/p1' },
      },
    ]);
  });

  it('a waitlist Appointment carries its requestedPeriod (a date-only end: the whole day, in the sender zone)', () => {
    const t = only(
      normalizeFhir(
        appointment({ status: 'waitlist', start: undefined, end: undefined, requestedPeriod: [{ start: '2024-03-11T08:00:00+01:00', end: '2024-03-15' }, { end: '2024-03-01T00:00:00Z' }, {}] }),
        ctx({ timezone: 'Europe/Paris' }),
      ),
    );
    expect(t.appointment).toMatchObject({ status: 'waitlist', requestedPeriod: [{ start: '2024-03-11T08:00:00+01:00', end: '2024-03-16T00:00:00+01:00' }, { end: '2024-03-01T00:00:00Z' }] });
    expect(only(normalizeFhir(appointment(), ctx())).appointment?.requestedPeriod).toBeUndefined();
  });

  it('minutesDuration wins over end − start; appointmentType when there is no serviceType', () => {
    const t = only(
      normalizeFhir(
        appointment({
          minutesDuration: 20,
          serviceType: undefined,
          appointmentType: { coding: [{ system: 'urn:v2-0276', code: 'ROUTINE' }], text: 'Routine' },
        }),
        ctx(),
      ),
    );
    expect(t.appointment?.durationMinutes).toBe(20);
    expect(t.appointment?.serviceType).toEqual({ code: 'ROUTINE', display: 'Routine', system: 'urn:v2-0276' });
  });

  it('occurredAt: notification timestamp, else meta.lastUpdated, else Bundle.timestamp, else receivedAt', () => {
    const at = (res: FhirResource, extra: Partial<NormalizeContext>) => only(normalizeFhir(res, ctx(extra))).occurredAt;
    expect(at(appointment(), { occurredAt: '2024-03-01T09:00:01Z', bundleTimestamp: '2024-03-01T09:00:02Z' })).toBe('2024-03-01T09:00:01Z');
    expect(at(appointment(), { bundleTimestamp: '2024-03-01T09:00:02Z' })).toBe('2024-03-01T09:00:00+01:00');
    expect(at(appointment({ meta: {} }), { bundleTimestamp: '2024-03-01T09:00:02Z' })).toBe('2024-03-01T09:00:02Z');
    expect(at(appointment({ meta: {} }), {})).toBe(RECEIVED);
  });

  it('trigger id: same event twice → same id; another message, sender or type → another id', () => {
    const a = only(normalizeFhir(appointment(), ctx()));
    const b = only(normalizeFhir(appointment(), ctx({ receivedAt: '2030-01-01T00:00:00Z' })));
    expect(a.id).toBe(b.id);
    expect(a.id).toMatch(/^[0-9a-f]{64}$/);
    expect(only(normalizeFhir(appointment(), ctx({ messageId: 'Appointment/a1/_history/3' }))).id).not.toBe(a.id);
    expect(only(normalizeFhir(appointment(), ctx({ sender: 'other' }))).id).not.toBe(a.id);
    expect(only(normalizeFhir(appointment({ status: 'cancelled' }), ctx())).id).not.toBe(a.id);
  });

  it('sensitivity: meta.security codes of the appointment and its patient, as given', () => {
    const t = only(
      normalizeFhir(appointment({ meta: { security: [{ code: 'R' }, { code: 'HIV' }] } }), ctx({
        patient: { ...patient, meta: { security: [{ code: 'V' }, { code: 'R' }] } },
      })),
    );
    expect(t.sensitivity).toEqual(['R', 'HIV', 'V']);
    expect(only(normalizeFhir(appointment(), ctx())).sensitivity).toBeUndefined();
  });
});

describe('Appointment that cannot give a trigger', () => {
  it('no Patient participant and no patient in context', () => {
    const e = normalizeError(() =>
      normalizeFhir(appointment({ participant: [{ actor: { reference: 'Location/L1' } }] }), ctx({ patient: undefined })),
    );
    expect(e.message).toBe('Appointment/a1: no Patient participant and no patient in context: cannot tell whose appointment this is');
    expect(e.code).toBe('fhir_not_normalizable');
  });

  it('a Patient participant but the Patient was not resolved', () => {
    expect(normalizeError(() => normalizeFhir(appointment(), ctx({ patient: undefined }))).message).toBe(
      'Appointment/a1: the Patient participant Patient/p1 is needed: pass the Patient resource as context.patient (from the Bundle or fetched)',
    );
  });

  it('context.patient is another patient than the participant', () => {
    expect(normalizeError(() => normalizeFhir(appointment(), ctx({ patient: { ...patient, id: 'p2' } }))).message).toBe(
      'Appointment/a1: context.patient is Patient/p2, but the Patient participant is Patient/p1',
    );
  });

  it('no status, no id, wrong previous state', () => {
    expect(normalizeError(() => normalizeFhir(appointment({ status: undefined }), ctx())).message).toBe('Appointment/a1: status missing');
    expect(normalizeError(() => normalizeFhir(appointment({ id: undefined }), ctx())).message).toBe(
      'Appointment: no id (a trigger needs the resource id)',
    );
    expect(normalizeError(() => normalizeFhir(appointment(), ctx({ previous: apptState({ id: 'a9' }) }))).message).toMatch(
      /context.previous is the state of appointment a9/,
    );
  });
});

describe('Appointment deleted (history DELETE)', () => {
  it('gives appointment.deleted with the stored times', () => {
    const result = normalizeFhirDeletion('https://ehr.example.org/fhir/Appointment/a1', ctx({ previous: apptState() }));
    expect(only(result)).toMatchObject({
      type: 'appointment.deleted',
      appointment: { id: 'a1', status: 'entered-in-error', start: '2024-03-10T09:00:00+01:00', end: '2024-03-10T09:30:00+01:00' },
    });
    expect(result.states[0]!.status).toBe('entered-in-error');
  });

  it('needs the patient; an already deleted one gives nothing; other types give nothing', () => {
    expect(normalizeError(() => normalizeFhirDeletion('Appointment/a1', ctx({ patient: undefined }))).message).toMatch(
      /deleted, but no patient in context/,
    );
    expect(normalizeFhirDeletion('Appointment/a1', ctx({ previous: apptState({ status: 'entered-in-error' }) })).triggers).toEqual([]);
    expect(normalizeFhirDeletion('Encounter/e1', ctx())).toEqual({ triggers: [], states: [] });
  });
});

function encounter(extra: Record<string, unknown> = {}): FhirResource {
  return {
    resourceType: 'Encounter',
    id: 'e1',
    meta: { versionId: '4', lastUpdated: '2024-03-01T09:00:00+01:00' },
    status: 'in-progress',
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'EMER' },
    subject: { reference: 'Patient/p1' },
    period: { start: '2024-03-01T08:00:00+01:00' },
    location: [
      { location: { reference: 'Location/TRIAGE' }, status: 'completed' },
      { location: { reference: 'Location/BOX3', display: 'Box 3' }, status: 'active' },
    ],
    ...extra,
  };
}

/** `data: null` = a stored state with no FHIR comparison data (e.g. written by another input). */
function encState(status: string, data: Record<string, unknown> | null = { locationId: 'BOX3' }): SubjectState {
  const s: SubjectState = { kind: 'encounter', id: 'e1', patientId: 'MRN-1', status, asOf: '2024-03-01T07:00:00Z' };
  if (data) s.data = data;
  return s;
}

describe('Encounter → type', () => {
  const cases: Array<[string, Record<string, unknown>, SubjectState | undefined, string | undefined, NormalizeContext['triggerCodes']?]> = [
    ['planned', { status: 'planned' }, undefined, 'encounter.planned'],
    ['planned again', { status: 'planned' }, encState('planned'), undefined],
    ['in-progress, first seen', {}, undefined, 'encounter.started'],
    ['arrived from planned', { status: 'arrived' }, encState('planned'), 'encounter.started'],
    ['arrived → in-progress, same place', {}, encState('arrived'), undefined],
    ['location changed while in progress', {}, encState('in-progress', { locationId: 'TRIAGE' }), 'encounter.transferred'],
    ['in progress, no location stored, no hint', {}, encState('in-progress', null), undefined],
    ['in progress, no location stored, US Core trigger A02', {}, encState('in-progress', null), 'encounter.transferred',
      [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0003', code: 'A02' }]],
    ['first seen with US Core trigger A02', {}, undefined, 'encounter.transferred',
      [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0003', code: 'A02' }]],
    ['first seen with US Core trigger A13', {}, undefined, 'encounter.discharge_cancelled',
      [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0003', code: 'A13' }]],
    ['finished', { status: 'finished' }, encState('in-progress'), 'encounter.finished'],
    ['finished again', { status: 'finished' }, encState('finished'), undefined],
    ['cancelled', { status: 'cancelled' }, encState('planned'), 'encounter.cancelled'],
    ['entered-in-error', { status: 'entered-in-error' }, encState('in-progress'), 'encounter.cancelled'],
    ['finished → in-progress', {}, encState('finished'), 'encounter.discharge_cancelled'],
    ['unknown says nothing', { status: 'unknown' }, undefined, undefined],
  ];

  it.each(cases)('%s', (_name, extra, previous, type, triggerCodes) => {
    const result = normalizeFhir(encounter(extra), ctx({ previous, triggerCodes, messageId: 'Encounter/e1/_history/4' }));
    expect(result.triggers.map((t) => t.type)).toEqual(type ? [type] : []);
    expect(result.states[0]).toMatchObject({ kind: 'encounter', id: 'e1', patientId: 'MRN-1', status: extra.status ?? 'in-progress' });
  });
});

describe('Encounter fields', () => {
  it('maps class, period, the current location and the discharge disposition', () => {
    const t = only(
      normalizeFhir(
        encounter({
          status: 'finished',
          period: { start: '2024-03-01T08:00:00+01:00', end: '2024-03-01T12:00:00+01:00' },
          hospitalization: { dischargeDisposition: { coding: [{ code: 'home' }] } },
        }),
        ctx({ messageId: 'Encounter/e1/_history/4' }),
      ),
    );
    expect(t.encounter).toEqual({
      id: 'e1',
      status: 'finished',
      class: 'EMER',
      start: '2024-03-01T08:00:00+01:00',
      end: '2024-03-01T12:00:00+01:00',
      location: { id: 'BOX3', name: 'Box 3' },
      dischargeDisposition: 'home',
    });
    expect(t.source.messageType).toBe('Encounter');
  });

  it('a date-only period becomes midnight in the sender zone (docs/trigger.md precision); R5 class and actualPeriod are read', () => {
    const planned = encounter({ status: 'planned', period: undefined, actualPeriod: { start: '2024-04-02' }, class: [{ coding: [{ code: 'AMB' }] }] });
    expect(only(normalizeFhir(planned, ctx())).encounter).toMatchObject({ class: 'AMB', start: '2024-04-02T00:00:00+00:00' });
    expect(only(normalizeFhir(planned, ctx({ timezone: 'Europe/Paris' }))).encounter).toMatchObject({ start: '2024-04-02T00:00:00+02:00' });
  });

  it('sensitivity sticks to the encounter once seen (docs/consent.md)', () => {
    const first = normalizeFhir(encounter({ meta: { security: [{ code: 'PSY' }] } }), ctx());
    expect(first.triggers[0]!.sensitivity).toEqual(['PSY']);
    const later = normalizeFhir(encounter({ status: 'finished' }), ctx({ previous: first.states[0] }));
    expect(later.triggers[0]!.sensitivity).toEqual(['PSY']);
    expect(later.states[0]!.data?.sensitivity).toEqual(['PSY']);
  });

  it('refuses a subject that is not a Patient, and an encounter without its patient', () => {
    expect(normalizeError(() => normalizeFhir(encounter({ subject: { reference: 'Group/g1' } }), ctx())).message).toBe(
      'Encounter/e1: subject is a Group, not a Patient',
    );
    expect(normalizeError(() => normalizeFhir(encounter(), ctx({ patient: undefined }))).message).toMatch(
      /^Encounter\/e1: the subject Patient\/p1 is needed/,
    );
  });
});

describe('Patient', () => {
  const norm = (p: Record<string, unknown>, extra: Partial<NormalizeContext> = {}) =>
    only(normalizeFhir({ resourceType: 'Patient', id: 'p1', ...p }, ctx({ patient: undefined, ...extra })));

  it('an update gives patient.updated', () => {
    expect(norm({}).type).toBe('patient.updated');
  });

  it('no string of the trigger holds a control character (a newline in a name included), as from HL7', () => {
    const t = norm({ name: [{ family: 'Durand\r\nBcc: x@example.org', given: ['Cl\u0000aire'] }] });
    expect(t.patient.name).toEqual({ family: 'Durand Bcc: x@example.org', given: ['Cl aire'] });
  });

  it('patient.id: MR identifier, else the first identifier, else the resource id', () => {
    expect(norm({ identifier: patient.identifier }).patient.id).toBe('MRN-1');
    expect(norm({ identifier: [{ value: 'X1' }, { value: 'X2' }] }).patient.id).toBe('X1');
    expect(norm({ identifier: [{ value: 'X1', type: { coding: [{ code: 'MR' }] } }] }).patient.identifiers).toEqual([
      { value: 'X1', type: 'MR' },
    ]);
    expect(norm({}).patient).toEqual({ id: 'p1', identifiers: [], gender: 'unknown', deceased: false, telecom: [] });
  });

  it('language: preferred first, region dropped, three-letter codes mapped', () => {
    const lang = (communication: unknown) => norm({ communication }).patient.language;
    expect(lang([{ language: { coding: [{ system: 'urn:ietf:bcp:47', code: 'en-US' }] } }])).toBe('en');
    expect(
      lang([
        { language: { coding: [{ code: 'en' }] } },
        { language: { coding: [{ code: 'FRE' }] }, preferred: true },
      ]),
    ).toBe('fr');
    expect(normalizeLanguage('SPA')).toBe('es');
    expect(normalizeLanguage('ger')).toBe('de');
    expect(normalizeLanguage('DEU')).toBe('de');
    expect(normalizeLanguage('pt_BR')).toBe('pt');
    expect(normalizeLanguage('English')).toBeUndefined();
  });

  it('telecom: phone/sms/email only; temp and old → other; phone digits with a leading +', () => {
    expect(
      norm({
        telecom: [
          { system: 'phone', value: '+33 (0)6.12-34-56-78', use: 'mobile' },
          { system: 'phone', value: '01 23 45', use: 'home' },
          { system: 'sms', value: '0612345678' },
          { system: 'phone', value: '555', use: 'old' },
          { system: 'email', value: 'c.d@example.org', use: 'work' },
          { system: 'email', value: 'tmp@example.org', use: 'temp' },
          { system: 'fax', value: '123' },
          { system: 'pager', value: '456' },
          { system: 'url', value: 'https://example.org' },
        ],
      }).patient.telecom,
    ).toEqual([
      { system: 'phone', use: 'mobile', value: '+330612345678' },
      { system: 'phone', use: 'home', value: '012345' },
      { system: 'phone', use: 'mobile', value: '0612345678' },
      { system: 'phone', use: 'other', value: '555' },
      { system: 'email', use: 'work', value: 'c.d@example.org' },
      { system: 'email', use: 'other', value: 'tmp@example.org' },
    ]);
  });

  it('deceased always present: deceasedBoolean or deceasedDateTime', () => {
    expect(norm({}).patient.deceased).toBe(false);
    expect(norm({ deceasedBoolean: true }).patient.deceased).toBe(true);
    expect(norm({ deceasedBoolean: false }).patient.deceased).toBe(false);
    expect(norm({ deceasedDateTime: '2024-01-01' }).patient.deceased).toBe(true);
  });

  it('name: the first one not marked old', () => {
    expect(norm({ name: [{ use: 'old', family: 'Martin' }, { family: 'Durand', given: ['Claire', 'M'] }] }).patient.name).toEqual({
      family: 'Durand',
      given: ['Claire', 'M'],
    });
  });

  it('replaced-by link: patient.merged about the survivor, mergedFrom = this record', () => {
    const old = {
      id: 'old1',
      identifier: [{ value: 'MRN-OLD', type: { coding: [{ system: V2_0203, code: 'MR' }] } }],
      link: [{ type: 'replaced-by', other: { reference: 'Patient/p1' } }],
    };
    const t = normalizeFhir({ resourceType: 'Patient', ...old }, ctx()).triggers[0]!;
    expect(t.type).toBe('patient.merged');
    expect(t.patient!.id).toBe('MRN-1');
    expect(t.patient!.mergedFrom).toEqual([{ value: 'MRN-OLD', type: 'MR' }]);
    expect(patientReferenceOf({ resourceType: 'Patient', ...old })).toBe('Patient/p1');
    expect(normalizeError(() => normalizeFhir({ resourceType: 'Patient', ...old }, ctx({ patient: undefined }))).message).toBe(
      'Patient/old1: replaced-by Patient/p1: pass the surviving Patient as context.patient',
    );
    expect(
      normalizeError(() => normalizeFhir({ resourceType: 'Patient', ...old }, ctx({ patient: { ...patient, id: 'p9' } }))).message,
    ).toMatch(/context.patient is Patient\/p9, but the replaced-by link points to Patient\/p1/);
  });

  it('a replaces link (the survivor side) is an update', () => {
    expect(norm({ link: [{ type: 'replaces', other: { reference: 'Patient/old1' } }] }).type).toBe('patient.updated');
  });
});

describe('other resources and message ids', () => {
  it('a resource type that is not a trigger source gives nothing', () => {
    expect(normalizeFhir({ resourceType: 'Observation', id: 'o1' }, ctx())).toEqual({ triggers: [], states: [] });
  });

  it('resourceMessageId: Type/id/_history/version, else Type/id@lastUpdated, else Type/id', () => {
    expect(resourceMessageId(appointment())).toBe('Appointment/a1/_history/2');
    expect(resourceMessageId({ resourceType: 'Patient', id: 'p', meta: { lastUpdated: '2024-01-01T00:00:00Z' } })).toBe(
      'Patient/p@2024-01-01T00:00:00Z',
    );
    expect(resourceMessageId({ resourceType: 'Patient', id: 'p' })).toBe('Patient/p');
  });
});

describe('normalizeNotification', () => {
  const opts = { receivedAt: RECEIVED, sender: SENDER };
  const bundle = (events: Array<{ n: number; focus?: string }>, entries: FhirResource[]) => ({
    resourceType: 'Bundle',
    type: 'history',
    timestamp: '2024-03-01T09:00:09+01:00',
    entry: [
      {
        resource: {
          resourceType: 'Parameters',
          parameter: [
            { name: 'subscription', valueReference: { reference: `${SENDER}/Subscription/s1` } },
            { name: 'status', valueCode: 'active' },
            { name: 'type', valueCode: 'event-notification' },
            ...events.map((e) => ({
              name: 'notification-event',
              part: [
                { name: 'event-number', valueString: String(e.n) },
                ...(e.focus ? [{ name: 'focus', valueReference: { reference: e.focus } }] : []),
              ],
            })),
          ],
        },
      },
      ...entries.map((r) => ({ fullUrl: `${SENDER}/${r.resourceType}/${r.id}`, resource: r })),
    ],
  });

  it('id-only: reports the focus to fetch, then normalizes with the fetched resources', () => {
    const n = readNotification(bundle([{ n: 7, focus: 'Appointment/a1' }], []));
    expect(normalizeNotification(n, opts)).toEqual({ triggers: [], states: [], missing: ['Appointment/a1'] });
    const fetched = new Map<string, FhirResource>([['Appointment/a1', appointment()], ['Patient/p1', patient]]);
    const result = normalizeNotification(n, { ...opts, fetched });
    expect(result.missing).toEqual([]);
    expect(result.triggers[0]!.source.messageId).toBe('s1#7');
    expect(result.triggers[0]!.occurredAt).toBe('2024-03-01T09:00:00+01:00');
  });

  it('a Slot updated to free is slot.freed, about no patient, with its Schedule\'s practitioner and location (the Schedule fetched first)', () => {
    const slot = { resourceType: 'Slot', id: 'sl1', meta: { versionId: '3', lastUpdated: '2024-03-01T09:00:00+01:00' }, status: 'free', start: '2024-03-12T09:00:00+01:00', end: '2024-03-12T09:30:00+01:00', schedule: { reference: 'Schedule/sch1' }, serviceType: [{ coding: [{ system: 'urn:svc', code: 'CARDIO' }] }] };
    const schedule = { resourceType: 'Schedule', id: 'sch1', actor: [{ reference: 'Location/L1', display: 'Room 1' }, { reference: 'Practitioner/D1', display: 'Dr One' }] };
    const n = readNotification(bundle([{ n: 9, focus: 'Slot/sl1' }], [slot]));
    expect(normalizeNotification(n, opts).missing).toEqual(['Schedule/sch1']);
    const result = normalizeNotification(n, { ...opts, fetched: new Map([['Schedule/sch1', schedule]]) });
    expect(result.triggers).toEqual([
      expect.objectContaining({
        type: 'slot.freed',
        source: { format: 'fhir', sender: SENDER, messageType: 'Slot', messageId: 's1#9' },
        slot: { id: 'sl1', status: 'free', start: '2024-03-12T09:00:00+01:00', end: '2024-03-12T09:30:00+01:00', durationMinutes: 30, serviceType: { code: 'CARDIO', system: 'urn:svc' }, practitioner: { id: 'D1', name: 'Dr One' }, location: { id: 'L1', name: 'Room 1' }, schedule: 'Schedule/sch1' },
      }),
    ]);
    expect(result.triggers[0]!.patient).toBeUndefined();
    // Created free (published availability), or busy: no trigger.
    const fetched = new Map([['Schedule/sch1', schedule]]);
    expect(normalizeNotification(readNotification(bundle([{ n: 10, focus: 'Slot/sl1' }], [{ ...slot, meta: { versionId: '1' } }])), { ...opts, fetched }).triggers).toEqual([]);
    expect(normalizeNotification(readNotification(bundle([{ n: 11, focus: 'Slot/sl1' }], [{ ...slot, status: 'busy' }])), { ...opts, fetched }).triggers).toEqual([]);
  });

  it('full-resource without the Patient: reports the Patient to fetch', () => {
    const n = readNotification(bundle([{ n: 1, focus: `${SENDER}/Appointment/a1` }], [appointment()]));
    expect(normalizeNotification(n, opts).missing).toEqual(['Patient/p1']);
  });

  it('events on the same appointment chain their states inside one notification', () => {
    const n = readNotification(
      bundle(
        [
          { n: 3, focus: 'Appointment/a1' },
          { n: 4, focus: 'Appointment/a2' },
        ],
        [appointment(), appointment({ id: 'a2', status: 'cancelled' }), patient],
      ),
    );
    const result = normalizeNotification(n, { ...opts, previous: (kind, id) => (id === 'a2' ? { ...apptState(), id: 'a2' } : undefined) });
    expect(result.triggers.map((t) => [t.type, t.appointment?.id, t.source.messageId])).toEqual([
      ['appointment.booked', 'a1', 's1#3'],
      ['appointment.cancelled', 'a2', 's1#4'],
    ]);
    expect(result.states.map((s) => s.id)).toEqual(['a1', 'a2']);
  });

  it('handshake, heartbeat, empty payload and Observation focus give nothing', () => {
    expect(normalizeNotification({ kind: 'empty' }, opts)).toEqual({ triggers: [], states: [], missing: [] });
    const n = readNotification(bundle([{ n: 1 }, { n: 2, focus: 'Observation/o1' }], [{ resourceType: 'Observation', id: 'o1' }]));
    expect(normalizeNotification(n, opts)).toEqual({ triggers: [], states: [], missing: [] });
  });

  it('a deleted appointment never seen before gives nothing', () => {
    const n = readNotification({
      ...bundle([{ n: 5, focus: 'Appointment/zz' }], []),
      entry: [...bundle([{ n: 5, focus: 'Appointment/zz' }], []).entry, { fullUrl: `${SENDER}/Appointment/zz`, request: { method: 'DELETE', url: 'Appointment/zz' } }],
    });
    expect(normalizeNotification(n, opts)).toEqual({ triggers: [], states: [], missing: [] });
  });

  it('a rest-hook resource uses Type/id/_history/version as message id', () => {
    const result = normalizeNotification(readNotification(appointment()), { ...opts, fetched: new Map([['Patient/p1', patient]]) });
    expect(result.triggers[0]!.source.messageId).toBe('Appointment/a1/_history/2');
  });
});

describe('video visits (docs/video.md)', () => {
  const JOIN = 'https://vendor.example/j/9?pwd=x';
  const virtual = (url = JOIN) => ({ virtualService: [{ channelType: { code: 'zoom' }, addressUrl: url }] });

  it('puts appointment.virtual in the trigger and the URL only in joins', () => {
    const result = normalizeFhir(appointment(virtual()), ctx());
    expect(only(result).appointment!.virtual).toEqual({ channel: 'zoom', hasJoinInfo: true });
    expect(JSON.stringify([result.triggers, result.states])).not.toContain('vendor.example');
    expect(result.joins).toEqual([{ appointmentId: 'a1', patientId: 'MRN-1', asOf: '2024-03-01T09:00:00+01:00', url: JOIN }]);
  });

  it('a visit going online is a modification; a new join URL alone is not news, but its join is kept', () => {
    const previous = apptState();
    expect(only(normalizeFhir(appointment(virtual()), ctx({ previous }))).type).toBe('appointment.modified');
    const online = apptState({ data: { ...previous.data, virtual: 'zoom|true' } });
    const renewed = normalizeFhir(appointment(virtual('https://vendor.example/j/10')), ctx({ previous: online }));
    expect(renewed.triggers).toEqual([]);
    expect(renewed.joins).toEqual([{ appointmentId: 'a1', patientId: 'MRN-1', asOf: '2024-03-01T09:00:00+01:00', url: 'https://vendor.example/j/10' }]);
    // States written before video visits were read cannot be compared on it: no change.
    const older = apptState({ data: { serviceType: 'urn:svc|CARDIO', locationId: 'L1', practitionerId: 'D1' } });
    expect(normalizeFhir(appointment(virtual()), ctx({ previous: older })).triggers).toEqual([]);
  });

  it('clears the join when the resource has none, when it closes, and when it is deleted', () => {
    const clear = [{ appointmentId: 'a1', patientId: 'MRN-1', asOf: '2024-03-01T09:00:00+01:00' }];
    expect(normalizeFhir(appointment(), ctx()).joins).toEqual(clear);
    expect(normalizeFhir(appointment({ ...virtual(), status: 'cancelled' }), ctx({ previous: apptState() })).joins).toEqual(clear);
    const deleted = normalizeFhirDeletion('Appointment/a1', ctx({ previous: apptState(), occurredAt: '2024-03-01T09:00:00+01:00' }));
    expect(deleted.joins).toEqual(clear);
  });
});
