// Patients answering reminders (mappings/README.md "Replies"; docs/trigger.md "Answers"):
//
//   reminder sent (a rule with reply:) ─▶ open prompt: output, number, offer in the message's language
//   inbound SMS ─▶ opt-out word / START / HELP ─▶ the consent ledger (workers/consent.ts), answered once
//               ─▶ else one commit: the SMS (a message of format sms) with
//                    an offered answer to the latest open prompt of the number ─▶ answer trigger (+ prompt taken)
//                    a number whose open prompts are several patients'          ─▶ staff task shared_number
//                    an answer to an appointment cancelled or moved since       ─▶ staff task stale_answer
//                    anything else                                               ─▶ staff task sms_unmatched
//                  no automatic reply to any of these (a thank-you is a rule on the answer trigger)
//   answer trigger ─▶ routed like any trigger (rules on appointment.confirmed…)
//                  ─▶ confirm / cancel with reply.writeBack: queue `write-backs` ─▶ output.writeBack()
//                       applied ─▶ done; denied ─▶ staff task write_back_denied;
//                       failed for good or out of attempts ─▶ staff task write_back_failed
//                  ─▶ cancel without a write-back output, reschedule via task ─▶ a staff task
//
// Nothing an answer asks for is lost silently: it is a trigger, a queued write-back or a staff
// task, committed with the SMS. A crash between that commit and the write-back's queue add is
// repaired at the next start (answers of the last day are queued again; an existing job id is
// a duplicate). Logs carry delivery ids, output names, actions and reason codes: never a
// number, a patient id or what the patient wrote.
import { createHash } from 'node:crypto';
import { failureClassOf, PermanentError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { OutboundAdapter } from '../outputs/spec.ts';
import { CANCELLED_BY_REMINDER, WriteBackKind, WriteBackOutcome, type WriteBackOperation, type WriteBackResult } from '../outputs/write-back.ts';
import { classifyKeyword } from '../pipeline/keywords.ts';
import type { PolicySettings } from '../pipeline/policy.ts';
import { ANSWER_TRIGGER, ANSWER_TRIGGER_TYPES, matchAnswer, offerFor, RescheduleVia, type MatchedAnswer } from '../pipeline/reply.ts';
import type { Rule } from '../pipeline/rule.ts';
import { parseInstant } from '../pipeline/values.ts';
import type { JobContext, NewJob, Queue } from '../queue/queue.ts';
import { OfferToldError, PromptClosedError, SlotTakenError, StaffTaskKind, type NewStaffTask, type ReplyPrompt, type Store, type StoredDelivery } from '../store/store.ts';
import { MessageStatus, ReplyAction, TriggerType, type Trigger } from '../types.ts';
import type { ClaimVerdict } from './waitlist.ts';
import type { SendGate } from './deliver.ts';

/** Name of the embedded queue holding write-backs. */
export const WRITE_BACK_QUEUE = 'write-backs';
/**
 * Attempts of one write-back: with the queue's backoff (5 s doubling), about 20 minutes from the
 * first failure to the last attempt — an answer about tomorrow's visit is worth little to staff
 * after that, so then it becomes their task.
 */
export const WRITE_BACK_ATTEMPTS = 8;
/** A prompt of an appointment without a start stays open this long after the send. */
const PROMPT_WITHOUT_START_MS = 7 * 86_400_000;
/** Answers whose write-back the start-up sweep queues again when missing. */
const REPAIR_WINDOW_MS = 86_400_000;
/** Appointment statuses after which an answer cannot change anything (rule 1's list). */
const CLOSED_APPOINTMENT = new Set(['cancelled', 'entered-in-error', 'noshow', 'fulfilled', 'arrived', 'checked-in']);

/** What a write-back job carries (stored as JSON): the operation, and where it goes. */
export interface WriteBackJob {
  /** The output (rule reply.writeBack). */
  output: string;
  /** The prompt answered (a delivery id), for the staff task. */
  promptId: string;
  patientId: string;
  operation: WriteBackOperation;
}

/** Reason codes this worker logs (safe to log). */
export const ReplyReason = {
  Answered: 'answered',
  Staff: 'staff',
  WrittenBack: 'written_back',
  WriteBackDenied: 'write_back_denied',
  WriteBackFailed: 'write_back_failed',
  OutputUnknown: 'write_back_output_unknown',
} as const;

/** An inbound SMS as the webhook read it. */
export interface InboundSms {
  /** The SMS output (its number) it came to. */
  output: string;
  from: string;
  body: string;
  /** The provider's message id (Twilio MessageSid). */
  messageId: string;
  /** The request as received (kept as the stored message's bytes). */
  raw: Buffer;
}

export interface ReplyServiceDeps {
  store: Store;
  /** The keywords' way in (workers/consent.ts ConsentService.inboundSms). */
  keywords: { inboundSms(message: { output: string; from: string; body: string; messageId: string }): Promise<{ reply?: string }> };
  policy: Pick<PolicySettings, 'keywords'>;
  /** The rules in force (a reply's rule is looked up when its message is sent). */
  rules: () => readonly Rule[];
  /** The waitlist (workers/waitlist.ts): a yes to an offer claims its slot; absent, a yes is told the slot is taken. */
  waitlist?: { claimFor(prompt: ReplyPrompt): Promise<ClaimVerdict>; accepted(claim: { slotId: string; offerId: string }): Promise<void>; declined(offerId: string): Promise<void> };
  /** Routes committed answer triggers (Router.onCommitted; the simulator's own routing). */
  onAnswer: (triggers: Trigger[]) => void;
  /** Queues a write-back (the `write-backs` queue; the simulator runs it at once). */
  queueWriteBack: (job: NewJob<WriteBackJob>) => Promise<unknown>;
  /** The running adapter of an output. */
  output: (name: string) => Pick<OutboundAdapter, 'writeBack'> | undefined;
  log: Logger;
  now: () => number;
}

export class ReplyService {
  readonly #deps: ReplyServiceDeps;
  /** Inbound SMS of one number are handled one after the other (in this process; the store decides across processes). */
  readonly #chains = new Map<string, Promise<unknown>>();

  constructor(deps: ReplyServiceDeps) {
    this.#deps = deps;
  }

  // --- the reminder went out ---------------------------------------------------------------

  /**
   * After a send (SendGate.sent): a message of a rule with `reply:` opens a prompt on its
   * number, with the answers of the language it went out in (`language`, else the stored
   * message's). Closes at the appointment start.
   */
  async sent(stored: StoredDelivery, to: string | undefined, at: number, language?: string): Promise<void> {
    const d = stored.delivery;
    if (d.channel !== 'sms' || d.subjectKind !== 'appointment' || to === undefined || to === '') return;
    const rule = this.#deps.rules().find((r) => r.id === d.ruleId);
    if (rule?.reply === undefined) return;
    const { store } = this.#deps;
    const [finished, trigger] = await Promise.all([store.getDelivery(d.id), store.getTrigger(d.triggerId)]);
    const start = stored.subjectStart ?? trigger?.appointment?.start;
    const startMs = start === undefined ? undefined : parseInstant(start);
    const prompt: ReplyPrompt = {
      id: d.id,
      output: d.output,
      address: to,
      patientId: d.patientId,
      ruleId: d.ruleId,
      appointmentId: d.subjectId,
      ...(start !== undefined ? { appointmentStart: start } : {}),
      triggerId: d.triggerId,
      offer: offerFor(rule.reply, language ?? finished?.message?.language ?? 'en'),
      sentAt: new Date(at).toISOString(),
      // A waitlist offer too (its slot's start): a yes after the offer expired is told so (workers/waitlist.ts claimFor).
      closesAt: new Date(startMs ?? at + PROMPT_WITHOUT_START_MS).toISOString(),
    };
    await store.addReplyPrompt(prompt);
  }

  // --- an SMS came in ------------------------------------------------------------------------

  /**
   * An inbound SMS, in the order of docs/consent.md "Keywords" then the answers: a keyword goes to
   * the consent ledger (its one confirmation is the reply); anything else is stored and becomes an
   * answer or a staff task, with no reply.
   */
  async inboundSms(message: InboundSms): Promise<{ reply?: string }> {
    const keyword = classifyKeyword(message.body, this.#deps.policy.keywords.optOut);
    // STOP and the rest, START/UNSTOP, HELP: never an answer, whatever a prompt offered.
    if (keyword !== undefined) return this.#deps.keywords.inboundSms(message);
    const key = `${message.output}\u0000${message.from.replace(/[^\d+]/g, '')}`;
    const previous = this.#chains.get(key) ?? Promise.resolve();
    const run = previous.then(() => this.#answer(message));
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.#chains.set(key, settled);
    void settled.then(() => {
      if (this.#chains.get(key) === settled) this.#chains.delete(key);
    });
    await run;
    return {};
  }

  async #answer(message: InboundSms, attempt = 1): Promise<void> {
    const { store, log } = this.#deps;
    const now = this.#deps.now();
    const at = new Date(now).toISOString();
    // A provider's resend: stored once (the dedupe key is the output + the message id).
    if (await store.findMessage(message.output, message.messageId)) return;
    const prompts = await store.openReplyPrompts({ output: message.output, address: message.from, at });
    const decision = await this.#decide(prompts, message);
    const record = {
      input: message.output,
      format: 'sms' as const,
      sender: message.output,
      controlId: message.messageId,
      messageType: 'SMS',
      contentHash: createHash('sha256').update(message.raw).digest('hex'),
      raw: message.raw,
      status: MessageStatus.Accepted,
      // No automatic reply to an answer or to anything for staff: an empty TwiML response.
      ack: 'HTTP 200 (no reply)',
      ackCode: '200',
      receivedAt: at,
      subjectStates: [],
    };
    if (decision.kind === 'staff') {
      const task: NewStaffTask = { key: `sms:${message.output}:${message.messageId}`, kind: decision.task, createdAt: at, output: message.output, ...decision.about };
      await store.commitInbound({ ...record, triggers: [], tasks: [task], ...(decision.about.patientId !== undefined ? { patientId: decision.about.patientId } : {}) });
      log.info('reply.staff_task', { output: message.output, reason: decision.task, ...(decision.about.promptId ? { deliveryId: decision.about.promptId } : {}) });
      return;
    }
    const { prompt, matched, base } = decision;
    // A yes to a waitlist offer claims its slot in the SMS's commit, or is told the slot is taken.
    let claim: { slotId: string; offerId: string } | undefined;
    let told: string[] | undefined;
    let type: TriggerType | undefined = ANSWER_TRIGGER[matched.action];
    if (matched.action === ReplyAction.Accept) {
      const verdict: ClaimVerdict = this.#deps.waitlist !== undefined ? await this.#deps.waitlist.claimFor(prompt) : { taken: 'slot_taken' };
      if ('claim' in verdict) claim = verdict.claim;
      // Told already that the slot is taken (another yes claimed it): the answer is kept, with no trigger.
      else if ('told' in verdict) type = undefined;
      else {
        type = TriggerType.AppointmentWaitlistTaken;
        if (verdict.offerId !== undefined) told = [verdict.offerId];
      }
    }
    const trigger = type === undefined ? undefined : this.#answerTrigger(message, prompt, matched, base, at, type);
    const tasks: NewStaffTask[] = [];
    const about = { patientId: prompt.patientId, appointmentId: prompt.appointmentId, promptId: prompt.id, output: message.output };
    if (matched.action === ReplyAction.Reschedule && matched.via !== RescheduleVia.Link) tasks.push({ key: `reply:${prompt.id}`, kind: StaffTaskKind.RescheduleRequested, createdAt: at, ...about });
    if (matched.action === ReplyAction.Cancel && prompt.offer.writeBack === undefined) tasks.push({ key: `reply:${prompt.id}`, kind: StaffTaskKind.CancelRequested, createdAt: at, ...about });
    try {
      await store.commitInbound({
        ...record,
        triggers: trigger === undefined ? [] : [trigger],
        patientId: prompt.patientId,
        answers: { promptId: prompt.id, answer: { action: matched.action, answer: matched.answer, messageId: message.messageId, at } },
        ...(tasks.length > 0 ? { tasks } : {}),
        ...(claim !== undefined ? { waitlistClaim: claim } : {}),
        ...(told !== undefined ? { waitlistTold: told } : {}),
      });
    } catch (error) {
      // Another message answered the prompt first (another process), or another yes took the
      // waitlist slot, or the patient was told meanwhile that it is taken: decide again on what is open now.
      // (A yes may meet both: the slot taken, then the notice closing its offer first.)
      if ((error instanceof PromptClosedError || error instanceof SlotTakenError || error instanceof OfferToldError) && attempt < 3) return this.#answer(message, attempt + 1);
      throw error;
    }
    log.info('reply.answered', { deliveryId: prompt.id, action: matched.action, ...(type === TriggerType.AppointmentWaitlistTaken ? { code: 'slot_taken' } : type === undefined ? { code: 'already_told' } : {}) });
    if (claim !== undefined) await this.#deps.waitlist!.accepted(claim);
    if (matched.action === ReplyAction.Decline) await this.#deps.waitlist?.declined(prompt.appointmentId);
    if (trigger === undefined) return;
    await this.#queueWriteBack(trigger, prompt.offer.writeBack);
    this.#deps.onAnswer([trigger]);
  }

  /** What to do with a non-keyword SMS, given the prompts open to its number. */
  async #decide(
    prompts: readonly ReplyPrompt[],
    message: InboundSms,
  ): Promise<
    | { kind: 'staff'; task: StaffTaskKind; about: Pick<NewStaffTask, 'patientId' | 'appointmentId' | 'promptId'> & { code?: string } }
    | { kind: 'answer'; prompt: ReplyPrompt; matched: MatchedAnswer; base: Trigger | undefined }
  > {
    if (prompts.length === 0) return { kind: 'staff', task: StaffTaskKind.SmsUnmatched, about: {} };
    // Several patients wait for an answer from this number: the SMS does not say whose it is.
    if (new Set(prompts.map((p) => p.patientId)).size > 1) return { kind: 'staff', task: StaffTaskKind.SharedNumber, about: {} };
    const prompt = prompts[0]!;
    const about = { patientId: prompt.patientId, appointmentId: prompt.appointmentId, promptId: prompt.id };
    const matched = matchAnswer(prompt.offer, message.body);
    if (matched === undefined) return { kind: 'staff', task: StaffTaskKind.SmsUnmatched, about };
    const { store } = this.#deps;
    const [state, base] = await Promise.all([store.getSubjectState('appointment', prompt.appointmentId), store.getTrigger(prompt.triggerId)]);
    if (state?.status !== undefined && CLOSED_APPOINTMENT.has(state.status)) return { kind: 'staff', task: StaffTaskKind.StaleAnswer, about: { ...about, code: `appointment_${state.status.replace(/-/g, '_')}` } };
    if (prompt.appointmentStart !== undefined && state?.start !== undefined && parseInstant(state.start) !== parseInstant(prompt.appointmentStart)) {
      return { kind: 'staff', task: StaffTaskKind.StaleAnswer, about: { ...about, code: 'appointment_moved' } };
    }
    return { kind: 'answer', prompt, matched, base };
  }

  /** The answer as a trigger (docs/trigger.md "Answers"). */
  #answerTrigger(message: InboundSms, prompt: ReplyPrompt, matched: MatchedAnswer, base: Trigger | undefined, at: string, type: TriggerType): Trigger {
    return {
      id: createHash('sha256').update(`sms-answer\u0000${message.output}\u0000${message.messageId}`).digest('hex').slice(0, 32),
      type,
      occurredAt: at,
      receivedAt: at,
      source: { format: 'sms', sender: message.output, messageType: 'SMS', messageId: message.messageId },
      patient: base?.patient ?? { id: prompt.patientId, identifiers: [{ value: prompt.patientId }], deceased: false, telecom: [] },
      appointment: { ...base?.appointment, id: prompt.appointmentId },
      ...(base?.sensitivity !== undefined ? { sensitivity: base.sensitivity } : {}),
      reply: { action: matched.action, answer: matched.answer, prompt: prompt.id },
      ...(base?.waitlist !== undefined ? { waitlist: base.waitlist } : {}),
    };
  }

  /** Queues the write-back an answer trigger asks for, when its rule names a write-back output. */
  async #queueWriteBack(trigger: Trigger, output: string | undefined): Promise<void> {
    const reply = trigger.reply;
    if (output === undefined || reply === undefined || trigger.patient === undefined || (reply.action !== ReplyAction.Confirm && reply.action !== ReplyAction.Cancel)) return;
    const base = {
      requestId: `wb~${reply.prompt}`,
      appointment: { id: trigger.appointment!.id, ...(trigger.appointment?.placerId !== undefined ? { placerId: trigger.appointment.placerId } : {}), ...(trigger.appointment?.start !== undefined ? { start: trigger.appointment.start } : {}) },
      patient: { id: trigger.patient.id, identifiers: trigger.patient.identifiers },
    };
    const operation: WriteBackOperation = reply.action === ReplyAction.Confirm ? { kind: WriteBackKind.Confirm, ...base } : { kind: WriteBackKind.Cancel, ...base, reason: CANCELLED_BY_REMINDER };
    await this.#deps.queueWriteBack({
      id: operation.requestId,
      data: { output, promptId: reply.prompt, patientId: trigger.patient.id, operation },
      runAt: new Date(this.#deps.now()),
      idempotent: true,
      maxAttempts: WRITE_BACK_ATTEMPTS,
    });
  }

  /**
   * At start: answers of the last day whose write-back job is missing (a crash between the
   * commit and the queue add) are queued again; existing ids are duplicates, nothing twice.
   */
  async repair(): Promise<void> {
    const since = new Date(this.#deps.now() - REPAIR_WINDOW_MS).toISOString();
    for (const type of ANSWER_TRIGGER_TYPES) {
      for (const trigger of await this.#deps.store.listTriggers({ type, since, limit: 1000 })) {
        if (trigger.source.format !== 'sms' || trigger.reply === undefined) continue;
        const delivery = await this.#deps.store.getDelivery(trigger.reply.prompt);
        const rule = delivery ? this.#deps.rules().find((r) => r.id === delivery.delivery.ruleId) : undefined;
        await this.#queueWriteBack(trigger, rule?.reply?.writeBack);
      }
    }
  }

  // --- the write-back -------------------------------------------------------------------------

  /**
   * The `write-backs` queue's handler: the output's writeBack(). Denied, failed for good, or out
   * of attempts: a staff task (then the error goes on to the queue, which dead-letters it).
   */
  async writeBack(job: Pick<JobContext<WriteBackJob>, 'id' | 'data' | 'attempt' | 'signal'>, maxAttempts = WRITE_BACK_ATTEMPTS): Promise<WriteBackResult | undefined> {
    const { output, operation } = job.data;
    const adapter = this.#deps.output(output);
    let result: WriteBackResult;
    try {
      if (adapter?.writeBack === undefined) throw new PermanentError(ReplyReason.OutputUnknown, `output "${output}" is not running or does not write back (restart after adding it)`);
      result = await adapter.writeBack(operation, { signal: job.signal, attempt: job.attempt });
    } catch (error) {
      // The queue dead-letters a permanent failure now, any other after the last attempt.
      const last = error instanceof PermanentError || job.attempt >= maxAttempts;
      if (last) await this.writeBackFailed(job.id, job.data, codeOf(error));
      throw error;
    }
    if (result.outcome === WriteBackOutcome.Denied) {
      await this.#task(job.data, StaffTaskKind.WriteBackDenied, result.code, job.id);
      this.#deps.log.warn('reply.write_back', { deliveryId: job.data.promptId, output, reason: ReplyReason.WriteBackDenied, code: result.code });
    } else this.#deps.log.info('reply.write_back', { deliveryId: job.data.promptId, output, reason: ReplyReason.WrittenBack, kind: operation.kind });
    return result;
  }

  /** A write-back that will not happen (failed for good, out of attempts, dead-lettered): a staff task, once. */
  async writeBackFailed(jobId: string, job: WriteBackJob, code: string): Promise<void> {
    await this.#task(job, StaffTaskKind.WriteBackFailed, code, jobId);
    this.#deps.log.warn('reply.write_back', { deliveryId: job.promptId, output: job.output, reason: ReplyReason.WriteBackFailed, code });
  }

  async #task(job: WriteBackJob, kind: StaffTaskKind, code: string, jobId: string): Promise<void> {
    await this.#deps.store.addStaffTask({
      key: jobId,
      kind,
      createdAt: new Date(this.#deps.now()).toISOString(),
      patientId: job.patientId,
      appointmentId: job.operation.appointment.id,
      promptId: job.promptId,
      output: job.output,
      code,
    });
  }
}

