// FHIR ingest: what a FHIR server POSTs (or what CareRelay searched for) in, triggers out —
// and the 2xx only after the notification, its triggers and the subscription's position
// are durably committed (docs/architecture.md invariant 1, docs/reliability.md promises 1, 3, 8).
//
//   strict UTF-8, parse (no __proto__/constructor keys, an object) ─▶ readNotification
//     ─▶ known subscription? ─▶ references only on the configured server? ─▶ gap? owe it
//     ─▶ per event: seen? ─▶ fetch what is missing (id-only focus, patients) ─▶ normalize
//     ─▶ commit ─▶ 2xx (202 when an event is pending) ─▶ background recovery of what is owed
//
// One stored record per notification event (controlId `<subscription>#<event-number>`, see
// numbering restarts in fhir-subscriptions.ts), per resource version (`Type/id/_history/v`: R4 criteria
// rest-hooks, searches, polling), or per handshake/heartbeat (zero triggers). The sender is
// the configured server's base URL, so the same event or version seen twice — resent,
// recovered, polled — is one record.
//
// Topic-based subscriptions — event numbering, gaps, pending events, numbering restarts and
// their background recovery — are fhir-subscriptions.ts; this file reads every body, and
// stores resources (R4 rest-hooks, searches, polls) itself.
//
// Logs carry ids and reason codes only; refusal texts go to the caller, never to logs.
//
// Beside this file: fhir-records.ts turns events and resources into stored records (fetch,
// normalize, commit); fhir-state.ts is a subscription's durable position, its epochs and
// what it owes; fhir-recovery.ts schedules the recovery of what is owed.
import { PermanentError, TransientError } from '../errors.ts';
import type { SearchResult } from '../fhir/client.ts';
import { decodeFhirJson, FhirEncodingError, parseFhirJson } from '../fhir/json.ts';
import { resourceMessageId, TRIGGER_SOURCE_TYPES } from '../fhir/normalize.ts';
import { FhirNotificationError, readNotification, type FhirResource, type Notification } from '../fhir/notification.ts';
import type { Logger } from '../log.ts';
import type { Store } from '../store/store.ts';
import { MessageStatus, type Trigger } from '../types.ts';
import type { JoinVault } from '../video/seal.ts';
import { addResource, CommitFailed, FhirRecords, Refusal, sha256, type Batch } from './fhir-records.ts';
import { cursorKeys, instantMs, laterInstant, type SubscriptionState } from './fhir-state.ts';
import { FhirSubscriptions, type FhirServerClient, type FhirSubscriptionSettings } from './fhir-subscriptions.ts';
import type { RejectedRawLimits } from './raw-quota.ts';
import type { Timer } from './timer.ts';

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
  /** Seals video-visit join URLs for the store (docs/video.md); without it they are not kept. */
  video?: JoinVault;
  /** Jitter source in [0, 1) for the recovery backoff; default Math.random. */
  random?: () => number;
  /** Timer of the background recovery; injected by tests. */
  timer?: Timer;
  /** Bounds the raw bytes kept by refused requests and rejected records (raw-quota.ts). */
  rejectedRaw?: RejectedRawLimits;
}

export type FhirIngestResult =
  /**
   * Committed (or already known): answer 2xx — 202 when `pending` events could not give
   * their triggers yet (they are stored, and made by the background recovery).
   */
  | { kind: 'accepted'; triggers: Trigger[]; stored: number; duplicates: number; pending: number }
  /**
   * Never acceptable as sent: 4xx with a problem body; nothing of it was stored (the caller
   * records the refusal: recordRefusal).
   */
  | { kind: 'refused'; status: 400 | 404 | 422; title: string; detail: string; reason: string; messageType?: string }
  /** Nothing durable (store or FHIR server unavailable): 503 + Retry-After; the sender resends. */
  | { kind: 'unavailable'; retryAfterSeconds: number; reason: string; detail: string; messageType?: string };

/** A refused request as recorded (FhirIngest.recordRefusal). */
export interface FhirRefusalRecord {
  /** The HTTP status answered (kept as the ACK code). */
  status: number;
  /** Reason code (safe to log). */
  reason: string;
  /** The problem body answered. */
  ack: string;
  /** The body, when it was read and authenticated; absent otherwise. */
  raw?: Buffer;
  /** resourceType or notification type, when the body was read that far. */
  messageType?: string;
}


