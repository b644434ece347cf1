// FHIR topic-based subscriptions (R4 Backport IG, R4B, R5): what their notifications say,
// where each subscription's event numbering stands, and what it still owes — all under one
// lock per subscription. FhirIngest hands it the topic notifications it reads; searches go
// back through FhirIngest (the same dedupe as rest-hooks and polls).
//
// Gaps (Backport IG "Handling Errors": event numbers and events-since-subscription-start
// are per subscription and monotonic): an event number past last seen + 1, or a heartbeat
// counting more events than seen, is owed and recovered in the background right after the
// answer (fhir-recovery.ts) — `$events` when the server's CapabilityStatement declares it,
// else a `_lastUpdated` search since the last event time — through the same dedupe.
// Heartbeat silence past twice the period does the same. A recovery that fails (server down,
// no CapabilityStatement, a refused search) is CareRelay's problem, never the sender's: the
// notification that revealed the gap is stored and answered 2xx, the recovery retries with
// backoff, and its state is kept in the subscription's position (GET /api/fhir/subscriptions).
//
// Pending events: an event whose triggers cannot be made now because the configured server
// does not answer (its focus or patient cannot be fetched, the search an empty payload asks
// for fails) is stored pending (store.ts PENDING_REASON) and answered 202. Nothing about it
// counts as done: a copy of it (resent, full-resource, from `$events`) completes it, and so
// does the background recovery. A notification answered non-2xx leaves nothing behind that
// would make its resend a duplicate.
//
// Numbering restarts: a server that re-creates a subscription, or loses its counters,
// numbers events from 1 again and says so with a new handshake counting fewer events than
// CareRelay handled. That starts a new numbering epoch: its events are stored under
// `<subscription>@<epoch>#<event-number>` (their triggers' ids too), the position starts
// again from 0, and what the handshake counts is recovered. Traffic stamped before the
// restart (a late resend, a late heartbeat; the server's clock) belongs to the numbering it
// was stamped in: it is deduplicated there and moves nothing in the current one.
import { TransientError } from '../errors.ts';
import {
  FhirReferenceRefused,
  parseFhirReference,
  ReferenceRefusal,
  supportsSubscriptionEvents,
  type SearchParams,
  type SearchResult,
} from '../fhir/client.ts';
import { TRIGGER_SOURCE_TYPES } from '../fhir/normalize.ts';
import {
  eventSlice,
  NotificationType,
  readNotification,
  referenceParts,
  resolveReference,
  topicEventKey,
  type FhirResource,
  type TopicNotification,
} from '../fhir/notification.ts';
import type { Logger } from '../log.ts';
import { retryDelayMs } from '../queue/backoff.ts';
import { isPending, type InboundRecord, type Store } from '../store/store.ts';
import { MessageStatus } from '../types.ts';
import { codeOf, CommitFailed, FhirRecords, isServerProblem, Refusal, sha256, type Batch } from './fhir-records.ts';
import { RECOVERY_RETRY, RecoveryScheduler, type RecoveryTarget } from './fhir-recovery.ts';
import {
  currentEpoch,
  cursorKeys,
  epochOf,
  instantMs,
  laterInstant,
  oweEvent,
  oweGap,
  oweSearch,
  owesWork,
  settleEvent,
  settleNumbers,
  tidyOwed,
  type SubscriptionState,
} from './fhir-state.ts';
import type { Timer } from './timer.ts';

/** What the ingest needs of the FHIR client (src/fhir/client.ts FhirClient has it all). */
export interface FhirServerClient {
  readonly baseUrl: string;
  readReference(reference: string): Promise<FhirResource>;
  search(type: string, params?: SearchParams, options?: { maxPages?: number }): Promise<SearchResult>;
  subscriptionEvents(
    subscriptionId: string,
    sinceNumber: number,
    untilNumber?: number,
    options?: { content?: 'empty' | 'id-only' | 'full-resource' },
  ): Promise<FhirResource>;
  capabilities(): Promise<FhirResource>;
}

export interface FhirSubscriptionSettings {
  /** Subscription id on the server. */
  id: string;
  /** Seconds; 0 = no heartbeats expected (no silence check). */
  heartbeatPeriodSeconds: number;
}

