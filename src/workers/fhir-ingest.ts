// FHIR ingest: what a FHIR server POSTs (or what CareRelay searched for) in, triggers out —
// and the 2xx only after the notification, its triggers and the subscription's position
// are durably committed (docs/architecture.md invariant 1, docs/reliability.md promises 1, 3, 8).
//
//   parse (no __proto__/constructor keys) ─▶ readNotification ─▶ known subscription?
//     ─▶ references only on the configured server? ─▶ gap? recover ─▶ per event: seen?
//     ─▶ fetch what is missing (id-only focus, patients) ─▶ normalize ─▶ commit ─▶ 2xx
//
// One stored record per notification event (controlId `<subscription>#<event-number>`, see
// numbering restarts below), per resource version (`Type/id/_history/v`: R4 criteria
// rest-hooks, searches, polling), or per handshake/heartbeat (zero triggers). The sender is
// the configured server's base URL, so the same event or version seen twice — resent,
// recovered, polled — is one record.
//
// Gaps (Backport IG "Handling Errors": event numbers and events-since-subscription-start
// are per subscription and monotonic): an event number past last seen + 1, or a heartbeat
// counting more events than seen, runs a recovery first — `$events` when the server's
// CapabilityStatement declares it, else a `_lastUpdated` search since the last event time —
// through the same dedupe. Heartbeat silence past twice the period does the same.
//
// Numbering restarts: a server that re-creates a subscription, or loses its counters,
// numbers events from 1 again and says so with a new handshake counting fewer events than
// CareRelay handled. That starts a new numbering epoch: its events are stored under
// `<subscription>@<epoch>#<event-number>` (their triggers' ids too), the position starts
// again from 0, and what the handshake counts is recovered. Traffic stamped before the
// restart (a late resend, a late heartbeat; the server's clock) belongs to the numbering it
// was stamped in: it is deduplicated there and moves nothing in the current one.
//
// Logs carry ids and reason codes only; refusal texts go to the caller, never to logs.
import { createHash } from 'node:crypto';
import { PermanentError, TransientError } from '../errors.ts';
import {
  FhirReferenceRefused,
  parseFhirReference,
  ReferenceRefusal,
  supportsSubscriptionEvents,
  type SearchParams,
  type SearchResult,
} from '../fhir/client.ts';
import {
  FhirNormalizeError,
  normalizeNotification,
  resourceMessageId,
  TRIGGER_SOURCE_TYPES,
  type NotificationNormalizeResult,
} from '../fhir/normalize.ts';
import {
  FhirNotificationError,
  NotificationType,
  readNotification,
  referenceParts,
  resolveReference,
  topicEventKey,
  type FhirResource,
  type Notification,
  type NotificationEvent,
  type TopicNotification,
} from '../fhir/notification.ts';
import type { Logger } from '../log.ts';
import type { InboundRecord, Store, SubjectState } from '../store/store.ts';
import { MessageStatus, type Trigger } from '../types.ts';

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

export interface FhirIngestSettings {
  input: string;
  subscriptions: readonly FhirSubscriptionSettings[];
  /** Types searched for "something changed" (empty body/payload, recovery without $events). */
  searchResources: readonly string[];
  /** Look-back of such a search when no earlier time is known, seconds. */
  searchLookbackSeconds: number;
}

export interface FhirIngestDeps {
  store: Store;
  log: Logger;
  client: FhirServerClient;
  /** Clock; default the system clock. */
  now?: () => Date;
  /** Called after a commit that created triggers (routing hooks in here). */
  onCommitted?: (triggers: Trigger[]) => void | Promise<void>;
  /**
   * A Consent resource received (rest-hook or poll), before its record is committed, so that a
   * failure (thrown) leaves it unknown and the sender's resend brings it again. Answers why it
   * cannot be used (invalid, unknown patient): the record is then kept as rejected.
   */
  onConsent?: (resource: FhirResource) => Promise<{ rejected?: string }>;
}

export type FhirIngestResult =
  /** Committed (or already known): answer 2xx. */
  | { kind: 'accepted'; triggers: Trigger[]; stored: number; duplicates: number }
  /** Never acceptable as sent: 4xx with a problem body; nothing was stored. */
  | { kind: 'refused'; status: 400 | 404 | 422; title: string; detail: string; reason: string }
  /** Nothing durable (store or FHIR server unavailable): 503 + Retry-After; the sender resends. */
  | { kind: 'unavailable'; retryAfterSeconds: number; reason: string };

