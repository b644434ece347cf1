// Replies and staff tasks in the embedded SQLite store (store.ts ReplyLedger): their tables
// (one migration step of the store, REPLY_TABLES), the step that lets `messages` hold SMS
// replies, and the statements. The SQLite store owns the database and delegates here; an
// answer's prompt and the tasks of an inbound SMS are written inside the store's commit of that
// SMS (InboundRecord.answers / tasks), so an answer is never stored without its prompt taken.
//
// A prompt row keeps the whole prompt as JSON (it is read whole) and, beside it, what the open
// prompts of a number are found by: output, normalized address, send and close times, and
// whether it is answered. The partial index holds open prompts only.
import type BetterSqlite3 from 'better-sqlite3';
import { normalizeAddress } from '../pipeline/consent.ts';
import { instantMs, listLimit } from './common.ts';
import type { Database } from './sqlite-db.ts';
import { STAFF_TASK_KINDS, type NewStaffTask, type ReplyAnswer, type ReplyPrompt, type StaffTask, type StaffTaskStatus } from './store.ts';

/** The tables: one append-only migration step of the store (sqlite.ts). */
export const REPLY_TABLES = `
  CREATE TABLE reply_prompts (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    output TEXT NOT NULL,
    address TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    sent_ms INTEGER NOT NULL,
    closes_ms INTEGER NOT NULL,
    answered INTEGER NOT NULL DEFAULT 0,
    json TEXT NOT NULL
  );
  CREATE INDEX reply_prompts_open ON reply_prompts (output, address, sent_ms) WHERE answered = 0;
  CREATE INDEX reply_prompts_patient ON reply_prompts (patient_id);

  CREATE TABLE staff_tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'done')),
    patient_id TEXT,
    json TEXT NOT NULL
  );
  CREATE INDEX staff_tasks_status ON staff_tasks (status, seq);
  CREATE INDEX staff_tasks_patient ON staff_tasks (patient_id) WHERE patient_id IS NOT NULL;
`;

/**
 * Lets `messages.format` hold 'sms' (a patient's SMS reply, workers/replies.ts). SQLite cannot
 * alter a CHECK constraint, and rebuilding the largest table (raw bytes of every message, with
 * foreign keys pointing at it) would copy it all at upgrade: instead the table's declaration is
 * widened in place, the procedure SQLite documents for constraint changes that existing rows
 * already satisfy (https://sqlite.org/lang_altertable.html#otheralter: writable_schema, then
 * schema_version + 1, in the migration's transaction). Nothing stored changes.
 */
export function widenMessageFormats(db: Database): void {
  widenFormatCheck(db, ['hl7v2', 'fhir'], ['hl7v2', 'fhir', 'sms']);
}

/** Widens the CHECK of `messages.format` from the `from` formats to the `to` ones, in place (above). */
export function widenFormatCheck(db: Database, formats: readonly string[], widened: readonly string[]): void {
  const check = (list: readonly string[]) => `CHECK (format IN (${list.map((f) => `'${f}'`).join(', ')}))`;
  const row = db.prepare("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'messages'").get() as { sql: string } | undefined;
  const from = check(formats);
  if (row === undefined || !row.sql.includes(from)) throw new Error(`store migration: the messages table does not have the expected format check (${from})`);
  const version = db.pragma('schema_version', { simple: true }) as number;
  // better-sqlite3 opens connections in defensive mode, which forbids writable_schema: lifted for
  // this statement only.
  db.unsafeMode(true);
  try {
    db.pragma('writable_schema = ON');
    db.prepare("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'messages'").run(row.sql.replace(from, check(widened)));
    db.pragma(`schema_version = ${version + 1}`);
    db.pragma('writable_schema = OFF');
  } finally {
    db.unsafeMode(false);
  }
}

interface PromptRow {
  seq: number;
  json: string;
}

interface TaskRow {
  seq: number;
  status: StaffTaskStatus;
  json: string;
}

function prepare(db: Database) {
  return {
    insertPrompt: db.prepare<[string, string, string, string, number, number, string]>(
      'INSERT INTO reply_prompts (id, output, address, patient_id, sent_ms, closes_ms, json) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING',
    ),
    openPrompts: db.prepare<[string, string, number], PromptRow>(
      'SELECT seq, json FROM reply_prompts WHERE output = ? AND address = ? AND answered = 0 AND closes_ms > ? ORDER BY sent_ms DESC, seq DESC LIMIT 100',
    ),
    promptById: db.prepare<[string], PromptRow & { answered: number }>('SELECT seq, json, answered FROM reply_prompts WHERE id = ?'),
    answerPrompt: db.prepare<[string, number]>('UPDATE reply_prompts SET answered = 1, json = ? WHERE seq = ? AND answered = 0'),
    insertTask: db.prepare<[string, string, string | null, string]>(
      "INSERT INTO staff_tasks (key, kind, status, patient_id, json) VALUES (?, ?, 'open', ?, ?) ON CONFLICT (key) DO NOTHING",
    ),
    taskByKey: db.prepare<[string], TaskRow>('SELECT seq, status, json FROM staff_tasks WHERE key = ?'),
    taskBySeq: db.prepare<[number], TaskRow>('SELECT seq, status, json FROM staff_tasks WHERE seq = ?'),
    finishTask: db.prepare<[string, number]>("UPDATE staff_tasks SET status = 'done', json = ? WHERE seq = ? AND status = 'open'"),
    erasePrompts: db.prepare<[string]>('DELETE FROM reply_prompts WHERE patient_id = ?'),
  };
}

