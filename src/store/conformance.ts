// The behaviour every Store backend must show (docs/architecture.md "Interfaces": both backends
// pass one shared suite). A backend's test file calls storeConformanceSuite with a factory
// that gives a fresh, empty store per test. All data here is synthetic.
import { createHash } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MessageStatus, type Delivery, type PatientTrigger, type Trigger } from '../types.ts';
import { consentLedgerConformance } from './consent-conformance.ts';
import { replyLedgerConformance } from './reply-conformance.ts';
import { operationsConformance } from './operations-conformance.ts';
import { videoConformance } from './video-conformance.ts';
import { waitlistRetentionConformance } from './waitlist-retention-conformance.ts';
import { isPending, PENDING_REASON, RAW_QUOTA_CURSOR, type DeliveryWrite, type InboundRecord, type Store, type StoredMessage, type SubjectState } from './store.ts';

export interface StoreHandle {
  store: Store;
  /** Closes the store and removes what the factory created (files, schema). */
  cleanup: () => Promise<void>;
}

/** An HL7-shaped message: CR segment ends and a Latin-1 byte, to prove bytes come back exact. */
export function hl7Bytes(controlId: string, variant = ''): Buffer {
  const text =
    `MSH|^~\\&|EPIC|GHH|CARERELAY|HOSP|20240101093000||SIU^S12|${controlId}|P|2.5.1|||||8859/1\r` +
    `SCH|A-${controlId}|A-${controlId}||||||||30|MIN|^^30^20240102100000^20240102103000\r` +
    `PID|1||MRN-1^^^GHH^MR||TESTPATIENT^ALEX${variant}\r`;
  // 0xE9 (é in Latin-1) is not valid UTF-8: a backend that stores text would mangle it.
  return Buffer.concat([Buffer.from(text, 'latin1'), Buffer.from([0xe9, 0x0d, 0x00, 0xff])]);
}

export function sha256(raw: Buffer): string {
  return createHash('sha256').update(raw).digest('hex');
}

export function testTrigger(overrides: Partial<PatientTrigger> & { id: string }): PatientTrigger {
  return {
    type: 'appointment.booked',
    occurredAt: '2024-01-01T09:30:00Z',
    receivedAt: '2024-01-01T09:30:01Z',
    source: { format: 'hl7v2', sender: 'EPIC^GHH', messageType: 'SIU^S12', messageId: 'C1' },
    patient: {
      id: 'MRN-1',
      identifiers: [{ value: 'MRN-1', system: 'GHH', type: 'MR' }],
      name: { family: 'Testpatient', given: ['Alex'] },
      deceased: false,
      telecom: [{ system: 'phone', use: 'mobile', value: '+15550100' }],
    },
    appointment: { id: 'APT-1', status: 'booked', start: '2024-01-02T10:00:00+01:00', durationMinutes: 30 },
    sensitivity: [],
    ...overrides,
  };
}

/** A complete record; `controlId` also seeds the raw bytes, so different ids mean different bytes. */
export function testRecord(overrides: Partial<InboundRecord> & { controlId: string }): InboundRecord {
  const raw = overrides.raw ?? hl7Bytes(overrides.controlId);
  return {
    input: 'mllp-main',
    format: 'hl7v2',
    sender: 'EPIC^GHH',
    messageType: 'SIU^S12',
    status: MessageStatus.Accepted,
    ack: `MSH|^~\\&|CARERELAY|HOSP|EPIC|GHH|20240101093001||ACK^S12|ACK-${overrides.controlId}|P|2.5.1\rMSA|AA|${overrides.controlId}\r`,
    ackCode: 'AA',
    receivedAt: '2024-01-01T09:30:01Z',
    triggers: [],
    subjectStates: [],
    ...overrides,
    raw,
    contentHash: overrides.contentHash ?? sha256(raw),
  };
}

function appointmentState(overrides: Partial<SubjectState> & { asOf: string }): SubjectState {
  return { kind: 'appointment', id: 'APT-1', patientId: 'MRN-1', status: 'booked', start: '2024-01-02T10:00:00+01:00', ...overrides };
}

const ids = (list: StoredMessage[]): string[] => list.map((m) => m.controlId);

function stored(outcome: Awaited<ReturnType<Store['commitInbound']>>): StoredMessage {
  expect(outcome.outcome).toBe('stored');
  return outcome.message;
}

/** A planned delivery as route() builds it (pipeline/route.ts), about appointment `appointmentId`. */
export function testDelivery(overrides: Partial<Delivery> & { appointmentId?: string } = {}): Delivery {
  const { appointmentId = 'APT-1', ...rest } = overrides;
  const subjectKey = `appointment/${encodeURIComponent(appointmentId)}`;
  const ruleId = rest.ruleId ?? 'reminder';
  const id = `${ruleId}@${subjectKey}#0`;
  return {
    id,
    ruleId,
    subjectKey,
    subjectKind: 'appointment',
    subjectId: appointmentId,
    step: 0,
    patientId: 'MRN-1',
    triggerId: 'trg-1',
    triggerType: 'appointment.booked',
    asOf: '2024-01-01T09:30:00Z',
    plannedAt: '2024-01-01T10:00:00+01:00',
    dueAt: '2024-01-01T10:00:00+01:00',
    purpose: 'care.logistics',
    channel: 'sms',
    output: 'sms',
    template: 'reminder',
    to: '+15550100',
    cancelKeys: [id, subjectKey, 'patient/MRN-1', `rule/${ruleId}`, `appointment.cancelled@${subjectKey}`],
    payload: { appointment: { start: '2024-01-02T10:00:00+01:00' } },
    ...rest,
  };
}

function write(delivery: Delivery, overrides: Partial<DeliveryWrite> = {}): DeliveryWrite {
  return { delivery, status: 'pending', asOf: delivery.asOf, generation: 1, updatedAt: '2024-01-01T09:30:02Z', ...overrides };
}

