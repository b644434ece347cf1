// The Store interface (docs/architecture.md "Interfaces"). Workers see only this; the embedded
// SQLite backend and the PostgreSQL backend implement it and pass one conformance suite
// (store/conformance.ts).
import type { ReplyOffer } from '../pipeline/reply.ts';
import { MessageStatus, TriggerType, type AckCode, type Channel, type ConsentEvent, type ConsentSource, type ContactHolding, type Delivery, type DeliveryReceipt, type Purpose, type ReplyAction, type Trigger } from '../types.ts';

/** Everything about one inbound message that is committed before it is acknowledged. */
export interface InboundRecord {
  /** Connector instance name (connectors/*.yaml); for an SMS reply, the SMS output it came to. */
  input: string;
  /** `sms`: a patient's SMS reply that is not a keyword (workers/replies.ts). */
  format: InboundFormat;
  /** HL7: MSH-3^MSH-4 ("EPIC^GHH"); FHIR: base URL or subscription id. Empty when unparseable. */
  sender: string;
  /** HL7: MSH-10; FHIR: subscription#event-number or Type/id/_history/v. Empty when absent. */
  controlId: string;
  /** "SIU^S12", "ADT^A04", "Appointment"… Empty when unparseable. */
  messageType: string;
  /** sha256 hex of the raw bytes: same sender + controlId + hash = the same message. */
  contentHash: string;
  raw: Buffer;
  /**
   * The length as received when `raw` holds only the message's first bytes (a rejected
   * message past the raw-bytes quota, workers/raw-quota.ts); absent when `raw` is whole.
   */
  rawBytes?: number;
  /**
   * The quota this record's raw bytes count against if the store keeps it as `rejected` or
   * `quarantined` (docs/reliability.md "Bad inputs"; workers/raw-quota.ts). The store does the
   * accounting in the commit's own transaction, from durable counters (RAW_QUOTA_CURSOR), so
   * the quota holds across restarts and across processes sharing the store: a row that fits
   * both the total and its account keeps its bytes whole and adds them to both counters;
   * past either it keeps its first `keepBytes` bytes and its length as received (`rawBytes`).
   * Ignored for rows stored with any other status: nothing accepted is ever cut.
   */
  rawQuota?: RawQuota;
  status: MessageStatus;
  /** The acknowledgment sent back (HL7 ACK text, or an HTTP status summary for FHIR). */
  ack: string;
  ackCode: AckCode | string;
  /** Reason code / text for rejected, ignored and quarantined messages. No patient data. */
  reason?: string;
  /**
   * The acknowledgment for the case where the store finds this control id already used by
   * this sender for a different message (a copy that raced its twin past the caller's own
   * look-up): it is stored with the quarantined copy instead of `ack`, and the caller answers
   * it (the outcome's `message.ack`), so the stored ACK is the one sent. Called inside the
   * commit, only when such a conflict is found (again if the store retries the transaction):
   * a function because building it on every message costs more than the rare case is worth.
   */
  conflictAck?: () => { ack: string; ackCode: AckCode | string };
  receivedAt: string;
  triggers: Trigger[];
  /** State of appointments/encounters after this message (see SubjectState). */
  subjectStates: SubjectState[];
  /**
   * The patient the message is about, kept for search (GET /api/messages?patientId=).
   * Default: the first trigger's patient.id. A refused message has no trigger: its input
   * gives the id its sender wrote (HL7 PID-3), when there is one.
   */
  patientId?: string;
  /**
   * Set when this record is a new attempt at a stored message, made by an operator after
   * review (docs/reliability.md "Reprocess and release"). In the same transaction the store
   * checks that message is still as the attempt expects (see MessageAttempt), marks it
   * replaced by this record and writes the audit entry; this record is never deduplicated
   * against it. When the check fails the commit rejects with StaleAttemptError.
   */
  attemptOf?: MessageAttempt;
  /**
   * Durable cursors (see Store.setCursor) written in the same transaction as this record,
   * only when it is stored (not for a duplicate or a quarantined conflict): a poll page's
   * triggers and the position after it commit together.
   */
  cursors?: Readonly<Record<string, string>>;
  /**
   * An SMS answer to a reply prompt: the store marks the prompt answered in the same
   * transaction, only if it is still open — otherwise the commit rejects with
   * PromptClosedError and nothing is stored (another answer took it first).
   */
  answers?: { promptId: string; answer: ReplyAnswer };
  /**
   * Staff tasks opened in the same transaction (an SMS for the staff inbox); each takes the
   * stored message's id as its `messageId`. A task whose key exists is not opened twice.
   */
  tasks?: ReadonlyArray<NewStaffTask>;
  /**
   * Video-visit join information the message gave (docs/video.md), sealed by the caller: written
   * in the same transaction, only when the record is stored (not for a duplicate or a
   * quarantined copy). A write applies unless what is kept, or the appointment's stored state,
   * reflects a newer event (the asOf rule of subject states); one without `join` deletes it.
   */
  videoJoins?: VideoJoinWrite[];
  /**
   * A yes to a waitlist offer (docs/waitlist.md): the store takes the slot for the offer in the
   * same transaction, only if the slot is still open — otherwise the commit rejects with
   * SlotTakenError and nothing is stored (another yes took it first).
   */
  waitlistClaim?: { slotId: string; offerId: string };
  /**
   * Waitlist offers whose patients this commit tells the slot is taken (its triggers are
   * appointment.waitlist_taken): each goes from `offered` to `taken` in the same transaction, and
   * an offer no longer `offered` (told already, by a late yes or by the claim's notice) rejects the
   * commit with OfferToldError and nothing is stored. So nobody is told twice.
   */
  waitlistTold?: readonly string[];
}

/** Wire formats of stored inbound messages. */
export type InboundFormat = 'hl7v2' | 'fhir' | 'sms' | 'waitlist';

/** See InboundRecord.rawQuota. */
export interface RawQuota {
  /** The sender's account (`sender:EPIC^GHH`, `peer:10.0.0.7`), bounded in length. */
  account: string;
  /** Raw bytes kept whole over all rejected and quarantined rows. */
  totalBytes: number;
  /** Raw bytes kept whole per account. */
  perSenderBytes: number;
  /** Bytes kept of a row past either limit. */
  keepBytes: number;
}

/** Durable cursor holding the bytes kept whole under the raw quota; an account's adds `:<account>`. */
export const RAW_QUOTA_CURSOR = 'quota.rejected-raw-bytes';

/**
 * The reason of a message committed before its triggers could be made (status `accepted`):
 * a FHIR event whose resources the server could not give yet, accepted and kept until a
 * recovery makes them (docs/reliability.md "FHIR events not yet triggered"). Such a
 * message is pending: the next commit of the same sender + control id that is not pending
 * itself completes it (Store.commitInbound).
 */
export const PENDING_REASON = 'trigger_pending';

/** Whether a record or stored message is pending (see PENDING_REASON). */
export function isPending(message: { status: MessageStatus | string; reason?: string }): boolean {
  return message.status === 'accepted' && message.reason === PENDING_REASON;
}

/**
 * How an operator made a new attempt at a stored message:
 * - `reprocess`: a rejected message tried again with its stored bytes (after a configuration
 *   fix). The attempt takes over the message's place as the answer to a resend of those bytes.
 * - `release`: a quarantined copy (same sender and MSH-10 as an original, other bytes)
 *   accepted as a message of its own. The original keeps the dedupe key; a resend of the
 *   released bytes is answered with the attempt's ACK.
 */
