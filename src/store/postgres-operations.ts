// The PostgreSQL store's operations tables (the embedded store's sqlite-activity.ts,
// sqlite-outcomes.ts and its video tables, in PostgreSQL's terms): the dashboard's counts, the
// outcome links and observations, the sealed video join URLs and the patient links.
//
// The counts are kept by statement triggers inside the transactions that write messages and
// deliveries, as the embedded store's are. Several processes commit at once here, so every
// count row also carries a part (the backend's pid modulo 16, as delivery_counts' slots): two
// connections add to rows of their own instead of waiting on one hot row; reads add the parts.
import type { Trigger } from '../types.ts';
import { instantMs } from './common.ts';
import type { Sql } from './postgres-commit.ts';
import {
  FLOW_ACTIVITY_MINUTES,
  OUTCOME_TRIGGER_TYPES,
  StoredDeliveryStatus,
  type DeliveryTally,
  type FlowActivity,
  type OutcomeCount,
  type OutcomeKind,
  type OutcomeLink,
  type OutcomeObservation,
  type OutcomeQuery,
  type StoredVideoJoin,
  type VideoJoinWrite,
  type VideoLink,
} from './store.ts';

const PART = 'pg_backend_pid() % 16';

/** `flow_minutes` rows from `select` (kind, name, code, minute, n, last_ms): a newer minute restarts its slot. */
function addFlow(select: string): string {
  // One row per slot in a statement (ON CONFLICT may touch a row once): the newest minute.
  return `INSERT INTO flow_minutes (kind, name, code, slot, part, minute, n, last_ms)
    SELECT DISTINCT ON (kind, name, code, minute % ${FLOW_ACTIVITY_MINUTES}) kind, name, code, minute % ${FLOW_ACTIVITY_MINUTES}, ${PART}, minute, n, last_ms
      FROM (${select}) AS f (kind, name, code, minute, n, last_ms)
     ORDER BY kind, name, code, minute % ${FLOW_ACTIVITY_MINUTES}, minute DESC
    ON CONFLICT (kind, name, code, slot, part) DO UPDATE SET
      n = CASE WHEN excluded.minute = flow_minutes.minute THEN flow_minutes.n + excluded.n
               WHEN excluded.minute > flow_minutes.minute THEN excluded.n ELSE flow_minutes.n END,
      minute = GREATEST(flow_minutes.minute, excluded.minute),
      last_ms = GREATEST(flow_minutes.last_ms, excluded.last_ms);`;
}

/** `delivery_tallies` changes from `select` (rule, variant, output, status, reason, d). */
function addTallies(select: string): string {
  return `INSERT INTO delivery_tallies (rule, variant, output, status, reason, part, n)
    SELECT rule, variant, output, status, reason, ${PART}, SUM(d) FROM (${select}) AS t (rule, variant, output, status, reason, d)
     GROUP BY rule, variant, output, status, reason
    ON CONFLICT (rule, variant, output, status, reason, part) DO UPDATE SET n = delivery_tallies.n + excluded.n;`;
}

const TALLY_KEY = (t: string) => `${t}.rule, COALESCE(${t}.variant, ''), COALESCE(${t}.output, ''), ${t}.status, COALESCE(${t}.reason, '')`;
/** A delivery's end as epoch ms (its updated_at). */
const ENDED_MS = (t: string) => `(EXTRACT(EPOCH FROM ${t}.updated_at::timestamptz) * 1000)::bigint`;

/**
 * One append-only migration step of the store (postgres.ts): holdings by the tool's own id and
 * the erasure record's tools (store.ts ContactHolding.toolId, ErasureRecord.tools), the
 * dashboard's counts (started from what is stored, as the embedded step does), outcomes and
 * video visits.
 */
