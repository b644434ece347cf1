// Export from and import into the PostgreSQL store (store/dump.ts). An import writes every
// record in one transaction (all or nothing: a file cut short leaves the database as it was),
// a few hundred rows per statement, keeping the ids the records carry (message ids, outbox,
// audit, consent entry and decision ids), then moves each identity past the largest id.
import { createHash } from 'node:crypto';
import { causeColumns, compactDelivery, compactExplanation, expandExplanation, instantMs, packCancelKeys, packedKeyNeedsRow } from './common.ts';
import { consentEventSeq } from './consent-rows.ts';
import { afterCondition, dumpSource, DUMP_PAGE, type BackendRows } from './dump-tables.ts';
import type { DumpKind, DumpRecord, DumpSource, DumpTarget, MessageRecord, OutboxRecord, TriggerRecord } from './dump.ts';
import { sqlOf, type Sql } from './postgres-commit.ts';
import { explainPostgresError } from './postgres-db.ts';
import { DELIVERY_COLUMNS, DELIVERY_FROM, dedupeKey, deliveryFromRow, type DeliveryRow, type PostgresStore } from './postgres.ts';
import { MESSAGE_COLUMNS, OUTBOX_COLUMNS, messageFromRow, outboxEntryOf, type MessageRow, type OutboxRow } from './rows.ts';
import { entryUntilMs } from './sqlite-waitlist.ts';

/**
 * The records of a PostgreSQL store, as of one moment: the export reads in one read-only
 * REPEATABLE READ transaction, so it is consistent even while CareRelay keeps writing.
 */
export function postgresDumpSource(store: PostgresStore): DumpSource {
  return {
    async *records() {
      const client = await store.pool.connect().catch((error: unknown) => {
        throw explainPostgresError(error, store.target);
      });
      try {
        await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
        yield* dumpSource(backendRows(sqlOf(client))).records();
        await client.query('COMMIT');
      } finally {
        client.release();
      }
    },
  };
}

function backendRows(sql: Sql): BackendRows {
  return {
    async page(table, columns, keys, after, limit) {
      const where = after === undefined ? '' : ` WHERE ${afterCondition(keys)}`;
      let n = 0;
      const text = `SELECT ${columns} FROM ${table}${where} ORDER BY ${keys.join(', ')} LIMIT ?`.replace(/\?/g, () => `$${++n}`);
      return sql.rows<Record<string, unknown>>(text, [...(after ?? []), limit]);
    },
    triggerOrder: 'seq',
    messageColumns: `${MESSAGE_COLUMNS}, raw, raw_bytes, keyed, raw_quota`,
    message: (row): MessageRecord => ({
      kind: 'message',
      ...messageFromRow(row as unknown as MessageRow),
      raw: (row.raw as Buffer).toString('base64'),
      ...(row.raw_bytes !== null ? { rawBytes: Number(row.raw_bytes) } : {}),
      keyed: row.keyed === true,
      ...(row.raw_quota !== null ? { rawQuota: String(row.raw_quota) } : {}),
    }),
    triggerColumns: 'json, routing',
    trigger(row): TriggerRecord {
      const routedMs = row.routed_ms === null ? undefined : Number(row.routed_ms);
      return {
        kind: 'trigger',
        trigger: JSON.parse(String(row.json)),
        messageId: String(row.message_id),
        ...(routedMs !== undefined ? { routedMs } : {}),
        ...(row.routing !== null && routedMs !== undefined ? { routing: expandExplanation(String(row.id), String(row.routing), routedMs).rules } : {}),
      };
    },
    outboxColumns: OUTBOX_COLUMNS,
    outbox: (row): OutboxRecord => ({ kind: 'outbox', ...outboxEntryOf(row as unknown as OutboxRow) }),
    deliveryColumns: DELIVERY_COLUMNS,
    deliveryTable: DELIVERY_FROM,
    deliveryKey: 'd.seq',
    async deliveries(page) {
      return page.map((row) => deliveryFromRow(row as unknown as DeliveryRow));
    },
    bool: (value) => value === true,
  };
}

