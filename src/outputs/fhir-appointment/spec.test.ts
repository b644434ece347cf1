import { afterEach, describe, expect, it } from 'vitest';
import { startFhirAppointmentStandIn, type AppointmentStandIn } from '../../../test/helpers/appointment-standins.ts';
import { memoryReceiptLedger } from '../conformance.ts';
import type { OutputDeps } from '../spec.ts';
import { writeBackConformanceSuite, WriteBackFault, type WriteBackFixture } from '../write-back-conformance.ts';
import { CANCELLED_BY_REMINDER, type WriteBackOperation } from '../write-back.ts';
import { createFhirAppointment, fhirAppointmentSpec, type FhirAppointmentConfig } from './spec.ts';

const deps = (token: string): OutputDeps => ({ secret: () => token, receipts: memoryReceiptLedger(), now: () => new Date() });

function config(standIn: AppointmentStandIn, over: Partial<FhirAppointmentConfig> = {}, timeoutSeconds = 10): FhirAppointmentConfig {
  return {
    name: 'ehr',
    type: 'fhir-appointment',
    server: { baseUrl: standIn.baseUrl, auth: { bearer: { token: { env: 'FHIR_TOKEN' } } }, timeoutSeconds, allowInsecureHttp: false },
    appointments: 'id',
    ...over,
  };
}

function faultOn(standIn: AppointmentStandIn, fault: WriteBackFault): void {
  if (fault === WriteBackFault.Hang) standIn.http.failNext({ kind: 'hang' });
  else if (fault === WriteBackFault.RateLimited) standIn.http.failNext({ kind: 'answer', status: 429, headers: { 'retry-after': '7' } });
  else standIn.http.failNext({ kind: 'answer', status: 503 });
}

writeBackConformanceSuite('fhir-appointment', {
  async start({ timeoutSeconds }): Promise<WriteBackFixture> {
    const standIn = await startFhirAppointmentStandIn();
    standIn.book('A1', 'P1');
    return {
      adapter: createFhirAppointment(config(standIn, {}, timeoutSeconds), deps(standIn.token)),
      appointment: { id: 'A1' },
      patient: { id: 'P1', identifiers: [{ value: 'P1' }] },
      state: async () => standIn.state('A1'),
      refuse: () => {
        standIn.appointments.get('A1')!.status = 'fulfilled';
      },
      fail: (fault) => faultOn(standIn, fault),
      retryAfterMs: 7000,
      keys: () => [],
      close: () => standIn.close(),
    };
  },
});

