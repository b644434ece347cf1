// The replies part of the Store conformance suite (store.ts ReplyLedger, InboundRecord.answers
// and .tasks): every backend runs it from storeConformanceSuite. All data here is synthetic.
import { describe, expect, it } from 'vitest';
import { testRecord, testTrigger } from './conformance.ts';
import { pruneAll } from './operations-conformance.ts';
import { PromptClosedError, type InboundRecord, type ReplyPrompt, type Store } from './store.ts';

const SENT = '2025-06-01T09:00:00+02:00';

function prompt(over: Partial<ReplyPrompt> & { id: string }): ReplyPrompt {
  return {
    output: 'sms',
    address: '+33 6 12 34 56 78',
    patientId: 'MRN-1',
    ruleId: 'reminder',
    appointmentId: 'APT-1',
    appointmentStart: '2025-06-02T10:00:00+02:00',
    triggerId: 'trg-1',
    offer: { language: 'en', answers: [{ action: 'confirm', words: ['1', 'YES'] }, { action: 'cancel', words: ['2'] }], writeBack: 'ehr' },
    sentAt: SENT,
    closesAt: '2025-06-02T10:00:00+02:00',
    ...over,
  };
}

/** An SMS reply as the replies worker stores it. */
function sms(controlId: string, over: Partial<InboundRecord> = {}) {
  return testRecord({ controlId, format: 'sms', input: 'sms', sender: 'sms', messageType: 'SMS', raw: Buffer.from(`Body=1&MessageSid=${controlId}`), ack: '', ackCode: '200', ...over });
}

