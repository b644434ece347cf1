// The waitlist (docs/waitlist.md): a freed slot offered by SMS, in waves, to patients who would
// rather come sooner; the first yes books it, and only then is their later appointment cancelled.
//
//   committed trigger ─▶ booked / rescheduled / modified: kept as a later appointment (the candidates' source)
//                     ─▶ status waitlist: kept as an entry of the EHR's waitlist (another source); any
//                        other status of it ends the entry
//                     ─▶ one of waitlist.on (cancelled, deleted, noshow; slot.freed: time freed on a
//                        schedule, no patient): a freed slot, unless it starts within minNoticeMinutes
//                        ─▶ queue `waitlist`: wave 1 now
//   wave n ─▶ candidates: the configured list, the EHR's waitlist entries whose requested period holds
//             the slot, later appointments — same service and practitioner (or equivalents),
//             opted in, not offered this slot yet, under the per-patient cap, SMS consent for
//             care.logistics, not in quiet hours now ─▶ up to `size` offers, committed as one message
//             (format waitlist) whose triggers are appointment.waitlist_offered ─▶ routed: a rule sends
//             the SMS through the usual send-time checks and opens a reply prompt (workers/replies.ts)
//          ─▶ wave n+1 after everyMinutes; at stopMinutesBefore the slot closes
//   "yes" ─▶ workers/replies.ts: claimFor() ─▶ the SMS's commit claims the slot (one claim per slot,
//            store: SlotTakenError for any later one) ─▶ appointment.waitlist_accepted ─▶ book job
//          ─▶ taken job: the others holding an open offer (sent, not expired, not answered) are told
//             at once: appointment.waitlist_taken, their offer closed in the same commit (tellOthers)
//          ─▶ a yes too late (taken, expired, closed): appointment.waitlist_taken (a rule says so:
//             "the slot is taken, your appointment stands") — unless the notice told them already
//   an offer SMS held back (quiet hours) ─▶ never after the offer expired or the slot went:
//             suppressed offer_expired / offer_closed at send time (offerClosed)
//   book ─▶ the `book` output (FHIR create, If-None-Exist) ─▶ applied: slot booked ─▶ cancel job: the
//           later appointment cancelled with pat-swl ─▶ failed: staff task waitlist_cancel_failed
//        ─▶ denied / failed for good: staff task waitlist_booking_failed, the claim given back, the
//           slot offered on (next wave now)
//
// Nothing is cancelled before the booking succeeded. Logs carry slot, offer and job ids and reason
// codes only (slot and offer ids name appointments, never a patient).
import { createHash } from 'node:crypto';
import type { WaitlistConfig, WaitlistListEntry } from '../config/waitlist-schema.ts';
import { failureClassOf, PermanentError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { OutboundAdapter } from '../outputs/spec.ts';
import { SCHEDULED_FROM_WAITLIST, WriteBackKind, WriteBackOutcome, type WriteBackOperation, type WriteBackSlot } from '../outputs/write-back.ts';
import type { PolicySettings } from '../pipeline/policy.ts';
import { isAllowedTime, quietHoursApply } from '../pipeline/quiet-hours.ts';
import { parseInstant } from '../pipeline/values.ts';
import { patientZone } from '../pipeline/zones.ts';
import type { JobContext, NewJob, Queue } from '../queue/queue.ts';
import { OfferSource, OfferToldError, StaffTaskKind, type InboundRecord, type WaitlistEntry, WaitlistOfferState, WaitlistSlotState, type ReplyPrompt, type Store, type WaitlistOffer, type WaitlistSlot } from '../store/store.ts';
import { hasPatient, MessageStatus, Purpose, TriggerType, type PatientTrigger, type Trigger, type TriggerAppointment, type TriggerSlot } from '../types.ts';
import { DeliverReason } from './deliver.ts';
import { codeOf } from './replies.ts';

/** Name of the embedded queue holding waves, bookings and cancellations. */
export const WAITLIST_QUEUE = 'waitlist';
/** Attempts of a booking or a cancellation (the queue's backoff: about 20 minutes, as write-backs). */
export const WAITLIST_ATTEMPTS = 8;
/** Candidates read per wave before the filters. */
const CANDIDATES_READ = 200;
const MINUTE = 60_000;
/** Epoch ms of an ISO instant (NaN when it is not one: compares false everywhere). */
const instant = (iso: string): number => parseInstant(iso) ?? Number.NaN;
const DAY = 86_400_000;

/** What a waitlist job carries. */
export type WaitlistJob =
  | { kind: 'wave'; slotId: string }
  | { kind: 'book'; slotId: string; offerId: string }
  | { kind: 'cancel'; slotId: string; offerId: string }
  /** The notice to the others holding an open offer of a slot this offer's yes claimed (tellOthers). */
  | { kind: 'taken'; slotId: string; offerId: string };

/** Reason codes this worker logs (safe to log). */
export const WaitlistReason = {
  SlotFreed: 'slot_freed',
  ShortNotice: 'short_notice',
  Offered: 'offered',
  NoCandidate: 'no_candidate',
  Stopped: 'stop_reached',
  Booked: 'booked',
  BookingFailed: 'booking_failed',
  Cancelled: 'later_appointment_cancelled',
  CancelFailed: 'cancel_failed',
  /** The patients holding an open offer of a slot another yes claimed were told it is taken. */
  OthersTold: 'others_told',
} as const;

/** Why a candidate was not offered a slot in a wave (counted in the wave's log line). */
export const CandidateFilter = {
  NotOptedIn: 'not_opted_in',
  Capped: 'offer_cap',
  Consent: 'consent',
  QuietHours: 'quiet_hours',
  NoMobile: 'no_mobile',
} as const;
export type CandidateFilter = (typeof CandidateFilter)[keyof typeof CandidateFilter];

/** What a yes to an offer may do: claim the slot, or be told it is taken (with why). */
export type ClaimVerdict =
  | { claim: { slotId: string; offerId: string } }
  /** Told now (appointment.waitlist_taken); `offerId`: the offer closes in the answer's commit (InboundRecord.waitlistTold). */
  | { taken: 'offer_unknown' | 'offer_expired' | 'slot_taken'; offerId?: string }
  /** Told already (when another yes claimed the slot): the answer is stored, nobody is told twice. */
  | { told: true };

export interface WaitlistServiceDeps {
  store: Store;
  config: WaitlistConfig;
  policy: Pick<PolicySettings, 'quietHours' | 'sites' | 'timezone'>;
  queue: (job: NewJob<WaitlistJob>) => Promise<unknown>;
  /** The running adapter of an output (the `book` output). */
  output: (name: string) => Pick<OutboundAdapter, 'writeBack'> | undefined;
  /** Routes the triggers the waitlist committed: offers, and the notices that a slot is taken (Router.onCommitted). */
  onTriggers: (triggers: Trigger[]) => void;
  /**
   * Searches the EHR's waitlist (sources.searchFhir: the input's FhirIngest.searchWaitlist), whose
   * new entries reach onCommitted like any trigger; absent where that input does not run (a worker process).
   */
  searchEhr?: () => Promise<void>;
  /** Whether the patient's consent allows SMS for care.logistics now (ConsentService.effectiveConsent); absent: left to the send-time check. */
  smsAllowed?: (patientId: string) => Promise<boolean>;
  log: Logger;
  now: () => number;
}

const KEEP = new Set<string>([TriggerType.AppointmentBooked, TriggerType.AppointmentRescheduled, TriggerType.AppointmentModified]);
const DROP = new Set<string>([
  TriggerType.AppointmentCancelled,
  TriggerType.AppointmentDeleted,
  TriggerType.AppointmentNoshow,
  TriggerType.AppointmentFulfilled,
  TriggerType.AppointmentCheckedIn,
]);
/** FHIR Appointment.status (and SIU filler status Waitlist) of a waitlist entry. */
const WAITLIST_STATUS = 'waitlist';
/** Statuses of an appointment that still holds its time (a later appointment a patient could give up). */
const HOLDING = new Set(['booked', 'pending', 'proposed']);

export class WaitlistService {
  readonly #deps: WaitlistServiceDeps;
  /** Triggers are noted in commit order (one chain). */
  #chain: Promise<unknown> = Promise.resolve();

  constructor(deps: WaitlistServiceDeps) {
    this.#deps = deps;
  }

  // --- the feed -------------------------------------------------------------------------------

  /** After a commit (the ingest hook): keeps later appointments, opens freed slots. */
  onCommitted(triggers: readonly Trigger[]): Promise<void> {
    const run = this.#chain.then(() => this.#note(triggers));
    this.#chain = run.catch((error: unknown) => this.#deps.log.error('waitlist.note_failed', { code: failureClassOf(error) }));
    return run;
  }

  /** Resolves when the triggers handed over so far are noted. */
  settled(): Promise<unknown> {
    return this.#chain;
  }

  async #note(triggers: readonly Trigger[]): Promise<void> {
    const { store, config } = this.#deps;
    const frees = (t: Trigger) => (config.on as readonly string[]).includes(t.type);
    for (const t of triggers) {
      // Time freed on a schedule with no appointment to cancel (SIU^S24, a FHIR Slot going free): about no patient.
      if (!hasPatient(t)) {
        if (t.slot !== undefined && frees(t)) await this.#free(t, t.slot);
        continue;
      }
      const a = t.appointment;
      if (t.source.format === 'waitlist' || t.source.format === 'sms' || a?.id === undefined) continue;
      // What an EHR waitlist entry and a later appointment both say of the appointment.
      const held = {
        id: a.id,
        ...(a.placerId !== undefined ? { placerId: a.placerId } : {}),
        patientId: t.patient.id,
        service: a.serviceType?.code ?? '',
        practitioner: a.practitioner?.id ?? '',
      };
      // The EHR's waitlist: an appointment in status waitlist is an entry; any other status of it (booked, cancelled…) ends it.
      if (a.status === WAITLIST_STATUS && config.sources.ehrWaitlist !== false) {
        await store.noteWaitlistEntry({ ...held, periods: a.requestedPeriod ?? [], notedAt: t.occurredAt, triggerId: t.id });
        continue;
      }
      if (KEEP.has(t.type) && a.start !== undefined && HOLDING.has(a.status ?? 'booked')) {
        await store.noteWaitlistAppointment({ ...held, start: a.start, triggerId: t.id });
      } else if (DROP.has(t.type)) await store.noteWaitlistAppointment({ id: a.id, removed: true });
      // (Kept or removed above, a waitlist entry of the same id ended in the same write.)
      else if (KEEP.has(t.type) && config.sources.ehrWaitlist !== false) await store.noteWaitlistEntry({ id: a.id, removed: true });
      if (frees(t)) await this.#free(t, a, t.patient.id);
    }
  }

  /** Opens the slot `a` (the appointment that freed it, or the freed schedule slot) unless it starts too soon. */
  async #free(t: Trigger, a: TriggerAppointment | TriggerSlot, patientId?: string): Promise<void> {
    const { store, config, log } = this.#deps;
    const now = this.#deps.now();
    const startMs = a.start === undefined ? Number.NaN : instant(a.start);
    if (Number.isNaN(startMs)) return;
    if (startMs - now < config.minNoticeMinutes * MINUTE) {
      if (startMs > now) log.info('waitlist.slot', { slotId: slotIdOf(a.id, a.start!), reason: WaitlistReason.ShortNotice });
      return;
    }
    const slot: WaitlistSlot = {
      id: slotIdOf(a.id, a.start!),
      state: WaitlistSlotState.Open,
      triggerId: t.id,
      ...(patientId !== undefined ? { patientId } : {}),
      ...(t.type === TriggerType.SlotFreed && t.source.format === 'fhir' ? { fhirSlot: a.id } : {}),
      start: a.start!,
      ...(a.end !== undefined ? { end: a.end } : {}),
      ...(a.durationMinutes !== undefined ? { durationMinutes: a.durationMinutes } : {}),
      ...(a.serviceType !== undefined ? { serviceType: a.serviceType } : {}),
      ...(a.practitioner !== undefined ? { practitioner: a.practitioner } : {}),
      ...(a.location !== undefined ? { location: { id: a.location.id, ...(a.location.name !== undefined ? { name: a.location.name } : {}) } } : {}),
      openedAt: new Date(now).toISOString(),
      waves: 0,
      nextWave: { at: new Date(now).toISOString() },
    };
    if (!(await store.openWaitlistSlot(slot))) return;
    log.info('waitlist.slot', { slotId: slot.id, reason: WaitlistReason.SlotFreed });
    await this.#queueWave(slot.id, now);
  }

  /**
   * At start: what a crash may have left between a commit and its job is done again — an open
   * slot's next wave (its first, the one planned after the last, or the one a failed booking
   * brought forward: the slot notes it before it is queued), a claimed slot's booking, a booked
   * slot's cancellation of the later appointment, and the notice to the other patients holding an
   * open offer of a claimed or booked slot. The job ids are the ones first used, so a job that
   * exists is a duplicate; the notice closes each offer it tells (nobody is told twice).
   */
  async repair(): Promise<void> {
    const { store } = this.#deps;
    for (const slot of await store.listWaitlistSlots({ states: [WaitlistSlotState.Open, WaitlistSlotState.Claimed, WaitlistSlotState.Booked] })) {
      if (slot.state === WaitlistSlotState.Open) {
        const next = slot.nextWave ?? { at: slot.openedAt };
        await this.#queueWave(slot.id, instant(next.at), next.after);
      }
      if (slot.claimedBy === undefined) continue;
      if (slot.state === WaitlistSlotState.Claimed) await this.accepted({ slotId: slot.id, offerId: slot.claimedBy });
      if (slot.state === WaitlistSlotState.Booked) {
        const offer = await store.getWaitlistOffer(slot.claimedBy);
        if (offer?.current !== undefined && !offer.currentCancelled) await this.#queueCancel(slot.id, offer.id);
        await this.#queueTaken(slot.id, slot.claimedBy);
      }
    }
  }

  /** Notes the slot's next wave (with `patch`), then queues it: a crash between the two leaves what the repair needs. */
  async #planWave(slotId: string, at: number, patch: Partial<WaitlistSlot> = {}): Promise<void> {
    await this.#deps.store.setWaitlistSlot(slotId, WaitlistSlotState.Open, { ...patch, nextWave: { at: new Date(at).toISOString() } });
    await this.#queueWave(slotId, at);
  }

  #queueWave(slotId: string, at: number, after?: string): Promise<unknown> {
    // One job per slot and run time; a wave brought forward after a failed booking is named by
    // that offer, so it is never taken for a job already there.
    return this.#deps.queue({ id: `wl-wave~${slotId}~${at}${after !== undefined ? `~${after}` : ''}`, data: { kind: 'wave', slotId }, runAt: new Date(at) });
  }

  // --- waves ------------------------------------------------------------------------------------

  /** A wave of offers for an open slot, then the next one (or the close at the stop). */
  async wave(slotId: string): Promise<WaitlistOffer[]> {
    const { store, config, log } = this.#deps;
    const slot = await store.getWaitlistSlot(slotId);
    if (slot === undefined || slot.state !== WaitlistSlotState.Open) return [];
    const now = this.#deps.now();
    const stopAt = instant(slot.start) - config.waves.stopMinutesBefore * MINUTE;
    if (now >= stopAt) {
      await store.setWaitlistSlot(slot.id, WaitlistSlotState.Closed, { closedReason: WaitlistReason.Stopped });
      log.info('waitlist.slot', { slotId: slot.id, reason: WaitlistReason.Stopped });
      return [];
    }
    const wave = slot.waves + 1;
    // This wave committed already (a crash before the slot noted it): note it, and on to the next.
    const next = Math.min(now + config.waves.everyMinutes * MINUTE, stopAt);
    if (await store.findMessage('waitlist', waveMessageId(slot.id, wave))) {
      await this.#planWave(slot.id, next, { waves: wave });
      return [];
    }
    // The EHR's waitlist searched first (sources.searchFhir), its entries noted before they are read.
    if (config.sources.searchFhir !== undefined && config.sources.ehrWaitlist !== false && this.#deps.searchEhr !== undefined) {
      try {
        await this.#deps.searchEhr();
        await this.settled();
      } catch (error) {
        log.warn('waitlist.search_failed', { slotId: slot.id, code: failureClassOf(error) });
      }
    }
    const { chosen, filtered } = await this.#candidates(slot, now);
    const expiresAt = new Date(Math.min(now + config.waves.expiresMinutes * MINUTE, stopAt)).toISOString();
    const offers: WaitlistOffer[] = chosen.map((c) => ({
      id: offerIdOf(slot.id, c.patientId),
      slotId: slot.id,
      patientId: c.patientId,
      wave,
      state: WaitlistOfferState.Offered,
      offeredAt: new Date(now).toISOString(),
      expiresAt,
      ...(c.current !== undefined ? { current: c.current } : {}),
      ...(c.current?.start !== undefined ? { daysGained: Math.round(((instant(c.current.start) - instant(slot.start)) / DAY) * 10) / 10 } : {}),
      ...(c.triggerId !== undefined ? { triggerId: c.triggerId } : {}),
      source: c.source,
    }));
    if (offers.length > 0) {
      await store.addWaitlistOffers(offers);
      const triggers = offers.map((o, i) => offerTrigger(slot, o, chosen[i]!.base, now));
      const committed = await store.commitInbound(
        waitlistMessage({ controlId: waveMessageId(slot.id, wave), messageType: 'WAITLIST^OFFER', ack: 'waitlist wave', body: { slot: slot.id, wave, offers: offers.map((o) => o.id) } }, slot, triggers, now),
      );
      await this.#planWave(slot.id, next, { waves: wave });
      if (committed.outcome === 'stored') this.#deps.onTriggers(triggers);
    } else await this.#planWave(slot.id, next);
    log.info('waitlist.wave', { slotId: slot.id, wave, reason: offers.length > 0 ? WaitlistReason.Offered : WaitlistReason.NoCandidate, offers: offers.length, ...filtered });
    return offers;
  }

  /**
   * The patients offered the slot in this wave, and how many each filter left out: first the
   * configured list's entries that want this service (and practitioner, and time), then the EHR's
   * waitlist entries that want it (the longest waiting first), then patients with a later
   * appointment, latest first.
   */
  async #candidates(slot: WaitlistSlot, now: number): Promise<{ chosen: Candidate[]; filtered: Partial<Record<CandidateFilter, number>> }> {
    const { store, config, policy } = this.#deps;
    const services = equivalents(slot.serviceType?.code ?? '', config.equivalents.services);
    const practitioners = equivalents(slot.practitioner?.id ?? '', config.equivalents.practitioners);
    const slotMs = instant(slot.start);
    const listed: Candidate[] = (config.sources.list ?? [])
      .filter((e) => e.services.some((c) => services.includes(c)))
      .filter((e) => e.practitioners === undefined || e.practitioners.some((p) => practitioners.includes(p)))
      .filter((e) => (e.from === undefined || instant(e.from) <= slotMs) && (e.until === undefined || slotMs < instant(e.until)))
      .map((e) => ({ patientId: e.patient, base: listedPatient(e), source: OfferSource.List }));
    const slotEnd = slot.end !== undefined ? instant(slot.end) : slotMs + (slot.durationMinutes ?? 0) * MINUTE;
    const entries =
      config.sources.ehrWaitlist === false
        ? []
        : (await store.waitlistEntries({ services, practitioners, now: new Date(now).toISOString(), limit: CANDIDATES_READ })).filter((e) => entryWants(e, slotMs, slotEnd));
    const later = await store.laterWaitlistAppointments({ services, practitioners, after: slot.start, limit: CANDIDATES_READ });
    const offered = new Set((await store.listWaitlistOffers(slot.id)).map((o) => o.patientId));
    const { optIn, patients } = config.sources.laterAppointments;
    const optedIn = optIn === 'all' ? undefined : new Set(patients);
    const capSince = new Date(now - config.maxOffersPerPatient.days * DAY).toISOString();
    const chosen: Candidate[] = [];
    const filtered: Partial<Record<CandidateFilter, number>> = {};
    const skip = (why: CandidateFilter) => {
      filtered[why] = (filtered[why] ?? 0) + 1;
    };
    // In order: the configured list, the EHR's waitlist (the longest waiting first), the later appointments.
    type Found = Candidate | { patientId: string; held: { id: string; start?: string; placerId?: string; triggerId: string }; source: OfferSource };
    const sources = async function* (): AsyncGenerator<Found> {
      yield* listed;
      for (const entry of entries) yield { patientId: entry.patientId, held: { id: entry.id, ...(entry.placerId !== undefined ? { placerId: entry.placerId } : {}), triggerId: entry.triggerId }, source: OfferSource.EhrWaitlist };
      for (const appointment of later) yield { patientId: appointment.patientId, held: appointment, source: OfferSource.LaterAppointments };
    };
    for await (const found of sources()) {
      if (chosen.length >= config.waves.size) break;
      const patientId = found.patientId;
      if (patientId === slot.patientId || offered.has(patientId) || chosen.some((c) => c.patientId === patientId)) continue;
      // The opt-in is the later-appointments source's: list and waitlist entries asked for a slot.
      if ('held' in found && found.source === OfferSource.LaterAppointments && optedIn !== undefined && !optedIn.has(patientId)) {
        skip(CandidateFilter.NotOptedIn);
        continue;
      }
      if ((await store.countWaitlistOffers(patientId, capSince)) >= config.maxOffersPerPatient.count) {
        skip(CandidateFilter.Capped);
        continue;
      }
      const candidate: Candidate | undefined =
        'base' in found
          ? found
          : await store.getTrigger(found.held.triggerId).then((base) =>
              base === undefined || !hasPatient(base)
                ? undefined
                : {
                    patientId,
                    base,
                    triggerId: found.held.triggerId,
                    source: found.source,
                    current: { id: found.held.id, ...(found.held.start !== undefined ? { start: found.held.start } : {}), ...(found.held.placerId !== undefined ? { placerId: found.held.placerId } : {}) },
                  },
            );
      if (candidate === undefined || !candidate.base.patient.telecom.some((c) => c.system === 'phone' && c.use === 'mobile')) {
        skip(CandidateFilter.NoMobile);
        continue;
      }
      if (this.#deps.smsAllowed !== undefined && !(await this.#deps.smsAllowed(patientId))) {
        skip(CandidateFilter.Consent);
        continue;
      }
      // An offer must be answerable now: a patient in their quiet hours is left for a later wave.
      if (quietHoursApply(policy.quietHours, 'sms') && !isAllowedTime(policy.quietHours, now, patientZone(candidate.base, policy))) {
        skip(CandidateFilter.QuietHours);
        continue;
      }
      chosen.push(candidate);
    }
    return { chosen, filtered };
  }

  // --- answers (from workers/replies.ts) ----------------------------------------------------------

  /** Whether a yes to this prompt's offer may claim its slot now. The claim itself is the answer's commit. */
  async claimFor(prompt: ReplyPrompt): Promise<ClaimVerdict> {
    const { store } = this.#deps;
    const offer = await store.getWaitlistOffer(prompt.appointmentId);
    if (offer === undefined) return { taken: 'offer_unknown' };
    if (offer.state === WaitlistOfferState.Taken) return { told: true };
    // An open offer closes as its patient is told; one answered before (a no, say) stays as it is.
    const told = offer.state === WaitlistOfferState.Offered ? { offerId: offer.id } : {};
    if (this.#deps.now() >= instant(offer.expiresAt)) return { taken: 'offer_expired', ...told };
    const slot = await store.getWaitlistSlot(offer.slotId);
    if (slot?.state !== WaitlistSlotState.Open) return { taken: 'slot_taken', ...told };
    return { claim: { slotId: slot.id, offerId: offer.id } };
  }

  /**
   * Asked by the deliver worker before an offer's SMS goes (deliver.ts offerClosed): an offer held
   * back (quiet hours moved it, retries) never goes after it expired (`offer_expired`) or once it
   * can no longer be taken — its slot claimed, booked or closed, or the offer answered or told
   * (`offer_closed`). Undefined: it may go (an offer CareRelay does not know is left to the other checks).
   */
  async offerClosed(offerId: string): Promise<typeof DeliverReason.OfferExpired | typeof DeliverReason.OfferClosed | undefined> {
    const { store } = this.#deps;
    const offer = await store.getWaitlistOffer(offerId);
    if (offer === undefined) return undefined;
    if (this.#deps.now() >= instant(offer.expiresAt)) return DeliverReason.OfferExpired;
    if (offer.state !== WaitlistOfferState.Offered) return DeliverReason.OfferClosed;
    const slot = await store.getWaitlistSlot(offer.slotId);
    return slot?.state === WaitlistSlotState.Open ? undefined : DeliverReason.OfferClosed;
  }

  /** The yes claimed the slot (committed): book it, and tell the others their offer is gone (two jobs: each retried on its own). */
  async accepted(claim: { slotId: string; offerId: string }): Promise<void> {
    await this.#deps.queue({ id: `wl-book~${claim.offerId}`, data: { kind: 'book', ...claim }, runAt: new Date(this.#deps.now()), idempotent: true, maxAttempts: WAITLIST_ATTEMPTS });
    await this.#queueTaken(claim.slotId, claim.offerId);
  }

  #queueTaken(slotId: string, offerId: string): Promise<unknown> {
    return this.#deps.queue({ id: `wl-taken~${offerId}`, data: { kind: 'taken', slotId, offerId }, runAt: new Date(this.#deps.now()), idempotent: true, maxAttempts: WAITLIST_ATTEMPTS });
  }

  /**
   * Every other patient holding an open offer of a claimed slot — their offer SMS went, it has not
   * expired, they have not answered — is told it is taken (appointment.waitlist_taken, "your
   * appointment stands"), and their offer closes (`taken`) in the same commit. A late yes closes
   * its offer the same way, so whichever commit comes first tells, and the other finds the offer
   * closed (OfferToldError): nobody is told twice. An offer whose SMS has not gone is not told: its
   * delivery is suppressed `offer_closed` at send time. A job of the `waitlist` queue (queued with
   * the booking), queued again by the start-up repair.
   */
  async tellOthers(slotId: string): Promise<Trigger[]> {
    const { store, log } = this.#deps;
    for (let attempt = 1; ; attempt++) {
      const slot = await store.getWaitlistSlot(slotId);
      if (slot?.claimedBy === undefined) return [];
      const now = this.#deps.now();
      const triggers: Trigger[] = [];
      for (const offer of await store.listWaitlistOffers(slotId)) {
        if (offer.id === slot.claimedBy || offer.state !== WaitlistOfferState.Offered || now >= instant(offer.expiresAt)) continue;
        const sent = await store.listDeliveries({ subjectKey: `appointment/${encodeURIComponent(offer.id)}`, status: 'sent', limit: 10 });
        if (!sent.some((d) => d.delivery.triggerType === TriggerType.AppointmentWaitlistOffered)) continue;
        const made = await store.getTrigger(offerTriggerId(offer.id));
        if (made !== undefined) triggers.push(takenTrigger(made, slot, now));
      }
      if (triggers.length === 0) return [];
      const told = triggers.map((t) => t.waitlist!.offer);
      try {
        const committed = await store.commitInbound({
          ...waitlistMessage({ controlId: takenMessageId(slot.id, told), messageType: 'WAITLIST^TAKEN', ack: 'waitlist taken', body: { slot: slot.id, claimedBy: slot.claimedBy, taken: told } }, slot, triggers, now),
          waitlistTold: told,
        });
        log.info('waitlist.taken', { slotId: slot.id, reason: WaitlistReason.OthersTold, offers: told.length });
        if (committed.outcome === 'stored') this.#deps.onTriggers(triggers);
        return triggers;
      } catch (error) {
        // A late yes told one of them first: decide again on the offers still open.
        if (!(error instanceof OfferToldError) || attempt >= 3) throw error;
      }
    }
  }

  /** The patient said no: their appointment stands. */
  async declined(offerId: string): Promise<void> {
    const offer = await this.#deps.store.getWaitlistOffer(offerId);
    if (offer?.state === WaitlistOfferState.Offered) await this.#deps.store.setWaitlistOffer(offerId, WaitlistOfferState.Declined);
  }

  // --- booking and cancelling -------------------------------------------------------------------

  /** The queue's handler. */
  async run(job: Pick<JobContext<WaitlistJob>, 'id' | 'data' | 'attempt' | 'signal'>): Promise<void> {
    const data = job.data;
    if (data.kind === 'wave') {
      await this.wave(data.slotId);
      return;
    }
    if (data.kind === 'taken') {
      await this.tellOthers(data.slotId);
      return;
    }
    const { store } = this.#deps;
    const [slot, offer] = await Promise.all([store.getWaitlistSlot(data.slotId), store.getWaitlistOffer(data.offerId)]);
    if (slot === undefined || offer === undefined) return;
    try {
      if (data.kind === 'book') await this.#book(slot, offer, job);
      else await this.#cancelLater(slot, offer, job);
    } catch (error) {
      const last = error instanceof PermanentError || job.attempt >= WAITLIST_ATTEMPTS;
      if (last) await this.failed(data, codeOf(error));
      throw error;
    }
  }

  /** A booking or cancellation that will not happen (failed for good, out of attempts, dead-lettered). */
  async failed(data: WaitlistJob, code: string): Promise<void> {
    // A wave or a notice that will not happen leaves nothing to give back (a notice's patients keep their offer until it expires).
    if (data.kind === 'wave' || data.kind === 'taken') return;
    const [slot, offer] = await Promise.all([this.#deps.store.getWaitlistSlot(data.slotId), this.#deps.store.getWaitlistOffer(data.offerId)]);
    if (slot === undefined || offer === undefined) return;
    if (data.kind === 'book') await this.#bookingFailed(slot, offer, code);
    else await this.#task(StaffTaskKind.WaitlistCancelFailed, offer, code, offer.current?.id);
  }

  async #operationBase(offer: WaitlistOffer, requestId: string) {
    const base = offer.triggerId !== undefined ? await this.#deps.store.getTrigger(offer.triggerId) : undefined;
    return { requestId, patient: { id: offer.patientId, identifiers: base?.patient?.identifiers ?? [{ value: offer.patientId }] } };
  }

  async #book(slot: WaitlistSlot, offer: WaitlistOffer, job: Pick<JobContext<WaitlistJob>, 'attempt' | 'signal'>): Promise<void> {
    const { store, config, log } = this.#deps;
    // Only the offer that holds the claim books (a job left from a released claim does nothing).
    if (slot.claimedBy !== offer.id || slot.state !== WaitlistSlotState.Claimed) return;
    const adapter = this.#deps.output(config.book);
    if (adapter?.writeBack === undefined) throw new PermanentError('book_output_unknown', `output "${config.book}" is not running or does not book (restart after adding it)`);
    const operation: WriteBackOperation = {
      kind: WriteBackKind.Book,
      ...(await this.#operationBase(offer, `wl~${offer.id}`)),
      appointment: { id: slot.id.slice(0, slot.id.lastIndexOf('@')) },
      slot: slotAppointment(slot),
    };
    const result = await adapter.writeBack(operation, { signal: job.signal, attempt: job.attempt });
    if (result.outcome === WriteBackOutcome.Denied) {
      await this.#bookingFailed(slot, offer, result.code);
      return;
    }
    const bookedAs = result.appointmentId;
    await store.setWaitlistOffer(offer.id, WaitlistOfferState.Booked, bookedAs !== undefined ? { bookedAs } : {});
    await store.setWaitlistSlot(slot.id, WaitlistSlotState.Booked, bookedAs !== undefined ? { bookedAs } : {});
    log.info('waitlist.book', { slotId: slot.id, offerId: offer.id, reason: WaitlistReason.Booked });
    // A waitlist entry booked leaves the list now (the EHR's own update comes later).
    if (offer.source === OfferSource.EhrWaitlist && offer.current !== undefined) await store.noteWaitlistEntry({ id: offer.current.id, removed: true });
    // Only now, with the new appointment made, is the later one given up.
    if (offer.current !== undefined) await this.#queueCancel(slot.id, offer.id);
  }

  #queueCancel(slotId: string, offerId: string): Promise<unknown> {
    return this.#deps.queue({ id: `wl-cancel~${offerId}`, data: { kind: 'cancel', slotId, offerId }, runAt: new Date(this.#deps.now()), idempotent: true, maxAttempts: WAITLIST_ATTEMPTS });
  }

  async #bookingFailed(slot: WaitlistSlot, offer: WaitlistOffer, code: string): Promise<void> {
    const { store, log } = this.#deps;
    await store.setWaitlistOffer(offer.id, WaitlistOfferState.Failed);
    await this.#task(StaffTaskKind.WaitlistBookingFailed, offer, code, slot.id.slice(0, slot.id.lastIndexOf('@')));
    log.warn('waitlist.book', { slotId: slot.id, offerId: offer.id, reason: WaitlistReason.BookingFailed, code });
    // The claim given back: the slot is offered on, from now. The wave is noted before the claim
    // goes back, so that a crash between the two leaves an open slot the repair knows the wave of.
    const now = this.#deps.now();
    await store.setWaitlistSlot(slot.id, WaitlistSlotState.Claimed, { nextWave: { at: new Date(now).toISOString(), after: offer.id } });
    if (await store.releaseWaitlistClaim(slot.id, offer.id)) await this.#queueWave(slot.id, now, offer.id);
  }

  async #cancelLater(slot: WaitlistSlot, offer: WaitlistOffer, job: Pick<JobContext<WaitlistJob>, 'attempt' | 'signal'>): Promise<void> {
    const { store, config, log } = this.#deps;
    if (offer.state !== WaitlistOfferState.Booked || offer.current === undefined || offer.currentCancelled) return;
    const adapter = this.#deps.output(config.book);
    if (adapter?.writeBack === undefined) throw new PermanentError('book_output_unknown', `output "${config.book}" is not running`);
    const operation: WriteBackOperation = {
      kind: WriteBackKind.Cancel,
      ...(await this.#operationBase(offer, `wl-cancel~${offer.id}`)),
      appointment: { id: offer.current.id, ...(offer.current.placerId !== undefined ? { placerId: offer.current.placerId } : {}), ...(offer.current.start !== undefined ? { start: offer.current.start } : {}) },
      reason: SCHEDULED_FROM_WAITLIST,
    };
    const result = await adapter.writeBack(operation, { signal: job.signal, attempt: job.attempt });
    if (result.outcome === WriteBackOutcome.Denied) {
      await this.#task(StaffTaskKind.WaitlistCancelFailed, offer, result.code, offer.current.id);
      log.warn('waitlist.cancel', { slotId: slot.id, offerId: offer.id, reason: WaitlistReason.CancelFailed, code: result.code });
      return;
    }
    await store.setWaitlistOffer(offer.id, WaitlistOfferState.Booked, { currentCancelled: true });
    log.info('waitlist.cancel', { slotId: slot.id, offerId: offer.id, reason: WaitlistReason.Cancelled });
  }

  async #task(kind: StaffTaskKind, offer: WaitlistOffer, code: string, appointmentId: string | undefined): Promise<void> {
    await this.#deps.store.addStaffTask({
      key: `${kind}:${offer.id}`,
      kind,
      createdAt: new Date(this.#deps.now()).toISOString(),
      patientId: offer.patientId,
      ...(appointmentId !== undefined ? { appointmentId } : {}),
      output: this.#deps.config.book,
      code,
    });
  }
}