/** Tables an import must find empty (every table of the store but schema_migrations). */
const TABLES = [
  'messages',
  'triggers',
  'subject_states',
  'cursors',
  'deliveries',
  'delivery_keys',
  'outbox',
  'delivery_receipts',
  'audit',
  'contact_holdings',
  'consent_events',
  'fhir_consents',
  'patients',
  'contact_points',
  'patient_links',
  'decisions',
  'disclosures',
  'inbound_events',
  'erasures',
  'consent_mirrors',
  'video_joins',
  'video_links',
  'outcome_links',
  'outcomes',
  'reply_prompts',
  'staff_tasks',
  'waitlist_slots',
  'waitlist_offers',
  'waitlist_appointments',
  'waitlist_entries',
];

/** Identity columns moved past the largest imported id. */
const IDENTITIES: ReadonlyArray<[string, string]> = [
  ['messages', 'id'],
  ['triggers', 'seq'],
  ['deliveries', 'seq'],
  ['outbox', 'seq'],
  ['delivery_receipts', 'seq'],
  ['audit', 'seq'],
  ['contact_holdings', 'seq'],
  ['consent_events', 'seq'],
  ['fhir_consents', 'seq'],
  ['decisions', 'seq'],
  ['disclosures', 'seq'],
  ['erasures', 'seq'],
  ['staff_tasks', 'seq'],
];

/** The import side of a PostgreSQL store. */
export function postgresDumpTarget(store: PostgresStore): DumpTarget {
  return {
    async assertEmpty() {
      const sql = sqlOf(store.pool);
      for (const table of TABLES) {
        if ((await sql.rows(`SELECT 1 FROM ${table} LIMIT 1`)).length > 0) {
          throw new Error(`${store.describe()} already holds data (table ${table}): an import goes into an empty store; point server.store at a new database`);
        }
      }
    },
    async load(records) {
      const client = await store.pool.connect().catch((error: unknown) => {
        throw explainPostgresError(error, store.target);
      });
      const tx = sqlOf(client);
      const counts: Record<string, number> = {};
      try {
        await client.query('BEGIN');
        let kind: DumpKind | undefined;
        let batch: DumpRecord[] = [];
        const flush = async () => {
          if (kind !== undefined && batch.length > 0) await insert(tx, kind, batch);
          batch = [];
        };
        for await (const record of records) {
          if (record.kind !== kind || batch.length >= DUMP_PAGE) {
            await flush();
            kind = record.kind;
          }
          batch.push(record);
          counts[record.kind] = (counts[record.kind] ?? 0) + 1;
        }
        await flush();
        for (const [table, column] of IDENTITIES) {
          await tx.rows(`SELECT setval(pg_get_serial_sequence('${table}', '${column}'), COALESCE((SELECT MAX(${column}) FROM ${table}), 1), (SELECT MAX(${column}) FROM ${table}) IS NOT NULL)`);
        }
        await client.query('COMMIT');
        return counts;
      } catch (error) {
        await client.query('ROLLBACK').catch(() => {});
        throw error;
      } finally {
        client.release();
      }
    },
  };
}

/** One column an import writes: its name, its PostgreSQL type and its value in a record. */
type Column<R> = readonly [name: string, type: string, value: (record: R) => unknown];
type Rec<K extends DumpKind> = Extract<DumpRecord, { kind: K }>;
/** What one kind of record is written as: a table, and the columns the record gives. */
type Insert<K extends DumpKind> = { table: string; columns: ReadonlyArray<Column<Rec<K>>> };

const orNull = (value: unknown) => value ?? null;
const jsonOrNull = (value: unknown) => (value === undefined ? null : JSON.stringify(value));
const idOrNull = (value: string | undefined) => (value === undefined ? null : Number(value));
/** The number of a prefixed id (`fc-12`, `dc-3`). */
const seqOf = (id: string) => Number(id.replace(/^[a-z]+-/, ''));