/** Durable per-subscription position (cursor value, JSON). */
export interface SubscriptionState {
  /** Highest event number handled (every number up to it handled or recovered). */
  n?: number;
  /** Time of the last event (notification timestamp, else when received): recovery searches start here. */
  at?: string;
  /** When CareRelay last heard from the subscription (any notification), ISO instant. */
  seen?: string;
  /** Last SubscriptionStatus.status. */
  status?: string;
  /** When the last silence recovery ran (silence is measured from here too). */
  recoveredAt?: string;
  /**
   * How many times the server restarted this subscription's event numbering (absent: never).
   * Events are stored under topicEventKey(subscription, number, epoch).
   */
  epoch?: number;
  /**
   * When each numbering after the first began: `epochStarts[k - 1]` is epoch k's restart
   * handshake Bundle.timestamp (the server's clock), null when it had none.
   */
  epochStarts?: Array<string | null>;
}

/** Refusal of the notification as sent (4xx, nothing stored). */
class Refusal extends Error {
  constructor(
    readonly status: 400 | 404 | 422,
    readonly title: string,
    readonly reason: string,
    detail: string,
  ) {
    super(detail);
  }
}

/** The store could not commit: nothing durable, the sender must resend. */
class CommitFailed extends Error {}

const FETCH_ROUNDS = 3;
/** Resources read per search type at most in one recovery/changes search (pages × _count). */
const SEARCH_PAGE_SIZE = 100;
const SEARCH_MAX_PAGES = 20;
const RETRY_AFTER_SECONDS = 5;
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/**
 * JSON.parse that refuses prototype keys anywhere (docs/reliability.md "Security defaults"): a
 * `__proto__` or `constructor` member, even written with escapes, is an error, not data.
 */
export function parseFhirJson(text: string): unknown {
  return JSON.parse(text, function (key, value: unknown) {
    if (FORBIDDEN_KEYS.has(key)) throw new SyntaxError(`member "${key}" is not allowed in FHIR JSON`);
    return value;
  });
}

function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function instantMs(value: string | undefined): number {
  const ms = value === undefined ? Number.NaN : Date.parse(value);
  return Number.isFinite(ms) ? ms : Number.NEGATIVE_INFINITY;
}

function currentEpoch(state: SubscriptionState): number {
  return state.epoch ?? 0;
}

/**
 * The numbering a notification stamped `at` belongs to: the latest one that began at or
 * before the stamp. Without a stamp, or past a numbering whose start is unknown, the latest
 * one that can be told apart.
 */
function epochOf(state: SubscriptionState, at: string | undefined): number {
  const epoch = currentEpoch(state);
  const stamped = at === undefined ? Number.NaN : Date.parse(at);
  if (epoch === 0 || !Number.isFinite(stamped)) return epoch;
  for (let k = epoch; k >= 1; k--) {
    const start = state.epochStarts?.[k - 1];
    if (start === undefined || start === null || stamped >= instantMs(start)) return k;
  }
  return 0;
}

/** Cursor keys in the store. */
export const cursorKeys = {
  subscription: (input: string, id: string) => `fhir:${input}:subscription:${id}`,
  search: (input: string, type: string) => `fhir:${input}:search:${type}`,
  poll: (input: string, type: string) => `fhir:${input}:poll:${type}`,
};

export interface Batch {
  receivedAt: string;
  /** Subject states produced earlier in this batch (not yet readable from the store). */
  overlay: Map<string, SubjectState>;
  records: InboundRecord[];
  duplicates: number;
}

export interface IngestResourcesOptions {
  /** Cursor written with each record: that resource's meta.lastUpdated (resources are sorted). */
  cursorKey?: string;
  /** Raw bytes of a single-resource body (R4 rest-hook); default the resource as JSON. */
  raw?: Buffer;
  /**
   * A reference outside the configured server: `refuse` the whole call (a POSTed body: 4xx,
   * nothing stored) or `record` that resource as rejected and go on (searches and polls,
   * where one bad resource must not block the ones after it). Default `record`.
   */
  foreign?: 'refuse' | 'record';
}

export class FhirIngest {
  readonly settings: FhirIngestSettings;
  private readonly deps: FhirIngestDeps;
  private readonly now: () => Date;
  private readonly subscriptions: Map<string, FhirSubscriptionSettings>;
  private readonly states = new Map<string, SubscriptionState>();
  private readonly locks = new Map<string, Promise<unknown>>();
  private eventsSupport: Promise<boolean> | undefined;
  private readonly startedAt: string;
  private monitor: { clear(): void } | undefined;
  /** Records whose commit already settled (a batch may be committed in steps). */
  private readonly settled = new WeakSet<InboundRecord>();

  constructor(settings: FhirIngestSettings, deps: FhirIngestDeps) {
    this.settings = settings;
    this.deps = deps;
    this.now = deps.now ?? (() => new Date());
    this.subscriptions = new Map(settings.subscriptions.map((s) => [s.id, s]));
    this.startedAt = this.now().toISOString();
  }

