// The scale-out Store: PostgreSQL (docs/architecture.md "Backends", docs/scale-out.md). Several
// CareRelay processes may share one database; everything the embedded store promises holds
// across them, and the same conformance suite checks it (store/conformance.ts).
//
// Durability (docs/reliability.md #1, #2). A write resolves once its transaction committed,
// which with PostgreSQL's defaults (synchronous_commit = on, fsync = on) means its WAL record
// is flushed: only then may the caller send AA / 2xx. A failed commit rejects and the caller
// NAKs; a connection lost during COMMIT also rejects (the commit may or may not have landed:
// the sender's resend is then answered from the dedupe key, never stored twice).
//
// Group commit (postgres-commit.ts). Writes requested while a transaction commits go together
// in the next one, whatever connection or process asked: inbound records as a handful of
// multi-row statements (look-up of every dedupe key at once, then messages, triggers, patient
// facts, subject states and cursors each in one INSERT … SELECT FROM unnest), routing results,
// finishes, outbox entries, receipts and ledger entries as their own statements, all pipelined
// on one connection. One record that breaks a constraint fails alone.
//
// Dedupe across processes (docs/reliability.md #3). The dedupe key is a unique index over
// sha256(sender NUL control id) for messages that are not quarantined and hold their key: an
// index over the ids themselves could not take the 1 MB MSH-10 a hostile sender may send. Two
// processes committing the same message at once both find no original; the second INSERT
// waits for the first transaction and fails on the unique index, and its whole batch runs
// again: the look-up now finds the original and the record is a duplicate. Quarantining a
// conflicting copy takes a transaction-scoped advisory lock on the key, so the same conflicting
// bytes are quarantined once. An operator's attempt locks the message it replaces (FOR UPDATE).
//
// Races between processes elsewhere. Deliveries are only ever changed by conditional
// statements (a final delivery is never overwritten; a finish needs the generation and a
// pending or failed status), so two workers cannot both finish one. Routing reads deliveries
// before it writes them: withLock('routing') is a session advisory lock that makes one router
// at a time work across every process. Totals per status are kept by statement triggers in
// rows per (status, slot), slot = the connection's backend pid modulo 16, so concurrent
// transactions do not queue on one counter row.
//
// Storage. Raw bytes are kept as received (bytea): the text search runs in the server. JSON
// (triggers, deliveries, kept messages, explanations) is kept as text in the same compact forms
// as the embedded store (common.ts: a delivery without the fields its columns hold, cancel keys
// packed; explanations as arrays), not deflated with dictionaries: that would cost this
// process CPU per row — the ingest bottleneck — and make rows unreadable in SQL; PostgreSQL
// compresses values over about 2 kB itself (TOAST). docs/scale-out.md gives the growth per
// message measured by `npm run bench`.
//
// Ids are decimal strings of bigint identity columns; imported rows keep theirs (store/dump.ts).
import { createHash } from 'node:crypto';
import type pg from 'pg';
import { MessageStatus, type Channel, type ConsentEvent, type ContactHolding, type DeliveryReceipt, type Trigger } from '../types.ts';
import {
  ATTEMPT_AUDIT_ACTION,
  StaleAttemptError,
  StoreReason,
  cancelKeyProbes,
  causeColumns,
  compactDelivery,
  compactExplanation,
  expandDeliveryJson,
  expandExplanation,
  ListFilter,
  instantMs,
  listLimit,
  messageIdFilter,
  messageOfEntry,
  packCancelKeys,
  packedKeyNeedsRow,
  parseMessageId,
  patientIdOf,
  rawQuotaPlan,
  counterValue,
  skippedRulesOf,
  storedMessageOf,
  triggerIdsOf,
} from './common.ts';
import { factsOf } from './consent-rows.ts';
import {
  AUDIT_COLUMNS,
  HOLDING_COLUMNS,
  MESSAGE_COLUMNS,
  OUTBOX_COLUMNS,
  RECEIPT_COLUMNS,
  STATE_COLUMNS,
  auditFromRow,
  holdingFromRow,
  messageFromRow,
  outboxEntryOf,
  receiptFromRow,
  stateFromRow,
  storedDeliveryOf,
  type AuditRow,
  type DeliveryRowBase,
  type HoldingRow,
  type MessageRow,
  type OutboxRow,
  type ReceiptRow,
  type StateRow,
} from './rows.ts';
import { GroupCommitter, settleAll, sqlOf, type BatchRunner, type Sql } from './postgres-commit.ts';
import { POSTGRES_RETENTION_SCHEMA, POSTGRES_VISIT_REPLY_RETENTION_SCHEMA, pruneBatch } from './postgres-retention.ts';
import * as ledger from './postgres-consent.ts';
import * as ops from './postgres-operations.ts';
import * as replies from './postgres-replies.ts';
import {
  LOCK_SPACE,
  checkPostgres,
  describeTarget,
  explainPostgresError,
  migratePostgres,
  openPostgresPool,
  type PostgresConnection,
  type PostgresSettings,
  type PostgresTarget,
} from './postgres-db.ts';
import * as waitlist from './postgres-waitlist.ts';
import type { WaitlistAppointment, WaitlistEntry, WaitlistFigures, WaitlistOffer, WaitlistOfferState, WaitlistSlot, WaitlistSlotState } from './store.ts';
import { ATTEMPT_FROM_STATUS, AttemptKind, PromptClosedError, RAW_QUOTA_CURSOR, STORED_DELIVERY_STATUSES, StoredDeliveryStatus, isPending } from './store.ts';
import type {
  NewStaffTask,
  ReplyPrompt,
  StaffTask,
  StaffTaskStatus,
  DeliveryTally,
  FlowActivity,
  OutcomeCount,
  OutcomeLink,
  OutcomeObservation,
  OutcomeQuery,
  PruneBatch,
  PruneOptions,
  RetentionKind,
  StoredVideoJoin,
  VideoLink,
} from './store.ts';
import type {
  AuditEntry,
  AuditQuery,
  CommitOutcome,
  ConsentLedger,
  ContactHoldingQuery,
  DecisionRecord,
  DeliveryOutcome,
  DeliveryQuery,
  DeliveryWrite,
  Disclosure,
  ErasureRecord,
  InboundRecord,
  MessageQuery,
  OutboxEntry,
  OutboxQuery,
  PatientFacts,
  ReceiptQuery,
  RoutingExplanation,
  SaveRoutingOptions,
  SentMessage,
  Store,
  StoredDelivery,
  StoredFhirConsent,
  StoredMessage,
  StoredMessageWithBody,
  SubjectState,
  TriggerQuery,
  TriggerRouting,
} from './store.ts';

/** Component name of the store's tables in schema_migrations. */
export const POSTGRES_STORE_COMPONENT = 'store';

/** Index entries of message types are cut to this many characters (an MSH-9 may be 1 MB). */
const TYPE_PREFIX = 64;