export interface FhirSubscriptionsDeps {
  store: Store;
  log: Logger;
  client: FhirServerClient;
  records: FhirRecords;
  now: () => Date;
  /** Jitter source in [0, 1) for the recovery backoff. */
  random: () => number;
  timer?: Timer;
  /** FhirIngest's search for what changed since `since` (else the types' cursors), under its search lock. */
  search: (since: string | undefined) => Promise<Batch>;
  /** FhirIngest's per-key serialization (one lock map for everything the input does). */
  serial: <T>(key: string, work: () => Promise<T>) => Promise<T>;
  /** A Consent the server announced, for the consent ledger (FhirIngestDeps.onConsent). */
  onConsent?: (resource: FhirResource) => Promise<{ rejected?: string }>;
}

export class FhirSubscriptions implements RecoveryTarget {
  private readonly subscriptions: Map<string, FhirSubscriptionSettings>;
  private readonly states = new Map<string, SubscriptionState>();
  private eventsSupport: Promise<boolean> | undefined;
  private readonly startedAt: string;
  private monitor: { clear(): void } | undefined;
  private readonly records: FhirRecords;
  private readonly recovery: RecoveryScheduler;
  /** Recovery attempts that could not even record their failure: not before (ms). */
  private readonly notBefore = new Map<string, number>();

  constructor(
    private readonly input: string,
    subscriptions: readonly FhirSubscriptionSettings[],
    private readonly deps: FhirSubscriptionsDeps,
  ) {
    this.subscriptions = new Map(subscriptions.map((s) => [s.id, s]));
    this.startedAt = deps.now().toISOString();
    this.records = deps.records;
    this.recovery = new RecoveryScheduler(this, () => this.now().getTime(), deps.timer);
  }

  private now(): Date {
    return this.deps.now();
  }

  private get sender(): string {
    return this.records.sender;
  }

  /** Positions held in memory may be ahead of what was committed (a refusal, a failure): reload them. */
  forgetPositions(): void {
    this.states.clear();
  }

  /**
   * Starts what a notification left owed (a gap, a pending event), after its answer. Cheap
   * when nothing is owed (the usual case): the positions in memory say so without a run.
   */
  kick(): void {
    const positions = [...this.subscriptions.keys()].map((id) => this.states.get(id));
    if (positions.every((state) => state !== undefined && !owesWork(state))) return;
    this.recovery.kick();
  }

  // --- topic-based notifications ----------------------------------------------------------

  async handle(n: TopicNotification, raw: Buffer, bundle: Record<string, unknown>): Promise<Batch> {
    const subscription = this.subscriptionOf(n.subscription);
    this.checkReferences(n);
    return this.withSubscription(subscription.id, async () => {
      const { log } = this.deps;
      const input = this.input;
      const state = await this.state(subscription.id);
      const receivedAt = this.now().toISOString();
      if (n.status === 'error') log.warn('fhir.subscription_error', { input, controlId: subscription.id, reason: 'status_error' });

      if (n.type === NotificationType.EventNotification || n.type === NotificationType.QueryEvent) {
        const current = currentEpoch(state);
        const numbers = n.events.filter((e) => epochOf(state, e.timestamp ?? n.timestamp) === current).map((e) => e.eventNumber);
        const first = numbers.length > 0 ? Math.min(...numbers) : undefined;
        if (state.n === undefined) {
          // First contact without a handshake: start from what the server says (no replay of
          // history from before CareRelay knew the subscription).
          if (first !== undefined) state.n = first - 1;
        } else if (first !== undefined && first > state.n + 1) {
          this.oweGap(subscription, state, state.n + 1, first - 1, 'event_gap');
        }
        // Late events (and resends) fill what an earlier gap left owed.
        settleNumbers(state, numbers);
        const batch = await this.ingestEvents(subscription, state, n, raw, bundle, receivedAt);
        if (batch.records.length === 0) {
          // Only resends: the subscription is alive.
          state.seen = receivedAt;
          await this.saveState(subscription.id, state);
        }
        return batch;
      }

      // handshake, heartbeat, query-status: recorded, no trigger. Their count of events
      // since the subscription started tells whether events were missed.
      const since = n.eventsSinceSubscriptionStart;
      // Same bytes resent: the same record; another heartbeat: a new one.
      const controlId = `${subscription.id}#${n.type}#${sha256(raw).slice(0, 16)}`;
      // A count from before the current numbering began (a late heartbeat) says nothing about it.
      const countsNow = since !== undefined && epochOf(state, n.timestamp) === currentEpoch(state);
      if (state.n === undefined) {
        state.n = since ?? 0;
      } else if (n.type === NotificationType.Handshake && countsNow && since < state.n && !(await this.records.known(controlId))) {
        // A new handshake counting fewer events than already handled: the subscription was
        // (re)activated with a new numbering. Its events 1, 2… are new events, not resends.
        // (The same handshake resent is a resend; a heartbeat with a lower count is more
        // likely late than a restart.)
        state.epoch = currentEpoch(state) + 1;
        // The server's own stamp, comparable with its event stamps (our clock may differ);
        // without one, nothing before this numbering can be told apart by time.
        state.epochStarts = [...(state.epochStarts ?? []), n.timestamp ?? null];
        // Numbers still owed from the old numbering cannot be asked for by number any more.
        for (const gap of state.owed?.gaps ?? []) oweSearch(state, gap.after ?? state.at);
        if (state.owed?.gaps !== undefined) state.owed.gaps = [];
        state.n = 0;
        log.warn('fhir.numbering_restarted', { input, controlId: subscription.id, count: state.epoch });
        if (since > 0) this.oweGap(subscription, state, 1, since, 'handshake_gap');
      } else if (countsNow && since > state.n) {
        this.oweGap(subscription, state, state.n + 1, since, n.type === NotificationType.Handshake ? 'handshake_gap' : 'heartbeat_gap');
      }
      state.seen = receivedAt;
      if (n.status !== undefined) state.status = n.status;
      const batch = this.records.newBatch(receivedAt);
      const record = this.records.baseRecord(batch, {
        controlId,
        contentHash: sha256(raw),
        raw,
        messageType: n.type,
      });
      tidyOwed(state);
      record.cursors = { [cursorKeys.subscription(this.input, subscription.id)]: JSON.stringify(state) };
      batch.records.push(record);
      await this.records.commit(batch);
      this.states.set(subscription.id, state);
      return batch;
    });
  }