  /** source.sender of everything this input stores: the configured server. */
  get sender(): string {
    return this.deps.client.baseUrl;
  }

  /**
   * Handles one POSTed body (already authenticated and size-limited by the caller). An
   * empty buffer is an R4 criteria rest-hook without payload: the server is searched.
   */
  async handle(raw: Buffer): Promise<FhirIngestResult> {
    const { log } = this.deps;
    const input = this.settings.input;
    try {
      let body: unknown;
      // A UTF-8 byte order mark is allowed before JSON text (RFC 8259 §8.1 lets parsers ignore it).
      const text = raw.toString('utf8').replace(/^\uFEFF/, '');
      if (text.trim() !== '') {
        try {
          body = parseFhirJson(text);
        } catch (error) {
          throw new Refusal(400, 'Invalid JSON', 'invalid_json', `the body is not acceptable JSON (${(error as Error).message})`);
        }
      }
      let notification: Notification;
      try {
        notification = readNotification(body);
      } catch (error) {
        if (error instanceof FhirNotificationError) {
          throw new Refusal(400, 'Not a FHIR notification', error.code, error.message);
        }
        throw error;
      }
      switch (notification.kind) {
        case 'empty':
          return this.accepted(await this.serial('search', () => this.searchChanges(undefined)));
        case 'resource':
          return this.accepted(await this.handleResource(notification.resource, raw));
        case 'topic':
          return this.accepted(await this.handleTopic(notification, raw, body as Record<string, unknown>));
        default:
          notification satisfies never;
          throw new Error('unreachable');
      }
    } catch (error) {
      // Positions held in memory may be ahead of what was committed (a refusal or a failure
      // part-way through a notification): reload them from the store.
      this.states.clear();
      if (error instanceof Refusal) {
        log.warn('fhir.refused', { input, reason: error.reason, status: error.status });
        return { kind: 'refused', status: error.status, title: error.title, detail: error.message, reason: error.reason };
      }
      if (error instanceof CommitFailed) {
        log.error('fhir.commit_failed', { input });
        return { kind: 'unavailable', retryAfterSeconds: RETRY_AFTER_SECONDS, reason: 'store_unavailable' };
      }
      if (error instanceof TransientError) {
        log.warn('fhir.server_unavailable', { input, code: error.code });
        const retry = error.retryAfterMs !== undefined ? Math.ceil(error.retryAfterMs / 1000) : RETRY_AFTER_SECONDS;
        return { kind: 'unavailable', retryAfterSeconds: Math.max(1, retry), reason: error.code };
      }
      if (error instanceof PermanentError) {
        // The configured server refused a fetch CareRelay needs (404, 403…): the notification
        // cannot be turned into triggers as sent; nothing was stored.
        log.warn('fhir.refused', { input, reason: error.code, status: 422 });
        return {
          kind: 'refused',
          status: 422,
          title: 'Cannot resolve the notification',
          detail: `a resource the notification needs could not be read from the configured server (${error.code})`,
          reason: error.code,
        };
      }
      throw error;
    }
  }

  private accepted(batch: Batch): FhirIngestResult {
    const triggers = batch.records.flatMap((r) => r.triggers);
    return { kind: 'accepted', triggers, stored: batch.records.length, duplicates: batch.duplicates };
  }

  // --- R4 criteria rest-hook: the resource itself ----------------------------------------

  private async handleResource(resource: FhirResource, raw: Buffer): Promise<Batch> {
    const key = `resource:${resource.resourceType}/${String(resource.id ?? '')}`;
    return this.serial(key, () => this.ingestResources([resource], [], { raw, foreign: 'refuse' }));
  }

