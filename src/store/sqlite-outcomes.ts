// Outcome observations in the embedded SQLite store (store.ts OutcomeObservation; workers/outcomes.ts
// links them; docs/operations.md "Outcomes"). The SQLite store owns the database and delegates here.
//
// outcome_links: appointments whose outcome triggers were committed and are not linked yet,
// written in the commit of the trigger (a crash loses none). A new note for the same
// appointment replaces the row with a new seq (AUTOINCREMENT: never reused), so a linker that
// read an older seq forgets only what it linked.
//
// outcomes: one row per appointment and rule, the arm routing assigned and how the appointment
// ended, keyed by the day of its start (the period key). Reports count them per day; a day index
// keeps a range cheap, and the counts are read in windows of days with a yield between them, so
// a year of appointments never holds the event loop at once.
import type { Database } from './sqlite-db.ts';
import { OUTCOME_TRIGGER_TYPES, type OutcomeCount, type OutcomeKind, type OutcomeLink, type OutcomeObservation, type OutcomeQuery } from './store.ts';
import type { Trigger } from '../types.ts';

/** The outcome tables (part of one append-only migration step of the store, sqlite.ts). */
export const OUTCOME_TABLES = `
  CREATE TABLE outcome_links (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    appointment_id TEXT NOT NULL UNIQUE
  );
  CREATE TABLE outcomes (
    appointment_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    variant TEXT NOT NULL,
    holdout INTEGER NOT NULL,
    sent INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('showed', 'noshow', 'cancelled_advance', 'cancelled_late')),
    day TEXT NOT NULL,
    PRIMARY KEY (appointment_id, rule)
  ) WITHOUT ROWID;
  CREATE INDEX outcomes_day ON outcomes (day);
`;

/** Days of appointments counted per read (then the event loop gets a turn). */
const WINDOW_DAYS = 14;
const DAY_MS = 86_400_000;
const OUTCOME_TYPES = new Set<string>(OUTCOME_TRIGGER_TYPES);

interface CountRow {
  rule: string;
  variant: string;
  holdout: number;
  day: string;
  outcome: OutcomeKind;
  n: number;
  sent: number;
}

export class SqliteOutcomes {
  readonly #db: Database;
  readonly #forget;
  readonly #note;
  readonly #due;
  readonly #deleteOf;
  readonly #insert;
  readonly #unlink;
  readonly #range;

  constructor(db: Database) {
    this.#db = db;
    this.#forget = db.prepare('DELETE FROM outcome_links WHERE appointment_id = ?');
    this.#note = db.prepare('INSERT INTO outcome_links (appointment_id) VALUES (?)');
    this.#due = db.prepare('SELECT seq, appointment_id FROM outcome_links ORDER BY seq LIMIT ?');
    this.#deleteOf = db.prepare('DELETE FROM outcomes WHERE appointment_id = ?');
    this.#insert = db.prepare('INSERT INTO outcomes (appointment_id, rule, variant, holdout, sent, outcome, day) VALUES (?, ?, ?, ?, ?, ?, ?)');
    this.#unlink = db.prepare('DELETE FROM outcome_links WHERE appointment_id = ? AND seq = ?');
    this.#range = db.prepare('SELECT MIN(day) AS first, MAX(day) AS last FROM outcomes');
  }

  /** Inside the commit of triggers: notes the appointment of each outcome trigger. */
  noteTriggers(triggers: readonly Trigger[]): void {
    for (const t of triggers) {
      const id = t.appointment?.id;
      if (id === undefined || id === '' || !OUTCOME_TYPES.has(t.type)) continue;
      this.#forget.run(id);
      this.#note.run(id);
    }
  }

  due(limit: number): OutcomeLink[] {
    return (this.#due.all(limit) as Array<{ seq: number; appointment_id: string }>).map((r) => ({ appointmentId: r.appointment_id, version: r.seq }));
  }

  /** Inside a write: the appointment's observations replaced, its link forgotten if unchanged. */
  save(link: OutcomeLink, observations: readonly OutcomeObservation[]): void {
    this.#deleteOf.run(link.appointmentId);
    for (const o of observations) {
      this.#insert.run(link.appointmentId, o.rule, o.variant ?? '', o.holdout ? 1 : 0, o.sent ? 1 : 0, o.outcome, o.day);
    }
    this.#unlink.run(link.appointmentId, link.version);
  }

  async count(query: OutcomeQuery): Promise<OutcomeCount[]> {
    const bounds = this.#range.get() as { first: string | null; last: string | null };
    if (bounds.first === null || bounds.last === null) return [];
    const from = query.fromDay !== undefined && query.fromDay > bounds.first ? query.fromDay : bounds.first;
    const to = query.toDay !== undefined && query.toDay < bounds.last ? query.toDay : bounds.last;
    const sql =
      'SELECT rule, variant, holdout, day, outcome, COUNT(*) AS n, SUM(sent) AS sent FROM outcomes WHERE day >= ? AND day <= ?' +
      (query.rule !== undefined ? ' AND rule = ?' : '') +
      ' GROUP BY day, rule, variant, holdout, outcome ORDER BY day, rule, variant, holdout, outcome';
    const stmt = this.#db.prepare(sql);
    const out: OutcomeCount[] = [];
    for (let start = from; start <= to; start = addDays(start, WINDOW_DAYS)) {
      const end = addDays(start, WINDOW_DAYS - 1);
      const rows = stmt.all(start, end < to ? end : to, ...(query.rule !== undefined ? [query.rule] : [])) as CountRow[];
      for (const r of rows) {
        out.push({
          rule: r.rule,
          ...(r.variant !== '' ? { variant: r.variant } : {}),
          holdout: r.holdout === 1,
          day: r.day,
          outcome: r.outcome,
          count: r.n,
          sent: r.sent,
        });
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
    return out;
  }
}

/** A YYYY-MM-DD day plus `n` calendar days. */
function addDays(day: string, n: number): string {
  return new Date(Date.parse(`${day}T00:00:00Z`) + n * DAY_MS).toISOString().slice(0, 10);
}