export function storeConformanceSuite(name: string, makeStore: () => Promise<StoreHandle>): void {
  describe(`Store conformance: ${name}`, () => {
    let handle: StoreHandle;
    let store: Store;

    beforeEach(async () => {
      handle = await makeStore();
      store = handle.store;
    });
    afterEach(async () => {
      await handle.cleanup();
    });

    describe('commit and read back', () => {
      it('returns the raw bytes exactly and the triggers as given', async () => {
        const t1 = testTrigger({ id: 'trg-1' });
        const t2 = testTrigger({
          id: 'trg-2',
          type: 'patient.updated',
          appointment: undefined,
          encounter: { id: 'V-9', status: 'in-progress', class: 'AMB' },
          sensitivity: ['restricted'],
        });
        const record = testRecord({ controlId: 'C1', triggers: [t1, t2], reason: undefined });
        const message = stored(await store.commitInbound(record));

        expect(message).toMatchObject({
          input: 'mllp-main',
          format: 'hl7v2',
          sender: 'EPIC^GHH',
          controlId: 'C1',
          messageType: 'SIU^S12',
          contentHash: record.contentHash,
          status: 'accepted',
          ack: record.ack,
          ackCode: 'AA',
          receivedAt: record.receivedAt,
          triggerIds: ['trg-1', 'trg-2'],
        });
        expect(message.id).toMatch(/^[A-Za-z0-9_-]+$/);

        const read = await store.getMessage(message.id);
        expect(read).toBeDefined();
        expect(Buffer.isBuffer(read!.raw)).toBe(true);
        expect(read!.raw.equals(record.raw)).toBe(true);
        expect(read!.triggers).toEqual([t1, t2]);
        const { raw: _raw, triggers: _triggers, ...summary } = read!;
        expect(summary).toEqual(message);

        expect(await store.getTrigger('trg-2')).toEqual(t2);
        expect(await store.findMessage('EPIC^GHH', 'C1')).toEqual(message);
      });

      it('keeps the reason of rejected and ignored messages', async () => {
        const rejected = stored(
          await store.commitInbound(testRecord({ controlId: 'R1', status: 'rejected', ackCode: 'AR', reason: 'missing_field' })),
        );
        expect(rejected.reason).toBe('missing_field');
        expect((await store.getMessage(rejected.id))!.reason).toBe('missing_field');
        expect((await store.getMessage(rejected.id))!.status).toBe('rejected');
      });

      it('gives distinct, URL-safe ids and answers undefined for unknown ids', async () => {
        const a = stored(await store.commitInbound(testRecord({ controlId: 'A' })));
        const b = stored(await store.commitInbound(testRecord({ controlId: 'B' })));
        expect(a.id).not.toBe(b.id);
        for (const id of [a.id, b.id]) expect(encodeURIComponent(id)).toBe(id);
        expect(await store.getMessage('999999999')).toBeUndefined();
        expect(await store.getMessage('../etc/passwd')).toBeUndefined();
        expect(await store.getMessage('')).toBeUndefined();
        expect(await store.getTrigger('nope')).toBeUndefined();
        expect(await store.findMessage('EPIC^GHH', 'nope')).toBeUndefined();
        expect(await store.getSubjectState('appointment', 'nope')).toBeUndefined();
      });

      it('ping resolves on an open store', async () => {
        await expect(store.ping()).resolves.toBeUndefined();
      });
    });

    describe('dedupe (docs/reliability.md #3)', () => {
      it('a resend of the same bytes is a duplicate that writes nothing and returns the original ACK', async () => {
        const first = stored(await store.commitInbound(testRecord({ controlId: 'D1', triggers: [testTrigger({ id: 't-d1' })] })));
        // A real resend is answered with a freshly built ACK; the stored one must win.
        const again = await store.commitInbound(
          testRecord({ controlId: 'D1', triggers: [testTrigger({ id: 't-d1' })], ack: 'ANOTHER ACK', receivedAt: '2024-01-01T10:00:00Z' }),
        );
        expect(again.outcome).toBe('duplicate');
        expect(again.message).toEqual(first);
        expect(await store.listMessages({ controlId: 'D1' })).toHaveLength(1);
        expect(await store.listTriggers({})).toHaveLength(1);
      });

      it('same sender + control id with different bytes is quarantined, the original untouched', async () => {
        const state = appointmentState({ asOf: '2024-01-01T09:30:00Z', start: '2024-01-02T10:00:00+01:00' });
        const first = stored(
          await store.commitInbound(testRecord({ controlId: 'Q1', triggers: [testTrigger({ id: 't-q1' })], subjectStates: [state] })),
        );
        const before = await store.getMessage(first.id);

        const conflicting = testRecord({
          controlId: 'Q1',
          raw: hl7Bytes('Q1', 'X'),
          receivedAt: '2024-01-01T11:00:00Z',
          triggers: [testTrigger({ id: 't-q1-other' })],
          subjectStates: [appointmentState({ asOf: '2024-01-01T11:00:00Z', start: '2024-01-09T08:00:00Z' })],
        });
        const outcome = await store.commitInbound(conflicting);
        expect(outcome.outcome).toBe('conflict');
        if (outcome.outcome !== 'conflict') return;
        expect(outcome.original).toEqual(first);
        expect(outcome.message.id).not.toBe(first.id);
        expect(outcome.message.status).toBe('quarantined');
        expect(outcome.message.reason).toBeTruthy();
        expect(outcome.message.triggerIds).toEqual([]);

        // The quarantined copy is kept byte-exact for review, and listed.
        const quarantined = await store.getMessage(outcome.message.id);
        expect(quarantined!.raw.equals(conflicting.raw)).toBe(true);
        expect(quarantined!.status).toBe('quarantined');
        expect(quarantined!.triggers).toEqual([]);
        const listed = await store.listMessages({ status: 'quarantined' });
        expect(listed.map((m) => m.id)).toEqual([outcome.message.id]);

        // Nothing of it was applied; the original stays the dedupe key.
        expect(await store.getTrigger('t-q1-other')).toBeUndefined();
        expect(await store.getSubjectState('appointment', 'APT-1')).toEqual(state);
        expect(await store.getMessage(first.id)).toEqual(before);
        expect(await store.findMessage('EPIC^GHH', 'Q1')).toEqual(first);
        const resend = await store.commitInbound(testRecord({ controlId: 'Q1', triggers: [testTrigger({ id: 't-q1' })] }));
        expect(resend.outcome).toBe('duplicate');
        expect(resend.message.id).toBe(first.id);
      });

      it('a quarantined copy is stored with its conflictAck, the original with its own ack', async () => {
        const original = stored(await store.commitInbound(testRecord({ controlId: 'Q3', conflictAck: () => ({ ack: 'unused', ackCode: 'AE' }) })));
        expect(original.ackCode).toBe('AA');
        let built = 0;
        const outcome = await store.commitInbound(
          testRecord({
            controlId: 'Q3',
            raw: hl7Bytes('Q3', 'X'),
            conflictAck: () => {
              built += 1;
              return { ack: 'MSH|^~\\&|CR|X\rMSA|AE|Q3\r', ackCode: 'AE' };
            },
          }),
        );
        expect(outcome.outcome).toBe('conflict');
        expect(built).toBe(1);
        expect(outcome.message).toMatchObject({ status: 'quarantined', ackCode: 'AE', ack: 'MSH|^~\\&|CR|X\rMSA|AE|Q3\r' });
        expect(await store.getMessage(outcome.message.id)).toMatchObject({ ackCode: 'AE', ack: 'MSH|^~\\&|CR|X\rMSA|AE|Q3\r' });
        expect(await store.getMessage(original.id)).toMatchObject({ ackCode: 'AA' });
      });

      it('the same conflicting bytes sent again are not quarantined twice', async () => {
        stored(await store.commitInbound(testRecord({ controlId: 'Q2' })));
        const a = await store.commitInbound(testRecord({ controlId: 'Q2', raw: hl7Bytes('Q2', 'X') }));
        const b = await store.commitInbound(testRecord({ controlId: 'Q2', raw: hl7Bytes('Q2', 'X') }));
        const c = await store.commitInbound(testRecord({ controlId: 'Q2', raw: hl7Bytes('Q2', 'Y') }));
        expect([a.outcome, b.outcome, c.outcome]).toEqual(['conflict', 'conflict', 'conflict']);
        expect(b.message.id).toBe(a.message.id);
        expect(c.message.id).not.toBe(a.message.id);
        expect(await store.listMessages({ status: 'quarantined' })).toHaveLength(2);
      });

      it('the same control id from another sender is a different message', async () => {
        stored(await store.commitInbound(testRecord({ controlId: 'S1' })));
        const other = await store.commitInbound(testRecord({ controlId: 'S1', sender: 'CERNER^MAIN', raw: hl7Bytes('S1', 'Z') }));
        expect(other.outcome).toBe('stored');
      });

      it('an empty control id is never deduped', async () => {
        const raw = hl7Bytes('');
        const a = stored(await store.commitInbound(testRecord({ controlId: '', raw, status: 'rejected', ackCode: 'AR', reason: 'missing_control_id' })));
        const b = stored(await store.commitInbound(testRecord({ controlId: '', raw, status: 'rejected', ackCode: 'AR', reason: 'missing_control_id' })));
        expect(a.id).not.toBe(b.id);
        expect(await store.findMessage('EPIC^GHH', '')).toBeUndefined();
        expect(await store.listMessages({ status: 'rejected' })).toHaveLength(2);
      });

      it('10 parallel commits of the same record: exactly one stored, nine duplicates', async () => {
        const record = testRecord({ controlId: 'P1', triggers: [testTrigger({ id: 't-p1' })] });
        const outcomes = await Promise.all(Array.from({ length: 10 }, () => store.commitInbound({ ...record })));
        const kinds = outcomes.map((o) => o.outcome).sort();
        expect(kinds).toEqual([...Array<string>(9).fill('duplicate'), 'stored']);
        const id = outcomes.find((o) => o.outcome === 'stored')!.message.id;
        expect(new Set(outcomes.map((o) => o.message.id))).toEqual(new Set([id]));
        expect(await store.listMessages({ controlId: 'P1' })).toHaveLength(1);
        expect(await store.listTriggers({})).toHaveLength(1);
      });
    });

    describe('pending messages (accepted before their triggers could be made)', () => {
      const pending = (overrides: Partial<InboundRecord> = {}): InboundRecord =>
        testRecord({ controlId: 'N1', format: 'fhir', ackCode: '202', ack: '202', reason: PENDING_REASON, raw: Buffer.from('{"event":"empty"}'), ...overrides });

      it('a record that is not pending completes it in place: same id, its content, triggers, states and cursors', async () => {
        const first = stored(await store.commitInbound(pending()));
        expect(isPending(first)).toBe(true);
        expect(await store.findMessage('EPIC^GHH', 'N1')).toEqual(first);

        const state = appointmentState({ asOf: '2024-01-01T09:30:00Z' });
        const completion = testRecord({
          controlId: 'N1',
          format: 'fhir',
          raw: Buffer.from('{"event":"full"}'),
          ack: '200',
          ackCode: '200',
          receivedAt: '2024-01-01T12:00:00Z',
          triggers: [testTrigger({ id: 't-n1' })],
          subjectStates: [state],
          cursors: { 'k-n1': 'done' },
        });
        const outcome = await store.commitInbound(completion);
        expect(outcome.outcome).toBe('stored');
        expect(outcome.message).toMatchObject({ id: first.id, status: 'accepted', ackCode: '200', triggerIds: ['t-n1'], receivedAt: first.receivedAt });
        expect(outcome.message.reason).toBeUndefined();
        const read = await store.getMessage(first.id);
        expect(read!.raw.toString()).toBe('{"event":"full"}');
        expect(read!.triggers.map((t) => t.id)).toEqual(['t-n1']);
        expect(read!.contentHash).toBe(completion.contentHash);
        expect(await store.getSubjectState('appointment', 'APT-1')).toEqual(state);
        expect(await store.getCursor('k-n1')).toBe('done');
        expect(await store.listMessages({ controlId: 'N1' })).toHaveLength(1);
        // Found by its patient now that its triggers name one.
        expect((await store.listMessages({ patientId: 'MRN-1' })).map((m) => m.id)).toEqual([first.id]);

        // Completed: from now on the usual dedupe.
        expect((await store.commitInbound({ ...completion, triggers: [] })).outcome).toBe('duplicate');
        expect((await store.commitInbound(pending())).outcome).toBe('conflict');
      });

      it('a pending record over a pending original is a duplicate that writes nothing', async () => {
        const first = stored(await store.commitInbound(pending({ cursors: { k: '1' } })));
        const again = await store.commitInbound(pending({ raw: Buffer.from('{"event":"other"}'), cursors: { k: '2' } }));
        expect(again).toEqual({ outcome: 'duplicate', message: first });
        expect(await store.getCursor('k')).toBe('1');
      });

      it('a rejected completion keeps its reason', async () => {
        const first = stored(await store.commitInbound(pending()));
        const outcome = await store.commitInbound(testRecord({ controlId: 'N1', format: 'fhir', status: 'rejected', ack: '202', ackCode: '202', reason: 'fhir_not_found' }));
        expect(outcome.message).toMatchObject({ id: first.id, status: 'rejected', reason: 'fhir_not_found' });
        expect(await store.listMessages({ status: 'rejected' })).toHaveLength(1);
      });
    });

    describe('triggers', () => {
      it('names the input that received the message a trigger came from', async () => {
        await store.commitInbound(testRecord({ controlId: 'C-IN', input: 'ehr-paris', triggers: [testTrigger({ id: 'T-IN' })] }));
        expect(await store.triggerInput('T-IN')).toBe('ehr-paris');
        expect(await store.triggerInput('T-UNKNOWN')).toBeUndefined();
      });

      it('a trigger id that is already stored is skipped, not an error (the first version wins)', async () => {
        const original = testTrigger({ id: 'same-id' });
        stored(await store.commitInbound(testRecord({ controlId: 'T1', triggers: [original] })));
        const replacement = testTrigger({ id: 'same-id', type: 'appointment.cancelled' });
        const second = stored(await store.commitInbound(testRecord({ controlId: 'T2', triggers: [replacement, testTrigger({ id: 'new-id' })] })));
        expect(second.triggerIds).toEqual(['same-id', 'new-id']);
        expect(await store.getTrigger('same-id')).toEqual(original);
        expect(await store.getTrigger('new-id')).toBeDefined();
        expect(await store.listTriggers({})).toHaveLength(2);
      });
    });

    describe('subject state (never rolled back by an older message)', () => {
      it('compares asOf as instants, not strings', async () => {
        const current = appointmentState({ asOf: '2024-01-01T09:30:00Z', start: '2024-01-02T10:00:00Z', data: { sensitivity: ['restricted'] } });
        stored(await store.commitInbound(testRecord({ controlId: 'ST1', subjectStates: [current] })));
        expect(await store.getSubjectState('appointment', 'APT-1')).toEqual(current);

        // 10:00+02:00 is 08:00Z: older, although its string sorts after 09:30Z.
        const older = appointmentState({ asOf: '2024-01-01T10:00:00+02:00', start: '2023-12-31T10:00:00Z', status: 'cancelled' });
        const late = stored(await store.commitInbound(testRecord({ controlId: 'ST2', subjectStates: [older], triggers: [testTrigger({ id: 't-st2' })] })));
        expect(await store.getSubjectState('appointment', 'APT-1')).toEqual(current);
        // The late message itself and its trigger are still stored.
        expect((await store.getMessage(late.id))!.triggers).toHaveLength(1);

        // 09:30-01:00 is 10:30Z: newer, although its string sorts before '…09:30:00Z'.
        const newer = appointmentState({ asOf: '2024-01-01T09:30:00-01:00', start: '2024-01-05T08:00:00Z', status: 'booked' });
        stored(await store.commitInbound(testRecord({ controlId: 'ST3', subjectStates: [newer] })));
        expect(await store.getSubjectState('appointment', 'APT-1')).toEqual(newer);

        // The same instant written with another offset is not older: it applies.
        const same = appointmentState({ asOf: '2024-01-01T11:30:00+01:00', start: '2024-01-06T08:00:00Z' });
        stored(await store.commitInbound(testRecord({ controlId: 'ST4', subjectStates: [same] })));
        expect(await store.getSubjectState('appointment', 'APT-1')).toEqual(same);
      });

      it('keeps appointments and encounters with the same id apart', async () => {
        const appointment = appointmentState({ asOf: '2024-01-01T09:30:00Z', id: 'X-1' });
        const encounter: SubjectState = { kind: 'encounter', id: 'X-1', patientId: 'MRN-1', status: 'in-progress', asOf: '2024-01-01T09:30:00Z' };
        stored(await store.commitInbound(testRecord({ controlId: 'K1', subjectStates: [appointment, encounter] })));
        expect(await store.getSubjectState('appointment', 'X-1')).toEqual(appointment);
        expect(await store.getSubjectState('encounter', 'X-1')).toEqual(encounter);
      });

      it('lists the states of one kind for a patient', async () => {
        const a1 = appointmentState({ asOf: '2024-01-01T09:30:00Z', id: 'A-1' });
        const a2 = appointmentState({ asOf: '2024-01-01T09:30:00Z', id: 'A-2' });
        const other: SubjectState = { ...appointmentState({ asOf: '2024-01-01T09:30:00Z', id: 'A-3' }), patientId: 'MRN-OTHER' };
        const encounter: SubjectState = { kind: 'encounter', id: 'E-1', patientId: a1.patientId, asOf: '2024-01-01T09:30:00Z' };
        stored(await store.commitInbound(testRecord({ controlId: 'L1', subjectStates: [a1, a2, other, encounter] })));
        expect(await store.listSubjectStates('appointment', a1.patientId)).toEqual([a1, a2]);
        expect(await store.listSubjectStates('encounter', a1.patientId)).toEqual([encounter]);
        expect(await store.listSubjectStates('appointment', 'MRN-NOBODY')).toEqual([]);
      });
    });

    describe('atomicity', () => {
      it('a commit that fails part-way leaves nothing behind and rejects', async () => {
        const bad = testRecord({
          controlId: 'F1',
          triggers: [testTrigger({ id: 't-f1' })],
          // Not a valid kind: the store must refuse it after the message and trigger rows.
          subjectStates: [{ ...appointmentState({ asOf: '2024-01-01T09:30:00Z' }), kind: 'bogus' as SubjectState['kind'] }],
        });
        await expect(store.commitInbound(bad)).rejects.toThrow();
        expect(await store.findMessage('EPIC^GHH', 'F1')).toBeUndefined();
        expect(await store.getTrigger('t-f1')).toBeUndefined();
        expect(await store.listMessages({})).toEqual([]);
        // The caller NAKed; the corrected resend lands once.
        const fixed = await store.commitInbound({ ...bad, subjectStates: [] });
        expect(fixed.outcome).toBe('stored');
      });

      it('a failing commit does not take parallel commits down with it', async () => {
        const bad = testRecord({
          controlId: 'F2',
          subjectStates: [{ ...appointmentState({ asOf: '2024-01-01T09:30:00Z' }), kind: 'bogus' as SubjectState['kind'] }],
        });
        const results = await Promise.allSettled([
          store.commitInbound(testRecord({ controlId: 'G1' })),
          store.commitInbound(bad),
          store.commitInbound(testRecord({ controlId: 'G2' })),
        ]);
        expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
        expect((await store.listMessages({})).map((m) => m.controlId).sort()).toEqual(['G1', 'G2']);
      });

      it('a record with an unreadable time is refused with a clear error', async () => {
        await expect(store.commitInbound(testRecord({ controlId: 'F3', receivedAt: 'yesterday' }))).rejects.toThrow(/receivedAt/);
        await expect(
          store.commitInbound(testRecord({ controlId: 'F4', triggers: [testTrigger({ id: 't-f4', occurredAt: '2024-02-30T10:00:00Z' })] })),
        ).rejects.toThrow(/occurredAt/);
        expect(await store.listMessages({})).toEqual([]);
      });
    });

    describe('listing', () => {
      async function seed(): Promise<Record<string, StoredMessage>> {
        const specs: Array<Partial<InboundRecord> & { controlId: string }> = [
          // Offsets differ on purpose: order and bounds must follow the instants.
          { controlId: 'L1', receivedAt: '2024-03-01T10:00:00+02:00' }, // 08:00Z
          { controlId: 'L2', receivedAt: '2024-03-01T09:00:00Z', sender: 'CERNER^MAIN' },
          { controlId: 'L3', receivedAt: '2024-03-01T08:30:00-01:00', input: 'http-fhir', format: 'fhir' }, // 09:30Z
          { controlId: 'L4', receivedAt: '2024-03-01T10:00:00Z', status: 'ignored', reason: 'unsupported_type' },
          { controlId: 'L5', receivedAt: '2024-03-01T11:00:00+01:00' }, // 10:00Z, same instant as L4
        ];
        const out: Record<string, StoredMessage> = {};
        for (const spec of specs) out[spec.controlId] = stored(await store.commitInbound(testRecord(spec)));
        return out;
      }
      it('lists newest first by receivedAt instant, ties newest-stored first', async () => {
        await seed();
        expect(ids(await store.listMessages({}))).toEqual(['L5', 'L4', 'L3', 'L2', 'L1']);
      });

      it('filters by sender, controlId, status and input', async () => {
        await seed();
        expect(ids(await store.listMessages({ sender: 'CERNER^MAIN' }))).toEqual(['L2']);
        expect(ids(await store.listMessages({ controlId: 'L3' }))).toEqual(['L3']);
        expect(ids(await store.listMessages({ status: 'ignored' }))).toEqual(['L4']);
        expect(ids(await store.listMessages({ input: 'http-fhir' }))).toEqual(['L3']);
        expect(ids(await store.listMessages({ sender: 'EPIC^GHH', status: 'accepted' }))).toEqual(['L5', 'L3', 'L1']);
      });

      it('since/until are inclusive bounds compared as instants', async () => {
        await seed();
        expect(ids(await store.listMessages({ since: '2024-03-01T10:30:00+01:00' }))).toEqual(['L5', 'L4', 'L3']); // 09:30Z
        expect(ids(await store.listMessages({ until: '2024-03-01T04:00:00-05:00' }))).toEqual(['L2', 'L1']); // 09:00Z
        expect(ids(await store.listMessages({ since: '2024-03-01T09:00:00Z', until: '2024-03-01T09:30:00Z' }))).toEqual(['L3', 'L2']);
      });

      it('pages with limit and the last id as the before cursor, without gaps or repeats', async () => {
        await seed();
        const seen: string[] = [];
        let before: string | undefined;
        for (let page = 0; page < 5; page++) {
          const items = await store.listMessages({ limit: 2, before });
          seen.push(...ids(items));
          if (items.length < 2) break;
          before = items[items.length - 1]!.id;
        }
        expect(seen).toEqual(['L5', 'L4', 'L3', 'L2', 'L1']);
        // The cursor combines with filters.
        const first = await store.listMessages({ sender: 'EPIC^GHH', limit: 1 });
        expect(ids(await store.listMessages({ sender: 'EPIC^GHH', before: first[0]!.id }))).toEqual(['L4', 'L3', 'L1']);
      });

      it('limit defaults to 100 and is capped, not refused, above 1000', async () => {
        await Promise.all(Array.from({ length: 105 }, (_, i) => store.commitInbound(testRecord({ controlId: `N${i}` }))));
        expect(await store.listMessages({})).toHaveLength(100);
        expect(await store.listMessages({ limit: 5000 })).toHaveLength(105);
        expect(await store.listMessages({ limit: 3 })).toHaveLength(3);
      });

      it('lists triggers newest first by occurredAt with filters', async () => {
        const triggers = [
          testTrigger({ id: 'a', occurredAt: '2024-03-01T10:00:00+02:00' }), // 08:00Z
          testTrigger({ id: 'b', occurredAt: '2024-03-01T09:00:00Z', type: 'appointment.cancelled' }),
          testTrigger({
            id: 'c',
            occurredAt: '2024-03-01T08:30:00-01:00', // 09:30Z
            type: 'encounter.started',
            appointment: undefined,
            encounter: { id: 'V-1', status: 'in-progress' },
          }),
          testTrigger({
            id: 'd',
            occurredAt: '2024-03-01T10:00:00Z',
            patient: { id: 'MRN-2', identifiers: [{ value: 'MRN-2' }], deceased: false, telecom: [] },
            appointment: { id: 'APT-2' },
          }),
        ];
        await store.commitInbound(testRecord({ controlId: 'TL1', triggers: triggers.slice(0, 2) }));
        await store.commitInbound(testRecord({ controlId: 'TL2', triggers: triggers.slice(2) }));
        const tid = (list: Trigger[]): string[] => list.map((t) => t.id);

        expect(tid(await store.listTriggers({}))).toEqual(['d', 'c', 'b', 'a']);
        expect(await store.listTriggers({})).toEqual([triggers[3], triggers[2], triggers[1], triggers[0]]);
        expect(tid(await store.listTriggers({ type: 'appointment.cancelled' }))).toEqual(['b']);
        expect(tid(await store.listTriggers({ patientId: 'MRN-1' }))).toEqual(['c', 'b', 'a']);
        expect(tid(await store.listTriggers({ appointmentId: 'APT-1' }))).toEqual(['b', 'a']);
        expect(tid(await store.listTriggers({ encounterId: 'V-1' }))).toEqual(['c']);
        expect(tid(await store.listTriggers({ since: '2024-03-01T10:30:00+01:00' }))).toEqual(['d', 'c']);
        expect(tid(await store.listTriggers({ until: '2024-03-01T09:00:00Z' }))).toEqual(['b', 'a']);
        expect(tid(await store.listTriggers({ limit: 1 }))).toEqual(['d']);
      });
    });

    describe('search (admin API filters)', () => {
      it('finds messages by patient id: the triggers\' patient, else the id a refused message names', async () => {
        const other = testTrigger({ id: 's-2', patient: { id: 'MRN-2', identifiers: [{ value: 'MRN-2' }], deceased: false, telecom: [] } });
        stored(await store.commitInbound(testRecord({ controlId: 'P1', triggers: [testTrigger({ id: 's-1' })] })));
        stored(await store.commitInbound(testRecord({ controlId: 'P2', triggers: [other] })));
        stored(await store.commitInbound(testRecord({ controlId: 'P3', status: 'rejected', reason: 'missing_field', patientId: 'MRN-1' })));
        stored(await store.commitInbound(testRecord({ controlId: 'P4', status: 'rejected', reason: 'missing_field' })));
        expect(ids(await store.listMessages({ patientId: 'MRN-1' }))).toEqual(['P3', 'P1']);
        expect(ids(await store.listMessages({ patientId: 'MRN-2' }))).toEqual(['P2']);
        expect((await store.getMessage((await store.listMessages({ controlId: 'P3' }))[0]!.id))?.patientId).toBe('MRN-1');
      });

      it('finds messages by message type (exactly, or every event of a type), by trigger type and by text', async () => {
        stored(await store.commitInbound(testRecord({ controlId: 'T1', messageType: 'SIU^S12', triggers: [testTrigger({ id: 'tt-1' })] })));
        stored(await store.commitInbound(testRecord({ controlId: 'T2', messageType: 'SIU^S15', triggers: [testTrigger({ id: 'tt-2', type: 'appointment.cancelled' })] })));
        stored(await store.commitInbound(testRecord({ controlId: 'T3', messageType: 'SIUX^S12' })));
        stored(await store.commitInbound(testRecord({ controlId: 'T4', messageType: 'SIU', raw: Buffer.from('MSH|^~\\&|X|Y|||20240101||SIU|T4|P|2.5\rPID|1||Q9||Smith^Ann\r') })));
        expect(ids(await store.listMessages({ messageType: 'SIU^S15' }))).toEqual(['T2']);
        expect(ids(await store.listMessages({ messageType: 'SIU' }))).toEqual(['T4', 'T2', 'T1']);
        expect(ids(await store.listMessages({ triggerType: 'appointment.cancelled' }))).toEqual(['T2']);
        expect(ids(await store.listMessages({ text: 'smith^ANN' }))).toEqual(['T4']);
        expect(ids(await store.listMessages({ text: 'TESTPATIENT^ALEX', messageType: 'SIU' }))).toEqual(['T2', 'T1']);
        expect(await store.listMessages({ text: 'nobody-has-this' })).toEqual([]);
      });

      it('lists the triggers of one stored message, and says which message a trigger came from', async () => {
        const first = stored(await store.commitInbound(testRecord({ controlId: 'MT1', triggers: [testTrigger({ id: 'mt-a' }), testTrigger({ id: 'mt-b' })] })));
        stored(await store.commitInbound(testRecord({ controlId: 'MT2', triggers: [testTrigger({ id: 'mt-c' })] })));
        expect((await store.listTriggers({ messageId: first.id })).map((t) => t.id).sort()).toEqual(['mt-a', 'mt-b']);
        expect(await store.messageOfTrigger('mt-b')).toBe(first.id);
        expect(await store.messageOfTrigger('nope')).toBeUndefined();
        await expect(store.listTriggers({ messageId: 'x1' })).rejects.toThrow(RangeError);
      });
    });

    describe('reprocess and release (operator attempts)', () => {
      const rejected = (controlId: string) => testRecord({ controlId, status: 'rejected', reason: 'missing_field', ackCode: 'AR', ack: `MSA|AR|${controlId}\r` });
      const attempt = (messageId: string, kind: 'reprocess' | 'release', overrides: Partial<InboundRecord> & { controlId: string }) =>
        testRecord({ ...overrides, attemptOf: { kind, messageId, actor: 'oncall' }, receivedAt: '2024-01-02T08:00:00Z' });

      it('a reprocess of a rejected message is stored beside it, takes over its resends, and is audited', async () => {
        const original = stored(await store.commitInbound(rejected('RP1')));
        const retry = stored(await store.commitInbound(attempt(original.id, 'reprocess', { controlId: 'RP1', triggers: [testTrigger({ id: 'rp-1' })] })));
        expect(retry).toMatchObject({ status: 'accepted', origin: 'reprocess', replaces: original.id, triggerIds: ['rp-1'] });
        expect(await store.getMessage(original.id)).toMatchObject({ status: 'rejected', replacedBy: retry.id });
        expect((await store.listMessages({ controlId: 'RP1' })).map((m) => m.id)).toEqual([retry.id, original.id]);
        // The sender resending the same bytes gets the new answer, and nothing new is stored.
        const resent = await store.commitInbound(testRecord({ controlId: 'RP1' }));
        expect(resent).toMatchObject({ outcome: 'duplicate', message: { id: retry.id, ackCode: 'AA' } });
        expect((await store.findMessage('EPIC^GHH', 'RP1'))?.id).toBe(retry.id);
        expect(await store.listAudit({ target: `message/${original.id}` })).toEqual([
          { id: expect.any(String), at: '2024-01-02T08:00:00Z', actor: 'oncall', action: 'message.reprocess', target: `message/${original.id}`, outcome: 'stored', result: `message/${retry.id}` },
        ]);
      });

      it('refuses an attempt at an unknown message, a message in another status, or one already tried again', async () => {
        const original = stored(await store.commitInbound(rejected('RP2')));
        const accepted = stored(await store.commitInbound(testRecord({ controlId: 'RP3' })));
        const reason = (p: Promise<unknown>) => p.then(() => 'stored', (e: unknown) => (e as { reason?: string }).reason);
        expect(await reason(store.commitInbound(attempt('987654', 'reprocess', { controlId: 'RP2' })))).toBe('unknown_message');
        expect(await reason(store.commitInbound(attempt(accepted.id, 'reprocess', { controlId: 'RP3' })))).toBe('wrong_status');
        expect(await reason(store.commitInbound(attempt(original.id, 'release', { controlId: 'RP2' })))).toBe('wrong_status');
        stored(await store.commitInbound(attempt(original.id, 'reprocess', { controlId: 'RP2', status: 'rejected', reason: 'missing_field' })));
        expect(await reason(store.commitInbound(attempt(original.id, 'reprocess', { controlId: 'RP2' })))).toBe('already_replaced');
        // Nothing of the refused attempts was written.
        expect(await store.listMessages({ controlId: 'RP2' })).toHaveLength(2);
        expect(await store.listAudit({})).toHaveLength(1);
      });

      it('a released quarantined copy becomes a message of its own; the original keeps the key, resends of either get their own answer', async () => {
        const original = stored(await store.commitInbound(testRecord({ controlId: 'RL1' })));
        const copy = await store.commitInbound(testRecord({ controlId: 'RL1', raw: hl7Bytes('RL1', 'B'), ackCode: 'AE' }));
        expect(copy.outcome).toBe('conflict');
        const released = stored(
          await store.commitInbound(attempt(copy.message.id, 'release', { controlId: 'RL1', raw: hl7Bytes('RL1', 'B'), triggers: [testTrigger({ id: 'rl-1' })] })),
        );
        expect(released).toMatchObject({ status: 'accepted', origin: 'release', replaces: copy.message.id, ackCode: 'AA' });
        expect(await store.getMessage(copy.message.id)).toMatchObject({ status: 'quarantined', replacedBy: released.id });
        expect((await store.findMessage('EPIC^GHH', 'RL1'))?.id).toBe(original.id);
        expect(await store.commitInbound(testRecord({ controlId: 'RL1' }))).toMatchObject({ outcome: 'duplicate', message: { id: original.id } });
        expect(await store.commitInbound(testRecord({ controlId: 'RL1', raw: hl7Bytes('RL1', 'B') }))).toMatchObject({
          outcome: 'duplicate',
          message: { id: released.id },
        });
        expect((await store.listAudit({}))[0]).toMatchObject({ action: 'message.release', actor: 'oncall', result: `message/${released.id}` });
      });
    });

    describe('audit and routing explanations', () => {
      it('appends audit entries and lists them newest first, by target', async () => {
        await store.appendAudit({ at: '2024-01-01T10:00:00Z', actor: 'a', action: 'message.reprocess', target: 'message/1', outcome: 'refused:wrong_status' });
        await store.appendAudit({ at: '2024-01-01T10:01:00Z', actor: 'b', action: 'message.release', target: 'message/2', outcome: 'stored', result: 'message/3' });
        expect((await store.listAudit({})).map((e) => e.actor)).toEqual(['b', 'a']);
        expect(await store.listAudit({ target: 'message/1' })).toEqual([
          { id: expect.any(String), at: '2024-01-01T10:00:00Z', actor: 'a', action: 'message.reprocess', target: 'message/1', outcome: 'refused:wrong_status' },
        ]);
      });

      it('says whether and when a trigger was routed', async () => {
        stored(await store.commitInbound(testRecord({ controlId: 'RT1', triggers: [testTrigger({ id: 'rt-1' })] })));
        expect(await store.getTriggerRouting('rt-1')).toMatchObject({ routed: false });
        await store.saveRouting('rt-1', [], '2024-01-01T09:30:02Z');
        expect(await store.getTriggerRouting('rt-1')).toMatchObject({ routed: true, routedAt: '2024-01-01T09:30:02.000Z' });
        expect(await store.getTriggerRouting('nope')).toBeUndefined();
      });
    });

    describe('cursors', () => {
      it('are undefined until set, then keep the last value written', async () => {
        expect(await store.getCursor('poll:ehr:Appointment')).toBeUndefined();
        await store.setCursor('poll:ehr:Appointment', '2024-01-01T09:30:00Z');
        await store.setCursor('poll:ehr:Appointment', '2024-01-01T10:00:00Z');
        await store.setCursor('poll:ehr:Encounter', 'x');
        expect(await store.getCursor('poll:ehr:Appointment')).toBe('2024-01-01T10:00:00Z');
        expect(await store.getCursor('poll:ehr:Encounter')).toBe('x');
      });

      it('commit with a stored record, never with a duplicate, a conflict or a failed commit', async () => {
        stored(await store.commitInbound(testRecord({ controlId: 'K1', cursors: { k: '1' } })));
        expect(await store.getCursor('k')).toBe('1');
        await store.setCursor('k', '2');
        const duplicate = await store.commitInbound(testRecord({ controlId: 'K1', cursors: { k: '3' } }));
        expect(duplicate.outcome).toBe('duplicate');
        const conflict = await store.commitInbound(testRecord({ controlId: 'K1', raw: hl7Bytes('K1', 'X'), cursors: { k: '4' } }));
        expect(conflict.outcome).toBe('conflict');
        const bad = testRecord({
          controlId: 'K2',
          cursors: { k: '5' },
          subjectStates: [{ ...appointmentState({ asOf: '2024-01-01T09:30:00Z' }), kind: 'bogus' as SubjectState['kind'] }],
        });
        await expect(store.commitInbound(bad)).rejects.toThrow();
        expect(await store.getCursor('k')).toBe('2');
      });
    });

    describe('raw-bytes quota of rejected and quarantined rows (InboundRecord.rawQuota)', () => {
      const limits = { totalBytes: 1000, perSenderBytes: 500, keepBytes: 20 };
      const quotaOf = (account: string) => ({ rawQuota: { account, ...limits } });
      const bytes = (n: number, fill = 0x41): Buffer => Buffer.alloc(n, fill);
      const rejected = (controlId: string, raw: Buffer, sender = 'A'): InboundRecord =>
        testRecord({ controlId, raw, sender, status: MessageStatus.Rejected, ackCode: 'AR', reason: 'missing_field', ...quotaOf(`sender:${sender}`) });
      const counters = async (account: string): Promise<[string | undefined, string | undefined]> => [
        await store.getCursor(RAW_QUOTA_CURSOR),
        await store.getCursor(`${RAW_QUOTA_CURSOR}:${account}`),
      ];

      it('keeps rows whole and counted within both limits; past either, the first keepBytes and the length as received', async () => {
        expect(stored(await store.commitInbound(rejected('R1', bytes(200))))).toMatchObject({ status: 'rejected' });
        const r2 = await store.commitInbound(rejected('R2', bytes(200)));
        expect(r2).not.toHaveProperty('rawBytes');
        expect(await counters('sender:A')).toEqual(['400', '400']);
        // Sender A: 600 > 500.
        const r3 = await store.commitInbound(rejected('R3', bytes(200, 0x42)));
        expect(r3).toMatchObject({ outcome: 'stored', rawBytes: 200 });
        const cut = await store.getMessage(r3.message.id);
        expect(cut!.raw.equals(bytes(20, 0x42))).toBe(true);
        expect(cut!.rawBytes).toBe(200);
        expect(cut!.contentHash).toBe(sha256(bytes(200, 0x42)));
        expect(await counters('sender:A')).toEqual(['400', '400']);
        // Sender B up to its own limit (total 900), then sender C, within its own, passes the total.
        for (const id of ['B1', 'B2']) expect(await store.commitInbound(rejected(id, bytes(250), 'B'))).not.toHaveProperty('rawBytes');
        expect(await store.commitInbound(rejected('C1', bytes(200), 'C'))).toMatchObject({ outcome: 'stored', rawBytes: 200 });
        expect(await counters('sender:C')).toEqual(['900', undefined]);
        // A row no longer than keepBytes stays whole (and counted) even past the limits.
        const small = await store.commitInbound(rejected('R4', bytes(20)));
        expect(small).not.toHaveProperty('rawBytes');
        expect(await counters('sender:A')).toEqual(['920', '420']);
      });

      it('never cuts an accepted row, and counts nothing for a duplicate or a failed commit', async () => {
        const accepted = stored(await store.commitInbound(testRecord({ controlId: 'OK1', raw: bytes(5000), sender: 'A', ...quotaOf('sender:A') })));
        expect((await store.getMessage(accepted.id))!.raw.length).toBe(5000);
        expect(await counters('sender:A')).toEqual([undefined, undefined]);
        stored(await store.commitInbound(rejected('R1', bytes(300))));
        expect((await store.commitInbound(rejected('R1', bytes(300)))).outcome).toBe('duplicate');
        const bad = {
          ...rejected('R2', bytes(100)),
          subjectStates: [{ ...appointmentState({ asOf: '2024-01-01T09:30:00Z' }), kind: 'bogus' as SubjectState['kind'] }],
        };
        await expect(store.commitInbound(bad)).rejects.toThrow();
        expect(await counters('sender:A')).toEqual(['300', '300']);
      });

      it('counts a quarantined copy, also one the store quarantines itself, and cuts it past the quota', async () => {
        stored(await store.commitInbound(testRecord({ controlId: 'Q1', raw: bytes(100), sender: 'A' })));
        // Accepted as far as the caller knew: the store finds the twin and quarantines it.
        const first = await store.commitInbound(testRecord({ controlId: 'Q1', raw: bytes(400, 0x42), sender: 'A', ...quotaOf('sender:A') }));
        expect(first).toMatchObject({ outcome: 'conflict', message: { status: 'quarantined' } });
        expect(first).not.toHaveProperty('rawBytes');
        expect(await counters('sender:A')).toEqual(['400', '400']);
        const second = await store.commitInbound(testRecord({ controlId: 'Q1', raw: bytes(400, 0x43), sender: 'A', ...quotaOf('sender:A') }));
        expect(second).toMatchObject({ outcome: 'conflict', rawBytes: 400 });
        const kept = await store.getMessage(second.message.id);
        expect(kept!.raw.equals(bytes(20, 0x43))).toBe(true);
        expect(kept!.rawBytes).toBe(400);
        // A copy quarantined by its caller (status quarantined) counts the same way.
        const third = await store.commitInbound(testRecord({ controlId: '', raw: bytes(400, 0x44), sender: 'A', status: MessageStatus.Quarantined, ...quotaOf('sender:A') }));
        expect(third).toMatchObject({ outcome: 'stored', rawBytes: 400 });
        expect(await counters('sender:A')).toEqual(['400', '400']);
      });
    });

    describe('raw-bytes quota given back when counted bytes go', () => {
      const quota = { account: 'sender:A', totalBytes: 10_000, perSenderBytes: 500, keepBytes: 20 };
      const rejected = (controlId: string, receivedAt: string, raw = Buffer.alloc(300, 0x41)): InboundRecord =>
        testRecord({ controlId, raw, sender: 'A', receivedAt, status: MessageStatus.Rejected, ackCode: 'AR', reason: 'missing_field', rawQuota: quota });
      const used = async (): Promise<Array<string | undefined>> => [await store.getCursor(RAW_QUOTA_CURSOR), await store.getCursor(`${RAW_QUOTA_CURSOR}:sender:A`)];

      it('by retention clearing old bodies, and by pruning old records: a later refusal is kept whole again', async () => {
        stored(await store.commitInbound(rejected('OLD1', '2024-01-01T09:00:00Z')));
        expect(await store.commitInbound(rejected('OLD2', '2024-01-01T09:01:00Z'))).toMatchObject({ rawBytes: 300 });
        expect(await used()).toEqual(['300', '300']);
        // The cut row was not counted: clearing both gives back only the whole one's 300.
        expect(await store.prune('rawMessages', '2024-02-01T00:00:00Z', { limit: 10 })).toMatchObject({ removed: 2 });
        expect(await used()).toEqual(['0', '0']);
        stored(await store.commitInbound(rejected('NEW1', '2024-03-01T09:00:00Z')));
        expect(await used()).toEqual(['300', '300']);
        // A rejected record pruned whole gives its bytes back too.
        expect((await store.prune('triggers', '2024-04-01T00:00:00Z', { limit: 10 })).removed).toBeGreaterThanOrEqual(1);
        expect(await used()).toEqual(['0', '0']);
        expect(await store.commitInbound(rejected('NEW2', '2024-05-01T09:00:00Z'))).not.toHaveProperty('rawBytes');
      });

      it('by an erasure clearing a quarantined copy of the patient\'s message', async () => {
        stored(await store.commitInbound(testRecord({ controlId: 'E1', sender: 'A', triggers: [testTrigger({ id: 't-e1' })] })));
        const copy = await store.commitInbound(testRecord({ controlId: 'E1', sender: 'A', raw: Buffer.alloc(300, 0x42), rawQuota: quota }));
        expect(copy.outcome).toBe('conflict');
        expect(await used()).toEqual(['300', '300']);
        await store.erasePatient('MRN-1', '2024-01-02T00:00:00Z');
        expect(await used()).toEqual(['0', '0']);
      });
    });

    describe('routing and deliveries', () => {
      it('lists unrouted triggers in commit order until saveRouting marks them routed', async () => {
        stored(await store.commitInbound(testRecord({ controlId: 'R1', triggers: [testTrigger({ id: 't-b', occurredAt: '2024-01-01T10:00:00Z' })] })));
        stored(await store.commitInbound(testRecord({ controlId: 'R2', triggers: [testTrigger({ id: 't-a', occurredAt: '2024-01-01T08:00:00Z' })] })));
        expect((await store.listUnroutedTriggers(10)).map((t) => t.id)).toEqual(['t-b', 't-a']);
        await store.saveRouting('t-b', [write(testDelivery())], '2024-01-01T09:30:02Z');
        expect((await store.listUnroutedTriggers(10)).map((t) => t.id)).toEqual(['t-a']);
        expect((await store.getDelivery(testDelivery().id))?.status).toBe('pending');
        await store.saveRouting('t-a', [], '2024-01-01T09:30:03Z');
        expect(await store.listUnroutedTriggers(10)).toEqual([]);
      });

      it('marks several triggers routed in one call', async () => {
        stored(await store.commitInbound(testRecord({ controlId: 'M1', triggers: [testTrigger({ id: 't-m1' })] })));
        stored(await store.commitInbound(testRecord({ controlId: 'M2', triggers: [testTrigger({ id: 't-m2' })] })));
        stored(await store.commitInbound(testRecord({ controlId: 'M3', triggers: [testTrigger({ id: 't-m3' })] })));
        await store.saveRouting(['t-m1', 't-m3'], [write(testDelivery())], '2024-01-01T09:30:02Z');
        expect((await store.listUnroutedTriggers(10)).map((t) => t.id)).toEqual(['t-m2']);
        expect((await store.getDelivery(testDelivery().id))?.status).toBe('pending');
      });

      it('writes deliveries and the routed mark together, or neither', async () => {
        stored(await store.commitInbound(testRecord({ controlId: 'R1', triggers: [testTrigger({ id: 't-1' })] })));
        const good = testDelivery({ appointmentId: 'A-good' });
        const bad = testDelivery({ appointmentId: 'A-bad', dueAt: 'tomorrow' });
        await expect(store.saveRouting('t-1', [write(good), write(bad)], '2024-01-01T09:30:02Z')).rejects.toThrow(/dueAt/);
        expect(await store.getDelivery(good.id)).toBeUndefined();
        expect((await store.listUnroutedTriggers(10)).map((t) => t.id)).toEqual(['t-1']);
      });

      it('round-trips a delivery with its generation and the start it was planned for', async () => {
        const d = testDelivery();
        await store.saveRouting('t-x', [write(d, { generation: 3, subjectStart: '2024-01-02T10:00:00+01:00' })], '2024-01-01T09:30:02Z');
        expect(await store.getDelivery(d.id)).toEqual({
          delivery: d,
          status: 'pending',
          asOf: d.asOf,
          generation: 3,
          subjectStart: '2024-01-02T10:00:00+01:00',
          createdAt: '2024-01-01T09:30:02Z',
          updatedAt: '2024-01-01T09:30:02Z',
        });
        expect(await store.getDelivery('nope')).toBeUndefined();
      });

      it('finds deliveries by cancel key, and only those still holding the key', async () => {
        const a1 = testDelivery({ appointmentId: 'A1' });
        const a2 = testDelivery({ appointmentId: 'A2' });
        const a1Confirm = testDelivery({ appointmentId: 'A1', ruleId: 'confirm' });
        await store.saveRouting('t', [write(a1), write(a2), write(a1Confirm)], '2024-01-01T09:30:02Z');
        const ids = async (key: string) => (await store.deliveriesByCancelKey(key)).map((d) => d.delivery.id).sort();
        expect(await ids('appointment.cancelled@appointment/A1')).toEqual([a1Confirm.id, a1.id].sort());
        expect(await ids(a2.id)).toEqual([a2.id]);
        expect(await ids('patient/MRN-1')).toHaveLength(3);
        expect(await ids('appointment.cancelled@appointment/A3')).toEqual([]);
        // A replan that drops a key: the delivery no longer answers to it.
        await store.saveRouting('t2', [write({ ...a2, cancelKeys: [a2.id] }, { generation: 1 })], '2024-01-01T09:30:03Z');
        expect(await ids('appointment.cancelled@appointment/A2')).toEqual([]);
      });

      it('updates pending and cancelled deliveries, never a final one', async () => {
        const d = testDelivery();
        await store.saveRouting('t1', [write(d)], '2024-01-01T09:30:02Z');
        await store.saveRouting('t2', [write(d, { status: 'cancelled', asOf: '2024-01-01T09:40:00Z', updatedAt: '2024-01-01T09:40:01Z' })], '2024-01-01T09:40:01Z');
        expect(await store.getDelivery(d.id)).toMatchObject({ status: 'cancelled', asOf: '2024-01-01T09:40:00Z', createdAt: '2024-01-01T09:30:02Z', updatedAt: '2024-01-01T09:40:01Z' });
        const moved = { ...d, dueAt: '2024-01-01T11:00:00+01:00' };
        await store.saveRouting('t3', [write(moved, { generation: 2, asOf: '2024-01-01T09:50:00Z' })], '2024-01-01T09:50:01Z');
        expect(await store.getDelivery(d.id)).toMatchObject({ status: 'pending', generation: 2, delivery: { dueAt: moved.dueAt } });
        expect(await store.finishDelivery(d.id, 2, { status: 'sent', at: '2024-01-01T10:00:00Z', providerId: 'sms/x', message: { language: 'en', text: 'Hi' } })).toBe(true);
        await store.saveRouting('t4', [write(d, { generation: 3, asOf: '2024-01-01T09:55:00Z' })], '2024-01-01T10:00:01Z');
        expect(await store.getDelivery(d.id)).toMatchObject({ status: 'sent', generation: 2, providerId: 'sms/x', message: { language: 'en', text: 'Hi' } });
        expect((await store.getDelivery(d.id))!.delivery.dueAt).toBe(moved.dueAt);
      });

      it('finishes a delivery only while pending (or failed) with the same generation', async () => {
        const d = testDelivery();
        await store.saveRouting('t1', [write(d, { generation: 2 })], '2024-01-01T09:30:02Z');
        expect(await store.finishDelivery(d.id, 1, { status: 'sent', at: '2024-01-01T10:00:00Z' })).toBe(false);
        expect(await store.finishDelivery('other', 2, { status: 'sent', at: '2024-01-01T10:00:00Z' })).toBe(false);
        expect(await store.finishDelivery(d.id, 2, { status: 'suppressed', reason: 'stale', at: '2024-01-01T10:00:00Z' })).toBe(true);
        expect(await store.finishDelivery(d.id, 2, { status: 'sent', at: '2024-01-01T10:00:01Z' })).toBe(false);
        expect(await store.getDelivery(d.id)).toMatchObject({ status: 'suppressed', reason: 'stale', updatedAt: '2024-01-01T10:00:00Z' });
        const f = testDelivery({ appointmentId: 'A-f' });
        await store.saveRouting('t3', [write(f)], '2024-01-01T09:30:02Z');
        expect(await store.finishDelivery(f.id, 1, { status: 'failed', reason: 'http_500', at: '2024-01-01T10:00:00Z' })).toBe(true);
        // A replayed dead-letter job may still end it.
        expect(await store.finishDelivery(f.id, 1, { status: 'sent', at: '2024-01-01T10:10:00Z' })).toBe(true);
        expect(await store.finishDelivery(f.id, 1, { status: 'failed', at: '2024-01-01T10:20:00Z' })).toBe(false);
        const c = testDelivery({ appointmentId: 'A-c' });
        await store.saveRouting('t2', [write(c, { status: 'cancelled' })], '2024-01-01T09:30:02Z');
        expect(await store.finishDelivery(c.id, 1, { status: 'sent', at: '2024-01-01T10:00:00Z' })).toBe(false);
      });

      it('puts a delivery in review and lets a replay end it; routing leaves it alone; counted and listed by status', async () => {
        const r = testDelivery({ appointmentId: 'A-r' });
        await store.saveRouting('t1', [write(r)], '2024-01-01T09:30:02Z');
        expect(await store.finishDelivery(r.id, 1, { status: 'review', reason: 'webhook_server_error', at: '2024-01-01T10:00:00Z' })).toBe(true);
        expect(await store.getDelivery(r.id)).toMatchObject({ status: 'review', reason: 'webhook_server_error' });
        expect((await store.countDeliveries()).review).toBe(1);
        expect((await store.listDeliveries({ status: 'review' })).map((d) => d.delivery.id)).toEqual([r.id]);
        // A replan does not take it back: it may have reached the patient.
        await store.saveRouting('t2', [write(r, { generation: 2, asOf: '2024-01-01T09:50:00Z' })], '2024-01-01T10:05:00Z');
        expect(await store.getDelivery(r.id)).toMatchObject({ status: 'review', generation: 1 });
        // The replayed job ends it.
        expect(await store.finishDelivery(r.id, 1, { status: 'sent', at: '2024-01-01T10:10:00Z', providerId: 'x' })).toBe(true);
        expect(await store.countDeliveries()).toMatchObject({ review: 0, sent: 1 });
        expect(await store.finishDelivery(r.id, 1, { status: 'review', at: '2024-01-01T10:20:00Z' })).toBe(false);
      });

      it('lists deliveries newest planned first, filtered, paged by the last id', async () => {
        const ds = ['A1', 'A2', 'A3', 'A4'].map((a, i) => testDelivery({ appointmentId: a, ruleId: i % 2 === 0 ? 'reminder' : 'confirm', patientId: i < 2 ? 'P1' : 'P2' }));
        for (const d of ds) await store.saveRouting('t', [write(d)], '2024-01-01T09:30:02Z');
        await store.finishDelivery(ds[0]!.id, 1, { status: 'sent', at: '2024-01-01T10:00:00Z' });
        const ids = (list: { delivery: Delivery }[]) => list.map((d) => d.delivery.subjectId);
        expect(ids(await store.listDeliveries({}))).toEqual(['A4', 'A3', 'A2', 'A1']);
        expect(ids(await store.listDeliveries({ status: 'pending' }))).toEqual(['A4', 'A3', 'A2']);
        expect(ids(await store.listDeliveries({ ruleId: 'confirm' }))).toEqual(['A4', 'A2']);
        expect(ids(await store.listDeliveries({ patientId: 'P1' }))).toEqual(['A2', 'A1']);
        expect(ids(await store.listDeliveries({ subjectKey: 'appointment/A3' }))).toEqual(['A3']);
        const page1 = await store.listDeliveries({ limit: 3 });
        const page2 = await store.listDeliveries({ limit: 3, before: page1[2]!.delivery.id });
        expect([...ids(page1), ...ids(page2)]).toEqual(['A4', 'A3', 'A2', 'A1']);
        await expect(store.listDeliveries({ before: 'unknown' })).rejects.toThrow(RangeError);
      });

      it('keeps a finished message that is also its outbox entry, read back the same either way', async () => {
        const d = testDelivery();
        const other = testDelivery({ appointmentId: 'A-2' });
        await store.saveRouting('t', [write(d), write(other)], '2024-01-01T09:30:02Z');
        const message = { language: 'en', to: '+15550100', text: 'Hi', subject: 'S', html: '<p>Hi</p>' };
        await store.putOutboxEntry({ deliveryId: d.id, output: 'sms', channel: 'sms', keptAt: '2024-01-01T10:00:00Z', ...message });
        // A provider id naming the delivery (an outbox's) comes back whole.
        expect(await store.finishDelivery(d.id, 1, { status: 'sent', at: '2024-01-01T10:00:00Z', providerId: `box/${d.id}`, message })).toBe(true);
        // Not the outbox's text: kept as given.
        const own = { language: 'fr', text: 'Salut' };
        expect(await store.finishDelivery(other.id, 1, { status: 'sent', at: '2024-01-01T10:00:00Z', message: own })).toBe(true);
        expect((await store.getDelivery(d.id))!.message).toEqual(message);
        expect((await store.getDelivery(d.id))!.providerId).toBe(`box/${d.id}`);
        expect((await store.getDelivery(other.id))!.message).toEqual(own);
        expect((await store.listDeliveries({ status: 'sent' })).map((x) => x.message)).toEqual([own, message]);
        // Named after the delivery's own output (the outbox that kept it), or after another.
        const third = testDelivery({ appointmentId: 'A-3' });
        const fourth = testDelivery({ appointmentId: 'A-4' });
        await store.saveRouting('t2', [write(third), write(fourth)], '2024-01-01T09:30:02Z');
        expect(await store.finishDelivery(third.id, 1, { status: 'sent', at: '2024-01-01T10:00:00Z', providerId: `${third.output}/${third.id}` })).toBe(true);
        expect(await store.finishDelivery(fourth.id, 1, { status: 'sent', at: '2024-01-01T10:00:00Z', providerId: `${fourth.output}/${third.id}` })).toBe(true);
        expect((await store.getDelivery(third.id))!.providerId).toBe(`sms/${third.id}`);
        expect((await store.getDelivery(fourth.id))!.providerId).toBe(`sms/${third.id}`);
      });

      it('names the trigger that last changed a delivery, and keeps routing explanations', async () => {
        stored(await store.commitInbound(testRecord({ controlId: 'E1', triggers: [testTrigger({ id: 't-e1' })] })));
        const d = testDelivery();
        const explanation = {
          triggerId: 't-e1',
          // saveRouting's routedAt, read back in UTC with milliseconds.
          routedAt: '2024-01-01T09:30:02.000Z',
          rules: [
            { rule: 'reminder', outcome: 'planned' as const, deliveryId: d.id },
            { rule: 'week-ahead', outcome: 'skipped' as const, reason: 'condition_false', condition: 'appointment.start gte occurredAt + 7d' },
          ],
        };
        expect(await store.getRoutingExplanation('t-e1')).toBeUndefined();
        await store.saveRouting('t-e1', [write(d, { cause: { triggerId: 't-e1', change: 'added' } })], '2024-01-01T09:30:02Z', { explanations: [explanation] });
        expect(await store.getRoutingExplanation('t-e1')).toEqual(explanation);
        // The admin view of the trigger's routing lists the rules that planned nothing.
        expect(await store.getTriggerRouting('t-e1')).toEqual({
          routed: true,
          routedAt: '2024-01-01T09:30:02.000Z',
          skipped: [{ ruleId: 'week-ahead', reason: 'condition_false', detail: 'appointment.start gte occurredAt + 7d' }],
        });
        expect((await store.getDelivery(d.id))!.cause).toEqual({ triggerId: 't-e1', change: 'added' });
        await store.saveRouting('t-e2', [write(d, { status: 'cancelled', cause: { triggerId: 't-e2', change: 'cancelled', reason: 'expired' } })], '2024-01-01T09:40:00Z');
        expect((await store.getDelivery(d.id))!.cause).toEqual({ triggerId: 't-e2', change: 'cancelled', reason: 'expired' });
        expect(await store.getRoutingExplanation('unknown')).toBeUndefined();
      });

      it('says whether an appointment or encounter has a trigger not routed yet', async () => {
        stored(await store.commitInbound(testRecord({ controlId: 'U1', triggers: [testTrigger({ id: 't-u1' })] })));
        expect(await store.hasUnroutedTriggers({ kind: 'appointment', id: 'APT-1' })).toBe(true);
        expect(await store.hasUnroutedTriggers({ kind: 'appointment', id: 'APT-2' })).toBe(false);
        expect(await store.hasUnroutedTriggers({ kind: 'encounter', id: 'APT-1' })).toBe(false);
        await store.saveRouting('t-u1', [], '2024-01-01T09:30:02Z');
        expect(await store.hasUnroutedTriggers({ kind: 'appointment', id: 'APT-1' })).toBe(false);
      });

      it('counts deliveries and messages per status as they change', async () => {
        const zero = { pending: 0, cancelled: 0, sent: 0, suppressed: 0, failed: 0, review: 0 };
        expect(await store.countDeliveries()).toEqual(zero);
        const [a, b, c] = ['A1', 'A2', 'A3'].map((id) => testDelivery({ appointmentId: id }));
        await store.saveRouting('t', [write(a!), write(b!), write(c!)], '2024-01-01T09:30:02Z');
        await store.saveRouting('t2', [write(b!, { status: 'cancelled' })], '2024-01-01T09:30:03Z');
        await store.finishDelivery(c!.id, 1, { status: 'suppressed', reason: 'stale', at: '2024-01-01T10:00:00Z' });
        expect(await store.countDeliveries()).toEqual({ ...zero, pending: 1, cancelled: 1, suppressed: 1 });
        stored(await store.commitInbound(testRecord({ controlId: 'C1' })));
        stored(await store.commitInbound(testRecord({ controlId: 'C2', status: 'rejected', ackCode: 'AR', reason: 'missing_field' })));
        await store.commitInbound(testRecord({ controlId: 'C1' })); // a duplicate counts nothing
        expect(await store.countMessages()).toEqual({ accepted: 1, ignored: 0, rejected: 1, quarantined: 0 });
      });

      it('keeps one outbox entry per delivery (a resend replaces it), newest first, paged', async () => {
        const base = { output: 'sms', channel: 'sms' as const, language: 'en', keptAt: '2024-01-01T10:00:00Z' };
        const e1 = await store.putOutboxEntry({ ...base, deliveryId: 'd1', to: '+15550100', text: 'first' });
        const e2 = await store.putOutboxEntry({ ...base, deliveryId: 'd2', output: 'mail', channel: 'email', subject: 'S', text: 't', html: '<p>t</p>' });
        const again = await store.putOutboxEntry({ ...base, deliveryId: 'd1', to: '+15550100', text: 'second', keptAt: '2024-01-01T10:05:00Z' });
        expect(again.id).toBe(e1.id);
        expect(await store.listOutbox({})).toEqual([e2, { ...e1, text: 'second', keptAt: '2024-01-01T10:05:00Z' }]);
        expect((await store.listOutbox({ deliveryId: 'd2' })).map((e) => e.html)).toEqual(['<p>t</p>']);
        expect((await store.listOutbox({ output: 'sms' })).map((e) => e.deliveryId)).toEqual(['d1']);
        expect((await store.listOutbox({ limit: 1, before: e2.id })).map((e) => e.deliveryId)).toEqual(['d1']);
        await expect(store.listOutbox({ before: 'x' })).rejects.toThrow(RangeError);
      });
    });

    describe('delivery receipts', () => {
      const at = '2024-01-02T09:00:00Z';

      it('keeps receipts in the order recorded; the same word twice once', async () => {
        expect(await store.addDeliveryReceipt({ deliveryId: 'd1', output: 'sms', status: 'sending', attempt: 1, at })).toBe(true);
        expect(await store.addDeliveryReceipt({ deliveryId: 'd1', output: 'sms', status: 'accepted', providerId: 'SM1', attempt: 1, at })).toBe(true);
        expect(await store.addDeliveryReceipt({ deliveryId: 'd1', output: 'sms', status: 'delivered', providerId: 'SM1', at })).toBe(true);
        // A repeated callback: nothing new.
        expect(await store.addDeliveryReceipt({ deliveryId: 'd1', output: 'sms', status: 'delivered', providerId: 'SM1', at: '2024-01-02T09:05:00Z' })).toBe(false);
        // The same status from another attempt is another word.
        expect(await store.addDeliveryReceipt({ deliveryId: 'd1', output: 'sms', status: 'sending', attempt: 2, at })).toBe(true);
        await store.addDeliveryReceipt({ deliveryId: 'd2', output: 'mail', status: 'bounced', code: '550', attempt: 1, at });
        expect((await store.listDeliveryReceipts({ deliveryId: 'd1' })).map((r) => `${r.status}/${r.attempt ?? '-'}`)).toEqual([
          'sending/1',
          'accepted/1',
          'delivered/-',
          'sending/2',
        ]);
        expect(await store.listDeliveryReceipts({ deliveryId: 'd2' })).toEqual([
          { deliveryId: 'd2', output: 'mail', status: 'bounced', code: '550', attempt: 1, at },
        ]);
        expect(await store.listDeliveryReceipts({ deliveryId: 'd2', output: 'sms' })).toEqual([]);
      });

      it('finds the receipts naming a provider id of an output', async () => {
        await store.addDeliveryReceipt({ deliveryId: 'd1', output: 'sms', status: 'accepted', providerId: 'SM1', attempt: 1, at });
        await store.addDeliveryReceipt({ deliveryId: 'd2', output: 'sms', status: 'accepted', providerId: 'SM2', attempt: 1, at });
        await store.addDeliveryReceipt({ deliveryId: 'd3', output: 'other', status: 'accepted', providerId: 'SM1', attempt: 1, at });
        expect((await store.listDeliveryReceipts({ output: 'sms', providerId: 'SM1' })).map((r) => r.deliveryId)).toEqual(['d1']);
        expect(await store.listDeliveryReceipts({ output: 'sms', providerId: '' })).toEqual([]);
        await expect(store.addDeliveryReceipt({ deliveryId: 'd1', output: 'sms', status: 'sent', at: 'yesterday' })).rejects.toThrow();
      });
    });

    describe('contact holdings', () => {
      it('keeps one holding per output, patient and contact, the first time kept', async () => {
        const first = { output: 'hubspot', patientId: 'P1', contactKey: 'pat@example.org', firstSentAt: '2024-01-02T09:00:00Z' };
        expect(await store.recordContactHolding(first)).toBe(true);
        expect(await store.recordContactHolding({ ...first, firstSentAt: '2024-02-01T09:00:00Z' })).toBe(false);
        await store.recordContactHolding({ ...first, output: 'mailchimp' });
        await store.recordContactHolding({ ...first, patientId: 'P2', contactKey: 'other@example.org' });
        expect(await store.listContactHoldings({ patientId: 'P1' })).toEqual([first, { ...first, output: 'mailchimp' }]);
        expect(await store.listContactHoldings({ output: 'hubspot', contactKey: 'pat@example.org' })).toEqual([first]);
        expect(await store.listContactHoldings({ output: 'brevo', contactKey: 'pat@example.org' })).toEqual([]);
        await expect(store.recordContactHolding({ ...first, firstSentAt: 'yesterday' })).rejects.toThrow();
        await expect(store.recordContactHolding({ ...first, contactKey: '' })).rejects.toThrow(RangeError);
      });

      it("keeps the tool's own id of a contact once its API gave one, and finds the holdings by it", async () => {
        const held = { output: 'hubspot', patientId: 'P1', contactKey: 'pat@example.org', firstSentAt: '2024-01-02T09:00:00Z' };
        await store.recordContactHolding(held);
        expect(await store.listContactHoldings({ output: 'hubspot', toolId: '901' })).toEqual([]);
        // Recorded again with the id the tool answered: not a new holding, the id kept.
        expect(await store.recordContactHolding({ ...held, firstSentAt: '2024-02-01T09:00:00Z', toolId: '901' })).toBe(false);
        expect(await store.listContactHoldings({ output: 'hubspot', toolId: '901' })).toEqual([{ ...held, toolId: '901' }]);
        // Without an id the stored one stays; another output's id space is its own.
        await store.recordContactHolding(held);
        expect(await store.listContactHoldings({ patientId: 'P1' })).toEqual([{ ...held, toolId: '901' }]);
        expect(await store.listContactHoldings({ output: 'other', toolId: '901' })).toEqual([]);
        await expect(store.recordContactHolding({ ...held, toolId: '' })).rejects.toThrow(RangeError);
      });
    });

    describe('dashboard counts (flow activity, delivery tallies)', () => {
      it('counts messages per input, minute and ACK code within the window, and keeps each input\'s last message', async () => {
        const at = (hhmmss: string) => `2024-01-01T${hhmmss}Z`;
        stored(await store.commitInbound(testRecord({ controlId: 'F1', receivedAt: at('08:00:10') })));
        stored(await store.commitInbound(testRecord({ controlId: 'F2', receivedAt: at('09:58:05') })));
        stored(await store.commitInbound(testRecord({ controlId: 'F3', receivedAt: at('09:58:40') })));
        stored(await store.commitInbound(testRecord({ controlId: 'F4', receivedAt: at('09:58:59'), status: 'rejected', ackCode: 'AR', reason: 'missing_field' })));
        stored(await store.commitInbound(testRecord({ controlId: 'F5', receivedAt: at('09:59:30') })));
        stored(await store.commitInbound(testRecord({ controlId: 'F6', input: 'fhir-hook', format: 'fhir', ackCode: '200', receivedAt: at('07:15:00.250') })));
        await store.commitInbound(testRecord({ controlId: 'F5', receivedAt: at('09:59:31') })); // a duplicate: nothing new
        const flows = await store.flowActivity(at('09:00:00'));
        const byName = new Map(flows.map((f) => [`${f.kind}/${f.name}`, f]));
        expect(byName.get('input/mllp-main')).toEqual({
          kind: 'input',
          name: 'mllp-main',
          lastAt: '2024-01-01T09:59:30.000Z',
          minutes: [
            { minute: '2024-01-01T09:58:00.000Z', code: 'AA', count: 2 },
            { minute: '2024-01-01T09:58:00.000Z', code: 'AR', count: 1 },
            { minute: '2024-01-01T09:59:00.000Z', code: 'AA', count: 1 },
          ],
        });
        // Silent within the window: still known, with its last message.
        expect(byName.get('input/fhir-hook')).toEqual({ kind: 'input', name: 'fhir-hook', lastAt: '2024-01-01T07:15:00.250Z', minutes: [] });
        // An earlier `since` gives what the store keeps (at least the minutes since 09:00 here).
        expect((await store.flowActivity(at('08:59:00'))).find((f) => f.name === 'mllp-main')!.minutes.length).toBeGreaterThanOrEqual(3);
        await expect(store.flowActivity('soon')).rejects.toThrow(RangeError);
      });

      it('counts delivery ends per output and minute, and deliveries per rule, variant, output, status and reason', async () => {
        const a = testDelivery({ appointmentId: 'A1', variant: 'short' });
        const b = testDelivery({ appointmentId: 'A2', variant: 'long' });
        const c = testDelivery({ appointmentId: 'A3', variant: 'short' });
        const d = testDelivery({ appointmentId: 'A4', ruleId: 'confirm', output: 'mail', channel: 'email' });
        await store.saveRouting('t', [write(a), write(b), write(c), write(d)], '2024-01-01T09:30:02Z');
        await store.finishDelivery(a.id, 1, { status: 'sent', at: '2024-01-01T10:00:05Z', message: { language: 'en', text: 'Hi' } });
        await store.finishDelivery(b.id, 1, { status: 'suppressed', reason: 'opted_out', at: '2024-01-01T10:00:20Z' });
        await store.finishDelivery(c.id, 1, { status: 'suppressed', reason: 'opted_out', at: '2024-01-01T10:01:00+01:00' });
        await store.saveRouting('t2', [write(d, { status: 'cancelled', asOf: '2024-01-01T09:40:00Z', updatedAt: '2024-01-01T09:40:01Z' })], '2024-01-01T09:40:01Z');
        expect(await store.deliveryTallies()).toEqual([
          { rule: 'confirm', output: 'mail', status: 'cancelled', count: 1 },
          { rule: 'reminder', variant: 'long', output: 'sms', status: 'suppressed', reason: 'opted_out', count: 1 },
          { rule: 'reminder', variant: 'short', output: 'sms', status: 'sent', count: 1 },
          { rule: 'reminder', variant: 'short', output: 'sms', status: 'suppressed', reason: 'opted_out', count: 1 },
        ]);
        const sms = (await store.flowActivity('2024-01-01T09:00:00Z')).find((f) => f.kind === 'output' && f.name === 'sms');
        expect(sms).toEqual({
          kind: 'output',
          name: 'sms',
          lastAt: '2024-01-01T10:00:20.000Z',
          minutes: [
            { minute: '2024-01-01T09:01:00.000Z', code: 'suppressed', count: 1 },
            { minute: '2024-01-01T10:00:00.000Z', code: 'sent', count: 1 },
            { minute: '2024-01-01T10:00:00.000Z', code: 'suppressed', count: 1 },
          ],
        });
      });
    });

    consentLedgerConformance(() => store);
    replyLedgerConformance(() => store);
    operationsConformance(() => store);
    videoConformance(() => store);
    waitlistRetentionConformance(() => store);

    describe('closing', () => {
      it('after close, commits reject (so the caller NAKs) and close is idempotent', async () => {
        stored(await store.commitInbound(testRecord({ controlId: 'Z1' })));
        await store.close();
        await store.close();
        await expect(store.commitInbound(testRecord({ controlId: 'Z2' }))).rejects.toThrow();
        await expect(store.ping()).rejects.toThrow();
      });
    });
  });
}
