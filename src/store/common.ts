// Rules every Store backend applies the same way (limits, instants, reason codes), so the
// SQLite and PostgreSQL backends cannot drift apart on them.
import { DateTime } from 'luxon';
import { deliveryId } from '../pipeline/route.ts';
import { MessageStatus, type Delivery } from '../types.ts';
import { AuditAction, RAW_QUOTA_CURSOR, type RawQuota, type AttemptKind, type DeliveryCause, type DeliveryWrite, type InboundRecord, type OutboxEntry, type RoutingExplanation, type RuleOutcome, type SentMessage, type SkippedRule, type StoredMessage } from './store.ts';

/**
 * The table of applied schema versions, per component (the store, the embedded queue): the same
 * in SQLite and PostgreSQL (sqlite-db.ts migrate, postgres-db.ts migratePostgres).
 */
export const SCHEMA_MIGRATIONS_TABLE = `CREATE TABLE IF NOT EXISTS schema_migrations (
  component TEXT NOT NULL,
  version INTEGER NOT NULL,
  applied_at TEXT NOT NULL,
  PRIMARY KEY (component, version)
)`;

/** Reason codes a store writes itself (safe to log). */
export const StoreReason = {
  /** Same sender + control id as a stored message, different bytes (docs/reliability.md #3). */
  ConflictingResend: 'conflicting_resend',
} as const;
export type StoreReason = (typeof StoreReason)[keyof typeof StoreReason];

/**
 * A reprocess or release whose message is not (or no longer) as the attempt expects: unknown,
 * in another status, or already tried again. `reason` is a code safe to log and to answer.
 */
export class StaleAttemptError extends Error {
  constructor(
    readonly reason: 'unknown_message' | 'wrong_status' | 'already_replaced',
    message: string,
  ) {
    super(message);
    this.name = 'StaleAttemptError';
  }
}

/**
 * The raw-bytes quota of a row (InboundRecord.rawQuota), for a backend to apply inside the
 * transaction that writes it: `counters` are the durable cursors to read (their absence is
 * 0) and, when the row keeps its bytes whole, to write back with the values `decide` gives.
 * Undefined when the quota does not apply (no quota, or a row stored with another status).
 */
export function rawQuotaPlan(quota: RawQuota | undefined, status: MessageStatus): { counters: [total: string, account: string]; decide: (used: readonly [number, number], size: number) => RawQuotaDecision } | undefined {
  if (quota === undefined || (status !== MessageStatus.Rejected && status !== MessageStatus.Quarantined)) return undefined;
  return {
    counters: [RAW_QUOTA_CURSOR, `${RAW_QUOTA_CURSOR}:${quota.account}`],
    decide: ([total, mine], size) => {
      // A row no longer than keepBytes is kept whole (cutting it would keep the same), and
      // counted: a flood of small refusals fills the quota for the large ones that follow.
      const over = total + size > quota.totalBytes || mine + size > quota.perSenderBytes;
      if (over && size > quota.keepBytes) return { whole: false, keep: quota.keepBytes };
      return { whole: true, counters: [String(total + size), String(mine + size)] };
    },
  };
}

export type RawQuotaDecision = { whole: true; counters: [total: string, account: string] } | { whole: false; keep: number };

/** A durable counter's value as read back (absent, or written by something else: 0). */
export function counterValue(value: string | undefined): number {
  const n = Number(value ?? '0');
  return Number.isSafeInteger(n) && n >= 0 ? n : 0;
}

/** The patient id a record is searched by (InboundRecord.patientId, else its first trigger's). */
export function patientIdOf(record: InboundRecord): string | undefined {
  const id = record.patientId ?? record.triggers.find((t) => t.patient?.id)?.patient?.id;
  return id === '' ? undefined : id;
}

/** listMessages / listTriggers page size when the query gives none. */
export const DEFAULT_LIST_LIMIT = 100;
/** Largest page a list call returns; larger limits are capped, not refused. */
export const MAX_LIST_LIMIT = 1000;

/** The page size to use for a query's `limit` (default 100, capped at 1000). */
export function listLimit(limit: number | undefined): number {
  if (limit === undefined) return DEFAULT_LIST_LIMIT;
  if (!Number.isInteger(limit) || limit < 1) {
    throw new RangeError(`limit must be a whole number from 1 to ${MAX_LIST_LIMIT}, got ${String(limit)}`);
  }
  return Math.min(limit, MAX_LIST_LIMIT);
}

