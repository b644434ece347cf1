// The Store interface (ARCHITECTURE.md "Interfaces"). Workers see only this; the embedded
// SQLite backend and the PostgreSQL backend implement it and pass one conformance suite
// (store/conformance.ts).
import type { AckCode, MessageStatus, Trigger } from '../types.ts';

/** Everything about one inbound message that is committed before it is acknowledged. */
export interface InboundRecord {
  /** Connector instance name (connectors/*.yaml). */
  input: string;
  format: 'hl7v2' | 'fhir';
  /** HL7: MSH-3^MSH-4 ("EPIC^GHH"); FHIR: base URL or subscription id. Empty when unparseable. */
  sender: string;
  /** HL7: MSH-10; FHIR: subscription#event-number or Type/id/_history/v. Empty when absent. */
  controlId: string;
  /** "SIU^S12", "ADT^A04", "Appointment"… Empty when unparseable. */
  messageType: string;
  /** sha256 hex of the raw bytes: same sender + controlId + hash = the same message. */
  contentHash: string;
  raw: Buffer;
  status: MessageStatus;
  /** The acknowledgment sent back (HL7 ACK text, or an HTTP status summary for FHIR). */
  ack: string;
  ackCode: AckCode | string;
  /** Reason code / text for rejected, ignored and quarantined messages. No patient data. */
  reason?: string;
  receivedAt: string;
  triggers: Trigger[];
  /** State of appointments/encounters after this message (see SubjectState). */
  subjectStates: SubjectState[];
  /**
   * Durable cursors (see Store.setCursor) written in the same transaction as this record,
   * only when it is stored (not for a duplicate or a quarantined conflict): a poll page's
   * triggers and the position after it commit together.
   */
  cursors?: Readonly<Record<string, string>>;
}

export interface StoredMessage {
  /** Store-assigned id, stable, used by GET /api/messages/:id. */
  id: string;
  input: string;
  format: 'hl7v2' | 'fhir';
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
}

export interface StoredMessageWithBody extends StoredMessage {
  raw: Buffer;
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

export type CommitOutcome =
  /** Stored now. */
  | { outcome: 'stored'; message: StoredMessage }
  /** Same sender + controlId + contentHash already stored: nothing new written. */
  | { outcome: 'duplicate'; message: StoredMessage }
  /**
   * Same sender + controlId, different bytes: the new record was stored with status
   * `quarantined` (its triggers and subject states were NOT applied).
   */
  | { outcome: 'conflict'; message: StoredMessage; original: StoredMessage };

export interface MessageQuery {
  sender?: string;
  controlId?: string;
  status?: MessageStatus;
  input?: string;
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
  appointmentId?: string;
  encounterId?: string;
  since?: string;
  until?: string;
  limit?: number;
}

export interface Store {
  /**
   * Commits one inbound message atomically: raw bytes, ACK, status, reason, triggers and
   * subject-state updates, in one transaction, durable when the promise resolves.
   * Dedupe: a non-empty `controlId` is unique per `sender` (see CommitOutcome).
   * A subject state is applied only if its `asOf` is not older than the stored one, so a
   * late, older message never rolls the state back.
   * Rejects (throws) only when the commit itself failed: the caller must then NAK.
   */
  commitInbound(record: InboundRecord): Promise<CommitOutcome>;

  /** The stored message for sender + controlId, if any (used to answer a resend early). */
  findMessage(sender: string, controlId: string): Promise<StoredMessage | undefined>;

  getMessage(id: string): Promise<StoredMessageWithBody | undefined>;
  listMessages(query: MessageQuery): Promise<StoredMessage[]>;

  getTrigger(id: string): Promise<Trigger | undefined>;
  listTriggers(query: TriggerQuery): Promise<Trigger[]>;

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

  /** Cheap liveness of the backing store for /readyz. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
