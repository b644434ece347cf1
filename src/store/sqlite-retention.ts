// Retention in the embedded SQLite store (store.ts RetentionKind says what each kind removes and
// keeps; workers/retention.ts runs the batches; docs/operations.md "Retention").
//
// Each batch examines at most `limit` records in an order an index serves, and runs inside one
// write of the store's group commit: a batch is a short transaction among ingest's, never a
// long one that would hold every ACK behind it. Walks:
//   rawMessages     messages by (received_ms, id)       — the position may be kept between runs
//   triggers        messages by (received_ms, id)       — message records with their triggers
//   deliveryBodies  deliveries_bodies (updated_at, seq) — final deliveries whose bodies remain
//   outbox          outbox_kept (kept_at, seq)
//   deliveries      deliveries by seq, up to the first one created after the cutoff
//   decisions       decisions by seq, up to the first one made after the cutoff (appended in time order)
//   audit           audit, then disclosures, then erasures, each by seq likewise
//   outcomes        outcomes_day (day, appointment, rule)
//   waitlist        waitlist_slots (opened_ms, id), then waitlist_appointments by id
// A dry run walks the same way and counts.
import { expandDeliveryJson } from './common.ts';
import { PackedKind, packJson, unpackJson } from './packed-json.ts';
import type { Database } from './sqlite-db.ts';
import { rawQuotaGiveBack } from './sqlite-raw-quota.ts';
import { awaitsSomeone, parsePosition, position, staffTaskTimes, subjectKeyOf, visitOver, waitlistPosition, WaitlistWalk, type RetainedMessage, type RetainedTrigger } from './retention-rules.ts';
import { RetentionKind, type PruneBatch, type PruneOptions } from './store.ts';

/** Columns and indexes retention walks (part of one append-only migration step of the store). */
export const RETENTION_SCHEMA = `
  -- deliveryBodies: set once a delivery's address, payload and message are removed.
  ALTER TABLE deliveries ADD COLUMN bodies_cleared INTEGER;
  -- Only final deliveries that still hold their bodies: the walk never re-reads cleared ones.
  CREATE INDEX deliveries_bodies ON deliveries (updated_at) WHERE bodies_cleared IS NULL AND status IN ('finished', 'suppressed', 'cancelled');
  CREATE INDEX outbox_kept ON outbox (kept_at);
`;

/** Indexes the video and reply walks read by (a later migration step of the store). */
export const VISIT_REPLY_RETENTION_SCHEMA = `
  CREATE INDEX video_joins_walk ON video_joins (as_of_ms, appointment_id);
  CREATE INDEX video_links_minted ON video_links (minted_at, token_hash);
  CREATE INDEX reply_prompts_closes ON reply_prompts (closes_ms, seq);
`;

/**
 * Indexes on what references a message (a later migration step of the store). Retention
 * deletes message rows, and SQLite checks every foreign key that names messages for rows
 * still pointing at the deleted one: without an index on the child column, each delete reads
 * the whole child table (subject states; messages themselves for `replaces`), so pruning a
 * long history held the event loop for seconds per batch. triggers.message_id has had its
 * index from the start; PostgreSQL has these two (POSTGRES_RETENTION_SCHEMA).
 */
export const MESSAGE_REFERENCE_INDEXES = `
  CREATE INDEX subject_states_message ON subject_states (message_id) WHERE message_id IS NOT NULL;
  CREATE INDEX messages_replaces ON messages (replaces) WHERE replaces IS NOT NULL;
`;

/**
 * The walk of deliveries whose bodies are still to clear, by their partial index. Named:
 * without statistics SQLite's planner took the status index instead, read every final
 * delivery and sorted them for each batch (a batch held the event loop 364 ms with 100,000
 * bookings of history, the whole walk 46 s).
 */
export const DELIVERY_BODIES_WALK = `SELECT seq, id, rule, subject, patient_id, json, updated_at FROM deliveries INDEXED BY deliveries_bodies
  WHERE bodies_cleared IS NULL AND status IN ('finished', 'suppressed', 'cancelled') AND updated_at < ? AND (updated_at, seq) > (?, ?)
  ORDER BY updated_at, seq LIMIT ?`;