/** What a slot says about the appointment it can become: time, service, practitioner, location. */
function slotAppointment(slot: WaitlistSlot): WriteBackSlot {
  return {
    start: slot.start,
    ...(slot.fhirSlot !== undefined ? { fhirSlot: slot.fhirSlot } : {}),
    ...(slot.end !== undefined ? { end: slot.end } : {}),
    ...(slot.durationMinutes !== undefined ? { durationMinutes: slot.durationMinutes } : {}),
    ...(slot.serviceType !== undefined ? { serviceType: slot.serviceType } : {}),
    ...(slot.practitioner !== undefined ? { practitioner: slot.practitioner } : {}),
    ...(slot.location !== undefined ? { location: slot.location } : {}),
  };
}

/** A patient the slot can be offered to, with what the offer says about them. */
interface Candidate {
  patientId: string;
  /** Their name, number, language (the latest trigger of their later appointment, or the list entry). */
  base: PatientTrigger;
  /** The trigger `base` is (absent for a list entry). */
  triggerId?: string;
  /** What they hold, cancelled after the booking: their later appointment, or their waitlist appointment in the EHR (absent for a list entry: nothing to cancel). */
  current?: { id: string; start?: string; placerId?: string };
  source: OfferSource;
}

/** Whether a waitlist entry wants a slot of [start, end) (ms): one of its requested periods holds it, or it names none. */
function entryWants(entry: WaitlistEntry, start: number, end: number): boolean {
  if (entry.periods.length === 0) return true;
  return entry.periods.some((p) => (p.start === undefined || instant(p.start) <= start) && (p.end === undefined || end <= instant(p.end)));
}