export const POSTGRES_OPERATIONS_TABLES = `
  ALTER TABLE contact_holdings ADD COLUMN tool_id TEXT;
  CREATE INDEX contact_holdings_tool_id ON contact_holdings (output, tool_id) WHERE tool_id IS NOT NULL;
  ALTER TABLE erasures ADD COLUMN tools TEXT NOT NULL DEFAULT '[]';
  ALTER TABLE deliveries ADD COLUMN output TEXT, ADD COLUMN variant TEXT;

  CREATE TABLE flow_minutes (
    kind TEXT NOT NULL CHECK (kind IN ('input', 'output')),
    name TEXT NOT NULL,
    code TEXT NOT NULL,
    slot INTEGER NOT NULL,
    part INTEGER NOT NULL,
    minute BIGINT NOT NULL,
    n BIGINT NOT NULL,
    last_ms BIGINT NOT NULL,
    PRIMARY KEY (kind, name, code, slot, part)
  );
  ${addFlow(`SELECT 'input', input, ack_code, received_ms / 60000, COUNT(*), MAX(received_ms) FROM messages
     WHERE received_ms >= ((SELECT COALESCE(MAX(received_ms), 0) FROM messages) / 60000 - ${FLOW_ACTIVITY_MINUTES - 1}) * 60000
     GROUP BY input, ack_code, received_ms / 60000`)}
  CREATE FUNCTION messages_flow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    ${addFlow(`SELECT 'input', input, ack_code, received_ms / 60000, COUNT(*), MAX(received_ms) FROM new_rows GROUP BY input, ack_code, received_ms / 60000`)}
    RETURN NULL; END $$;
  CREATE TRIGGER messages_flow AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION messages_flow();

  CREATE TABLE delivery_tallies (
    rule TEXT NOT NULL,
    variant TEXT NOT NULL,
    output TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    part INTEGER NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (rule, variant, output, status, reason, part)
  );
  ${addTallies(`SELECT ${TALLY_KEY('d')}, 1 FROM deliveries d`)}
  CREATE FUNCTION deliveries_tallied_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    ${addTallies(`SELECT ${TALLY_KEY('w')}, 1 FROM new_rows w`)}
    RETURN NULL; END $$;
  CREATE TRIGGER deliveries_tallied_insert AFTER INSERT ON deliveries REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_tallied_insert();
  -- A delivery's end (sent, suppressed, failed) counts for its output at its updated_at.
  CREATE FUNCTION deliveries_tallied_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    ${addTallies(`SELECT ${TALLY_KEY('o')}, -1 FROM old_rows o JOIN new_rows w ON w.seq = o.seq WHERE (${TALLY_KEY('o')}) IS DISTINCT FROM (${TALLY_KEY('w')})
        UNION ALL
        SELECT ${TALLY_KEY('w')}, 1 FROM old_rows o JOIN new_rows w ON w.seq = o.seq WHERE (${TALLY_KEY('o')}) IS DISTINCT FROM (${TALLY_KEY('w')})`)}
    ${addFlow(`SELECT 'output', w.output, w.status, ${ENDED_MS('w')} / 60000, COUNT(*), MAX(${ENDED_MS('w')})
        FROM old_rows o JOIN new_rows w ON w.seq = o.seq
       WHERE w.status IN ('sent', 'suppressed', 'failed') AND o.status <> w.status AND w.output IS NOT NULL
       GROUP BY w.output, w.status, ${ENDED_MS('w')} / 60000`)}
    RETURN NULL; END $$;
  CREATE TRIGGER deliveries_tallied_update AFTER UPDATE ON deliveries REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_tallied_update();
  CREATE FUNCTION deliveries_tallied_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    ${addTallies(`SELECT ${TALLY_KEY('o')}, -1 FROM old_rows o`)}
    RETURN NULL; END $$;
  CREATE TRIGGER deliveries_tallied_delete AFTER DELETE ON deliveries REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_tallied_delete();

  -- Outcomes (sqlite-outcomes.ts): appointments to link (a new note takes a new seq), and one
  -- observation per appointment and rule.
  CREATE TABLE outcome_links (
    seq BIGSERIAL PRIMARY KEY,
    appointment_id TEXT NOT NULL UNIQUE
  );
  CREATE TABLE outcomes (
    appointment_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    variant TEXT NOT NULL,
    holdout BOOLEAN NOT NULL,
    sent BOOLEAN NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('showed', 'noshow', 'cancelled_advance', 'cancelled_late')),
    day TEXT NOT NULL,
    PRIMARY KEY (appointment_id, rule)
  );
  CREATE INDEX outcomes_day ON outcomes (day);

  -- Video visits (docs/video.md): the vendor's join URL sealed by the ingest, patient links by
  -- the SHA-256 of their token.
  CREATE TABLE video_joins (
    appointment_id TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL,
    as_of TEXT NOT NULL,
    as_of_ms BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    sealed BYTEA NOT NULL,
    message_id BIGINT
  );
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
  );
  CREATE INDEX video_links_patient ON video_links (patient_id);
`;

const iso = (ms: number): string => new Date(ms).toISOString();

