// Rows both backends keep in the same shape, and the records they stand for: messages, subject
// states, outbox entries, receipts, contact holdings, audit entries and the common part of a
// delivery. sqlite.ts and postgres.ts each read them with their own SQL.
import type { Channel, ContactHolding, Delivery, DeliveryReceipt, MessageStatus } from '../types.ts';
import { causeOf } from './common.ts';
import { unpackHash, unpackIds, unpackJson } from './packed-json.ts';
import type { AuditEntry, MessageOrigin, OutboxEntry, SentMessage, StoredDelivery, StoredDeliveryStatus, StoredMessage, SubjectState } from './store.ts';

export const MESSAGE_COLUMNS =
  'id, input, format, sender, control_id, message_type, content_hash, status, ack, ack_code, reason, received_at, trigger_ids, patient_id, origin, replaces, replaced_by';

export interface MessageRow {
  id: number;
  input: string;
  format: StoredMessage['format'];
  sender: string;
  control_id: string;
  message_type: string;
  /** Text, or 32 bytes (the embedded store: packed-json.ts packHash). */
  content_hash: string | Buffer;
  status: MessageStatus;
  /** Plain text, or packed (the embedded store: packed-json.ts packText). */
  ack: string | Buffer;
  ack_code: string;
  reason: string | null;
  received_at: string;
  /** JSON text, or packed (the embedded store: packed-json.ts packIds). */
  trigger_ids: string | Buffer;
  patient_id: string | null;
  origin: MessageOrigin;
  replaces: number | null;
  replaced_by: number | null;
}

export function messageFromRow(row: MessageRow): StoredMessage {
  const message: StoredMessage = {
    id: String(row.id),
    input: row.input,
    format: row.format,
    sender: row.sender,
    controlId: row.control_id,
    messageType: row.message_type,
    contentHash: unpackHash(row.content_hash),
    status: row.status,
    ack: typeof row.ack === 'string' ? row.ack : unpackJson(row.ack),
    ackCode: row.ack_code,
    receivedAt: row.received_at,
    triggerIds: unpackIds(row.trigger_ids),
  };
  if (row.reason !== null) message.reason = row.reason;
  if (row.patient_id !== null) message.patientId = row.patient_id;
  if (row.origin !== 'received') message.origin = row.origin;
  if (row.replaces !== null) message.replaces = String(row.replaces);
  if (row.replaced_by !== null) message.replacedBy = String(row.replaced_by);
  return message;
}

export const STATE_COLUMNS = 'kind, id, patient_id, status, start, "end", as_of, data';

export interface StateRow {
  kind: SubjectState['kind'];
  id: string;
  patient_id: string;
  status: string | null;
  start: string | null;
  end: string | null;
  as_of: string;
  /** JSON text, or packed (the embedded store: packed-json.ts PackedKind.State). */
  data: string | Buffer | null;
}

export function stateFromRow(row: StateRow): SubjectState {
  const state: SubjectState = { kind: row.kind, id: row.id, patientId: row.patient_id, asOf: row.as_of };
  if (row.status !== null) state.status = row.status;
  if (row.start !== null) state.start = row.start;
  if (row.end !== null) state.end = row.end;
  if (row.data !== null) state.data = JSON.parse(unpackJson(row.data)) as Record<string, unknown>;
  return state;
}

export const OUTBOX_COLUMNS = 'seq, delivery_id, output, channel, recipient, language, subject, text, html, kept_at';

export interface OutboxRow<Text = string> {
  seq: number;
  delivery_id: string;
  output: string;
  channel: Channel;
  recipient: string | null;
  language: string;
  subject: string | null;
  text: Text;
  html: string | null;
  kept_at: string;
}

/** An outbox entry from its row and its rendered parts (kept in the row's columns, or packed). */
export function outboxEntryOf(row: OutboxRow<unknown>, parts: { subject?: string | undefined; text: string; html?: string | undefined } = plainParts(row as OutboxRow)): OutboxEntry {
  const entry: OutboxEntry = {
    id: String(row.seq),
    deliveryId: row.delivery_id,
    output: row.output,
    channel: row.channel,
    language: row.language,
    text: parts.text,
    keptAt: row.kept_at,
  };
  if (row.recipient !== null) entry.to = row.recipient;
  if (parts.subject !== undefined) entry.subject = parts.subject;
  if (parts.html !== undefined) entry.html = parts.html;
  return entry;
}

function plainParts(row: OutboxRow): { subject?: string | undefined; text: string; html?: string | undefined } {
  return { subject: row.subject ?? undefined, text: row.text, html: row.html ?? undefined };
}

export const RECEIPT_COLUMNS = 'delivery_id, output, status, provider_id, code, attempt, at';

/** '' and 0 stand for "no provider id" and "not an adapter attempt" (the unique key dedupes repeated callbacks). */
export interface ReceiptRow {
  delivery_id: string;
  output: string;
  status: DeliveryReceipt['status'];
  provider_id: string;
  code: string | null;
  attempt: number;
  at: string;
}

export function receiptFromRow(row: ReceiptRow): DeliveryReceipt {
  return {
    deliveryId: row.delivery_id,
    output: row.output,
    status: row.status,
    ...(row.provider_id !== '' ? { providerId: row.provider_id } : {}),
    ...(row.code !== null ? { code: row.code } : {}),
    ...(row.attempt !== 0 ? { attempt: row.attempt } : {}),
    at: row.at,
  };
}

export const HOLDING_COLUMNS = 'output, patient_id, contact_key, first_sent_at, tool_id';

export interface HoldingRow {
  output: string;
  patient_id: string;
  contact_key: string;
  first_sent_at: string;
  tool_id: string | null;
}

export function holdingFromRow(row: HoldingRow): ContactHolding {
  return { output: row.output, patientId: row.patient_id, contactKey: row.contact_key, firstSentAt: row.first_sent_at, ...(row.tool_id !== null ? { toolId: row.tool_id } : {}) };
}

export const AUDIT_COLUMNS = 'seq, at, actor, action, target, outcome, result';

export interface AuditRow {
  seq: number;
  at: string;
  actor: string;
  action: AuditEntry['action'];
  target: string;
  outcome: string;
  result: string | null;
}

export function auditFromRow(row: AuditRow): AuditEntry {
  return {
    id: String(row.seq),
    at: row.at,
    actor: row.actor,
    action: row.action,
    target: row.target,
    outcome: row.outcome,
    ...(row.result !== null ? { result: row.result } : {}),
  };
}

/** The columns of a delivery row both backends read the same way. */
export interface DeliveryRowBase {
  as_of: string;
  generation: number;
  subject_start: string | null;
  reason: string | null;
  created_at: string;
  updated_at: string;
  cause_trigger: string | null;
  cause: string | null;
}

/** A stored delivery from its row, once the backend has read its delivery, status, message and provider id. */
export function storedDeliveryOf(
  row: DeliveryRowBase,
  read: { delivery: Delivery; status: StoredDeliveryStatus; message: SentMessage | undefined; providerId: string | undefined },
): StoredDelivery {
  const stored: StoredDelivery = {
    delivery: read.delivery,
    status: read.status,
    asOf: row.as_of,
    generation: row.generation,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
  if (row.subject_start !== null) stored.subjectStart = row.subject_start;
  if (row.reason !== null) stored.reason = row.reason;
  if (read.message !== undefined) stored.message = read.message;
  if (read.providerId !== undefined) stored.providerId = read.providerId;
  const cause = causeOf(row.cause_trigger, row.cause, read.delivery);
  if (cause !== undefined) stored.cause = cause;
  return stored;
}