/** A configured list entry as the trigger an offer is made from (docs/waitlist.md "Sources"). */
function listedPatient(entry: WaitlistListEntry): PatientTrigger {
  return {
    id: `waitlist-list-${entry.patient}`,
    type: TriggerType.AppointmentWaitlistOffered,
    occurredAt: '1970-01-01T00:00:00Z',
    receivedAt: '1970-01-01T00:00:00Z',
    source: { format: 'waitlist', sender: 'waitlist', messageType: 'WAITLIST^LIST', messageId: entry.patient },
    patient: {
      id: entry.patient,
      identifiers: [{ value: entry.patient }],
      deceased: false,
      telecom: [{ system: 'phone', use: 'mobile', value: entry.phone }],
      ...(entry.language !== undefined ? { language: entry.language } : {}),
    },
  };
}

/** `<appointment id>@<start>`: the same slot freed twice (an S15 and a FHIR update) is one slot. */
export function slotIdOf(appointmentId: string, start: string): string {
  return `${appointmentId}@${new Date(instant(start)).toISOString()}`;
}

/** The stored message of a wave: `<slot>#<wave>` (its dedupe key with the sender `waitlist`). */
export function waveMessageId(slotId: string, wave: number): string {
  return `${slotId}#${wave}`;
}

/** One offer per slot and patient. */
export function offerIdOf(slotId: string, patientId: string): string {
  return `wl-${createHash('sha256').update(`${slotId}\u0000${patientId}`).digest('hex').slice(0, 24)}`;
}