// ISO 8601 date-time with an explicit zone: the shape inputs produce (docs/trigger.md "Times").
// Date.parse reads it correctly and ~30× faster than luxon; anything else goes to luxon.
const ZONED_INSTANT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})$/;

/**
 * Epoch milliseconds of an ISO 8601 instant, for ordering and range filters: stored
 * strings keep their original offset, and '2024-01-01T10:00:00+02:00' sorts before
 * '2024-01-01T09:30:00Z' only when compared as instants. A value without a zone (or a
 * bare date) is read as UTC, never in the host's zone. Throws a RangeError naming `what`.
 */
export function instantMs(value: string, what: string): number {
  if (typeof value === 'string' && ZONED_INSTANT.test(value)) {
    const ms = Date.parse(value);
    // Date.parse rolls 2024-02-30 over to March; luxon (below) refuses it.
    if (!Number.isNaN(ms) && sameCalendarDay(value, ms)) return ms;
  }
  const parsed = typeof value === 'string' ? DateTime.fromISO(value, { zone: 'utc' }) : undefined;
  if (parsed === undefined || !parsed.isValid) {
    throw new RangeError(`${what} must be an ISO 8601 instant such as 2024-01-01T09:30:00Z, got ${JSON.stringify(value)}`);
  }
  return parsed.toMillis();
}

/** Whether `ms`, seen in `value`'s own offset, falls on the date `value` names. */
function sameCalendarDay(value: string, ms: number): boolean {
  const offset = value.endsWith('Z') ? 0 : offsetMinutes(value.slice(-6));
  return new Date(ms + offset * 60_000).toISOString().slice(0, 10) === value.slice(0, 10);
}

function offsetMinutes(zone: string): number {
  const sign = zone.startsWith('-') ? -1 : 1;
  return sign * (Number(zone.slice(1, 3)) * 60 + Number(zone.slice(4, 6)));
}

/**
 * The StoredMessage a backend returns for `record` once written as row `id`: with the
 * status, reason and ACK the store decided (a conflicting copy is quarantined and keeps its
 * conflictAck), and the trigger ids it stored.
 */
export function storedMessageOf(
  record: InboundRecord,
  id: string,
  written: { status: MessageStatus; reason: string | undefined; ack: string; ackCode: string; triggerIds: string[]; patientId?: string | undefined },
): StoredMessage {
  const message: StoredMessage = {
    id,
    input: record.input,
    format: record.format,
    sender: record.sender,
    controlId: record.controlId,
    messageType: record.messageType,
    contentHash: record.contentHash,
    status: written.status,
    ack: written.ack,
    ackCode: written.ackCode,
    receivedAt: record.receivedAt,
    triggerIds: written.triggerIds,
  };
  if (written.reason !== undefined) message.reason = written.reason;
  if (written.patientId !== undefined) message.patientId = written.patientId;
  if (record.attemptOf !== undefined) {
    message.origin = record.attemptOf.kind;
    message.replaces = record.attemptOf.messageId;
  }
  return message;
}

// ---------------------------------------------------------------------------------------
// Compact delivery rows (docs/architecture.md invariant 2: a booking plans several
// deliveries, each with about seven cancel keys; storing each key as a row, and the fields a
// row already has as columns a second time in its JSON, made most of a message's bytes).

/** The patient cancel key route.ts gives every delivery. */
export function patientCancelKey(patientId: string): string {
  return `patient/${encodeURIComponent(patientId)}`;
}

/**
 * A delivery's cancel keys in a short form, relative to its own fields: `#` its id, `s` its
 * subject key, `p` its patient key, `r` its rule key, `<type>@` a trigger type on its
 * subject (`appointment.cancelled@appointment/A1`), `=<key>` any other key as is.
 */
export function packCancelKeys(d: Pick<Delivery, 'id' | 'subjectKey' | 'patientId' | 'ruleId' | 'cancelKeys'>): string[] {
  return d.cancelKeys.map((key) => {
    if (key === d.id) return '#';
    if (key === d.subjectKey) return 's';
    if (key === patientCancelKey(d.patientId)) return 'p';
    if (key === `rule/${d.ruleId}`) return 'r';
    const type = typeKeyPrefix(key, d.subjectKey);
    return type !== undefined ? `${type}@` : `=${key}`;
  });
}