export const AttemptKind = {
  Reprocess: 'reprocess',
  Release: 'release',
} as const;
export type AttemptKind = (typeof AttemptKind)[keyof typeof AttemptKind];

/** The status a message must have for each kind of attempt. */
export const ATTEMPT_FROM_STATUS: Readonly<Record<AttemptKind, MessageStatus>> = {
  reprocess: MessageStatus.Rejected,
  release: MessageStatus.Quarantined,
};

export interface MessageAttempt {
  kind: AttemptKind;
  /** The stored message tried again; it must have ATTEMPT_FROM_STATUS[kind] and no attempt yet. */
  messageId: string;
  /** Who asked (the admin token's name), for the audit log. */
  actor: string;
}

/** How a stored message came to be. */
export type MessageOrigin = 'received' | AttemptKind;

export interface StoredMessage {
  /** Store-assigned id, stable, used by GET /api/messages/:id. */
  id: string;
  input: string;
  format: InboundFormat;
  sender: string;
  controlId: string;
  messageType: string;
  contentHash: string;
  status: MessageStatus;
  ack: string;
  ackCode: string;
  reason?: string;
  receivedAt: string;
  triggerIds: string[];
  /** See InboundRecord.patientId. */
  patientId?: string;
  /** Absent for a message as received; `reprocess` / `release` for an operator's attempt. */
  origin?: AttemptKind;
  /** The message this one is an attempt at. */
  replaces?: string;
  /** The attempt made at this message, if any. */
  replacedBy?: string;
}

export interface StoredMessageWithBody extends StoredMessage {
  raw: Buffer;
  /** Length as received when `raw` holds only the first bytes (InboundRecord.rawBytes). */
  rawBytes?: number;
  triggers: Trigger[];
}

/**
 * The last known state of an appointment or encounter. Kept so that an S14 or a FHIR
 * update with a new start becomes `appointment.rescheduled` with `previousStart`, and so
 * that a delivery can be checked as still current at send time.
 */
export interface SubjectState {
  kind: 'appointment' | 'encounter';
  /** appointment.id / encounter.id */
  id: string;
  patientId: string;
  status?: string;
  start?: string;
  end?: string;
  /** The event time this state reflects (trigger occurredAt). */
  asOf: string;
  /** Free-form extra state (e.g. sensitivity labels that stick to an encounter). */
  data?: Record<string, unknown>;
}

/** A video-visit join URL as the store keeps it: sealed by the ingest (video/seal.ts), never in clear. */
export interface SealedJoin {
  /** The key it was sealed with (server.video.keyId): keys rotate without rewriting rows. */
  keyId: string;
  /** Version, IV, tag and ciphertext; opaque to the store. */
  sealed: Buffer;
}

/** The join information of one appointment, as a message gave it (InboundRecord.videoJoins). */
export interface VideoJoinWrite {
  appointmentId: string;
  patientId: string;
  /** The event time it reflects (the appointment state's asOf in the same record). */
  asOf: string;
  /** Absent: the appointment has no join URL now (dropped, or the appointment closed): delete it. */
  join?: SealedJoin;
}

export interface StoredVideoJoin {
  appointmentId: string;
  patientId: string;
  asOf: string;
  join: SealedJoin;
}

/**
 * CareRelay's own link to a video visit, minted when a message showing it is rendered
 * (docs/video.md). Only the SHA-256 of its token is kept: the link cannot be rebuilt from the store.
 */
export interface VideoLink {
  /** SHA-256 of the token, lower-case hex. */
  tokenHash: string;
  appointmentId: string;
  patientId: string;
  /** The delivery whose message carried it. */
  deliveryId: string;
  /** The appointment start it was minted for: once the visit moves, the link is dead. */
  start: string;
  /** IANA zone and language its pages show times and words in. */
  zone?: string;
  language?: string;
  /** ISO instant. */
  mintedAt: string;
}

export type CommitOutcome =
  /**
   * Stored now. `rawBytes`: the row keeps only its first bytes (InboundRecord.rawQuota), this
   * is the length as received.
   */
  | { outcome: 'stored'; message: StoredMessage; rawBytes?: number }
  /** Same sender + controlId + contentHash already stored: nothing new written. */
  | { outcome: 'duplicate'; message: StoredMessage }
  /**
   * Same sender + controlId, different bytes: the new record was stored with status
   * `quarantined` (its triggers and subject states were NOT applied).
   */
  | { outcome: 'conflict'; message: StoredMessage; original: StoredMessage; rawBytes?: number };

export interface MessageQuery {
  sender?: string;
  controlId?: string;
  status?: MessageStatus;
  input?: string;
  /** StoredMessage.patientId. */
  patientId?: string;
  /** "SIU^S12" exactly, or "SIU" for every SIU (and a message typed "SIU" alone). */
  messageType?: string;
  /** Messages that gave a trigger of this type. */
  triggerType?: string;
  /**
   * Text the raw message contains: matched against the bytes as received, ASCII letters
   * without regard to case. Reads message bodies (PHI): the API offers it only to callers
   * allowed to see them. Scans the messages in range, newest first, until `limit` match.
   */
  text?: string;
  /** ISO instants, inclusive bounds on receivedAt. */
  since?: string;
  until?: string;
  limit?: number;
  /** Opaque cursor from a previous page (newest first). */
  before?: string;
}

export interface TriggerQuery {
  type?: string;
  patientId?: string;
  /** The stored message (StoredMessage.id) the triggers came from. */
  messageId?: string;
  appointmentId?: string;
  encounterId?: string;
  since?: string;
  until?: string;
  limit?: number;
}

/**
 * Where a delivery stands — the one vocabulary of the admin API, the CLI, mapping tests and
 * the docs. `pending` waits for its due time (the queue holds a timer for it); `cancelled`
 * may come back when a strictly newer event plans it again; the others are final as far as
 * routing goes: nothing moves or revives them (no second message for the patient). Only an
 * operator's replay runs a `failed` or `review` delivery once more (same id, same
 * idempotency key), which may end it again.
 */
export const StoredDeliveryStatus = {
  Pending: 'pending',
  Cancelled: 'cancelled',
  /** Handed to its output, which accepted it. */
  Sent: 'sent',
  /** Not sent, on purpose: a send-time check said no (reason `stale`, `expired`, …). */
  Suppressed: 'suppressed',
  /** Dead-lettered: a permanent failure, or retries exhausted (reason = the last failure code). */
  Failed: 'failed',
  /**
   * Waits for a person: the output may have taken it (an ambiguous failure: timeout, reset,
   * 5xx, a crash during the call) and it does not deduplicate resends, so it is not sent
   * again on its own (reason = the failure code). A replay sends it once more.
   */
  Review: 'review',
} as const;
export type StoredDeliveryStatus = (typeof StoredDeliveryStatus)[keyof typeof StoredDeliveryStatus];
export const STORED_DELIVERY_STATUSES: readonly StoredDeliveryStatus[] = Object.values(StoredDeliveryStatus);

/** Which trigger last changed a delivery, and how (routing's change). */
export interface DeliveryCause {
  triggerId: string;
  change: 'added' | 'replanned' | 'revived' | 'cancelled';
  /** For a cancel: `expired` when a replan found it could not go in time. */
  reason?: string;
}

/**
 * What routing did for one trigger, rule by rule: the data behind "why was nothing planned"
 * (GET /api/triggers/:id). Written with the routing (saveRouting), in the same transaction.
 * Only rules that name the trigger's type (in `on`, `replanOn` or `cancelOn`) are listed;
 * codes and rule text only, never patient data.
 */
