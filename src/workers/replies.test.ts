import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PermanentError, TransientError } from '../errors.ts';
import { silentLogger } from '../log.ts';
import { compileReply, type ReplySpec } from '../pipeline/reply.ts';
import type { Rule } from '../pipeline/rule.ts';
import type { NewJob } from '../queue/queue.ts';
import { testDelivery, testRecord, testTrigger } from '../store/conformance.ts';
import { SqliteStore } from '../store/sqlite.ts';
import type { StoredDelivery } from '../store/store.ts';
import type { Trigger } from '../types.ts';
import type { WriteBackResult } from '../outputs/write-back.ts';
import { ReplyService, WRITE_BACK_ATTEMPTS, type InboundSms, type WriteBackJob } from './replies.ts';

const NOW = Date.parse('2030-03-15T10:00:00Z');
const PHONE = '+33612345678';

function reply(raw: unknown): ReplySpec {
  const issues: unknown[] = [];
  const spec = compileReply(raw, ['reply'], { on: ['appointment.booked'], channel: 'sms' }, { outputs: [{ name: 'ehr', writeBackKinds: ['confirm', 'cancel'] }], optOutWords: [] }, issues as never);
  expect(issues).toEqual([]);
  return spec!;
}

const WITH_WRITE_BACK = reply({
  writeBack: 'ehr',
  answers: [
    { action: 'confirm', words: ['1', 'YES'], languages: { fr: ['OUI'] } },
    { action: 'cancel', words: ['2'] },
    { action: 'reschedule', words: ['3'] },
  ],
});
const WITHOUT = reply({ answers: [{ action: 'confirm', words: ['1'] }, { action: 'cancel', words: ['2'] }] });

let store: SqliteStore;
let clock: number;
let keywordCalls: string[];
let routed: Trigger[];
let queued: Array<NewJob<WriteBackJob>>;
let answers: Array<WriteBackResult | Error>;
let rules: Rule[];
let service: ReplyService;

beforeEach(async () => {
  store = SqliteStore.open(':memory:');
  clock = NOW;
  keywordCalls = [];
  routed = [];
  queued = [];
  answers = [];
  rules = [{ id: 'reminder', reply: WITH_WRITE_BACK } as Rule, { id: 'plain' } as Rule, { id: 'no-write-back', reply: WITHOUT } as Rule];
  service = new ReplyService({
    store,
    keywords: {
      inboundSms: async (m) => {
        keywordCalls.push(m.body);
        return { reply: 'You are unsubscribed.' };
      },
    },
    policy: { keywords: { optOut: ['ARRET'], replies: { stop: 's', start: 's', help: 'h' } } },
    rules: () => rules,
    onAnswer: (t) => routed.push(...t),
    queueWriteBack: async (job) => queued.push(job),
    output: (name) =>
      name === 'ehr'
        ? {
            writeBack: async () => {
              const next = answers.shift();
              if (next instanceof Error) throw next;
              return next ?? { outcome: 'applied' };
            },
          }
        : undefined,
    log: silentLogger,
    now: () => clock,
  });
});
afterEach(async () => store.close());

/** A booked appointment in the store, and the reminder of `ruleId` sent for it. */
async function booked(appointmentId: string, patientId: string, ruleId = 'reminder', language?: string): Promise<StoredDelivery> {
  const trigger = testTrigger({
    id: `booked-${appointmentId}`,
    patient: { ...testTrigger({ id: 'x' }).patient, id: patientId, telecom: [{ system: 'phone', use: 'mobile', value: PHONE }] },
    appointment: { id: appointmentId, placerId: `P-${appointmentId}`, status: 'booked', start: '2030-03-16T10:00:00Z' },
  });
  await store.commitInbound(
    testRecord({ controlId: `C-${appointmentId}`, triggers: [trigger], subjectStates: [{ kind: 'appointment', id: appointmentId, patientId, status: 'booked', start: '2030-03-16T10:00:00Z', asOf: trigger.occurredAt }] }),
  );
  const delivery = { ...testDelivery({ id: `${ruleId}@appointment/${appointmentId}#0`, ruleId, subjectId: appointmentId, subjectKey: `appointment/${appointmentId}` }), patientId, triggerId: trigger.id, to: PHONE };
  const stored: StoredDelivery = { delivery, status: 'sent', asOf: trigger.occurredAt, generation: 1, subjectStart: '2030-03-16T10:00:00Z', createdAt: '', updatedAt: '', ...(language ? { message: { language, text: '' } } : {}) };
  if (language) {
    await store.saveRouting(trigger.id, [{ delivery, status: 'pending', asOf: trigger.occurredAt, generation: 1, updatedAt: '2030-03-15T09:00:00Z' }], '2030-03-15T09:00:00Z');
    await store.finishDelivery(delivery.id, 1, { status: 'sent', message: { language, text: 'Répondez OUI' }, at: '2030-03-15T09:00:00Z' });
  }
  await service.sent(stored, PHONE, clock - 60_000);
  return stored;
}