/** The inverse of packCancelKeys. */
export function unpackCancelKeys(packed: readonly string[], d: Pick<Delivery, 'id' | 'subjectKey' | 'patientId' | 'ruleId'>): string[] {
  return packed.map((p) => {
    if (p === '#') return d.id;
    if (p === 's') return d.subjectKey;
    if (p === 'p') return patientCancelKey(d.patientId);
    if (p === 'r') return `rule/${d.ruleId}`;
    if (p.startsWith('=')) return p.slice(1);
    return `${p}${d.subjectKey}`;
  });
}

/** Whether a packed key needs a row of its own to be found (the others are found through a column). */
export function packedKeyNeedsRow(packed: string): boolean {
  return packed.startsWith('=');
}

/** `<type>` of a `<type>@<subjectKey>` key (subject keys hold no '@': route.ts encodes ids). */
function typeKeyPrefix(key: string, subjectKey: string): string | undefined {
  if (!key.endsWith(`@${subjectKey}`)) return undefined;
  const type = key.slice(0, key.length - subjectKey.length - 1);
  return type !== '' && !type.includes('@') && !type.startsWith('=') && !['#', 's', 'p', 'r'].includes(type) ? type : undefined;
}

/**
 * Where to look for the deliveries that may hold `key` besides the rows of explicit keys:
 * the delivery id itself, a subject, a patient, a rule (see packCancelKeys).
 */
export function cancelKeyProbes(key: string): { id: string; subjects: string[]; patientId?: string; ruleId?: string } {
  const subjects = [key];
  const at = key.indexOf('@');
  if (at > 0 && !key.includes('#', at)) subjects.push(key.slice(at + 1));
  let patientId: string | undefined;
  if (key.startsWith('patient/')) {
    try {
      patientId = decodeURIComponent(key.slice('patient/'.length));
    } catch {
      patientId = undefined;
    }
  }
  return { id: key, subjects, ...(patientId !== undefined ? { patientId } : {}), ...(key.startsWith('rule/') ? { ruleId: key.slice('rule/'.length) } : {}) };
}

/** Fields a delivery row keeps as columns: left out of its JSON. */
type ColumnFields = 'id' | 'ruleId' | 'subjectKey' | 'patientId' | 'cancelKeys';

/** Fields its id and subject key spell out (types.ts Delivery.id, route.ts subjectOf): left out of its JSON when they do. */
type SpelledFields = 'subjectKind' | 'subjectId' | 'step';

/** The subject kind, id and step a delivery's id and subject key spell: `<rule>@<kind>/<encoded id>#<step>`. */
function spelledBy(id: string, subjectKey: string): Pick<Delivery, SpelledFields> | undefined {
  const slash = subjectKey.indexOf('/');
  const hash = id.lastIndexOf('#');
  if (slash <= 0 || hash < 0 || !/^\d+$/.test(id.slice(hash + 1))) return undefined;
  try {
    return { subjectKind: subjectKey.slice(0, slash) as Delivery['subjectKind'], subjectId: decodeURIComponent(subjectKey.slice(slash + 1)), step: Number(id.slice(hash + 1)) };
  } catch {
    return undefined;
  }
}

/** A delivery without what its row's columns hold, with its cancel keys packed (`k`). */
export function compactDelivery(d: Delivery): Record<string, unknown> {
  const { id: _id, ruleId: _rule, subjectKey: _subject, patientId: _patient, cancelKeys: _keys, ...rest } = d;
  return { ...rest, k: packCancelKeys(d) };
}

/**
 * compactDelivery without the subject kind, subject id and step too when the delivery's id
 * and subject key spell them (nearly always): the embedded store's rows. expandDeliveryJson
 * reads both forms.
 */
export function compactDeliveryUnspelled(d: Delivery): Record<string, unknown> {
  const compact = compactDelivery(d);
  const spelled = spelledBy(d.id, d.subjectKey);
  const derivable =
    spelled !== undefined && d.id === deliveryId(d.ruleId, d.subjectKey, d.step) && spelled.subjectKind === d.subjectKind && spelled.subjectId === d.subjectId && spelled.step === d.step;
  if (!derivable) return compact;
  const { subjectKind: _kind, subjectId: _subjectId, step: _step, ...rest } = compact;
  return rest;
}