export interface RoutingExplanation {
  triggerId: string;
  /** The routing's instant (saveRouting's routedAt), read back as ISO 8601 UTC with milliseconds. */
  routedAt: string;
  rules: RuleOutcome[];
}

export const RuleOutcomeKind = {
  /** A new delivery (or, for a cancelled one, `revived`). */
  Planned: 'planned',
  Replanned: 'replanned',
  Revived: 'revived',
  Cancelled: 'cancelled',
  /** The rule matched but the stored delivery stayed as it was (`reason` says why). */
  Unchanged: 'unchanged',
  /** The rule planned nothing (`reason` says why). */
  Skipped: 'skipped',
} as const;
export type RuleOutcomeKind = (typeof RuleOutcomeKind)[keyof typeof RuleOutcomeKind];

export interface RuleOutcome {
  rule: string;
  outcome: RuleOutcomeKind;
  /** The delivery planned, moved or cancelled (for skipped: the id it would have had). */
  deliveryId?: string;
  /**
   * skipped: `condition_false` (with `condition`), `expired`, `holdout`, `no_anchor`;
   * unchanged: `same`, `stale`, `finished`, `cancelled`, `not_found`; planned/replanned:
   * `no_address` when the message has no recipient (it will be suppressed at send time).
   */
  reason?: string;
  /** For condition_false: the part of the rule's `where` that did not hold, as written in the rule. */
  condition?: string;
}

/** A delivery state as routing writes it (saveRouting). */
export interface DeliveryWrite {
  delivery: Delivery;
  status: 'pending' | 'cancelled';
  /** occurredAt of the newest event applied (route.ts ordering rule). */
  asOf: string;
  /**
   * Bumped each time the delivery needs a new queue job (revived after a cancel, or moved
   * when its job could not be): the job id is `<delivery id>~<generation>`, and only the
   * job of the current generation may send.
   */
  generation: number;
  /** The appointment/encounter start the plan was made for (docs/consent.md rule 1 "still current"). */
  subjectStart?: string;
  /** ISO instant of this change. */
  updatedAt: string;
  /** The trigger that made this change (kept: "cancelled by", "moved by"). */
  cause?: DeliveryCause;
}

/**
 * Work of another component on the store's own database, run inside the transaction of a
 * store write (Queue.joinTransaction gives one: the embedded queue's timers of a routing).
 */
export interface JoinedWork {
  /** The database it must run in; a store refuses work for another one. */
  readonly database: object;
  /** Runs inside the transaction, before the store's own writes; again if it is retried. */
  run(): void;
  /** Called once the transaction committed. */
  committed?(): void;
}

export interface SaveRoutingOptions {
  /**
   * Work committed in the same transaction as the routing (all or nothing): the queue's
   * timers for these deliveries. It runs first and may raise a write's `generation` (a
   * delivery whose job id was taken gets the next one), which the store then saves. Only a
   * store sharing the work's database accepts it: others reject the call.
   */
  joined?: JoinedWork;
  /** What routing did for each trigger, rule by rule (getRoutingExplanation reads it back). */
  explanations?: readonly RoutingExplanation[];
}

/** The rendered message kept with a sent delivery (what left). */
export interface SentMessage {
  language: string;
  to?: string;
  subject?: string;
  text: string;
  html?: string;
  /** The signed unsubscribe link it carried (non-care email: in its text and List-Unsubscribe). */
  unsubscribe?: string;
}

/** How a delivery ended (finishDelivery). */
export interface DeliveryOutcome {
  status: 'sent' | 'suppressed' | 'failed' | 'review';
  /** Reason code for suppressed, failed and review (safe to log). */
  reason?: string;
  /** What was sent (sent only). */
  message?: SentMessage;
  /** The adapter's receipt id (sent only). */
  providerId?: string;
  /** ISO instant. */
  at: string;
}

export interface StoredDelivery {
  delivery: Delivery;
  status: StoredDeliveryStatus;
  asOf: string;
  generation: number;
  subjectStart?: string;
  reason?: string;
  message?: SentMessage;
  providerId?: string;
  /** When the delivery was first planned / last changed (ISO instants). */
  createdAt: string;
  updatedAt: string;
  /** The trigger whose routing last changed it (planned, moved, cancelled, revived it). */
  cause?: DeliveryCause;
}

export interface DeliveryQuery {
  status?: StoredDeliveryStatus;
  ruleId?: string;
  patientId?: string;
  /** `appointment/<url-encoded id>`… (route.ts subjectOf). */
  subjectKey?: string;
  /** Default 100, capped at 1000. Newest planned first. */
  limit?: number;
  /** The id of the last delivery of the previous page. */
  before?: string;
}

/** A message kept by an `outbox` output instead of being sent. */
export interface OutboxEntry {
  /** Store-assigned, stable. */
  id: string;
  deliveryId: string;
  /** Output instance name. */
  output: string;
  channel: Channel;
  to?: string;
  language: string;
  subject?: string;
  text: string;
  html?: string;
  keptAt: string;
}

export interface OutboxQuery {
  deliveryId?: string;
  output?: string;
  /** Default 100, capped at 1000. Newest first. */
  limit?: number;
  /** The id of the last entry of the previous page. */
  before?: string;
}

/** A FHIR Consent kept as given, for one patient (docs/consent.md rule 3). */
export interface StoredFhirConsent {
  /** Store-assigned. */
  id: string;
  patientId: string;
  /** The resource exactly as received. */
  resource: Record<string, unknown>;
  /** When it takes effect for "the latest wins": Consent.dateTime, else when it was received (ISO). */
  effectiveAt: string;
  source: ConsentSource;
  recordedAt: string;
}

/** What the triggers said about a patient (kept from every commit; docs/consent.md rule 2). */
export interface PatientFacts {
  id: string;
  /** Sticky: once a trigger says deceased, the patient stays deceased. */
  deceased: boolean;
  /** Set by an erasure (POST /api/patients/:id/erase). */
  erasedAt?: string;
}

/** Which message a decision or a disclosure is about. */
export interface DeliveryRef {
  deliveryId: string;
  patientId: string;
  rule: string;
  purpose: Purpose;
  channel: Channel;
  output: string;
}

/** The outcome of one run of the send-time checks for a delivery (evidence, docs/consent.md). */
export interface DecisionRecord extends DeliveryRef {
  /** Store-assigned. */
  id: string;
  /** allow: it may go; deny: suppressed; move: quiet hours, tried again at retryAt. */
  result: 'allow' | 'deny' | 'move';
  /** The docs/consent.md rule that decided (1–8), absent for an allow. */
  checkRule?: number;
  reason?: string;
  retryAt?: string;
  /** Why, for people (ids, purposes and settings only — no patient data). */
  basis: string;
  /** Ledger entry and Consent ids the decision used. */
  records: string[];
  /** The settings it was decided with (region, quiet hours, caps, sensitive window…). */
  settings: Record<string, unknown>;
  at: string;
}

/** A message handed to an output: the accounting of disclosures (HIPAA) and the caps' count. */
export interface Disclosure extends DeliveryRef {
  recipient?: string;
  at: string;
}

/** What an erasure did (GDPR art. 17): the record that stays once the patient's data is gone. */
export interface ErasureRecord {
  patientId: string;
  at: string;
  /** Deliveries that were still pending: now suppressed `erased`. */
  cancelled: Array<{ deliveryId: string; generation: number; reason: 'erased' }>;
  /**
   * The outputs whose tool held a contact of the patient (their contact holdings, deleted with
   * the rest), each with what asking the tool to forget the contact gave — an operator acts on
   * what is not `forgotten` / `not_held` (outputs/spec.ts ForgetOutcome; `failed`, `unsupported`,
   * `not_running`, or `not_asked` when the caller gave no outcome). No address: output names only.
   */
  tools: Array<{ output: string; outcome: string }>;
}