  /**
   * Event numbers `from`…`to` were missed: owed to the background recovery (fhir-recovery.ts),
   * which runs right after this notification is answered. The position moves past them
   * now: the notification that revealed the gap is valid and is stored as it came.
   */
  private oweGap(subscription: FhirSubscriptionSettings, state: SubscriptionState, from: number, to: number | undefined, reason: string): void {
    this.deps.log.warn('fhir.gap_detected', {
      input: this.input,
      controlId: subscription.id,
      reason,
      count: to === undefined ? undefined : to - from + 1,
    });
    oweGap(state, { from, ...(to !== undefined ? { to } : {}), ...(state.at !== undefined ? { after: state.at } : {}) });
    if (to !== undefined) state.n = Math.max(state.n ?? 0, to);
  }

  /** The configured subscription a notification names, or a 404 refusal. */
  private subscriptionOf(reference: string): FhirSubscriptionSettings {
    let id: string | undefined;
    try {
      const parsed = parseFhirReference(reference, this.sender);
      if (parsed.type === 'Subscription') id = parsed.id;
    } catch {
      id = undefined;
    }
    const subscription = id === undefined ? undefined : this.subscriptions.get(id);
    if (subscription === undefined) {
      throw new Refusal(
        404,
        'Unknown subscription',
        'unknown_subscription',
        `the notification is for ${reference.slice(0, 200)}, which is not a subscription of input ${this.input} ` +
          `on ${this.sender}; add it to the input's subscriptions (or delete it on the server)`,
      );
    }
    return subscription;
  }

  /** Every focus and context reference must lie on the configured server (checked before any fetch). */
  private checkReferences(n: TopicNotification): void {
    for (const event of n.events) {
      for (const ref of [...(event.focus === undefined ? [] : [event.focus]), ...event.additionalContext]) {
        try {
          parseFhirReference(ref, this.sender);
        } catch (error) {
          if (!(error instanceof FhirReferenceRefused)) throw error;
          const outside = error.reason === ReferenceRefusal.OutsideBase || error.reason === ReferenceRefusal.Scheme;
          if (outside || resolveReference(n.resources, ref) === undefined) {
            throw new Refusal(
              422,
              'Reference outside the configured server',
              error.code,
              `notification-event ${event.eventNumber}: ${error.message}`,
            );
          }
        }
      }
    }
  }

