// Retention in the PostgreSQL store (store.ts RetentionKind says what each kind removes and
// keeps; workers/retention.ts runs the batches; docs/operations.md "Retention"). The same walks,
// positions and rules as the embedded store (sqlite-retention.ts), so a position one store
// returned means the same there:
//   rawMessages     messages by (received_ms, id)            — messages_received
//   triggers        messages by (received_ms, id)            — record with its triggers
//   deliveryBodies  deliveries by (updated_at, seq)          — deliveries_bodies (final ones still holding bodies)
//   outbox          outbox by (kept_at, seq)                 — outbox_kept
//   deliveries      deliveries by seq, up to the first one created after the cutoff
//   decisions       decisions by seq (appended in time order), likewise
//   audit           audit, then disclosures, then erasures, each by seq likewise
//   outcomes        outcomes by (day, appointment, rule)     — outcomes_walk
//   waitlist        waitlist_slots by (opened_ms, id)        — waitlist_slots_opened; then waitlist_appointments by id (its key)
//
// A batch is one write of the store's group commit (postgres-commit.ts): a handful of
// set-based statements over at most `limit` rows, read then written in the same transaction,
// never a long transaction holding ingest's ACKs behind it. Other processes keep writing
// meanwhile (read committed), so every write re-checks on the row what the read decided: a
// cancelled delivery replanned meanwhile, a pending message completed meanwhile, stays.
// Instants stored as text are compared and walked in the "C" collation: ISO-8601 order is
// byte order, which a language collation (that may ignore punctuation) does not keep.
// A dry run walks the same way on the pool and counts.
import { expandDeliveryJson } from './common.ts';
import type { Sql } from './postgres-commit.ts';
import { giveBackRawQuota } from './postgres-raw-quota.ts';
import { awaitsSomeone, parsePosition, position, staffTaskTimes, subjectKeyOf, visitOver, waitlistPosition, WaitlistWalk, type RetainedMessage, type RetainedTrigger } from './retention-rules.ts';
import { PENDING_REASON, RetentionKind, type PruneBatch, type PruneOptions } from './store.ts';

/** Column and indexes retention walks (one append-only migration step of the store, postgres.ts). */
export const POSTGRES_RETENTION_SCHEMA = `
  -- deliveryBodies: set once a delivery's address, payload and message are removed.
  ALTER TABLE deliveries ADD COLUMN bodies_cleared BOOLEAN;
  -- Only final deliveries that still hold their bodies: the walk never re-reads cleared ones.
  CREATE INDEX deliveries_bodies ON deliveries ((updated_at COLLATE "C"), seq)
    WHERE bodies_cleared IS NULL AND status IN ('sent', 'suppressed', 'cancelled');
  CREATE INDEX outbox_kept ON outbox ((kept_at COLLATE "C"), seq);
  CREATE INDEX outcomes_walk ON outcomes ((day COLLATE "C"), (appointment_id COLLATE "C"), (rule COLLATE "C"));
  -- Removing a message record looks up what still names it (and so do the foreign keys' checks).
  CREATE INDEX subject_states_message ON subject_states (message_id) WHERE message_id IS NOT NULL;
  CREATE INDEX messages_replaces ON messages (replaces) WHERE replaces IS NOT NULL;
`;

/** Indexes the video and reply walks read by (a later migration step of the store). */
export const POSTGRES_VISIT_REPLY_RETENTION_SCHEMA = `
  CREATE INDEX video_joins_walk ON video_joins (as_of_ms, appointment_id COLLATE "C");
  CREATE INDEX video_links_minted ON video_links ((minted_at COLLATE "C"), (token_hash COLLATE "C"));
  CREATE INDEX reply_prompts_closes ON reply_prompts (closes_ms, seq);
`;

/** Final statuses whose bodies retention clears (a failed delivery or one in review may still be replayed). */
const BODIES_FINAL = `('sent', 'suppressed', 'cancelled')`;

type MessageRow = RetainedMessage;
type TriggerRow = RetainedTrigger & { message_id: number };

