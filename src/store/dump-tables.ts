// The tables behind each kind of dump record (store/dump.ts), read page by page in the order the
// store keeps them. Both backends have the same logical tables; what differs — packed values,
// a boolean written 0/1, the column giving commit order — each says through BackendRows.
import { consentEventSeq, eventFromRow, decisionFromRow, type DecisionRow, type EventRow } from './consent-rows.ts';
import type {
  AuditRecord,
  ConsentEventRecord,
  DeliveryRecord,
  DumpRecord,
  DumpSource,
  MessageRecord,
  OutboxRecord,
  SubjectStateRecord,
  TriggerRecord,
  VideoJoinRecord,
} from './dump.ts';
import {
  AUDIT_COLUMNS,
  HOLDING_COLUMNS,
  RECEIPT_COLUMNS,
  STATE_COLUMNS,
  auditFromRow,
  holdingFromRow,
  receiptFromRow,
  stateFromRow,
  type AuditRow,
  type HoldingRow,
  type ReceiptRow,
  type StateRow,
} from './rows.ts';
import type { ErasureRecord, NewStaffTask, OutcomeKind, ReplyPrompt, StaffTaskStatus, StoredDelivery, WaitlistAppointment, WaitlistEntry, WaitlistOffer, WaitlistOfferState, WaitlistSlot, WaitlistSlotState } from './store.ts';
import type { Channel, ConsentSource, Purpose } from '../types.ts';

/** Rows per page read. */
export const DUMP_PAGE = 500;

type Row = Record<string, unknown>;

export interface BackendRows {
  /** Rows of `table` with keys after `after`, in key order, at most `limit` (`?` placeholders). */
  page(table: string, columns: string, keys: readonly string[], after: readonly unknown[] | undefined, limit: number): Promise<Row[]>;
  /** The column giving triggers' commit order (SQLite: rowid). */
  triggerOrder: string;
  /** The message columns (rows.ts MESSAGE_COLUMNS as the backend reads them, the raw bytes, whether they are packed) and the record they make. */
  messageColumns: string;
  message(row: Row): MessageRecord;
  /** Extra trigger columns and the record they make. */
  triggerColumns: string;
  trigger(row: Row): TriggerRecord;
  outboxColumns: string;
  outbox(row: Row): OutboxRecord;
  deliveryColumns: string;
  /** The FROM of deliveries (and what it joins) and the column of their order. */
  deliveryTable: string;
  deliveryKey: string;
  /** Deliveries of a page (a message kept as its outbox entry is read from there). */
  deliveries(rows: Row[]): Promise<StoredDelivery[]>;
  bool(value: unknown): boolean;
}