  /**
   * Ingests resources read from the configured server or posted as R4 rest-hooks: one record
   * per version (deduped by `Type/id/_history/v`), patients fetched when not included.
   * Resources are handled in meta.lastUpdated order; with `cursorKey`, each record carries
   * the cursor up to its own lastUpdated. Throws CommitFailed / Refusal / client errors.
   */
  async ingestResources(
    resources: readonly FhirResource[],
    included: readonly FhirResource[],
    options: IngestResourcesOptions = {},
  ): Promise<Batch> {
    const batch = this.newBatch();
    const fetched = new Map<string, FhirResource>();
    for (const r of included) addResource(fetched, r);
    const ordered = [...resources]
      .map((r) => this.withVersionKey(r, batch.receivedAt))
      .sort((a, b) => instantMs(a.meta?.lastUpdated) - instantMs(b.meta?.lastUpdated));
    for (const resource of ordered) {
      const controlId = resourceMessageId(resource);
      if (await this.known(controlId)) {
        batch.duplicates += 1;
        continue;
      }
      const record = this.baseRecord(batch, {
        controlId,
        contentHash: sha256(`fhir-resource\n${controlId}`),
        raw: ordered.length === 1 && options.raw !== undefined ? options.raw : Buffer.from(JSON.stringify(resource)),
        messageType: resource.resourceType,
      });
      const lastUpdated = resource.meta?.lastUpdated;
      if (options.cursorKey !== undefined && lastUpdated !== undefined) record.cursors = { [options.cursorKey]: lastUpdated };
      if (resource.resourceType === 'Consent' && this.deps.onConsent) {
        const { rejected } = await this.deps.onConsent(resource);
        if (rejected !== undefined) {
          record.status = MessageStatus.Rejected;
          record.reason = rejected;
        }
      } else if (!TRIGGER_SOURCE_TYPES.includes(resource.resourceType)) {
        record.status = MessageStatus.Ignored;
        record.reason = 'not_a_trigger_source';
      } else {
        const resourceMap = new Map<string, FhirResource>();
        addResource(resourceMap, resource);
        const ref = { type: resource.resourceType, id: String(resource.id ?? '') };
        await this.normalizeInto(record, batch, { kind: 'resource', resource, resources: resourceMap }, [ref], fetched, options.foreign ?? 'record');
      }
      batch.records.push(record);
    }
    // With a cursor, one record at a time: a record that fails must not be overtaken by a
    // later one whose cursor would then skip it.
    await this.commit(batch, options.cursorKey !== undefined);
    return batch;
  }

  /**
   * A resource without versionId and lastUpdated cannot be told apart from its next update:
   * it is keyed by the time CareRelay received it (no dedupe possible for such a server).
   */
  private withVersionKey(resource: FhirResource, receivedAt: string): FhirResource {
    if (resource.meta?.versionId || resource.meta?.lastUpdated) return resource;
    return { ...resource, meta: { ...resource.meta, lastUpdated: receivedAt } };
  }

  // --- topic-based notifications ----------------------------------------------------------