/** The code and its configured equivalents. */
export function equivalents(code: string, groups: readonly (readonly string[])[]): string[] {
  const out = new Set([code]);
  for (const group of groups) if (group.includes(code)) for (const c of group) out.add(c);
  return [...out];
}

/** The trigger an offer is (docs/trigger.md "Waitlist"): the candidate's patient, the slot as the appointment. */
export function offerTrigger(slot: WaitlistSlot, offer: WaitlistOffer, base: PatientTrigger, now: number): PatientTrigger {
  const at = new Date(now).toISOString();
  return {
    id: offerTriggerId(offer.id),
    type: TriggerType.AppointmentWaitlistOffered,
    occurredAt: at,
    receivedAt: at,
    source: { format: 'waitlist', sender: 'waitlist', messageType: 'WAITLIST^OFFER', messageId: waveMessageId(slot.id, offer.wave) },
    patient: base.patient,
    appointment: {
      id: offer.id,
      status: 'proposed',
      ...slotAppointment(slot),
    },
    ...(base.sensitivity !== undefined ? { sensitivity: base.sensitivity } : {}),
    waitlist: {
      offer: offer.id,
      slot: slot.id,
      wave: offer.wave,
      expiresAt: offer.expiresAt,
      ...(offer.current !== undefined ? { current: offer.current } : {}),
      ...(offer.daysGained !== undefined ? { daysGained: offer.daysGained } : {}),
    },
  };
}

