// The embedded Store: one SQLite file in the data dir (docs/architecture.md "Backends").
//
// Durability (docs/reliability.md #1, #2). The database runs in WAL mode with synchronous=FULL
// (sqlite-db.ts). WAL lets the admin API and the queue read while ingest writes; FULL makes
// SQLite fsync the WAL at every commit, so once commitInbound resolves the message survives
// a kill -9 *and* a power loss, and only then may the caller send AA / 2xx. With NORMAL a
// power loss could drop the last commits after they were acknowledged — exactly the loss
// the ACK-after-commit promise forbids. When the commit fails (read-only file, disk full,
// I/O error) the promise rejects and the caller NAKs (AE / 503); the sender resends later.
//
// Group commit. better-sqlite3 is synchronous and every commit costs one fsync, so commits
// requested within two event-loop turns (parallel MLLP connections, HTTP requests, routing
// results) are written in one transaction: one fsync for the batch, and every promise
// settles only after the batch's COMMIT returned. The batch runs without a savepoint per
// record (they cost about as much as the records' own writes); when a record breaks a
// constraint the transaction is rolled back and the batch runs again with a savepoint per
// record, so that record alone fails.
//
// Dedupe and quarantine (docs/reliability.md #3). A non-empty control id (MSH-10, FHIR event id)
// is unique per sender among messages that are not quarantined — a partial UNIQUE index
// over (sender, control_id) WHERE control_id <> '' AND status <> 'quarantined'. In one
// transaction commitInbound looks that original up:
//   - same content hash  → `duplicate`: nothing written, the caller answers the stored ACK;
//   - different hash     → the new bytes are stored as a separate row with status
//                          `quarantined` (reason `conflicting_resend`), outside the unique
//                          index, so the original stays the dedupe key; its triggers and
//                          subject states are NOT applied. The same conflicting bytes sent
//                          again find that quarantined row and write nothing new;
//   - no original        → message, triggers and subject states are written;
//   - a pending original  → (an accepted message waiting for its triggers, store.ts
//                          PENDING_REASON) completed in place by a record that is not pending
//                          itself: same row id, the record's content, triggers and states.
// Empty control ids are never deduped. Trigger ids are idempotency keys too: a trigger id
// that is already stored is skipped (the first version wins), not an error.
//
// Times. Strings are stored as received (with their offsets) and, beside them, epoch
// milliseconds used for every ordering and range filter, because ISO strings with
// different offsets do not sort as instants. A subject state is applied only when its asOf
// is at or after the stored one, so a late, older message never rolls the state back.
//
// Admin reads. The store runs on the event loop, so a list that scans would hold every
// connection's ACKs while it scans. Lists read in slices (readSliced): at most SLICE_ROWS
// rows, yielding to the event loop between slices; and when no index serves every filter
// (a rule with a status, a message sender or input, a trigger type) at most SLICE_SCAN
// entries of the list's order per slice. A rare combination over millions of rows takes
// longer in all, never long at once.
//
// Ids. Message ids are the SQLite rowid (AUTOINCREMENT: never reused, even after
// deletions) as a decimal string: stable and URL-safe.
import BetterSqlite3 from 'better-sqlite3';
import { MessageStatus, type ConsentEvent, type ContactHolding, type Delivery, type DeliveryReceipt, type Trigger } from '../types.ts';
import {
  ATTEMPT_AUDIT_ACTION,
  StaleAttemptError,
  StoreReason,
  cancelKeyProbes,
  causeColumns,
  compactExplanation,
  expandExplanation,
  messageIdFilter,
  messageOfEntry,
  parseMessageId,
  sameMessage,
  skippedRulesOf,
  triggerIdsOf,
  compactDeliveryUnspelled,
  counterValue,
  expandDeliveryJson,
  ListFilter,
  instantMs,
  listLimit,
  packCancelKeys,
  packedKeyNeedsRow,
  patientIdOf,
  rawQuotaPlan,
  storedMessageOf,
} from './common.ts';
import { PackedKind, packHash, packIds, packInstant, packJson, packRaw, packText, packTrigger, triggerOf, unpackInstant, unpackJson, unpackRaw } from './packed-json.ts';
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
  type HoldingRow,
  type MessageRow,
  type OutboxRow,
  type ReceiptRow,
  type StateRow,
} from './rows.ts';
import { ACTIVITY_TABLES, SqliteActivity } from './sqlite-activity.ts';
import { CONSENT_TABLES, SqliteConsentLedger } from './sqlite-consent.ts';
import { OUTCOME_TABLES, SqliteOutcomes } from './sqlite-outcomes.ts';
import { RAW_QUOTA_SCHEMA } from './sqlite-raw-quota.ts';
import { MESSAGE_REFERENCE_INDEXES, RETENTION_SCHEMA, SqliteRetention, VISIT_REPLY_RETENTION_SCHEMA } from './sqlite-retention.ts';
import { migrate, openSqliteDatabase, type Database, type MigrationStep } from './sqlite-db.ts';
import { REPLY_TABLES, SqliteReplyLedger, widenMessageFormats } from './sqlite-replies.ts';
import { SqliteWaitlistLedger, WAITLIST_ENTRIES_TABLE, WAITLIST_TABLES, widenFormatsForWaitlist } from './sqlite-waitlist.ts';
import { ATTEMPT_FROM_STATUS, AttemptKind, AuditAction, PromptClosedError, STORED_DELIVERY_STATUSES, StoredDeliveryStatus } from './store.ts';
import type { WaitlistAppointment, WaitlistEntry, WaitlistFigures, WaitlistOffer, WaitlistOfferState, WaitlistSlot, WaitlistSlotState } from './store.ts';
import type {
  AuditEntry,
  AuditQuery,
  CommitOutcome,
  ConsentLedger,
  ContactHoldingQuery,
  DeliveryCause,
  DeliveryTally,
  DecisionRecord,
  Disclosure,
  ErasureRecord,
  FlowActivity,
  PatientFacts,
  StoredFhirConsent,
  DeliveryOutcome,
  DeliveryQuery,
  DeliveryWrite,
  InboundRecord,
  MessageOrigin,
  OutcomeCount,
  OutcomeLink,
  OutcomeObservation,
  OutcomeQuery,
  PruneBatch,
  PruneOptions,
  RetentionKind,
  MessageQuery,
  NewStaffTask,
  OutboxEntry,
  OutboxQuery,
  ReceiptQuery,
  ReplyPrompt,
  RoutingExplanation,
  SaveRoutingOptions,
  SentMessage,
  StaffTask,
  StaffTaskStatus,
  Store,
  StoredDelivery,
  StoredMessage,
  StoredMessageWithBody,
  StoredVideoJoin,
  SubjectState,
  TriggerQuery,
  TriggerRouting,
  VideoLink,
} from './store.ts';
import { isPending } from './store.ts';

/** Component name of the store's tables in schema_migrations. */
export const SQLITE_STORE_COMPONENT = 'store';

/**
 * Adds `review` to the statuses a delivery row may have. SQLite cannot change a CHECK in place:
 * the table is rebuilt with the same columns and rows, and its indexes and triggers (counts,
 * the dashboard's tallies, retention's index…) made again as they were — SQLite's documented
 * way ("ALTER TABLE", making other kinds of table schema changes). Counts are unchanged.
 */
export function allowDeliveryReview(db: Database): void {
  const statuses = "'suppressed', 'failed')";
  const table = db.prepare("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'deliveries'").get() as { sql: string };
  if (!table.sql.includes(statuses)) throw new Error('the deliveries table is not the one this step knows: restore a backup made by this version');
  const dependents = db.prepare("SELECT sql FROM sqlite_master WHERE tbl_name = 'deliveries' AND type IN ('index', 'trigger') AND sql IS NOT NULL").all() as Array<{ sql: string }>;
  db.exec(table.sql.replace(/^CREATE TABLE "?deliveries"?/, 'CREATE TABLE deliveries_next').replace(statuses, "'suppressed', 'failed', 'review')"));
  db.exec('INSERT INTO deliveries_next SELECT * FROM deliveries; DROP TABLE deliveries; ALTER TABLE deliveries_next RENAME TO deliveries;');
  for (const { sql } of dependents) db.exec(sql);
}

/**
 * No table changes. From this version on, the store's rows hold values an older CareRelay
 * would misread without noticing: times kept as their offset beside their milliseconds
 * (packed-json.ts packInstant), an empty receipt time, a content hash as bytes, a trigger's
 * JSON without its id, a delivery's without what its id spells. The version this step records
 * makes an older CareRelay refuse the file instead (migrate: "written by a newer version").
 */
export function compactRowsOnward(_db: Database): void {}