/** The same rule in SQL, on a messages row `m` (a write re-checks it on the row it changes). */
const AWAITS_SQL = `((m.status = 'quarantined' AND m.replaced_by IS NULL) OR (m.status = 'accepted' AND m.reason IS NOT DISTINCT FROM '${PENDING_REASON}'))`;

function numbers(values: string[] | undefined, fallback: number[]): number[] {
  if (values === undefined) return fallback;
  const out = values.map(Number);
  if (out.some((n) => !Number.isFinite(n))) throw new RangeError(`prune: "${values.join('\u0000')}" is not a position this kind returned`);
  return out;
}

/**
 * One batch of `kind` on `sql`: a transaction of the group commit, or the pool for a dry run
 * (reads only). `beforeMs` is the cutoff instant.
 */
export async function pruneBatch(sql: Sql, kind: RetentionKind, beforeMs: number, options: PruneOptions): Promise<PruneBatch> {
  const limit = Math.max(1, Math.trunc(options.limit));
  const dry = options.dryRun === true;
  const before = new Date(beforeMs).toISOString();
  switch (kind) {
    case RetentionKind.RawMessages:
      return rawMessages(sql, beforeMs, limit, options.after, dry);
    case RetentionKind.Triggers:
      return records(sql, beforeMs, limit, options.after, dry);
    case RetentionKind.DeliveryBodies:
      return deliveryBodies(sql, before, limit, options.after, dry);
    case RetentionKind.Outbox:
      return outbox(sql, before, limit, options.after, dry);
    case RetentionKind.Deliveries:
      return deliveries(sql, beforeMs, limit, options.after, dry);
    case RetentionKind.Decisions:
      return bySeq(sql, ['decisions'], beforeMs, limit, options.after, dry);
    case RetentionKind.Audit:
      return bySeq(sql, ['audit', 'disclosures', 'erasures'], beforeMs, limit, options.after, dry);
    case RetentionKind.Outcomes:
      return outcomes(sql, before.slice(0, 10), limit, options.after, dry);
    case RetentionKind.VideoJoins:
      return walk<{ appointment_id: string; as_of_ms: number; start: string | null }>(sql, limit, options.after, dry, {
        read: `SELECT j.appointment_id, j.as_of_ms, s.start FROM video_joins j LEFT JOIN subject_states s ON s.kind = 'appointment' AND s.id = j.appointment_id
                WHERE j.as_of_ms < $1 AND (j.as_of_ms, j.appointment_id COLLATE "C") > ($2, $3) ORDER BY j.as_of_ms, j.appointment_id COLLATE "C" LIMIT $4`,
        params: (p) => [beforeMs, ...(p ? [Number(p[0]), p[1]!] : [Number.MIN_SAFE_INTEGER, ''])],
        at: (row) => [row.as_of_ms, row.appointment_id],
        goes: (row) => visitOver(row.start, beforeMs),
        // Only the join as read: one stored since for a new booking stays.
        remove: (rows) =>
          sql.count('DELETE FROM video_joins j USING unnest($1::text[], $2::bigint[]) AS u (id, ms) WHERE j.appointment_id = u.id AND j.as_of_ms = u.ms', [
            rows.map((r) => r.appointment_id),
            rows.map((r) => r.as_of_ms),
          ]),
      });
    case RetentionKind.VideoLinks:
      return walk<{ token_hash: string; start: string; minted_at: string }>(sql, limit, options.after, dry, {
        read: `SELECT token_hash, start, minted_at FROM video_links WHERE minted_at COLLATE "C" < $1 AND (minted_at COLLATE "C", token_hash COLLATE "C") > ($2, $3)
                ORDER BY minted_at COLLATE "C", token_hash COLLATE "C" LIMIT $4`,
        params: (p) => [before, ...(p ?? ['', ''])],
        at: (row) => [row.minted_at, row.token_hash],
        goes: (row) => Date.parse(row.start) < beforeMs,
        remove: (rows) => sql.count('DELETE FROM video_links WHERE token_hash = ANY($1::text[])', [rows.map((r) => r.token_hash)]),
      });
    case RetentionKind.ReplyPrompts:
      return walk<{ seq: number; closes_ms: number }>(sql, limit, options.after, dry, {
        read: 'SELECT seq, closes_ms FROM reply_prompts WHERE closes_ms < $1 AND (closes_ms, seq) > ($2, $3) ORDER BY closes_ms, seq LIMIT $4',
        params: (p) => [beforeMs, ...numbers(p, [Number.MIN_SAFE_INTEGER, 0])],
        at: (row) => [row.closes_ms, row.seq],
        goes: () => true,
        remove: (rows) => sql.count('DELETE FROM reply_prompts WHERE seq = ANY($1::bigint[])', [rows.map((r) => r.seq)]),
      });
    case RetentionKind.StaffTasks:
      return staffTasks(sql, beforeMs, limit, options.after, dry);
    case RetentionKind.Waitlist:
      return waitlist(sql, beforeMs, limit, options.after, dry);
    default:
      throw new RangeError(`prune: unknown kind ${String(kind satisfies never)}`);
  }
}