  /**
   * One record per event (deduped by `<subscription>#<event-number>`), committed together.
   * An event whose triggers cannot be made now because the FHIR server does not answer
   * (its focus or patient cannot be fetched; the search an empty payload asks for fails) is
   * stored pending and owed (store.ts PENDING_REASON): the notification is still accepted
   * (202), and a copy of that event — resent, or from `$events` — or the background
   * recovery completes it. A pending event is never a duplicate of itself.
   */
  private async ingestEvents(
    subscription: FhirSubscriptionSettings,
    state: SubscriptionState,
    n: TopicNotification,
    raw: Buffer,
    bundle: Record<string, unknown>,
    receivedAt: string,
    recovered = false,
  ): Promise<Batch> {
    const batch = this.records.newBatch(receivedAt);
    const fetched = new Map<string, FhirResource>();
    const events = [...n.events].sort((a, b) => a.eventNumber - b.eventNumber);
    const stateKey = cursorKeys.subscription(this.input, subscription.id);
    // Late traffic stamped before a numbering restart belongs to the numbering it was
    // stamped in; what $events returns is always the server's current numbering.
    const keyed = await Promise.all(
      events.map(async (event) => {
        const epoch = recovered ? currentEpoch(state) : epochOf(state, event.timestamp ?? n.timestamp);
        const controlId = topicEventKey(n.subscription, event.eventNumber, epoch);
        return { event, epoch, controlId, stored: await this.records.find(controlId) };
      }),
    );
    const open = keyed.filter((k) => k.stored === undefined || isPending(k.stored));
    // Empty payload: something changed; the search says what. Run before the events are
    // committed, so that a failed search leaves them pending rather than done.
    let searchFailure: string | undefined;
    if (open.some((k) => k.event.focus === undefined)) {
      try {
        const found = await this.deps.search(undefined);
        batch.records.push(...found.records);
        batch.duplicates += found.duplicates;
        // An owed search from the types' cursors is the one just done.
        if (state.owed?.search !== undefined && state.owed.search.since === undefined) delete state.owed.search;
      } catch (error) {
        if (!isServerProblem(error)) throw error;
        searchFailure = codeOf(error);
        oweSearch(state, undefined);
      }
    }
    const eventRecords: InboundRecord[] = [];
    for (const { event, epoch, controlId, stored } of keyed) {
      if (stored !== undefined && !isPending(stored)) {
        batch.duplicates += 1;
        continue;
      }
      const focusParts = event.focus === undefined ? undefined : referenceParts(event.focus);
      const record = this.records.baseRecord(batch, {
        controlId,
        contentHash: sha256(JSON.stringify(['fhir-event', subscription.id, event.eventNumber, focusParts ? `${focusParts.type}/${focusParts.id}` : ''])),
        raw: n.events.length === 1 && raw.length > 0 ? raw : eventSlice(bundle, event),
        messageType: focusParts?.type ?? 'event',
      });
      if (event.focus === undefined) {
        if (searchFailure !== undefined) this.records.markPending(record, searchFailure);
      } else if (focusParts?.type === 'Consent' && this.deps.onConsent) {
        // A Consent the server announces goes to the consent ledger (docs/consent.md "Ways in"),
        // as one posted to /api/consents or received on a rest-hook: from the Bundle
        // (full-resource), else read from the server (id-only); an unreachable server leaves
        // the event pending for recovery.
        try {
          const consent = n.resources.get(`Consent/${focusParts.id}`) ?? (await this.deps.client.readReference(`Consent/${focusParts.id}`));
          const { rejected } = await this.deps.onConsent(consent);
          if (rejected !== undefined) {
            record.status = MessageStatus.Rejected;
            record.reason = rejected;
          }
        } catch (error) {
          if (!(error instanceof TransientError)) throw error;
          this.records.markPending(record, codeOf(error));
        }
      } else if (focusParts === undefined || !TRIGGER_SOURCE_TYPES.includes(focusParts.type)) {
        record.status = MessageStatus.Ignored;
        record.reason = 'not_a_trigger_source';
      } else {
        const single: TopicNotification = { ...n, events: [event] };
        try {
          await this.records.normalizeInto(record, batch, single, [focusParts], fetched, 'refuse', epoch);
        } catch (error) {
          if (!(error instanceof TransientError)) throw error;
          this.records.markPending(record, codeOf(error));
        }
      }
      if (isPending(record)) {
        batch.pending += 1;
        if (stored !== undefined) {
          // Still pending: nothing new to store.
          batch.duplicates += 1;
          continue;
        }
        oweEvent(state, controlId);
      } else if (stored !== undefined) {
        settleEvent(state, controlId);
      }
      if (stored === undefined) {
        if (epoch === currentEpoch(state)) state.n = Math.max(state.n ?? 0, event.eventNumber);
        state.at = laterInstant(state.at, event.timestamp ?? receivedAt);
      }
      state.seen = receivedAt;
      if (n.status !== undefined) state.status = n.status;
      tidyOwed(state);
      record.cursors = { [stateKey]: JSON.stringify(state) };
      batch.records.push(record);
      eventRecords.push(record);
    }
    if (batch.pending > 0) {
      // The notification is answered 202 (accepted, processing not complete): its records say so.
      for (const record of eventRecords) {
        record.ack = '202';
        record.ackCode = '202';
      }
    }
    await this.records.commit(batch);
    this.states.set(subscription.id, state);
    return batch;
  }

