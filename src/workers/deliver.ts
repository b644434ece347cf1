// The delivery worker: the queue's handler for delivery jobs (docs/architecture.md "The flow", at
// due time). For one job:
//
//   load the delivery ─▶ still pending with this job's generation? ─▶ still current?
//     ─▶ not expired? ─▶ the output's gate (circuit, quota, a call slot, its rate: output-gate.ts)
//     ─▶ consent and safety (docs/consent.md rules 2–8, the gate) ─▶ render ─▶ output.send
//     ─▶ finishDelivery (sent + what was sent) ─▶ disclosure
//
// The output's gate comes before the checks so that a delivery that has to wait for its output
// (a Deferral: back to the queue, not an attempt, its worker freed) records no decision; the
// call slot and rate token it took are given back when the checks then say no.
//
// A "no" at a check is a normal outcome, recorded as `suppressed` with its reason code
// (docs/architecture.md invariant 3), never an error. Failures keep the class they were given
// where they happened (errors.ts): a render error is permanent, an adapter's error is its
// own; the queue decides what each class means: a dead-lettered job marks its delivery
// `failed`, a parked one (an ambiguous failure of an output that does not dedupe) `review`
// (recordDeadDeliveries).
//
// The gate (workers/consent.ts) decides rules 2–8 and records each decision: a denial
// suppresses with its reason, quiet hours retry the job at retryAt (the queue's retryAfter),
// a shared address renders the rule's no-name variant.
import { PermanentError, RecipientError, TransientError, type RecipientSignal } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { OutboundAdapter, OutboundMessage } from '../outputs/spec.ts';
import type { Admission } from './output-gate.ts';
import { parseInstant } from '../pipeline/values.ts';
import { languageOf, renderDelivery, type TemplateSet } from '../pipeline/render.ts';
import type { JobHandler, Queue } from '../queue/queue.ts';
import type { OutboxEntry, Store, StoredDelivery, SubjectState } from '../store/store.ts';
import type { ConsentDecision } from '../pipeline/consent.ts';
import { UNSUBSCRIBE_URL } from '../pipeline/render.ts';
import { TriggerType, type ConsentReason, type Delivery } from '../types.ts';
import { deliveryJobOf, parseDeliveryJobId, type DeliveryJob } from './router.ts';

/** Why a delivery was not sent (docs/consent.md reason codes) or not handled (safe to log). */
export const DeliverReason = {
  /** The appointment/encounter is no longer in the state the rule was for (docs/consent.md rule 1). */
  Stale: 'stale',
  /** At or past its expiresAt. */
  Expired: 'expired',
  /** A retried job found its delivery replanned to a later time: it waits for it. */
  NotDueYet: 'not_due_yet',
  /** An sms/email delivery without a recipient address (docs/consent.md rule 8). */
  NoAddress: 'no_address',
  /** The job is for another generation, or the delivery is no longer pending: nothing to do. */
  NotCurrent: 'not_current',
  /** The delivery names an output that is not running (a reload added it: restart needed). */
  OutputUnknown: 'output_unknown',
  /**
   * Not decided yet: the routing that planned the job, or of a newer trigger about its
   * subject, is not saved yet (retried later).
   */
  RoutingPending: 'routing_pending',
  /** Its rule shows a video link, and no join URL is kept for the appointment (docs/video.md). */
  NoJoinInfo: 'no_join_info',
  /**
   * A waitlist offer (docs/waitlist.md) whose offer expired before it could go (held back by quiet
   * hours, an output's gate, retries): a yes to it would claim nothing.
   */
  OfferExpired: 'offer_expired',
  /** A waitlist offer whose slot was taken, closed or given up, or that was answered or told, before it could go. */
  OfferClosed: 'offer_closed',
} as const;
export type DeliverReason = (typeof DeliverReason)[keyof typeof DeliverReason];

/** Appointment statuses after which no appointment message may go (docs/trigger.md "Types"). */
const DEAD_APPOINTMENT = new Set(['cancelled', 'entered-in-error', 'noshow']);
const DEAD_ENCOUNTER = new Set(['cancelled', 'entered-in-error']);