export async function flowActivity(sql: Sql, sinceMs: number): Promise<FlowActivity[]> {
  const from = Math.floor(sinceMs / 60_000);
  // A slot's parts may hold different minutes: only its newest minute counts (as the one row
  // of the embedded ring would); the newest event of a row counts whatever its minute.
  const rows = await sql.rows<{ kind: 'input' | 'output'; name: string; code: string; minute: string; n: string; last_ms: string; current: boolean }>(
    `SELECT kind, name, code, minute, n, last_ms, minute = MAX(minute) OVER (PARTITION BY kind, name, code, slot) AS current
       FROM flow_minutes ORDER BY kind, name COLLATE "C", minute, code COLLATE "C"`,
  );
  const flows = new Map<string, FlowActivity & { lastMs: number; counts: Map<string, number> }>();
  for (const row of rows) {
    const key = `${row.kind}\u0000${row.name}`;
    let flow = flows.get(key);
    if (flow === undefined) {
      flow = { kind: row.kind, name: row.name, lastAt: '', minutes: [], lastMs: 0, counts: new Map() };
      flows.set(key, flow);
    }
    flow.lastMs = Math.max(flow.lastMs, Number(row.last_ms));
    const minute = Number(row.minute);
    if (!row.current || minute < from) continue;
    const at = `${minute}\u0000${row.code}`;
    if (!flow.counts.has(at)) flow.minutes.push({ minute: iso(minute * 60_000), code: row.code, count: 0 });
    flow.counts.set(at, (flow.counts.get(at) ?? 0) + Number(row.n));
  }
  return [...flows.values()].map(({ lastMs, counts, ...flow }) => ({
    ...flow,
    lastAt: iso(lastMs),
    minutes: flow.minutes.map((m) => ({ ...m, count: counts.get(`${Date.parse(m.minute) / 60_000}\u0000${m.code}`)! })),
  }));
}

export async function deliveryTallies(sql: Sql): Promise<DeliveryTally[]> {
  const rows = await sql.rows<{ rule: string; variant: string; output: string; status: string; reason: string; n: string }>(
    `SELECT rule, variant, output, status, reason, SUM(n) AS n FROM delivery_tallies
      GROUP BY rule, variant, output, status, reason HAVING SUM(n) > 0
      ORDER BY rule COLLATE "C", variant COLLATE "C", output COLLATE "C", status COLLATE "C", reason COLLATE "C"`,
  );
  return rows.map((row) => ({
    rule: row.rule,
    ...(row.variant !== '' ? { variant: row.variant } : {}),
    ...(row.output !== '' ? { output: row.output } : {}),
    status: row.status as StoredDeliveryStatus,
    ...(row.reason !== '' ? { reason: row.reason } : {}),
    count: Number(row.n),
  }));
}

const OUTCOME_TYPES = new Set<string>(OUTCOME_TRIGGER_TYPES);

/** Inside the commit of triggers: the appointments of outcome triggers, each with a new seq. */
export function noteOutcomeTriggers(tx: Sql, triggers: readonly Trigger[]): Promise<number> | undefined {
  const ids = [...new Set(triggers.filter((t) => OUTCOME_TYPES.has(t.type) && (t.appointment?.id ?? '') !== '').map((t) => t.appointment!.id))].sort();
  if (ids.length === 0) return undefined;
  return tx.count(
    `INSERT INTO outcome_links (appointment_id) SELECT * FROM unnest($1::text[])
     ON CONFLICT (appointment_id) DO UPDATE SET seq = nextval(pg_get_serial_sequence('outcome_links', 'seq'))`,
    [ids],
  );
}

export async function outcomeLinksDue(sql: Sql, limit: number): Promise<OutcomeLink[]> {
  const rows = await sql.rows<{ seq: string; appointment_id: string }>('SELECT seq, appointment_id FROM outcome_links ORDER BY seq LIMIT $1', [limit]);
  return rows.map((r) => ({ appointmentId: r.appointment_id, version: Number(r.seq) }));
}

/** Inside a write: the appointment's observations replaced, its link forgotten if unchanged. */
export async function saveOutcomes(tx: Sql, link: OutcomeLink, observations: readonly OutcomeObservation[]): Promise<void> {
  await tx.count('DELETE FROM outcomes WHERE appointment_id = $1', [link.appointmentId]);
  if (observations.length > 0) {
    await tx.count(
      'INSERT INTO outcomes (appointment_id, rule, variant, holdout, sent, outcome, day) SELECT $1, * FROM unnest($2::text[], $3::text[], $4::boolean[], $5::boolean[], $6::text[], $7::text[])',
      [
        link.appointmentId,
        observations.map((o) => o.rule),
        observations.map((o) => o.variant ?? ''),
        observations.map((o) => o.holdout),
        observations.map((o) => o.sent),
        observations.map((o) => o.outcome),
        observations.map((o) => o.day),
      ],
    );
  }
  await tx.count('DELETE FROM outcome_links WHERE appointment_id = $1 AND seq = $2', [link.appointmentId, link.version]);
}