/**
 * The consent ledger and the evidence (docs/consent.md "Evidence"), part of every Store.
 * Ids and instants only in what it logs; what it stores is the audit itself.
 */
export interface ConsentLedger {
  /**
   * Appends a grant, revocation, opt-out, opt-in or no-contact entry; resolves with its id once
   * durable. `mirrorTo`: outputs (tools holding the contact) the entry is to be pushed to,
   * recorded in the same transaction so a crash cannot drop the push (unqueuedConsentMirrors).
   */
  addConsentEvent(event: Omit<ConsentEvent, 'id'>, mirrorTo?: readonly string[]): Promise<ConsentEvent>;
  /** Pushes recorded with their entries whose job is not yet queued, oldest first. */
  unqueuedConsentMirrors(limit: number): Promise<Array<{ event: ConsentEvent; output: string }>>;
  /** The push of an entry to an output is on the queue: forget it here. */
  consentMirrorQueued(eventId: string, output: string): Promise<void>;
  /** Keeps a FHIR Consent as given; the same resource for the same patient again is not kept twice. */
  addFhirConsent(consent: Omit<StoredFhirConsent, 'id'>): Promise<StoredFhirConsent>;
  /** Entries of these patients, and keyword entries of these addresses (normalized: pipeline/consent.ts normalizeAddress). */
  consentRecords(query: { patientIds: readonly string[]; addresses?: readonly string[] }): Promise<{ events: ConsentEvent[]; consents: StoredFhirConsent[] }>;
  /**
   * Records what triggers say about their patients: known, deceased (sticky), contact points,
   * merges (patient.merged: mergedFrom → the surviving id). commitInbound does this in its own
   * transaction; this is the same for callers without a commit (mapping tests).
   */
  notePatientFacts(triggers: readonly Trigger[]): Promise<void>;
  /** Facts of these patients; unknown ids are left out. */
  patientFacts(patientIds: readonly string[]): Promise<PatientFacts[]>;
  /** The patient and every id merged with them, in either direction (A40 chains), the given id first. */
  mergedGroup(patientId: string): Promise<string[]>;
  /** The patients whose triggers carried this address (normalized). */
  patientsAtAddress(address: string): Promise<string[]>;
  recordDecision(decision: Omit<DecisionRecord, 'id'>): Promise<void>;
  /** Newest first; by delivery or by patient. Default 100, capped at 1000. */
  listDecisions(query: { deliveryId?: string; patientId?: string; limit?: number }): Promise<DecisionRecord[]>;
  /** Once per delivery (a second call for the same delivery changes nothing). */
  recordDisclosure(disclosure: Disclosure): Promise<void>;
  /** Newest first, for patients, optionally since an instant. Default 100, capped at 1000. */
  listDisclosures(query: { patientIds: readonly string[]; since?: string; limit?: number }): Promise<Disclosure[]>;
  /** Remembers an inbound event key (an SMS provider's message id); false when it was already seen. */
  noteInboundEvent(key: string, at: string): Promise<boolean>;
  /**
   * GDPR erasure of one patient, in one transaction: pending deliveries suppressed `erased`;
   * raw messages, personal trigger fields, delivery payloads, recipients, sent texts and outbox
   * entries of the patient removed; decisions and disclosures deleted; contact points, video
   * join URLs and video links dropped.
   * The consent ledger stays (it holds no contact details of the patient and keeps objections
   * honoured), and the erasure record is kept. The contact holdings of the patient are deleted
   * and the record's `tools` lists each output that held one, once, with its outcome from
   * `outcomes` (by output name; absent: `not_asked`). The caller cancels the queue timers.
   */
  erasePatient(patientId: string, at: string, outcomes?: Readonly<Record<string, string>>): Promise<ErasureRecord>;
  listErasures(patientId: string): Promise<ErasureRecord[]>;
}

/**
 * A message that asked the patient for a reply (pipeline/reply.ts), kept from its send until it
 * is answered or the appointment starts (workers/replies.ts): an SMS answer is matched to the
 * latest open prompt sent to its number through its output.
 */
export interface ReplyPrompt {
  /** The delivery that asked (its id): one prompt per delivery. */
  id: string;
  /** The SMS output it went through: answers come back to that number. */
  output: string;
  /** The number it went to, normalized (pipeline/consent.ts normalizeAddress). */
  address: string;
  patientId: string;
  ruleId: string;
  appointmentId: string;
  /** The appointment start the message spoke of: an answer after a move goes to staff. */
  appointmentStart?: string;
  /** The trigger the message was planned from: what the answer and the write-back are about. */
  triggerId: string;
  /** What the message offered, in its language. */
  offer: ReplyOffer;
  /** ISO instant of the send. */
  sentAt: string;
  /** No answer is matched to it at or after this instant (the appointment start). */
  closesAt: string;
  /** Set with the answer's commit (InboundRecord.answers). */
  answer?: ReplyAnswer;
}

/** How a prompt was answered. */
export interface ReplyAnswer {
  action: ReplyAction;
  /** The offered word matched, as the rule lists it. */
  answer: string;
  /** The SMS provider's message id (Twilio MessageSid). */
  messageId: string;
  /** ISO instant. */
  at: string;
}

/** A prompt is no longer open (answered meanwhile): the commit that would answer it stored nothing. */
export class PromptClosedError extends Error {
  constructor(readonly promptId: string) {
    super(`reply prompt ${promptId} is no longer open`);
    this.name = 'PromptClosedError';
  }
}

/** A yes to a waitlist offer whose slot is no longer open (another yes took it): the commit that carried it stored nothing. */
export class SlotTakenError extends Error {
  constructor(readonly slotId: string) {
    super(`waitlist slot ${slotId} is no longer open`);
    this.name = 'SlotTakenError';
  }
}

/** A commit telling a waitlist offer's patient the slot is taken found the offer no longer open (told already): it stored nothing. */
export class OfferToldError extends Error {
  constructor(readonly offerId: string) {
    super(`waitlist offer ${offerId} is no longer open`);
    this.name = 'OfferToldError';
  }
}

/** What a staff task asks a person to do (the admin API and dashboard list them). */
export const StaffTaskKind = {
  /** An SMS that is neither a keyword nor an offered answer: the staff inbox (no automatic reply). */
  SmsUnmatched: 'sms_unmatched',
  /** An answer from a number shared by several patients with open prompts: whose is it? */
  SharedNumber: 'shared_number',
  /** An answer about an appointment cancelled or moved since the reminder: nothing was written. */
  StaleAnswer: 'stale_answer',
  /** A patient asked to cancel and no write-back output is configured: staff cancel it. */
  CancelRequested: 'cancel_requested',
  /** A patient asked for another time (reschedule via task). */
  RescheduleRequested: 'reschedule_requested',
  /** The EHR refused the write-back (`code` says why). */
  WriteBackDenied: 'write_back_denied',
  /** The write-back failed for good or ran out of attempts (`code`: the last failure). */
  WriteBackFailed: 'write_back_failed',
  /** A waitlist slot a patient accepted could not be booked (`code`): the slot was offered on. */
  WaitlistBookingFailed: 'waitlist_booking_failed',
  /** A waitlist slot was booked, but the patient's later appointment could not be cancelled: staff cancel it. */
  WaitlistCancelFailed: 'waitlist_cancel_failed',
} as const;
export type StaffTaskKind = (typeof StaffTaskKind)[keyof typeof StaffTaskKind];
export const STAFF_TASK_KINDS: readonly StaffTaskKind[] = Object.values(StaffTaskKind);