type MessageRow = RetainedMessage;
type TriggerRow = RetainedTrigger;

export class SqliteRetention {
  readonly #db: Database;
  readonly #s;
  /** Gives a row's bytes back to the raw-bytes quota before they go (sqlite-raw-quota.ts). */
  readonly #giveBack: (id: number) => void;

  constructor(db: Database) {
    this.#db = db;
    this.#giveBack = rawQuotaGiveBack(db);
    this.#s = {
      messages: db.prepare(
        `SELECT id, received_ms, status, reason, replaced_by, length(raw) AS stored FROM messages
          WHERE received_ms < ? AND (received_ms, id) > (?, ?) ORDER BY received_ms, id LIMIT ?`,
      ),
      clearRaw: db.prepare(
        `UPDATE messages SET raw_bytes = COALESCE(raw_bytes, length(raw_unpacked(raw, raw_packed))), raw = X'', raw_packed = NULL WHERE id = ?`,
      ),
      triggersOf: db.prepare('SELECT id, type, patient_id, appointment_id, encounter_id, routed_ms FROM triggers WHERE message_id = ?'),
      pendingOnSubject: db.prepare("SELECT 1 FROM deliveries WHERE subject = ? AND status = 'pending' LIMIT 1"),
      linkDue: db.prepare('SELECT 1 FROM outcome_links WHERE appointment_id = ?'),
      appointmentStart: db.prepare("SELECT start FROM subject_states WHERE kind = 'appointment' AND id = ?"),
      deleteTrigger: db.prepare('DELETE FROM triggers WHERE id = ?'),
      appointmentLeft: db.prepare('SELECT 1 FROM triggers WHERE appointment_id = ? LIMIT 1'),
      encounterLeft: db.prepare('SELECT 1 FROM triggers WHERE encounter_id = ? LIMIT 1'),
      deleteState: db.prepare('DELETE FROM subject_states WHERE kind = ? AND id = ?'),
      releaseState: db.prepare('UPDATE subject_states SET message_id = NULL WHERE kind = ? AND id = ? AND message_id = ?'),
      releaseAttempt: db.prepare('UPDATE messages SET replaces = NULL WHERE replaces = ? AND id = (SELECT replaced_by FROM messages WHERE id = ?)'),
      deleteMessage: db.prepare('DELETE FROM messages WHERE id = ?'),
      bodies: db.prepare(DELIVERY_BODIES_WALK),
      clearBodies: db.prepare('UPDATE deliveries SET json = ?, message = NULL, outbox_seq = NULL, bodies_cleared = 1 WHERE seq = ?'),
      outbox: db.prepare('SELECT seq, delivery_id, kept_at FROM outbox WHERE kept_at < ? AND (kept_at, seq) > (?, ?) ORDER BY kept_at, seq LIMIT ?'),
      deleteOutbox: db.prepare('DELETE FROM outbox WHERE seq = ?'),
      detachOutbox: db.prepare('UPDATE deliveries SET outbox_seq = NULL WHERE id = ? AND outbox_seq = ?'),
      deliveries: db.prepare('SELECT seq, id, rule, subject, patient_id, status, json, created_at, updated_at FROM deliveries WHERE seq > ? ORDER BY seq LIMIT ?'),
      deleteKey: db.prepare('DELETE FROM delivery_keys WHERE key = ? AND delivery_seq = ?'),
      deleteReceipts: db.prepare('DELETE FROM delivery_receipts WHERE delivery_id = ?'),
      deleteOutboxOf: db.prepare('DELETE FROM outbox WHERE delivery_id = ?'),
      deleteDelivery: db.prepare('DELETE FROM deliveries WHERE seq = ?'),
      outcomes: db.prepare(
        `SELECT day, appointment_id, rule FROM outcomes WHERE day < ? AND (day, appointment_id, rule) > (?, ?, ?) ORDER BY day, appointment_id, rule LIMIT ?`,
      ),
      deleteOutcome: db.prepare('DELETE FROM outcomes WHERE appointment_id = ? AND rule = ?'),
      joins: db.prepare(
        `SELECT j.appointment_id, j.as_of_ms, s.start FROM video_joins j LEFT JOIN subject_states s ON s.kind = 'appointment' AND s.id = j.appointment_id
          WHERE j.as_of_ms < ? AND (j.as_of_ms, j.appointment_id) > (?, ?) ORDER BY j.as_of_ms, j.appointment_id LIMIT ?`,
      ),
      deleteJoin: db.prepare('DELETE FROM video_joins WHERE appointment_id = ?'),
      links: db.prepare('SELECT token_hash, start, minted_at FROM video_links WHERE minted_at < ? AND (minted_at, token_hash) > (?, ?) ORDER BY minted_at, token_hash LIMIT ?'),
      deleteLink: db.prepare('DELETE FROM video_links WHERE token_hash = ?'),
      prompts: db.prepare('SELECT seq, closes_ms FROM reply_prompts WHERE closes_ms < ? AND (closes_ms, seq) > (?, ?) ORDER BY closes_ms, seq LIMIT ?'),
      deletePrompt: db.prepare('DELETE FROM reply_prompts WHERE seq = ?'),
      tasks: db.prepare("SELECT seq, json FROM staff_tasks WHERE status = 'done' AND seq > ? ORDER BY seq LIMIT ?"),
      waitlistSlots: db.prepare('SELECT id, opened_ms, start_ms FROM waitlist_slots WHERE opened_ms < ? AND (opened_ms, id) > (?, ?) ORDER BY opened_ms, id LIMIT ?'),
      deleteSlotOffers: db.prepare('DELETE FROM waitlist_offers WHERE slot_id = ?'),
      deleteSlot: db.prepare('DELETE FROM waitlist_slots WHERE id = ?'),
      waitlistAppointments: db.prepare('SELECT id, start_ms FROM waitlist_appointments WHERE id > ? ORDER BY id LIMIT ?'),
      deleteWaitlistAppointment: db.prepare('DELETE FROM waitlist_appointments WHERE id = ? AND start_ms < ?'),
      deleteTask: db.prepare('DELETE FROM staff_tasks WHERE seq = ?'),
    };
  }

  /**
   * One batch. Runs inside a write of the store (or alone for a dry run); `beforeMs` is the
   * cutoff instant, `now` the clock of the run.
   */
  batch(kind: RetentionKind, beforeMs: number, options: PruneOptions): PruneBatch {
    const limit = Math.max(1, Math.trunc(options.limit));
    const dry = options.dryRun === true;
    const before = new Date(beforeMs).toISOString();
    switch (kind) {
      case RetentionKind.RawMessages:
        return this.#messages(beforeMs, limit, options.after, (m) => {
          if (awaitsSomeone(m) || m.stored === 0) return false;
          if (!dry) {
            this.#giveBack(m.id);
            this.#s.clearRaw.run(m.id);
          }
          return true;
        });
      case RetentionKind.Triggers:
        return this.#messages(beforeMs, limit, options.after, (m) => this.#pruneRecord(m, beforeMs, dry));
      case RetentionKind.DeliveryBodies:
        return this.#deliveryBodies(before, limit, options.after, dry);
      case RetentionKind.Outbox:
        return this.#outbox(before, limit, options.after, dry);
      case RetentionKind.Deliveries:
        return this.#deliveries(beforeMs, limit, options.after, dry);
      case RetentionKind.Decisions:
        return this.#bySeq(['decisions'], beforeMs, limit, options.after, dry);
      case RetentionKind.Audit:
        return this.#bySeq(['audit', 'disclosures', 'erasures'], beforeMs, limit, options.after, dry);
      case RetentionKind.Outcomes:
        return this.#outcomes(before.slice(0, 10), limit, options.after, dry);
      case RetentionKind.VideoJoins:
        return this.#walk<{ appointment_id: string; as_of_ms: number; start: string | null }>(this.#s.joins, [beforeMs], limit, options.after, dry, {
          from: (p) => (p ? [Number(p[0]), p[1]!] : [Number.MIN_SAFE_INTEGER, '']),
          at: (row) => [row.as_of_ms, row.appointment_id],
          goes: (row) => visitOver(row.start, beforeMs),
          remove: (row) => this.#s.deleteJoin.run(row.appointment_id),
        });
      case RetentionKind.VideoLinks:
        return this.#walk<{ token_hash: string; start: string; minted_at: string }>(this.#s.links, [before], limit, options.after, dry, {
          from: (p) => p ?? ['', ''],
          at: (row) => [row.minted_at, row.token_hash],
          goes: (row) => Date.parse(row.start) < beforeMs,
          remove: (row) => this.#s.deleteLink.run(row.token_hash),
        });
      case RetentionKind.ReplyPrompts:
        return this.#walk<{ seq: number; closes_ms: number }>(this.#s.prompts, [beforeMs], limit, options.after, dry, {
          from: (p) => (p ? p.map(Number) : [Number.MIN_SAFE_INTEGER, 0]),
          at: (row) => [row.closes_ms, row.seq],
          goes: () => true,
          remove: (row) => this.#s.deletePrompt.run(row.seq),
        });
      case RetentionKind.StaffTasks:
        return this.#tasks(beforeMs, limit, options.after, dry);
      case RetentionKind.Waitlist:
        return this.#waitlist(beforeMs, limit, options.after, dry);
      default:
        throw new RangeError(`prune: unknown kind ${String(kind satisfies never)}`);
    }
  }

  #messages(beforeMs: number, limit: number, after: string | undefined, act: (m: MessageRow) => boolean): PruneBatch {
    const [ms, id] = parsePosition(after, 2)?.map(Number) ?? [-Infinity, 0];
    const rows = this.#s.messages.all(beforeMs, ms, id, limit) as MessageRow[];
    let removed = 0;
    for (const m of rows) if (act(m)) removed++;
    const last = rows[rows.length - 1];
    return { removed, ...(rows.length === limit && last ? { next: position(last.received_ms, last.id) } : {}) };
  }

  /** A message record and its triggers, unless one of them is still needed (RetentionKind `triggers`). */
  #pruneRecord(m: MessageRow, beforeMs: number, dry: boolean): boolean {
    if (awaitsSomeone(m)) return false;
    const s = this.#s;
    const triggers = s.triggersOf.all(m.id) as TriggerRow[];
    for (const t of triggers) {
      if (t.routed_ms === null) return false;
      if (s.pendingOnSubject.get(subjectKeyOf(t)) !== undefined) return false;
      if (t.appointment_id !== null) {
        if (s.linkDue.get(t.appointment_id) !== undefined) return false;
        // An appointment still to come (or just past): its outcome may still arrive and needs
        // the holdout assignment its booking's routing recorded.
        const state = s.appointmentStart.get(t.appointment_id) as { start: string | null } | undefined;
        if (state?.start != null && !(Date.parse(state.start) < beforeMs)) return false;
      }
    }
    if (dry) return true;
    // One savepoint: a state set by this message for a subject its triggers do not name (rare)
    // still points to it, the delete fails on the foreign key, and the record stays whole.
    try {
      this.#db.transaction(() => {
        for (const t of triggers) s.deleteTrigger.run(t.id);
        const subjects = new Map<string, 'appointment' | 'encounter'>();
        for (const t of triggers) {
          if (t.appointment_id !== null) subjects.set(t.appointment_id, 'appointment');
          if (t.encounter_id !== null) subjects.set(t.encounter_id, 'encounter');
        }
        for (const [id, kind] of subjects) {
          // Its last trigger gone, the state goes too (nothing is left to compare a reschedule
          // with); else it only stops naming this message.
          if ((kind === 'appointment' ? s.appointmentLeft : s.encounterLeft).get(id) !== undefined) s.releaseState.run(kind, id, m.id);
          else s.deleteState.run(kind, id);
        }
        s.releaseAttempt.run(m.id, m.id);
        this.#giveBack(m.id);
        s.deleteMessage.run(m.id);
      })();
    } catch (error) {
      if ((error as { code?: string }).code !== 'SQLITE_CONSTRAINT_FOREIGNKEY') throw error;
      return false;
    }
    return true;
  }

  #deliveryBodies(before: string, limit: number, after: string | undefined, dry: boolean): PruneBatch {
    const [at, seq] = parsePosition(after, 2) ?? ['', '0'];
    const rows = this.#s.bodies.all(before, at, Number(seq), limit) as Array<{ seq: number; id: string; rule: string; subject: string; patient_id: string; json: string | Buffer; updated_at: string }>;
    if (!dry) {
      for (const row of rows) {
        const compact = JSON.parse(unpackJson(row.json)) as Record<string, unknown>;
        delete compact.to;
        compact.payload = {};
        this.#s.clearBodies.run(packJson(PackedKind.Delivery, compact), row.seq);
      }
    }
    const last = rows[rows.length - 1];
    return { removed: rows.length, ...(rows.length === limit && last ? { next: position(last.updated_at, last.seq) } : {}) };
  }

  #outbox(before: string, limit: number, after: string | undefined, dry: boolean): PruneBatch {
    const [at, seq] = parsePosition(after, 2) ?? ['', '0'];
    const rows = this.#s.outbox.all(before, at, Number(seq), limit) as Array<{ seq: number; delivery_id: string; kept_at: string }>;
    if (!dry) {
      for (const row of rows) {
        this.#s.detachOutbox.run(row.delivery_id, row.seq);
        this.#s.deleteOutbox.run(row.seq);
      }
    }
    const last = rows[rows.length - 1];
    return { removed: rows.length, ...(rows.length === limit && last ? { next: position(last.kept_at, last.seq) } : {}) };
  }

  #deliveries(beforeMs: number, limit: number, after: string | undefined, dry: boolean): PruneBatch {
    const [seq] = parsePosition(after, 1)?.map(Number) ?? [0];
    type Row = { seq: number; id: string; rule: string; subject: string; patient_id: string; status: string; json: string | Buffer; created_at: string; updated_at: string };
    const rows = this.#s.deliveries.all(seq, limit) as Row[];
    let removed = 0;
    let last: Row | undefined;
    for (const row of rows) {
      // Deliveries are numbered as they are created: past the cutoff, every later one is newer.
      if (!(Date.parse(row.created_at) < beforeMs)) return { removed };
      last = row;
      if (row.status === 'pending' || !(Date.parse(row.updated_at) < beforeMs)) continue;
      removed++;
      if (dry) continue;
      const delivery = expandDeliveryJson(unpackJson(row.json), row);
      for (const key of new Set(delivery.cancelKeys)) this.#s.deleteKey.run(key, row.seq);
      this.#s.deleteReceipts.run(row.id);
      this.#s.deleteOutboxOf.run(row.id);
      this.#s.deleteDelivery.run(row.seq);
    }
    return { removed, ...(rows.length === limit && last ? { next: position(last.seq) } : {}) };
  }

  /** Append-only tables (seq in time order), one after another; `at` or `at_ms` is when. */
  #bySeq(tables: readonly string[], beforeMs: number, limit: number, after: string | undefined, dry: boolean): PruneBatch {
    const [table, seqText] = parsePosition(after, 2) ?? [tables[0]!, '0'];
    let index = tables.indexOf(table!);
    if (index < 0) throw new RangeError(`prune: "${after}" is not a position this kind returned`);
    let seq = Number(seqText);
    let removed = 0;
    let budget = limit;
    while (index < tables.length && budget > 0) {
      const name = tables[index]!;
      const rows = this.#db.prepare(`SELECT seq, at FROM ${name} WHERE seq > ? ORDER BY seq LIMIT ?`).all(seq, budget) as Array<{ seq: number; at: string }>;
      let ended = rows.length < budget;
      let upTo = seq;
      for (const row of rows) {
        if (!(Date.parse(row.at) < beforeMs)) {
          ended = true;
          break;
        }
        upTo = row.seq;
        removed++;
      }
      if (!dry && upTo > seq) this.#db.prepare(`DELETE FROM ${name} WHERE seq > ? AND seq <= ?`).run(seq, upTo);
      budget -= rows.length;
      if (!ended) return { removed, next: position(name, upTo) };
      index++;
      seq = 0;
    }
    return index < tables.length ? { removed, next: position(tables[index]!, 0) } : { removed };
  }

  /** A walk by a two-part position (an index's order), removing the rows `goes` accepts. */
  #walk<R>(
    statement: { all(...params: unknown[]): unknown[] },
    cutoff: unknown[],
    limit: number,
    after: string | undefined,
    dry: boolean,
    walk: { from(p: string[] | undefined): Array<string | number>; at(row: R): Array<string | number>; goes(row: R): boolean; remove(row: R): void },
  ): PruneBatch {
    const rows = statement.all(...cutoff, ...walk.from(parsePosition(after, 2)), limit) as R[];
    let removed = 0;
    for (const row of rows) {
      if (!walk.goes(row)) continue;
      removed++;
      if (!dry) walk.remove(row);
    }
    const last = rows[rows.length - 1];
    return { removed, ...(rows.length === limit && last ? { next: position(...walk.at(last)) } : {}) };
  }

  /** Slots that started before the cutoff, with their offers; then index entries that did. */
  #waitlist(beforeMs: number, limit: number, after: string | undefined, dry: boolean): PruneBatch {
    let at = waitlistPosition(after);
    let removed = 0;
    let budget = limit;
    if (at.walk === WaitlistWalk.Slots) {
      const rows = this.#s.waitlistSlots.all(beforeMs, at.ms, at.id, limit) as Array<{ id: string; opened_ms: number; start_ms: number }>;
      for (const row of rows) {
        if (!(row.start_ms < beforeMs)) continue;
        removed++;
        if (dry) continue;
        this.#s.deleteSlotOffers.run(row.id);
        this.#s.deleteSlot.run(row.id);
      }
      const last = rows[rows.length - 1];
      if (rows.length === limit && last) return { removed, next: position(WaitlistWalk.Slots, last.opened_ms, last.id) };
      budget = limit - rows.length;
      at = { walk: WaitlistWalk.Appointments, ms: 0, id: '' };
    }
    const rows = this.#s.waitlistAppointments.all(at.id, budget) as Array<{ id: string; start_ms: number }>;
    for (const row of rows) {
      if (!(row.start_ms < beforeMs)) continue;
      removed++;
      if (!dry) this.#s.deleteWaitlistAppointment.run(row.id, beforeMs);
    }
    const last = rows[rows.length - 1];
    return { removed, ...(rows.length === budget && last ? { next: position(WaitlistWalk.Appointments, 0, last.id) } : {}) };
  }

  /** Done staff tasks by seq, up to the first one created after the cutoff (numbered as created). */
  #tasks(beforeMs: number, limit: number, after: string | undefined, dry: boolean): PruneBatch {
    const [seq] = parsePosition(after, 1)?.map(Number) ?? [0];
    const rows = this.#s.tasks.all(seq, limit) as Array<{ seq: number; json: string }>;
    let removed = 0;
    for (const row of rows) {
      const task = staffTaskTimes(row.json);
      if (!(task.createdMs < beforeMs)) return { removed };
      if (!(task.doneMs !== undefined && task.doneMs < beforeMs)) continue;
      removed++;
      if (!dry) this.#s.deleteTask.run(row.seq);
    }
    const last = rows[rows.length - 1];
    return { removed, ...(rows.length === limit && last ? { next: position(last.seq) } : {}) };
  }

  #outcomes(beforeDay: string, limit: number, after: string | undefined, dry: boolean): PruneBatch {
    const [day, appointment, rule] = parsePosition(after, 3) ?? ['', '', ''];
    const rows = this.#s.outcomes.all(beforeDay, day, appointment, rule, limit) as Array<{ day: string; appointment_id: string; rule: string }>;
    if (!dry) for (const row of rows) this.#s.deleteOutcome.run(row.appointment_id, row.rule);
    const last = rows[rows.length - 1];
    return { removed: rows.length, ...(rows.length === limit && last ? { next: position(last.day, last.appointment_id, last.rule) } : {}) };
  }
}