/** A message the waitlist stores (a wave of offers, a notice that a slot is taken): its bytes list ids only. */
function waitlistMessage(m: { controlId: string; messageType: string; ack: string; body: object }, slot: WaitlistSlot, triggers: Trigger[], now: number): InboundRecord {
  const raw = Buffer.from(JSON.stringify(m.body));
  return {
    input: 'waitlist',
    format: 'waitlist',
    sender: 'waitlist',
    controlId: m.controlId,
    messageType: m.messageType,
    contentHash: createHash('sha256').update(raw).digest('hex'),
    raw,
    status: MessageStatus.Accepted,
    ack: m.ack,
    ackCode: '-',
    receivedAt: new Date(now).toISOString(),
    triggers,
    subjectStates: [],
    ...(slot.patientId !== undefined ? { patientId: slot.patientId } : {}),
  };
}

/** The id of the appointment.waitlist_offered trigger of an offer. */
export function offerTriggerId(offerId: string): string {
  return createHash('sha256').update(`waitlist-offer\u0000${offerId}`).digest('hex').slice(0, 32);
}

/** The stored message telling these offers' patients the slot is taken: `<slot>#taken~<hash of the offers>`. */
export function takenMessageId(slotId: string, offerIds: readonly string[]): string {
  return `${slotId}#taken~${createHash('sha256').update(offerIds.join('\u0000')).digest('hex').slice(0, 16)}`;
}