/** The store's records in dump order (store/dump.ts KINDS). */
export function dumpSource(b: BackendRows): DumpSource {
  /** Every row of a table, page after page. */
  async function* rows(table: string, columns: string, keys: readonly string[]): AsyncGenerator<Row[]> {
    let after: unknown[] | undefined;
    for (;;) {
      const page = await b.page(table, columns, keys, after, DUMP_PAGE);
      if (page.length > 0) yield page;
      if (page.length < DUMP_PAGE) return;
      const last = page[page.length - 1]!;
      after = keys.map((k) => last[k.replace(/^.*\./, '')]);
    }
  }
  async function* each<T>(table: string, columns: string, keys: readonly string[], convert: (row: Row) => T): AsyncGenerator<T> {
    for await (const page of rows(table, columns, keys)) for (const row of page) yield convert(row);
  }

  return {
    async *records(): AsyncGenerator<DumpRecord> {
      yield* each('messages', b.messageColumns, ['id'], b.message);
      yield* each('triggers', `${b.triggerOrder}, id, message_id, routed_ms, ${b.triggerColumns}`, [b.triggerOrder], b.trigger);
      yield* each('subject_states', `${STATE_COLUMNS}, message_id`, ['kind', 'id'], (row): SubjectStateRecord => ({
        kind: 'subjectState',
        state: stateFromRow(row as unknown as StateRow),
        ...(row.message_id !== null ? { messageId: String(row.message_id) } : {}),
      }));
      yield* each('cursors', 'key, value', ['key'], (row) => ({ kind: 'cursor' as const, key: String(row.key), value: String(row.value) }));
      yield* each('outbox', b.outboxColumns, ['seq'], b.outbox);
      for await (const page of rows(b.deliveryTable, b.deliveryColumns, [b.deliveryKey])) {
        const stored = await b.deliveries(page);
        for (let i = 0; i < page.length; i++) yield deliveryRecord(Number(page[i]!.seq), stored[i]!);
      }
      yield* each('delivery_receipts', `seq, ${RECEIPT_COLUMNS}`, ['seq'], (row) => ({ kind: 'receipt' as const, ...receiptFromRow(row as unknown as ReceiptRow) }));
      yield* each('contact_holdings', `seq, ${HOLDING_COLUMNS}`, ['seq'], (row) => ({ kind: 'holding' as const, ...holdingFromRow(row as unknown as HoldingRow) }));
      yield* each('audit', AUDIT_COLUMNS, ['seq'], (row): AuditRecord => ({ kind: 'audit', ...auditFromRow(row as unknown as AuditRow) }));
      // The pushes still owed (a few: each goes once its job is queued), with their entries.
      const mirrors = new Map<number, string[]>();
      for await (const page of rows('consent_mirrors', 'event_seq, output', ['event_seq', 'output'])) {
        for (const m of page) mirrors.set(Number(m.event_seq), [...(mirrors.get(Number(m.event_seq)) ?? []), String(m.output)]);
      }
      for await (const page of rows('consent_events', '*', ['seq'])) {
        for (const row of page) {
          const event = eventFromRow({ ...(row as unknown as EventRow), seq: Number(row.seq) });
          const to = mirrors.get(consentEventSeq(event.id));
          yield { kind: 'consentEvent', ...event, ...(to !== undefined ? { mirrorTo: to } : {}) } satisfies ConsentEventRecord;
        }
      }
      yield* each('fhir_consents', 'seq, patient_id, resource, effective_at, source, recorded_at', ['seq'], (row) => ({
        kind: 'fhirConsent' as const,
        id: `fc-${Number(row.seq)}`,
        patientId: String(row.patient_id),
        resource: JSON.parse(String(row.resource)) as Record<string, unknown>,
        effectiveAt: String(row.effective_at),
        source: row.source as ConsentSource,
        recordedAt: String(row.recorded_at),
      }));
      yield* each('patients', 'id, deceased, first_seen_ms, erased_at', ['id'], (row) => ({
        kind: 'patient' as const,
        id: String(row.id),
        deceased: b.bool(row.deceased),
        firstSeenMs: Number(row.first_seen_ms),
        ...(row.erased_at !== null ? { erasedAt: String(row.erased_at) } : {}),
      }));
      yield* each('contact_points', 'address, patient_id', ['address', 'patient_id'], (row) => ({ kind: 'contactPoint' as const, address: String(row.address), patientId: String(row.patient_id) }));
      yield* each('patient_links', 'from_id, to_id', ['from_id', 'to_id'], (row) => ({ kind: 'patientLink' as const, from: String(row.from_id), to: String(row.to_id) }));
      yield* each('decisions', '*', ['seq'], (row) => ({ kind: 'decision' as const, ...decisionFromRow({ ...(row as unknown as DecisionRow), seq: Number(row.seq) }) }));
      yield* each('disclosures', 'seq, delivery_id, patient_id, rule, purpose, channel, output, recipient, at', ['seq'], (row) => ({
        kind: 'disclosure' as const,
        deliveryId: String(row.delivery_id),
        patientId: String(row.patient_id),
        rule: String(row.rule),
        purpose: row.purpose as Purpose,
        channel: row.channel as Channel,
        output: String(row.output),
        ...(row.recipient !== null ? { recipient: String(row.recipient) } : {}),
        at: String(row.at),
      }));
      yield* each('inbound_events', 'key, at', ['key'], (row) => ({ kind: 'inboundEvent' as const, key: String(row.key), at: String(row.at) }));
      yield* each('erasures', 'seq, patient_id, at, cancelled, tools', ['seq'], (row) => ({
        kind: 'erasure' as const,
        patientId: String(row.patient_id),
        at: String(row.at),
        cancelled: JSON.parse(String(row.cancelled)) as ErasureRecord['cancelled'],
        tools: JSON.parse(String(row.tools)) as ErasureRecord['tools'],
      }));
      yield* each('video_joins', 'appointment_id, patient_id, as_of, key_id, sealed, message_id', ['appointment_id'], (row): VideoJoinRecord => ({
        kind: 'videoJoin',
        appointmentId: String(row.appointment_id),
        patientId: String(row.patient_id),
        asOf: String(row.as_of),
        keyId: String(row.key_id),
        sealed: Buffer.from(row.sealed as Buffer).toString('base64'),
        ...(row.message_id !== null ? { messageId: String(row.message_id) } : {}),
      }));
      yield* each('video_links', 'token_hash, appointment_id, patient_id, delivery_id, start, zone, language, minted_at', ['token_hash'], (row) => ({
        kind: 'videoLink' as const,
        tokenHash: String(row.token_hash),
        appointmentId: String(row.appointment_id),
        patientId: String(row.patient_id),
        deliveryId: String(row.delivery_id),
        start: String(row.start),
        ...(row.zone !== null ? { zone: String(row.zone) } : {}),
        ...(row.language !== null ? { language: String(row.language) } : {}),
        mintedAt: String(row.minted_at),
      }));
      yield* each('reply_prompts', 'seq, json', ['seq'], (row) => ({ kind: 'replyPrompt' as const, prompt: JSON.parse(String(row.json)) as ReplyPrompt }));
      yield* each('staff_tasks', 'seq, status, json', ['seq'], (row) => ({
        kind: 'staffTask' as const,
        task: { ...(JSON.parse(String(row.json)) as NewStaffTask), id: `task-${Number(row.seq)}`, status: row.status as StaffTaskStatus },
      }));
      yield* each('outcome_links', 'seq, appointment_id', ['seq'], (row) => ({ kind: 'outcomeLink' as const, appointmentId: String(row.appointment_id) }));
      yield* each('outcomes', 'appointment_id, rule, variant, holdout, sent, outcome, day', ['appointment_id', 'rule'], (row) => ({
        kind: 'outcome' as const,
        appointmentId: String(row.appointment_id),
        rule: String(row.rule),
        ...(row.variant !== '' ? { variant: String(row.variant) } : {}),
        holdout: b.bool(row.holdout),
        sent: b.bool(row.sent),
        outcome: row.outcome as OutcomeKind,
        day: String(row.day),
      }));
      // The waitlist: the columns hold what changes (state, claim); the JSON the rest.
      yield* each('waitlist_slots', 'id, state, claimed_by, json', ['id'], (row) => {
        const { claimedBy: _claimedBy, ...slot } = JSON.parse(String(row.json)) as WaitlistSlot;
        return { kind: 'waitlistSlot' as const, slot: { ...slot, state: row.state as WaitlistSlotState, ...(row.claimed_by !== null ? { claimedBy: String(row.claimed_by) } : {}) } };
      });
      yield* each('waitlist_offers', 'id, state, json', ['id'], (row) => ({
        kind: 'waitlistOffer' as const,
        offer: { ...(JSON.parse(String(row.json)) as WaitlistOffer), state: row.state as WaitlistOfferState },
      }));
      yield* each('waitlist_appointments', 'id, json', ['id'], (row) => ({ kind: 'waitlistAppointment' as const, appointment: JSON.parse(String(row.json)) as WaitlistAppointment }));
      yield* each('waitlist_entries', 'id, json', ['id'], (row) => ({ kind: 'waitlistEntry' as const, entry: JSON.parse(String(row.json)) as WaitlistEntry }));
    },
  };
}

function deliveryRecord(seq: number, d: StoredDelivery): DeliveryRecord {
  return {
    kind: 'delivery',
    seq,
    delivery: d.delivery,
    status: d.status,
    asOf: d.asOf,
    generation: d.generation,
    ...(d.subjectStart !== undefined ? { subjectStart: d.subjectStart } : {}),
    ...(d.reason !== undefined ? { reason: d.reason } : {}),
    ...(d.message !== undefined ? { message: d.message } : {}),
    ...(d.providerId !== undefined ? { providerId: d.providerId } : {}),
    createdAt: d.createdAt,
    updatedAt: d.updatedAt,
    ...(d.cause !== undefined ? { cause: d.cause } : {}),
  };
}

/** `(a, b) > (?, ?)` for a page's keys. */
export function afterCondition(keys: readonly string[]): string {
  return keys.length === 1 ? `${keys[0]} > ?` : `(${keys.join(', ')}) > (${keys.map(() => '?').join(', ')})`;
}