/** The reason code of a failure, safe to log and to show staff (its own code, else its class). */
export function codeOf(error: unknown): string {
  const code = (error as { code?: unknown })?.code;
  return typeof code === 'string' && /^[a-z0-9_]{1,64}$/.test(code) ? code : failureClassOf(error);
}

/**
 * The replies of a running CareRelay (workers/runtime.ts wires it): the service, its
 * `write-backs` queue on the store's file, and the send gate that opens a prompt after each
 * send of a rule asking for a reply.
 */
export class ReplyRuntime {
  readonly service: ReplyService;
  readonly #queue: Queue<WriteBackJob>;
  readonly #log: Logger;
  #unsubscribe: (() => void) | undefined;

  constructor(queue: Queue<WriteBackJob>, deps: Omit<ReplyServiceDeps, 'queueWriteBack'>) {
    this.#queue = queue;
    this.#log = deps.log;
    this.service = new ReplyService({ ...deps, queueWriteBack: (job) => queue.add(job) });
  }

  /** `gate` as the deliver worker uses it, with the prompt of each reply-asking message opened after its send. */
  gate<G extends SendGate>(gate: G): SendGate {
    return {
      check: (stored) => gate.check(stored),
      refused: (stored, signal, code) => gate.refused(stored, signal, code),
      sent: async (stored, to, at) => {
        await gate.sent(stored, to, at);
        // Not opened: an answer to this message goes to the staff inbox, nothing is lost.
        await this.service.sent(stored, to, at).catch(() => this.#log.error('reply.prompt_not_recorded', { deliveryId: stored.delivery.id }));
      },
    };
  }

  start(): void {
    this.#queue.process((job) => this.service.writeBack(job), { concurrency: 4 });
    // A job dead-lettered some other way (its worker vanished on every attempt): a staff task too.
    this.#unsubscribe = this.#queue.subscribe((event) => {
      if (event.type !== 'dead') return;
      void this.#queue
        .get(event.id)
        .then((job) => (job ? this.service.writeBackFailed(event.id, job.data, event.code) : undefined))
        .catch(() => this.#log.error('reply.task_not_recorded', { code: event.code }));
    });
    void this.service.repair().catch((error: unknown) => this.#log.error('reply.repair_failed', { code: (error as Error).name }));
  }

  idle(): Promise<void> {
    return this.#queue.idle();
  }

  async stop(): Promise<void> {
    this.#unsubscribe?.();
    await this.#queue.close();
  }
}