/** The delivery a compact JSON (or a full one, written before it existed) stands for. */
export function expandDeliveryJson(json: string, columns: { id: string; rule: string; subject: string; patient_id: string }): Delivery {
  const parsed = JSON.parse(json) as Omit<Delivery, ColumnFields> & { k?: string[] } & Partial<Pick<Delivery, ColumnFields>>;
  if (parsed.k === undefined) return parsed as Delivery;
  const { k, ...rest } = parsed;
  const head = { id: columns.id, ruleId: columns.rule, subjectKey: columns.subject, patientId: columns.patient_id };
  const spelled = (rest as Partial<Delivery>).subjectKind === undefined ? spelledBy(columns.id, columns.subject) : undefined;
  return { ...head, ...spelled, ...rest, cancelKeys: unpackCancelKeys(k, head) } as Delivery;
}

// ---------------------------------------------------------------------------------------
// Shapes both backends store the same way.

/** The distinct trigger ids of a record, in order (StoredMessage.triggerIds). */
export function triggerIdsOf(record: InboundRecord): string[] {
  return [...new Set(record.triggers.map((t) => t.id))];
}

/** The audit action of each kind of attempt. */
export const ATTEMPT_AUDIT_ACTION = {
  reprocess: AuditAction.Reprocess,
  release: AuditAction.Release,
} as const satisfies Record<AttemptKind, AuditAction>;

/** A message id as the row id it stands for, or undefined when it cannot be one. */
export function parseMessageId(id: string): number | undefined {
  if (!/^[1-9]\d{0,14}$/.test(id)) return undefined;
  return Number(id);
}

/** A messageId filter value as its row id; RangeError (a 400) when it cannot be a message id. */
export function messageIdFilter(id: string): number {
  const rowid = parseMessageId(id);
  if (rowid === undefined) throw new RangeError(`messageId must be the id of a stored message (digits), got ${JSON.stringify(id)}`);
  return rowid;
}

/** The parts of a sent message an outbox entry keeps. */
const OUTBOX_PARTS = new Set(['language', 'to', 'subject', 'text', 'html']);

/** Whether a sent message is exactly what the outbox entry keeps (and holds nothing more). */
export function sameMessage(entry: OutboxEntry, message: SentMessage): boolean {
  return (
    Object.keys(message).every((key) => OUTBOX_PARTS.has(key)) &&
    entry.language === message.language &&
    entry.to === message.to &&
    entry.subject === message.subject &&
    entry.text === message.text &&
    entry.html === message.html
  );
}

/** The message an outbox entry keeps, as a finished delivery shows it. */
export function messageOfEntry(entry: OutboxEntry): SentMessage {
  return {
    language: entry.language,
    ...(entry.to !== undefined ? { to: entry.to } : {}),
    ...(entry.subject !== undefined ? { subject: entry.subject } : {}),
    text: entry.text,
    ...(entry.html !== undefined ? { html: entry.html } : {}),
  };
}

/**
 * A routing explanation in its stored form: one array per rule, [rule, outcome, delivery id
 * (without the leading rule id when it starts with it), reason, condition], trailing empty
 * places left out; routedAt is kept apart (the trigger's routed time).
 */
export function compactExplanation(e: RoutingExplanation): Array<Array<string | null>> {
  return e.rules.map((r) => {
    const id = r.deliveryId === undefined ? null : r.deliveryId.startsWith(`${r.rule}@`) ? r.deliveryId.slice(r.rule.length) : r.deliveryId;
    const entry: Array<string | null> = [r.rule, r.outcome, id, r.reason ?? null, r.condition ?? null];
    while (entry[entry.length - 1] === null) entry.pop();
    return entry;
  });
}

/** The inverse of compactExplanation, from its JSON text. */
export function expandExplanation(triggerId: string, json: string, routedMs: number): RoutingExplanation {
  const rules = (JSON.parse(json) as Array<Array<string | null>>).map(([rule, outcome, id, reason, condition]) => {
    const r: RuleOutcome = { rule: rule!, outcome: outcome as RuleOutcome['outcome'] };
    if (id != null) r.deliveryId = id.startsWith('@') ? `${rule}${id}` : id;
    if (reason != null) r.reason = reason;
    if (condition != null) r.condition = condition;
    return r;
  });
  return { triggerId, routedAt: new Date(routedMs).toISOString(), rules };
}