export async function countOutcomes(sql: Sql, query: OutcomeQuery): Promise<OutcomeCount[]> {
  const rows = await sql.rows<{ rule: string; variant: string; holdout: boolean; day: string; outcome: OutcomeKind; n: string; sent: string }>(
    `SELECT rule, variant, holdout, day, outcome, COUNT(*) AS n, COUNT(*) FILTER (WHERE sent) AS sent FROM outcomes
      WHERE ($1::text IS NULL OR day >= $1) AND ($2::text IS NULL OR day <= $2) AND ($3::text IS NULL OR rule = $3)
      GROUP BY day, rule, variant, holdout, outcome
      ORDER BY day COLLATE "C", rule COLLATE "C", variant COLLATE "C", holdout, outcome COLLATE "C"`,
    [query.fromDay ?? null, query.toDay ?? null, query.rule ?? null],
  );
  return rows.map((r) => ({ rule: r.rule, ...(r.variant !== '' ? { variant: r.variant } : {}), holdout: r.holdout, day: r.day, outcome: r.outcome, count: Number(r.n), sent: Number(r.sent) }));
}

/**
 * Inside the commit of a message, after its subject states: each join applies unless the kept
 * one, or the appointment's stored state, reflects a newer event (a late message never brings
 * an old URL back); a join without a URL clears an older one. In the record's order.
 */
export function writeVideoJoins(tx: Sql, joins: ReadonlyArray<{ join: VideoJoinWrite; asOfMs: number; messageId: number }>): Array<Promise<number>> {
  return joins.map(({ join: j, asOfMs, messageId }) =>
    j.join === undefined
      ? tx.count('DELETE FROM video_joins WHERE appointment_id = $1 AND as_of_ms <= $2', [j.appointmentId, asOfMs])
      : tx.count(
          `INSERT INTO video_joins (appointment_id, patient_id, as_of, as_of_ms, key_id, sealed, message_id)
           SELECT $1, $2, $3, $4, $5, $6, $7
            WHERE NOT EXISTS (SELECT 1 FROM subject_states WHERE kind = 'appointment' AND id = $1 AND as_of_ms > $4)
           ON CONFLICT (appointment_id) DO UPDATE SET
             patient_id = excluded.patient_id, as_of = excluded.as_of, as_of_ms = excluded.as_of_ms,
             key_id = excluded.key_id, sealed = excluded.sealed, message_id = excluded.message_id
           WHERE excluded.as_of_ms >= video_joins.as_of_ms`,
          [j.appointmentId, j.patientId, j.asOf, asOfMs, j.join.keyId, j.join.sealed, messageId],
        ),
  );
}

export async function getVideoJoin(sql: Sql, appointmentId: string): Promise<StoredVideoJoin | undefined> {
  const [row] = await sql.rows<{ appointment_id: string; patient_id: string; as_of: string; key_id: string; sealed: Buffer }>(
    'SELECT appointment_id, patient_id, as_of, key_id, sealed FROM video_joins WHERE appointment_id = $1',
    [appointmentId],
  );
  return row === undefined ? undefined : { appointmentId: row.appointment_id, patientId: row.patient_id, asOf: row.as_of, join: { keyId: row.key_id, sealed: row.sealed } };
}

/** Checks a link before its write (throws RangeError). */
export function checkVideoLink(link: VideoLink): void {
  instantMs(link.mintedAt, 'mintedAt');
  instantMs(link.start, 'start');
  if (!/^[0-9a-f]{64}$/.test(link.tokenHash)) throw new RangeError('tokenHash must be a SHA-256 in lower-case hex');
}

export function putVideoLink(tx: Sql, link: VideoLink): Promise<number> {
  return tx.count(
    `INSERT INTO video_links (token_hash, appointment_id, patient_id, delivery_id, start, zone, language, minted_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (token_hash) DO NOTHING`,
    [link.tokenHash, link.appointmentId, link.patientId, link.deliveryId, link.start, link.zone ?? null, link.language ?? null, link.mintedAt],
  );
}

export async function getVideoLink(sql: Sql, tokenHash: string): Promise<VideoLink | undefined> {
  const [row] = await sql.rows<{ token_hash: string; appointment_id: string; patient_id: string; delivery_id: string; start: string; zone: string | null; language: string | null; minted_at: string }>(
    'SELECT token_hash, appointment_id, patient_id, delivery_id, start, zone, language, minted_at FROM video_links WHERE token_hash = $1',
    [tokenHash],
  );
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
