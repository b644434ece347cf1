import { afterEach, describe, expect, it } from 'vitest';
import { startOracleAppointmentStandIn, type AppointmentStandIn } from '../../../test/helpers/appointment-standins.ts';
import { TransientError } from '../../errors.ts';
import { memoryReceiptLedger } from '../conformance.ts';
import type { OutputDeps } from '../spec.ts';
import { writeBackConformanceSuite, WriteBackFault, type WriteBackFixture } from '../write-back-conformance.ts';
import { CANCELLED_BY_REMINDER, type WriteBackOperation } from '../write-back.ts';
import { createOracleHealthAppointment, patchFor, type OracleHealthAppointmentConfig } from './spec.ts';

const deps = (token: string): OutputDeps => ({ secret: () => token, receipts: memoryReceiptLedger(), now: () => new Date() });

function config(standIn: AppointmentStandIn, timeoutSeconds = 10): OracleHealthAppointmentConfig {
  return { name: 'millennium', type: 'oracle-health-appointment', server: { baseUrl: standIn.baseUrl, auth: { bearer: { token: { env: 'T' } } }, timeoutSeconds, allowInsecureHttp: false } };
}

writeBackConformanceSuite('oracle-health-appointment', {
  async start({ timeoutSeconds }): Promise<WriteBackFixture> {
    const standIn = await startOracleAppointmentStandIn();
    standIn.book('4817517', 'P1');
    return {
      adapter: createOracleHealthAppointment(config(standIn, timeoutSeconds), deps(standIn.token)),
      appointment: { id: '4817517' },
      patient: { id: 'P1', identifiers: [{ value: 'P1' }] },
      state: async () => standIn.state('4817517'),
      refuse: () => {
        // Checked in meanwhile: /patient-status is only for a booked appointment (422).
        standIn.appointments.get('4817517')!.status = 'checked-in';
      },
      fail: (fault) => {
        if (fault === WriteBackFault.Hang) standIn.http.failNext({ kind: 'hang' });
        else if (fault === WriteBackFault.RateLimited) standIn.http.failNext({ kind: 'answer', status: 429, headers: { 'retry-after': '5' } });
        // 423 Locked is Millennium's own "try again".
        else standIn.lock(1);
      },
      retryAfterMs: 5000,
      keys: () => [],
      close: () => standIn.close(),
    };
  },
});