/** The rules of an explanation that planned nothing for the trigger (skipped, or a plan or move that changed nothing). */
export function skippedRulesOf(explanation: RoutingExplanation): SkippedRule[] {
  return explanation.rules
    .filter((r) => r.outcome === 'skipped' || (r.outcome === 'unchanged' && r.reason !== undefined))
    .map((r) => {
      const step = r.deliveryId === undefined ? undefined : /#(\d+)$/.exec(r.deliveryId)?.[1];
      return {
        ruleId: r.rule,
        reason: r.reason ?? r.outcome,
        ...(r.deliveryId !== undefined ? { deliveryId: r.deliveryId } : {}),
        ...(step !== undefined ? { step: Number(step) } : {}),
        ...(r.condition !== undefined ? { detail: r.condition } : {}),
      };
    });
}

/**
 * A delivery's cause as stored: `<change>` or `<change>:<reason>`, beside the trigger id
 * (left empty when it is the trigger that planned the delivery).
 */
export function causeColumns(write: Pick<DeliveryWrite, 'cause' | 'delivery'>): { trigger: string | null; cause: string | null } {
  const c = write.cause;
  return {
    trigger: c === undefined || c.triggerId === write.delivery.triggerId ? null : c.triggerId,
    cause: c === undefined ? null : c.reason === undefined ? c.change : `${c.change}:${c.reason}`,
  };
}

/** The inverse of causeColumns. */
export function causeOf(trigger: string | null, cause: string | null, delivery: Delivery): DeliveryCause | undefined {
  if (cause === null) return undefined;
  const [change, reason] = cause.split(':') as [DeliveryCause['change'], string | undefined];
  return { triggerId: trigger ?? delivery.triggerId, change, ...(reason !== undefined ? { reason } : {}) };
}

/**
 * The WHERE clause of a list query, built from optional filters: each `eq`/`atLeast`/
 * `atMost` with an undefined value adds nothing. `select` appends the order and the limit.
 * Conditions are written with `?` placeholders; `numbered` (PostgreSQL) turns them into
 * `$1`, `$2`… in the order the parameters come.
 */
export class ListFilter {
  private readonly where: string[] = [];
  private readonly params: unknown[] = [];

  constructor(private readonly numbered = false) {}

  eq(column: string, value: string | number | undefined): this {
    if (value !== undefined) this.add(`${column} = ?`, value);
    return this;
  }

  /** Inclusive lower bound on an epoch-ms column, from an ISO instant named `what`. */
  atLeast(column: string, instant: string | undefined, what: string): this {
    if (instant !== undefined) this.add(`${column} >= ?`, instantMs(instant, what));
    return this;
  }

  /** Inclusive upper bound on an epoch-ms column. */
  atMost(column: string, instant: string | undefined, what: string): this {
    if (instant !== undefined) this.add(`${column} <= ?`, instantMs(instant, what));
    return this;
  }

  add(condition: string, ...params: unknown[]): this {
    let n = this.params.length;
    this.where.push(this.numbered ? condition.replace(/\?/g, () => `$${++n}`) : condition);
    this.params.push(...params);
    return this;
  }

  copy(): ListFilter {
    const copy = new ListFilter(this.numbered);
    copy.where.push(...this.where);
    copy.params.push(...this.params);
    return copy;
  }

  /** `SELECT <columns> FROM <table> [WHERE …] ORDER BY <order> LIMIT ?` and its parameters. */
  select(columns: string, table: string, order: string, limit: number): { sql: string; params: unknown[] } {
    return this.selectFrom(`SELECT ${columns} FROM ${table}`, order, limit);
  }

  /** `<head> [WHERE …] ORDER BY <order> LIMIT ?` and its parameters. */
  selectFrom(head: string, order: string, limit: number): { sql: string; params: unknown[] } {
    const where = this.where.length > 0 ? ` WHERE ${this.where.join(' AND ')}` : '';
    const mark = this.numbered ? `$${this.params.length + 1}` : '?';
    return { sql: `${head}${where} ORDER BY ${order} LIMIT ${mark}`, params: [...this.params, limit] };
  }
}