export const StaffTaskStatus = { Open: 'open', Done: 'done' } as const;
export type StaffTaskStatus = (typeof StaffTaskStatus)[keyof typeof StaffTaskStatus];

/** Something a person must do; ids and codes only (the SMS itself is the stored message `messageId`). */
export interface StaffTask {
  /** Store-assigned. */
  id: string;
  /** Deterministic: the same key twice opens one task (a retried write-back, a resent SMS). */
  key: string;
  kind: StaffTaskKind;
  status: StaffTaskStatus;
  /** ISO instant. */
  createdAt: string;
  patientId?: string;
  appointmentId?: string;
  /** The reminder (delivery id) the task is about, for answers and write-backs. */
  promptId?: string;
  /** The stored inbound SMS (GET /api/messages/:id), when the task is about one. */
  messageId?: string;
  /** The output involved: the SMS output, or the write-back output. */
  output?: string;
  /** A reason code (safe to log): the EHR's refusal, the last failure… */
  code?: string;
  doneAt?: string;
  /** Who closed it (the admin token's name). */
  doneBy?: string;
}

export type NewStaffTask = Omit<StaffTask, 'id' | 'status' | 'doneAt' | 'doneBy'>;

/** Replies and staff tasks (workers/replies.ts), part of every Store. */
export interface ReplyLedger {
  /** Keeps a prompt once sent (false when that delivery's prompt was already kept). */
  addReplyPrompt(prompt: ReplyPrompt): Promise<boolean>;
  /** The prompts to this number through this output still open at `at` (not answered, not closed), newest sent first. */
  openReplyPrompts(query: { output: string; address: string; at: string }): Promise<ReplyPrompt[]>;
  /** Opens a task, once per key: an existing key gives the task already there. */
  addStaffTask(task: NewStaffTask): Promise<StaffTask>;
  /** Newest first; `before` is the id of the last task of the previous page. Default 100, capped at 1000. */
  listStaffTasks(query: { status?: StaffTaskStatus; limit?: number; before?: string }): Promise<StaffTask[]>;
  /** Marks a task done (once: a done task stays as it was); undefined for an unknown id. */
  finishStaffTask(id: string, done: { at: string; by: string }): Promise<StaffTask | undefined>;
}

// --- the waitlist (workers/waitlist.ts, docs/waitlist.md) -------------------------------------

export const WaitlistSlotState = {
  /** Offers go out in waves; the first yes claims it. */
  Open: 'open',
  /** A yes took it; its booking is under way. */
  Claimed: 'claimed',
  /** Booked for the patient who said yes. */
  Booked: 'booked',
  /** No more offers: too close to its start, or nobody took it. */
  Closed: 'closed',
} as const;
export type WaitlistSlotState = (typeof WaitlistSlotState)[keyof typeof WaitlistSlotState];

/** A freed slot, from the trigger that freed it. */
export interface WaitlistSlot {
  /** `<appointment id>@<start>`. */
  id: string;
  state: WaitlistSlotState;
  /** The trigger that freed it (its appointment: service, practitioner, location). */
  triggerId: string;
  /** The patient whose appointment freed it (never offered their own slot back); absent for a slot freed without an appointment (slot.freed). */
  patientId?: string;
  /** The FHIR Slot id when a FHIR Slot going free freed it (slot.freed from a FHIR input): the booking names that Slot. */
  fhirSlot?: string;
  start: string;
  end?: string;
  durationMinutes?: number;
  serviceType?: { code: string; display?: string; system?: string };
  practitioner?: { id: string; name?: string };
  location?: { id: string; name?: string };
  openedAt: string;
  /** Waves sent so far. */
  waves: number;
  /** Set while claimed or booked: the offer that took it. */
  claimedBy?: string;
  /** The appointment made for it (booked). */
  bookedAs?: string;
  /** Why it closed (a reason code). */
  closedReason?: string;
  /**
   * The wave job planned next (its run time, and the offer whose failed booking brought it
   * forward): noted before it is queued, so that the start-up repair queues it again under the same id.
   */
  nextWave?: { at: string; after?: string };
}

export const WaitlistOfferState = {
  Offered: 'offered',
  Accepted: 'accepted',
  Declined: 'declined',
  Booked: 'booked',
  /** The booking failed: the slot was offered on. */
  Failed: 'failed',
  /** The patient was told the slot is taken (another yes claimed it, or theirs came too late): closed. */
  Taken: 'taken',
} as const;
export type WaitlistOfferState = (typeof WaitlistOfferState)[keyof typeof WaitlistOfferState];

/** One offer of a slot to one patient: the trigger appointment.waitlist_offered carries its id. */
export interface WaitlistOffer {
  id: string;
  slotId: string;
  patientId: string;
  wave: number;
  state: WaitlistOfferState;
  offeredAt: string;
  expiresAt: string;
  /** The patient's later appointment, cancelled (pat-swl) after the booking. */
  current?: { id: string; start?: string; placerId?: string };
  daysGained?: number;
  /** The trigger the patient's details come from (their later appointment's latest). */
  triggerId?: string;
  acceptedAt?: string;
  bookedAs?: string;
  /** Set once the later appointment was cancelled. */
  currentCancelled?: boolean;
  /** Where the candidate came from (absent on offers made before sources were recorded: the list or later appointments). */
  source?: OfferSource;
}

/** Where a waitlist candidate came from (docs/waitlist.md "Sources"), in the order they are offered. */
export const OfferSource = {
  /** The configured list (`sources.list`): nothing to cancel after the booking. */
  List: 'list',
  /** The EHR's waitlist: the waitlist appointment is cancelled (pat-swl) after the booking. */
  EhrWaitlist: 'ehrWaitlist',
  /** A later appointment of the patient, cancelled (pat-swl) after the booking. */
  LaterAppointments: 'laterAppointments',
} as const;
export type OfferSource = (typeof OfferSource)[keyof typeof OfferSource];

/** An appointment the later-appointments source knows (booked, from the feed). */
export interface WaitlistAppointment {
  id: string;
  placerId?: string;
  patientId: string;
  /** appointment.serviceType.code ('' when absent). */
  service: string;
  /** appointment.practitioner.id ('' when absent). */
  practitioner: string;
  start: string;
  /** The latest trigger about it: the patient's name, phone and language for the offer. */
  triggerId: string;
}

/**
 * A waitlist entry of the EHR (docs/waitlist.md "Sources"): an appointment in status `waitlist`
 * (a FHIR Appointment, an SIU whose filler status is Waitlist), as the feed told CareRelay. It
 * leaves the list when the EHR books or cancels it (any other status), when CareRelay books a
 * slot for it, or once its requested periods are over.
 */
export interface WaitlistEntry {
  /** The appointment id (FHIR Appointment.id, SCH-2). */
  id: string;
  placerId?: string;
  patientId: string;
  /** appointment.serviceType.code ('' when absent). */
  service: string;
  /** appointment.practitioner.id; '' when it names none: any practitioner. */
  practitioner: string;
  /** When the patient can come (appointment.requestedPeriod); empty: any time. */
  periods: Array<{ start?: string; end?: string }>;
  /** When CareRelay first heard of it: the longest waiting come first. */
  notedAt: string;
  /** The latest trigger about it: the patient's name, phone and language for the offer. */
  triggerId: string;
}

