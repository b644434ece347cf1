// Turning what a FHIR server sent into stored records: one InboundRecord per event or
// resource version, normalized with what the configured server must still give (id-only
// focus, patients), and committed so that the caller answers 2xx only after the store did
// (docs/architecture.md invariant 1). FhirIngest decides what to store; this module stores it.
import { createHash } from 'node:crypto';
import { PermanentError, TransientError } from '../errors.ts';
import { FhirReferenceRefused, parseFhirReference } from '../fhir/client.ts';
import { FhirNormalizeError, normalizeNotification, type NotificationNormalizeResult } from '../fhir/normalize.ts';
import type { FhirResource, Notification } from '../fhir/notification.ts';
import { redactJoinUrlsIn } from '../fhir/virtual-service.ts';
import type { Logger } from '../log.ts';
import { PENDING_REASON, type InboundRecord, type Store, type StoredMessage, type SubjectState } from '../store/store.ts';
import { MessageStatus, type Trigger } from '../types.ts';
import { joinUrls, sealJoins, type JoinVault } from '../video/seal.ts';
import { rawQuotaFor, type RejectedRawLimits } from './raw-quota.ts';

/** What the records need of the FHIR client. */
export interface FhirReader {
  readonly baseUrl: string;
  readReference(reference: string): Promise<FhirResource>;
}

export interface FhirRecordsDeps {
  store: Store;
  log: Logger;
  client: FhirReader;
  now: () => Date;
  /** Called after a commit that created triggers (routing hooks in here). */
  onCommitted?: (triggers: Trigger[]) => void | Promise<void>;
  /** Bounds the raw bytes kept by records stored rejected or quarantined (raw-quota.ts). */
  rejectedRaw?: RejectedRawLimits;
  /** Seals video-visit join URLs for the store (docs/video.md); without it they are not kept. */
  video?: JoinVault;
}

/** Refusal of the notification as sent (4xx, nothing stored). */
export class Refusal extends Error {
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
export class CommitFailed extends Error {}


const FETCH_ROUNDS = 3;

export interface Batch {
  receivedAt: string;
  /** Subject states produced earlier in this batch (not yet readable from the store). */
  overlay: Map<string, SubjectState>;
  records: InboundRecord[];
  duplicates: number;
  /** Events left pending (stored now or before): their triggers are owed. */
  pending: number;
}

export class FhirRecords {
  /** Records whose commit already settled (a batch may be committed in steps). */
  private readonly settled = new WeakSet<InboundRecord>();
  private readonly now: () => Date;

  constructor(
    private readonly input: string,
    private readonly deps: FhirRecordsDeps,
  ) {
    this.now = deps.now;
  }

  /** source.sender of everything this input stores: the configured server. */
  get sender(): string {
    return this.deps.client.baseUrl;
  }

  newBatch(receivedAt = this.now().toISOString()): Batch {
    return { receivedAt, overlay: new Map(), records: [], duplicates: 0, pending: 0 };
  }

  baseRecord(
    batch: Batch,
    fields: Pick<InboundRecord, 'controlId' | 'contentHash' | 'raw' | 'messageType'>,
  ): InboundRecord {
    return {
      input: this.input,
      format: 'fhir',
      sender: this.sender,
      ...fields,
      status: MessageStatus.Accepted,
      ack: '200',
      ackCode: '200',
      receivedAt: batch.receivedAt,
      triggers: [],
      subjectStates: [],
      // Counted against the server's raw-bytes quota when the store keeps it rejected (a
      // refused request, a record without its trigger) or quarantined; accepted: never.
      ...rawQuotaFor(this.deps.rejectedRaw, 'sender', this.sender),
    };
  }

  /** Says when the store kept only the first bytes of a record (the raw-bytes quota). */
  logRawCut(committed: Awaited<ReturnType<Store['commitInbound']>>): void {
    if (committed.outcome !== 'duplicate' && committed.rawBytes !== undefined) {
      this.deps.log.warn('fhir.raw_truncated', { input: this.input, reason: 'rejected_raw_quota', count: committed.rawBytes });
    }
  }

  /** The stored record with this control id, if any. */
  async find(controlId: string): Promise<StoredMessage | undefined> {
    try {
      return await this.deps.store.findMessage(this.sender, controlId);
    } catch {
      throw new CommitFailed();
    }
  }

  async known(controlId: string): Promise<boolean> {
    return (await this.find(controlId)) !== undefined;
  }

  /**
   * Keeps `record` as accepted before its triggers could be made (store.ts PENDING_REASON,
   * answered 202): `code` says why (the FHIR client's reason code).
   */
  markPending(record: InboundRecord, code: string): void {
    record.status = MessageStatus.Accepted;
    record.reason = PENDING_REASON;
    record.ack = '202';
    record.ackCode = '202';
    record.triggers = [];
    record.subjectStates = [];
    delete record.videoJoins;
    this.deps.log.warn('fhir.trigger_pending', { input: this.input, controlId: record.controlId, reason: code });
  }

  /**
   * Normalizes one notification (one event or one resource) into `record`, fetching from
   * the configured server what it misses (id-only focus, patients): at most three rounds
   * (focus → its patient → a merged patient's survivor). A resource that cannot give the
   * trigger it should, or whose focus/patient the server no longer has (404, 410, 403), is
   * recorded as rejected with the reason, not refused: resending would not change it.
   */
  async normalizeInto(
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
        this.deps.log.warn('fhir.not_normalizable', { input: this.input, controlId: record.controlId, reason: error.code });
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
        this.deps.log.warn('fhir.not_resolvable', { input: this.input, controlId: record.controlId, reason: record.reason });
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
    if (result.joins !== undefined && result.joins.length > 0) {
      // docs/video.md: join URLs are committed sealed, with the record, and the stored copy of
      // the message is redacted of them (FHIR dedupe keys are ids, not these bytes).
      record.videoJoins = sealJoins(this.deps.video, result.joins);
      record.raw = redactJoinUrlsIn(record.raw, joinUrls(result.joins));
    }
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

  async commit(batch: Batch, sequential = false): Promise<void> {
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
      this.logRawCut(o.value);
      if (o.value.outcome === 'stored') {
        kept.push(record);
        if (record.status === MessageStatus.Accepted) fresh.push(...record.triggers);
      } else {
        // Lost a race with a parallel copy (duplicate), or same key with other content
        // (quarantined by the store, triggers not applied).
        batch.duplicates += 1;
        if (o.value.outcome === 'conflict') {
          this.deps.log.warn('fhir.quarantined', { input: this.input, controlId: record.controlId, reason: 'conflicting_resend' });
        }
      }
    });
    // Records that did not store anything give no triggers to the caller.
    const done = new Set(kept);
    batch.records = batch.records.filter((r) => !pending.includes(r) || done.has(r));
    if (failed) throw new CommitFailed();
    if (fresh.length > 0) await this.deps.onCommitted?.(fresh);
  }
}

export function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export function addResource(map: Map<string, FhirResource>, resource: FhirResource): void {
  if (typeof resource.id === 'string') map.set(`${resource.resourceType}/${resource.id}`, resource);
}

/** A failure of the configured FHIR server, or of a request to it (not of the store, not a refusal). */
export function isServerProblem(error: unknown): boolean {
  return error instanceof TransientError || error instanceof PermanentError;
}

export function codeOf(error: unknown): string {
  if (error instanceof Refusal) return error.reason;
  if (typeof error === 'object' && error !== null && typeof (error as { code?: unknown }).code === 'string') {
    return (error as { code: string }).code;
  }
  return 'unexpected_error';
}
