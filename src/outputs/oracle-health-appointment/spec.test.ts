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
});