/** Schema versions of the store's tables: append-only (see migrate). */
export const SQLITE_STORE_MIGRATIONS: readonly MigrationStep[] = [
  `
  CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    input TEXT NOT NULL,
    format TEXT NOT NULL CHECK (format IN ('hl7v2', 'fhir')),
    sender TEXT NOT NULL,
    control_id TEXT NOT NULL,
    message_type TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('accepted', 'ignored', 'rejected', 'quarantined')),
    ack TEXT NOT NULL,
    ack_code TEXT NOT NULL,
    reason TEXT,
    received_at TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    trigger_ids TEXT NOT NULL,
    raw BLOB NOT NULL
  );
  -- The dedupe key. Quarantined copies sit outside it so the original stays the key.
  CREATE UNIQUE INDEX messages_dedupe ON messages (sender, control_id)
    WHERE control_id <> '' AND status <> 'quarantined';
  CREATE INDEX messages_quarantined ON messages (sender, control_id) WHERE status = 'quarantined';
  CREATE INDEX messages_received ON messages (received_ms, id);

  CREATE TABLE triggers (
    id TEXT PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages (id),
    type TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    appointment_id TEXT,
    encounter_id TEXT,
    occurred_at TEXT NOT NULL,
    occurred_ms INTEGER NOT NULL,
    json TEXT NOT NULL
  );
  CREATE INDEX triggers_occurred ON triggers (occurred_ms);
  CREATE INDEX triggers_patient ON triggers (patient_id, occurred_ms);
  CREATE INDEX triggers_appointment ON triggers (appointment_id, occurred_ms) WHERE appointment_id IS NOT NULL;
  CREATE INDEX triggers_encounter ON triggers (encounter_id, occurred_ms) WHERE encounter_id IS NOT NULL;
  CREATE INDEX triggers_message ON triggers (message_id);

  CREATE TABLE subject_states (
    kind TEXT NOT NULL CHECK (kind IN ('appointment', 'encounter')),
    id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    status TEXT,
    start TEXT,
    "end" TEXT,
    as_of TEXT NOT NULL,
    as_of_ms INTEGER NOT NULL,
    data TEXT,
    message_id INTEGER REFERENCES messages (id),
    PRIMARY KEY (kind, id)
  ) WITHOUT ROWID;
  CREATE INDEX subject_states_patient ON subject_states (patient_id, kind);
  `,
  `
  CREATE TABLE cursors (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
  ) WITHOUT ROWID;
  `,
  // Routing (workers/router.ts). routed_ms marks a trigger routed in the same transaction as
  // the deliveries it changed; triggers stored before routing existed are marked routed (0)
  // so an upgrade does not plan messages for old events. The partial index holds only the
  // unrouted ones: the start-up scan costs what is left to do, not the whole history.
  `
  ALTER TABLE triggers ADD COLUMN routed_ms INTEGER;
  UPDATE triggers SET routed_ms = 0;
  CREATE INDEX triggers_unrouted ON triggers (routed_ms) WHERE routed_ms IS NULL;

  CREATE TABLE deliveries (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('pending', 'cancelled', 'finished', 'suppressed', 'failed')),
    as_of TEXT NOT NULL,
    as_of_ms INTEGER NOT NULL,
    due_at TEXT NOT NULL,
    due_ms INTEGER NOT NULL,
    rule TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    generation INTEGER NOT NULL,
    subject_start TEXT,
    json TEXT NOT NULL,
    reason TEXT,
    message TEXT,
    provider_id TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
  );
  CREATE INDEX deliveries_status ON deliveries (status, seq);
  CREATE INDEX deliveries_rule ON deliveries (rule, seq);
  CREATE INDEX deliveries_patient ON deliveries (patient_id, seq);
  CREATE INDEX deliveries_subject ON deliveries (subject, seq);

  -- Cancelling one appointment among millions of deliveries: one probe on the key.
  CREATE TABLE delivery_keys (
    key TEXT NOT NULL,
    delivery_seq INTEGER NOT NULL,
    PRIMARY KEY (key, delivery_seq)
  ) WITHOUT ROWID;

  CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
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
  `,
  // What providers said about deliveries (Store.addDeliveryReceipt). '' and 0 stand for "no
  // provider id" and "not an adapter attempt" so the unique key can dedupe repeated callbacks.
  `
  CREATE TABLE delivery_receipts (
    seq INTEGER PRIMARY KEY,
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
  `,
  // Search and operator attempts (admin API). patient_id: the patient a message is about,
  // also for refused ones (backfilled from the triggers). An operator's reprocess or release
  // stores a new row that `replaces` the earlier one (`replaced_by` points forward); `keyed`
  // says whether a row holds its (sender, control id) dedupe key, so a reprocess takes the
  // key over from the message it replaces and a released copy stays outside it.
  `
  ALTER TABLE messages ADD COLUMN patient_id TEXT;
  ALTER TABLE messages ADD COLUMN origin TEXT NOT NULL DEFAULT 'received' CHECK (origin IN ('received', 'reprocess', 'release'));
  ALTER TABLE messages ADD COLUMN replaces INTEGER REFERENCES messages (id);
  ALTER TABLE messages ADD COLUMN replaced_by INTEGER;
  ALTER TABLE messages ADD COLUMN keyed INTEGER NOT NULL DEFAULT 1;
  DROP INDEX messages_dedupe;
  CREATE UNIQUE INDEX messages_dedupe ON messages (sender, control_id)
    WHERE control_id <> '' AND status <> 'quarantined' AND keyed = 1;
  UPDATE messages SET patient_id = (
    SELECT t.patient_id FROM triggers t WHERE t.message_id = messages.id AND t.patient_id <> '' ORDER BY t.rowid LIMIT 1
  );
  CREATE INDEX messages_patient ON messages (patient_id, received_ms) WHERE patient_id IS NOT NULL;
  CREATE INDEX messages_type ON messages (message_type, received_ms);
  CREATE INDEX triggers_type ON triggers (type, occurred_ms);

  CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    result TEXT
  );
  CREATE INDEX audit_target ON audit (target, seq);
  `,
  // A rejected message past the raw-bytes quota keeps only its first bytes (workers/raw-quota.ts):
  // raw_bytes is then its length as received; NULL when raw is whole.
  `
  ALTER TABLE messages ADD COLUMN raw_bytes INTEGER;
  `,
  // Which marketing/CRM tool holds which patient's contact (Store.recordContactHolding): opt-outs
  // are pushed to these outputs and no other.
  `
  CREATE TABLE contact_holdings (
    seq INTEGER PRIMARY KEY,
    output TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    contact_key TEXT NOT NULL,
    first_sent_at TEXT NOT NULL,
    UNIQUE (output, patient_id, contact_key)
  );
  CREATE INDEX contact_holdings_patient ON contact_holdings (patient_id);
  CREATE INDEX contact_holdings_contact ON contact_holdings (output, contact_key);
  `,
  // The consent ledger and the evidence (sqlite-consent.ts).
  CONSENT_TABLES,
  // Compact deliveries and counts without scans (benchmarks: bytes per message, admin totals).
  // - A delivery's JSON leaves out what its columns hold and packs its cancel keys
  //   (common.ts packCancelKeys); only keys that no column finds get a delivery_keys row
  //   (rows written before stay valid). Older rows keep their full JSON and are read as is.
  // - A finished delivery whose message is its outbox entry points to it (outbox_seq)
  //   instead of keeping the text twice.
  // - cause_trigger / cause: the trigger that last changed the delivery, and how
  //   (cause_trigger NULL: the trigger that planned it, delivery.triggerId).
  // - triggers.routing: what routing did for the trigger, rule by rule (RoutingExplanation).
  // - delivery_counts / message_counts: totals per status kept by triggers, so the admin
  //   API counts without scanning millions of rows.
  `
  ALTER TABLE deliveries ADD COLUMN outbox_seq INTEGER;
  ALTER TABLE deliveries ADD COLUMN cause_trigger TEXT;
  ALTER TABLE deliveries ADD COLUMN cause TEXT;
  ALTER TABLE triggers ADD COLUMN routing TEXT;

  -- raw_packed = 1: raw holds the bytes compressed (packed-json.ts packRaw).
  ALTER TABLE messages ADD COLUMN raw_packed INTEGER;

  CREATE TABLE delivery_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
  INSERT INTO delivery_counts (status, n) SELECT status, COUNT(*) FROM deliveries GROUP BY status;
  CREATE TRIGGER deliveries_counted_insert AFTER INSERT ON deliveries BEGIN
    INSERT INTO delivery_counts (status, n) VALUES (NEW.status, 1) ON CONFLICT (status) DO UPDATE SET n = n + 1;
  END;
  CREATE TRIGGER deliveries_counted_update AFTER UPDATE OF status ON deliveries WHEN OLD.status <> NEW.status BEGIN
    UPDATE delivery_counts SET n = n - 1 WHERE status = OLD.status;
    INSERT INTO delivery_counts (status, n) VALUES (NEW.status, 1) ON CONFLICT (status) DO UPDATE SET n = n + 1;
  END;
  CREATE TRIGGER deliveries_counted_delete AFTER DELETE ON deliveries BEGIN
    UPDATE delivery_counts SET n = n - 1 WHERE status = OLD.status;
  END;

  CREATE TABLE message_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
  INSERT INTO message_counts (status, n) SELECT status, COUNT(*) FROM messages GROUP BY status;
  CREATE TRIGGER messages_counted_insert AFTER INSERT ON messages BEGIN
    INSERT INTO message_counts (status, n) VALUES (NEW.status, 1) ON CONFLICT (status) DO UPDATE SET n = n + 1;
  END;
  CREATE TRIGGER messages_counted_update AFTER UPDATE OF status ON messages WHEN OLD.status <> NEW.status BEGIN
    UPDATE message_counts SET n = n - 1 WHERE status = OLD.status;
    INSERT INTO message_counts (status, n) VALUES (NEW.status, 1) ON CONFLICT (status) DO UPDATE SET n = n + 1;
  END;
  CREATE TRIGGER messages_counted_delete AFTER DELETE ON messages BEGIN
    UPDATE message_counts SET n = n - 1 WHERE status = OLD.status;
  END;
  `,
  // The tool's own id of a held contact (a tool's webhook naming the contact by it finds the
  // patient: ContactHolding.toolId); an erasure's record of the tools that held the patient's
  // contact and what asking each to forget it gave (ErasureRecord.tools).
  `
  ALTER TABLE contact_holdings ADD COLUMN tool_id TEXT;
  CREATE INDEX contact_holdings_tool_id ON contact_holdings (output, tool_id) WHERE tool_id IS NOT NULL;
  ALTER TABLE erasures ADD COLUMN tools TEXT NOT NULL DEFAULT '[]';
  `,
  // The dashboard's counts without scans (sqlite-activity.ts): activity per minute of inputs and
  // outputs, deliveries per rule, variant, output, status and reason.
  ACTIVITY_TABLES,
  // Operations: outcome observations and their links (sqlite-outcomes.ts), what retention
  // walks (sqlite-retention.ts).
  OUTCOME_TABLES + RETENTION_SCHEMA,
  // Video visits (docs/video.md): the vendor's join URL of an appointment, sealed by the ingest
  // (never in clear), and CareRelay's own patient links, kept by the SHA-256 of their token.
  `
  CREATE TABLE video_joins (
    appointment_id TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL,
    as_of TEXT NOT NULL,
    as_of_ms INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    sealed BLOB NOT NULL,
    message_id INTEGER
  ) WITHOUT ROWID;
  CREATE INDEX video_joins_patient ON video_joins (patient_id);
  CREATE TABLE video_links (
    token_hash TEXT PRIMARY KEY,
    appointment_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    start TEXT NOT NULL,
    zone TEXT,
    language TEXT,
    minted_at TEXT NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX video_links_patient ON video_links (patient_id);
  `,
  // Replies to reminders and staff tasks (sqlite-replies.ts); SMS replies stored as messages.
  REPLY_TABLES,
  widenMessageFormats,
  // The raw-bytes quota's account of a row counted under it, given back when its bytes go
  // (sqlite-raw-quota.ts).
  RAW_QUOTA_SCHEMA,
  // Status `review`: an ambiguous failure of a non-idempotent output waits for a person
  // (store.ts StoredDeliveryStatus).
  allowDeliveryReview,
  // The waitlist (sqlite-waitlist.ts); its waves of offers stored as messages.
  WAITLIST_TABLES,
  widenFormatsForWaitlist,
  // Retention of video joins and links, reply prompts (sqlite-retention.ts).
  VISIT_REPLY_RETENTION_SCHEMA,
  // The EHR's waitlist entries, a source of the waitlist's candidates (sqlite-waitlist.ts).
  WAITLIST_ENTRIES_TABLE,
  compactRowsOnward,
  // The foreign keys' child columns that lacked an index (sqlite-retention.ts).
  MESSAGE_REFERENCE_INDEXES,
];

/** Most records committed in one transaction (bounds how long one flush blocks the loop). */
const MAX_BATCH = 256;
/** Rows a list reads (and turns into objects) before it yields to the event loop. */
const SLICE_ROWS = 25;
/** Entries of a list's order a slice may walk past when no selective filter leads. */
const SLICE_SCAN = 200;

/** A position in a list's order: [seq] or [time ms, id]. */
type Position = readonly number[];

/**
 * messages.received_at as this store keeps it: '' when it is exactly what received_ms says in
 * toISOString's form (packInstant's `Z`: what every input writes), which SQLITE_MESSAGE_COLUMNS
 * spells back (from 1970 on: its integer arithmetic); any other form as given.
 */
function storedReceivedAt(receivedAt: string, receivedMs: number): string {
  return receivedMs >= 0 && packInstant(receivedAt, receivedMs) === 'Z' ? '' : receivedAt;
}

/** rows.ts MESSAGE_COLUMNS with received_at spelled back from received_ms when stored as '' (storedReceivedAt): integer arithmetic, exact. */
export const SQLITE_MESSAGE_COLUMNS = MESSAGE_COLUMNS.replace(
  'received_at',
  "CASE WHEN received_at <> '' THEN received_at ELSE strftime('%Y-%m-%dT%H:%M:%S', received_ms / 1000, 'unixepoch') || printf('.%03dZ', received_ms % 1000) END AS received_at",
);

export const DELIVERY_COLUMNS =
  'seq, id, status, as_of, as_of_ms, due_at, due_ms, generation, subject_start, json, reason, message, provider_id, created_at, updated_at, rule, subject, patient_id, outbox_seq, cause_trigger, cause';

/**
 * A delivery's JSON as this store keeps it: common.ts compactDeliveryUnspelled without the times its
 * row holds in columns — dueAt (due_at, always the delivery's) and asOf when the write's
 * (as_of) is the delivery's own; deliveryFromRow puts them back.
 */
function rowJsonOf(write: DeliveryWrite): Record<string, unknown> {
  const { dueAt: _due, asOf, ...rest } = compactDeliveryUnspelled(write.delivery) as Record<string, unknown> & Pick<Delivery, 'dueAt' | 'asOf'>;
  return asOf === write.asOf ? rest : { ...rest, asOf };
}

/**
 * The delivery with the times rowJsonOf left to the columns, in their places (asOf, plannedAt,
 * dueAt: the order routing builds, so every copy of a delivery reads and exports the same).
 * Rows written before rowJsonOf hold them in the JSON: unchanged.
 */
function withRowTimes(d: Delivery, row: Pick<DeliveryRow, 'as_of' | 'due_at'>): Delivery {
  if (d.dueAt !== undefined && d.asOf !== undefined) return d;
  const asOf = d.asOf ?? row.as_of;
  const dueAt = d.dueAt ?? row.due_at;
  const out: Record<string, unknown> = {};
  let placed = false;
  for (const [key, value] of Object.entries(d)) {
    if (key === 'asOf' || key === 'dueAt') continue;
    if (key === 'plannedAt' || (!placed && key === 'cancelKeys')) {
      out.asOf = asOf;
      if (key === 'plannedAt') out.plannedAt = value;
      out.dueAt = dueAt;
      placed = true;
      if (key === 'plannedAt') continue;
    }
    out[key] = value;
  }
  if (!placed) Object.assign(out, { asOf, dueAt });
  return out as unknown as Delivery;
}

export interface DeliveryRow {
  seq: number;
  id: string;
  rule: string;
  subject: string;
  patient_id: string;
  outbox_seq: number | null;
  cause_trigger: string | null;
  cause: string | null;
  status: StoredDeliveryStatus;
  /** packed-json.ts packInstant: the offset only when as_of_ms spells the rest (deliveryFromRow spells it back). */
  as_of: string;
  as_of_ms: number;
  /** packInstant, as as_of. */
  due_at: string;
  due_ms: number;
  generation: number;
  subject_start: string | null;
  json: string | Buffer;
  reason: string | null;
  message: string | null;
  provider_id: string | null;
  created_at: string;
  updated_at: string;
}