/** The waitlist in the outcomes view (docs/operations.md "Outcomes"). */
export interface WaitlistFigures {
  slotsFreed: number;
  offers: number;
  accepted: number;
  booked: number;
  declined: number;
  bookingFailed: number;
  /** Days patients were seen sooner (their later appointment − the slot), over booked offers. */
  daysGained: { total: number; median?: number };
}

/** The waitlist's records, part of every Store. */
export interface WaitlistLedger {
  /** Opens a freed slot (false when it is already known). */
  openWaitlistSlot(slot: WaitlistSlot): Promise<boolean>;
  getWaitlistSlot(id: string): Promise<WaitlistSlot | undefined>;
  /**
   * Sets a slot's state and details; only open → open or closed, claimed → booked, and a claimed or
   * booked slot's details: a slot a yes claimed meanwhile is left as it is (sqlite-waitlist.ts slotMayBecome).
   */
  setWaitlistSlot(id: string, state: WaitlistSlotState, patch?: Partial<WaitlistSlot>): Promise<void>;
  /** Gives a claim back (a booking that failed): true when the slot was claimed by that offer and is open again. */
  releaseWaitlistClaim(slotId: string, offerId: string): Promise<boolean>;
  /** Offers of one wave (an existing id is kept as it is). */
  addWaitlistOffers(offers: readonly WaitlistOffer[]): Promise<void>;
  getWaitlistOffer(id: string): Promise<WaitlistOffer | undefined>;
  setWaitlistOffer(id: string, state: WaitlistOfferState, patch?: Partial<WaitlistOffer>): Promise<void>;
  listWaitlistOffers(slotId: string): Promise<WaitlistOffer[]>;
  /** Offers made to a patient at or after `since` (the per-patient cap). */
  countWaitlistOffers(patientId: string, since: string): Promise<number>;
  /** Keeps (or, with `removed`, forgets) an appointment of the later-appointments source; either way a waitlist entry of that id ends (it is booked, or gone). */
  noteWaitlistAppointment(appointment: WaitlistAppointment | { id: string; removed: true }): Promise<void>;
  /** Appointments of these services and practitioners starting after `after`, latest first. */
  laterWaitlistAppointments(query: { services: readonly string[]; practitioners: readonly string[]; after: string; limit: number }): Promise<WaitlistAppointment[]>;
  /** Keeps (or, with `removed`, forgets) a waitlist entry of the EHR; a kept entry keeps the time it was first noted. */
  noteWaitlistEntry(entry: WaitlistEntry | { id: string; removed: true }): Promise<void>;
  /**
   * Entries of these services for these practitioners (or naming none) whose requested periods
   * are not all over at `now`, the longest waiting first. Entries over at `now` are forgotten.
   */
  waitlistEntries(query: { services: readonly string[]; practitioners: readonly string[]; now: string; limit: number }): Promise<WaitlistEntry[]>;
  /** Slots in these states, oldest freed first (the start-up repair). Default limit 1000. */
  listWaitlistSlots(query: { states: readonly WaitlistSlotState[]; limit?: number }): Promise<WaitlistSlot[]>;
  /** Slots freed and offers made in [from, to). */
  waitlistFigures(from: string, to: string): Promise<WaitlistFigures>;
}

/** Actions recorded in the audit log (who did what to which record, and when). */
export const AuditAction = {
  /** POST /api/messages/:id/reprocess. */
  Reprocess: 'message.reprocess',
  /** POST /api/messages/:id/release. */
  Release: 'message.release',
  /** A dead-lettered or parked delivery queued again (the dashboard's replay). */
  Replay: 'delivery.replay',
} as const;
export type AuditAction = (typeof AuditAction)[keyof typeof AuditAction];

export interface AuditEntry {
  /** Store-assigned, increasing. */
  id: string;
  /** ISO instant. */
  at: string;
  /** Who: the admin token's name. */
  actor: string;
  action: AuditAction;
  /** What it was done to, e.g. "message/12". */
  target: string;
  /** `stored` when it took effect, else the reason code it was refused with. */
  outcome: string;
  /** The record the action made (e.g. "message/13"). */
  result?: string;
}

export interface AuditQuery {
  target?: string;
  /** Default 100, capped at 1000. Newest first. */
  limit?: number;
}

/** A rule that matched a trigger's type but planned nothing, and why (reason code). */
export interface SkippedRule {
  ruleId: string;
  /** `holdout`, `expired`, `no_anchor`, `condition_false`… */
  reason: string;
  /** The delivery it would have been. */
  deliveryId?: string;
  step?: number;
  /** Reason detail safe to show an operator (which condition, which time). */
  detail?: string;
}

/** What routing did with one trigger, as far as the store records it. */
export interface TriggerRouting {
  /** False while the trigger waits to be routed. */
  routed: boolean;
  /** ISO instant; absent for triggers routed before routing times were kept. */
  routedAt?: string;
  /** Undefined when this store does not record skipped rules. */
  skipped?: SkippedRule[];
}

/** Receipts of one delivery (optionally of one output), or those naming one provider id of an output. */
export type ReceiptQuery = { deliveryId: string; output?: string } | { output: string; providerId: string };

/**
 * The tools holding a patient (to push an opt-out), or the patients a tool's contact stands for (a
 * tool's own opt-out report), named by its address or by the tool's own id of it (ContactHolding.toolId).
 */
export type ContactHoldingQuery = { patientId: string } | { output: string; contactKey: string } | { output: string; toolId: string };

/**
 * What one input or output did per minute (Store.flowActivity), for the dashboard's Flows view.
 * Codes only: an input's ACK codes (AA, AR… or a FHIR request's HTTP status), an output's
 * delivery ends (sent, suppressed, failed).
 */
export interface FlowActivity {
  kind: 'input' | 'output';
  /** The input or output instance name (connectors/*.yaml). */
  name: string;
  /**
   * ISO 8601 UTC instant of its newest event: a message received (input), a delivery ended
   * (output) — also when that was before the window.
   */
  lastAt: string;
  /** Events per minute and code within the window, oldest first; `minute` is the minute's start (ISO 8601 UTC). */
  minutes: Array<{ minute: string; code: string; count: number }>;
}

/** Minutes of activity Store.flowActivity keeps: an hour. */
export const FLOW_ACTIVITY_MINUTES = 60;

/**
 * Deliveries counted by rule, variant, output, status and reason (Store.deliveryTallies), for
 * the dashboard's Rules and Flows views. `output` and `variant` are absent for deliveries
 * stored before they were counted (and `variant` for rules without variants).
 */
export interface DeliveryTally {
  rule: string;
  variant?: string;
  output?: string;
  status: StoredDeliveryStatus;
  /** suppressed: the check that said no; failed: the failure code; cancelled: why, when known. */
  reason?: string;
  count: number;
}

/**
 * Trigger types that tell how an appointment ended (and `deleted`, which takes it out of the
 * outcomes): commitInbound notes the appointment of each such trigger it stores, for the
 * outcome linker (workers/outcomes.ts, Store.outcomeLinksDue).
 */
export const OUTCOME_TRIGGER_TYPES: readonly TriggerType[] = [
  TriggerType.AppointmentCheckedIn,
  TriggerType.AppointmentFulfilled,
  TriggerType.AppointmentNoshow,
  TriggerType.AppointmentCancelled,
  TriggerType.AppointmentDeleted,
];