/** Up to `limit` messages received before the cutoff, from the position on. */
async function messagesFrom(sql: Sql, beforeMs: number, limit: number, after: string | undefined): Promise<{ rows: MessageRow[]; next?: string }> {
  const [ms, id] = numbers(parsePosition(after, 2), [Number.MIN_SAFE_INTEGER, 0]);
  const rows = await sql.rows<MessageRow>(
    `SELECT id, received_ms, status, reason, replaced_by, length(raw) AS stored FROM messages
      WHERE received_ms < $1 AND (received_ms, id) > ($2, $3) ORDER BY received_ms, id LIMIT $4`,
    [beforeMs, ms, id, limit],
  );
  const last = rows[rows.length - 1];
  return { rows, ...(rows.length === limit && last ? { next: position(last.received_ms, last.id) } : {}) };
}

async function rawMessages(sql: Sql, beforeMs: number, limit: number, after: string | undefined, dry: boolean): Promise<PruneBatch> {
  const { rows, next } = await messagesFrom(sql, beforeMs, limit, after);
  const ids = rows.filter((m) => !awaitsSomeone(m) && m.stored > 0).map((m) => m.id);
  let removed = ids.length;
  if (!dry && ids.length > 0) {
    // Bytes counted under the raw-bytes quota go back to it first (postgres-raw-quota.ts).
    await giveBackRawQuota(sql, ids, `NOT ${AWAITS_SQL}`);
    removed = await sql.count(
      `UPDATE messages m SET raw_bytes = COALESCE(m.raw_bytes, length(m.raw)), raw = '\\x'::bytea, raw_quota = NULL
        WHERE m.id = ANY($1::bigint[]) AND length(m.raw) > 0 AND NOT ${AWAITS_SQL}`,
      [ids],
    );
  }
  return { removed, ...(next !== undefined ? { next } : {}) };
}