/** The send-time consent and safety checks (workers/consent.ts ConsentService). */
export interface SendGate {
  /** Rules 2–8 for a delivery still current and not expired; the decision is recorded. */
  check(stored: StoredDelivery): Promise<ConsentDecision>;
  /** Records the disclosure of a message the output accepted. */
  sent(stored: StoredDelivery, to: string | undefined, at: number): Promise<void>;
  /** Records what a provider's refusal says about the delivery's address (RecipientError). */
  refused(stored: StoredDelivery, signal: RecipientSignal, providerCode: string | undefined): Promise<void>;
}

/** Admission in front of each output (workers/output-gate.ts OutputGates). */
export interface OutputAdmission {
  /** Lets the job's delivery call `output` now, or throws a Deferral (queue.ts). */
  admit(output: string, key: string, signal?: AbortSignal): Promise<Admission>;
}

export interface DeliverDeps {
  store: Store;
  /** The outputs' gates; absent: outputs are called as deliveries come (tests of the checks alone). */
  admission?: OutputAdmission;
  /** Consent and safety at send time; absent: only rule 1, expiry and the address are checked. */
  gate?: SendGate;
  /** The running adapter of an output instance, by name. */
  output: (name: string) => OutboundAdapter | undefined;
  /** The current plan's templates (swapped by a mappings reload). */
  templates: () => TemplateSet;
  /**
   * IANA zone a delivery's times are shown in: the site's, else the receiving input's
   * (pipeline/zones.ts); undefined shows each time in the offset it came with.
   */
  displayZone: (delivery: Delivery) => Promise<string | undefined>;
  log: Logger;
  /** Epoch ms; injected by tests. Default Date.now. */
  now?: () => number;
  /**
   * Resolves once the routing under way has been saved (Router.settled): a job can start
   * before the routing that added it is saved (queue ops come first, for crash safety).
   */
  routingSettled?: () => Promise<void>;
  /** The signed unsubscribe links of a non-care delivery (the consent side builds them); none by default. */
  unsubscribeLinks?: (delivery: Delivery) => OutboundMessage['unsubscribe'];
  /**
   * CareRelay's video link for a delivery whose rule shows one (workers/video.ts VideoLinks.mint),
   * minted as it is rendered; undefined when its rule shows none. `page`: the zone and language
   * of the link's pages.
   */
  videoLink?: (delivery: Delivery, page: { zone?: string; language?: string }) => Promise<{ link: string; kept: string } | { unavailable: typeof DeliverReason.NoJoinInfo } | undefined>;
  /**
   * Whether a waitlist offer (the subject of an appointment.waitlist_offered delivery) can no
   * longer be taken (workers/waitlist.ts WaitlistService.offerClosed); absent: never asked.
   */
  offerClosed?: (offerId: string) => Promise<typeof DeliverReason.OfferExpired | typeof DeliverReason.OfferClosed | undefined>;
}

/** What handling one job did (for tests and the admin view). */
export type DeliverResult =
  | { outcome: 'sent'; deliveryId: string; providerId?: string }
  | { outcome: 'suppressed'; deliveryId: string; reason: DeliverReason | ConsentReason }
  | { outcome: 'skipped'; deliveryId: string; reason: typeof DeliverReason.NotCurrent };

/** A job may run this much before its delivery's due time (timers and clocks drift). */
const EARLY_SEND_SLACK_MS = 60_000;

/**
 * docs/consent.md rule 1: undefined when the delivery is still about what its rule was for, else
 * `stale`. Without a stored state there is nothing to contradict the plan.
 */
export function staleness(stored: StoredDelivery, subject: SubjectState | undefined): typeof DeliverReason.Stale | undefined {
  const d = stored.delivery;
  if (!subject) return undefined;
  if (d.subjectKind === 'appointment') {
    if (subject.status !== undefined && DEAD_APPOINTMENT.has(subject.status)) return DeliverReason.Stale;
    // Moved since the plan was made (and the rule did not replan on it): compared as instants.
    if (stored.subjectStart !== undefined && subject.start !== undefined && parseInstant(stored.subjectStart) !== parseInstant(subject.start)) {
      return DeliverReason.Stale;
    }
    return undefined;
  }
  if (d.subjectKind === 'encounter') {
    if (subject.status !== undefined && DEAD_ENCOUNTER.has(subject.status)) return DeliverReason.Stale;
    // A post-discharge message after the discharge was cancelled (A13: finished → in-progress).
    if (d.triggerType === 'encounter.finished' && subject.status !== undefined && subject.status !== 'finished') return DeliverReason.Stale;
  }
  return undefined;
}