export function replyLedgerConformance(getStore: () => Store): void {
  describe('replies and staff tasks', () => {
    it('keeps a prompt once and finds the open prompts of a number, newest first, until they close', async () => {
      const store = getStore();
      expect(await store.addReplyPrompt(prompt({ id: 'r1@appointment/A#0' }))).toBe(true);
      expect(await store.addReplyPrompt(prompt({ id: 'r1@appointment/A#0', ruleId: 'other' }))).toBe(false);
      await store.addReplyPrompt(prompt({ id: 'r1@appointment/B#0', appointmentId: 'B', sentAt: '2025-06-01T10:00:00+02:00', closesAt: '2025-06-05T10:00:00+02:00' }));
      await store.addReplyPrompt(prompt({ id: 'r1@appointment/C#0', output: 'other-sms' }));
      const open = await store.openReplyPrompts({ output: 'sms', address: '+33612345678', at: '2025-06-01T12:00:00+02:00' });
      expect(open.map((p) => p.id)).toEqual(['r1@appointment/B#0', 'r1@appointment/A#0']);
      // Kept as given, the address normalized.
      expect(open[1]).toEqual({ ...prompt({ id: 'r1@appointment/A#0' }), address: '+33612345678' });
      // At the close of the first, only the other is open.
      expect((await store.openReplyPrompts({ output: 'sms', address: '+33612345678', at: '2025-06-02T08:00:00Z' })).map((p) => p.id)).toEqual(['r1@appointment/B#0']);
      expect(await store.openReplyPrompts({ output: 'sms', address: '+15550100', at: SENT })).toEqual([]);
      await expect(store.addReplyPrompt(prompt({ id: 'bad', sentAt: 'yesterday' }))).rejects.toThrow(RangeError);
    });

    it('an answer is stored only while its prompt is open: the same commit takes the prompt', async () => {
      const store = getStore();
      await store.addReplyPrompt(prompt({ id: 'p1' }));
      const answer = { action: 'confirm' as const, answer: '1', messageId: 'SM1', at: '2025-06-01T12:00:00+02:00' };
      const trigger = testTrigger({ id: 'ans-1', type: 'appointment.confirmed', source: { format: 'sms', sender: 'sms', messageType: 'SMS', messageId: 'SM1' }, reply: { action: 'confirm', answer: '1', prompt: 'p1' } });
      const first = await store.commitInbound(sms('SM1', { triggers: [trigger], answers: { promptId: 'p1', answer } }));
      expect(first.outcome).toBe('stored');
      expect(first.message.format).toBe('sms');
      expect(await store.getTrigger('ans-1')).toEqual(trigger);
      expect(await store.openReplyPrompts({ output: 'sms', address: '+33612345678', at: '2025-06-01T12:00:00+02:00' })).toEqual([]);
      // A second answer to the same prompt stores nothing.
      const second = store.commitInbound(sms('SM2', { triggers: [{ ...trigger, id: 'ans-2' }], answers: { promptId: 'p1', answer: { ...answer, messageId: 'SM2' } } }));
      await expect(second).rejects.toBeInstanceOf(PromptClosedError);
      expect(await store.getTrigger('ans-2')).toBeUndefined();
      expect(await store.findMessage('sms', 'SM2')).toBeUndefined();
      // The same SMS again (a provider's resend) is a duplicate, not a second answer.
      expect((await store.commitInbound(sms('SM1', { triggers: [trigger], answers: { promptId: 'p1', answer } }))).outcome).toBe('duplicate');
    });

    it('staff tasks open once per key, with the stored SMS when they come with it, and close once', async () => {
      const store = getStore();
      const base = { kind: 'sms_unmatched' as const, createdAt: '2025-06-01T12:00:00Z', output: 'sms' };
      const committed = await store.commitInbound(sms('SM9', { tasks: [{ ...base, key: 'sms:sms:SM9' }] }));
      const [task] = await store.listStaffTasks({});
      expect(task).toMatchObject({ key: 'sms:sms:SM9', kind: 'sms_unmatched', status: 'open', messageId: committed.message.id, output: 'sms' });
      const again = await store.addStaffTask({ ...base, key: 'sms:sms:SM9', kind: 'shared_number' });
      expect(again).toEqual(task);
      const denied = await store.addStaffTask({ key: 'wb:p1', kind: 'write_back_denied', createdAt: '2025-06-01T12:05:00Z', patientId: 'MRN-1', appointmentId: 'APT-1', promptId: 'p1', output: 'ehr', code: 'appointment_fulfilled' });
      expect(denied).toMatchObject({ kind: 'write_back_denied', status: 'open', code: 'appointment_fulfilled', patientId: 'MRN-1' });
      expect((await store.listStaffTasks({})).map((t) => t.key)).toEqual(['wb:p1', 'sms:sms:SM9']);
      const done = await store.finishStaffTask(denied.id, { at: '2025-06-01T13:00:00Z', by: 'front-desk' });
      expect(done).toMatchObject({ id: denied.id, status: 'done', doneAt: '2025-06-01T13:00:00Z', doneBy: 'front-desk' });
      expect(await store.finishStaffTask(denied.id, { at: '2025-06-01T14:00:00Z', by: 'other' })).toEqual(done);
      expect((await store.listStaffTasks({ status: 'open' })).map((t) => t.key)).toEqual(['sms:sms:SM9']);
      expect((await store.listStaffTasks({ status: 'done' })).map((t) => t.key)).toEqual(['wb:p1']);
      expect((await store.listStaffTasks({ limit: 1 })).map((t) => t.key)).toEqual(['wb:p1']);
      expect((await store.listStaffTasks({ before: denied.id })).map((t) => t.key)).toEqual(['sms:sms:SM9']);
      expect(await store.finishStaffTask('task-999999', { at: '2025-06-01T13:00:00Z', by: 'x' })).toBeUndefined();
      expect(await store.finishStaffTask('nonsense', { at: '2025-06-01T13:00:00Z', by: 'x' })).toBeUndefined();
      await expect(store.listStaffTasks({ before: 'nonsense' })).rejects.toThrow(RangeError);
      await expect(store.addStaffTask({ ...base, key: 'k', kind: 'nonsense' as 'sms_unmatched' })).rejects.toThrow(RangeError);
    });

    it("an erasure removes the patient's prompts (their number)", async () => {
      const store = getStore();
      await store.addReplyPrompt(prompt({ id: 'p1' }));
      await store.addReplyPrompt(prompt({ id: 'p2', patientId: 'MRN-2' }));
      await store.erasePatient('MRN-1', '2025-06-01T11:00:00Z');
      expect((await store.openReplyPrompts({ output: 'sms', address: '+33612345678', at: '2025-06-01T12:00:00Z' })).map((p) => p.id)).toEqual(['p2']);
    });

    it('retention: prompts closed before the cutoff and tasks done before it go; open ones stay whatever their age', async () => {
      const store = getStore();
      await store.addReplyPrompt(prompt({ id: 'closed' }));
      await store.addReplyPrompt(prompt({ id: 'open', closesAt: '2025-08-01T10:00:00+02:00' }));
      const old = { kind: 'write_back_denied' as const, createdAt: '2025-06-01T12:00:00Z', output: 'ehr' };
      const done = await store.addStaffTask({ ...old, key: 'done' });
      await store.finishStaffTask(done.id, { at: '2025-06-02T12:00:00Z', by: 'front-desk' });
      const late = await store.addStaffTask({ ...old, key: 'done-late' });
      await store.finishStaffTask(late.id, { at: '2025-07-02T12:00:00Z', by: 'front-desk' });
      await store.addStaffTask({ ...old, key: 'open' });
      const cutoff = { before: '2025-07-01T00:00:00Z', limit: 1 };
      expect(await pruneAll(store, 'replyPrompts', { ...cutoff, dryRun: true })).toBe(1);
      expect(await pruneAll(store, 'staffTasks', { ...cutoff, dryRun: true })).toBe(1);
      expect(await pruneAll(store, 'replyPrompts', cutoff)).toBe(1);
      expect(await pruneAll(store, 'staffTasks', cutoff)).toBe(1);
      // Seen while both were open, only the one still open is left.
      expect((await store.openReplyPrompts({ output: 'sms', address: '+33612345678', at: '2025-06-01T12:00:00+02:00' })).map((p) => p.id)).toEqual(['open']);
      expect((await store.listStaffTasks({})).map((t) => t.key).sort()).toEqual(['done-late', 'open']);
      expect(await pruneAll(store, 'staffTasks', { before: '2030-01-01T00:00:00Z' })).toBe(1);
      expect((await store.listStaffTasks({})).map((t) => t.key)).toEqual(['open']);
    });
  });
}