describe('fhir-appointment', () => {
  let standIn: AppointmentStandIn;
  afterEach(async () => standIn?.close());
  const signal = new AbortController().signal;
  const patient = { id: 'P1', identifiers: [{ value: 'P1' }] };
  const confirm: WriteBackOperation = { kind: 'confirm', requestId: 'r1', appointment: { id: 'A1' }, patient };

  it('confirms with a version-aware PUT that changes only the patient participant', async () => {
    standIn = await startFhirAppointmentStandIn();
    const before = structuredClone(standIn.book('A1', 'P1'));
    const result = await createFhirAppointment(config(standIn), deps(standIn.token)).writeBack!(confirm, { signal, attempt: 1 });
    expect(result).toEqual({ outcome: 'applied', appointmentId: 'A1', version: '2' });
    const [put] = standIn.writes();
    expect(put!.headers['if-match']).toBe('W/"1"');
    const after = standIn.appointments.get('A1')!;
    expect(after.participant).toEqual([before.participant[0], { ...before.participant[1], status: 'accepted' }]);
    expect({ ...after, participant: before.participant, meta: before.meta }).toEqual(before);
  });

  it('cancels with status cancelled and the pat-crs reason', async () => {
    standIn = await startFhirAppointmentStandIn();
    standIn.book('A1', 'P1');
    await createFhirAppointment(config(standIn), deps(standIn.token)).writeBack!({ ...confirm, kind: 'cancel', reason: CANCELLED_BY_REMINDER }, { signal, attempt: 1 });
    expect(standIn.appointments.get('A1')).toMatchObject({
      status: 'cancelled',
      cancelationReason: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason', code: 'pat-crs', display: 'Patient: Canceled via automated reminder system' }] },
    });
  });

  for (const conflictStatus of [412, 409] as const) {
    it(`a ${conflictStatus} on the write: read again and write once more; a second conflict is denied for staff`, async () => {
      standIn = await startFhirAppointmentStandIn({ conflictStatus });
      standIn.book('A1', 'P1');
      const adapter = createFhirAppointment(config(standIn), deps(standIn.token));
      standIn.interfere(1);
      expect(await adapter.writeBack!(confirm, { signal, attempt: 1 })).toMatchObject({ outcome: 'applied' });
      expect(standIn.writes().map((w) => w.status)).toEqual([conflictStatus, 200]);
      expect(standIn.state('A1').confirmed).toBe(true);

      standIn.book('A2', 'P1');
      standIn.interfere(2);
      expect(await adapter.writeBack!({ ...confirm, appointment: { id: 'A2' } }, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'version_conflict' });
      expect(standIn.state('A2').confirmed).toBe(false);
    });
  }

  it('after a conflict, an appointment the re-read shows no longer open is denied, not written', async () => {
    standIn = await startFhirAppointmentStandIn();
    standIn.book('A1', 'P1');
    const adapter = createFhirAppointment(config(standIn), deps(standIn.token));
    standIn.interfere(1);
    const first = adapter.writeBack!(confirm, { signal, attempt: 1 });
    // The conflicting write arrived (read, write): the other writer checked the patient in.
    await standIn.http.waitForRequests(2);
    standIn.appointments.get('A1')!.status = 'arrived';
    expect(await first).toEqual({ outcome: 'denied', code: 'appointment_arrived' });
    expect(standIn.writes()).toHaveLength(1);
  });

  it('already done, refused statuses, an unknown appointment and a patient it cannot find: no write', async () => {
    standIn = await startFhirAppointmentStandIn();
    const adapter = createFhirAppointment(config(standIn), deps(standIn.token));
    standIn.book('A1', 'P1').participant[1]!.status = 'accepted';
    expect(await adapter.writeBack!(confirm, { signal, attempt: 1 })).toEqual({ outcome: 'applied', unchanged: true, appointmentId: 'A1' });
    standIn.book('A2', 'P1').status = 'noshow';
    expect(await adapter.writeBack!({ ...confirm, appointment: { id: 'A2' } }, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'appointment_noshow' });
    expect(await adapter.writeBack!({ ...confirm, appointment: { id: 'NOPE' } }, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'appointment_not_found' });
    const shared = standIn.book('A3', 'P1');
    shared.participant.push({ actor: { reference: 'Patient/P2' }, status: 'tentative' });
    expect(await adapter.writeBack!({ ...confirm, appointment: { id: 'A3' }, patient: { id: 'OTHER', identifiers: [{ value: 'OTHER' }] } }, { signal, attempt: 1 })).toEqual({
      outcome: 'denied',
      code: 'no_patient_participant',
    });
    // With two patients on it, the one whose id matches is confirmed.
    expect(await adapter.writeBack!({ ...confirm, appointment: { id: 'A3' } }, { signal, attempt: 1 })).toMatchObject({ outcome: 'applied' });
    expect(standIn.appointments.get('A3')!.participant.map((p) => p.status)).toEqual(['accepted', 'accepted', 'tentative']);
    expect(standIn.writes()).toHaveLength(1);
  });

  it('finds an appointment from an HL7 feed by its identifier', async () => {
    standIn = await startFhirAppointmentStandIn();
    standIn.book('fhir-77', 'P1', { system: 'urn:oid:1.2.3', value: 'FILLER-9' });
    const adapter = createFhirAppointment(config(standIn, { appointments: 'identifier', identifierSystem: 'urn:oid:1.2.3' }), deps(standIn.token));
    expect(await adapter.writeBack!({ ...confirm, appointment: { id: 'FILLER-9' } }, { signal, attempt: 1 })).toMatchObject({ outcome: 'applied', appointmentId: 'fhir-77' });
    expect(standIn.state('fhir-77').confirmed).toBe(true);
  });

  it('a wrong token is a permanent failure naming the fix', async () => {
    standIn = await startFhirAppointmentStandIn();
    standIn.book('A1', 'P1');
    await expect(createFhirAppointment(config(standIn), deps('wrong')).writeBack!(confirm, { signal, attempt: 1 })).rejects.toMatchObject({ failureClass: 'permanent' });
  });

  describe('book: $book (Argonaut Scheduling Appointment/$book)', () => {
    const book: WriteBackOperation = {
      kind: 'book',
      requestId: 'wl~offer-1',
      appointment: { id: 'FREED-1' },
      patient,
      slot: { start: '2030-03-12T09:00:00Z', durationMinutes: 20, serviceType: { code: 'CHK', system: 'urn:oid:1.2.9' }, practitioner: { id: 'PR1' } },
    };
    const byOperation = (s: AppointmentStandIn) => createFhirAppointment(config(s, { book: '$book' }), deps(s.token));

    it('posts a Parameters with the proposed appointment and the patient; the booked Appointment of the answer is the booking', async () => {
      standIn = await startFhirAppointmentStandIn();
      expect(await byOperation(standIn).writeBack!(book, { signal, attempt: 1 })).toEqual({ outcome: 'applied', appointmentId: 'booked-1', version: '1' });
      expect(standIn.creates()).toEqual([]);
      const [call] = standIn.bookings();
      const body = JSON.parse(call!.text) as { resourceType: string; parameter: Array<{ name: string; resource?: Record<string, unknown>; valueUri?: string }> };
      expect(body.parameter.map((p) => p.name)).toEqual(['appt-resource', 'patient-id']);
      expect(body.parameter[1]!.valueUri).toBe('Patient/P1');
      expect(body.parameter[0]!.resource).toMatchObject({
        resourceType: 'Appointment',
        status: 'proposed',
        start: '2030-03-12T09:00:00Z',
        end: '2030-03-12T09:20:00.000Z',
        minutesDuration: 20,
        identifier: [{ system: 'urn:carerelay:waitlist-booking', value: 'wl~offer-1' }],
        serviceType: [{ coding: [{ system: 'urn:oid:1.2.9', code: 'CHK' }] }],
        participant: [
          { actor: { reference: 'Patient/P1' }, status: 'needs-action' },
          { actor: { reference: 'Practitioner/PR1' }, status: 'needs-action' },
        ],
      });
      expect(standIn.appointments.get('booked-1')).toMatchObject({ status: 'booked' });
    });

    it('a rejected booking (the Appointment answered cancelled), 409 and 412 are slot_unavailable; 422 fhir_unprocessable; nothing booked', async () => {
      standIn = await startFhirAppointmentStandIn();
      const adapter = byOperation(standIn);
      standIn.rejectBookings(1);
      expect(await adapter.writeBack!(book, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'slot_unavailable' });
      for (const [status, code] of [[409, 'slot_unavailable'], [412, 'slot_unavailable'], [422, 'fhir_unprocessable']] as const) {
        standIn.failCreates(1, status);
        expect(await adapter.writeBack!(book, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code });
      }
      expect([...standIn.appointments.values()].filter((a) => a.status === 'booked')).toEqual([]);
    });

    it('429 keeps Retry-After, 503 is transient, another 5xx is ambiguous: a repeat finds the booking the lost answer made instead of booking twice', async () => {
      standIn = await startFhirAppointmentStandIn();
      const adapter = byOperation(standIn);
      standIn.http.failNext({ kind: 'answer', status: 429, headers: { 'retry-after': '7' } });
      await expect(adapter.writeBack!(book, { signal, attempt: 1 })).rejects.toMatchObject({ failureClass: 'transient', retryAfterMs: 7000 });
      standIn.failCreates(1, 503);
      await expect(adapter.writeBack!(book, { signal, attempt: 2 })).rejects.toMatchObject({ failureClass: 'transient' });
      standIn.lostBookingAnswers(1);
      await expect(adapter.writeBack!(book, { signal, attempt: 3 })).rejects.toMatchObject({ failureClass: 'ambiguous' });
      expect(await adapter.writeBack!(book, { signal, attempt: 4 })).toEqual({ outcome: 'applied', unchanged: true, appointmentId: 'booked-1', version: '1' });
      expect(standIn.bookings().map((r) => r.status)).toEqual([429, 503, 500]);
      expect([...standIn.appointments.values()].filter((a) => a.status === 'booked')).toHaveLength(1);
    });

    it('with appointments: identifier, patient and practitioner are logical references and no patient-id is sent', async () => {
      standIn = await startFhirAppointmentStandIn();
      await createFhirAppointment(config(standIn, { book: '$book', appointments: 'identifier' }), deps(standIn.token)).writeBack!(book, { signal, attempt: 1 });
      const body = JSON.parse(standIn.bookings()[0]!.text) as { parameter: Array<{ name: string; resource?: { participant: unknown[] } }> };
      expect(body.parameter.map((p) => p.name)).toEqual(['appt-resource']);
      expect(body.parameter[0]!.resource!.participant[0]).toEqual({ actor: { type: 'Patient', identifier: { value: 'P1' } }, status: 'needs-action' });
    });

    it('a slot a FHIR Slot freed is booked naming that Slot (Appointment.slot); another names none', async () => {
      standIn = await startFhirAppointmentStandIn();
      const fromSlot: WriteBackOperation = { ...book, requestId: 'wl~offer-2', slot: { ...book.slot, fhirSlot: 'SLOT-9' } };
      await byOperation(standIn).writeBack!(fromSlot, { signal, attempt: 1 });
      await byOperation(standIn).writeBack!({ ...book, requestId: 'wl~offer-3' }, { signal, attempt: 1 });
      const sent = standIn.bookings().map((call) => (JSON.parse(call.text) as { parameter: Array<{ resource?: { slot?: unknown } }> }).parameter[0]!.resource!.slot);
      expect(sent).toEqual([[{ reference: 'Slot/SLOT-9' }], undefined]);
    });
  });

  it('declares write-back only: no purposes, confirm and cancel, and booking a waitlist slot', () => {
    expect(fhirAppointmentSpec.info({} as FhirAppointmentConfig)).toMatchObject({ allowedPurposes: [], writeBackKinds: ['confirm', 'cancel', 'book'] });
  });
});