  // --- recovery (in the background: fhir-recovery.ts) ----------------------------------

  /** Subscriptions with owed work and when each is due (RecoveryTarget). */
  async dueTimes(): Promise<Map<string, number>> {
    const due = new Map<string, number>();
    for (const id of this.subscriptions.keys()) {
      const state = await this.state(id);
      if (!owesWork(state)) continue;
      const nextAt = state.recovery === undefined ? Number.NEGATIVE_INFINITY : instantMs(state.recovery.nextAt);
      due.set(id, Math.max(nextAt, this.notBefore.get(id) ?? Number.NEGATIVE_INFINITY));
    }
    return due;
  }

  /**
   * Does what subscription `id` owes (RecoveryTarget), under its lock: missed events by
   * `$events` when the server declares it (else a search from before the gap), then the
   * owed search, then the events stored pending. Success clears the recovery state; a
   * failure — whatever its class: the notification that revealed the work was valid — is
   * recorded in the position with the next attempt's time (backoff) and logged. Never throws.
   */
  async recoverSubscription(id: string): Promise<void> {
    const subscription = this.subscriptions.get(id);
    if (subscription === undefined) return;
    const { log } = this.deps;
    const input = this.input;
    try {
      await this.withSubscription(id, async () => {
        const state = await this.state(id);
        if (!owesWork(state)) return;
        const attempt = (state.recovery?.attempts ?? 0) + 1;
        try {
          await this.recoverOwed(subscription, state);
          log.info('fhir.recovered', { input, controlId: id, attempt });
          delete state.recovery;
        } catch (error) {
          const now = this.now();
          const retryAfterMs = error instanceof TransientError ? error.retryAfterMs : undefined;
          const delay = retryDelayMs(RECOVERY_RETRY, attempt, this.deps.random, retryAfterMs);
          state.recovery = {
            attempts: attempt,
            nextAt: new Date(now.getTime() + delay).toISOString(),
            lastError: codeOf(error),
            failingSince: state.recovery?.failingSince ?? now.toISOString(),
          };
          log.warn('fhir.recovery_failed', { input, controlId: id, reason: codeOf(error), attempt });
        }
        tidyOwed(state);
        await this.saveState(id, state);
        this.notBefore.delete(id);
      });
    } catch (error) {
      // Not even the failure could be recorded (the store is down): try again after the
      // first backoff step, from the position as committed.
      this.notBefore.set(id, this.now().getTime() + RECOVERY_RETRY.baseMs);
      log.error('fhir.recovery_failed', { input, controlId: id, reason: codeOf(error) });
    }
  }

  private async recoverOwed(subscription: FhirSubscriptionSettings, state: SubscriptionState): Promise<void> {
    const { log, client } = this.deps;
    const input = this.input;
    const id = subscription.id;
    const owed = state.owed!;
    while ((owed.gaps?.length ?? 0) > 0) {
      const gap = owed.gaps![0]!;
      let complete = false;
      if (await this.supportsEvents()) {
        try {
          const bundle = await client.subscriptionEvents(id, gap.from, gap.to, { content: 'full-resource' });
          const n = readNotification(bundle);
          if (n.kind === 'topic') {
            const numbers = new Set(n.events.map((e) => e.eventNumber));
            this.checkReferences(n);
            await this.ingestEvents(subscription, state, n, Buffer.alloc(0), bundle as Record<string, unknown>, this.now().toISOString(), true);
            const expected = gap.to === undefined ? 0 : gap.to - gap.from + 1;
            complete = numbers.size >= expected;
            if (!complete) log.warn('fhir.recovery_incomplete', { input, controlId: id, reason: 'events_expired', count: expected - numbers.size });
          }
        } catch (error) {
          if (error instanceof TransientError || error instanceof CommitFailed) throw error;
          // Refused for good ($events unknown for this subscription, a bad Bundle): the search below.
          log.warn('fhir.recovery_failed', { input, controlId: id, reason: codeOf(error) });
        }
      }
      if (!complete) oweSearch(state, gap.after ?? state.at ?? state.seen);
      owed.gaps!.shift();
      await this.saveState(id, state);
    }
    if (owed.search !== undefined) {
      const since = owed.search.since;
      await this.deps.search(since);
      delete owed.search;
      await this.saveState(id, state);
    }
    for (const controlId of [...(owed.events ?? [])]) await this.completePendingEvent(subscription, state, controlId);
  }