let sid = 0;
function sms(body: string, over: Partial<InboundSms> = {}): InboundSms {
  const messageId = `SM${String(++sid).padStart(32, '0')}`;
  return { output: 'sms', from: '+33 6 12 34 56 78', body, messageId, raw: Buffer.from(`Body=${encodeURIComponent(body)}&MessageSid=${messageId}`), ...over };
}

describe('ReplyService', () => {
  it('opens a prompt after a reply-asking SMS, in the language it went out in, until the appointment starts', async () => {
    await booked('A1', 'MRN-1', 'reminder', 'fr');
    const [prompt] = await store.openReplyPrompts({ output: 'sms', address: PHONE, at: new Date(clock).toISOString() });
    expect(prompt).toMatchObject({ id: 'reminder@appointment/A1#0', appointmentId: 'A1', patientId: 'MRN-1', closesAt: '2030-03-16T10:00:00.000Z', offer: { language: 'fr', writeBack: 'ehr' } });
    expect(prompt!.offer.answers[0]!.words).toEqual(['1', 'YES', 'OUI']);
    // A rule without reply: no prompt.
    await booked('A2', 'MRN-1', 'plain');
    expect(await store.openReplyPrompts({ output: 'sms', address: PHONE, at: new Date(clock).toISOString() })).toHaveLength(1);
  });

  it('"1" confirms: the SMS and its answer trigger in one commit, the prompt taken, the write-back queued, no reply', async () => {
    await booked('A1', 'MRN-1');
    const message = sms('1');
    expect(await service.inboundSms(message)).toEqual({});
    expect(routed).toHaveLength(1);
    const [trigger] = routed;
    expect(trigger).toMatchObject({
      type: 'appointment.confirmed',
      source: { format: 'sms', sender: 'sms', messageType: 'SMS', messageId: message.messageId },
      patient: { id: 'MRN-1' },
      appointment: { id: 'A1', placerId: 'P-A1' },
      reply: { action: 'confirm', answer: '1', prompt: 'reminder@appointment/A1#0' },
    });
    expect(await store.getTrigger(trigger!.id)).toEqual(trigger);
    const stored = await store.findMessage('sms', message.messageId);
    expect(stored).toMatchObject({ format: 'sms', triggerIds: [trigger!.id], patientId: 'MRN-1' });
    expect(queued).toEqual([
      {
        id: 'wb~reminder@appointment/A1#0',
        data: { output: 'ehr', promptId: 'reminder@appointment/A1#0', patientId: 'MRN-1', operation: expect.objectContaining({ kind: 'confirm', requestId: 'wb~reminder@appointment/A1#0', appointment: expect.objectContaining({ id: 'A1', placerId: 'P-A1' }) }) },
        runAt: new Date(NOW),
        idempotent: true,
        maxAttempts: WRITE_BACK_ATTEMPTS,
      },
    ]);
    expect(await store.openReplyPrompts({ output: 'sms', address: PHONE, at: new Date(clock).toISOString() })).toEqual([]);
    // Twilio resends the same message: nothing new.
    await service.inboundSms(message);
    expect(routed).toHaveLength(1);
    expect(queued).toHaveLength(1);
    expect(await store.listStaffTasks({})).toEqual([]);
  });

  it('CANCEL, STOP and the tenant\'s own word are opt-outs for the consent ledger, never answers', async () => {
    await booked('A1', 'MRN-1');
    for (const body of ['CANCEL', 'stop', 'Arret']) expect(await service.inboundSms(sms(body))).toEqual({ reply: 'You are unsubscribed.' });
    expect(keywordCalls).toEqual(['CANCEL', 'stop', 'Arret']);
    expect(routed).toEqual([]);
    expect(queued).toEqual([]);
    expect(await store.openReplyPrompts({ output: 'sms', address: PHONE, at: new Date(clock).toISOString() })).toHaveLength(1);
  });

  it('a number whose open prompts are several patients\' goes to staff, with nothing written', async () => {
    await booked('A1', 'MRN-1');
    await booked('A2', 'MRN-2');
    const message = sms('1');
    expect(await service.inboundSms(message)).toEqual({});
    expect(routed).toEqual([]);
    expect(queued).toEqual([]);
    const stored = await store.findMessage('sms', message.messageId);
    expect(await store.listStaffTasks({})).toEqual([expect.objectContaining({ kind: 'shared_number', status: 'open', messageId: stored!.id, output: 'sms' })]);
    // Both prompts stay open for staff to settle.
    expect(await store.openReplyPrompts({ output: 'sms', address: PHONE, at: new Date(clock).toISOString() })).toHaveLength(2);
  });

  it('anything else goes to the staff inbox with no automatic reply: an unknown answer, and an SMS from a number without a prompt', async () => {
    await booked('A1', 'MRN-1');
    expect(await service.inboundSms(sms('can I come at 3 instead?'))).toEqual({});
    expect(await service.inboundSms(sms('hello', { from: '+15550100' }))).toEqual({});
    const tasks = await store.listStaffTasks({});
    expect(tasks.map((t) => [t.kind, t.patientId, t.promptId])).toEqual([
      ['sms_unmatched', undefined, undefined],
      ['sms_unmatched', 'MRN-1', 'reminder@appointment/A1#0'],
    ]);
    expect(routed).toEqual([]);
  });

  it('an answer about an appointment cancelled or moved since the reminder goes to staff', async () => {
    await booked('A1', 'MRN-1');
    await store.commitInbound(testRecord({ controlId: 'S15', subjectStates: [{ kind: 'appointment', id: 'A1', patientId: 'MRN-1', status: 'cancelled', asOf: '2030-03-15T09:30:00Z' }] }));
    await service.inboundSms(sms('1'));
    expect(await store.listStaffTasks({})).toEqual([expect.objectContaining({ kind: 'stale_answer', code: 'appointment_cancelled' })]);
    expect(routed).toEqual([]);
  });

  it('reschedule via task and a cancel without a write-back output are staff tasks beside the answer trigger', async () => {
    await booked('A1', 'MRN-1');
    await service.inboundSms(sms('3'));
    expect(routed.map((t) => t.type)).toEqual(['appointment.reschedule_requested']);
    expect(queued).toEqual([]);
    await booked('A2', 'MRN-1', 'no-write-back');
    await service.inboundSms(sms('2'));
    expect(routed.map((t) => t.type)).toEqual(['appointment.reschedule_requested', 'appointment.cancel_requested']);
    expect(queued).toEqual([]);
    expect((await store.listStaffTasks({})).map((t) => [t.kind, t.appointmentId])).toEqual([
      ['cancel_requested', 'A2'],
      ['reschedule_requested', 'A1'],
    ]);
  });

  describe('the write-back job', () => {
    const job = (attempt: number) => ({
      id: 'wb~reminder@appointment/A1#0',
      attempt,
      signal: new AbortController().signal,
      data: { output: 'ehr', promptId: 'reminder@appointment/A1#0', patientId: 'MRN-1', operation: { kind: 'confirm' as const, requestId: 'wb~reminder@appointment/A1#0', appointment: { id: 'A1' }, patient: { id: 'MRN-1', identifiers: [] } } },
    });

    it('applied: no task; denied: a staff task with the EHR\'s code', async () => {
      expect(await service.writeBack(job(1))).toEqual({ outcome: 'applied' });
      expect(await store.listStaffTasks({})).toEqual([]);
      answers.push({ outcome: 'denied', code: 'hl7_ae' });
      await service.writeBack(job(1));
      expect(await store.listStaffTasks({})).toEqual([expect.objectContaining({ kind: 'write_back_denied', code: 'hl7_ae', patientId: 'MRN-1', appointmentId: 'A1', output: 'ehr' })]);
    });

    it('a transient failure is the queue\'s to retry, until the last attempt; a permanent one is a task at once', async () => {
      answers.push(new TransientError('fhir_unavailable', '503'));
      await expect(service.writeBack(job(1))).rejects.toBeInstanceOf(TransientError);
      expect(await store.listStaffTasks({})).toEqual([]);
      answers.push(new TransientError('fhir_unavailable', '503'));
      await expect(service.writeBack(job(WRITE_BACK_ATTEMPTS))).rejects.toBeInstanceOf(TransientError);
      expect(await store.listStaffTasks({})).toEqual([expect.objectContaining({ kind: 'write_back_failed', code: 'fhir_unavailable' })]);
      answers.push(new PermanentError('fhir_unauthorized', '401'));
      await expect(service.writeBack({ ...job(1), id: 'other' })).rejects.toBeInstanceOf(PermanentError);
      expect((await store.listStaffTasks({})).map((t) => t.code)).toEqual(['fhir_unauthorized', 'fhir_unavailable']);
    });

    it('an output that is not running is a task, not a silent drop', async () => {
      await expect(service.writeBack({ ...job(1), data: { ...job(1).data, output: 'gone' } })).rejects.toBeInstanceOf(PermanentError);
      expect(await store.listStaffTasks({})).toEqual([expect.objectContaining({ kind: 'write_back_failed', code: 'write_back_output_unknown' })]);
    });
  });

  it('at start, answers of the last day get their write-back queued again (an existing job id is a duplicate)', async () => {
    await booked('A1', 'MRN-1', 'reminder', 'en');
    await service.inboundSms(sms('2'));
    queued = [];
    await service.repair();
    expect(queued.map((j) => [j.id, j.data.operation.kind])).toEqual([['wb~reminder@appointment/A1#0', 'cancel']]);
  });
});