const VIDEO_LINK_COLUMNS = 'token_hash, appointment_id, patient_id, delivery_id, start, zone, language, minted_at';

interface VideoLinkRow {
  token_hash: string;
  appointment_id: string;
  patient_id: string;
  delivery_id: string;
  start: string;
  zone: string | null;
  language: string | null;
  minted_at: string;
}

/** A record with its instants already checked and converted (outside the transaction). */
/** CommitOutcome.rawBytes when a row kept only its first bytes. */
function rawCut(rawBytes: number | undefined): { rawBytes?: number } {
  return rawBytes === undefined ? {} : { rawBytes };
}

interface Prepared {
  record: InboundRecord;
  receivedMs: number;
  occurredMs: number[];
  asOfMs: number[];
  joinAsOfMs: number[];
}

/**
 * One write waiting for the next group commit: an inbound record, or a routing result.
 * Routing writes ride in the same transaction (and fsync) as the ingest commits around them.
 */
interface PendingWrite {
  run: () => unknown;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
}

export interface SqliteStoreOptions {
  /**
   * Close the Database in close(). Default false: a Database passed in is shared (the
   * embedded queue uses the same file) and closed by whoever opened it. open() sets true.
   */
  closeDatabase?: boolean;
}

export class SqliteStore implements Store {
  /** Opens (creating when needed) the database file and owns it: close() closes it. */
  static open(file: string): SqliteStore {
    const db = openSqliteDatabase(file);
    try {
      return new SqliteStore(db, { closeDatabase: true });
    } catch (error) {
      db.close();
      throw error;
    }
  }

  readonly db: Database;
  private readonly closeDatabase: boolean;
  private closed = false;
  private pending: PendingWrite[] = [];
  #commits = 0;
  /** Outbox entries kept by this process and not yet finished: finish compares them unpacked. */
  readonly #recentOutbox = new Map<string, { entry: OutboxEntry; packed: Buffer }>();
  private flushScheduled = false;
  private readonly listStatements = new Map<string, BetterSqlite3.Statement>();

  private readonly findOriginalStmt: BetterSqlite3.Statement<[string, string], MessageRow>;
  private readonly findQuarantinedStmt: BetterSqlite3.Statement<[{ sender: string; controlId: string; packed: string | Buffer; text: string }], MessageRow>;
  private readonly messageRowStmt: BetterSqlite3.Statement<[number], MessageRow & { keyed: number }>;
  private readonly unkeyStmt: BetterSqlite3.Statement<[number]>;
  private readonly setReplacedByStmt: BetterSqlite3.Statement<[number, number]>;
  private readonly insertAuditStmt: BetterSqlite3.Statement<[string, string, string, string, string, string | null]>;
  private readonly triggerRoutingStmt: BetterSqlite3.Statement<[string], { message_id: number; routed_ms: number | null }>;
  private readonly insertMessageStmt: BetterSqlite3.Statement;
  private readonly completeMessageStmt: BetterSqlite3.Statement;
  private readonly insertTriggerStmt: BetterSqlite3.Statement;
  private readonly upsertStateStmt: BetterSqlite3.Statement;
  private readonly messageByIdStmt: BetterSqlite3.Statement<[number], MessageRow & { raw: Buffer; raw_packed: number | null; raw_bytes: number | null }>;
  private readonly positionByIdStmt: BetterSqlite3.Statement<[number], { received_ms: number; id: number }>;
  private readonly triggerByIdStmt: BetterSqlite3.Statement<[string], { id: string; json: string | Buffer }>;
  private readonly triggerInputStmt: BetterSqlite3.Statement<[string], { input: string }>;
  private readonly stateStmt: BetterSqlite3.Statement<[string, string], StateRow>;
  private readonly statesOfPatientStmt: BetterSqlite3.Statement<[string, string], StateRow>;
  private readonly pingStmt: BetterSqlite3.Statement;
  private readonly getCursorStmt: BetterSqlite3.Statement<[string], { value: string }>;
  private readonly setCursorStmt: BetterSqlite3.Statement<[string, string]>;
  private readonly unroutedStmt: BetterSqlite3.Statement<[number], { id: string; json: string | Buffer }>;
  private readonly markRoutedStmt: BetterSqlite3.Statement<[number, Buffer | null, string]>;
  private readonly upsertDeliveryStmt: BetterSqlite3.Statement<unknown[], { seq: number }>;
  private readonly insertDeliveryKeyStmt: BetterSqlite3.Statement<[string, number]>;
  private readonly deliveryByIdStmt: BetterSqlite3.Statement<[string], DeliveryRow>;
  private readonly deliveriesByKeyStmt: BetterSqlite3.Statement<[string], DeliveryRow>;
  private readonly deliveriesBySubjectStmt: BetterSqlite3.Statement<[string], DeliveryRow>;
  private readonly deliveriesByPatientStmt: BetterSqlite3.Statement<[string], DeliveryRow>;
  private readonly deliveriesByRuleStmt: BetterSqlite3.Statement<[string], DeliveryRow>;
  private readonly outboxByDeliveryStmt: BetterSqlite3.Statement<[string], OutboxRow<string | Buffer>>;
  private readonly outboxBySeqStmt: BetterSqlite3.Statement<[number], OutboxRow<string | Buffer>>;
  private readonly routingStmt: BetterSqlite3.Statement<[string], { routing: string | Buffer | null; routed_ms: number | null }>;
  private readonly unroutedAppointmentStmt: BetterSqlite3.Statement<[string], { one: number }>;
  private readonly unroutedEncounterStmt: BetterSqlite3.Statement<[string], { one: number }>;
  private readonly deliveryCountsStmt: BetterSqlite3.Statement<[], { status: StoredDeliveryStatus; n: number }>;
  private readonly messageCountsStmt: BetterSqlite3.Statement<[], { status: MessageStatus; n: number }>;
  private readonly deliverySeqStmt: BetterSqlite3.Statement<[string], { seq: number }>;
  private readonly finishDeliveryStmt: BetterSqlite3.Statement;
  private readonly putOutboxStmt: BetterSqlite3.Statement<unknown[], { seq: number }>;
  private readonly outboxSeqStmt: BetterSqlite3.Statement<[number], { seq: number }>;
  private readonly addReceiptStmt: BetterSqlite3.Statement;
  private readonly receiptsOfDeliveryStmt: BetterSqlite3.Statement<[string], ReceiptRow>;
  private readonly receiptsOfProviderIdStmt: BetterSqlite3.Statement<[string, string], ReceiptRow>;
  private readonly addHoldingStmt: BetterSqlite3.Statement<[string, string, string, string]>;
  private readonly holdingsOfPatientStmt: BetterSqlite3.Statement<[string], HoldingRow>;
  private readonly holdingsOfContactStmt: BetterSqlite3.Statement<[string, string], HoldingRow>;
  private readonly upsertVideoJoinStmt: BetterSqlite3.Statement<[{ appointmentId: string; patientId: string; asOf: string; asOfMs: number; keyId: string; sealed: Buffer; messageId: number }]>;
  private readonly clearVideoJoinStmt: BetterSqlite3.Statement<[string, number]>;
  private readonly videoJoinStmt: BetterSqlite3.Statement<[string], { appointment_id: string; patient_id: string; as_of: string; key_id: string; sealed: Buffer }>;
  private readonly putVideoLinkStmt: BetterSqlite3.Statement<[string, string, string, string, string, string | null, string | null, string]>;
  private readonly videoLinkStmt: BetterSqlite3.Statement<[string], VideoLinkRow>;
  private readonly holdingsOfToolIdStmt: BetterSqlite3.Statement<[string, string], HoldingRow>;
  private readonly setHoldingToolIdStmt: BetterSqlite3.Statement<[string, string, string, string]>;
  private readonly saveRoutingTx: (triggerIds: readonly string[], rows: Array<{ write: DeliveryWrite; asOfMs: number; dueMs: number }>, routedMs: number, explanations: ReadonlyMap<string, Buffer>) => void;
  private readonly commitGroup: (batch: PendingWrite[]) => Array<{ value: unknown }>;
  private readonly commitIsolated: (batch: PendingWrite[]) => Array<{ value: unknown } | { error: unknown }>;
  private readonly commitOne: (run: () => unknown) => unknown;
  private readonly ledger: SqliteConsentLedger;
  private readonly replies: SqliteReplyLedger;
  private readonly waitlist: SqliteWaitlistLedger;
  private readonly eraseTx: (patientId: string, at: string, outcomes?: Readonly<Record<string, string>>) => ErasureRecord;
  private readonly activity: SqliteActivity;
  private readonly outcomes: SqliteOutcomes;
  private readonly retention: SqliteRetention;

