import { afterEach, describe, expect, it } from 'vitest';
import { startSrrResponder, type SrrResponder } from '../../../test/helpers/srr-responder.ts';
import { memoryReceiptLedger } from '../conformance.ts';
import { writeBackConformanceSuite, WriteBackFault, type WriteBackFixture } from '../write-back-conformance.ts';
import { CANCELLED_BY_REMINDER, SCHEDULED_FROM_WAITLIST, type WriteBackOperation } from '../write-back.ts';
import { controlIdOf, createHl7v2Srm, placerIdOf, srmFor, type Hl7v2SrmConfig } from './spec.ts';

const deps = { secret: () => '', receipts: memoryReceiptLedger(), now: () => new Date('2030-03-15T10:00:00Z') };

function config(port: number, over: Partial<Hl7v2SrmConfig> = {}): Hl7v2SrmConfig {
  return {
    name: 'scheduling',
    type: 'hl7v2-srm',
    host: '127.0.0.1',
    port,
    sendingApplication: 'CARERELAY',
    sendingFacility: 'CARERELAY',
    receivingApplication: 'SCHED',
    receivingFacility: 'HOSP',
    version: '2.5',
    patientAssigningAuthority: 'GHH',
    enteredBy: { id: 'CARERELAY', name: 'Automated reminder' },
    reasons: { confirm: { code: 'CONFIRMED', text: 'Confirmed by the patient via automated reminder' } },
    requirePlacerId: false,
    ackTimeoutSeconds: 10,
    connectTimeoutSeconds: 5,
    ...over,
  };
}

writeBackConformanceSuite('hl7v2-srm', {
  async start({ timeoutSeconds }): Promise<WriteBackFixture> {
    const responder = await startSrrResponder();
    responder.appointments.set('F-1', { confirmed: false, cancelled: false });
    return {
      adapter: createHl7v2Srm(config(responder.port, { ackTimeoutSeconds: timeoutSeconds }), deps),
      appointment: { id: 'F-1', placerId: 'P-1' },
      patient: { id: 'MRN-1', identifiers: [{ value: 'MRN-1' }] },
      state: async () => {
        const a = responder.appointments.get('F-1')!;
        return { confirmed: a.confirmed, cancelled: a.cancelled, ...(a.cancelReason !== undefined ? { cancelReason: a.cancelReason } : {}) };
      },
      refuse: () => {
        responder.appointments.get('F-1')!.refuse = true;
      },
      async fail(fault) {
        if (fault === WriteBackFault.Hang) responder.hangNext();
        else await responder.pause();
      },
      restore: () => responder.resume(),
      keys: () => responder.received.map((r) => r.controlId),
      close: () => responder.close(),
    };
  },
});