/** The notice that an offer's slot is taken (docs/trigger.md "Waitlist"): the offer's trigger, as appointment.waitlist_taken. */
function takenTrigger(offered: Trigger, slot: WaitlistSlot, now: number): Trigger {
  const at = new Date(now).toISOString();
  const offerId = offered.waitlist!.offer;
  return {
    ...offered,
    id: createHash('sha256').update(`waitlist-taken\u0000${offerId}`).digest('hex').slice(0, 32),
    type: TriggerType.AppointmentWaitlistTaken,
    occurredAt: at,
    receivedAt: at,
    source: { format: 'waitlist', sender: 'waitlist', messageType: 'WAITLIST^TAKEN', messageId: `${slot.id}#taken` },
  };
}

/** The purpose an offer goes out under (docs/consent.md: a waitlist offer is care logistics). */
export const OFFER_PURPOSE = Purpose.CareLogistics;

/**
 * The waitlist of a running CareRelay (workers/runtime.ts wires it): the service and its
 * `waitlist` queue on the store's file. One job at a time: waves of one slot never interleave.
 */
export class WaitlistRuntime {
  readonly service: WaitlistService;
  readonly #queue: Queue<WaitlistJob>;
  readonly #log: Logger;
  #unsubscribe: (() => void) | undefined;

  constructor(queue: Queue<WaitlistJob>, deps: Omit<WaitlistServiceDeps, 'queue'>) {
    this.#queue = queue;
    this.#log = deps.log;
    this.service = new WaitlistService({ ...deps, queue: (job) => queue.add(job) });
  }

  start(): void {
    this.#queue.process((job) => this.service.run(job), { concurrency: 1 });
    this.#unsubscribe = this.#queue.subscribe((event) => {
      if (event.type !== 'dead') return;
      void this.#queue
        .get(event.id)
        .then((job) => (job ? this.service.failed(job.data, event.code) : undefined))
        .catch(() => this.#log.error('waitlist.task_not_recorded', { code: event.code }));
    });
    void this.service.repair().catch((error: unknown) => this.#log.error('waitlist.repair_failed', { code: failureClassOf(error) }));
  }

  async idle(): Promise<void> {
    await this.service.settled();
    await this.#queue.idle();
  }

  async stop(): Promise<void> {
    this.#unsubscribe?.();
    await this.#queue.close();
  }
}