  constructor(db: Database, options: SqliteStoreOptions = {}) {
    this.db = db;
    this.closeDatabase = options.closeDatabase ?? false;
    migrate(db, SQLITE_STORE_COMPONENT, SQLITE_STORE_MIGRATIONS);
    // The stored bytes of a message as received, for SQL that reads them (the text search).
    db.function('raw_unpacked', { deterministic: true }, (raw: unknown, packed: unknown) => (packed === 1 && Buffer.isBuffer(raw) ? unpackRaw(raw) : raw));
    this.ledger = new SqliteConsentLedger(db);
    this.replies = new SqliteReplyLedger(db);
    this.waitlist = new SqliteWaitlistLedger(db);
    // The ledger's erasure nests as a savepoint: the patient's reply prompts and waitlist records go in the same transaction.
    this.eraseTx = db.transaction((patientId: string, at: string, outcomes?: Readonly<Record<string, string>>) => {
      const record = this.ledger.erasePatient(patientId, at, outcomes);
      this.replies.erase(patientId);
      this.waitlist.erase(patientId);
      return record;
    }).immediate;
    this.activity = new SqliteActivity(db);
    this.outcomes = new SqliteOutcomes(db);
    this.retention = new SqliteRetention(db);

    // The literal `control_id <> '' AND status <> 'quarantined' AND keyed = 1` lets SQLite
    // use the partial unique index (it must see the index's WHERE terms in the query).
    this.findOriginalStmt = db.prepare(
      `SELECT ${SQLITE_MESSAGE_COLUMNS} FROM messages
       WHERE sender = ? AND control_id = ? AND control_id <> '' AND status <> 'quarantined' AND keyed = 1`,
    );
    this.findQuarantinedStmt = db.prepare(
      `SELECT ${SQLITE_MESSAGE_COLUMNS} FROM messages
       WHERE sender = @sender AND control_id = @controlId AND content_hash IN (@packed, @text) AND status = 'quarantined'
       ORDER BY id LIMIT 1`,
    );
    this.messageRowStmt = db.prepare(`SELECT ${SQLITE_MESSAGE_COLUMNS}, keyed FROM messages WHERE id = ?`);
    this.unkeyStmt = db.prepare('UPDATE messages SET keyed = 0 WHERE id = ?');
    this.setReplacedByStmt = db.prepare('UPDATE messages SET replaced_by = ?, keyed = 0 WHERE id = ?');
    this.insertAuditStmt = db.prepare('INSERT INTO audit (at, actor, action, target, outcome, result) VALUES (?, ?, ?, ?, ?, ?)');
    this.triggerRoutingStmt = db.prepare('SELECT message_id, routed_ms FROM triggers WHERE id = ?');
    this.insertMessageStmt = db.prepare(
      `INSERT INTO messages (input, format, sender, control_id, message_type, content_hash, status, ack, ack_code,
         reason, received_at, received_ms, trigger_ids, raw, raw_packed, patient_id, origin, replaces, keyed, raw_bytes, raw_quota)
       VALUES (@input, @format, @sender, @controlId, @messageType, @contentHash, @status, @ack, @ackCode,
         @reason, @receivedAt, @receivedMs, @triggerIds, @raw, 1, @patientId, @origin, @replaces, @keyed, @rawBytes, @rawQuota)`,
    );
    this.completeMessageStmt = db.prepare(
      `UPDATE messages SET message_type = @messageType, content_hash = @contentHash, status = @status, ack = @ack,
         ack_code = @ackCode, reason = @reason, trigger_ids = @triggerIds, raw = @raw, raw_packed = 1, patient_id = @patientId
       WHERE id = @id`,
    );
    this.insertTriggerStmt = db.prepare(
      `INSERT INTO triggers (id, message_id, type, patient_id, appointment_id, encounter_id, occurred_at, occurred_ms, json)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (id) DO NOTHING`,
    );
    // `>=`: a state at the same instant as the stored one is newer information (it was
    // committed later); only a strictly older asOf is refused.
    this.upsertStateStmt = db.prepare(
      `INSERT INTO subject_states (kind, id, patient_id, status, start, "end", as_of, as_of_ms, data, message_id)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (kind, id) DO UPDATE SET
         patient_id = excluded.patient_id, status = excluded.status, start = excluded.start,
         "end" = excluded."end", as_of = excluded.as_of, as_of_ms = excluded.as_of_ms,
         data = excluded.data, message_id = excluded.message_id
       WHERE excluded.as_of_ms >= subject_states.as_of_ms`,
    );
    this.messageByIdStmt = db.prepare(`SELECT ${SQLITE_MESSAGE_COLUMNS}, raw, raw_packed, raw_bytes FROM messages WHERE id = ?`);
    this.positionByIdStmt = db.prepare('SELECT received_ms, id FROM messages WHERE id = ?');
    this.triggerByIdStmt = db.prepare('SELECT id, json FROM triggers WHERE id = ?');
    this.triggerInputStmt = db.prepare('SELECT m.input FROM triggers t JOIN messages m ON m.id = t.message_id WHERE t.id = ?');
    this.stateStmt = db.prepare(
      `SELECT ${STATE_COLUMNS} FROM subject_states WHERE kind = ? AND id = ?`,
    );
    // INDEXED BY: without it SQLite walks the primary key (kind = ?) in id order to spare a sort
    // — every appointment of every patient, at each send-time check. The patient index holds
    // the key's id after (patient_id, kind), so it gives the order as well.
    this.statesOfPatientStmt = db.prepare(
      `SELECT ${STATE_COLUMNS} FROM subject_states INDEXED BY subject_states_patient WHERE patient_id = ? AND kind = ? ORDER BY id`,
    );
    this.pingStmt = db.prepare('SELECT 1');
    this.getCursorStmt = db.prepare('SELECT value FROM cursors WHERE key = ?');
    this.setCursorStmt = db.prepare(
      'INSERT INTO cursors (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
    );

    this.unroutedStmt = db.prepare('SELECT id, json FROM triggers WHERE routed_ms IS NULL ORDER BY rowid LIMIT ?');
    this.markRoutedStmt = db.prepare('UPDATE triggers SET routed_ms = ?, routing = ? WHERE id = ?');
    this.routingStmt = db.prepare('SELECT routing, routed_ms FROM triggers WHERE id = ?');
    this.unroutedAppointmentStmt = db.prepare('SELECT 1 AS one FROM triggers WHERE appointment_id = ? AND routed_ms IS NULL LIMIT 1');
    this.unroutedEncounterStmt = db.prepare('SELECT 1 AS one FROM triggers WHERE encounter_id = ? AND routed_ms IS NULL LIMIT 1');
    this.deliveryCountsStmt = db.prepare('SELECT status, n FROM delivery_counts');
    this.messageCountsStmt = db.prepare('SELECT status, n FROM message_counts');
    // A final delivery (sent, suppressed, failed) is never overwritten: a replan that
    // raced with the send must not bring a sent message back to pending. RETURNING gives no
    // row then, and its keys are left alone.
    this.upsertDeliveryStmt = db.prepare(
      `INSERT INTO deliveries (id, status, as_of, as_of_ms, due_at, due_ms, rule, patient_id, subject, generation,
         subject_start, json, created_at, updated_at, cause_trigger, cause, output, variant)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (id) DO UPDATE SET
         status = excluded.status, as_of = excluded.as_of, as_of_ms = excluded.as_of_ms,
         due_at = excluded.due_at, due_ms = excluded.due_ms, rule = excluded.rule,
         patient_id = excluded.patient_id, subject = excluded.subject, generation = excluded.generation,
         subject_start = excluded.subject_start, json = excluded.json, updated_at = excluded.updated_at,
         cause_trigger = excluded.cause_trigger, cause = excluded.cause, output = excluded.output, variant = excluded.variant
       WHERE deliveries.status IN ('pending', 'cancelled')
       RETURNING seq`,
    );
    this.insertDeliveryKeyStmt = db.prepare('INSERT OR IGNORE INTO delivery_keys (key, delivery_seq) VALUES (?, ?)');
    this.deliveryByIdStmt = db.prepare(`SELECT ${DELIVERY_COLUMNS} FROM deliveries WHERE id = ?`);
    // CROSS JOIN keeps the key table as the outer loop (one probe on the key, then one per
    // delivery found), whatever the statistics say.
    this.deliveriesByKeyStmt = db.prepare(
      `SELECT ${DELIVERY_COLUMNS.split(', ').map((c) => `d.${c}`).join(', ')}
         FROM delivery_keys k CROSS JOIN deliveries d ON d.seq = k.delivery_seq
        WHERE k.key = ? ORDER BY d.seq`,
    );
    this.deliveriesBySubjectStmt = db.prepare(`SELECT ${DELIVERY_COLUMNS} FROM deliveries WHERE subject = ?`);
    this.deliveriesByPatientStmt = db.prepare(`SELECT ${DELIVERY_COLUMNS} FROM deliveries WHERE patient_id = ?`);
    this.deliveriesByRuleStmt = db.prepare(`SELECT ${DELIVERY_COLUMNS} FROM deliveries WHERE rule = ?`);
    this.outboxByDeliveryStmt = db.prepare(`SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE delivery_id = ?`);
    this.outboxBySeqStmt = db.prepare(`SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE seq = ?`);
    this.deliverySeqStmt = db.prepare('SELECT seq FROM deliveries WHERE id = ?');
    this.finishDeliveryStmt = db.prepare(
      `UPDATE deliveries SET status = @status, reason = @reason, message = @message, outbox_seq = @outboxSeq,
              provider_id = CASE WHEN @providerId = output || '/' || id THEN char(0) ELSE @packedProviderId END, updated_at = @at
        WHERE id = @id AND generation = @generation AND status IN ('pending', 'failed', 'review')`,
    );
    this.putOutboxStmt = db.prepare(
      `INSERT INTO outbox (delivery_id, output, channel, recipient, language, subject, text, html, kept_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (delivery_id) DO UPDATE SET
         output = excluded.output, channel = excluded.channel, recipient = excluded.recipient,
         language = excluded.language, subject = excluded.subject, text = excluded.text,
         html = excluded.html, kept_at = excluded.kept_at
       RETURNING seq`,
    );
    this.outboxSeqStmt = db.prepare('SELECT seq FROM outbox WHERE seq = ?');
    this.addReceiptStmt = db.prepare(
      `INSERT INTO delivery_receipts (delivery_id, output, status, provider_id, code, attempt, at)
       VALUES (?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (delivery_id, output, status, provider_id, attempt) DO NOTHING`,
    );
    this.receiptsOfDeliveryStmt = db.prepare(`SELECT ${RECEIPT_COLUMNS} FROM delivery_receipts WHERE delivery_id = ? ORDER BY seq`);
    this.receiptsOfProviderIdStmt = db.prepare(
      `SELECT ${RECEIPT_COLUMNS} FROM delivery_receipts WHERE output = ? AND provider_id = ? AND provider_id <> '' ORDER BY seq`,
    );
    this.addHoldingStmt = db.prepare(
      `INSERT INTO contact_holdings (output, patient_id, contact_key, first_sent_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (output, patient_id, contact_key) DO NOTHING`,
    );
    this.holdingsOfPatientStmt = db.prepare(`SELECT ${HOLDING_COLUMNS} FROM contact_holdings WHERE patient_id = ? ORDER BY seq`);
    this.holdingsOfContactStmt = db.prepare(`SELECT ${HOLDING_COLUMNS} FROM contact_holdings WHERE output = ? AND contact_key = ? ORDER BY seq`);
    // A join applies unless the kept one, or the appointment's stored state, reflects a newer
    // event (the same rule as subject states: a late message never brings an old URL back).
    this.upsertVideoJoinStmt = db.prepare(
      `INSERT INTO video_joins (appointment_id, patient_id, as_of, as_of_ms, key_id, sealed, message_id)
       SELECT @appointmentId, @patientId, @asOf, @asOfMs, @keyId, @sealed, @messageId
       WHERE NOT EXISTS (SELECT 1 FROM subject_states WHERE kind = 'appointment' AND id = @appointmentId AND as_of_ms > @asOfMs)
       ON CONFLICT (appointment_id) DO UPDATE SET
         patient_id = excluded.patient_id, as_of = excluded.as_of, as_of_ms = excluded.as_of_ms,
         key_id = excluded.key_id, sealed = excluded.sealed, message_id = excluded.message_id
       WHERE excluded.as_of_ms >= video_joins.as_of_ms`,
    );
    this.clearVideoJoinStmt = db.prepare('DELETE FROM video_joins WHERE appointment_id = ? AND as_of_ms <= ?');
    this.videoJoinStmt = db.prepare('SELECT appointment_id, patient_id, as_of, key_id, sealed FROM video_joins WHERE appointment_id = ?');
    this.putVideoLinkStmt = db.prepare(
      `INSERT INTO video_links (token_hash, appointment_id, patient_id, delivery_id, start, zone, language, minted_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (token_hash) DO NOTHING`,
    );
    this.videoLinkStmt = db.prepare(`SELECT ${VIDEO_LINK_COLUMNS} FROM video_links WHERE token_hash = ?`);
    this.holdingsOfToolIdStmt = db.prepare(`SELECT ${HOLDING_COLUMNS} FROM contact_holdings WHERE output = ? AND tool_id = ? ORDER BY seq`);
    this.setHoldingToolIdStmt = db.prepare('UPDATE contact_holdings SET tool_id = ? WHERE output = ? AND patient_id = ? AND contact_key = ?');
    // Runs inside the group commit's transaction.
    this.saveRoutingTx = ((triggerIds: readonly string[], rows: Array<{ write: DeliveryWrite; asOfMs: number; dueMs: number }>, routedMs: number, explanations: ReadonlyMap<string, Buffer>) => {
      for (const { write, asOfMs, dueMs } of rows) {
        const d = write.delivery;
        const row = this.upsertDeliveryStmt.get(
          d.id,
          write.status,
          packInstant(write.asOf, asOfMs),
          asOfMs,
          packInstant(d.dueAt, dueMs),
          dueMs,
          d.ruleId,
          d.patientId,
          d.subjectKey,
          write.generation,
          write.subjectStart ?? null,
          packJson(PackedKind.Delivery, rowJsonOf(write)),
          write.updatedAt,
          write.updatedAt,
          causeColumns(write).trigger,
          causeColumns(write).cause,
          d.output,
          d.variant ?? null,
        );
        // Keys a column finds (its id, subject, patient, rule, a type on its subject) need no row.
        if (row !== undefined) {
          for (const key of new Set(d.cancelKeys)) if (packedKeyNeedsRow(packCancelKeys({ ...d, cancelKeys: [key] })[0]!)) this.insertDeliveryKeyStmt.run(key, row.seq);
        }
      }
      for (const triggerId of triggerIds) this.markRoutedStmt.run(routedMs, explanations.get(triggerId) ?? null, triggerId);
    });

    // A write's `run` only touches the database (no state outside it), so after a rollback
    // the same batch can run again.
    this.commitGroup = db.transaction((batch: PendingWrite[]) => batch.map((p) => ({ value: p.run() }))).immediate;
    // Nested inside commitIsolated's transaction, better-sqlite3 runs this as a SAVEPOINT.
    this.commitOne = db.transaction((run: () => unknown) => run());
    this.commitIsolated = db.transaction((batch: PendingWrite[]) =>
      batch.map((p) => {
        try {
          return { value: this.commitOne(p.run) };
        } catch (error) {
          // Only a fault of this record's own data is contained; a store-level fault (disk
          // full, I/O error, busy) or a transaction SQLite already rolled back fails the batch.
          if (!isRecordFault(error) || !db.inTransaction) throw error;
          return { error };
        }
      }),
    ).immediate;
  }

  commitInbound(record: InboundRecord): Promise<CommitOutcome> {
    return this.enqueueWrite(() => {
      // Checked before the transaction: a bad instant is a bug upstream, not a store fault.
      const receivedMs = instantMs(record.receivedAt, 'receivedAt');
      const occurredMs = record.triggers.map((t, i) => instantMs(t.occurredAt, `triggers[${i}].occurredAt`));
      const asOfMs = record.subjectStates.map((s, i) => instantMs(s.asOf, `subjectStates[${i}].asOf`));
      for (const task of record.tasks ?? []) SqliteReplyLedger.checkTask(task);
      const joinAsOfMs = (record.videoJoins ?? []).map((j, i) => instantMs(j.asOf, `videoJoins[${i}].asOf`));
      const prepared: Prepared = { record, receivedMs, occurredMs, asOfMs, joinAsOfMs };
      return () => this.apply(prepared);
    });
  }