/**
 * Whether the delivery needs a recipient address to be sent (docs/consent.md rule 8): what the
 * output declares, else SMS and email do and webhook, CRM and FHIR outputs do not.
 */
export function needsAddress(output: { needsAddress?: boolean } | undefined, d: Pick<Delivery, 'channel'>): boolean {
  return output?.needsAddress ?? (d.channel === 'sms' || d.channel === 'email');
}

/** The queue handler for delivery jobs. */
export function createDeliverHandler(deps: DeliverDeps): JobHandler<DeliveryJob> & { run: (job: Parameters<JobHandler<DeliveryJob>>[0]) => Promise<DeliverResult> } {
  const now = deps.now ?? Date.now;
  const { store, log } = deps;

  const suppress = async (stored: StoredDelivery, reason: DeliverReason | ConsentReason): Promise<DeliverResult> => {
    const id = stored.delivery.id;
    const written = await store.finishDelivery(id, stored.generation, { status: 'suppressed', reason, at: new Date(now()).toISOString() });
    if (!written) return { outcome: 'skipped', deliveryId: id, reason: DeliverReason.NotCurrent };
    log.info('deliver.suppressed', { deliveryId: id, rule: stored.delivery.ruleId, reason });
    return { outcome: 'suppressed', deliveryId: id, reason };
  };

  const run = async (job: Parameters<JobHandler<DeliveryJob>>[0]): Promise<DeliverResult> => {
    const { deliveryId, generation } = deliveryJobOf(job);
    let stored = await store.getDelivery(deliveryId);
    if (!stored || stored.generation < generation) {
      // The job is newer than what is stored: its routing is not saved yet.
      await deps.routingSettled?.();
      stored = await store.getDelivery(deliveryId);
      // Still not saved (the routing failed and will be retried, or another process is
      // routing): try again later rather than drop the timer.
      if (!stored || stored.generation < generation) throw new TransientError(DeliverReason.RoutingPending, `delivery ${deliveryId} generation ${generation} is not saved yet`);
    }
    const current = (s: StoredDelivery | undefined): s is StoredDelivery =>
      // `failed` or `review` with this generation: a dead-lettered or parked job replayed by a person (retryDead).
      s !== undefined && (s.status === 'pending' || s.status === 'failed' || s.status === 'review') && s.generation === generation;
    if (!current(stored)) {
      // Cancelled, moved to another job, or already done by an earlier run of this job.
      log.debug('deliver.skipped', { deliveryId, reason: DeliverReason.NotCurrent, attempt: job.attempt });
      return { outcome: 'skipped', deliveryId, reason: DeliverReason.NotCurrent };
    }

    let d = stored.delivery;
    const kind = d.subjectKind === 'appointment' || d.subjectKind === 'encounter' ? d.subjectKind : undefined;
    let stale = staleness(stored, kind ? await store.getSubjectState(kind, d.subjectId) : undefined);
    if (stale && kind) {
      // The subject changed since this plan was made. The event that changed it may be
      // committed but not routed yet, and its routing may move this delivery (a reschedule
      // that keeps the rule's condition true replans the message: it must not be lost as
      // stale). Decide on what that routing saves.
      await deps.routingSettled?.();
      if (await store.hasUnroutedTriggers({ kind, id: d.subjectId })) {
        throw new TransientError(DeliverReason.RoutingPending, `a change of ${d.subjectKey} is not routed yet (delivery ${d.id})`);
      }
      stored = await store.getDelivery(deliveryId);
      if (!current(stored)) return { outcome: 'skipped', deliveryId, reason: DeliverReason.NotCurrent };
      d = stored.delivery;
      stale = staleness(stored, await store.getSubjectState(kind, d.subjectId));
    }
    if (stale) return suppress(stored, stale);
    // A waitlist offer goes only while it can be taken: never after its expiry or once its slot is
    // gone, however long quiet hours or retries held it back (checked before the gate: no decision is recorded).
    const offerGone = d.triggerType === TriggerType.AppointmentWaitlistOffered ? await deps.offerClosed?.(d.subjectId) : undefined;
    if (offerGone !== undefined) return suppress(stored, offerGone);

    const expires = d.expiresAt === undefined ? undefined : parseInstant(d.expiresAt);
    if (expires !== undefined && now() >= expires) return suppress(stored, DeliverReason.Expired);
    // A retry of a job whose delivery was replanned later while it ran: the plan now says
    // later, so wait for it instead of sending early.
    const due = parseInstant(d.dueAt);
    if (due !== undefined && due - now() > EARLY_SEND_SLACK_MS) {
      throw new TransientError(DeliverReason.NotDueYet, `delivery ${d.id} is due later`, { retryAfterMs: due - now() });
    }
    const adapter = deps.output(d.output);
    if (!adapter) throw new PermanentError(DeliverReason.OutputUnknown, `output "${d.output}" is not running (delivery ${d.id}); restart to start new outputs`);

    // The output's gate: a Deferral (wait for the output) goes back to the queue as it is.
    const admission = await deps.admission?.admit(d.output, job.id, job.signal);
    let called = false;
    let receipt;
    let message: OutboundMessage;
    let video: { link: string; kept: string } | undefined;
    try {
      // docs/consent.md rules 2–8, first denial wins (the gate records the decision).
      const verdict = deps.gate ? await deps.gate.check(stored) : undefined;
      if (verdict && !verdict.allow) {
        if (verdict.retryAt === undefined) return await suppress(stored, verdict.reason);
        throw new TransientError(verdict.reason, `delivery ${d.id} waits for quiet hours to end`, { retryAfterMs: Math.max(0, Date.parse(verdict.retryAt) - now()) });
      }
      if (!verdict && needsAddress(adapter, d) && (d.to === undefined || d.to === '')) return await suppress(stored, DeliverReason.NoAddress);
      // A shared address gets the rule's variant that names no one; a non-care email its signed
      // unsubscribe link, in the text ({{ unsubscribe_url }}) and for the adapter's headers.
      const template = verdict?.allow && verdict.noName ? { ...d, template: d.noNameTemplate! } : d;
      const unsubscribe = d.purpose.startsWith('care.') ? undefined : deps.unsubscribeLinks?.(d);
      const zone = await deps.displayZone(d);
      // A rule showing CareRelay's video link: minted now, for the visit as it stands (docs/video.md).
      const language = languageOf(d.payload);
      const link = await deps.videoLink?.(d, { ...(zone !== undefined ? { zone } : {}), ...(language !== undefined ? { language } : {}) });
      if (link !== undefined && 'unavailable' in link) return await suppress(stored, link.unavailable);
      video = link;
      const variables = unsubscribe || video ? { ...(unsubscribe ? { [UNSUBSCRIBE_URL]: unsubscribe.url } : {}), ...(video ? { video: { link: video.link } } : {}) } : undefined;
      // Throws PermanentError render_failed: the mapping must be fixed, retrying cannot help.
      const rendered = renderDelivery(deps.templates(), template, { zone, ...(variables ? { variables } : {}) });
      message = {
        deliveryId: d.id,
        ruleId: d.ruleId,
        purpose: d.purpose,
        channel: d.channel,
        ...(d.to !== undefined ? { to: d.to } : {}),
        language: rendered.language,
        ...(rendered.subject !== undefined ? { subject: rendered.subject } : {}),
        text: rendered.text,
        ...(rendered.html !== undefined ? { html: rendered.html } : {}),
        fields: d.payload,
        patientId: d.patientId,
        ...(d.subjectKind === 'appointment' || d.subjectKind === 'encounter' ? { about: { kind: d.subjectKind, id: d.subjectId } } : {}),
        ...(d.expiresAt !== undefined ? { expiresAt: d.expiresAt } : {}),
        ...(unsubscribe !== undefined ? { unsubscribe } : {}),
      };
      called = true;
      receipt = await adapter.send(message, { deliveryId: d.id, attempt: job.attempt, signal: job.signal });
      admission?.end({ called: true });
    } catch (error) {
      admission?.end(called ? { called: true, error } : { called: false });
      // The provider says the address opted out or bounced: the ledger learns it for the next messages.
      if (error instanceof RecipientError) await deps.gate?.refused(stored, error.signal, error.providerCode).catch(() => log.error('deliver.refusal_not_recorded', { deliveryId: d.id }));
      throw error;
    } finally {
      // A suppression (a return above) made no call: its slot and token go back.
      if (!called) admission?.end({ called: false });
    }
    // The kept copy does not hold a working video link: the store keeps only its token's hash.
    const kept = (text: string): string => (video === undefined ? text : text.split(video.link).join(video.kept));
    const finished = await store.finishDelivery(d.id, generation, {
      status: 'sent',
      message: {
        language: message.language,
        ...(message.to !== undefined ? { to: message.to } : {}),
        ...(message.subject !== undefined ? { subject: kept(message.subject) } : {}),
        text: kept(message.text),
        ...(message.html !== undefined ? { html: kept(message.html) } : {}),
        ...(message.unsubscribe !== undefined ? { unsubscribe: message.unsubscribe.url } : {}),
      },
      ...(receipt.providerId !== undefined ? { providerId: receipt.providerId } : {}),
      at: new Date(now()).toISOString(),
    });
    // The accounting of disclosures (and the caps' count). Never a reason to send again.
    await deps.gate?.sent(stored, message.to, now()).catch(() => log.error('deliver.disclosure_not_recorded', { deliveryId: d.id }));
    // Sent, but the delivery changed meanwhile (a replan while sending): the send stands.
    if (!finished) log.warn('deliver.finish_lost', { deliveryId: d.id, output: d.output, reason: DeliverReason.NotCurrent });
    else log.debug('deliver.sent', { deliveryId: d.id, rule: d.ruleId, output: d.output, attempt: job.attempt });
    return { outcome: 'sent', deliveryId: d.id, ...(receipt.providerId !== undefined ? { providerId: receipt.providerId } : {}) };
  };

  const handler = (async (job) => {
    await run(job);
  }) as JobHandler<DeliveryJob> & { run: typeof run };
  handler.run = run;
  return handler;
}