/** Message records with their triggers, unless one of them is still needed (RetentionKind `triggers`). */
async function records(sql: Sql, beforeMs: number, limit: number, after: string | undefined, dry: boolean): Promise<PruneBatch> {
  const { rows, next } = await messagesFrom(sql, beforeMs, limit, after);
  const result = (removed: number): PruneBatch => ({ removed, ...(next !== undefined ? { next } : {}) });
  const candidates = rows.filter((m) => !awaitsSomeone(m)).map((m) => m.id);
  if (candidates.length === 0) return result(0);
  const triggers = await sql.rows<TriggerRow>(
    'SELECT id, message_id, type, patient_id, appointment_id, encounter_id, routed_ms FROM triggers WHERE message_id = ANY($1::bigint[])',
    [candidates],
  );
  const subjectKeys = [...new Set(triggers.map(subjectKeyOf))];
  const appointments = [...new Set(triggers.flatMap((t) => (t.appointment_id !== null ? [t.appointment_id] : [])))];
  const [pending, linked, starts, states] = await Promise.all([
    subjectKeys.length === 0 ? [] : sql.rows<{ subject: string }>("SELECT DISTINCT subject FROM deliveries WHERE subject = ANY($1::text[]) AND status = 'pending'", [subjectKeys]),
    appointments.length === 0 ? [] : sql.rows<{ appointment_id: string }>('SELECT appointment_id FROM outcome_links WHERE appointment_id = ANY($1::text[])', [appointments]),
    appointments.length === 0
      ? []
      : sql.rows<{ id: string; start: string | null }>("SELECT id, start FROM subject_states WHERE kind = 'appointment' AND id = ANY($1::text[])", [appointments]),
    sql.rows<{ kind: string; id: string; message_id: number }>('SELECT kind, id, message_id FROM subject_states WHERE message_id = ANY($1::bigint[])', [candidates]),
  ]);
  const pendingSubjects = new Set(pending.map((r) => r.subject));
  const linkDue = new Set(linked.map((r) => r.appointment_id));
  const startOf = new Map(starts.map((r) => [r.id, r.start]));
  const byMessage = new Map<number, TriggerRow[]>();
  for (const t of triggers) byMessage.set(t.message_id, [...(byMessage.get(t.message_id) ?? []), t]);
  const statesOf = new Map<number, Array<{ kind: string; id: string }>>();
  for (const s of states) statesOf.set(s.message_id, [...(statesOf.get(s.message_id) ?? []), s]);

  const needed = (t: TriggerRow): boolean => {
    if (t.routed_ms === null) return true;
    if (pendingSubjects.has(subjectKeyOf(t))) return true;
    if (t.appointment_id !== null) {
      if (linkDue.has(t.appointment_id)) return true;
      // An appointment still to come (or just past): its outcome may still arrive and needs
      // the holdout assignment its booking's routing recorded.
      const start = startOf.get(t.appointment_id);
      if (start != null && !(Date.parse(start) < beforeMs)) return true;
    }
    return false;
  };
  const ids = candidates.filter((id) => {
    const own = byMessage.get(id) ?? [];
    if (own.some(needed)) return false;
    // A state this message set for a subject its triggers do not name (rare) still points to
    // it: the record stays whole (the embedded store's foreign key does the same).
    const named = new Set(own.flatMap((t) => [...(t.appointment_id !== null ? [`appointment/${t.appointment_id}`] : []), ...(t.encounter_id !== null ? [`encounter/${t.encounter_id}`] : [])]));
    return (statesOf.get(id) ?? []).every((s) => named.has(`${s.kind}/${s.id}`));
  });
  if (dry || ids.length === 0) return result(ids.length);

  const gone = triggers.filter((t) => ids.includes(t.message_id));
  await sql.count('DELETE FROM triggers WHERE message_id = ANY($1::bigint[])', [ids]);
  // Its last trigger gone, a subject's state goes too (nothing is left to compare a reschedule
  // with); else it only stops naming the message.
  const appointmentIds = [...new Set(gone.flatMap((t) => (t.appointment_id !== null ? [t.appointment_id] : [])))];
  const encounterIds = [...new Set(gone.flatMap((t) => (t.encounter_id !== null ? [t.encounter_id] : [])))];
  if (appointmentIds.length > 0) {
    await sql.count(
      `DELETE FROM subject_states s WHERE s.kind = 'appointment' AND s.id = ANY($1::text[])
          AND NOT EXISTS (SELECT 1 FROM triggers t WHERE t.appointment_id = s.id)`,
      [appointmentIds],
    );
  }
  if (encounterIds.length > 0) {
    await sql.count(
      `DELETE FROM subject_states s WHERE s.kind = 'encounter' AND s.id = ANY($1::text[])
          AND NOT EXISTS (SELECT 1 FROM triggers t WHERE t.encounter_id = s.id)`,
      [encounterIds],
    );
  }
  await sql.count('UPDATE subject_states SET message_id = NULL WHERE message_id = ANY($1::bigint[])', [ids]);
  // An operator's attempt at a removed message stops naming it.
  await sql.count('UPDATE messages SET replaces = NULL WHERE replaces = ANY($1::bigint[])', [ids]);
  await giveBackRawQuota(sql, ids, `NOT ${AWAITS_SQL}`);
  return result(await sql.count(`DELETE FROM messages m WHERE m.id = ANY($1::bigint[]) AND NOT ${AWAITS_SQL}`, [ids]));
}

