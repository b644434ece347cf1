// What the operations dashboard reads without scanning (store.ts flowActivity, deliveryTallies):
// its tables (one migration step of the store, ACTIVITY_TABLES) and their reads. SQLite
// triggers keep them as messages and deliveries are written, inside the same transactions, so
// no code path can forget them and the dashboard reads a few hundred rows whatever the
// number stored.
//
// flow_minutes is a ring of FLOW_ACTIVITY_MINUTES one-minute slots per input or output and
// code: a slot holds the minute it counts, and the first event of a newer minute that lands in
// it starts it again at 1. Nothing grows and nothing needs pruning; a row whose minute is out
// of the window is simply not read. last_ms keeps the newest event of the row, so an input's
// last message is known however long ago it came.
//
// delivery_tallies counts deliveries by rule, variant, output, status and reason ('' for
// none: the key of a WITHOUT ROWID table may not hold NULL), moved as a delivery changes.
import type BetterSqlite3 from 'better-sqlite3';
import type { Database } from './sqlite-db.ts';
import { FLOW_ACTIVITY_MINUTES, StoredDeliveryStatus, type DeliveryTally, type FlowActivity } from './store.ts';

/** How a sent delivery's status is spelled in the deliveries table (sqlite.ts ROW_SENT). */
const ROW_SENT = 'finished';

/**
 * The tables and their triggers: one append-only migration step of the store (sqlite.ts).
 * Deliveries gain `output` and `variant` columns (written by saveRouting; NULL for rows
 * stored before). The ring starts with the last hour of messages already stored (read through
 * messages_received); the tallies with every delivery stored, under their rule, status and
 * reason (their output and variant were not columns then).
 */
export const ACTIVITY_TABLES = `
  ALTER TABLE deliveries ADD COLUMN output TEXT;
  ALTER TABLE deliveries ADD COLUMN variant TEXT;

  CREATE TABLE flow_minutes (
    kind TEXT NOT NULL CHECK (kind IN ('input', 'output')),
    name TEXT NOT NULL,
    code TEXT NOT NULL,
    slot INTEGER NOT NULL,
    minute INTEGER NOT NULL,
    n INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, name, code, slot)
  ) WITHOUT ROWID;
  INSERT INTO flow_minutes (kind, name, code, slot, minute, n, last_ms)
    SELECT 'input', input, ack_code, (received_ms / 60000) % ${FLOW_ACTIVITY_MINUTES}, received_ms / 60000, COUNT(*), MAX(received_ms)
      FROM messages
     WHERE received_ms >= ((SELECT COALESCE(MAX(received_ms), 0) FROM messages) / 60000 - ${FLOW_ACTIVITY_MINUTES - 1}) * 60000
     GROUP BY input, ack_code, received_ms / 60000;

  -- A slot counts one minute: a newer minute starts it again; an older one (the clock went
  -- back) is not counted.
  CREATE TRIGGER messages_flow AFTER INSERT ON messages BEGIN
    INSERT INTO flow_minutes (kind, name, code, slot, minute, n, last_ms)
    VALUES ('input', NEW.input, NEW.ack_code, (NEW.received_ms / 60000) % ${FLOW_ACTIVITY_MINUTES}, NEW.received_ms / 60000, 1, NEW.received_ms)
    ON CONFLICT (kind, name, code, slot) DO UPDATE SET
      n = CASE WHEN excluded.minute = minute THEN n + 1 WHEN excluded.minute > minute THEN 1 ELSE n END,
      minute = max(minute, excluded.minute),
      last_ms = max(last_ms, excluded.last_ms);
  END;
  -- A delivery's end (sent, suppressed, failed) at its updated_at, per output.
  CREATE TRIGGER deliveries_flow AFTER UPDATE OF status ON deliveries
    WHEN NEW.status IN ('${ROW_SENT}', 'suppressed', 'failed') AND OLD.status <> NEW.status AND NEW.output IS NOT NULL
      AND unixepoch(NEW.updated_at) IS NOT NULL BEGIN
    INSERT INTO flow_minutes (kind, name, code, slot, minute, n, last_ms)
    VALUES ('output', NEW.output, CASE NEW.status WHEN '${ROW_SENT}' THEN 'sent' ELSE NEW.status END,
            (CAST(unixepoch(NEW.updated_at, 'subsec') * 1000 AS INTEGER) / 60000) % ${FLOW_ACTIVITY_MINUTES},
            CAST(unixepoch(NEW.updated_at, 'subsec') * 1000 AS INTEGER) / 60000, 1,
            CAST(unixepoch(NEW.updated_at, 'subsec') * 1000 AS INTEGER))
    ON CONFLICT (kind, name, code, slot) DO UPDATE SET
      n = CASE WHEN excluded.minute = minute THEN n + 1 WHEN excluded.minute > minute THEN 1 ELSE n END,
      minute = max(minute, excluded.minute),
      last_ms = max(last_ms, excluded.last_ms);
  END;

  CREATE TABLE delivery_tallies (
    rule TEXT NOT NULL,
    variant TEXT NOT NULL,
    output TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (rule, variant, output, status, reason)
  ) WITHOUT ROWID;
  INSERT INTO delivery_tallies (rule, variant, output, status, reason, n)
    SELECT rule, '', '', status, COALESCE(reason, ''), COUNT(*) FROM deliveries GROUP BY rule, status, COALESCE(reason, '');
  CREATE TRIGGER deliveries_tallied_insert AFTER INSERT ON deliveries BEGIN
    INSERT INTO delivery_tallies (rule, variant, output, status, reason, n)
    VALUES (NEW.rule, COALESCE(NEW.variant, ''), COALESCE(NEW.output, ''), NEW.status, COALESCE(NEW.reason, ''), 1)
    ON CONFLICT (rule, variant, output, status, reason) DO UPDATE SET n = n + 1;
  END;
  CREATE TRIGGER deliveries_tallied_update AFTER UPDATE OF status, reason, rule, variant, output ON deliveries
    WHEN OLD.status IS NOT NEW.status OR OLD.reason IS NOT NEW.reason OR OLD.rule IS NOT NEW.rule
      OR OLD.variant IS NOT NEW.variant OR OLD.output IS NOT NEW.output BEGIN
    UPDATE delivery_tallies SET n = n - 1
     WHERE rule = OLD.rule AND variant = COALESCE(OLD.variant, '') AND output = COALESCE(OLD.output, '')
       AND status = OLD.status AND reason = COALESCE(OLD.reason, '');
    INSERT INTO delivery_tallies (rule, variant, output, status, reason, n)
    VALUES (NEW.rule, COALESCE(NEW.variant, ''), COALESCE(NEW.output, ''), NEW.status, COALESCE(NEW.reason, ''), 1)
    ON CONFLICT (rule, variant, output, status, reason) DO UPDATE SET n = n + 1;
  END;
  CREATE TRIGGER deliveries_tallied_delete AFTER DELETE ON deliveries BEGIN
    UPDATE delivery_tallies SET n = n - 1
     WHERE rule = OLD.rule AND variant = COALESCE(OLD.variant, '') AND output = COALESCE(OLD.output, '')
       AND status = OLD.status AND reason = COALESCE(OLD.reason, '');
  END;
`;