export class SqliteReplyLedger {
  readonly #db: Database;
  readonly #s: ReturnType<typeof prepare>;
  readonly #lists = new Map<string, BetterSqlite3.Statement>();

  constructor(db: Database) {
    this.#db = db;
    this.#s = prepare(db);
  }

  /** Checks a prompt before the write (a bad instant or an empty id is a bug upstream). */
  static check(prompt: ReplyPrompt): { sentMs: number; closesMs: number; address: string } {
    for (const [name, value] of [['id', prompt.id], ['output', prompt.output], ['address', prompt.address], ['patientId', prompt.patientId], ['appointmentId', prompt.appointmentId]] as const) {
      if (typeof value !== 'string' || value === '') throw new RangeError(`a reply prompt needs ${name}`);
    }
    return { sentMs: instantMs(prompt.sentAt, 'prompt.sentAt'), closesMs: instantMs(prompt.closesAt, 'prompt.closesAt'), address: normalizeAddress(prompt.address) };
  }

  addPrompt(prompt: ReplyPrompt, checked: ReturnType<typeof SqliteReplyLedger.check>): boolean {
    const stored = { ...prompt, address: checked.address };
    delete stored.answer;
    return this.#s.insertPrompt.run(prompt.id, prompt.output, checked.address, prompt.patientId, checked.sentMs, checked.closesMs, JSON.stringify(stored)).changes > 0;
  }

  openPrompts(query: { output: string; address: string; at: string }): ReplyPrompt[] {
    const atMs = instantMs(query.at, 'at');
    return this.#s.openPrompts.all(query.output, normalizeAddress(query.address), atMs).map((r) => JSON.parse(r.json) as ReplyPrompt);
  }

  /** Inside a commit: marks the prompt answered; false when it is unknown or already answered. */
  answerPrompt(promptId: string, answer: ReplyAnswer): boolean {
    const row = this.#s.promptById.get(promptId);
    if (row === undefined || row.answered !== 0) return false;
    const prompt = JSON.parse(row.json) as ReplyPrompt;
    return this.#s.answerPrompt.run(JSON.stringify({ ...prompt, answer }), row.seq).changes > 0;
  }

  static checkTask(task: NewStaffTask): void {
    if (typeof task.key !== 'string' || task.key === '') throw new RangeError('a staff task needs a key');
    if (!(STAFF_TASK_KINDS as readonly string[]).includes(task.kind)) throw new RangeError(`unknown staff task kind ${JSON.stringify(task.kind)}`);
    instantMs(task.createdAt, 'task.createdAt');
  }

  /** Inside a write: the task of this key, opened now or earlier. */
  addTask(task: NewStaffTask): StaffTask {
    const info = this.#s.insertTask.run(task.key, task.kind, task.patientId ?? null, JSON.stringify(task));
    const row = info.changes > 0 ? this.#s.taskBySeq.get(Number(info.lastInsertRowid))! : this.#s.taskByKey.get(task.key)!;
    return taskFromRow(row);
  }

  listTasks(query: { status?: StaffTaskStatus; limit?: number; before?: string }): StaffTask[] {
    const where: string[] = [];
    const params: unknown[] = [];
    if (query.status !== undefined) {
      where.push('status = ?');
      params.push(query.status);
    }
    if (query.before !== undefined) {
      const seq = taskSeq(query.before);
      if (seq === undefined) throw new RangeError(`before must be the id of a staff task (the last id of the previous page), got ${JSON.stringify(query.before)}`);
      where.push('seq < ?');
      params.push(seq);
    }
    const sql = `SELECT seq, status, json FROM staff_tasks${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY seq DESC LIMIT ?`;
    let stmt = this.#lists.get(sql);
    if (stmt === undefined) {
      stmt = this.#db.prepare(sql);
      this.#lists.set(sql, stmt);
    }
    return (stmt.all(...params, listLimit(query.limit)) as TaskRow[]).map(taskFromRow);
  }

  /** Inside a write. */
  finishTask(id: string, done: { at: string; by: string }): StaffTask | undefined {
    const seq = taskSeq(id);
    const row = seq === undefined ? undefined : this.#s.taskBySeq.get(seq);
    if (row === undefined) return undefined;
    if (row.status === 'done') return taskFromRow(row);
    const task = { ...(JSON.parse(row.json) as NewStaffTask), doneAt: done.at, doneBy: done.by };
    this.#s.finishTask.run(JSON.stringify(task), row.seq);
    return taskFromRow({ seq: row.seq, status: 'done', json: JSON.stringify(task) });
  }

  /** Inside the erasure's transaction: the patient's prompts (their number) go. Tasks keep ids and codes only. */
  erase(patientId: string): void {
    this.#s.erasePrompts.run(patientId);
  }
}

function taskSeq(id: string): number | undefined {
  const m = /^task-([1-9]\d{0,15})$/.exec(id);
  return m ? Number(m[1]) : undefined;
}

function taskFromRow(row: TaskRow): StaffTask {
  const json = JSON.parse(row.json) as NewStaffTask & Pick<StaffTask, 'doneAt' | 'doneBy'>;
  return { ...json, id: `task-${row.seq}`, status: row.status };
}
