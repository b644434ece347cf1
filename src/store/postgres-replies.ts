// Replies and staff tasks in the PostgreSQL store (store.ts ReplyLedger; the embedded store's
// sqlite-replies.ts): the same tables and rules. An answer takes its prompt inside the commit of
// the SMS that carries it (a row lock: two processes cannot both take one prompt), so an
// answer is never stored without its prompt taken; the SMS's tasks commit with it.
import { SqliteReplyLedger } from './sqlite-replies.ts';
import { listLimit } from './common.ts';
import type { Sql } from './postgres-commit.ts';
import { instantMs } from './common.ts';
import { normalizeAddress } from '../pipeline/consent.ts';
import type { NewStaffTask, ReplyAnswer, ReplyPrompt, StaffTask, StaffTaskStatus } from './store.ts';

/** One append-only migration step of the store (postgres.ts): the tables, and 'sms' messages. */
export const POSTGRES_REPLY_TABLES = `
  CREATE TABLE reply_prompts (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    output TEXT NOT NULL,
    address TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    sent_ms BIGINT NOT NULL,
    closes_ms BIGINT NOT NULL,
    answered BOOLEAN NOT NULL DEFAULT FALSE,
    json TEXT NOT NULL
  );
  CREATE INDEX reply_prompts_open ON reply_prompts (output, address, sent_ms) WHERE NOT answered;
  CREATE INDEX reply_prompts_patient ON reply_prompts (patient_id);

  CREATE TABLE staff_tasks (
    seq BIGSERIAL PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'done')),
    patient_id TEXT,
    json TEXT NOT NULL
  );
  CREATE INDEX staff_tasks_status ON staff_tasks (status, seq);
  CREATE INDEX staff_tasks_patient ON staff_tasks (patient_id) WHERE patient_id IS NOT NULL;

  -- A patient's SMS reply is stored as a message (workers/replies.ts).
  ALTER TABLE messages DROP CONSTRAINT messages_format_check;
  ALTER TABLE messages ADD CONSTRAINT messages_format_check CHECK (format IN ('hl7v2', 'fhir', 'sms'));
`;

/** The checks of the embedded store's ledger (the same rules, before the transaction). */
export const checkPrompt = SqliteReplyLedger.check;
export const checkTask = SqliteReplyLedger.checkTask;

export async function addPrompt(tx: Sql, prompt: ReplyPrompt, checked: ReturnType<typeof checkPrompt>): Promise<boolean> {
  const stored = { ...prompt, address: checked.address };
  delete stored.answer;
  return (
    (await tx.count(
      'INSERT INTO reply_prompts (id, output, address, patient_id, sent_ms, closes_ms, json) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING',
      [prompt.id, prompt.output, checked.address, prompt.patientId, checked.sentMs, checked.closesMs, JSON.stringify(stored)],
    )) > 0
  );
}

export async function openPrompts(sql: Sql, query: { output: string; address: string; at: string }): Promise<ReplyPrompt[]> {
  const atMs = instantMs(query.at, 'at');
  const rows = await sql.rows<{ json: string }>(
    'SELECT json FROM reply_prompts WHERE output = $1 AND address = $2 AND NOT answered AND closes_ms > $3 ORDER BY sent_ms DESC, seq DESC LIMIT 100',
    [query.output, normalizeAddress(query.address), atMs],
  );
  return rows.map((r) => JSON.parse(r.json) as ReplyPrompt);
}

/** Inside a commit: takes the prompt (locked); false when it is unknown or already answered. */
export async function answerPrompt(tx: Sql, promptId: string, answer: ReplyAnswer): Promise<boolean> {
  const [row] = await tx.rows<{ seq: string; json: string; answered: boolean }>('SELECT seq, json, answered FROM reply_prompts WHERE id = $1 FOR UPDATE', [promptId]);
  if (row === undefined || row.answered) return false;
  const prompt = JSON.parse(row.json) as ReplyPrompt;
  return (await tx.count('UPDATE reply_prompts SET answered = TRUE, json = $1 WHERE seq = $2 AND NOT answered', [JSON.stringify({ ...prompt, answer }), row.seq])) > 0;
}

interface TaskRow {
  seq: string;
  status: StaffTaskStatus;
  json: string;
}

function taskFromRow(row: TaskRow): StaffTask {
  const json = JSON.parse(row.json) as NewStaffTask & Pick<StaffTask, 'doneAt' | 'doneBy'>;
  return { ...json, id: `task-${row.seq}`, status: row.status };
}

function taskSeq(id: string): number | undefined {
  const m = /^task-([1-9]\d{0,15})$/.exec(id);
  return m ? Number(m[1]) : undefined;
}

/** Inside a write: the task of this key, opened now or earlier. */
export async function addTask(tx: Sql, task: NewStaffTask): Promise<StaffTask> {
  const [added] = await tx.rows<TaskRow>(
    "INSERT INTO staff_tasks (key, kind, status, patient_id, json) VALUES ($1, $2, 'open', $3, $4) ON CONFLICT (key) DO NOTHING RETURNING seq, status, json",
    [task.key, task.kind, task.patientId ?? null, JSON.stringify(task)],
  );
  if (added !== undefined) return taskFromRow(added);
  const [kept] = await tx.rows<TaskRow>('SELECT seq, status, json FROM staff_tasks WHERE key = $1', [task.key]);
  return taskFromRow(kept!);
}

export async function listTasks(sql: Sql, query: { status?: StaffTaskStatus; limit?: number; before?: string }): Promise<StaffTask[]> {
  let before: number | undefined;
  if (query.before !== undefined) {
    before = taskSeq(query.before);
    if (before === undefined) throw new RangeError(`before must be the id of a staff task (the last id of the previous page), got ${JSON.stringify(query.before)}`);
  }
  const rows = await sql.rows<TaskRow>(
    'SELECT seq, status, json FROM staff_tasks WHERE ($1::text IS NULL OR status = $1) AND ($2::bigint IS NULL OR seq < $2) ORDER BY seq DESC LIMIT $3',
    [query.status ?? null, before ?? null, listLimit(query.limit)],
  );
  return rows.map(taskFromRow);
}

/** Inside a write. */
export async function finishTask(tx: Sql, id: string, done: { at: string; by: string }): Promise<StaffTask | undefined> {
  const seq = taskSeq(id);
  const [row] = seq === undefined ? [] : await tx.rows<TaskRow>('SELECT seq, status, json FROM staff_tasks WHERE seq = $1 FOR UPDATE', [seq]);
  if (row === undefined) return undefined;
  if (row.status === 'done') return taskFromRow(row);
  const task = { ...(JSON.parse(row.json) as NewStaffTask), doneAt: done.at, doneBy: done.by };
  await tx.count("UPDATE staff_tasks SET status = 'done', json = $1 WHERE seq = $2 AND status = 'open'", [JSON.stringify(task), row.seq]);
  return taskFromRow({ seq: row.seq, status: 'done', json: JSON.stringify(task) });
}