  private async handleTopic(n: TopicNotification, raw: Buffer, bundle: Record<string, unknown>): Promise<Batch> {
    const subscription = this.subscriptionOf(n.subscription);
    this.checkReferences(n);
    return this.withSubscription(subscription.id, async () => {
      const { log } = this.deps;
      const input = this.settings.input;
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
          await this.recover(subscription, state, state.n + 1, first - 1, 'event_gap');
        }
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
      } else if (n.type === NotificationType.Handshake && countsNow && since < state.n && !(await this.known(controlId))) {
        // A new handshake counting fewer events than already handled: the subscription was
        // (re)activated with a new numbering. Its events 1, 2… are new events, not resends.
        // (The same handshake resent is a resend; a heartbeat with a lower count is more
        // likely late than a restart.)
        state.epoch = currentEpoch(state) + 1;
        // The server's own stamp, comparable with its event stamps (our clock may differ);
        // without one, nothing before this numbering can be told apart by time.
        state.epochStarts = [...(state.epochStarts ?? []), n.timestamp ?? null];
        state.n = 0;
        log.warn('fhir.numbering_restarted', { input, controlId: subscription.id, count: state.epoch });
        if (since > 0) await this.recover(subscription, state, 1, since, 'handshake_gap');
      } else if (countsNow && since > state.n) {
        await this.recover(subscription, state, state.n + 1, since, n.type === NotificationType.Handshake ? 'handshake_gap' : 'heartbeat_gap');
      }
      state.seen = receivedAt;
      if (n.status !== undefined) state.status = n.status;
      const batch = this.newBatch(receivedAt);
      const record = this.baseRecord(batch, {
        controlId,
        contentHash: sha256(raw),
        raw,
        messageType: n.type,
      });
      record.cursors = { [cursorKeys.subscription(this.settings.input, subscription.id)]: JSON.stringify(state) };
      batch.records.push(record);
      await this.commit(batch);
      this.states.set(subscription.id, state);
      return batch;
    });
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
        `the notification is for ${reference.slice(0, 200)}, which is not a subscription of input ${this.settings.input} ` +
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

  /** One record per event (deduped by `<subscription>#<event-number>`), committed together. */
  private async ingestEvents(
    subscription: FhirSubscriptionSettings,
    state: SubscriptionState,
    n: TopicNotification,
    raw: Buffer,
    bundle: Record<string, unknown>,
    receivedAt: string,
    recovered = false,
  ): Promise<Batch> {
    const batch = this.newBatch(receivedAt);
    const fetched = new Map<string, FhirResource>();
    const events = [...n.events].sort((a, b) => a.eventNumber - b.eventNumber);
    const stateKey = cursorKeys.subscription(this.settings.input, subscription.id);
    let searchNeeded = false;
    for (const event of events) {
      // Late traffic stamped before a numbering restart belongs to the numbering it was
      // stamped in; what $events returns is always the server's current numbering.
      const epoch = recovered ? currentEpoch(state) : epochOf(state, event.timestamp ?? n.timestamp);
      const controlId = topicEventKey(n.subscription, event.eventNumber, epoch);
      if (await this.known(controlId)) {
        batch.duplicates += 1;
        // A resent empty-payload event still asks for the search: the first delivery may have
        // been stored and then failed its search (and answered 503).
        if (event.focus === undefined) searchNeeded = true;
        continue;
      }
      const focusParts = event.focus === undefined ? undefined : referenceParts(event.focus);
      const record = this.baseRecord(batch, {
        controlId,
        contentHash: sha256(JSON.stringify(['fhir-event', subscription.id, event.eventNumber, focusParts ? `${focusParts.type}/${focusParts.id}` : ''])),
        raw: n.events.length === 1 && raw.length > 0 ? raw : eventSlice(bundle, event),
        messageType: focusParts?.type ?? 'event',
      });
      if (event.focus === undefined) {
        // Empty payload: something changed; the search below says what.
        searchNeeded = true;
      } else if (focusParts === undefined || !TRIGGER_SOURCE_TYPES.includes(focusParts.type)) {
        record.status = MessageStatus.Ignored;
        record.reason = 'not_a_trigger_source';
      } else {
        const single: TopicNotification = { ...n, events: [event] };
        await this.normalizeInto(record, batch, single, [focusParts], fetched, 'refuse', epoch);
      }
      if (epoch === currentEpoch(state)) state.n = Math.max(state.n ?? 0, event.eventNumber);
      state.at = laterInstant(state.at, event.timestamp ?? receivedAt);
      state.seen = receivedAt;
      if (n.status !== undefined) state.status = n.status;
      record.cursors = { [stateKey]: JSON.stringify(state) };
      batch.records.push(record);
    }
    await this.commit(batch);
    this.states.set(subscription.id, state);
    if (searchNeeded) {
      const found = await this.serial('search', () => this.searchChanges(undefined));
      batch.records.push(...found.records);
      batch.duplicates += found.duplicates;
    }
    return batch;
  }

  // --- recovery ---------------------------------------------------------------------------

  /**
   * Missed events `from`…`to` (to undefined: everything after `from`): `$events` when the
   * server supports it, else a `_lastUpdated` search since the last event time. Ingested
   * through the same dedupe; the subscription's position then moves past them. A server
   * that cannot answer now (TransientError) fails the whole notification (503: it resends);
   * one that refuses for good is logged and skipped (nothing better can be done).
   */
  private async recover(
    subscription: FhirSubscriptionSettings,
    state: SubscriptionState,
    from: number,
    to: number | undefined,
    reason: string,
  ): Promise<void> {
    const { log, client } = this.deps;
    const input = this.settings.input;
    log.warn('fhir.gap_detected', { input, controlId: subscription.id, reason, count: to === undefined ? undefined : to - from + 1 });
    let recovered = false;
    if (await this.supportsEvents()) {
      try {
        const bundle = await client.subscriptionEvents(subscription.id, from, to, { content: 'full-resource' });
        const n = readNotification(bundle);
        if (n.kind === 'topic') {
          const numbers = new Set(n.events.map((e) => e.eventNumber));
          this.checkReferences(n);
          await this.ingestEvents(subscription, state, n, Buffer.alloc(0), bundle as Record<string, unknown>, this.now().toISOString(), true);
          const expected = to === undefined ? 0 : to - from + 1;
          recovered = numbers.size >= expected;
          if (!recovered) log.warn('fhir.recovery_incomplete', { input, controlId: subscription.id, reason: 'events_expired', count: expected - numbers.size });
        }
      } catch (error) {
        if (error instanceof TransientError || error instanceof CommitFailed) throw error;
        log.warn('fhir.recovery_failed', { input, controlId: subscription.id, reason: codeOf(error) });
      }
    }
    if (!recovered) {
      try {
        await this.serial('search', () => this.searchChanges(state.at ?? state.seen));
      } catch (error) {
        if (error instanceof TransientError || error instanceof CommitFailed) throw error;
        log.error('fhir.recovery_failed', { input, controlId: subscription.id, reason: codeOf(error) });
      }
    }
    if (to !== undefined) state.n = Math.max(state.n ?? 0, to);
    log.info('fhir.recovered', { input, controlId: subscription.id, reason, status: recovered ? 'events' : 'search' });
  }

  private supportsEvents(): Promise<boolean> {
    this.eventsSupport ??= this.deps.client.capabilities().then(supportsSubscriptionEvents);
    // A failed look-up is asked again next time.
    this.eventsSupport.catch(() => {
      this.eventsSupport = undefined;
    });
    return this.eventsSupport;
  }

  /**
   * Searches each configured type for what changed since `since` (else the per-type search
   * cursor, else now − look-back) and ingests it. Run under the 'search' lock.
   */
  private async searchChanges(since: string | undefined): Promise<Batch> {
    const total = this.newBatch();
    for (const type of this.settings.searchResources) {
      const cursorKey = cursorKeys.search(this.settings.input, type);
      const stored = await this.deps.store.getCursor(cursorKey);
      const from =
        since ?? stored ?? new Date(this.now().getTime() - this.settings.searchLookbackSeconds * 1000).toISOString();
      const result = await this.searchSince(type, from, SEARCH_PAGE_SIZE, SEARCH_MAX_PAGES);
      const batch = await this.ingestResources(result.resources, result.included, { cursorKey });
      await this.advanceCursor(cursorKey, stored, result.resources);
      total.records.push(...batch.records);
      total.duplicates += batch.duplicates;
    }
    return total;
  }

  /**
   * `Type?_lastUpdated=ge<since>&_sort=_lastUpdated`, with the patients included when the
   * server supports _include. `ge`, not `gt`: several versions can share one lastUpdated
   * and a page can end between them; what is seen twice is deduped by id + versionId.
   */
  async searchSince(type: string, since: string, pageSize: number, maxPages: number): Promise<SearchResult> {
    const params: Record<string, string | number> = {
      _lastUpdated: `ge${new Date(instantMs(since)).toISOString()}`,
      _sort: '_lastUpdated',
      _count: pageSize,
    };
    if (type === 'Appointment') params._include = 'Appointment:patient';
    if (type === 'Encounter') params._include = 'Encounter:subject';
    const result = await this.deps.client.search(type, params, { maxPages });
    if (result.incomplete !== undefined) {
      this.deps.log.warn('fhir.search_incomplete', { input: this.settings.input, messageType: type, reason: result.incomplete });
    }
    return result;
  }

  /** Moves a cursor forward (never back) to the newest lastUpdated among `resources`. */
  async advanceCursor(key: string, stored: string | undefined, resources: readonly FhirResource[]): Promise<void> {
    let newest = stored;
    for (const r of resources) newest = laterInstant(newest, r.meta?.lastUpdated);
    if (newest !== undefined && newest !== stored) {
      try {
        await this.deps.store.setCursor(key, newest);
      } catch {
        throw new CommitFailed();
      }
    }
  }

  // --- heartbeat silence ------------------------------------------------------------------

  /**
   * Checks every subscription with a heartbeat period: silent for more than twice the
   * period (measured from the last notification, the last silence recovery or the start of
   * this process) → warning `heartbeat_silence` and a recovery of everything after the last
   * event seen. Called by the monitor's timer; tests call it with an injected clock.
   * Resolves with the ids of the subscriptions it recovered.
   */
  async checkHeartbeats(): Promise<string[]> {
    const recovered: string[] = [];
    for (const subscription of this.subscriptions.values()) {
      if (subscription.heartbeatPeriodSeconds <= 0) continue;
      const state = await this.state(subscription.id);
      const last = Math.max(instantMs(state.seen), instantMs(state.recoveredAt), instantMs(this.startedAt));
      const now = this.now();
      if (now.getTime() - last <= 2 * subscription.heartbeatPeriodSeconds * 1000) continue;
      this.deps.log.warn('fhir.heartbeat_missed', {
        input: this.settings.input,
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
          await this.recover(subscription, current, (current.n ?? 0) + 1, undefined, 'heartbeat_silence');
          current.recoveredAt = this.now().toISOString();
          await this.saveState(subscription.id, current);
        });
        recovered.push(subscription.id);
      } catch (error) {
        this.deps.log.error('fhir.recovery_failed', { input: this.settings.input, controlId: subscription.id, reason: codeOf(error) });
      }
    }
    return recovered;
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

  /** Stops the monitor and waits for work in progress. */
  async stop(): Promise<void> {
    this.monitor?.clear();
    this.monitor = undefined;
    await Promise.allSettled([...this.locks.values()]);
  }

  // --- plumbing ---------------------------------------------------------------------------

  private newBatch(receivedAt = this.now().toISOString()): Batch {
    return { receivedAt, overlay: new Map(), records: [], duplicates: 0 };
  }

  private baseRecord(
    batch: Batch,
    fields: Pick<InboundRecord, 'controlId' | 'contentHash' | 'raw' | 'messageType'>,
  ): InboundRecord {
    return {
      input: this.settings.input,
      format: 'fhir',
      sender: this.sender,
      ...fields,
      status: MessageStatus.Accepted,
      ack: '200',
      ackCode: '200',
      receivedAt: batch.receivedAt,
      triggers: [],
      subjectStates: [],
    };
  }

  private async known(controlId: string): Promise<boolean> {
    try {
      return (await this.deps.store.findMessage(this.sender, controlId)) !== undefined;
    } catch {
      throw new CommitFailed();
    }
  }

  /**
   * Normalizes one notification (one event or one resource) into `record`, fetching from
   * the configured server what it misses (id-only focus, patients): at most three rounds
   * (focus → its patient → a merged patient's survivor). A resource that cannot give the
   * trigger it should, or whose focus/patient the server no longer has (404, 410, 403), is
   * recorded as rejected with the reason, not refused: resending would not change it.
   */
  private async normalizeInto(
    record: InboundRecord,
    batch: Batch,
    notification: Notification,
    subjects: ReadonlyArray<{ type: string; id: string }>,
    fetched: Map<string, FhirResource>,
    foreign: 'refuse' | 'record',
    epoch = 0,
  ): Promise<void> {
    const previous = await this.previousStates(batch, subjects);
    let result: NotificationNormalizeResult | undefined;
    for (let round = 0; round < FETCH_ROUNDS; round++) {
      try {
        result = normalizeNotification(notification, {
          receivedAt: batch.receivedAt,
          sender: this.sender,
          previous: (kind, id) => batch.overlay.get(`${kind}/${id}`) ?? previous.get(`${kind}/${id}`),
          fetched,
          epoch,
        });
      } catch (error) {
        if (!(error instanceof FhirNormalizeError)) throw error;
        record.status = MessageStatus.Rejected;
        record.reason = error.code;
        this.deps.log.warn('fhir.not_normalizable', { input: this.settings.input, controlId: record.controlId, reason: error.code });
        return;
      }
      if (result.missing.length === 0) break;
      try {
        await this.fetchAll(result.missing, fetched);
      } catch (error) {
        if (error instanceof Refusal && foreign === 'refuse') throw error;
        if (!(error instanceof Refusal) && !(error instanceof PermanentError)) throw error;
        record.status = MessageStatus.Rejected;
        record.reason = codeOf(error);
        this.deps.log.warn('fhir.not_resolvable', { input: this.settings.input, controlId: record.controlId, reason: record.reason });
        return;
      }
      result = undefined;
    }
    if (result === undefined) {
      record.status = MessageStatus.Rejected;
      record.reason = 'fhir_references_unresolved';
      return;
    }
    record.triggers = result.triggers;
    record.subjectStates = result.states;
    for (const s of result.states) batch.overlay.set(`${s.kind}/${s.id}`, s);
  }

  /** Every reference is checked before the first request: one outside the server refuses all. */
  private async fetchAll(references: readonly string[], fetched: Map<string, FhirResource>): Promise<void> {
    for (const ref of references) {
      try {
        parseFhirReference(ref, this.sender);
      } catch (error) {
        if (error instanceof FhirReferenceRefused) {
          throw new Refusal(422, 'Reference outside the configured server', error.code, error.message);
        }
        throw error;
      }
    }
    for (const ref of references) {
      const resource = await this.deps.client.readReference(ref);
      fetched.set(ref, resource);
      addResource(fetched, resource);
    }
  }

  private async previousStates(
    batch: Batch,
    subjects: ReadonlyArray<{ type: string; id: string }>,
  ): Promise<Map<string, SubjectState>> {
    const out = new Map<string, SubjectState>();
    for (const { type, id } of subjects) {
      const kind = type === 'Appointment' ? 'appointment' : type === 'Encounter' ? 'encounter' : undefined;
      if (kind === undefined || id === '' || batch.overlay.has(`${kind}/${id}`)) continue;
      try {
        const state = await this.deps.store.getSubjectState(kind, id);
        if (state) out.set(`${kind}/${id}`, state);
      } catch {
        throw new CommitFailed();
      }
    }
    return out;
  }

  private async commit(batch: Batch, sequential = false): Promise<void> {
    let pending = batch.records.filter((r) => !this.settled.has(r));
    if (pending.length === 0) return;
    let outcomes: PromiseSettledResult<Awaited<ReturnType<Store['commitInbound']>>>[];
    if (sequential) {
      outcomes = [];
      for (const record of pending) {
        const [outcome] = await Promise.allSettled([this.deps.store.commitInbound(record)]);
        outcomes.push(outcome!);
        if (outcome!.status === 'rejected') break;
      }
      pending = pending.slice(0, outcomes.length);
      batch.records = batch.records.filter((r) => this.settled.has(r) || pending.includes(r));
    } else {
      outcomes = await Promise.allSettled(pending.map((r) => this.deps.store.commitInbound(r)));
    }
    const fresh: Trigger[] = [];
    const kept: InboundRecord[] = [];
    let failed = false;
    outcomes.forEach((o, i) => {
      const record = pending[i]!;
      if (o.status === 'rejected') {
        failed = true;
        return;
      }
      this.settled.add(record);
      if (o.value.outcome === 'stored') {
        kept.push(record);
        if (record.status === MessageStatus.Accepted) fresh.push(...record.triggers);
      } else {
        // Lost a race with a parallel copy (duplicate), or same key with other content
        // (quarantined by the store, triggers not applied).
        batch.duplicates += 1;
        if (o.value.outcome === 'conflict') {
          this.deps.log.warn('fhir.quarantined', { input: this.settings.input, controlId: record.controlId, reason: 'conflicting_resend' });
        }
      }
    });
    // Records that did not store anything give no triggers to the caller.
    const done = new Set(kept);
    batch.records = batch.records.filter((r) => !pending.includes(r) || done.has(r));
    if (failed) throw new CommitFailed();
    if (fresh.length > 0) await this.deps.onCommitted?.(fresh);
  }

  private async state(id: string): Promise<SubscriptionState> {
    const cached = this.states.get(id);
    if (cached) return cached;
    let text: string | undefined;
    try {
      text = await this.deps.store.getCursor(cursorKeys.subscription(this.settings.input, id));
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
      await this.deps.store.setCursor(cursorKeys.subscription(this.settings.input, id), JSON.stringify(state));
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
    return this.serial(`subscription:${id}`, async () => {
      try {
        return await work();
      } catch (error) {
        this.states.delete(id);
        throw error;
      }
    });
  }

  /** Runs `work` after every earlier work with the same key (per subscription, per resource). */
  serial<T>(key: string, work: () => Promise<T>): Promise<T> {
    const before = this.locks.get(key) ?? Promise.resolve();
    const run = before.then(work, work);
    const tail = run.catch(() => undefined);
    this.locks.set(key, tail);
    void tail.then(() => {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    });
    return run;
  }
}