describe('hl7v2-srm', () => {
  let responder: SrrResponder;
  afterEach(async () => responder?.close());
  const signal = new AbortController().signal;
  const confirm: WriteBackOperation = { kind: 'confirm', requestId: 'wb~reminder@appointment/F-1#0', appointment: { id: 'F-1', placerId: 'P-1' }, patient: { id: 'MRN-1', identifiers: [{ value: 'MRN-1' }] } };

  it('sends SRM^S03 with ARQ-1/ARQ-2 from the placer and filler ids, and SRM^S04 with the cancellation reason', async () => {
    responder = await startSrrResponder();
    responder.appointments.set('F-1', { confirmed: false, cancelled: false });
    const adapter = createHl7v2Srm(config(responder.port), deps);
    expect(await adapter.writeBack!(confirm, { signal, attempt: 1 })).toEqual({ outcome: 'applied', appointmentId: 'F-1' });
    expect(await adapter.writeBack!({ ...confirm, kind: 'cancel', requestId: 'c', reason: CANCELLED_BY_REMINDER }, { signal, attempt: 1 })).toMatchObject({ outcome: 'applied' });
    await adapter.close!();
    const [s03, s04] = responder.received;
    expect(s03).toMatchObject({ type: 'SRM^S03^SRM_S01', controlId: controlIdOf(confirm.requestId), patient: 'MRN-1^^^GHH^MR', answered: 'AA' });
    expect(s03!.arq).toEqual({ 1: 'P-1', 2: 'F-1', 6: 'CONFIRMED^Confirmed by the patient via automated reminder', 15: 'CARERELAY^Automated reminder', 19: 'CARERELAY^Automated reminder' });
    expect(s04).toMatchObject({ type: 'SRM^S04^SRM_S01', answered: 'AA' });
    expect(s04!.arq[6]).toBe('pat-crs^Patient: Canceled via automated reminder system');
    expect(responder.appointments.get('F-1')).toMatchObject({ confirmed: true, cancelled: true, cancelReason: 'pat-crs' });
  });

  it('AE is denied, AR is refused: both a result for staff, not an error', async () => {
    responder = await startSrrResponder();
    const adapter = createHl7v2Srm(config(responder.port), deps);
    // Unknown to the filler: AE.
    expect(await adapter.writeBack!(confirm, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'hl7_ae' });
    // Without the persons v2.5 requires: AR.
    const bare = createHl7v2Srm(config(responder.port, { enteredBy: { id: '', name: '' } }), deps);
    expect(await bare.writeBack!({ ...confirm, requestId: 'other' }, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'hl7_ar' });
    await Promise.all([adapter.close!(), bare.close!()]);
  });

  it('a stale SRR on the connection is not taken for the answer (MSA-2 must be the MSH-10)', async () => {
    responder = await startSrrResponder();
    responder.appointments.set('F-1', { confirmed: false, cancelled: false, refuse: true });
    responder.staleNext();
    const adapter = createHl7v2Srm(config(responder.port), deps);
    // The stale frame says AA; the real answer is AE.
    expect(await adapter.writeBack!(confirm, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'hl7_ae' });
    await adapter.close!();
  });

  it('requirePlacerId: an appointment without one is denied without sending', async () => {
    responder = await startSrrResponder();
    const adapter = createHl7v2Srm(config(responder.port, { requirePlacerId: true }), deps);
    expect(await adapter.writeBack!({ ...confirm, appointment: { id: 'F-1' } }, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'no_placer_id' });
    expect(responder.received).toEqual([]);
  });

  describe('book: SRM^S01', () => {
    const book: WriteBackOperation = {
      kind: 'book',
      requestId: 'wl~offer-1',
      appointment: { id: 'FREED-1' },
      patient: { id: 'MRN-1', identifiers: [{ value: 'MRN-1' }] },
      slot: { start: '2030-03-12T09:00:00Z', durationMinutes: 20, serviceType: { code: 'CHK', display: 'Check-up', system: 'L' }, practitioner: { id: 'DR-22', name: 'Martin' }, location: { id: 'ROOM1' } },
    };

    it('requests the booking with ARQ, PID, RGS and AIS/AIL/AIP; AA books it, and the SCH-2 of the SRR names the appointment made', async () => {
      responder = await startSrrResponder();
      responder.offer('20300312090000+0000');
      const adapter = createHl7v2Srm(config(responder.port), deps);
      expect(adapter.writeBackKinds).toEqual(['confirm', 'cancel', 'book']);
      expect(await adapter.writeBack!(book, { signal, attempt: 1 })).toEqual({ outcome: 'applied', appointmentId: 'FILL-1' });
      await adapter.close!();
      const [s01] = responder.received;
      expect(s01).toMatchObject({ type: 'SRM^S01^SRM_S01', controlId: controlIdOf(book.requestId), patient: 'MRN-1^^^GHH^MR', answered: 'AA' });
      expect(s01!.arq).toEqual({
        1: `${placerIdOf(book)}^CARERELAY`,
        6: 'WAITLIST^Freed slot taken from the wait list',
        9: '20',
        10: 'min^minutes^ISO+',
        11: '20300312090000+0000^20300312092000+0000',
        15: 'CARERELAY^Automated reminder',
        19: 'CARERELAY^Automated reminder',
      });
      expect(s01!.raw.split('\r').slice(2)).toEqual([
        'PID|1||MRN-1^^^GHH^MR',
        'RGS|1|A',
        'AIS|1|A|CHK^Check-up^L|20300312090000+0000|||20|min^minutes^ISO+',
        'AIL|1|A|ROOM1|||20300312090000+0000|||20|min^minutes^ISO+',
        'AIP|1|A|DR-22^Martin|||20300312090000+0000|||20|min^minutes^ISO+',
      ]);
      expect(responder.booked).toEqual([{ placerId: placerIdOf(book), filler: 'FILL-1', start: '20300312090000+0000', service: 'CHK^Check-up^L', patient: 'MRN-1^^^GHH^MR', practitioner: 'DR-22^Martin', location: 'ROOM1' }]);
    });

    it('a slot the filler does not offer is AE (denied hl7_ae); a slot without a service is denied without sending', async () => {
      responder = await startSrrResponder();
      const adapter = createHl7v2Srm(config(responder.port), deps);
      expect(await adapter.writeBack!(book, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'hl7_ae' });
      const { serviceType: _s, ...noService } = book.slot;
      expect(await adapter.writeBack!({ ...book, requestId: 'other', slot: noService }, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'no_service' });
      expect(responder.received).toHaveLength(1);
      expect(responder.booked).toEqual([]);
      await adapter.close!();
    });

    it('an SRR that never came: the resend carries the same MSH-10 and ARQ-1, and the filler books once', async () => {
      responder = await startSrrResponder();
      responder.offer('20300312090000+0000');
      responder.hangNext();
      const adapter = createHl7v2Srm(config(responder.port), deps);
      // The lease ends while the SRR is awaited (the filler took the request): the outcome is unknown.
      const lease = new AbortController();
      const first = adapter.writeBack!(book, { signal: lease.signal, attempt: 1 });
      await responder.waitFor(1);
      lease.abort();
      await expect(first).rejects.toMatchObject({ failureClass: 'ambiguous' });
      expect(await adapter.writeBack!(book, { signal, attempt: 2 })).toEqual({ outcome: 'applied', appointmentId: 'FILL-1' });
      await adapter.close!();
      expect(new Set(responder.received.map((r) => r.controlId)).size).toBe(1);
      expect(responder.booked).toHaveLength(1);
    });
  });

  it("a waitlist booking's cancellation of the later appointment carries pat-swl, not the configured cancel reason", () => {
    const arq = (reason: typeof CANCELLED_BY_REMINDER | typeof SCHEDULED_FROM_WAITLIST) =>
      srmFor({ ...confirm, kind: 'cancel', reason }, config(1, { reasons: { confirm: { code: 'C', text: 'c' }, cancel: { code: 'LOCAL-X', text: 'Local' } } }), new Date()).split('\r')[1]!.split('|')[6];
    expect(arq(CANCELLED_BY_REMINDER)).toBe('LOCAL-X^Local');
    expect(arq(SCHEDULED_FROM_WAITLIST)).toBe('pat-swl^Patient: Scheduled from Wait List');
  });

  it('escapes ids that contain HL7 delimiters', () => {
    const text = srmFor({ ...confirm, appointment: { id: 'F|1^2', placerId: 'P&3' } }, config(1), new Date('2030-01-01T00:00:00Z'));
    expect(text.split('\r')[1]).toMatch(/^ARQ\|P\\T\\3\|F\\F\\1\\S\\2\|/);
    expect(controlIdOf('x')).toHaveLength(20);
  });
});