describe('oracle-health-appointment', () => {
  let standIn: Awaited<ReturnType<typeof startOracleAppointmentStandIn>>;
  afterEach(async () => standIn?.close());
  const signal = new AbortController().signal;
  const confirm: WriteBackOperation = { kind: 'confirm', requestId: 'r1', appointment: { id: '4817517' }, patient: { id: 'P1', identifiers: [{ value: 'P1' }] } };

  it('patches only the documented paths, with If-Match and application/json-patch+json', async () => {
    standIn = await startOracleAppointmentStandIn();
    standIn.book('4817517', 'P1');
    const adapter = createOracleHealthAppointment(config(standIn), deps(standIn.token));
    expect(await adapter.writeBack!(confirm, { signal, attempt: 1 })).toEqual({ outcome: 'applied', appointmentId: '4817517', version: '2' });
    const [patch] = standIn.writes();
    expect(patch).toMatchObject({ method: 'PATCH', path: '/fhir/Appointment/4817517', status: 200 });
    expect(patch!.headers['content-type']).toMatch(/^application\/json-patch\+json/);
    expect(patch!.headers['if-match']).toBe('W/"1"');
    expect(JSON.parse(patch!.text)).toEqual([{ op: 'replace', path: '/patient-status', value: 'accepted' }]);
    expect(patchFor({ ...confirm, kind: 'cancel', reason: CANCELLED_BY_REMINDER })).toEqual([
      { op: 'replace', path: '/status', value: 'cancelled' },
      { op: 'add', path: '/cancelationReason', value: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason', code: 'pat-crs' }] } },
    ]);
  });

  it('a 409 (stale version) is read again and patched once more; twice is denied for staff', async () => {
    standIn = await startOracleAppointmentStandIn();
    standIn.book('4817517', 'P1');
    const adapter = createOracleHealthAppointment(config(standIn), deps(standIn.token));
    standIn.interfere(1);
    expect(await adapter.writeBack!(confirm, { signal, attempt: 1 })).toMatchObject({ outcome: 'applied' });
    expect(standIn.writes().map((w) => w.status)).toEqual([409, 200]);
    standIn.book('2', 'P1');
    standIn.interfere(2);
    expect(await adapter.writeBack!({ ...confirm, appointment: { id: '2' } }, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'version_conflict' });
  });

  it('423 Locked is transient: the next attempt applies it', async () => {
    standIn = await startOracleAppointmentStandIn();
    standIn.book('4817517', 'P1');
    const adapter = createOracleHealthAppointment(config(standIn), deps(standIn.token));
    standIn.lock(1);
    const error = await adapter.writeBack!(confirm, { signal, attempt: 1 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TransientError);
    expect((error as TransientError).code).toBe('oracle_locked');
    expect(await adapter.writeBack!(confirm, { signal, attempt: 2 })).toMatchObject({ outcome: 'applied' });
  });

  it('the server refusing the patch (422: not tentative, not booked) is denied; a cancel after check-in too', async () => {
    standIn = await startOracleAppointmentStandIn();
    const adapter = createOracleHealthAppointment(config(standIn), deps(standIn.token));
    standIn.book('4817517', 'P1').participant[1]!.status = 'needs-action';
    expect(await adapter.writeBack!(confirm, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'oracle_unprocessable' });
    standIn.book('9', 'P1').status = 'checked-in';
    expect(await adapter.writeBack!({ ...confirm, kind: 'cancel', reason: CANCELLED_BY_REMINDER, appointment: { id: '9' } }, { signal, attempt: 1 })).toEqual({
      outcome: 'denied',
      code: 'appointment_checked_in',
    });
  });

  describe('book: a free Slot, then a booked Appointment in it', () => {
    const SERVICE = 'https://fhir.cerner.com/ec2458f2-1e24-41c8-b71b-0e701af7583d/codeSet/14249';
    const book: WriteBackOperation = {
      kind: 'book',
      requestId: 'wl~offer-1',
      appointment: { id: '4817517' },
      patient: { id: '12724066', identifiers: [{ value: '12724066' }] },
      slot: { start: '2030-03-12T09:00:00Z', durationMinutes: 20, serviceType: { code: '4047611', system: SERVICE }, practitioner: { id: '593923' } },
    };
    const offer = (s: typeof standIn, id: string, start = '2030-03-12T09:00:00Z', actor = 'Practitioner/593923') =>
      s.slots.set(id, { resourceType: 'Slot', id, status: 'free', start, end: new Date(Date.parse(start) + 20 * 60_000).toISOString(), serviceType: [{ coding: [{ system: SERVICE, code: '4047611' }] }], schedule: { reference: 'Schedule/1' }, actor });

    it('finds the free Slot of that time, service and practitioner, and creates the booked Appointment the documented way', async () => {
      standIn = await startOracleAppointmentStandIn();
      offer(standIn, '24477854-21304876-62852027-0', '2030-03-12T09:20:00Z');
      offer(standIn, '24477854-21304876-62852027-1', '2030-03-12T09:00:00Z', 'Practitioner/OTHER');
      offer(standIn, '24477854-21304876-62852027-2');
      const adapter = createOracleHealthAppointment(config(standIn), deps(standIn.token));
      expect(adapter.writeBackKinds).toEqual(['confirm', 'cancel', 'book']);
      expect(await adapter.writeBack!(book, { signal, attempt: 1 })).toEqual({ outcome: 'applied', appointmentId: '9100001', version: '0' });
      const search = standIn.http.requests.find((r) => r.path === '/fhir/Slot')!;
      expect(search.query.get('service-type')).toBe(`${SERVICE}|4047611`);
      expect(search.query.getAll('start')).toEqual(['ge2030-03-12T09:00:00.000Z', 'lt2030-03-12T09:01:00.000Z']);
      expect(search.query.get('schedule.actor')).toBe('Practitioner/593923');
      const [create] = standIn.creates();
      expect(JSON.parse(create!.text)).toEqual({
        resourceType: 'Appointment',
        status: 'booked',
        slot: [{ reference: 'Slot/24477854-21304876-62852027-2' }],
        participant: [{ actor: { reference: 'Patient/12724066' }, status: 'accepted' }],
      });
      expect(standIn.slots.get('24477854-21304876-62852027-2')!.status).toBe('busy');
    });

    it('no free Slot at that time, or one taken between search and create (409), is slot_unavailable; no service type, no_service', async () => {
      standIn = await startOracleAppointmentStandIn();
      const adapter = createOracleHealthAppointment(config(standIn), deps(standIn.token));
      expect(await adapter.writeBack!(book, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'slot_unavailable' });
      const { serviceType: _s, ...noService } = book.slot;
      expect(await adapter.writeBack!({ ...book, slot: noService }, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'no_service' });
      // The search shows S-1 free; another booking takes it before the create (409).
      const json = { 'content-type': 'application/fhir+json' };
      offer(standIn, 'S-1');
      standIn.http.failNext({ kind: 'answer', status: 200, headers: json, body: { resourceType: 'Bundle', type: 'searchset', entry: [{ resource: standIn.slots.get('S-1') }] } });
      standIn.http.failNext({ kind: 'answer', status: 409, headers: json, body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'conflict' }] } });
      expect(await adapter.writeBack!(book, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'slot_unavailable' });
      expect(standIn.creates().map((r) => r.status)).toEqual([409]);
    });

    it('a repeat after a lost answer finds the booking the first attempt made instead of booking a second time', async () => {
      standIn = await startOracleAppointmentStandIn();
      offer(standIn, 'S-1');
      offer(standIn, 'S-2');
      const adapter = createOracleHealthAppointment(config(standIn), deps(standIn.token));
      expect(await adapter.writeBack!(book, { signal, attempt: 1 })).toMatchObject({ outcome: 'applied', appointmentId: '9100001' });
      // The first attempt's answer never reached the queue: attempt 2 runs.
      expect(await adapter.writeBack!(book, { signal, attempt: 2 })).toEqual({ outcome: 'applied', unchanged: true, appointmentId: '9100001' });
      expect(standIn.creates()).toHaveLength(1);
      expect(standIn.slots.get('S-2')!.status).toBe('free');
    });
  });
});