const INSERTS: { [K in DumpKind]: Insert<K> } = {
  message: {
    table: 'messages',
    columns: [
      ['id', 'bigint', (m) => Number(m.id)],
      ['input', 'text', (m) => m.input],
      ['format', 'text', (m) => m.format],
      ['sender', 'text', (m) => m.sender],
      ['control_id', 'text', (m) => m.controlId],
      ['dedupe_key', 'bytea', (m) => dedupeKey(m.sender, m.controlId)],
      ['message_type', 'text', (m) => m.messageType],
      ['content_hash', 'text', (m) => m.contentHash],
      ['status', 'text', (m) => m.status],
      ['ack', 'text', (m) => m.ack],
      ['ack_code', 'text', (m) => m.ackCode],
      ['reason', 'text', (m) => orNull(m.reason)],
      ['received_at', 'text', (m) => m.receivedAt],
      ['received_ms', 'bigint', (m) => instantMs(m.receivedAt, 'receivedAt')],
      ['trigger_ids', 'text', (m) => JSON.stringify(m.triggerIds)],
      ['raw', 'bytea', (m) => Buffer.from(m.raw, 'base64')],
      ['raw_bytes', 'integer', (m) => orNull(m.rawBytes)],
      ['patient_id', 'text', (m) => orNull(m.patientId)],
      ['origin', 'text', (m) => m.origin ?? 'received'],
      ['replaces', 'bigint', (m) => idOrNull(m.replaces)],
      ['replaced_by', 'bigint', (m) => idOrNull(m.replacedBy)],
      ['keyed', 'boolean', (m) => m.keyed],
      ['raw_quota', 'text', (m) => orNull(m.rawQuota)],
    ],
  },
  trigger: {
    table: 'triggers',
    columns: [
      ['id', 'text', (r) => r.trigger.id],
      ['message_id', 'bigint', (r) => Number(r.messageId)],
      ['type', 'text', (r) => r.trigger.type],
      ['patient_id', 'text', (r) => r.trigger.patient?.id ?? ''],
      ['appointment_id', 'text', (r) => r.trigger.appointment?.id ?? null],
      ['encounter_id', 'text', (r) => r.trigger.encounter?.id ?? null],
      ['occurred_at', 'text', (r) => r.trigger.occurredAt],
      ['occurred_ms', 'bigint', (r) => instantMs(r.trigger.occurredAt, 'occurredAt')],
      ['json', 'text', (r) => JSON.stringify(r.trigger)],
      ['routed_ms', 'bigint', (r) => orNull(r.routedMs)],
      ['routing', 'text', (r) => (r.routing === undefined ? null : JSON.stringify(compactExplanation({ triggerId: r.trigger.id, routedAt: '', rules: r.routing })))],
    ],
  },
  subjectState: {
    table: 'subject_states',
    columns: [
      ['kind', 'text', (r) => r.state.kind],
      ['id', 'text', (r) => r.state.id],
      ['patient_id', 'text', (r) => r.state.patientId],
      ['status', 'text', (r) => orNull(r.state.status)],
      ['start', 'text', (r) => orNull(r.state.start)],
      ['"end"', 'text', (r) => orNull(r.state.end)],
      ['as_of', 'text', (r) => r.state.asOf],
      ['as_of_ms', 'bigint', (r) => instantMs(r.state.asOf, 'asOf')],
      ['data', 'text', (r) => jsonOrNull(r.state.data)],
      ['message_id', 'bigint', (r) => idOrNull(r.messageId)],
    ],
  },
  cursor: {
    table: 'cursors',
    columns: [
      ['key', 'text', (r) => r.key],
      ['value', 'text', (r) => r.value],
    ],
  },
  outbox: {
    table: 'outbox',
    columns: [
      ['seq', 'bigint', (r) => Number(r.id)],
      ['delivery_id', 'text', (r) => r.deliveryId],
      ['output', 'text', (r) => r.output],
      ['channel', 'text', (r) => r.channel],
      ['recipient', 'text', (r) => orNull(r.to)],
      ['language', 'text', (r) => r.language],
      ['subject', 'text', (r) => orNull(r.subject)],
      ['text', 'text', (r) => r.text],
      ['html', 'text', (r) => orNull(r.html)],
      ['kept_at', 'text', (r) => r.keptAt],
    ],
  },
  delivery: {
    table: 'deliveries',
    columns: [
      ['seq', 'bigint', (r) => r.seq],
      ['id', 'text', (r) => r.delivery.id],
      ['status', 'text', (r) => r.status],
      ['as_of', 'text', (r) => r.asOf],
      ['as_of_ms', 'bigint', (r) => instantMs(r.asOf, 'asOf')],
      ['due_at', 'text', (r) => r.delivery.dueAt],
      ['due_ms', 'bigint', (r) => instantMs(r.delivery.dueAt, 'dueAt')],
      ['rule', 'text', (r) => r.delivery.ruleId],
      ['patient_id', 'text', (r) => r.delivery.patientId],
      ['subject', 'text', (r) => r.delivery.subjectKey],
      ['generation', 'integer', (r) => r.generation],
      ['subject_start', 'text', (r) => orNull(r.subjectStart)],
      ['json', 'text', (r) => JSON.stringify(compactDelivery(r.delivery))],
      ['reason', 'text', (r) => orNull(r.reason)],
      ['message', 'text', (r) => jsonOrNull(r.message)],
      ['provider_id', 'text', (r) => orNull(r.providerId)],
      ['cause_trigger', 'text', (r) => causeColumns(r).trigger],
      ['cause', 'text', (r) => causeColumns(r).cause],
      ['created_at', 'text', (r) => r.createdAt],
      ['updated_at', 'text', (r) => r.updatedAt],
      ['output', 'text', (r) => r.delivery.output],
      ['variant', 'text', (r) => orNull(r.delivery.variant)],
    ],
  },
  receipt: {
    table: 'delivery_receipts',
    columns: [
      ['delivery_id', 'text', (r) => r.deliveryId],
      ['output', 'text', (r) => r.output],
      ['status', 'text', (r) => r.status],
      ['provider_id', 'text', (r) => r.providerId ?? ''],
      ['code', 'text', (r) => orNull(r.code)],
      ['attempt', 'integer', (r) => r.attempt ?? 0],
      ['at', 'text', (r) => r.at],
    ],
  },
  holding: {
    table: 'contact_holdings',
    columns: [
      ['output', 'text', (r) => r.output],
      ['patient_id', 'text', (r) => r.patientId],
      ['contact_key', 'text', (r) => r.contactKey],
      ['first_sent_at', 'text', (r) => r.firstSentAt],
      ['tool_id', 'text', (r) => orNull(r.toolId)],
    ],
  },
  audit: {
    table: 'audit',
    columns: [
      ['seq', 'bigint', (r) => Number(r.id)],
      ['at', 'text', (r) => r.at],
      ['actor', 'text', (r) => r.actor],
      ['action', 'text', (r) => r.action],
      ['target', 'text', (r) => r.target],
      ['outcome', 'text', (r) => r.outcome],
      ['result', 'text', (r) => orNull(r.result)],
    ],
  },
  consentEvent: {
    table: 'consent_events',
    columns: [
      ['seq', 'bigint', (r) => consentEventSeq(r.id)],
      ['patient_id', 'text', (r) => orNull(r.patientId)],
      ['address', 'text', (r) => orNull(r.address)],
      ['output', 'text', (r) => orNull(r.output)],
      ['action', 'text', (r) => r.action],
      ['purposes', 'text', (r) => JSON.stringify(r.purposes)],
      ['channel', 'text', (r) => orNull(r.channel)],
      ['source', 'text', (r) => r.source],
      ['method', 'text', (r) => r.method],
      ['at', 'text', (r) => r.at],
      ['at_ms', 'bigint', (r) => instantMs(r.at, 'at')],
      ['policy_version', 'text', (r) => r.policyVersion],
      ['reference', 'text', (r) => orNull(r.reference)],
      ['recorded_at', 'text', (r) => r.recordedAt],
    ],
  },
  fhirConsent: {
    table: 'fhir_consents',
    columns: [
      ['seq', 'bigint', (r) => seqOf(r.id)],
      ['patient_id', 'text', (r) => r.patientId],
      ['resource', 'text', (r) => JSON.stringify(r.resource)],
      ['resource_hash', 'bytea', (r) => createHash('sha256').update(JSON.stringify(r.resource)).digest()],
      ['effective_at', 'text', (r) => r.effectiveAt],
      ['effective_ms', 'bigint', (r) => instantMs(r.effectiveAt, 'effectiveAt')],
      ['source', 'text', (r) => r.source],
      ['recorded_at', 'text', (r) => r.recordedAt],
    ],
  },
  patient: {
    table: 'patients',
    columns: [
      ['id', 'text', (r) => r.id],
      ['deceased', 'boolean', (r) => r.deceased],
      ['first_seen_ms', 'bigint', (r) => r.firstSeenMs],
      ['erased_at', 'text', (r) => orNull(r.erasedAt)],
    ],
  },
  contactPoint: {
    table: 'contact_points',
    columns: [
      ['address', 'text', (r) => r.address],
      ['patient_id', 'text', (r) => r.patientId],
    ],
  },
  patientLink: {
    table: 'patient_links',
    columns: [
      ['from_id', 'text', (r) => r.from],
      ['to_id', 'text', (r) => r.to],
    ],
  },
  decision: {
    table: 'decisions',
    columns: [
      ['seq', 'bigint', (r) => seqOf(r.id)],
      ['delivery_id', 'text', (r) => r.deliveryId],
      ['patient_id', 'text', (r) => r.patientId],
      ['rule', 'text', (r) => r.rule],
      ['purpose', 'text', (r) => r.purpose],
      ['channel', 'text', (r) => r.channel],
      ['output', 'text', (r) => r.output],
      ['result', 'text', (r) => r.result],
      ['check_rule', 'integer', (r) => orNull(r.checkRule)],
      ['reason', 'text', (r) => orNull(r.reason)],
      ['retry_at', 'text', (r) => orNull(r.retryAt)],
      ['basis', 'text', (r) => r.basis],
      ['records', 'text', (r) => JSON.stringify(r.records)],
      ['settings', 'text', (r) => JSON.stringify(r.settings)],
      ['at', 'text', (r) => r.at],
    ],
  },
  disclosure: {
    table: 'disclosures',
    columns: [
      ['delivery_id', 'text', (r) => r.deliveryId],
      ['patient_id', 'text', (r) => r.patientId],
      ['rule', 'text', (r) => r.rule],
      ['purpose', 'text', (r) => r.purpose],
      ['channel', 'text', (r) => r.channel],
      ['output', 'text', (r) => r.output],
      ['recipient', 'text', (r) => orNull(r.recipient)],
      ['at', 'text', (r) => r.at],
      ['at_ms', 'bigint', (r) => instantMs(r.at, 'at')],
    ],
  },
  inboundEvent: {
    table: 'inbound_events',
    columns: [
      ['key', 'text', (r) => r.key],
      ['at', 'text', (r) => r.at],
    ],
  },
  erasure: {
    table: 'erasures',
    columns: [
      ['patient_id', 'text', (r) => r.patientId],
      ['at', 'text', (r) => r.at],
      ['cancelled', 'text', (r) => JSON.stringify(r.cancelled)],
      ['tools', 'text', (r) => JSON.stringify(r.tools)],
    ],
  },
  videoJoin: {
    table: 'video_joins',
    columns: [
      ['appointment_id', 'text', (r) => r.appointmentId],
      ['patient_id', 'text', (r) => r.patientId],
      ['as_of', 'text', (r) => r.asOf],
      ['as_of_ms', 'bigint', (r) => instantMs(r.asOf, 'asOf')],
      ['key_id', 'text', (r) => r.keyId],
      ['sealed', 'bytea', (r) => Buffer.from(r.sealed, 'base64')],
      ['message_id', 'bigint', (r) => idOrNull(r.messageId)],
    ],
  },
  videoLink: {
    table: 'video_links',
    columns: [
      ['token_hash', 'text', (r) => r.tokenHash],
      ['appointment_id', 'text', (r) => r.appointmentId],
      ['patient_id', 'text', (r) => r.patientId],
      ['delivery_id', 'text', (r) => r.deliveryId],
      ['start', 'text', (r) => r.start],
      ['zone', 'text', (r) => orNull(r.zone)],
      ['language', 'text', (r) => orNull(r.language)],
      ['minted_at', 'text', (r) => r.mintedAt],
    ],
  },
  replyPrompt: {
    table: 'reply_prompts',
    columns: [
      ['id', 'text', (r) => r.prompt.id],
      ['output', 'text', (r) => r.prompt.output],
      ['address', 'text', (r) => r.prompt.address],
      ['patient_id', 'text', (r) => r.prompt.patientId],
      ['sent_ms', 'bigint', (r) => instantMs(r.prompt.sentAt, 'sentAt')],
      ['closes_ms', 'bigint', (r) => instantMs(r.prompt.closesAt, 'closesAt')],
      ['answered', 'boolean', (r) => r.prompt.answer !== undefined],
      ['json', 'text', (r) => JSON.stringify(r.prompt)],
    ],
  },
  staffTask: {
    table: 'staff_tasks',
    columns: [
      ['seq', 'bigint', (r) => seqOf(r.task.id)],
      ['key', 'text', (r) => r.task.key],
      ['kind', 'text', (r) => r.task.kind],
      ['status', 'text', (r) => r.task.status],
      ['patient_id', 'text', (r) => orNull(r.task.patientId)],
      ['json', 'text', (r) => JSON.stringify((({ id: _id, status: _status, ...task }) => task)(r.task))],
    ],
  },
  outcomeLink: { table: 'outcome_links', columns: [['appointment_id', 'text', (r) => r.appointmentId]] },
  outcome: {
    table: 'outcomes',
    columns: [
      ['appointment_id', 'text', (r) => r.appointmentId],
      ['rule', 'text', (r) => r.rule],
      ['variant', 'text', (r) => r.variant ?? ''],
      ['holdout', 'boolean', (r) => r.holdout],
      ['sent', 'boolean', (r) => r.sent],
      ['outcome', 'text', (r) => r.outcome],
      ['day', 'text', (r) => r.day],
    ],
  },
  waitlistSlot: {
    table: 'waitlist_slots',
    columns: [
      ['id', 'text', (r) => r.slot.id],
      ['start_ms', 'bigint', (r) => instantMs(r.slot.start, 'slot.start')],
      ['opened_ms', 'bigint', (r) => instantMs(r.slot.openedAt, 'slot.openedAt')],
      ['state', 'text', (r) => r.slot.state],
      ['claimed_by', 'text', (r) => orNull(r.slot.claimedBy)],
      ['json', 'text', (r) => JSON.stringify((({ claimedBy: _claimedBy, ...slot }) => slot)(r.slot))],
    ],
  },
  waitlistOffer: {
    table: 'waitlist_offers',
    columns: [
      ['id', 'text', (r) => r.offer.id],
      ['slot_id', 'text', (r) => r.offer.slotId],
      ['patient_id', 'text', (r) => r.offer.patientId],
      ['offered_ms', 'bigint', (r) => instantMs(r.offer.offeredAt, 'offer.offeredAt')],
      ['state', 'text', (r) => r.offer.state],
      ['json', 'text', (r) => JSON.stringify(r.offer)],
    ],
  },
  waitlistAppointment: {
    table: 'waitlist_appointments',
    columns: [
      ['id', 'text', (r) => r.appointment.id],
      ['patient_id', 'text', (r) => r.appointment.patientId],
      ['service', 'text', (r) => r.appointment.service],
      ['practitioner', 'text', (r) => r.appointment.practitioner],
      ['start_ms', 'bigint', (r) => instantMs(r.appointment.start, 'appointment.start')],
      ['json', 'text', (r) => JSON.stringify(r.appointment)],
    ],
  },
  waitlistEntry: {
    table: 'waitlist_entries',
    columns: [
      ['id', 'text', (r) => r.entry.id],
      ['patient_id', 'text', (r) => r.entry.patientId],
      ['service', 'text', (r) => r.entry.service],
      ['practitioner', 'text', (r) => r.entry.practitioner],
      ['noted_ms', 'bigint', (r) => instantMs(r.entry.notedAt, 'entry.notedAt')],
      ['until_ms', 'bigint', (r) => entryUntilMs(r.entry)],
      ['json', 'text', (r) => JSON.stringify(r.entry)],
    ],
  },
};