  /**
   * Runs `work` inside the next group commit and resolves with its result once that commit
   * is durable (SqliteCommitter: the embedded queue's writes ride here). `work` only touches
   * this database: it runs again when the batch is retried with a savepoint per write.
   */
  write<T>(work: () => T): Promise<T> {
    return this.enqueueWrite(() => work);
  }

  /** Transactions committed so far by this store (benchmarks: commits per message). */
  get commits(): number {
    return this.#commits;
  }

  /**
   * Queues a write for the next group commit. `prepare` runs now (outside the transaction:
   * its exceptions reject at once) and returns the work to run inside the transaction.
   */
  private enqueueWrite<T>(prepare: () => () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.closed) throw new Error('the SQLite store is closed');
      const run = prepare();
      this.pending.push({ run, resolve: resolve as (value: unknown) => void, reject });
      this.scheduleFlush();
    });
  }

  async findMessage(sender: string, controlId: string): Promise<StoredMessage | undefined> {
    this.assertOpen();
    if (controlId === '') return undefined;
    const row = this.findOriginalStmt.get(sender, controlId);
    return row === undefined ? undefined : messageFromRow(row);
  }

  async getMessage(id: string): Promise<StoredMessageWithBody | undefined> {
    this.assertOpen();
    const rowid = parseMessageId(id);
    if (rowid === undefined) return undefined;
    const row = this.messageByIdStmt.get(rowid);
    if (row === undefined) return undefined;
    const message = messageFromRow(row);
    const triggers: Trigger[] = [];
    for (const triggerId of message.triggerIds) {
      const t = this.triggerByIdStmt.get(triggerId);
      if (t !== undefined) triggers.push(triggerOf(t.id, t.json));
    }
    return { ...message, raw: row.raw_packed === 1 ? unpackRaw(row.raw) : row.raw, ...(row.raw_bytes !== null ? { rawBytes: row.raw_bytes } : {}), triggers };
  }

  async listMessages(query: MessageQuery): Promise<StoredMessage[]> {
    this.assertOpen();
    const filter = new ListFilter()
      .eq('sender', query.sender)
      .eq('control_id', query.controlId)
      .eq('status', query.status)
      .eq('input', query.input)
      .eq('patient_id', query.patientId)
      .atLeast('received_ms', query.since, 'since')
      .atMost('received_ms', query.until, 'until');
    if (query.messageType !== undefined) {
      const type = query.messageType;
      // "SIU" also finds every "SIU^…": a range on the index ('_' follows '^').
      if (type.includes('^')) filter.add('message_type = ?', type);
      else filter.add('(message_type = ? OR (message_type >= ? AND message_type < ?))', type, `${type}^`, `${type}_`);
    }
    if (query.triggerType !== undefined) filter.add('id IN (SELECT message_id FROM triggers WHERE type = ?)', query.triggerType);
    if (query.text !== undefined) {
      // SQLite's upper() folds ASCII letters only, the same on both sides.
      filter.add('instr(upper(CAST(raw_unpacked(raw, raw_packed) AS TEXT)), upper(?)) > 0', query.text);
    }
    let start: Position | undefined;
    if (query.before !== undefined) {
      // The cursor is the id of the last message of the previous page; its position in
      // the (receivedAt, id) order is looked up so paging follows the same order.
      const rowid = parseMessageId(query.before);
      const position = rowid === undefined ? undefined : this.positionByIdStmt.get(rowid);
      if (position === undefined) {
        throw new RangeError(
          `before must be the id of a stored message (the last id of the previous page), got ${JSON.stringify(query.before)}`,
        );
      }
      start = [position.received_ms, position.id];
    }
    return this.readSliced<MessageRow & { received_ms: number }, StoredMessage>({
      table: 'messages',
      columns: `${SQLITE_MESSAGE_COLUMNS}, received_ms`,
      order: ['received_ms', 'id'],
      orderIndex: 'messages_received',
      filter,
      // sender + control id lead to the dedupe index, a patient to messages_patient, a message
      // type to messages_type, no filter (or only times) to the order's own index; the rest (a
      // status, an input, a trigger type, text…) is read in windows.
      selective:
        (query.sender !== undefined && query.controlId !== undefined) ||
        query.patientId !== undefined ||
        (query.sender === undefined &&
          query.controlId === undefined &&
          query.input === undefined &&
          query.triggerType === undefined &&
          query.text === undefined &&
          query.status === undefined),
      start,
      limit: listLimit(query.limit),
      position: (row) => [row.received_ms, row.id],
      item: messageFromRow,
    });
  }

  async getTrigger(id: string): Promise<Trigger | undefined> {
    this.assertOpen();
    const row = this.triggerByIdStmt.get(id);
    return row === undefined ? undefined : triggerOf(row.id, row.json);
  }

  async triggerInput(triggerId: string): Promise<string | undefined> {
    this.assertOpen();
    return this.triggerInputStmt.get(triggerId)?.input;
  }

  async listTriggers(query: TriggerQuery): Promise<Trigger[]> {
    this.assertOpen();
    const filter = new ListFilter()
      .eq('type', query.type)
      .eq('patient_id', query.patientId)
      .eq('appointment_id', query.appointmentId)
      .eq('encounter_id', query.encounterId)
      .eq('message_id', query.messageId === undefined ? undefined : messageIdFilter(query.messageId))
      .atLeast('occurred_ms', query.since, 'since')
      .atMost('occurred_ms', query.until, 'until');
    return this.readSliced<{ id: string; json: string | Buffer; occurred_ms: number; rowid: number }, Trigger>({
      table: 'triggers',
      columns: 'id, json, occurred_ms, rowid',
      order: ['occurred_ms', 'rowid'],
      orderIndex: 'triggers_occurred',
      filter,
      // Every filter leads to an index of its own (a type: triggers_type): no windows needed.
      selective: true,
      limit: listLimit(query.limit),
      position: (row) => [row.occurred_ms, row.rowid],
      item: (row) => triggerOf(row.id, row.json),
    });
  }


  async messageOfTrigger(triggerId: string): Promise<string | undefined> {
    this.assertOpen();
    const row = this.triggerRoutingStmt.get(triggerId);
    return row === undefined ? undefined : String(row.message_id);
  }

  async getTriggerRouting(triggerId: string): Promise<TriggerRouting | undefined> {
    this.assertOpen();
    const row = this.triggerRoutingStmt.get(triggerId);
    if (row === undefined) return undefined;
    // routed_ms 0 marks triggers stored before routing existed (migration 3). Skipped rules
    // come from the routing explanation; a trigger routed before explanations were kept has
    // none: `skipped` stays undefined, not an empty list.
    if (row.routed_ms === null) return { routed: false };
    if (row.routed_ms === 0) return { routed: true };
    const explanation = await this.getRoutingExplanation(triggerId);
    return {
      routed: true,
      routedAt: new Date(row.routed_ms).toISOString(),
      ...(explanation !== undefined ? { skipped: skippedRulesOf(explanation) } : {}),
    };
  }

  appendAudit(entry: Omit<AuditEntry, 'id'>): Promise<AuditEntry> {
    return this.enqueueWrite(() => {
      instantMs(entry.at, 'at');
      return () => {
        const info = this.insertAuditStmt.run(entry.at, entry.actor, entry.action, entry.target, entry.outcome, entry.result ?? null);
        return { id: String(info.lastInsertRowid), ...entry };
      };
    });
  }

  async listAudit(query: AuditQuery): Promise<AuditEntry[]> {
    this.assertOpen();
    const { sql, params } = new ListFilter().eq('target', query.target).select(AUDIT_COLUMNS, 'audit', 'seq DESC', listLimit(query.limit));
    return (this.listStatement(sql).all(...params) as AuditRow[]).map(auditFromRow);
  }

  async getSubjectState(kind: SubjectState['kind'], id: string): Promise<SubjectState | undefined> {
    this.assertOpen();
    const row = this.stateStmt.get(kind, id);
    return row === undefined ? undefined : stateFromRow(row);
  }

  async listSubjectStates(kind: SubjectState['kind'], patientId: string): Promise<SubjectState[]> {
    this.assertOpen();
    return this.statesOfPatientStmt.all(patientId, kind).map(stateFromRow);
  }

  async getCursor(key: string): Promise<string | undefined> {
    this.assertOpen();
    return this.getCursorStmt.get(key)?.value;
  }

  async setCursor(key: string, value: string): Promise<void> {
    await this.write(() => {
      this.setCursorStmt.run(key, value);
    });
  }

  async listUnroutedTriggers(limit: number): Promise<Trigger[]> {
    this.assertOpen();
    return this.unroutedStmt.all(listLimit(limit)).map((r) => triggerOf(r.id, r.json));
  }

  saveRouting(triggerIds: string | readonly string[], deliveries: readonly DeliveryWrite[], routedAt: string, options: SaveRoutingOptions = {}): Promise<void> {
    const ids = typeof triggerIds === 'string' ? [triggerIds] : triggerIds;
    const { joined } = options;
    const saved = this.enqueueWrite(() => {
      if (joined !== undefined && joined.database !== this.db) {
        throw new Error('saveRouting: the joined work belongs to another database; run it through its own backend');
      }
      // Checked before the transaction: a bad instant is a bug upstream, not a store fault.
      const rows = deliveries.map((write, i) => ({
        write,
        asOfMs: instantMs(write.asOf, `deliveries[${i}].asOf`),
        dueMs: instantMs(write.delivery.dueAt, `deliveries[${i}].delivery.dueAt`),
      }));
      const routedMs = instantMs(routedAt, 'routedAt');
      const explanations = new Map((options.explanations ?? []).map((e) => [e.triggerId, packExplanation(e)]));
      return () => {
        // First: the queue's work may give a delivery its next generation.
        joined?.run();
        this.saveRoutingTx(ids, rows, routedMs, explanations);
      };
    });
    return joined?.committed === undefined ? saved : saved.then(() => joined.committed!());
  }

  async getDelivery(id: string): Promise<StoredDelivery | undefined> {
    this.assertOpen();
    const row = this.deliveryByIdStmt.get(id);
    return row === undefined ? undefined : this.deliveryFromRow(row);
  }

  async getRoutingExplanation(triggerId: string): Promise<RoutingExplanation | undefined> {
    this.assertOpen();
    const row = this.routingStmt.get(triggerId);
    if (row === undefined || row.routing === null || row.routed_ms === null) return undefined;
    return unpackExplanation(triggerId, row.routing, row.routed_ms);
  }

  async hasUnroutedTriggers(subject: { kind: SubjectState['kind']; id: string }): Promise<boolean> {
    this.assertOpen();
    const stmt = subject.kind === 'appointment' ? this.unroutedAppointmentStmt : this.unroutedEncounterStmt;
    return stmt.get(subject.id) !== undefined;
  }

  async countDeliveries(): Promise<Record<StoredDeliveryStatus, number>> {
    this.assertOpen();
    const counts = Object.fromEntries(STORED_DELIVERY_STATUSES.map((status) => [status, 0])) as Record<StoredDeliveryStatus, number>;
    for (const { status, n } of this.deliveryCountsStmt.all()) counts[(status as string) === ROW_SENT ? StoredDeliveryStatus.Sent : status] = n;
    return counts;
  }

  async countMessages(): Promise<Record<MessageStatus, number>> {
    this.assertOpen();
    const counts = Object.fromEntries(Object.values(MessageStatus).map((status) => [status, 0])) as Record<MessageStatus, number>;
    for (const { status, n } of this.messageCountsStmt.all()) counts[status] = n;
    return counts;
  }

  async flowActivity(since: string): Promise<FlowActivity[]> {
    this.assertOpen();
    return this.activity.flowActivity(instantMs(since, 'since'));
  }

  async deliveryTallies(): Promise<DeliveryTally[]> {
    this.assertOpen();
    return this.activity.deliveryTallies();
  }

  async deliveriesByCancelKey(key: string): Promise<StoredDelivery[]> {
    this.assertOpen();
    // Most keys are found through a column (common.ts packCancelKeys), the others through
    // their rows. Keys are only ever added: a key a replan dropped may still point here, so
    // the delivery's own list decides.
    const probes = cancelKeyProbes(key);
    const rows = new Map<number, DeliveryRow>();
    const add = (list: Iterable<DeliveryRow | undefined>) => {
      for (const row of list) if (row !== undefined) rows.set(row.seq, row);
    };
    add(this.deliveriesByKeyStmt.all(key));
    add([this.deliveryByIdStmt.get(probes.id)]);
    for (const subject of probes.subjects) add(this.deliveriesBySubjectStmt.all(subject));
    if (probes.patientId !== undefined) add(this.deliveriesByPatientStmt.all(probes.patientId));
    if (probes.ruleId !== undefined) add(this.deliveriesByRuleStmt.all(probes.ruleId));
    return [...rows.values()]
      .sort((a, b) => a.seq - b.seq)
      .map((row) => this.deliveryFromRow(row))
      .filter((d) => d.delivery.cancelKeys.includes(key));
  }

  async listDeliveries(query: DeliveryQuery): Promise<StoredDelivery[]> {
    this.assertOpen();
    const filter = new ListFilter()
      .eq('status', query.status === undefined ? undefined : rowStatus(query.status))
      .eq('rule', query.ruleId)
      .eq('patient_id', query.patientId)
      .eq('subject', query.subjectKey);
    let start: Position | undefined;
    if (query.before !== undefined) {
      const position = this.deliverySeqStmt.get(query.before);
      if (position === undefined) {
        throw new RangeError(`before must be the id of a stored delivery (the last id of the previous page), got ${JSON.stringify(query.before)}`);
      }
      start = [position.seq];
    }
    return this.readSliced<DeliveryRow, StoredDelivery>({
      table: 'deliveries',
      // Only a rule with a status has no index of its own: its windows go through the rule's.
      sliceIndex: 'deliveries_rule',
      columns: DELIVERY_COLUMNS,
      order: ['seq'],
      filter,
      selective: query.patientId !== undefined || query.subjectKey !== undefined || query.status === undefined || query.ruleId === undefined,
      start,
      limit: listLimit(query.limit),
      position: (row) => [row.seq],
      item: (row) => this.deliveryFromRow(row),
    });
  }

  finishDelivery(id: string, generation: number, outcome: DeliveryOutcome): Promise<boolean> {
    return this.enqueueWrite(() => {
      const params = finishParams(id, generation, outcome);
      return () => this.finish(params, outcome);
    });
  }

  /** The finish write; a message that is the delivery's outbox entry is kept once, there. */
  private finish(params: ReturnType<typeof finishParams>, outcome: DeliveryOutcome): boolean {
    let outboxSeq: number | undefined;
    if (outcome.message !== undefined) {
      const box = this.outboxByDeliveryStmt.get(params.id);
      if (box !== undefined) {
        // The entry this process just kept for the delivery: compared without unpacking it.
        const recent = this.#recentOutbox.get(params.id);
        this.#recentOutbox.delete(params.id);
        const same =
          recent !== undefined && Buffer.isBuffer(box.text) && recent.packed.equals(box.text)
            ? sameMessage(recent.entry, outcome.message)
            : sameMessage(outboxFromRow(box), outcome.message);
        if (same) outboxSeq = box.seq;
      }
    }
    return this.finishDeliveryStmt.run({ ...params, ...(outboxSeq !== undefined ? { message: null, outboxSeq } : {}) }).changes > 0;
  }

  /**
   * finishDelivery for work already running inside one of this store's transactions (a
   * write() of the embedded queue: a job dead-lettered and its delivery marked failed commit
   * together). Throws when called outside a transaction.
   */
  finishDeliveryInWrite(id: string, generation: number, outcome: DeliveryOutcome): boolean {
    if (!this.db.inTransaction) throw new Error('finishDeliveryInWrite must run inside a write()');
    return this.finish(finishParams(id, generation, outcome), outcome);
  }

  putOutboxEntry(entry: Omit<OutboxEntry, 'id'>): Promise<OutboxEntry> {
    return this.enqueueWrite(() => {
      instantMs(entry.keptAt, 'keptAt');
      // The parts in one packed value (packed-json.ts): subject and html columns stay empty.
      const packed = packJson(PackedKind.Message, { subject: entry.subject, text: entry.text, html: entry.html });
      return () => {
        const { seq } = this.putOutboxStmt.get(entry.deliveryId, entry.output, entry.channel, entry.to ?? null, entry.language, null, packed, null, entry.keptAt)!;
        const kept: OutboxEntry = { id: String(seq), ...entry };
        if (this.#recentOutbox.size >= 10_000) this.#recentOutbox.clear();
        this.#recentOutbox.set(entry.deliveryId, { entry: kept, packed });
        return kept;
      };
    });
  }

  async listOutbox(query: OutboxQuery): Promise<OutboxEntry[]> {
    this.assertOpen();
    const filter = new ListFilter().eq('delivery_id', query.deliveryId).eq('output', query.output);
    let start: Position | undefined;
    if (query.before !== undefined) {
      const seq = /^[1-9]\d{0,14}$/.test(query.before) ? this.outboxSeqStmt.get(Number(query.before)) : undefined;
      if (seq === undefined) {
        throw new RangeError(`before must be the id of an outbox entry (the last id of the previous page), got ${JSON.stringify(query.before)}`);
      }
      start = [seq.seq];
    }
    return this.readSliced<OutboxRow<string | Buffer>, OutboxEntry>({
      table: 'outbox',
      columns: OUTBOX_COLUMNS,
      order: ['seq'],
      filter,
      // A delivery id or an output leads to its own index.
      selective: true,
      start,
      limit: listLimit(query.limit),
      position: (row) => [row.seq],
      item: outboxFromRow,
    });
  }

  /**
   * A page of a list, newest first, in slices (see "Admin reads" at the top): each slice
   * reads at most SLICE_ROWS rows after the position reached; unless `selective`, it also
   * stops at the entry SLICE_SCAN places further in the order (`seq` lists: that many seq
   * numbers; others: found in `orderIndex`, which must cover the order's columns), and the
   * next slice goes on from there. Yields to the event loop between slices.
   */
  private async readSliced<Row, Item>(spec: {
    table: string;
    columns: string;
    /** The order, newest first: ['seq'] or [time column, id column]. */
    order: readonly string[];
    orderIndex?: string;
    /** The index the slices of a windowed read go through (when the planner would pick the rowid). */
    sliceIndex?: string;
    filter: ListFilter;
    selective: boolean;
    start?: Position;
    limit: number;
    position: (row: Row) => Position;
    /** A row as what the list gives: run slice by slice, so no read holds the event loop for a whole page of them. */
    item: (row: Row) => Item;
  }): Promise<Item[]> {
    const key = spec.order.length === 1 ? spec.order[0]! : `(${spec.order.join(', ')})`;
    const marks = spec.order.map(() => '?').join(', ');
    const tuple = spec.order.length === 1 ? '?' : `(${marks})`;
    const orderBy = spec.order.map((c) => `${c} DESC`).join(', ');
    const out: Item[] = [];
    let cursor = spec.start;
    for (;;) {
      const floor = spec.selective ? undefined : this.sliceFloor(spec.table, spec.order, spec.orderIndex, key, tuple, orderBy, cursor);
      const n = Math.min(spec.limit - out.length, SLICE_ROWS);
      const filter = spec.filter.copy();
      if (cursor !== undefined) filter.add(`${key} < ${tuple}`, ...cursor);
      if (floor !== undefined) filter.add(`${key} >= ${tuple}`, ...floor);
      const from = floor !== undefined && spec.sliceIndex !== undefined ? `${spec.table} INDEXED BY ${spec.sliceIndex}` : spec.table;
      const { sql, params } = filter.select(spec.columns, from, orderBy, n);
      const rows = this.listStatement(sql).all(...params) as Row[];
      for (const row of rows) out.push(spec.item(row));
      if (out.length >= spec.limit) break;
      if (rows.length === n) cursor = spec.position(rows[n - 1]!);
      else if (floor !== undefined) cursor = floor;
      else break;
      await new Promise<void>((resolve) => setImmediate(resolve));
      this.assertOpen();
    }
    return out;
  }

  /** The position SLICE_SCAN entries after `cursor` (inclusive bound of a slice); undefined when fewer are left. */
  private sliceFloor(table: string, order: readonly string[], orderIndex: string | undefined, key: string, tuple: string, orderBy: string, cursor: Position | undefined): Position | undefined {
    if (order.length === 1) {
      // seq lists: numbers are dense (AUTOINCREMENT / rowid), so the window is arithmetic.
      const top = cursor?.[0] ?? ((this.listStatement(`SELECT MAX(${order[0]}) AS top FROM ${table}`).get() as { top: number | null }).top ?? 0) + 1;
      const floor = top - SLICE_SCAN;
      return floor > 0 ? [floor] : undefined;
    }
    const where = cursor === undefined ? '' : ` WHERE ${key} < ${tuple}`;
    const sql = `SELECT ${order.join(', ')} FROM ${table} INDEXED BY ${orderIndex} ${where} ORDER BY ${orderBy} LIMIT 1 OFFSET ${SLICE_SCAN - 1}`;
    const row = this.listStatement(sql).raw(true).get(...(cursor ?? [])) as number[] | undefined;
    return row;
  }

  addDeliveryReceipt(receipt: DeliveryReceipt): Promise<boolean> {
    return this.enqueueWrite(() => {
      instantMs(receipt.at, 'receipt.at');
      // In the group commit: durable when the promise resolves, one fsync for the cycle.
      return () =>
        this.addReceiptStmt.run(
          receipt.deliveryId,
          receipt.output,
          receipt.status,
          receipt.providerId ?? '',
          receipt.code ?? null,
          receipt.attempt ?? 0,
          receipt.at,
        ).changes > 0;
    });
  }

  async listDeliveryReceipts(query: ReceiptQuery): Promise<DeliveryReceipt[]> {
    this.assertOpen();
    if ('deliveryId' in query) {
      const rows = this.receiptsOfDeliveryStmt.all(query.deliveryId).map(receiptFromRow);
      return query.output === undefined ? rows : rows.filter((r) => r.output === query.output);
    }
    return this.receiptsOfProviderIdStmt.all(query.output, query.providerId).map(receiptFromRow);
  }

  recordContactHolding(holding: ContactHolding): Promise<boolean> {
    return this.enqueueWrite(() => {
      instantMs(holding.firstSentAt, 'holding.firstSentAt');
      if (holding.output === '' || holding.patientId === '' || holding.contactKey === '') throw new RangeError('a contact holding needs an output, a patient id and a contact key');
      if (holding.toolId === '') throw new RangeError('a contact holding\'s toolId is absent or not empty');
      // In the group commit: durable when the promise resolves, one fsync for the cycle.
      return () => {
        const added = this.addHoldingStmt.run(holding.output, holding.patientId, holding.contactKey, holding.firstSentAt).changes > 0;
        if (holding.toolId !== undefined) this.setHoldingToolIdStmt.run(holding.toolId, holding.output, holding.patientId, holding.contactKey);
        return added;
      };
    });
  }

  async listContactHoldings(query: ContactHoldingQuery): Promise<ContactHolding[]> {
    this.assertOpen();
    const rows =
      'patientId' in query
        ? this.holdingsOfPatientStmt.all(query.patientId)
        : 'toolId' in query
          ? this.holdingsOfToolIdStmt.all(query.output, query.toolId)
          : this.holdingsOfContactStmt.all(query.output, query.contactKey);
    return rows.map(holdingFromRow);
  }

  async outcomeLinksDue(limit: number): Promise<OutcomeLink[]> {
    this.assertOpen();
    return this.outcomes.due(listLimit(limit));
  }

  saveOutcomes(link: OutcomeLink, observations: readonly OutcomeObservation[]): Promise<void> {
    return this.write(() => this.outcomes.save(link, observations));
  }

  async countOutcomes(query: OutcomeQuery): Promise<OutcomeCount[]> {
    this.assertOpen();
    return this.outcomes.count(query);
  }

  async prune(kind: RetentionKind, before: string, options: PruneOptions): Promise<PruneBatch> {
    this.assertOpen();
    const beforeMs = instantMs(before, 'before');
    // A dry run only reads; a real batch is one write among the group commit's.
    if (options.dryRun) return this.retention.batch(kind, beforeMs, options);
    return this.write(() => this.retention.batch(kind, beforeMs, options));
  }

  async ping(): Promise<void> {
    this.assertOpen();
    this.pingStmt.get();
  }

  /** One process per file (the embedded store): nothing to wait for. */
  async withLock<T>(_name: string, work: () => Promise<T>): Promise<T> {
    this.assertOpen();
    return work();
  }

  /** One process per file: the lock is always free (callers in this process take turns themselves). */
  async tryLock<T>(_name: string, work: () => Promise<T>): Promise<T | undefined> {
    this.assertOpen();
    return work();
  }

  // The consent ledger (ConsentLedger; sqlite-consent.ts). Each call is its own transaction,
  // durable when it resolves (synchronous=FULL).

  async addConsentEvent(event: Omit<ConsentEvent, 'id'>, mirrorTo?: readonly string[]): Promise<ConsentEvent> {
    this.assertOpen();
    return this.ledger.addConsentEvent(event, mirrorTo);
  }

  async unqueuedConsentMirrors(limit: number): Promise<Array<{ event: ConsentEvent; output: string }>> {
    this.assertOpen();
    return this.ledger.unqueuedConsentMirrors(limit);
  }

  async consentMirrorQueued(eventId: string, output: string): Promise<void> {
    this.assertOpen();
    this.ledger.consentMirrorQueued(eventId, output);
  }

  async addFhirConsent(consent: Omit<StoredFhirConsent, 'id'>): Promise<StoredFhirConsent> {
    this.assertOpen();
    return this.ledger.addFhirConsent(consent);
  }

  async consentRecords(query: Parameters<ConsentLedger['consentRecords']>[0]): Promise<{ events: ConsentEvent[]; consents: StoredFhirConsent[] }> {
    this.assertOpen();
    return this.ledger.consentRecords(query);
  }

  async notePatientFacts(triggers: readonly Trigger[]): Promise<void> {
    this.assertOpen();
    this.ledger.notePatientFacts(triggers, Date.now());
  }

  async patientFacts(patientIds: readonly string[]): Promise<PatientFacts[]> {
    this.assertOpen();
    return this.ledger.patientFacts(patientIds);
  }

  async mergedGroup(patientId: string): Promise<string[]> {
    this.assertOpen();
    return this.ledger.mergedGroup(patientId);
  }

  async patientsAtAddress(address: string): Promise<string[]> {
    this.assertOpen();
    return this.ledger.patientsAtAddress(address);
  }

  /**
   * In the group commit, like every other write: one fsync carries the decisions of all the
   * sends under way (on its own, each was an fsync on the event loop — the ceiling of delivery,
   * and, with several processes on the file, a write lock taken once per decision). The time
   * is checked before the transaction: a bad one fails this call, not the group.
   */
  recordDecision(decision: Omit<DecisionRecord, 'id'>): Promise<void> {
    return this.enqueueWrite(() => {
      instantMs(decision.at, 'decision.at');
      return () => this.ledger.recordDecision(decision);
    });
  }

  async listDecisions(query: Parameters<ConsentLedger['listDecisions']>[0]): Promise<DecisionRecord[]> {
    this.assertOpen();
    return this.ledger.listDecisions(query);
  }

  /** In the group commit (recordDecision). */
  recordDisclosure(disclosure: Disclosure): Promise<void> {
    return this.enqueueWrite(() => {
      instantMs(disclosure.at, 'disclosure.at');
      return () => this.ledger.recordDisclosure(disclosure);
    });
  }

  async listDisclosures(query: Parameters<ConsentLedger['listDisclosures']>[0]): Promise<Disclosure[]> {
    this.assertOpen();
    return this.ledger.listDisclosures(query);
  }

  async noteInboundEvent(key: string, at: string): Promise<boolean> {
    this.assertOpen();
    return this.ledger.noteInboundEvent(key, at);
  }

  async getVideoJoin(appointmentId: string): Promise<StoredVideoJoin | undefined> {
    this.assertOpen();
    const row = this.videoJoinStmt.get(appointmentId);
    return row === undefined ? undefined : { appointmentId: row.appointment_id, patientId: row.patient_id, asOf: row.as_of, join: { keyId: row.key_id, sealed: row.sealed } };
  }

  putVideoLink(link: VideoLink): Promise<void> {
    return this.enqueueWrite(() => {
      instantMs(link.mintedAt, 'mintedAt');
      instantMs(link.start, 'start');
      if (!/^[0-9a-f]{64}$/.test(link.tokenHash)) throw new RangeError('tokenHash must be a SHA-256 in lower-case hex');
      return () => {
        this.putVideoLinkStmt.run(link.tokenHash, link.appointmentId, link.patientId, link.deliveryId, link.start, link.zone ?? null, link.language ?? null, link.mintedAt);
      };
    });
  }

  async getVideoLink(tokenHash: string): Promise<VideoLink | undefined> {
    this.assertOpen();
    const row = this.videoLinkStmt.get(tokenHash);
    if (row === undefined) return undefined;
    return {
      tokenHash: row.token_hash,
      appointmentId: row.appointment_id,
      patientId: row.patient_id,
      deliveryId: row.delivery_id,
      start: row.start,
      ...(row.zone !== null ? { zone: row.zone } : {}),
      ...(row.language !== null ? { language: row.language } : {}),
      mintedAt: row.minted_at,
    };
  }

  async erasePatient(patientId: string, at: string, outcomes?: Readonly<Record<string, string>>): Promise<ErasureRecord> {
    this.assertOpen();
    return this.eraseTx(patientId, at, outcomes);
  }

  // --- replies and staff tasks (sqlite-replies.ts) ------------------------------------------

  addReplyPrompt(prompt: ReplyPrompt): Promise<boolean> {
    return this.enqueueWrite(() => {
      const checked = SqliteReplyLedger.check(prompt);
      return () => this.replies.addPrompt(prompt, checked);
    });
  }

  async openReplyPrompts(query: { output: string; address: string; at: string }): Promise<ReplyPrompt[]> {
    this.assertOpen();
    return this.replies.openPrompts(query);
  }

  addStaffTask(task: NewStaffTask): Promise<StaffTask> {
    return this.enqueueWrite(() => {
      SqliteReplyLedger.checkTask(task);
      return () => this.replies.addTask(task);
    });
  }

  async listStaffTasks(query: { status?: StaffTaskStatus; limit?: number; before?: string }): Promise<StaffTask[]> {
    this.assertOpen();
    return this.replies.listTasks(query);
  }

  finishStaffTask(id: string, done: { at: string; by: string }): Promise<StaffTask | undefined> {
    return this.enqueueWrite(() => {
      instantMs(done.at, 'done.at');
      return () => this.replies.finishTask(id, done);
    });
  }

  // --- the waitlist (sqlite-waitlist.ts) -----------------------------------------------------

  openWaitlistSlot(slot: WaitlistSlot): Promise<boolean> {
    return this.enqueueWrite(() => () => this.waitlist.openSlot(slot));
  }

  async getWaitlistSlot(id: string): Promise<WaitlistSlot | undefined> {
    this.assertOpen();
    return this.waitlist.slot(id);
  }

  setWaitlistSlot(id: string, state: WaitlistSlotState, patch?: Partial<WaitlistSlot>): Promise<void> {
    return this.enqueueWrite(() => () => this.waitlist.setSlotState(id, state, patch));
  }

  releaseWaitlistClaim(slotId: string, offerId: string): Promise<boolean> {
    return this.enqueueWrite(() => () => this.waitlist.releaseClaim(slotId, offerId));
  }

  addWaitlistOffers(offers: readonly WaitlistOffer[]): Promise<void> {
    return this.enqueueWrite(() => () => this.waitlist.addOffers(offers));
  }

  async getWaitlistOffer(id: string): Promise<WaitlistOffer | undefined> {
    this.assertOpen();
    return this.waitlist.offer(id);
  }

  setWaitlistOffer(id: string, state: WaitlistOfferState, patch?: Partial<WaitlistOffer>): Promise<void> {
    return this.enqueueWrite(() => () => this.waitlist.setOfferState(id, state, patch));
  }

  async listWaitlistOffers(slotId: string): Promise<WaitlistOffer[]> {
    this.assertOpen();
    return this.waitlist.offersOfSlot(slotId);
  }

  async countWaitlistOffers(patientId: string, since: string): Promise<number> {
    this.assertOpen();
    return this.waitlist.offersToPatientSince(patientId, since);
  }

  noteWaitlistAppointment(appointment: WaitlistAppointment | { id: string; removed: true }): Promise<void> {
    return this.enqueueWrite(() => () => ('removed' in appointment ? this.waitlist.forgetAppointment(appointment.id) : this.waitlist.noteAppointment(appointment)));
  }

  async laterWaitlistAppointments(query: { services: readonly string[]; practitioners: readonly string[]; after: string; limit: number }): Promise<WaitlistAppointment[]> {
    this.assertOpen();
    return this.waitlist.laterAppointments(query);
  }

  noteWaitlistEntry(entry: WaitlistEntry | { id: string; removed: true }): Promise<void> {
    return this.enqueueWrite(() => () => this.waitlist.noteEntry(entry));
  }

  waitlistEntries(query: { services: readonly string[]; practitioners: readonly string[]; now: string; limit: number }): Promise<WaitlistEntry[]> {
    return this.enqueueWrite(() => () => this.waitlist.entries(query));
  }

  async listWaitlistSlots(query: { states: readonly WaitlistSlotState[]; limit?: number }): Promise<WaitlistSlot[]> {
    this.assertOpen();
    return this.waitlist.slotsIn(query.states, Math.min(Math.max(query.limit ?? 1000, 1), 10_000));
  }

  async waitlistFigures(from: string, to: string): Promise<WaitlistFigures> {
    this.assertOpen();
    return this.waitlist.figures(from, to);
  }

  async listErasures(patientId: string): Promise<ErasureRecord[]> {
    this.assertOpen();
    return this.ledger.listErasures(patientId);
  }

  /** Commits what is already queued, then stops; later calls reject. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    while (this.pending.length > 0) this.flush();
    this.closed = true;
    if (this.closeDatabase) this.db.close();
  }

  private assertOpen(): void {
    if (this.closed) throw new Error('the SQLite store is closed');
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // Two event-loop turns, not one: frames that arrive on other connections in the next
    // poll phase, and the routing write of the trigger just committed, join this commit
    // instead of paying an fsync of their own. When nothing else is waiting the extra turn
    // costs microseconds; measured (bench/ingest.ts), 8 connections: +16 %, 1 connection
    // (its routing writes now ride along): +34 %.
    setImmediate(() =>
      setImmediate(() => {
        this.flushScheduled = false;
        this.flush();
      }),
    );
  }

  private flush(): void {
    const batch = this.pending.splice(0, MAX_BATCH);
    if (this.pending.length > 0) this.scheduleFlush();
    if (batch.length === 0) return;
    let results: Array<{ value: unknown } | { error: unknown }>;
    try {
      if (!this.db.open) throw new Error('the SQLite database is closed');
      try {
        results = this.commitGroup(batch);
      } catch (error) {
        // better-sqlite3 rolled the transaction back; a store-level fault fails the batch.
        if (!isRecordFault(error) || !this.db.open) throw error;
        results = this.commitIsolated(batch);
      }
      this.#commits++;
    } catch (error) {
      for (const p of batch) p.reject(error);
      return;
    }
    batch.forEach((p, i) => {
      const result = results[i]!;
      if ('error' in result) p.reject(result.error);
      else p.resolve(result.value);
    });
  }

  /** One record of a group commit (inside its own savepoint only when the group is retried). */
  private apply(p: Prepared): CommitOutcome {
    const r = p.record;
    let keyed = true;
    let message: StoredMessage | undefined;
    if (r.attemptOf !== undefined) {
      keyed = this.startAttempt(r);
    } else if (r.controlId !== '') {
      const originalRow = this.findOriginalStmt.get(r.sender, r.controlId);
      if (originalRow !== undefined) {
        const original = messageFromRow(originalRow);
        if (isPending(original)) {
          if (isPending(r)) return { outcome: 'duplicate', message: original };
          message = this.completeMessage(p, original);
        } else {
          if (original.contentHash === r.contentHash) return { outcome: 'duplicate', message: original };
          // Rows written before packHash hold the hash as text.
          const earlier = this.findQuarantinedStmt.get({ sender: r.sender, controlId: r.controlId, packed: packHash(r.contentHash), text: r.contentHash });
          // A released copy sent again: answered as a resend of what its release stored.
          if (earlier !== undefined && earlier.replaced_by !== null) return { outcome: 'duplicate', message: messageFromRow(this.latestAttempt(earlier)) };
          if (earlier !== undefined) return { outcome: 'conflict', message: messageFromRow(earlier), original };
          const quarantined = this.insertMessage(p, MessageStatus.Quarantined, StoreReason.ConflictingResend, [], r.conflictAck?.());
          return { outcome: 'conflict', message: quarantined.message, original, ...rawCut(quarantined.rawBytes) };
        }
      }
    }
    // An SMS answer takes its prompt in this transaction, or nothing is stored.
    if (r.answers !== undefined && !this.replies.answerPrompt(r.answers.promptId, r.answers.answer)) throw new PromptClosedError(r.answers.promptId);
    // A yes to a waitlist offer claims the slot in this transaction, or nothing is stored (sqlite-waitlist.ts).
    if (r.waitlistClaim !== undefined) this.waitlist.claim(r.waitlistClaim.slotId, r.waitlistClaim.offerId, r.receivedAt);
    for (const offerId of r.waitlistTold ?? []) this.waitlist.tell(offerId);
    let rawBytes: number | undefined;
    if (message === undefined) ({ message, rawBytes } = this.insertMessage(p, r.status, r.reason, triggerIdsOf(r), p.record, keyed));
    const messageId = Number(message.id);
    for (const task of r.tasks ?? []) this.replies.addTask({ ...task, messageId: message.id });
    if (r.attemptOf !== undefined) {
      const { kind, messageId: replaced, actor } = r.attemptOf;
      this.setReplacedByStmt.run(messageId, Number(replaced));
      this.insertAuditStmt.run(r.receivedAt, actor, ATTEMPT_AUDIT_ACTION[kind], `message/${replaced}`, 'stored', `message/${message.id}`);
    }
    r.triggers.forEach((t, i) => {
      this.insertTriggerStmt.run(
        t.id,
        messageId,
        t.type,
        t.patient?.id ?? '',
        t.appointment?.id ?? null,
        t.encounter?.id ?? null,
        // Nothing reads this column (the JSON holds occurredAt as given, occurred_ms orders): packed as deliveries' times are.
        packInstant(t.occurredAt, p.occurredMs[i]!),
        p.occurredMs[i],
        packTrigger(t),
      );
    });
    // What the triggers say about their patients (deceased, contact points, merges) commits
    // with them: a death acknowledged AA is known to the send-time checks.
    this.ledger.noteFacts(r.triggers, p.receivedMs);
    this.outcomes.noteTriggers(r.triggers);
    r.subjectStates.forEach((s, i) => {
      this.upsertStateStmt.run(
        s.kind,
        s.id,
        s.patientId,
        s.status ?? null,
        s.start ?? null,
        s.end ?? null,
        s.asOf,
        p.asOfMs[i],
        s.data === undefined ? null : packJson(PackedKind.State, s.data),
        messageId,
      );
    });
    (r.videoJoins ?? []).forEach((j, i) => {
      const asOfMs = p.joinAsOfMs[i]!;
      if (j.join === undefined) this.clearVideoJoinStmt.run(j.appointmentId, asOfMs);
      else this.upsertVideoJoinStmt.run({ appointmentId: j.appointmentId, patientId: j.patientId, asOf: j.asOf, asOfMs, keyId: j.join.keyId, sealed: j.join.sealed, messageId });
    });
    for (const [key, value] of Object.entries(r.cursors ?? {})) this.setCursorStmt.run(key, value);
    return { outcome: 'stored', message, ...rawCut(rawBytes) };
  }

  /** A pending message's row takes the record's content (its id and receivedAt stay). */
  private completeMessage(p: Prepared, pending: StoredMessage): StoredMessage {
    const r = p.record;
    const triggerIds = triggerIdsOf(r);
    const patientId = patientIdOf(r);
    this.completeMessageStmt.run({
      id: Number(pending.id),
      patientId: patientId ?? null,
      messageType: r.messageType,
      contentHash: packHash(r.contentHash),
      status: r.status,
      ack: packText(PackedKind.Ack, r.ack),
      ackCode: r.ackCode,
      reason: r.reason ?? null,
      triggerIds: packIds(triggerIds),
      raw: packRaw(r.raw),
    });
    const message = storedMessageOf(r, pending.id, { status: r.status, reason: r.reason, ack: r.ack, ackCode: r.ackCode, triggerIds, patientId });
    message.receivedAt = pending.receivedAt;
    return message;
  }

  /**
   * Checks the message an attempt replaces (InboundRecord.attemptOf) and takes it out of the
   * dedupe key when the attempt is a reprocess. Returns whether the attempt's own row holds
   * the key: a reprocess does when the replaced row did and its (sender, control id) is not
   * held by another row; a released copy never does (its original keeps the key).
   */
  private startAttempt(r: InboundRecord): boolean {
    const { kind, messageId } = r.attemptOf!;
    const id = parseMessageId(messageId);
    const row = id === undefined ? undefined : this.messageRowStmt.get(id);
    if (row === undefined) throw new StaleAttemptError('unknown_message', `no stored message ${messageId}`);
    if (row.status !== ATTEMPT_FROM_STATUS[kind]) {
      throw new StaleAttemptError('wrong_status', `message ${messageId} is ${row.status}; a ${kind} needs a ${ATTEMPT_FROM_STATUS[kind]} message`);
    }
    if (row.replaced_by !== null) {
      throw new StaleAttemptError('already_replaced', `message ${messageId} was already tried again as message ${row.replaced_by}`);
    }
    if (kind === AttemptKind.Release || row.keyed !== 1) return false;
    this.unkeyStmt.run(row.id);
    return r.controlId !== '' && this.findOriginalStmt.get(r.sender, r.controlId) === undefined;
  }

  /** The last of the attempts made at a message (following replaced_by). */
  private latestAttempt(row: MessageRow): MessageRow {
    let current = row;
    // Bounded: each attempt is a new row that replaces one without an attempt.
    for (let hops = 0; current.replaced_by !== null && hops < 1000; hops++) {
      const next = this.messageRowStmt.get(current.replaced_by);
      if (next === undefined) break;
      current = next;
    }
    return current;
  }

  private insertMessage(
    p: Prepared,
    status: MessageStatus,
    reason: string | undefined,
    triggerIds: string[],
    answered: { ack: string; ackCode: string } = p.record,
    keyed = true,
  ): { message: StoredMessage; rawBytes: number | undefined } {
    const r = p.record;
    const { ack, ackCode } = answered;
    const kept = this.rawKept(r, status);
    const patientId = patientIdOf(r);
    const info = this.insertMessageStmt.run({
      input: r.input,
      format: r.format,
      sender: r.sender,
      controlId: r.controlId,
      messageType: r.messageType,
      contentHash: packHash(r.contentHash),
      status,
      // Kept packed (about 110 bytes of HL7 → 35): messageFromRow reads either form.
      ack: packText(PackedKind.Ack, ack),
      ackCode,
      reason: reason ?? null,
      receivedAt: storedReceivedAt(r.receivedAt, p.receivedMs),
      receivedMs: p.receivedMs,
      triggerIds: packIds(triggerIds),
      raw: packRaw(kept.raw),
      patientId: patientId ?? null,
      origin: r.attemptOf?.kind ?? 'received',
      replaces: r.attemptOf === undefined ? null : Number(r.attemptOf.messageId),
      keyed: keyed ? 1 : 0,
      rawBytes: kept.rawBytes ?? null,
      rawQuota: kept.account ?? null,
    });
    return { message: storedMessageOf(r, String(info.lastInsertRowid), { status, reason, ack, ackCode, triggerIds, patientId }), rawBytes: kept.rawBytes };
  }

  /**
   * The raw bytes a row keeps under its record's quota (InboundRecord.rawQuota), counted in
   * this transaction: the counters are read and written under the write lock every process
   * sharing the file takes (BEGIN IMMEDIATE), and roll back with the row, so the quota holds
   * across restarts and processes, and nothing is counted for a row not stored.
   */
  private rawKept(r: InboundRecord, status: MessageStatus): { raw: Buffer; rawBytes: number | undefined; account?: string } {
    const plan = rawQuotaPlan(r.rawQuota, status);
    if (plan === undefined) return { raw: r.raw, rawBytes: r.rawBytes };
    const used = plan.counters.map((key) => counterValue(this.getCursorStmt.get(key)?.value)) as [number, number];
    const decision = plan.decide(used, r.raw.length);
    if (!decision.whole) return { raw: r.raw.subarray(0, decision.keep), rawBytes: r.rawBytes ?? r.raw.length };
    plan.counters.forEach((key, i) => this.setCursorStmt.run(key, decision.counters[i]!));
    // The row names its account, so retention and erasure give the bytes back (sqlite-raw-quota.ts).
    return { raw: r.raw, rawBytes: r.rawBytes, account: r.rawQuota!.account };
  }

  private deliveryFromRow(row: DeliveryRow): StoredDelivery {
    return deliveryFromRow(row, (seq) => this.outboxBySeqStmt.get(seq));
  }

  private listStatement(sql: string): BetterSqlite3.Statement {
    // At most one statement per combination of filters (a few dozen): prepared once.
    let stmt = this.listStatements.get(sql);
    if (stmt === undefined) {
      stmt = this.db.prepare(sql);
      this.listStatements.set(sql, stmt);
    }
    return stmt;
  }
}