/** Schema versions of the store's tables: append-only (see migratePostgres). */
export const POSTGRES_STORE_MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE messages (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    input TEXT NOT NULL,
    format TEXT NOT NULL CHECK (format IN ('hl7v2', 'fhir')),
    sender TEXT NOT NULL,
    control_id TEXT NOT NULL,
    dedupe_key BYTEA NOT NULL,
    message_type TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('accepted', 'ignored', 'rejected', 'quarantined')),
    ack TEXT NOT NULL,
    ack_code TEXT NOT NULL,
    reason TEXT,
    received_at TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    trigger_ids TEXT NOT NULL,
    raw BYTEA NOT NULL,
    raw_bytes INTEGER,
    patient_id TEXT,
    origin TEXT NOT NULL DEFAULT 'received' CHECK (origin IN ('received', 'reprocess', 'release')),
    replaces BIGINT REFERENCES messages (id),
    replaced_by BIGINT,
    keyed BOOLEAN NOT NULL DEFAULT TRUE
  );
  -- The dedupe key. Quarantined copies and replaced messages sit outside it.
  CREATE UNIQUE INDEX messages_dedupe ON messages (dedupe_key) WHERE control_id <> '' AND status <> 'quarantined' AND keyed;
  CREATE INDEX messages_key ON messages (dedupe_key);
  CREATE INDEX messages_received ON messages (received_ms, id);
  CREATE INDEX messages_patient ON messages (patient_id, received_ms, id) WHERE patient_id IS NOT NULL;
  CREATE INDEX messages_type ON messages ((left(message_type, ${TYPE_PREFIX})), received_ms, id);
  CREATE INDEX messages_status ON messages (status, received_ms, id) WHERE status <> 'accepted';

  CREATE TABLE triggers (
    seq BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE,
    id TEXT PRIMARY KEY,
    message_id BIGINT NOT NULL REFERENCES messages (id),
    type TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    appointment_id TEXT,
    encounter_id TEXT,
    occurred_at TEXT NOT NULL,
    occurred_ms BIGINT NOT NULL,
    json TEXT NOT NULL,
    routed_ms BIGINT,
    routing TEXT
  );
  CREATE INDEX triggers_occurred ON triggers (occurred_ms, seq);
  CREATE INDEX triggers_patient ON triggers (patient_id, occurred_ms, seq);
  CREATE INDEX triggers_appointment ON triggers (appointment_id, occurred_ms, seq) WHERE appointment_id IS NOT NULL;
  CREATE INDEX triggers_encounter ON triggers (encounter_id, occurred_ms, seq) WHERE encounter_id IS NOT NULL;
  CREATE INDEX triggers_message ON triggers (message_id);
  CREATE INDEX triggers_type ON triggers (type, occurred_ms, seq);
  CREATE INDEX triggers_unrouted ON triggers (seq) WHERE routed_ms IS NULL;

  CREATE TABLE subject_states (
    kind TEXT NOT NULL CHECK (kind IN ('appointment', 'encounter')),
    id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    status TEXT,
    start TEXT,
    "end" TEXT,
    as_of TEXT NOT NULL,
    as_of_ms BIGINT NOT NULL,
    data TEXT,
    message_id BIGINT REFERENCES messages (id),
    PRIMARY KEY (kind, id)
  );
  CREATE INDEX subject_states_patient ON subject_states (patient_id, kind);

  CREATE TABLE cursors (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
  );

  CREATE TABLE deliveries (
    seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('pending', 'cancelled', 'sent', 'suppressed', 'failed')),
    as_of TEXT NOT NULL,
    as_of_ms BIGINT NOT NULL,
    due_at TEXT NOT NULL,
    due_ms BIGINT NOT NULL,
    rule TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    generation INTEGER NOT NULL,
    subject_start TEXT,
    json TEXT NOT NULL,
    reason TEXT,
    message TEXT,
    outbox_seq BIGINT,
    provider_id TEXT,
    cause_trigger TEXT,
    cause TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
  );
  CREATE INDEX deliveries_status ON deliveries (status, seq);
  CREATE INDEX deliveries_rule ON deliveries (rule, seq);
  CREATE INDEX deliveries_patient ON deliveries (patient_id, seq);
  CREATE INDEX deliveries_subject ON deliveries (subject, seq);

  -- Cancel keys no column finds (common.ts packCancelKeys): one row each.
  CREATE TABLE delivery_keys (
    key TEXT NOT NULL,
    delivery_seq BIGINT NOT NULL,
    PRIMARY KEY (key, delivery_seq)
  );

  CREATE TABLE outbox (
    seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    delivery_id TEXT NOT NULL UNIQUE,
    output TEXT NOT NULL,
    channel TEXT NOT NULL,
    recipient TEXT,
    language TEXT NOT NULL,
    subject TEXT,
    text TEXT NOT NULL,
    html TEXT,
    kept_at TEXT NOT NULL
  );
  CREATE INDEX outbox_output ON outbox (output, seq);

  CREATE TABLE delivery_receipts (
    seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    output TEXT NOT NULL,
    status TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    code TEXT,
    attempt INTEGER NOT NULL,
    at TEXT NOT NULL,
    UNIQUE (delivery_id, output, status, provider_id, attempt)
  );
  CREATE INDEX delivery_receipts_provider ON delivery_receipts (output, provider_id) WHERE provider_id <> '';

  CREATE TABLE audit (
    seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    result TEXT
  );
  CREATE INDEX audit_target ON audit (target, seq);

  CREATE TABLE contact_holdings (
    seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    output TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    contact_key TEXT NOT NULL,
    first_sent_at TEXT NOT NULL,
    UNIQUE (output, patient_id, contact_key)
  );
  CREATE INDEX contact_holdings_patient ON contact_holdings (patient_id);
  CREATE INDEX contact_holdings_contact ON contact_holdings (output, contact_key);

  ${ledger.POSTGRES_CONSENT_TABLES}

  -- Totals per status, kept by statement triggers (see "Races" above for the slots).
  CREATE TABLE delivery_counts (status TEXT NOT NULL, slot INTEGER NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (status, slot));
  CREATE TABLE message_counts (status TEXT NOT NULL, slot INTEGER NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (status, slot));
  ${countTriggers('messages', 'message_counts', 'id')}
  ${countTriggers('deliveries', 'delivery_counts', 'seq')}
  `,
  // Holdings by the tool's own id, the erasure record's tools, the dashboard's counts, outcomes
  // and video visits (postgres-operations.ts).
  ops.POSTGRES_OPERATIONS_TABLES,
  // Replies to reminders and staff tasks; SMS replies stored as messages (postgres-replies.ts).
  replies.POSTGRES_REPLY_TABLES,
  // The raw-bytes quota's account a row's whole bytes were counted under (given back by erasure).
  'ALTER TABLE messages ADD COLUMN raw_quota TEXT;',
  // A delivery in review: an ambiguous failure of an output that does not dedupe, waiting for a
  // person (DeliveryStatus.Review).
  `
  ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
  ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check CHECK (status IN ('pending', 'cancelled', 'sent', 'suppressed', 'failed', 'review'));
  `,
  // The waitlist; its waves of offers stored as messages (postgres-waitlist.ts).
  waitlist.POSTGRES_WAITLIST_TABLES,
  // Retention's walks: a column for cleared bodies and the indexes its batches read by
  // (postgres-retention.ts).
  POSTGRES_RETENTION_SCHEMA,
  // Retention of video joins and links, reply prompts (postgres-retention.ts).
  POSTGRES_VISIT_REPLY_RETENTION_SCHEMA,
  // The EHR's waitlist entries, a source of the waitlist's candidates (postgres-waitlist.ts).
  waitlist.POSTGRES_WAITLIST_ENTRIES_TABLE,
];

/** Statement triggers keeping `counts` (status, slot, n) in step with `table`'s status column. */
function countTriggers(table: string, counts: string, key: string): string {
  const add = (select: string) =>
    `INSERT INTO ${counts} (status, slot, n) ${select}
       ON CONFLICT (status, slot) DO UPDATE SET n = ${counts}.n + excluded.n;`;
  return `
  CREATE FUNCTION ${table}_counted_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    ${add('SELECT status, pg_backend_pid() % 16, COUNT(*) FROM new_rows GROUP BY status')}
    RETURN NULL; END $$;
  CREATE TRIGGER ${table}_counted_insert AFTER INSERT ON ${table} REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ${table}_counted_insert();
  CREATE FUNCTION ${table}_counted_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    ${add(`SELECT status, pg_backend_pid() % 16, SUM(d) FROM (
        SELECT o.status, -1 AS d FROM old_rows o JOIN new_rows w ON w.${key} = o.${key} WHERE o.status <> w.status
        UNION ALL
        SELECT w.status, 1 AS d FROM old_rows o JOIN new_rows w ON w.${key} = o.${key} WHERE o.status <> w.status
      ) AS changed GROUP BY status`)}
    RETURN NULL; END $$;
  CREATE TRIGGER ${table}_counted_update AFTER UPDATE ON ${table} REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ${table}_counted_update();
  CREATE FUNCTION ${table}_counted_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    ${add('SELECT status, pg_backend_pid() % 16, -COUNT(*) FROM old_rows GROUP BY status')}
    RETURN NULL; END $$;
  CREATE TRIGGER ${table}_counted_delete AFTER DELETE ON ${table} REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ${table}_counted_delete();
  `;
}

/** Most writes committed in one transaction. */
const MAX_BATCH = 256;
/** Unique constraints a concurrent transaction can take first: losing the race is retried. */
const RACED = new Set(['messages_dedupe']);

/** A delivery's columns, with the outbox entry its message is kept in (o_*), if any … */
export const DELIVERY_COLUMNS = `d.seq, d.id, d.status, d.as_of, d.generation, d.subject_start, d.json, d.reason, d.message, d.provider_id,
    d.created_at, d.updated_at, d.rule, d.subject, d.patient_id, d.cause_trigger, d.cause,
    o.seq AS o_seq, o.delivery_id AS o_delivery_id, o.output AS o_output, o.channel AS o_channel, o.recipient AS o_recipient,
    o.language AS o_language, o.subject AS o_subject, o.text AS o_text, o.html AS o_html, o.kept_at AS o_kept_at`;
/** … read from these. */
export const DELIVERY_FROM = 'deliveries d LEFT JOIN outbox o ON o.seq = d.outbox_seq';
const DELIVERY_SELECT = `SELECT ${DELIVERY_COLUMNS} FROM ${DELIVERY_FROM}`;

export interface DeliveryRow extends DeliveryRowBase {
  seq: number;
  id: string;
  status: StoredDeliveryStatus;
  json: string;
  message: string | null;
  provider_id: string | null;
  rule: string;
  subject: string;
  patient_id: string;
  o_seq: number | null;
  o_delivery_id: string;
  o_output: string;
  o_channel: Channel;
  o_recipient: string | null;
  o_language: string;
  o_subject: string | null;
  o_text: string;
  o_html: string | null;
  o_kept_at: string;
}

/** A record with its instants checked and converted, and its dedupe key (outside the transaction). */
interface Prepared {
  record: InboundRecord;
  key: Buffer;
  receivedMs: number;
  occurredMs: number[];
  asOfMs: number[];
  joinAsOfMs: number[];
}

/** What the group commit runs: an inbound record (multi-row path) or any other write. */
type Item = { kind: 'inbound'; p: Prepared } | { kind: 'write'; run: (tx: Sql) => Promise<unknown> };

/** sha256(sender NUL control id): the dedupe key (see "Dedupe" above). */
export function dedupeKey(sender: string, controlId: string): Buffer {
  return createHash('sha256').update(sender).update('\u0000').update(controlId).digest();
}

export interface PostgresStoreOptions {
  /** Transactions committed at once, each on its own connection (default 2). */
  writeConcurrency?: number;
}

export class PostgresStore implements Store {
  /**
   * Connects (a pool within its limits), brings the schema up to date and returns the store.
   * Throws an Error naming the server and the fix when it cannot be reached or used.
   */
  static async open(settings: PostgresSettings, options: PostgresStoreOptions = {}): Promise<PostgresStore> {
    const connection = openPostgresPool(settings);
    try {
      await checkPostgres(connection);
      await migratePostgres(connection.pool, POSTGRES_STORE_COMPONENT, POSTGRES_STORE_MIGRATIONS).catch((error: unknown) => {
        throw explainPostgresError(error, connection.target);
      });
      return new PostgresStore(connection, options);
    } catch (error) {
      await connection.pool.end().catch(() => {});
      throw error;
    }
  }

  readonly pool: pg.Pool;
  readonly target: PostgresTarget;
  readonly #sql: Sql;
  readonly #committer: GroupCommitter<Item, unknown>;
  #closed = false;
  #commits = 0;

  /** A store on an open connection whose schema is up to date (PostgresStore.open). */
  constructor(connection: PostgresConnection, options: PostgresStoreOptions = {}) {
    this.pool = connection.pool;
    this.target = connection.target;
    this.#sql = sqlOf(this.pool);
    const runner: BatchRunner<Item, unknown> = {
      runAll: (tx, items) => this.#runAll(tx, items),
      runOne: (tx, item) => (item.kind === 'inbound' ? this.#applyOne(tx, item.p) : item.run(tx)),
    };
    // At most one connection of the pool is left to reads and the routing lock.
    const concurrency = Math.max(1, Math.min(options.writeConcurrency ?? 2, connection.poolMax - 2));
    this.#committer = new GroupCommitter(this.pool, runner, {
      maxBatch: MAX_BATCH,
      concurrency,
      raced: RACED,
      explain: (error) => explainPostgresError(error, this.target),
      committed: () => {
        this.#commits++;
      },
    });
  }

  /** Transactions committed so far by this store (benchmarks: commits per message). */
  get commits(): number {
    return this.#commits;
  }

  /** "PostgreSQL at host:port, database …" (logs and messages; no password). */
  describe(): string {
    return describeTarget(this.target);
  }

  commitInbound(record: InboundRecord): Promise<CommitOutcome> {
    return this.#submit(() => {
      // Checked before the transaction: a bad instant is a bug upstream, not a store fault.
      const receivedMs = instantMs(record.receivedAt, 'receivedAt');
      const occurredMs = record.triggers.map((t, i) => instantMs(t.occurredAt, `triggers[${i}].occurredAt`));
      const asOfMs = record.subjectStates.map((s, i) => instantMs(s.asOf, `subjectStates[${i}].asOf`));
      const joinAsOfMs = (record.videoJoins ?? []).map((j, i) => instantMs(j.asOf, `videoJoins[${i}].asOf`));
      for (const task of record.tasks ?? []) replies.checkTask(task);
      return { kind: 'inbound', p: { record, key: dedupeKey(record.sender, record.controlId), receivedMs, occurredMs, asOfMs, joinAsOfMs } };
    }) as Promise<CommitOutcome>;
  }

  /** Runs `run` inside the next group commit; resolves with its value once committed. */
  #write<T>(run: (tx: Sql) => Promise<T>): Promise<T> {
    return this.#submit(() => ({ kind: 'write', run })) as Promise<T>;
  }

  /** `prepare` runs now (its exceptions reject at once), its item in the next transaction. */
  #submit(prepare: () => Item): Promise<unknown> {
    try {
      this.#assertOpen();
      return this.#committer.submit(prepare());
    } catch (error) {
      return Promise.reject(error);
    }
  }

  async findMessage(sender: string, controlId: string): Promise<StoredMessage | undefined> {
    this.#assertOpen();
    if (controlId === '') return undefined;
    const row = await this.#findOriginal(this.#sql, dedupeKey(sender, controlId));
    return row === undefined ? undefined : messageFromRow(row);
  }

  async getMessage(id: string): Promise<StoredMessageWithBody | undefined> {
    this.#assertOpen();
    const rowid = parseMessageId(id);
    if (rowid === undefined) return undefined;
    const [row] = await this.#read<MessageRow & { raw: Buffer; raw_bytes: number | null }>(`SELECT ${MESSAGE_COLUMNS}, raw, raw_bytes FROM messages WHERE id = $1`, [rowid]);
    if (row === undefined) return undefined;
    const message = messageFromRow(row);
    const rows = message.triggerIds.length === 0 ? [] : await this.#read<{ id: string; json: string }>('SELECT id, json FROM triggers WHERE id = ANY($1::text[])', [message.triggerIds]);
    const byId = new Map(rows.map((r) => [r.id, r.json]));
    const triggers = message.triggerIds.flatMap((t) => (byId.has(t) ? [JSON.parse(byId.get(t)!) as Trigger] : []));
    return { ...message, raw: row.raw, ...(row.raw_bytes !== null ? { rawBytes: row.raw_bytes } : {}), triggers };
  }

  async listMessages(query: MessageQuery): Promise<StoredMessage[]> {
    this.#assertOpen();
    const f = new ListFilter(true);
    if (query.sender !== undefined && query.controlId !== undefined) f.add('dedupe_key = ?', dedupeKey(query.sender, query.controlId));
    f.eq('sender', query.sender).eq('control_id', query.controlId).eq('status', query.status).eq('input', query.input).eq('patient_id', query.patientId);
    f.atLeast('received_ms', query.since, 'since').atMost('received_ms', query.until, 'until');
    if (query.messageType !== undefined) {
      const type = query.messageType;
      // The index holds the first TYPE_PREFIX characters; "SIU" also finds every "SIU^…".
      if (type.includes('^') || type.length >= TYPE_PREFIX) f.add(`left(message_type, ${TYPE_PREFIX}) = left(?, ${TYPE_PREFIX}) AND message_type = ?`, type, type);
      else f.add(`(left(message_type, ${TYPE_PREFIX}) = ? OR (left(message_type, ${TYPE_PREFIX}) >= ? AND left(message_type, ${TYPE_PREFIX}) < ?))`, type, `${type}^`, `${type}_`);
    }
    if (query.triggerType !== undefined) f.add('id IN (SELECT message_id FROM triggers WHERE type = ?)', query.triggerType);
    if (query.text !== undefined) {
      // The bytes as received, ASCII letters without regard to case: both sides in bytea's
      // escape form (printable ASCII as is, other bytes as \ooo), so any byte is searchable.
      f.add("position(upper(encode(convert_to(?, 'UTF8'), 'escape')) IN upper(encode(raw, 'escape'))) > 0", query.text);
    }
    if (query.before !== undefined) {
      const rowid = parseMessageId(query.before);
      const [position] = rowid === undefined ? [] : await this.#read<{ received_ms: number; id: number }>('SELECT received_ms, id FROM messages WHERE id = $1', [rowid]);
      if (position === undefined) {
        throw new RangeError(`before must be the id of a stored message (the last id of the previous page), got ${JSON.stringify(query.before)}`);
      }
      f.add('(received_ms, id) < (?, ?)', position.received_ms, position.id);
    }
    const { sql, params } = f.select(MESSAGE_COLUMNS, 'messages', 'received_ms DESC, id DESC', listLimit(query.limit));
    return (await this.#read<MessageRow>(sql, params)).map(messageFromRow);
  }

  async getTrigger(id: string): Promise<Trigger | undefined> {
    this.#assertOpen();
    const [row] = await this.#read<{ json: string }>('SELECT json FROM triggers WHERE id = $1', [id]);
    return row === undefined ? undefined : (JSON.parse(row.json) as Trigger);
  }

  async triggerInput(triggerId: string): Promise<string | undefined> {
    this.#assertOpen();
    const [row] = await this.#read<{ input: string }>('SELECT m.input FROM triggers t JOIN messages m ON m.id = t.message_id WHERE t.id = $1', [triggerId]);
    return row?.input;
  }

  async listTriggers(query: TriggerQuery): Promise<Trigger[]> {
    this.#assertOpen();
    const f = new ListFilter(true)
      .eq('type', query.type)
      .eq('patient_id', query.patientId)
      .eq('appointment_id', query.appointmentId)
      .eq('encounter_id', query.encounterId)
      .eq('message_id', query.messageId === undefined ? undefined : messageIdFilter(query.messageId))
      .atLeast('occurred_ms', query.since, 'since')
      .atMost('occurred_ms', query.until, 'until');
    const { sql, params } = f.select('json', 'triggers', 'occurred_ms DESC, seq DESC', listLimit(query.limit));
    return (await this.#read<{ json: string }>(sql, params)).map((r) => JSON.parse(r.json) as Trigger);
  }

  async messageOfTrigger(triggerId: string): Promise<string | undefined> {
    this.#assertOpen();
    const [row] = await this.#read<{ message_id: number }>('SELECT message_id FROM triggers WHERE id = $1', [triggerId]);
    return row === undefined ? undefined : String(row.message_id);
  }

  async getTriggerRouting(triggerId: string): Promise<TriggerRouting | undefined> {
    this.#assertOpen();
    const [row] = await this.#read<{ routed_ms: number | null; routing: string | null }>('SELECT routed_ms, routing FROM triggers WHERE id = $1', [triggerId]);
    if (row === undefined) return undefined;
    if (row.routed_ms === null) return { routed: false };
    // 0: routed before routing times were kept (an import from an older embedded store).
    if (row.routed_ms === 0) return { routed: true };
    return {
      routed: true,
      routedAt: new Date(row.routed_ms).toISOString(),
      ...(row.routing !== null ? { skipped: skippedRulesOf(expandExplanation(triggerId, row.routing, row.routed_ms)) } : {}),
    };
  }

  appendAudit(entry: Omit<AuditEntry, 'id'>): Promise<AuditEntry> {
    try {
      instantMs(entry.at, 'at');
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#write(async (tx) => {
      const [row] = await tx.rows<{ seq: number }>('INSERT INTO audit (at, actor, action, target, outcome, result) VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq', [
        entry.at,
        entry.actor,
        entry.action,
        entry.target,
        entry.outcome,
        entry.result ?? null,
      ]);
      return { id: String(row!.seq), ...entry };
    });
  }

  async listAudit(query: AuditQuery): Promise<AuditEntry[]> {
    this.#assertOpen();
    const { sql, params } = new ListFilter(true).eq('target', query.target).select(AUDIT_COLUMNS, 'audit', 'seq DESC', listLimit(query.limit));
    return (await this.#read<AuditRow>(sql, params)).map(auditFromRow);
  }

  async getSubjectState(kind: SubjectState['kind'], id: string): Promise<SubjectState | undefined> {
    this.#assertOpen();
    const [row] = await this.#read<StateRow>(`SELECT ${STATE_COLUMNS} FROM subject_states WHERE kind = $1 AND id = $2`, [kind, id]);
    return row === undefined ? undefined : stateFromRow(row);
  }

  async listSubjectStates(kind: SubjectState['kind'], patientId: string): Promise<SubjectState[]> {
    this.#assertOpen();
    return (await this.#read<StateRow>(`SELECT ${STATE_COLUMNS} FROM subject_states WHERE patient_id = $1 AND kind = $2 ORDER BY id`, [patientId, kind])).map(stateFromRow);
  }

  async getCursor(key: string): Promise<string | undefined> {
    this.#assertOpen();
    const [row] = await this.#read<{ value: string }>('SELECT value FROM cursors WHERE key = $1', [key]);
    return row?.value;
  }

  async setCursor(key: string, value: string): Promise<void> {
    await this.#write((tx) => tx.count('INSERT INTO cursors (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [key, value]));
  }

  async listUnroutedTriggers(limit: number): Promise<Trigger[]> {
    this.#assertOpen();
    return (await this.#read<{ json: string }>('SELECT json FROM triggers WHERE routed_ms IS NULL ORDER BY seq LIMIT $1', [listLimit(limit)])).map((r) => JSON.parse(r.json) as Trigger);
  }

  saveRouting(triggerIds: string | readonly string[], deliveries: readonly DeliveryWrite[], routedAt: string, options: SaveRoutingOptions = {}): Promise<void> {
    const ids = typeof triggerIds === 'string' ? [triggerIds] : [...triggerIds];
    let prepared: ReturnType<typeof routingRows>;
    try {
      if (options.joined !== undefined) {
        throw new Error('saveRouting: the PostgreSQL store cannot run joined work; drive the queue through its own methods before saveRouting (workers/router.ts)');
      }
      prepared = routingRows(ids, deliveries, routedAt, options.explanations ?? []);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#write(async (tx) => {
      const r = prepared;
      await settleAll([
        r.deliveries.id.length === 0
          ? Promise.resolve(0)
          : tx.count(
              // A final delivery (sent, suppressed, failed) is never overwritten: a replan that
              // raced with the send must not bring a sent message back to pending. RETURNING gives
              // no row then, and its keys are left alone.
              `WITH up AS (
                 INSERT INTO deliveries (id, status, as_of, as_of_ms, due_at, due_ms, rule, patient_id, subject, generation,
                   subject_start, json, created_at, updated_at, cause_trigger, cause, output, variant)
                 SELECT id, status, as_of, as_of_ms, due_at, due_ms, rule, patient_id, subject, generation, subject_start, json, created_at, updated_at, cause_trigger, cause, output, variant
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[], $7::text[], $8::text[],
                     $9::text[], $10::integer[], $11::text[], $12::text[], $13::text[], $13::text[], $14::text[], $15::text[], $18::text[], $19::text[])
                     WITH ORDINALITY AS u (id, status, as_of, as_of_ms, due_at, due_ms, rule, patient_id, subject, generation, subject_start, json, created_at, updated_at, cause_trigger, cause, output, variant, ord)
                   ORDER BY ord
                 ON CONFLICT (id) DO UPDATE SET
                   status = excluded.status, as_of = excluded.as_of, as_of_ms = excluded.as_of_ms,
                   due_at = excluded.due_at, due_ms = excluded.due_ms, rule = excluded.rule,
                   patient_id = excluded.patient_id, subject = excluded.subject, generation = excluded.generation,
                   subject_start = excluded.subject_start, json = excluded.json, updated_at = excluded.updated_at,
                   cause_trigger = excluded.cause_trigger, cause = excluded.cause, output = excluded.output, variant = excluded.variant
                 WHERE deliveries.status IN ('pending', 'cancelled')
                 RETURNING seq, id
               )
               INSERT INTO delivery_keys (key, delivery_seq)
                 SELECT k.key, up.seq FROM up JOIN unnest($16::text[], $17::text[]) AS k (id, key) ON k.id = up.id
               ON CONFLICT DO NOTHING`,
              [...r.deliveries.columns, r.keys.ids, r.keys.keys, ...r.deliveries.more],
            ),
        tx.count('UPDATE triggers t SET routed_ms = $1, routing = u.routing FROM unnest($2::text[], $3::text[]) AS u (id, routing) WHERE t.id = u.id', [
          r.routedMs,
          r.triggers.ids,
          r.triggers.routings,
        ]),
      ]);
    });
  }

  async getRoutingExplanation(triggerId: string): Promise<RoutingExplanation | undefined> {
    this.#assertOpen();
    const [row] = await this.#read<{ routing: string | null; routed_ms: number | null }>('SELECT routing, routed_ms FROM triggers WHERE id = $1', [triggerId]);
    if (row === undefined || row.routing === null || row.routed_ms === null) return undefined;
    return expandExplanation(triggerId, row.routing, row.routed_ms);
  }

  async hasUnroutedTriggers(subject: { kind: SubjectState['kind']; id: string }): Promise<boolean> {
    this.#assertOpen();
    const column = subject.kind === 'appointment' ? 'appointment_id' : 'encounter_id';
    return (await this.#read(`SELECT 1 FROM triggers WHERE ${column} = $1 AND routed_ms IS NULL LIMIT 1`, [subject.id])).length > 0;
  }

  async countDeliveries(): Promise<Record<StoredDeliveryStatus, number>> {
    this.#assertOpen();
    const counts = Object.fromEntries(STORED_DELIVERY_STATUSES.map((status) => [status, 0])) as Record<StoredDeliveryStatus, number>;
    for (const { status, n } of await this.#read<{ status: StoredDeliveryStatus; n: number }>('SELECT status, SUM(n)::bigint AS n FROM delivery_counts GROUP BY status')) counts[status] = n;
    return counts;
  }

  async countMessages(): Promise<Record<MessageStatus, number>> {
    this.#assertOpen();
    const counts = Object.fromEntries(Object.values(MessageStatus).map((status) => [status, 0])) as Record<MessageStatus, number>;
    for (const { status, n } of await this.#read<{ status: MessageStatus; n: number }>('SELECT status, SUM(n)::bigint AS n FROM message_counts GROUP BY status')) counts[status] = n;
    return counts;
  }

  async getDelivery(id: string): Promise<StoredDelivery | undefined> {
    this.#assertOpen();
    const [row] = await this.#read<DeliveryRow>(`${DELIVERY_SELECT} WHERE d.id = $1`, [id]);
    return row === undefined ? undefined : deliveryFromRow(row);
  }

  async deliveriesByCancelKey(key: string): Promise<StoredDelivery[]> {
    this.#assertOpen();
    // Most keys are found through a column (common.ts packCancelKeys), the others through their
    // rows; the delivery's own list decides (a replan may have dropped a key).
    const probes = cancelKeyProbes(key);
    const rows = await this.#read<DeliveryRow>(
      `${DELIVERY_SELECT}
        WHERE d.id = $1 OR d.subject = ANY($2::text[]) OR d.patient_id = $3 OR d.rule = $4
           OR d.seq IN (SELECT delivery_seq FROM delivery_keys WHERE key = $5)
        ORDER BY d.seq`,
      [probes.id, probes.subjects, probes.patientId ?? null, probes.ruleId ?? null, key],
    );
    return rows.map(deliveryFromRow).filter((d) => d.delivery.cancelKeys.includes(key));
  }

  async listDeliveries(query: DeliveryQuery): Promise<StoredDelivery[]> {
    this.#assertOpen();
    const f = new ListFilter(true).eq('d.status', query.status).eq('d.rule', query.ruleId).eq('d.patient_id', query.patientId).eq('d.subject', query.subjectKey);
    if (query.before !== undefined) {
      const [position] = await this.#read<{ seq: number }>('SELECT seq FROM deliveries WHERE id = $1', [query.before]);
      if (position === undefined) {
        throw new RangeError(`before must be the id of a stored delivery (the last id of the previous page), got ${JSON.stringify(query.before)}`);
      }
      f.add('d.seq < ?', position.seq);
    }
    const { sql, params } = f.selectFrom(DELIVERY_SELECT, 'd.seq DESC', listLimit(query.limit));
    return (await this.#read<DeliveryRow>(sql, params)).map(deliveryFromRow);
  }

  finishDelivery(id: string, generation: number, outcome: DeliveryOutcome): Promise<boolean> {
    let params: unknown[];
    try {
      instantMs(outcome.at, 'outcome.at');
      const m = outcome.message;
      // A message that is exactly the delivery's outbox entry is kept once, there (outbox_seq).
      const keepable = m !== undefined && Object.keys(m).every((k) => ['language', 'to', 'subject', 'text', 'html'].includes(k));
      params = [
        id,
        generation,
        outcome.status,
        outcome.reason ?? null,
        m === undefined ? null : JSON.stringify(m),
        outcome.providerId ?? null,
        outcome.at,
        keepable,
        m?.language ?? null,
        m?.to ?? null,
        m?.subject ?? null,
        m?.text ?? null,
        m?.html ?? null,
      ];
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#write(
      async (tx) =>
        (await tx.count(
          `WITH box AS (
             SELECT seq FROM outbox WHERE $8::boolean AND delivery_id = $1 AND language = $9 AND recipient IS NOT DISTINCT FROM $10
               AND subject IS NOT DISTINCT FROM $11 AND text = $12 AND html IS NOT DISTINCT FROM $13
           )
           UPDATE deliveries SET status = $3, reason = $4, provider_id = $6, updated_at = $7,
                  outbox_seq = (SELECT seq FROM box), message = CASE WHEN EXISTS (SELECT 1 FROM box) THEN NULL ELSE $5 END
            WHERE id = $1 AND generation = $2 AND status IN ('pending', 'failed', 'review')`,
          params,
        )) > 0,
    );
  }

  putOutboxEntry(entry: Omit<OutboxEntry, 'id'>): Promise<OutboxEntry> {
    try {
      instantMs(entry.keptAt, 'keptAt');
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#write(async (tx) => {
      const [row] = await tx.rows<{ seq: number }>(
        `INSERT INTO outbox (delivery_id, output, channel, recipient, language, subject, text, html, kept_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (delivery_id) DO UPDATE SET
           output = excluded.output, channel = excluded.channel, recipient = excluded.recipient,
           language = excluded.language, subject = excluded.subject, text = excluded.text,
           html = excluded.html, kept_at = excluded.kept_at
         RETURNING seq`,
        [entry.deliveryId, entry.output, entry.channel, entry.to ?? null, entry.language, entry.subject ?? null, entry.text, entry.html ?? null, entry.keptAt],
      );
      return { id: String(row!.seq), ...entry };
    });
  }

  async listOutbox(query: OutboxQuery): Promise<OutboxEntry[]> {
    this.#assertOpen();
    const f = new ListFilter(true).eq('delivery_id', query.deliveryId).eq('output', query.output);
    if (query.before !== undefined) {
      const seq = /^[1-9]\d{0,14}$/.test(query.before) ? (await this.#read<{ seq: number }>('SELECT seq FROM outbox WHERE seq = $1', [Number(query.before)]))[0] : undefined;
      if (seq === undefined) throw new RangeError(`before must be the id of an outbox entry (the last id of the previous page), got ${JSON.stringify(query.before)}`);
      f.add('seq < ?', seq.seq);
    }
    const { sql, params } = f.select(OUTBOX_COLUMNS, 'outbox', 'seq DESC', listLimit(query.limit));
    return (await this.#read<OutboxRow>(sql, params)).map((row) => outboxEntryOf(row));
  }

  addDeliveryReceipt(receipt: DeliveryReceipt): Promise<boolean> {
    try {
      instantMs(receipt.at, 'receipt.at');
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#write(
      async (tx) =>
        (await tx.count(
          `INSERT INTO delivery_receipts (delivery_id, output, status, provider_id, code, attempt, at) VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (delivery_id, output, status, provider_id, attempt) DO NOTHING`,
          [receipt.deliveryId, receipt.output, receipt.status, receipt.providerId ?? '', receipt.code ?? null, receipt.attempt ?? 0, receipt.at],
        )) > 0,
    );
  }

  async listDeliveryReceipts(query: ReceiptQuery): Promise<DeliveryReceipt[]> {
    this.#assertOpen();
    const rows =
      'deliveryId' in query
        ? await this.#read<ReceiptRow>(`SELECT ${RECEIPT_COLUMNS} FROM delivery_receipts WHERE delivery_id = $1 ORDER BY seq`, [query.deliveryId])
        : await this.#read<ReceiptRow>(`SELECT ${RECEIPT_COLUMNS} FROM delivery_receipts WHERE output = $1 AND provider_id = $2 AND provider_id <> '' ORDER BY seq`, [query.output, query.providerId]);
    const receipts = rows.map(receiptFromRow);
    return 'deliveryId' in query && query.output !== undefined ? receipts.filter((r) => r.output === query.output) : receipts;
  }

  recordContactHolding(holding: ContactHolding): Promise<boolean> {
    try {
      instantMs(holding.firstSentAt, 'holding.firstSentAt');
      if (holding.output === '' || holding.patientId === '' || holding.contactKey === '') throw new RangeError('a contact holding needs an output, a patient id and a contact key');
      if (holding.toolId === '') throw new RangeError("a contact holding's toolId is absent or not empty");
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#write(async (tx) => {
      const h = [holding.output, holding.patientId, holding.contactKey];
      const added = (await tx.count('INSERT INTO contact_holdings (output, patient_id, contact_key, first_sent_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING', [...h, holding.firstSentAt])) > 0;
      // A tool id given replaces the kept one; an absent one leaves it.
      if (holding.toolId !== undefined) await tx.count('UPDATE contact_holdings SET tool_id = $4 WHERE output = $1 AND patient_id = $2 AND contact_key = $3', [...h, holding.toolId]);
      return added;
    });
  }

  async listContactHoldings(query: ContactHoldingQuery): Promise<ContactHolding[]> {
    this.#assertOpen();
    const rows =
      'patientId' in query
        ? await this.#read<HoldingRow>(`SELECT ${HOLDING_COLUMNS} FROM contact_holdings WHERE patient_id = $1 ORDER BY seq`, [query.patientId])
        : 'toolId' in query
          ? await this.#read<HoldingRow>(`SELECT ${HOLDING_COLUMNS} FROM contact_holdings WHERE output = $1 AND tool_id = $2 ORDER BY seq`, [query.output, query.toolId])
          : await this.#read<HoldingRow>(`SELECT ${HOLDING_COLUMNS} FROM contact_holdings WHERE output = $1 AND contact_key = $2 ORDER BY seq`, [query.output, query.contactKey]);
    return rows.map(holdingFromRow);
  }

  async flowActivity(since: string): Promise<FlowActivity[]> {
    this.#assertOpen();
    return ops.flowActivity(this.#sql, instantMs(since, 'since'));
  }

  async deliveryTallies(): Promise<DeliveryTally[]> {
    this.#assertOpen();
    return ops.deliveryTallies(this.#sql);
  }

  async outcomeLinksDue(limit: number): Promise<OutcomeLink[]> {
    this.#assertOpen();
    return ops.outcomeLinksDue(this.#sql, listLimit(limit));
  }

  saveOutcomes(link: OutcomeLink, observations: readonly OutcomeObservation[]): Promise<void> {
    return this.#write((tx) => ops.saveOutcomes(tx, link, observations));
  }

  async countOutcomes(query: OutcomeQuery): Promise<OutcomeCount[]> {
    this.#assertOpen();
    return ops.countOutcomes(this.#sql, query);
  }

  async prune(kind: RetentionKind, before: string, options: PruneOptions): Promise<PruneBatch> {
    this.#assertOpen();
    const beforeMs = instantMs(before, 'before');
    // A dry run only reads; a real batch is one write among the group commit's (postgres-retention.ts).
    if (options.dryRun) return pruneBatch(this.#sql, kind, beforeMs, options);
    return this.#write((tx) => pruneBatch(tx, kind, beforeMs, options));
  }

  // --- the waitlist (postgres-waitlist.ts) ---------------------------------------------------

  openWaitlistSlot(slot: WaitlistSlot): Promise<boolean> {
    return this.#write((tx) => waitlist.openSlot(tx, slot));
  }

  async getWaitlistSlot(id: string): Promise<WaitlistSlot | undefined> {
    this.#assertOpen();
    return waitlist.slot(this.#sql, id);
  }

  setWaitlistSlot(id: string, state: WaitlistSlotState, patch?: Partial<WaitlistSlot>): Promise<void> {
    return this.#write((tx) => waitlist.setSlot(tx, id, state, patch));
  }

  releaseWaitlistClaim(slotId: string, offerId: string): Promise<boolean> {
    return this.#write((tx) => waitlist.releaseClaim(tx, slotId, offerId));
  }

  addWaitlistOffers(offers: readonly WaitlistOffer[]): Promise<void> {
    return this.#write((tx) => waitlist.addOffers(tx, offers));
  }

  async getWaitlistOffer(id: string): Promise<WaitlistOffer | undefined> {
    this.#assertOpen();
    return waitlist.offer(this.#sql, id);
  }

  setWaitlistOffer(id: string, state: WaitlistOfferState, patch?: Partial<WaitlistOffer>): Promise<void> {
    return this.#write((tx) => waitlist.setOffer(tx, id, state, patch));
  }

  async listWaitlistOffers(slotId: string): Promise<WaitlistOffer[]> {
    this.#assertOpen();
    return waitlist.offersOfSlot(this.#sql, slotId);
  }

  async countWaitlistOffers(patientId: string, since: string): Promise<number> {
    this.#assertOpen();
    return waitlist.offersToPatientSince(this.#sql, patientId, since);
  }

  noteWaitlistAppointment(appointment: WaitlistAppointment | { id: string; removed: true }): Promise<void> {
    return this.#write((tx) => waitlist.noteAppointment(tx, appointment));
  }

  async laterWaitlistAppointments(query: { services: readonly string[]; practitioners: readonly string[]; after: string; limit: number }): Promise<WaitlistAppointment[]> {
    this.#assertOpen();
    return waitlist.laterAppointments(this.#sql, query);
  }

  noteWaitlistEntry(entry: WaitlistEntry | { id: string; removed: true }): Promise<void> {
    return this.#write((tx) => waitlist.noteEntry(tx, entry));
  }

  waitlistEntries(query: { services: readonly string[]; practitioners: readonly string[]; now: string; limit: number }): Promise<WaitlistEntry[]> {
    return this.#write((tx) => waitlist.entries(tx, query));
  }

  async listWaitlistSlots(query: { states: readonly WaitlistSlotState[]; limit?: number }): Promise<WaitlistSlot[]> {
    this.#assertOpen();
    return waitlist.slotsIn(this.#sql, query.states, Math.min(Math.max(query.limit ?? 1000, 1), 10_000));
  }

  async waitlistFigures(from: string, to: string): Promise<WaitlistFigures> {
    this.#assertOpen();
    return waitlist.figures(this.#sql, from, to);
  }

  addReplyPrompt(prompt: ReplyPrompt): Promise<boolean> {
    let checked: ReturnType<typeof replies.checkPrompt>;
    try {
      checked = replies.checkPrompt(prompt);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#write((tx) => replies.addPrompt(tx, prompt, checked));
  }

  async openReplyPrompts(query: { output: string; address: string; at: string }): Promise<ReplyPrompt[]> {
    this.#assertOpen();
    return replies.openPrompts(this.#sql, query);
  }

  addStaffTask(task: NewStaffTask): Promise<StaffTask> {
    try {
      replies.checkTask(task);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#write((tx) => replies.addTask(tx, task));
  }

  async listStaffTasks(query: { status?: StaffTaskStatus; limit?: number; before?: string }): Promise<StaffTask[]> {
    this.#assertOpen();
    return replies.listTasks(this.#sql, query);
  }

  finishStaffTask(id: string, done: { at: string; by: string }): Promise<StaffTask | undefined> {
    try {
      instantMs(done.at, 'done.at');
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#write((tx) => replies.finishTask(tx, id, done));
  }

  async getVideoJoin(appointmentId: string): Promise<StoredVideoJoin | undefined> {
    this.#assertOpen();
    return ops.getVideoJoin(this.#sql, appointmentId);
  }

  putVideoLink(link: VideoLink): Promise<void> {
    try {
      ops.checkVideoLink(link);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#write(async (tx) => {
      await ops.putVideoLink(tx, link);
    });
  }

  async getVideoLink(tokenHash: string): Promise<VideoLink | undefined> {
    this.#assertOpen();
    return ops.getVideoLink(this.#sql, tokenHash);
  }

  async ping(): Promise<void> {
    this.#assertOpen();
    await this.#read('SELECT 1');
  }

  /**
   * Runs `work` while no other process (or caller here) holding this store's lock `name` runs:
   * a session advisory lock on a connection kept for the time of `work`. If that connection
   * drops, the server releases the lock; `work` is not stopped, so what it protects must stay
   * safe when run twice (routing is: a delivery's generation decides which job may send).
   */
  async withLock<T>(name: string, work: () => Promise<T>): Promise<T> {
    return (await this.#holding(name, true, work)) as T;
  }

  /** withLock without waiting: pg_try_advisory_lock; undefined when another session holds it. */
  tryLock<T>(name: string, work: () => Promise<T>): Promise<T | undefined> {
    return this.#holding(name, false, work);
  }

  async #holding<T>(name: string, wait: boolean, work: () => Promise<T>): Promise<T | undefined> {
    this.#assertOpen();
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (error) {
      throw explainPostgresError(error, this.target);
    }
    let broken = false;
    try {
      if (wait) await client.query('SELECT pg_advisory_lock($1, hashtext($2))', [LOCK_SPACE, name]);
      else if (!(await client.query<{ held: boolean }>('SELECT pg_try_advisory_lock($1, hashtext($2)) AS held', [LOCK_SPACE, name])).rows[0]!.held) return undefined;
      try {
        return await work();
      } finally {
        await client.query('SELECT pg_advisory_unlock($1, hashtext($2))', [LOCK_SPACE, name]).catch(() => {
          broken = true;
        });
      }
    } catch (error) {
      broken = true;
      throw error;
    } finally {
      // A connection whose unlock failed is closed: the server then releases the lock.
      client.release(broken ? true : undefined);
    }
  }

  /** Bytes the store's tables and indexes take (benchmarks: growth per message). */
  async databaseBytes(): Promise<number> {
    const [row] = await this.#read<{ n: number }>(
      "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint AS n FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace WHERE c.relkind = 'r' AND s.nspname = current_schema()",
    );
    return row!.n;
  }

  // The consent ledger (ConsentLedger; postgres-consent.ts). Writes in the group commit.

  addConsentEvent(event: Omit<ConsentEvent, 'id'>, mirrorTo: readonly string[] = []): Promise<ConsentEvent> {
    return this.#write((tx) => ledger.addConsentEvent(tx, event, mirrorTo));
  }

  async unqueuedConsentMirrors(limit: number): Promise<Array<{ event: ConsentEvent; output: string }>> {
    this.#assertOpen();
    return ledger.unqueuedConsentMirrors(this.#sql, limit);
  }

  consentMirrorQueued(eventId: string, output: string): Promise<void> {
    return this.#write((tx) => ledger.consentMirrorQueued(tx, eventId, output));
  }

  addFhirConsent(consent: Omit<StoredFhirConsent, 'id'>): Promise<StoredFhirConsent> {
    return this.#write((tx) => ledger.addFhirConsent(tx, consent));
  }

  async consentRecords(query: Parameters<ConsentLedger['consentRecords']>[0]): Promise<{ events: ConsentEvent[]; consents: StoredFhirConsent[] }> {
    this.#assertOpen();
    return ledger.consentRecords(this.#sql, query);
  }

  notePatientFacts(triggers: readonly Trigger[]): Promise<void> {
    const facts = factsOf(triggers);
    const now = Date.now();
    return this.#write(async (tx) => {
      await settleAll(ledger.writeFacts(tx, facts, now));
    });
  }

  async patientFacts(patientIds: readonly string[]): Promise<PatientFacts[]> {
    this.#assertOpen();
    return ledger.patientFacts(this.#sql, patientIds);
  }

  async mergedGroup(patientId: string): Promise<string[]> {
    this.#assertOpen();
    return ledger.mergedGroup(this.#sql, patientId);
  }

  async patientsAtAddress(address: string): Promise<string[]> {
    this.#assertOpen();
    return ledger.patientsAtAddress(this.#sql, address);
  }

  recordDecision(decision: Omit<DecisionRecord, 'id'>): Promise<void> {
    try {
      instantMs(decision.at, 'decision.at');
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#write((tx) => ledger.recordDecision(tx, decision));
  }

  async listDecisions(query: Parameters<ConsentLedger['listDecisions']>[0]): Promise<DecisionRecord[]> {
    this.#assertOpen();
    return ledger.listDecisions(this.#sql, query);
  }

  recordDisclosure(disclosure: Disclosure): Promise<void> {
    return this.#write((tx) => ledger.recordDisclosure(tx, disclosure));
  }

  async listDisclosures(query: Parameters<ConsentLedger['listDisclosures']>[0]): Promise<Disclosure[]> {
    this.#assertOpen();
    return ledger.listDisclosures(this.#sql, query);
  }

  noteInboundEvent(key: string, at: string): Promise<boolean> {
    try {
      instantMs(at, 'at');
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#write((tx) => ledger.noteInboundEvent(tx, key, at));
  }

  erasePatient(patientId: string, at: string, outcomes: Readonly<Record<string, string>> = {}): Promise<ErasureRecord> {
    return this.#write(async (tx) => {
      const record = await ledger.erasePatient(tx, patientId, at, outcomes);
      await waitlist.erase(tx, patientId);
      return record;
    });
  }

  async listErasures(patientId: string): Promise<ErasureRecord[]> {
    this.#assertOpen();
    return ledger.listErasures(this.#sql, patientId);
  }

  /** Commits what is already queued, then closes the pool; later calls reject. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#committer.close();
    await this.pool.end();
  }

  #assertOpen(): void {
    if (this.#closed) throw new Error('the PostgreSQL store is closed');
  }

  /** A read on the pool; a failure to reach the server names it and the fix. */
  async #read<R>(text: string, params?: readonly unknown[]): Promise<R[]> {
    try {
      return await this.#sql.rows<R>(text, params);
    } catch (error) {
      throw explainPostgresError(error, this.target);
    }
  }

  async #findOriginal(sql: Sql, key: Buffer): Promise<MessageRow | undefined> {
    const [row] = await sql.rows<MessageRow>(`SELECT ${MESSAGE_COLUMNS} FROM messages WHERE dedupe_key = $1 AND control_id <> '' AND status <> 'quarantined' AND keyed`, [key]);
    return row;
  }

  // --- The group commit's work -----------------------------------------------------------

  /** One transaction's items: inbound records together, every other write beside them. */
  async #runAll(tx: Sql, items: readonly Item[]): Promise<unknown[]> {
    const inbound: Prepared[] = [];
    const writes: Array<Promise<unknown>> = [];
    for (const item of items) {
      if (item.kind === 'inbound') inbound.push(item.p);
      else writes.push(item.run(tx));
    }
    const [outcomes, ...values] = await settleAll<unknown>([inbound.length === 0 ? Promise.resolve([]) : this.#inboundAll(tx, inbound), ...writes]);
    let i = 0;
    let w = 0;
    return items.map((item) => (item.kind === 'inbound' ? (outcomes as CommitOutcome[])[i++] : values[w++]));
  }

  /**
   * The inbound records of one transaction: every dedupe key looked up at once, new messages
   * and what they carry written in one statement per table; the rare cases (a conflicting copy,
   * a pending original completed, an operator's attempt, a record repeating another of the
   * batch with other bytes) one by one after them, as #applyOne.
   */
  async #inboundAll(tx: Sql, ps: readonly Prepared[]): Promise<CommitOutcome[]> {
    const keys = [...new Map(ps.filter((p) => p.record.attemptOf === undefined && p.record.controlId !== '').map((p) => [p.key.toString('hex'), p.key])).values()];
    const [originals, ids] = await settleAll<unknown>([
      keys.length === 0
        ? Promise.resolve([])
        : tx.rows<MessageRow & { dedupe_key: Buffer }>(`SELECT ${MESSAGE_COLUMNS}, dedupe_key FROM messages WHERE dedupe_key = ANY($1::bytea[]) AND control_id <> '' AND status <> 'quarantined' AND keyed`, [keys]),
      tx.rows<{ id: number }>("SELECT nextval(pg_get_serial_sequence('messages', 'id')) AS id FROM generate_series(1, $1)", [ps.length]),
    ]) as [Array<MessageRow & { dedupe_key: Buffer }>, Array<{ id: number }>];
    const originalOf = new Map(originals.map((row) => [row.dedupe_key.toString('hex'), messageFromRow(row)]));
    const results: CommitOutcome[] = [];
    const later: number[] = [];
    const fresh: NewRow[] = [];
    const inBatch = new Map<string, NewRow>();
    let next = 0;
    ps.forEach((p, i) => {
      const r = p.record;
      // An operator's attempt, an SMS answer (it takes its prompt), tasks, a waitlist claim or
      // notice (conditional updates of its offers), or a refusal counted under the raw-bytes quota: one by one.
      if (
        r.attemptOf !== undefined ||
        r.answers !== undefined ||
        (r.tasks?.length ?? 0) > 0 ||
        r.waitlistClaim !== undefined ||
        (r.waitlistTold?.length ?? 0) > 0 ||
        rawQuotaPlan(r.rawQuota, r.status) !== undefined
      ) {
        later.push(i);
        return;
      }
      if (r.controlId !== '') {
        const key = p.key.toString('hex');
        const original = originalOf.get(key);
        if (original !== undefined) {
          if (isPending(original) ? isPending(r) : original.contentHash === r.contentHash) results[i] = { outcome: 'duplicate', message: original };
          else later.push(i);
          return;
        }
        const earlier = inBatch.get(key);
        if (earlier !== undefined) {
          // The same message twice in one batch (parallel resends): a duplicate of the first.
          if (!isPending(earlier.message) && earlier.message.contentHash === r.contentHash) earlier.repeats.push(i);
          else later.push(i);
          return;
        }
      }
      const triggerIds = triggerIdsOf(r);
      const patientId = patientIdOf(r);
      const id = ids[next++]!.id;
      const row: NewRow = {
        p,
        id,
        message: storedMessageOf(r, String(id), { status: r.status, reason: r.reason, ack: r.ack, ackCode: r.ackCode, triggerIds, patientId }),
        repeats: [],
      };
      fresh.push(row);
      if (r.controlId !== '') inBatch.set(p.key.toString('hex'), row);
      results[i] = { outcome: 'stored', message: row.message };
    });
    if (fresh.length > 0) await settleAll([insertMessages(tx, fresh), ...recordRows(tx, fresh)]);
    for (const row of fresh) for (const i of row.repeats) results[i] = { outcome: 'duplicate', message: row.message };
    for (const i of later) results[i] = await this.#applyOne(tx, ps[i]!);
    return results;
  }

  /** One record, statement by statement (the embedded store's algorithm, store.ts commitInbound). */
  async #applyOne(tx: Sql, p: Prepared): Promise<CommitOutcome> {
    const r = p.record;
    let keyed = true;
    let message: StoredMessage | undefined;
    if (r.attemptOf !== undefined) {
      keyed = await this.#startAttempt(tx, p);
    } else if (r.controlId !== '') {
      const originalRow = await this.#findOriginal(tx, p.key);
      if (originalRow !== undefined) {
        const original = messageFromRow(originalRow);
        if (isPending(original)) {
          if (isPending(r)) return { outcome: 'duplicate', message: original };
          message = await completeMessage(tx, p, original);
        } else {
          if (originalRow.content_hash === r.contentHash) return { outcome: 'duplicate', message: original };
          // One quarantine per conflicting copy, whichever process sees it first.
          await tx.rows('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LOCK_SPACE, `quarantine:${p.key.toString('hex')}`]);
          const [earlier] = await tx.rows<MessageRow>(
            `SELECT ${MESSAGE_COLUMNS} FROM messages WHERE dedupe_key = $1 AND content_hash = $2 AND status = 'quarantined' ORDER BY id LIMIT 1`,
            [p.key, r.contentHash],
          );
          // A released copy sent again: answered as a resend of what its release stored.
          if (earlier !== undefined && earlier.replaced_by !== null) return { outcome: 'duplicate', message: messageFromRow(await latestAttempt(tx, earlier)) };
          if (earlier !== undefined) return { outcome: 'conflict', message: messageFromRow(earlier), original };
          const quarantined = await insertOne(tx, p, MessageStatus.Quarantined, StoreReason.ConflictingResend, [], r.conflictAck?.(), true);
          return { outcome: 'conflict', message: quarantined.message, original, ...rawCut(quarantined.rawBytes) };
        }
      }
    }
    // An SMS answer takes its prompt in this transaction, or nothing is stored.
    if (r.answers !== undefined && !(await replies.answerPrompt(tx, r.answers.promptId, r.answers.answer))) throw new PromptClosedError(r.answers.promptId);
    // A yes to a waitlist offer claims the slot in this transaction, or nothing is stored (postgres-waitlist.ts).
    if (r.waitlistClaim !== undefined) await waitlist.claim(tx, r.waitlistClaim.slotId, r.waitlistClaim.offerId, r.receivedAt);
    for (const offerId of r.waitlistTold ?? []) await waitlist.tell(tx, offerId);
    let rawBytes: number | undefined;
    if (message === undefined) ({ message, rawBytes } = await insertOne(tx, p, r.status, r.reason, triggerIdsOf(r), r, keyed));
    for (const task of r.tasks ?? []) await replies.addTask(tx, { ...task, messageId: message.id });
    const rows: NewRow[] = [{ p, id: Number(message.id), message, repeats: [] }];
    const writes: Array<Promise<unknown>> = recordRows(tx, rows);
    if (r.attemptOf !== undefined) {
      const { kind, messageId: replaced, actor } = r.attemptOf;
      writes.push(
        tx.count('UPDATE messages SET replaced_by = $1, keyed = FALSE WHERE id = $2', [Number(message.id), Number(replaced)]),
        tx.count('INSERT INTO audit (at, actor, action, target, outcome, result) VALUES ($1, $2, $3, $4, $5, $6)', [
          r.receivedAt,
          actor,
          ATTEMPT_AUDIT_ACTION[kind],
          `message/${replaced}`,
          'stored',
          `message/${message.id}`,
        ]),
      );
    }
    await settleAll(writes);
    return { outcome: 'stored', message, ...rawCut(rawBytes) };
  }

  /**
   * Checks the message an attempt replaces (locked: two operators cannot both try it again) and
   * takes it out of the dedupe key for a reprocess. Returns whether the attempt's row holds the key.
   */
  async #startAttempt(tx: Sql, p: Prepared): Promise<boolean> {
    const r = p.record;
    const { kind, messageId } = r.attemptOf!;
    const id = parseMessageId(messageId);
    const [row] = id === undefined ? [] : await tx.rows<MessageRow & { keyed: boolean }>(`SELECT ${MESSAGE_COLUMNS}, keyed FROM messages WHERE id = $1 FOR UPDATE`, [id]);
    if (row === undefined) throw new StaleAttemptError('unknown_message', `no stored message ${messageId}`);
    if (row.status !== ATTEMPT_FROM_STATUS[kind]) {
      throw new StaleAttemptError('wrong_status', `message ${messageId} is ${row.status}; a ${kind} needs a ${ATTEMPT_FROM_STATUS[kind]} message`);
    }
    if (row.replaced_by !== null) throw new StaleAttemptError('already_replaced', `message ${messageId} was already tried again as message ${row.replaced_by}`);
    if (kind === AttemptKind.Release || !row.keyed) return false;
    await tx.count('UPDATE messages SET keyed = FALSE WHERE id = $1', [row.id]);
    return r.controlId !== '' && (await this.#findOriginal(tx, p.key)) === undefined;
  }
}

/** A message row about to be inserted by the batch, with the batch records that repeat it. */
interface NewRow {
  p: Prepared;
  id: number;
  message: StoredMessage;
  repeats: number[];
}

/** New messages in one statement, in dedupe-key order (two batches lock keys in the same order). */
function insertMessages(tx: Sql, rows: readonly NewRow[]): Promise<number> {
  const sorted = [...rows].sort((a, b) => Buffer.compare(a.p.key, b.p.key));
  const col = <T>(f: (row: NewRow) => T): T[] => sorted.map(f);
  return tx.count(
    `INSERT INTO messages (id, input, format, sender, control_id, dedupe_key, message_type, content_hash, status, ack, ack_code,
       reason, received_at, received_ms, trigger_ids, raw, raw_bytes, patient_id)
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::text[], $8::text[], $9::text[],
       $10::text[], $11::text[], $12::text[], $13::text[], $14::bigint[], $15::text[], $16::bytea[], $17::integer[], $18::text[])`,
    [
      col((r) => r.id),
      col((r) => r.p.record.input),
      col((r) => r.p.record.format),
      col((r) => r.p.record.sender),
      col((r) => r.p.record.controlId),
      col((r) => r.p.key),
      col((r) => r.p.record.messageType),
      col((r) => r.p.record.contentHash),
      col((r) => r.message.status),
      col((r) => r.message.ack),
      col((r) => r.message.ackCode),
      col((r) => r.message.reason ?? null),
      col((r) => r.p.record.receivedAt),
      col((r) => r.p.receivedMs),
      col((r) => JSON.stringify(r.message.triggerIds)),
      col((r) => r.p.record.raw),
      col((r) => r.p.record.rawBytes ?? null),
      col((r) => r.message.patientId ?? null),
    ],
  );
}

/** One message row (the rare paths): its id from the identity column. */
/** CommitOutcome.rawBytes when a row kept only its first bytes. */
function rawCut(rawBytes: number | undefined): { rawBytes?: number } {
  return rawBytes === undefined ? {} : { rawBytes };
}

async function insertOne(
  tx: Sql,
  p: Prepared,
  status: MessageStatus,
  reason: string | undefined,
  triggerIds: string[],
  answered: { ack: string; ackCode: string } = p.record,
  keyed: boolean,
): Promise<{ message: StoredMessage; rawBytes: number | undefined }> {
  const r = p.record;
  const patientId = patientIdOf(r);
  const kept = await rawKept(tx, r, status);
  const [row] = await tx.rows<{ id: number }>(
    `INSERT INTO messages (input, format, sender, control_id, dedupe_key, message_type, content_hash, status, ack, ack_code,
       reason, received_at, received_ms, trigger_ids, raw, raw_bytes, patient_id, origin, replaces, keyed, raw_quota)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) RETURNING id`,
    [
      r.input,
      r.format,
      r.sender,
      r.controlId,
      p.key,
      r.messageType,
      r.contentHash,
      status,
      answered.ack,
      answered.ackCode,
      reason ?? null,
      r.receivedAt,
      p.receivedMs,
      JSON.stringify(triggerIds),
      kept.raw,
      kept.rawBytes ?? null,
      patientId ?? null,
      r.attemptOf?.kind ?? 'received',
      r.attemptOf === undefined ? null : Number(r.attemptOf.messageId),
      keyed,
      kept.account ?? null,
    ],
  );
  return { message: storedMessageOf(r, String(row!.id), { status, reason, ack: answered.ack, ackCode: answered.ackCode, triggerIds, patientId }), rawBytes: kept.rawBytes };
}

/**
 * The raw bytes a row keeps under its record's quota (InboundRecord.rawQuota), counted in this
 * transaction under an advisory lock, so processes sharing the database count one after the
 * other; the counters (cursors) roll back with the row.
 */
async function rawKept(tx: Sql, r: InboundRecord, status: MessageStatus): Promise<{ raw: Buffer; rawBytes: number | undefined; account?: string }> {
  const plan = rawQuotaPlan(r.rawQuota, status);
  if (plan === undefined) return { raw: r.raw, rawBytes: r.rawBytes };
  // One counting transaction at a time across processes (refusals are rare); held to the commit.
  await tx.rows('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LOCK_SPACE, RAW_QUOTA_CURSOR]);
  const rows = await tx.rows<{ key: string; value: string }>('SELECT key, value FROM cursors WHERE key = ANY($1::text[])', [[...plan.counters]]);
  const value = new Map(rows.map((row) => [row.key, row.value]));
  const decision = plan.decide([counterValue(value.get(plan.counters[0])), counterValue(value.get(plan.counters[1]))], r.raw.length);
  if (!decision.whole) return { raw: r.raw.subarray(0, decision.keep), rawBytes: r.rawBytes ?? r.raw.length };
  await tx.count('INSERT INTO cursors (key, value) SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [
    [...plan.counters],
    [...decision.counters],
  ]);
  return { raw: r.raw, rawBytes: r.rawBytes, account: r.rawQuota!.account };
}

/** A pending message's row takes the record's content (its id and receivedAt stay). */
async function completeMessage(tx: Sql, p: Prepared, pending: StoredMessage): Promise<StoredMessage> {
  const r = p.record;
  const triggerIds = triggerIdsOf(r);
  const patientId = patientIdOf(r);
  await tx.count(
    `UPDATE messages SET message_type = $2, content_hash = $3, status = $4, ack = $5, ack_code = $6, reason = $7,
       trigger_ids = $8, raw = $9, patient_id = $10 WHERE id = $1`,
    [Number(pending.id), r.messageType, r.contentHash, r.status, r.ack, r.ackCode, r.reason ?? null, JSON.stringify(triggerIds), r.raw, patientId ?? null],
  );
  const message = storedMessageOf(r, pending.id, { status: r.status, reason: r.reason, ack: r.ack, ackCode: r.ackCode, triggerIds, patientId });
  message.receivedAt = pending.receivedAt;
  return message;
}

/** The last of the attempts made at a message (following replaced_by). */
async function latestAttempt(tx: Sql, row: MessageRow): Promise<MessageRow> {
  let current = row;
  // Bounded: each attempt is a new row that replaces one without an attempt.
  for (let hops = 0; current.replaced_by !== null && hops < 1000; hops++) {
    const [next] = await tx.rows<MessageRow>(`SELECT ${MESSAGE_COLUMNS} FROM messages WHERE id = $1`, [current.replaced_by]);
    if (next === undefined) break;
    current = next;
  }
  return current;
}

/**
 * What stored records carry besides their message row — triggers (in commit order), patient
 * facts, subject states and cursors (keys in sorted order: two transactions lock them in the
 * same order) — one statement per table for all of them. Within the batch: the first version of a trigger id wins; a subject state is the last of the newest
 * asOf (what applying them one by one leaves); a cursor the last written.
 */
function recordRows(tx: Sql, rows: readonly NewRow[]): Array<Promise<unknown>> {
  const out: Array<Promise<unknown>> = [];
  const triggers = new Map<string, { t: Trigger; messageId: number; occurredMs: number }>();
  const states = new Map<string, { s: SubjectState; asOfMs: number; messageId: number }>();
  const cursors = new Map<string, string>();
  let seenMs = Infinity;
  for (const { p, id } of rows) {
    seenMs = Math.min(seenMs, p.receivedMs);
    p.record.triggers.forEach((t, i) => {
      if (!triggers.has(t.id)) triggers.set(t.id, { t, messageId: id, occurredMs: p.occurredMs[i]! });
    });
    p.record.subjectStates.forEach((s, i) => {
      const key = `${s.kind}\u0000${s.id}`;
      const current = states.get(key);
      if (current === undefined || p.asOfMs[i]! >= current.asOfMs) states.set(key, { s, asOfMs: p.asOfMs[i]!, messageId: id });
    });
    for (const [key, value] of Object.entries(p.record.cursors ?? {})) cursors.set(key, value);
  }
  if (triggers.size > 0) {
    // In commit order (seq): routing takes them in that order.
    const list = [...triggers.values()];
    out.push(
      tx.count(
        `INSERT INTO triggers (id, message_id, type, patient_id, appointment_id, encounter_id, occurred_at, occurred_ms, json)
         SELECT id, message_id, type, patient_id, appointment_id, encounter_id, occurred_at, occurred_ms, json
           FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::text[])
             WITH ORDINALITY AS u (id, message_id, type, patient_id, appointment_id, encounter_id, occurred_at, occurred_ms, json, ord)
           ORDER BY ord
         ON CONFLICT (id) DO NOTHING`,
        [
          list.map((x) => x.t.id),
          list.map((x) => x.messageId),
          list.map((x) => x.t.type),
          list.map((x) => x.t.patient?.id ?? ''),
          list.map((x) => x.t.appointment?.id ?? null),
          list.map((x) => x.t.encounter?.id ?? null),
          list.map((x) => x.t.occurredAt),
          list.map((x) => x.occurredMs),
          list.map((x) => JSON.stringify(x.t)),
        ],
      ),
    );
    // What the triggers say about their patients commits with them: a death acknowledged AA
    // is known to the send-time checks.
    out.push(...ledger.writeFacts(tx, factsOf([...triggers.values()].map((x) => x.t)), seenMs));
    const noted = ops.noteOutcomeTriggers(tx, [...triggers.values()].map((x) => x.t));
    if (noted !== undefined) out.push(noted);
  }
  if (states.size > 0) {
    const list = [...states.values()].sort((a, b) => cmp(a.s.kind, b.s.kind) || cmp(a.s.id, b.s.id));
    // `>=`: a state at the same instant as the stored one is newer information (committed later).
    out.push(
      tx.count(
        `INSERT INTO subject_states (kind, id, patient_id, status, start, "end", as_of, as_of_ms, data, message_id)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::text[], $10::bigint[])
         ON CONFLICT (kind, id) DO UPDATE SET
           patient_id = excluded.patient_id, status = excluded.status, start = excluded.start,
           "end" = excluded."end", as_of = excluded.as_of, as_of_ms = excluded.as_of_ms,
           data = excluded.data, message_id = excluded.message_id
         WHERE excluded.as_of_ms >= subject_states.as_of_ms`,
        [
          list.map((x) => x.s.kind),
          list.map((x) => x.s.id),
          list.map((x) => x.s.patientId),
          list.map((x) => x.s.status ?? null),
          list.map((x) => x.s.start ?? null),
          list.map((x) => x.s.end ?? null),
          list.map((x) => x.s.asOf),
          list.map((x) => x.asOfMs),
          list.map((x) => (x.s.data === undefined ? null : JSON.stringify(x.s.data))),
          list.map((x) => x.messageId),
        ],
      ),
    );
  }
  // After the subject states (statements of one transaction run in the order sent).
  out.push(...ops.writeVideoJoins(tx, rows.flatMap(({ p, id }) => (p.record.videoJoins ?? []).map((join, i) => ({ join, asOfMs: p.joinAsOfMs[i]!, messageId: id })))));
  if (cursors.size > 0) {
    const keys = [...cursors.keys()].sort();
    out.push(
      tx.count('INSERT INTO cursors (key, value) SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [
        keys,
        keys.map((k) => cursors.get(k)!),
      ]),
    );
  }
  return out;
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** saveRouting's statement parameters (checked before the transaction). */
function routingRows(triggerIds: readonly string[], writes: readonly DeliveryWrite[], routedAt: string, explanations: readonly RoutingExplanation[]) {
  const routedMs = instantMs(routedAt, 'routedAt');
  // One row per delivery id (the last write of it wins), in the order given: a new delivery's
  // seq follows it ("newest planned first").
  const byId = new Map<string, { write: DeliveryWrite; asOfMs: number; dueMs: number }>();
  writes.forEach((write, i) => {
    byId.set(write.delivery.id, {
      write,
      asOfMs: instantMs(write.asOf, `deliveries[${i}].asOf`),
      dueMs: instantMs(write.delivery.dueAt, `deliveries[${i}].delivery.dueAt`),
    });
  });
  const rows = [...byId.values()];
  const col = <T>(f: (row: (typeof rows)[number]) => T): T[] => rows.map(f);
  const keys = { ids: [] as string[], keys: [] as string[] };
  for (const { write } of rows) {
    const d = write.delivery;
    // Keys a column finds (its id, subject, patient, rule, a type on its subject) need no row.
    for (const key of new Set(d.cancelKeys)) {
      if (packedKeyNeedsRow(packCancelKeys({ ...d, cancelKeys: [key] })[0]!)) {
        keys.ids.push(d.id);
        keys.keys.push(key);
      }
    }
  }
  const byTrigger = new Map(explanations.map((e) => [e.triggerId, JSON.stringify(compactExplanation(e))]));
  const ids = [...new Set(triggerIds)].sort();
  return {
    routedMs,
    deliveries: {
      id: col((r) => r.write.delivery.id),
      columns: [
        col((r) => r.write.delivery.id),
        col((r) => r.write.status),
        col((r) => r.write.asOf),
        col((r) => r.asOfMs),
        col((r) => r.write.delivery.dueAt),
        col((r) => r.dueMs),
        col((r) => r.write.delivery.ruleId),
        col((r) => r.write.delivery.patientId),
        col((r) => r.write.delivery.subjectKey),
        col((r) => r.write.generation),
        col((r) => r.write.subjectStart ?? null),
        col((r) => JSON.stringify(compactDelivery(r.write.delivery))),
        col((r) => r.write.updatedAt),
        col((r) => causeColumns(r.write).trigger),
        col((r) => causeColumns(r.write).cause),
      ],
      /** $18, $19: after the keys' parameters. */
      more: [col((r) => r.write.delivery.output), col((r) => r.write.delivery.variant ?? null)],
    },
    keys,
    triggers: { ids, routings: ids.map((id) => byTrigger.get(id) ?? null) },
  };
}

export function deliveryFromRow(row: DeliveryRow): StoredDelivery {
  const delivery = expandDeliveryJson(row.json, row);
  let message = row.message !== null ? (JSON.parse(row.message) as SentMessage) : undefined;
  if (message === undefined && row.o_seq !== null) {
    message = messageOfEntry(
      outboxEntryOf({
        seq: row.o_seq,
        delivery_id: row.o_delivery_id,
        output: row.o_output,
        channel: row.o_channel,
        recipient: row.o_recipient,
        language: row.o_language,
        subject: row.o_subject,
        text: row.o_text,
        html: row.o_html,
        kept_at: row.o_kept_at,
      }),
    );
  }
  return storedDeliveryOf(row, { delivery, status: row.status, message, providerId: row.provider_id ?? undefined });
}