/**
 * `INSERT INTO table (…) SELECT … FROM unnest($1::t1[], …) WITH ORDINALITY … ORDER BY ord`:
 * one statement per batch, one array parameter per column, rows in the file's order.
 */
async function insertRows<R>(tx: Sql, table: string, columns: ReadonlyArray<Column<R>>, batch: readonly R[], suffix = ''): Promise<void> {
  const names = columns.map((_, i) => `c${i}`);
  await tx.count(
    `INSERT INTO ${table} (${columns.map(([name]) => name).join(', ')})
     SELECT ${names.join(', ')} FROM unnest(${columns.map(([, type], i) => `$${i + 1}::${type}[]`).join(', ')}) WITH ORDINALITY AS u (${names.join(', ')}, ord)
     ORDER BY ord${suffix}`,
    columns.map(([, , value]) => batch.map(value)),
  );
}

async function insert(tx: Sql, kind: DumpKind, batch: readonly DumpRecord[]): Promise<void> {
  const spec = INSERTS[kind] as Insert<DumpKind>;
  await insertRows(tx, spec.table, spec.columns, batch as ReadonlyArray<Rec<DumpKind>>);
  if (kind === 'delivery') {
    // The cancel keys no column finds (common.ts packCancelKeys) get a row each.
    const keys: Array<{ seq: number; key: string }> = [];
    for (const r of batch as ReadonlyArray<Rec<'delivery'>>) {
      for (const key of new Set(r.delivery.cancelKeys)) {
        if (packedKeyNeedsRow(packCancelKeys({ ...r.delivery, cancelKeys: [key] })[0]!)) keys.push({ seq: r.seq, key });
      }
    }
    const columns: ReadonlyArray<Column<{ seq: number; key: string }>> = [
      ['delivery_seq', 'bigint', (k) => k.seq],
      ['key', 'text', (k) => k.key],
    ];
    if (keys.length > 0) await insertRows(tx, 'delivery_keys', columns, keys, ' ON CONFLICT DO NOTHING');
  }
  if (kind === 'consentEvent') {
    // The pushes still owed.
    const mirrors = (batch as ReadonlyArray<Rec<'consentEvent'>>).flatMap((r) => (r.mirrorTo ?? []).map((output) => ({ seq: consentEventSeq(r.id), output })));
    const columns: ReadonlyArray<Column<{ seq: number; output: string }>> = [
      ['event_seq', 'bigint', (m) => m.seq],
      ['output', 'text', (m) => m.output],
    ];
    if (mirrors.length > 0) await insertRows(tx, 'consent_mirrors', columns, mirrors);
  }
}