/** finishDelivery's statement parameters; throws on a bad instant (a bug upstream). */
function finishParams(id: string, generation: number, outcome: DeliveryOutcome) {
  instantMs(outcome.at, 'outcome.at');
  return {
    id,
    generation,
    status: rowStatus(outcome.status),
    reason: outcome.reason ?? null,
    message: outcome.message === undefined ? null : JSON.stringify(outcome.message),
    outboxSeq: null as number | null,
    providerId: outcome.providerId ?? null,
    packedProviderId: outcome.providerId === undefined ? null : packProviderId(outcome.providerId, id),
    at: outcome.at,
  };
}

/**
 * A provider id that ends with its delivery's id is kept as the part before it and a NUL,
 * which no provider id holds; an outbox's `<output>/<delivery id>` (the delivery's own output)
 * as the NUL alone (the finish statement compares it with the row's output). The finish then
 * hardly widens the row: a row that grows in a full page splits the page, which stays part
 * empty (the deliveries beside it wait for their due times).
 */
function packProviderId(providerId: string, deliveryId: string): string {
  return providerId.length > deliveryId.length && providerId.endsWith(deliveryId) ? `${providerId.slice(0, -deliveryId.length)}\u0000` : providerId;
}

function unpackProviderId(stored: string, deliveryId: string, output: string): string {
  if (stored === '\u0000') return `${output}/${deliveryId}`;
  return stored.endsWith('\u0000') ? `${stored.slice(0, -1)}${deliveryId}` : stored;
}