/** Resources read per search type at most in one recovery/changes search (pages × _count). */
const SEARCH_PAGE_SIZE = 100;
const SEARCH_MAX_PAGES = 20;
const RETRY_AFTER_SECONDS = 5;

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
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly records: FhirRecords;
  private readonly topics: FhirSubscriptions;

  constructor(settings: FhirIngestSettings, deps: FhirIngestDeps) {
    this.settings = settings;
    this.deps = deps;
    this.now = deps.now ?? (() => new Date());
    this.records = new FhirRecords(settings.input, { ...deps, now: this.now });
    this.topics = new FhirSubscriptions(settings.input, settings.subscriptions, {
      store: deps.store,
      log: deps.log,
      client: deps.client,
      records: this.records,
      now: this.now,
      random: deps.random ?? Math.random,
      ...(deps.timer !== undefined ? { timer: deps.timer } : {}),
      search: (since) => this.serial('search', () => this.searchChanges(since)),
      serial: (key, work) => this.serial(key, work),
      ...(deps.onConsent ? { onConsent: deps.onConsent } : {}),
    });
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
    let messageType: string | undefined;
    try {
      let body: unknown;
      let text: string;
      try {
        text = decodeFhirJson(raw);
      } catch (error) {
        if (!(error instanceof FhirEncodingError)) throw error;
        throw new Refusal(400, 'Invalid encoding', error.code, `the body ${error.message.slice('the bytes '.length)}`);
      }
      if (text.trim() !== '') {
        try {
          body = parseFhirJson(text);
        } catch (error) {
          throw new Refusal(400, 'Invalid JSON', 'invalid_json', `the body is not acceptable JSON (${(error as Error).message})`);
        }
        // Only an object is a FHIR resource: a JSON string (which would be read again as
        // JSON, past the checks above), null (which would read as "no body" and start a
        // search), a number or an array is refused.
        if (typeof body !== 'object' || body === null || Array.isArray(body)) {
          const got = body === null ? 'null' : Array.isArray(body) ? 'an array' : `a ${typeof body}`;
          throw new Refusal(400, 'Not a FHIR resource', 'not_a_resource', `the body is JSON ${got}; send a FHIR resource (a JSON object with resourceType)`);
        }
        const resourceType = (body as { resourceType?: unknown }).resourceType;
        if (typeof resourceType === 'string') messageType = resourceType.slice(0, 64);
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
      if (notification.kind === 'topic') messageType = notification.type;
      switch (notification.kind) {
        case 'empty':
          return this.accepted(await this.serial('search', () => this.searchChanges(undefined)));
        case 'resource':
          return this.accepted(await this.handleResource(notification.resource, raw));
        case 'topic': {
          const batch = await this.topics.handle(notification, raw, body as Record<string, unknown>);
          // What the notification left owed (a gap, a pending event) starts now, after the answer.
          this.topics.kick();
          return this.accepted(batch);
        }
        default:
          notification satisfies never;
          throw new Error('unreachable');
      }
    } catch (error) {
      // Positions held in memory may be ahead of what was committed (a refusal or a failure
      // part-way through a notification): reload them from the store.
      this.topics.forgetPositions();
      if (error instanceof Refusal) {
        log.warn('fhir.refused', { input, reason: error.reason, status: error.status });
        return { kind: 'refused', status: error.status, title: error.title, detail: error.message, reason: error.reason, messageType };
      }
      if (error instanceof CommitFailed) {
        log.error('fhir.commit_failed', { input });
        return {
          kind: 'unavailable',
          retryAfterSeconds: RETRY_AFTER_SECONDS,
          reason: 'store_unavailable',
          detail: 'the notification could not be committed now (store_unavailable); resend it later',
          messageType,
        };
      }
      if (error instanceof TransientError) {
        log.warn('fhir.server_unavailable', { input, code: error.code });
        const retry = error.retryAfterMs !== undefined ? Math.ceil(error.retryAfterMs / 1000) : RETRY_AFTER_SECONDS;
        return {
          kind: 'unavailable',
          retryAfterSeconds: Math.max(1, retry),
          reason: error.code,
          detail: `the configured FHIR server did not answer what this notification needs (${error.code}); resend it later`,
          messageType,
        };
      }
      if (error instanceof PermanentError) {
        // The configured server refused what CareRelay asked it (a search answered 400 or
        // 403…): CareRelay's settings must change, not the notification, so never a 4xx.
        log.error('fhir.server_refused', { input, reason: error.code });
        return {
          kind: 'unavailable',
          retryAfterSeconds: RETRY_AFTER_SECONDS,
          reason: error.code,
          detail: `the configured FHIR server refused what CareRelay asked to handle this notification (${error.code}); resend it later`,
          messageType,
        };
      }
      throw error;
    }
  }

  /**
   * Records a refused request (api/fhir-routes.ts): status `rejected`, the HTTP status as
   * ACK code and the problem body as ACK, like an HL7 reject; no control id, so nothing
   * about it makes a resend a duplicate. Never throws: when the store cannot write (the
   * very reason of a 503, often), the refusal is answered all the same.
   */
  async recordRefusal(refusal: FhirRefusalRecord): Promise<void> {
    const raw = refusal.raw ?? Buffer.alloc(0);
    const batch = this.records.newBatch();
    const record = this.records.baseRecord(batch, { controlId: '', contentHash: sha256(raw), raw, messageType: refusal.messageType ?? '' });
    record.status = MessageStatus.Rejected;
    record.reason = refusal.reason;
    record.ack = refusal.ack;
    record.ackCode = String(refusal.status);
    try {
      this.records.logRawCut(await this.deps.store.commitInbound(record));
    } catch {
      this.deps.log.error('fhir.refusal_not_recorded', { input: this.settings.input, status: refusal.status, reason: refusal.reason });
    }
  }

  private accepted(batch: Batch): FhirIngestResult {
    const triggers = batch.records.flatMap((r) => r.triggers);
    return { kind: 'accepted', triggers, stored: batch.records.length, duplicates: batch.duplicates, pending: batch.pending };
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
    const batch = this.records.newBatch();
    const fetched = new Map<string, FhirResource>();
    for (const r of included) addResource(fetched, r);
    const ordered = [...resources]
      .map((r) => this.withVersionKey(r, batch.receivedAt))
      .sort((a, b) => instantMs(a.meta?.lastUpdated) - instantMs(b.meta?.lastUpdated));
    for (const resource of ordered) {
      const controlId = resourceMessageId(resource);
      if (await this.records.known(controlId)) {
        batch.duplicates += 1;
        continue;
      }
      const record = this.records.baseRecord(batch, {
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
        await this.records.normalizeInto(record, batch, { kind: 'resource', resource, resources: resourceMap }, [ref], fetched, options.foreign ?? 'record');
      }
      batch.records.push(record);
    }
    // With a cursor, one record at a time: a record that fails must not be overtaken by a
    // later one whose cursor would then skip it.
    await this.records.commit(batch, options.cursorKey !== undefined);
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

  /**
   * Searches each configured type for what changed since `since` (else the per-type search
   * cursor, else now − look-back) and ingests it. Run under the 'search' lock.
   */
  private async searchChanges(since: string | undefined): Promise<Batch> {
    const total = this.records.newBatch();
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

  /**
   * The server's waitlist (docs/waitlist.md "Sources in the EHR"): `Appointment?status=waitlist`
   * with the patients included, ingested like any search — an entry new or changed since it was
   * last seen is committed and its trigger (status waitlist) reaches the waitlist; one seen before
   * is a duplicate. Called by the waitlist before a wave.
   */
  async searchWaitlist(): Promise<void> {
    const result = await this.deps.client.search('Appointment', { status: 'waitlist', _include: 'Appointment:patient', _count: SEARCH_PAGE_SIZE }, { maxPages: SEARCH_MAX_PAGES });
    if (result.incomplete !== undefined) this.deps.log.warn('fhir.search_incomplete', { input: this.settings.input, messageType: 'Appointment', reason: result.incomplete });
    await this.ingestResources(result.resources, result.included, {});
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


  // --- topic subscriptions (fhir-subscriptions.ts) --------------------------------------

  /** Checks heartbeat silence now (the monitor's tick; tests call it with an injected clock). */
  checkHeartbeats(): Promise<string[]> {
    return this.topics.checkHeartbeats();
  }

  /** Runs checkHeartbeats every half of the shortest heartbeat period; the timer is injectable. */
  startHeartbeatMonitor(setIntervalFn?: (fn: () => void, ms: number) => { clear(): void }): void {
    this.topics.startHeartbeatMonitor(setIntervalFn);
  }

  /** Starts the heartbeat monitor and resumes the work a previous run left owed. */
  start(): void {
    this.topics.start();
  }

  /** Resolves once no recovery is running (work in backoff waits for its time). */
  recoveryIdle(): Promise<void> {
    return this.topics.recoveryIdle();
  }

  /** Runs every subscription's owed work now, backoff or not. */
  recoverNow(): Promise<void> {
    return this.topics.recoverNow();
  }

  /** Each subscription's position, what it still owes and its recovery state (admin API). */
  subscriptionStates(): Promise<Array<{ id: string; state: SubscriptionState }>> {
    return this.topics.subscriptionStates();
  }

  /** Stops the monitor and the recovery, and waits for work in progress. */
  async stop(): Promise<void> {
    await this.topics.stop();
    await Promise.allSettled([...this.locks.values()]);
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