async function deliveryBodies(sql: Sql, before: string, limit: number, after: string | undefined, dry: boolean): Promise<PruneBatch> {
  const [at, seqText] = parsePosition(after, 2) ?? ['', '0'];
  const [seq] = numbers([seqText!], [0]);
  type Row = { seq: number; id: string; rule: string; subject: string; patient_id: string; status: string; json: string; updated_at: string };
  const rows = await sql.rows<Row>(
    `SELECT seq, id, rule, subject, patient_id, status, json, updated_at FROM deliveries
      WHERE bodies_cleared IS NULL AND status IN ${BODIES_FINAL} AND updated_at COLLATE "C" < $1 AND (updated_at COLLATE "C", seq) > ($2, $3)
      ORDER BY updated_at COLLATE "C", seq LIMIT $4`,
    [before, at, seq, limit],
  );
  let removed = rows.length;
  if (!dry && rows.length > 0) {
    const jsons = rows.map((row) => {
      const compact = JSON.parse(row.json) as Record<string, unknown>;
      delete compact.to;
      compact.payload = {};
      return JSON.stringify(compact);
    });
    // Only the version read: a cancelled delivery replanned since keeps its new bodies.
    removed = await sql.count(
      `UPDATE deliveries d SET json = u.json, message = NULL, outbox_seq = NULL, bodies_cleared = TRUE
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS u (seq, json, status, updated_at)
        WHERE d.seq = u.seq AND d.status = u.status AND d.updated_at = u.updated_at AND d.bodies_cleared IS NULL`,
      [rows.map((r) => r.seq), jsons, rows.map((r) => r.status), rows.map((r) => r.updated_at)],
    );
  }
  const last = rows[rows.length - 1];
  return { removed, ...(rows.length === limit && last ? { next: position(last.updated_at, last.seq) } : {}) };
}

async function outbox(sql: Sql, before: string, limit: number, after: string | undefined, dry: boolean): Promise<PruneBatch> {
  const [at, seqText] = parsePosition(after, 2) ?? ['', '0'];
  const [seq] = numbers([seqText!], [0]);
  const rows = await sql.rows<{ seq: number; delivery_id: string; kept_at: string }>(
    `SELECT seq, delivery_id, kept_at FROM outbox WHERE kept_at COLLATE "C" < $1 AND (kept_at COLLATE "C", seq) > ($2, $3)
      ORDER BY kept_at COLLATE "C", seq LIMIT $4`,
    [before, at, seq, limit],
  );
  let removed = rows.length;
  if (!dry && rows.length > 0) {
    const seqs = rows.map((r) => r.seq);
    await sql.count('UPDATE deliveries d SET outbox_seq = NULL FROM unnest($1::text[], $2::bigint[]) AS u (id, seq) WHERE d.id = u.id AND d.outbox_seq = u.seq', [
      rows.map((r) => r.delivery_id),
      seqs,
    ]);
    removed = await sql.count('DELETE FROM outbox WHERE seq = ANY($1::bigint[])', [seqs]);
  }
  const last = rows[rows.length - 1];
  return { removed, ...(rows.length === limit && last ? { next: position(last.kept_at, last.seq) } : {}) };
}