  /**
   * Makes the triggers of an event stored pending, from its stored bytes: its focus and
   * patient fetched again (an empty payload's search has run by now). The stored record is
   * completed in place (Store.commitInbound); a focus the server no longer has makes it
   * rejected with the reason, as for any event.
   */
  private async completePendingEvent(subscription: FhirSubscriptionSettings, state: SubscriptionState, controlId: string): Promise<void> {
    const stored = await this.records.find(controlId);
    const message = stored !== undefined && isPending(stored) ? await this.deps.store.getMessage(stored.id) : undefined;
    const batch = this.records.newBatch();
    if (message === undefined) {
      // Completed meanwhile (a resend, $events), or gone: nothing owed any more.
      settleEvent(state, controlId);
      tidyOwed(state);
      await this.saveState(subscription.id, state);
      return;
    }
    const n = readNotification(message.raw);
    const epoch = Number(/@(\d+)#\d+$/.exec(controlId)?.[1] ?? 0);
    const event = n.kind === 'topic' ? n.events.find((e) => topicEventKey(n.subscription, e.eventNumber, epoch) === controlId) : undefined;
    const record = this.records.baseRecord(batch, {
      controlId,
      contentHash: message.contentHash,
      raw: message.raw,
      messageType: message.messageType,
    });
    record.ack = message.ack;
    record.ackCode = message.ackCode;
    const focusParts = event?.focus === undefined ? undefined : referenceParts(event.focus);
    if (n.kind === 'topic' && event !== undefined && focusParts !== undefined) {
      await this.records.normalizeInto(record, batch, { ...n, events: [event] }, [focusParts], new Map(), 'record', epoch);
    }
    settleEvent(state, controlId);
    tidyOwed(state);
    record.cursors = { [cursorKeys.subscription(this.input, subscription.id)]: JSON.stringify(state) };
    batch.records.push(record);
    try {
      await this.records.commit(batch);
    } catch (error) {
      oweEvent(state, controlId);
      throw error;
    }
  }

  /**
   * Whether the server declares `$events` (asked once). A server without a readable
   * CapabilityStatement (404, 401…) does not declare it: recovery searches instead. A server
   * that does not answer now is asked again next time.
   */
  private supportsEvents(): Promise<boolean> {
    this.eventsSupport ??= this.deps.client.capabilities().then(supportsSubscriptionEvents, (error: unknown) => {
      if (error instanceof TransientError) throw error;
      this.deps.log.warn('fhir.capabilities_unreadable', { input: this.input, reason: codeOf(error) });
      return false;
    });
    this.eventsSupport.catch(() => {
      this.eventsSupport = undefined;
    });
    return this.eventsSupport;
  }

  // --- heartbeat silence ------------------------------------------------------------------

  /**
   * Checks every subscription with a heartbeat period: silent for more than twice the
   * period (measured from the last notification, the last silence recovery or the start of
   * this process) → warning `heartbeat_silence`, and everything after the last event seen
   * is owed and recovered. Called by the monitor's timer; tests call it with an injected
   * clock. Resolves with the ids of the subscriptions found silent.
   */
  async checkHeartbeats(): Promise<string[]> {
    const silent: string[] = [];
    for (const subscription of this.subscriptions.values()) {
      if (subscription.heartbeatPeriodSeconds <= 0) continue;
      const state = await this.state(subscription.id);
      const last = Math.max(instantMs(state.seen), instantMs(state.recoveredAt), instantMs(this.startedAt));
      const now = this.now();
      if (now.getTime() - last <= 2 * subscription.heartbeatPeriodSeconds * 1000) continue;
      this.deps.log.warn('fhir.heartbeat_missed', {
        input: this.input,
        controlId: subscription.id,
        reason: 'heartbeat_silence',
        durationMs: now.getTime() - last,
      });
      if (state.n === undefined) {
        // Never heard from it (not created yet, or the endpoint unreachable): nothing to
        // catch up from; warn again after another silent period.
        state.recoveredAt = now.toISOString();
        continue;
      }
      try {
        await this.withSubscription(subscription.id, async () => {
          const current = await this.state(subscription.id);
          this.oweGap(subscription, current, (current.n ?? 0) + 1, undefined, 'heartbeat_silence');
          current.recoveredAt = this.now().toISOString();
          await this.saveState(subscription.id, current);
        });
        await this.recoverSubscription(subscription.id);
        silent.push(subscription.id);
      } catch (error) {
        this.deps.log.error('fhir.recovery_failed', { input: this.input, controlId: subscription.id, reason: codeOf(error) });
      }
    }
    return silent;
  }

  /**
   * Runs checkHeartbeats every half of the shortest heartbeat period (at least every
   * second). `setInterval` is injectable for tests; the default timer does not keep the
   * process alive.
   */
  startHeartbeatMonitor(
    setIntervalFn: (fn: () => void, ms: number) => { clear(): void } = (fn, ms) => {
      const handle = setInterval(fn, ms);
      handle.unref();
      return { clear: () => clearInterval(handle) };
    },
  ): void {
    const periods = [...this.subscriptions.values()].map((s) => s.heartbeatPeriodSeconds).filter((p) => p > 0);
    if (periods.length === 0 || this.monitor !== undefined) return;
    let running = false;
    this.monitor = setIntervalFn(
      () => {
        if (running) return;
        running = true;
        void this.checkHeartbeats().finally(() => {
          running = false;
        });
      },
      Math.max(1000, (Math.min(...periods) * 1000) / 2),
    );
  }

  /** Starts the heartbeat monitor and resumes the work a previous run left owed. */
  start(): void {
    this.startHeartbeatMonitor();
    this.recovery.kick();
  }

  /** Resolves once no recovery is running (work in backoff waits for its time). */
  recoveryIdle(): Promise<void> {
    return this.recovery.idle();
  }

  /** Runs every subscription's owed work now, backoff or not. */
  recoverNow(): Promise<void> {
    return this.recovery.runNow();
  }

  /** Each subscription's position, what it still owes and its recovery state (admin API). */
  async subscriptionStates(): Promise<Array<{ id: string; state: SubscriptionState }>> {
    const out: Array<{ id: string; state: SubscriptionState }> = [];
    for (const id of this.subscriptions.keys()) out.push({ id, state: structuredClone(await this.state(id)) });
    return out;
  }

  /** Stops the monitor and the recovery, and waits for work in progress. */
  async stop(): Promise<void> {
    this.monitor?.clear();
    this.monitor = undefined;
    await this.recovery.stop();
  }

  // --- positions -------------------------------------------------------------------------

  private async state(id: string): Promise<SubscriptionState> {
    const cached = this.states.get(id);
    if (cached) return cached;
    let text: string | undefined;
    try {
      text = await this.deps.store.getCursor(cursorKeys.subscription(this.input, id));
    } catch {
      throw new CommitFailed();
    }
    let state: SubscriptionState = {};
    if (text !== undefined) {
      try {
        state = JSON.parse(text) as SubscriptionState;
      } catch {
        state = {};
      }
    }
    this.states.set(id, state);
    return state;
  }

  private async saveState(id: string, state: SubscriptionState): Promise<void> {
    this.states.set(id, state);
    try {
      await this.deps.store.setCursor(cursorKeys.subscription(this.input, id), JSON.stringify(state));
    } catch {
      throw new CommitFailed();
    }
  }

  /**
   * Runs `work` on a subscription's position, after every earlier work on it. When the work
   * fails, the position it may have moved in memory (not committed) is dropped before the
   * next work starts, which then reads the committed one.
   */
  private withSubscription<T>(id: string, work: () => Promise<T>): Promise<T> {
    return this.deps.serial(`subscription:${id}`, async () => {
      try {
        return await work();
      } catch (error) {
        this.states.delete(id);
        throw error;
      }
    });
  }
}
