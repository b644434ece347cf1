import { describe, expect, it } from 'vitest';
import { TriggerType } from '../../types.ts';
import { AppointmentStatus, fillerStatusToFhir } from './codes.ts';
import { adtEncounterStatus, adtTriggerType, ARRIVAL_ONLY, siuAppointmentStatus, siuTriggerType } from './event-type.ts';

// docs/trigger.md "Types" precedence list, one row per line.
describe('SIU trigger type (MSH-9 event, then filler status)', () => {
  const fixed: Array<[string, TriggerType]> = [
    ['S15', TriggerType.AppointmentCancelled],
    ['S16', TriggerType.AppointmentCancelled],
    ['S17', TriggerType.AppointmentDeleted],
    ['S26', TriggerType.AppointmentNoshow],
    ['S13', TriggerType.AppointmentRescheduled],
    ['S12', TriggerType.AppointmentBooked],
  ];
  for (const [event, type] of fixed) {
    it(`${event} → ${type}, whatever the filler status says`, () => {
      expect(siuTriggerType(event, undefined)).toBe(type);
      expect(siuTriggerType(event, AppointmentStatus.Arrived)).toBe(type);
      expect(siuTriggerType(event, AppointmentStatus.Booked)).toBe(type);
    });
  }

  const byStatus: Array<[string, TriggerType]> = [
    ['Arrived', TriggerType.AppointmentCheckedIn],
    ['ARRIVED', TriggerType.AppointmentCheckedIn],
    ['Started', TriggerType.AppointmentCheckedIn],
    ['Checked In', TriggerType.AppointmentCheckedIn],
    ['checked-in', TriggerType.AppointmentCheckedIn],
    ['Complete', TriggerType.AppointmentFulfilled],
    ['Cancelled', TriggerType.AppointmentCancelled],
    ['Discontinued', TriggerType.AppointmentCancelled],
    ['Deleted', TriggerType.AppointmentDeleted],
    ['Noshow', TriggerType.AppointmentNoshow],
    ['Booked', TriggerType.AppointmentModified],
    ['Blocked', TriggerType.AppointmentModified],
    ['Overbook', TriggerType.AppointmentModified],
    ['Pending', TriggerType.AppointmentModified],
    ['Dc', TriggerType.AppointmentModified],
    ['', TriggerType.AppointmentModified],
  ];
  for (const event of ['S14', 'S18', 'S19', 'S20', 'S21', 'S22', 'S23', 'S24']) {
    for (const [filler, type] of byStatus) {
      it(`${event} with filler status "${filler}" → ${type}`, () => {
        expect(siuTriggerType(event, fillerStatusToFhir(filler))).toBe(type);
      });
    }
  }

  it('unknown SIU events give no type (ignored as unsupported)', () => {
    expect(siuTriggerType('S25', undefined)).toBeUndefined();
    expect(siuTriggerType('S11', AppointmentStatus.Booked)).toBeUndefined();
  });
});

describe('filler status → Appointment.status (table 0278, vendor values)', () => {
  const rows: Array<[string, string | undefined]> = [
    ['Pending', 'pending'],
    ['Waitlist', 'waitlist'],
    ['Booked', 'booked'],
    ['BOOKED', 'booked'],
    ['Started', 'checked-in'],
    ['Checked In', 'checked-in'],
    ['ARRIVED', 'arrived'],
    ['Complete', 'fulfilled'],
    ['Cancelled', 'cancelled'],
    ['Discontinued', 'cancelled'],
    ['Deleted', 'entered-in-error'],
    ['Noshow', 'noshow'],
    ['Blocked', 'booked'],
    ['Overbook', 'booked'],
    ['Dc', undefined],
    ['', undefined],
  ];
  for (const [code, status] of rows) {
    it(`"${code}" → ${status}`, () => expect(fillerStatusToFhir(code)).toBe(status));
  }

  it('the event fixes the status of S15/S16/S17/S26; S12/S13 default to booked', () => {
    expect(siuAppointmentStatus('S15', AppointmentStatus.Booked)).toBe('cancelled');
    expect(siuAppointmentStatus('S16', undefined)).toBe('cancelled');
    expect(siuAppointmentStatus('S17', undefined)).toBe('entered-in-error');
    expect(siuAppointmentStatus('S26', undefined)).toBe('noshow');
    expect(siuAppointmentStatus('S12', undefined)).toBe('booked');
    expect(siuAppointmentStatus('S12', AppointmentStatus.Pending)).toBe('pending');
    expect(siuAppointmentStatus('S13', undefined)).toBe('booked');
    expect(siuAppointmentStatus('S14', undefined)).toBeUndefined();
    expect(siuAppointmentStatus('S14', AppointmentStatus.Arrived)).toBe('arrived');
  });
});

describe('ADT trigger type (by trigger event only)', () => {
  const rows: Array<[string, string, TriggerType | typeof ARRIVAL_ONLY | undefined]> = [
    ['A01', 'I', TriggerType.EncounterStarted],
    ['A01', 'P', TriggerType.EncounterStarted],
    ['A04', 'O', TriggerType.EncounterStarted],
    ['A04', '', TriggerType.EncounterStarted],
    ['A04', 'P', TriggerType.EncounterPlanned],
    ['A04', 'p', TriggerType.EncounterPlanned],
    ['A02', 'I', TriggerType.EncounterTransferred],
    ['A03', 'I', TriggerType.EncounterFinished],
    ['A05', 'P', TriggerType.EncounterPlanned],
    ['A14', 'I', TriggerType.EncounterPlanned],
    ['A08', 'I', TriggerType.PatientUpdated],
    ['A28', '', TriggerType.PatientUpdated],
    ['A31', '', TriggerType.PatientUpdated],
    ['A11', 'I', TriggerType.EncounterCancelled],
    ['A27', 'I', TriggerType.EncounterCancelled],
    ['A13', 'I', TriggerType.EncounterDischargeCancelled],
    ['A40', '', TriggerType.PatientMerged],
    ['A34', '', TriggerType.PatientMerged],
    ['A35', '', TriggerType.PatientMerged],
    ['A36', '', TriggerType.PatientMerged],
    ['A39', '', TriggerType.PatientMerged],
    ['A10', 'I', ARRIVAL_ONLY],
    ['A17', 'I', undefined],
    ['A09', 'I', undefined],
  ];
  for (const [event, klass, type] of rows) {
    it(`${event} (PV1-2 "${klass}") → ${type}`, () => expect(adtTriggerType(event, klass)).toBe(type));
  }

  it('a valued PV1-45 sets status finished without changing the type; cancel events keep theirs', () => {
    expect(adtEncounterStatus('A01', TriggerType.EncounterStarted, false)).toBe('in-progress');
    expect(adtEncounterStatus('A01', TriggerType.EncounterStarted, true)).toBe('finished');
    expect(adtEncounterStatus('A08', TriggerType.PatientUpdated, false)).toBeUndefined();
    expect(adtEncounterStatus('A08', TriggerType.PatientUpdated, true)).toBe('finished');
    expect(adtEncounterStatus('A04', TriggerType.EncounterPlanned, false)).toBe('planned');
    expect(adtEncounterStatus('A03', TriggerType.EncounterFinished, false)).toBe('finished');
    expect(adtEncounterStatus('A11', TriggerType.EncounterCancelled, true)).toBe('cancelled');
    expect(adtEncounterStatus('A13', TriggerType.EncounterDischargeCancelled, true)).toBe('in-progress');
  });
});