/** A routing explanation as stored in triggers.routing (common.ts compactExplanation, packed). */
function packExplanation(e: RoutingExplanation): Buffer {
  return packJson(PackedKind.Explanation, compactExplanation(e));
}

export function unpackExplanation(triggerId: string, packed: string | Buffer, routedMs: number): RoutingExplanation {
  return expandExplanation(triggerId, unpackJson(packed), routedMs);
}


/**
 * Whether an error comes from one record's own content (a constraint it breaks, a value
 * that does not serialize) rather than from the store (disk full, I/O, busy, closed).
 */
function isRecordFault(error: unknown): boolean {
  if (error instanceof BetterSqlite3.SqliteError) return error.code.startsWith('SQLITE_CONSTRAINT') || error.code === 'SQLITE_MISMATCH';
  return !(error instanceof Error && /database connection is not open/.test(error.message));
}

// The deliveries table (schema step 3) names a sent delivery 'finished', its CHECK
// constraint says so; outside the store the word is 'sent'. Translated here only.
const ROW_SENT = 'finished';

function rowStatus(status: StoredDeliveryStatus): string {
  return status === StoredDeliveryStatus.Sent ? ROW_SENT : status;
}

export function deliveryFromRow(stored: DeliveryRow, outbox: (seq: number) => OutboxRow<string | Buffer> | undefined): StoredDelivery {
  const row = { ...stored, as_of: unpackInstant(stored.as_of, stored.as_of_ms), due_at: unpackInstant(stored.due_at, stored.due_ms) };
  const delivery = withRowTimes(expandDeliveryJson(unpackJson(row.json), row), row);
  let message = row.message !== null ? (JSON.parse(row.message) as SentMessage) : undefined;
  if (message === undefined && row.outbox_seq !== null) {
    const entry = outbox(row.outbox_seq);
    if (entry !== undefined) message = messageOfEntry(outboxFromRow(entry));
  }
  return storedDeliveryOf(row, {
    delivery,
    status: (row.status as string) === ROW_SENT ? StoredDeliveryStatus.Sent : row.status,
    message,
    providerId: row.provider_id === null ? undefined : unpackProviderId(row.provider_id, row.id, delivery.output),
  });
}

/** An outbox row: a packed one keeps subject, text and html together in `text`; a plain one in three columns. */
export function outboxFromRow(row: OutboxRow<string | Buffer>): OutboxEntry {
  return typeof row.text === 'string' ? outboxEntryOf(row as OutboxRow) : outboxEntryOf(row, JSON.parse(unpackJson(row.text)) as { subject?: string; text: string; html?: string });
}