async function deliveries(sql: Sql, beforeMs: number, limit: number, after: string | undefined, dry: boolean): Promise<PruneBatch> {
  const [seq] = numbers(parsePosition(after, 1), [0]);
  type Row = { seq: number; id: string; rule: string; subject: string; patient_id: string; status: string; json: string; created_at: string; updated_at: string };
  const rows = await sql.rows<Row>('SELECT seq, id, rule, subject, patient_id, status, json, created_at, updated_at FROM deliveries WHERE seq > $1 ORDER BY seq LIMIT $2', [seq, limit]);
  const old: Row[] = [];
  let last: Row | undefined;
  let ended = rows.length < limit;
  for (const row of rows) {
    // Deliveries are numbered as they are created: past the cutoff, every later one is newer.
    if (!(Date.parse(row.created_at) < beforeMs)) {
      ended = true;
      break;
    }
    last = row;
    if (row.status !== 'pending' && Date.parse(row.updated_at) < beforeMs) old.push(row);
  }
  let removed = old.length;
  if (!dry && old.length > 0) {
    // Only rows still as read (a cancelled delivery replanned since is pending again), then
    // what belonged to the ones that went.
    const gone = await sql.rows<{ seq: number; id: string }>(
      `DELETE FROM deliveries d USING unnest($1::bigint[], $2::text[]) AS u (seq, updated_at)
        WHERE d.seq = u.seq AND d.updated_at = u.updated_at AND d.status <> 'pending' RETURNING d.seq, d.id`,
      [old.map((r) => r.seq), old.map((r) => r.updated_at)],
    );
    removed = gone.length;
    const goneSeqs = new Set(gone.map((r) => r.seq));
    const keys: Array<[string, number]> = [];
    for (const row of old) {
      if (!goneSeqs.has(row.seq)) continue;
      for (const key of new Set(expandDeliveryJson(row.json, row).cancelKeys)) keys.push([key, row.seq]);
    }
    const ids = gone.map((r) => r.id);
    await Promise.all([
      keys.length === 0
        ? 0
        : sql.count('DELETE FROM delivery_keys k USING unnest($1::text[], $2::bigint[]) AS u (key, seq) WHERE k.key = u.key AND k.delivery_seq = u.seq', [
            keys.map((k) => k[0]),
            keys.map((k) => k[1]),
          ]),
      ids.length === 0 ? 0 : sql.count('DELETE FROM delivery_receipts WHERE delivery_id = ANY($1::text[])', [ids]),
      ids.length === 0 ? 0 : sql.count('DELETE FROM outbox WHERE delivery_id = ANY($1::text[])', [ids]),
    ]);
  }
  return { removed, ...(!ended && last ? { next: position(last.seq) } : {}) };
}

/** Append-only tables (seq in time order), one after another; `at` is when. */
async function bySeq(sql: Sql, tables: readonly string[], beforeMs: number, limit: number, after: string | undefined, dry: boolean): Promise<PruneBatch> {
  const [table, seqText] = parsePosition(after, 2) ?? [tables[0]!, '0'];
  let index = tables.indexOf(table!);
  if (index < 0) throw new RangeError(`prune: "${after}" is not a position this kind returned`);
  let [seq] = numbers([seqText!], [0]) as [number];
  let removed = 0;
  let budget = limit;
  while (index < tables.length && budget > 0) {
    const name = tables[index]!;
    const rows = await sql.rows<{ seq: number; at: string }>(`SELECT seq, at FROM ${name} WHERE seq > $1 ORDER BY seq LIMIT $2`, [seq, budget]);
    let ended = rows.length < budget;
    let upTo = seq;
    let counted = 0;
    for (const row of rows) {
      if (!(Date.parse(row.at) < beforeMs)) {
        ended = true;
        break;
      }
      upTo = row.seq;
      counted++;
    }
    removed += !dry && upTo > seq ? await sql.count(`DELETE FROM ${name} WHERE seq > $1 AND seq <= $2`, [seq, upTo]) : counted;
    budget -= rows.length;
    if (!ended) return { removed, next: position(name, upTo) };
    index++;
    seq = 0;
  }
  return index < tables.length ? { removed, next: position(tables[index]!, 0) } : { removed };
}

async function outcomes(sql: Sql, beforeDay: string, limit: number, after: string | undefined, dry: boolean): Promise<PruneBatch> {
  const [day, appointment, rule] = parsePosition(after, 3) ?? ['', '', ''];
  const rows = await sql.rows<{ day: string; appointment_id: string; rule: string }>(
    `SELECT day, appointment_id, rule FROM outcomes
      WHERE day COLLATE "C" < $1 AND (day COLLATE "C", appointment_id COLLATE "C", rule COLLATE "C") > ($2, $3, $4)
      ORDER BY day COLLATE "C", appointment_id COLLATE "C", rule COLLATE "C" LIMIT $5`,
    [beforeDay, day, appointment, rule, limit],
  );
  let removed = rows.length;
  if (!dry && rows.length > 0) {
    removed = await sql.count('DELETE FROM outcomes o USING unnest($1::text[], $2::text[]) AS u (appointment_id, rule) WHERE o.appointment_id = u.appointment_id AND o.rule = u.rule', [
      rows.map((r) => r.appointment_id),
      rows.map((r) => r.rule),
    ]);
  }
  const last = rows[rows.length - 1];
  return { removed, ...(rows.length === limit && last ? { next: position(last.day, last.appointment_id, last.rule) } : {}) };
}