/**
 * Marks a delivery `failed` (with the queue's failure code) when its job is dead-lettered, and
 * `review` when it is parked (an ambiguous failure of an output that does not dedupe: a person
 * decides, and a replay runs the same job again), so the deliveries API shows why nothing was
 * sent. For queues that cannot write in the store's own transaction (runtime.ts
 * createDeliveryQueue does it there). Returns the unsubscribe function.
 */
export function recordDeadDeliveries(queue: Queue<DeliveryJob>, store: Store, log: Logger, now: () => number = Date.now): () => void {
  return queue.subscribe((event) => {
    if (event.type !== 'dead' && event.type !== 'parked') return;
    const job = parseDeliveryJobId(event.id);
    if (!job) return;
    const status = event.type === 'dead' ? 'failed' : 'review';
    store
      .finishDelivery(job.deliveryId, job.generation, { status, reason: event.code, at: new Date(now()).toISOString() })
      .then((written) => {
        if (written && status === 'failed') log.warn('deliver.failed', { deliveryId: job.deliveryId, reason: event.code, attempt: event.attempt });
      })
      .catch(() => log.error('deliver.record_failed', { deliveryId: job.deliveryId, reason: event.code }));
  });
}

/**
 * Logs dead-lettered delivery jobs whose delivery the queue already marked `failed` in the
 * same write (the embedded queue on the store's database: runtime.ts createDeliveryQueue).
 * Returns the unsubscribe function.
 */
export function logDeadDeliveries(queue: Queue<DeliveryJob>, log: Logger): () => void {
  return queue.subscribe((event) => {
    if (event.type !== 'dead') return;
    const job = parseDeliveryJobId(event.id);
    if (job) log.warn('deliver.failed', { deliveryId: job.deliveryId, reason: event.code, attempt: event.attempt });
  });
}

/** An outbox sink that keeps messages in the store (durable when put resolves). */
export function storeOutboxSink(store: Store): { put(entry: { output: string; message: OutboundMessage; keptAt: string }): Promise<void> } {
  return {
    async put({ output, message, keptAt }) {
      const entry: Omit<OutboxEntry, 'id'> = {
        deliveryId: message.deliveryId,
        output,
        channel: message.channel,
        language: message.language,
        text: message.text,
        keptAt,
        ...(message.to !== undefined ? { to: message.to } : {}),
        ...(message.subject !== undefined ? { subject: message.subject } : {}),
        ...(message.html !== undefined ? { html: message.html } : {}),
      };
      await store.putOutboxEntry(entry);
    },
  };
}