interface FlowRow {
  kind: 'input' | 'output';
  name: string;
  code: string;
  minute: number;
  n: number;
  last_ms: number;
}

interface TallyRow {
  rule: string;
  variant: string;
  output: string;
  status: string;
  reason: string;
  n: number;
}

const iso = (ms: number): string => new Date(ms).toISOString();

/** Reads of the dashboard's tables (the SQLite store delegates to it). */
export class SqliteActivity {
  private readonly flowStmt: BetterSqlite3.Statement<[], FlowRow>;
  private readonly tallyStmt: BetterSqlite3.Statement<[], TallyRow>;

  constructor(db: Database) {
    // At most (inputs + outputs) × codes × FLOW_ACTIVITY_MINUTES rows: read whole.
    this.flowStmt = db.prepare('SELECT kind, name, code, minute, n, last_ms FROM flow_minutes ORDER BY kind, name, minute, code');
    this.tallyStmt = db.prepare('SELECT rule, variant, output, status, reason, n FROM delivery_tallies WHERE n > 0 ORDER BY rule, variant, output, status, reason');
  }

  flowActivity(sinceMs: number): FlowActivity[] {
    const from = Math.floor(sinceMs / 60_000);
    const flows = new Map<string, FlowActivity>();
    const lastMs = new Map<string, number>();
    for (const row of this.flowStmt.all()) {
      const key = `${row.kind}\u0000${row.name}`;
      let flow = flows.get(key);
      if (flow === undefined) {
        flow = { kind: row.kind, name: row.name, lastAt: '', minutes: [] };
        flows.set(key, flow);
      }
      lastMs.set(key, Math.max(lastMs.get(key) ?? 0, row.last_ms));
      if (row.minute >= from) flow.minutes.push({ minute: iso(row.minute * 60_000), code: row.code, count: row.n });
    }
    for (const [key, flow] of flows) flow.lastAt = iso(lastMs.get(key)!);
    return [...flows.values()];
  }

  deliveryTallies(): DeliveryTally[] {
    return this.tallyStmt.all().map((row) => ({
      rule: row.rule,
      ...(row.variant !== '' ? { variant: row.variant } : {}),
      ...(row.output !== '' ? { output: row.output } : {}),
      status: row.status === ROW_SENT ? StoredDeliveryStatus.Sent : (row.status as StoredDeliveryStatus),
      ...(row.reason !== '' ? { reason: row.reason } : {}),
      count: row.n,
    }));
  }
}