/** How an appointment ended, for outcome reports (docs/operations.md "Outcomes"). */
export const OutcomeKind = {
  /** The patient came: checked in (arrived) or the visit was completed. */
  Showed: 'showed',
  NoShow: 'noshow',
  /** Cancelled at least the advance lead (24 h) before the start: a slot that can be given again. */
  CancelledAdvance: 'cancelled_advance',
  /** Cancelled later than that. */
  CancelledLate: 'cancelled_late',
} as const;
export type OutcomeKind = (typeof OutcomeKind)[keyof typeof OutcomeKind];
export const OUTCOME_KINDS: readonly OutcomeKind[] = Object.values(OutcomeKind);

/**
 * One rule's arm for one appointment that has an outcome: the unit outcome reports count. The
 * arm is what routing assigned (the variant of the rule's deliveries for the appointment, or
 * its holdout), whether or not a message was sent in the end.
 */
export interface OutcomeObservation {
  rule: string;
  /** The variant of the rule's deliveries; absent when the rule has no variants, or held out. */
  variant?: string;
  /** The appointment fell in the rule's holdout: nothing was planned, by design. */
  holdout: boolean;
  /** A message of the rule about the appointment was sent (delivery status `sent`). */
  sent: boolean;
  outcome: OutcomeKind;
  /** The calendar day of the appointment's start in the organisation's zone (YYYY-MM-DD): the period key. */
  day: string;
}

/** An appointment whose outcome triggers are committed and not linked yet (Store.outcomeLinksDue). */
export interface OutcomeLink {
  appointmentId: string;
  /** Changes each time a new outcome trigger is noted: saveOutcomes forgets only the version it linked. */
  version: number;
}

export interface OutcomeQuery {
  rule?: string;
  /** Inclusive bounds on OutcomeObservation.day (YYYY-MM-DD). */
  fromDay?: string;
  toDay?: string;
}

/** Observations counted by rule, arm, day and outcome (Store.countOutcomes). */
export interface OutcomeCount {
  rule: string;
  variant?: string;
  holdout: boolean;
  day: string;
  outcome: OutcomeKind;
  count: number;
  /** How many of them were sent a message of the rule. */
  sent: number;
}

/**
 * What the retention job removes (workers/retention.ts; docs/operations.md "Retention"), one
 * kind at a time, oldest first. What is still needed is never removed, whatever its age:
 * - `rawMessages`: the bytes of received messages (received before `before`) are cleared; the
 *   record stays (ids, status, ACK) with `rawBytes` its length. Kept whole: quarantined copies
 *   awaiting review (no `replacedBy`) and pending FHIR events. Counted in messages.
 * - `triggers`: message records received before `before`, with their triggers, and the
 *   appointment/encounter states their last trigger leaves behind. Kept: quarantined copies
 *   awaiting review, pending events, unrouted triggers, triggers of a subject with a pending
 *   delivery, of an appointment whose outcome is not linked yet or whose stored start is not
 *   before `before` (its holdout assignment is read when its outcome comes). Counted in records.
 * - `deliveryBodies`: the address, payload and sent message of deliveries no longer pending,
 *   last changed before `before` (the record stays: rule, status, times, reason). Counted in deliveries.
 * - `outbox`: outbox entries kept before `before`. Counted in entries.
 * - `deliveries`: delivery records no longer pending, created and last changed before
 *   `before`, with their receipts. Counted in deliveries.
 * - `decisions`: send-time consent decisions made before `before`.
 * - `audit`: audit entries, disclosures (the accounting of disclosures) and erasure records
 *   made before `before`. Counted in rows.
 * - `outcomes`: outcome observations of appointments that started before `before`'s day.
 * - `videoJoins`: sealed vendor join URLs stored before `before` of visits that started before
 *   it (by their appointment state; without one, by when the join was stored). Kept: visits
 *   still to come. Counted in joins.
 * - `videoLinks`: patient video links minted before `before` for a visit start before it (a
 *   link of a visit still to come stays). Counted in links.
 * - `replyPrompts`: reply prompts (the number a reminder went to) that closed before `before`;
 *   open ones stay. Counted in prompts.
 * - `staffTasks`: staff tasks done before `before`; open ones stay whatever their age.
 *   Counted in tasks.
 * - `waitlist`: freed slots that started before `before`, with their offers (nothing can happen
 *   to them any more), and entries of the later-appointments index that started before it.
 *   Counted in slots and entries.
 * The consent ledger (entries, FHIR Consents, patient facts, contact points) and the contact
 * holdings are never removed by age: they keep objections honoured.
 */
export const RetentionKind = {
  RawMessages: 'rawMessages',
  Triggers: 'triggers',
  DeliveryBodies: 'deliveryBodies',
  Outbox: 'outbox',
  Deliveries: 'deliveries',
  Decisions: 'decisions',
  Audit: 'audit',
  Outcomes: 'outcomes',
  VideoJoins: 'videoJoins',
  VideoLinks: 'videoLinks',
  ReplyPrompts: 'replyPrompts',
  StaffTasks: 'staffTasks',
  Waitlist: 'waitlist',
} as const;
export type RetentionKind = (typeof RetentionKind)[keyof typeof RetentionKind];
export const RETENTION_KINDS: readonly RetentionKind[] = Object.values(RetentionKind);

export interface PruneOptions {
  /** Most records examined in this batch (removed or kept). */
  limit: number;
  /** Where the previous batch stopped (PruneBatch.next); absent: the oldest. */
  after?: string;
  /** Count what would be removed; change nothing. */
  dryRun?: boolean;
}

export interface PruneBatch {
  /** Records removed (or, dry, that would be), in the kind's unit (RetentionKind). */
  removed: number;
  /** Opaque position to continue from; absent when nothing older is left to examine. */
  next?: string;
}

export interface Store extends ConsentLedger, ReplyLedger, WaitlistLedger {
  /**
   * Commits one inbound message atomically: raw bytes, ACK, status, reason, triggers and
   * subject-state updates, in one transaction, durable when the promise resolves.
   * Dedupe: a non-empty `controlId` is unique per `sender` (see CommitOutcome).
   * A pending original (isPending) is completed, not deduped, by a record that is not
   * pending: the row keeps its id and receivedAt and takes the record's message type, hash,
   * bytes, status, ACK and reason; the record's triggers, subject states and cursors are
   * applied (outcome `stored`). A pending record over a pending original is a `duplicate`.
   * A subject state is applied only if its `asOf` is not older than the stored one, so a
   * late, older message never rolls the state back. The appointment of each stored trigger of
   * an OUTCOME_TRIGGER_TYPES type is noted for outcome linking (outcomeLinksDue).
   * Rejects (throws) only when the commit itself failed: the caller must then NAK.
   */
  commitInbound(record: InboundRecord): Promise<CommitOutcome>;

  /** The stored message for sender + controlId, if any (used to answer a resend early). */
  findMessage(sender: string, controlId: string): Promise<StoredMessage | undefined>;

  getMessage(id: string): Promise<StoredMessageWithBody | undefined>;
  listMessages(query: MessageQuery): Promise<StoredMessage[]>;

  getTrigger(id: string): Promise<Trigger | undefined>;
  /**
   * The input (connector instance name) that received the message a trigger came from, or
   * undefined for an unknown trigger: times are shown in that input's zone when no site zone
   * is configured (pipeline/zones.ts).
   */
  triggerInput(triggerId: string): Promise<string | undefined>;
  listTriggers(query: TriggerQuery): Promise<Trigger[]>;
  /** The stored message a trigger came from (its id), undefined for an unknown trigger. */
  messageOfTrigger(triggerId: string): Promise<string | undefined>;
  /** What routing did with a trigger; undefined for an unknown trigger. */
  getTriggerRouting(triggerId: string): Promise<TriggerRouting | undefined>;