function addResource(map: Map<string, FhirResource>, resource: FhirResource): void {
  if (typeof resource.id === 'string') map.set(`${resource.resourceType}/${resource.id}`, resource);
}

function laterInstant(a: string | undefined, b: string | undefined): string | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return instantMs(b) > instantMs(a) ? b : a;
}

function codeOf(error: unknown): string {
  if (error instanceof Refusal) return error.reason;
  if (typeof error === 'object' && error !== null && typeof (error as { code?: unknown }).code === 'string') {
    return (error as { code: string }).code;
  }
  return 'unexpected_error';
}

/**
 * The part of a multi-event notification Bundle that concerns one event: the status with
 * only this event, and the entries of its focus and context. Kept as that event's raw body.
 */
function eventSlice(bundle: Record<string, unknown>, event: NotificationEvent): Buffer {
  const entries = Array.isArray(bundle.entry) ? (bundle.entry as Array<Record<string, unknown>>) : [];
  const [statusEntry, ...rest] = entries;
  const statusResource = { ...((statusEntry?.resource as Record<string, unknown> | undefined) ?? {}) };
  const numberOf = (value: unknown): number => Number(value);
  if (Array.isArray(statusResource.parameter)) {
    statusResource.parameter = (statusResource.parameter as Array<Record<string, unknown>>).filter((p) => {
      if (p?.name !== 'notification-event') return true;
      const parts = Array.isArray(p.part) ? (p.part as Array<Record<string, unknown>>) : [];
      const numberPart = parts.find((x) => x?.name === 'event-number');
      return numberOf(numberPart?.valueString ?? numberPart?.valueInteger64 ?? numberPart?.valueUnsignedInt ?? numberPart?.valueInteger) === event.eventNumber;
    });
  }
  if (Array.isArray(statusResource.notificationEvent)) {
    statusResource.notificationEvent = (statusResource.notificationEvent as Array<Record<string, unknown>>).filter(
      (e) => numberOf(e?.eventNumber) === event.eventNumber,
    );
  }
  const wanted = [event.focus, ...event.additionalContext]
    .filter((r): r is string => r !== undefined)
    .map((r) => referenceParts(r))
    .filter((p) => p !== undefined)
    .map((p) => `${p.type}/${p.id}`);
  const related = rest.filter((entry) => {
    const url = typeof entry?.fullUrl === 'string' ? entry.fullUrl : undefined;
    const parts = url ? referenceParts(url) : undefined;
    const resource = entry?.resource as FhirResource | undefined;
    const key = parts ? `${parts.type}/${parts.id}` : resource ? `${resource.resourceType}/${String(resource.id)}` : '';
    return wanted.includes(key);
  });
  return Buffer.from(
    JSON.stringify({
      resourceType: 'Bundle',
      type: bundle.type,
      ...(bundle.timestamp !== undefined ? { timestamp: bundle.timestamp } : {}),
      entry: [{ ...statusEntry, resource: statusResource }, ...related],
    }),
  );
}