/** A walk by a two-part position (an index's order), removing the rows `goes` accepts at once. */
async function walk<R>(
  sql: Sql,
  limit: number,
  after: string | undefined,
  dry: boolean,
  w: { read: string; params(p: string[] | undefined): unknown[]; at(row: R): Array<string | number>; goes(row: R): boolean; remove(rows: R[]): Promise<number> },
): Promise<PruneBatch> {
  const rows = await sql.rows<R>(w.read, [...w.params(parsePosition(after, 2)), limit]);
  const going = rows.filter((row) => w.goes(row));
  const removed = dry || going.length === 0 ? going.length : await w.remove(going);
  const last = rows[rows.length - 1];
  return { removed, ...(rows.length === limit && last ? { next: position(...w.at(last)) } : {}) };
}

/** Slots that started before the cutoff, with their offers; then index entries that did (each write re-checks the start). */
async function waitlist(sql: Sql, beforeMs: number, limit: number, after: string | undefined, dry: boolean): Promise<PruneBatch> {
  let at = waitlistPosition(after);
  let removed = 0;
  let budget = limit;
  if (at.walk === WaitlistWalk.Slots) {
    const rows = await sql.rows<{ id: string; opened_ms: string; start_ms: string }>(
      'SELECT id, opened_ms, start_ms FROM waitlist_slots WHERE opened_ms < $1 AND (opened_ms, id) > ($2, $3) ORDER BY opened_ms, id LIMIT $4',
      [beforeMs, at.ms, at.id, limit],
    );
    const going = rows.filter((r) => Number(r.start_ms) < beforeMs).map((r) => r.id);
    removed = going.length;
    if (!dry && going.length > 0) {
      await sql.count('DELETE FROM waitlist_offers WHERE slot_id = ANY($1::text[])', [going]);
      removed = await sql.count('DELETE FROM waitlist_slots WHERE id = ANY($1::text[]) AND start_ms < $2', [going, beforeMs]);
    }
    const last = rows[rows.length - 1];
    if (rows.length === limit && last) return { removed, next: position(WaitlistWalk.Slots, Number(last.opened_ms), last.id) };
    budget = limit - rows.length;
    at = { walk: WaitlistWalk.Appointments, ms: 0, id: '' };
  }
  const rows = await sql.rows<{ id: string; start_ms: string }>('SELECT id, start_ms FROM waitlist_appointments WHERE id > $1 ORDER BY id LIMIT $2', [at.id, budget]);
  const going = rows.filter((r) => Number(r.start_ms) < beforeMs).map((r) => r.id);
  removed += dry || going.length === 0 ? going.length : await sql.count('DELETE FROM waitlist_appointments WHERE id = ANY($1::text[]) AND start_ms < $2', [going, beforeMs]);
  const last = rows[rows.length - 1];
  return { removed, ...(rows.length === budget && last ? { next: position(WaitlistWalk.Appointments, 0, last.id) } : {}) };
}

/** Done staff tasks by seq, up to the first one created after the cutoff (numbered as created). */
async function staffTasks(sql: Sql, beforeMs: number, limit: number, after: string | undefined, dry: boolean): Promise<PruneBatch> {
  const [seq] = numbers(parsePosition(after, 1), [0]);
  const rows = await sql.rows<{ seq: number; json: string }>("SELECT seq, json FROM staff_tasks WHERE status = 'done' AND seq > $1 ORDER BY seq LIMIT $2", [seq, limit]);
  const going: number[] = [];
  let ended = rows.length < limit;
  for (const row of rows) {
    const task = staffTaskTimes(row.json);
    if (!(task.createdMs < beforeMs)) {
      ended = true;
      break;
    }
    if (task.doneMs !== undefined && task.doneMs < beforeMs) going.push(row.seq);
  }
  const removed = dry || going.length === 0 ? going.length : await sql.count("DELETE FROM staff_tasks WHERE seq = ANY($1::bigint[]) AND status = 'done'", [going]);
  const last = rows[rows.length - 1];
  return { removed, ...(!ended && last ? { next: position(last.seq) } : {}) };
}