  /** Appends an entry to the audit log, durably (an attempt writes its own, see MessageAttempt). */
  appendAudit(entry: Omit<AuditEntry, 'id'>): Promise<AuditEntry>;
  listAudit(query: AuditQuery): Promise<AuditEntry[]>;

  getSubjectState(kind: SubjectState['kind'], id: string): Promise<SubjectState | undefined>;
  /** Every stored state of one kind for a patient (e.g. appointments, for an arrival check-in). */
  listSubjectStates(kind: SubjectState['kind'], patientId: string): Promise<SubjectState[]>;

  /**
   * A durable key-value cursor (a poller's `_lastUpdated` position, a subscription's last
   * event number). Undefined when never set.
   */
  getCursor(key: string): Promise<string | undefined>;
  /** Sets a cursor durably (last write wins); resolves once committed. */
  setCursor(key: string, value: string): Promise<void>;

  /**
   * Triggers committed but not yet routed, in commit order (a crash between the commit and
   * routing loses nothing: the router picks these up at start).
   */
  listUnroutedTriggers(limit: number): Promise<Trigger[]>;
  /**
   * Writes the delivery states routing changed for one trigger (or for several routed in one
   * pass) and marks the trigger(s) routed, in one transaction. A delivery already final
   * (sent, suppressed, failed) is never overwritten. Idempotent: the same call again
   * changes nothing more.
   */
  saveRouting(
    triggerIds: string | readonly string[],
    deliveries: readonly DeliveryWrite[],
    routedAt: string,
    options?: SaveRoutingOptions,
  ): Promise<void>;
  /**
   * What routing did for a trigger, rule by rule (saved with saveRouting's `explanations`);
   * undefined when the trigger is not routed yet, or was routed without one.
   */
  getRoutingExplanation(triggerId: string): Promise<RoutingExplanation | undefined>;
  /**
   * Whether a committed trigger about this appointment or encounter is not routed yet: a
   * send-time check that finds the subject changed waits for that routing (it may replan).
   */
  hasUnroutedTriggers(subject: { kind: SubjectState['kind']; id: string }): Promise<boolean>;
  /** Deliveries per status, counted as they change: no scan, whatever the number stored. */
  countDeliveries(): Promise<Record<StoredDeliveryStatus, number>>;
  /** Messages per status, counted as they are stored. */
  countMessages(): Promise<Record<MessageStatus, number>>;
  /**
   * Messages received per input and deliveries ended per output, per minute and code, since
   * `since` (ISO instant; the store keeps the last FLOW_ACTIVITY_MINUTES minutes, so an earlier
   * `since` gives those), with each one's newest event. Kept as they happen: the answer costs
   * what the window holds, not what is stored. Inputs and outputs that never had an event are
   * left out.
   */
  flowActivity(since: string): Promise<FlowActivity[]>;
  /** Deliveries per rule, variant, output, status and reason, kept as they change (no scan); counts of 0 left out. */
  deliveryTallies(): Promise<DeliveryTally[]>;
  getDelivery(id: string): Promise<StoredDelivery | undefined>;
  /** Every delivery holding the cancel key (one index probe, whatever the number of deliveries). */
  deliveriesByCancelKey(key: string): Promise<StoredDelivery[]>;
  listDeliveries(query: DeliveryQuery): Promise<StoredDelivery[]>;
  /**
   * Ends a delivery, only if it is still pending with `generation` (a job of an older
   * generation, or a second run of the same job, changes nothing). A `failed` or `review`
   * delivery of that generation may end again: its job was replayed. True when written.
   */
  finishDelivery(id: string, generation: number, outcome: DeliveryOutcome): Promise<boolean>;
  /** Keeps an outbox message, durably; a second entry for the same delivery replaces the first. */
  putOutboxEntry(entry: Omit<OutboxEntry, 'id'>): Promise<OutboxEntry>;
  listOutbox(query: OutboxQuery): Promise<OutboxEntry[]>;

  /**
   * Records what a provider said about a delivery (types.ts DeliveryReceipt), durably when it
   * resolves. The same word twice — same delivery, output, status, provider id and attempt,
   * e.g. a status callback the provider repeats — is kept once: false then.
   */
  addDeliveryReceipt(receipt: DeliveryReceipt): Promise<boolean>;
  /** Matching receipts, oldest first (the order they were recorded in). */
  listDeliveryReceipts(query: ReceiptQuery): Promise<DeliveryReceipt[]>;

  /**
   * Records that an output's tool holds a contact of a patient (types.ts ContactHolding),
   * durably when it resolves. Once per output, patient and contact key: recording it again
   * keeps the first firstSentAt and answers false; a `toolId` given then is kept (it replaces
   * an earlier one), an absent one leaves the stored one as it is.
   */
  recordContactHolding(holding: ContactHolding): Promise<boolean>;
  /** Matching holdings, in the order first recorded. */
  listContactHoldings(query: ContactHoldingQuery): Promise<ContactHolding[]>;

  /**
   * Appointments whose outcome triggers (OUTCOME_TRIGGER_TYPES) were committed and are not
   * linked to their arms yet, oldest note first. commitInbound notes each in the commit of the
   * trigger, so a crash loses none.
   */
  outcomeLinksDue(limit: number): Promise<OutcomeLink[]>;
  /**
   * Replaces every observation of the link's appointment with `observations` (none: it has no
   * outcome, or no rule had an arm for it), and forgets the link when its version is still the
   * one given (a newer note stays due) — in one transaction.
   */
  saveOutcomes(link: OutcomeLink, observations: readonly OutcomeObservation[]): Promise<void>;
  /** Observations counted by rule, arm, day and outcome; days in the query's bounds. */
  countOutcomes(query: OutcomeQuery): Promise<OutcomeCount[]>;

  /**
   * One batch of retention for `kind` (RetentionKind says what it removes and keeps): walks at
   * most `limit` records older than `before` (ISO instant) from `after`, removes those no
   * longer needed (only counts them with dryRun), in one short write.
   */
  prune(kind: RetentionKind, before: string, options: PruneOptions): Promise<PruneBatch>;
  /** The sealed join URL kept for an appointment (InboundRecord.videoJoins); undefined when none is. */
  getVideoJoin(appointmentId: string): Promise<StoredVideoJoin | undefined>;
  /** Keeps a patient's video link, durably when it resolves; the same token hash again changes nothing. */
  putVideoLink(link: VideoLink): Promise<void>;
  /** The link of a token hash, undefined when unknown. */
  getVideoLink(tokenHash: string): Promise<VideoLink | undefined>;

  /** Cheap liveness of the backing store for /readyz. */
  ping(): Promise<void>;
  /**
   * Runs `work` while no other holder of the lock `name` runs, in any process sharing this
   * store (routing: workers/router.ts reads deliveries, then writes them). A store only one
   * process uses (the embedded one) runs `work` at once.
   */
  withLock<T>(name: string, work: () => Promise<T>): Promise<T>;
  /**
   * withLock without waiting: runs `work` holding the lock `name` when no other holder has it,
   * else resolves undefined at once (a duty one process does for all, such as retention).
   */
  tryLock<T>(name: string, work: () => Promise<T>): Promise<T | undefined>;
  close(): Promise<void>;
}
