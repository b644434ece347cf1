// The embedded queue: SQLite tables (prefix `queue_`) in the same file as the store
// (docs/architecture.md "Backends"). Everything that matters lives in the file, so a restart or
// a kill -9 loses nothing (open the file with store/sqlite-db.ts openSqliteDatabase: WAL,
// synchronous=FULL, busy timeout): a job taken by a worker carries a lease that the worker renews
// while its handler runs; when the worker vanishes the lease lapses and any instance on the
// file takes the job again (docs/reliability.md promise 4).
//
// Commits. Every write (add, reschedule, cancel, retryDead, take, complete, retry, dead-letter,
// lease renewal and reclaim) goes through a committer. Alone, each write is its own
// transaction. Given the store's group commit (SqliteStore is a SqliteCommitter), the writes
// ride in the store's transactions: one fsync covers a cycle's ingest commits, routing and
// delivery outcomes, and a handler starts only once its take is durable (a crash after a send
// then always finds the job active, so the next run knows it may be a repeat). Due jobs are
// taken in batches, up to the free concurrency, with one write. joinTransaction() gives the
// synchronous operations a store runs inside its own transaction (a routing and its timers).
//
// Costs, with n pending jobs: taking the next due jobs, finding the next due time and
// cancelling by key are each one index probe, O(log n); nothing scans the job table except
// counts() and list() without a state.
import { migrate, type Database } from '../store/sqlite-db.ts';
import { decideFailure, errorCodeOf, failureRecord, normalizeQueueOptions, type NormalizedQueueOptions } from './backoff.ts';
import { checkProcessCall, listArguments, PollLoop, QueueListeners, serializeJobData, settleRunning } from './common.ts';
import {
  JOB_STATES,
  JobState,
  QueueErrorCode,
  toEpochMs,
  validateNewJob,
  type AddResult,
  type JobHandler,
  type JobInfo,
  type JoinedWork,
  type ListFilter,
  type NewJob,
  type ProcessOptions,
  type Queue,
  type QueueEvent,
  type QueueOptions,
  type QueueTransaction,
} from './queue.ts';

/**
 * Commits writes to one database. `write` runs `work` inside a transaction on `db` and
 * resolves with its result once the transaction is durable; when it rejects, nothing `work`
 * did is kept. `work` only touches the database, so it may run again on a retry.
 */
export interface SqliteCommitter {
  readonly db: Database;
  write<R>(work: () => R): Promise<R>;
}

/** Each write in its own transaction, at once (a queue used without the store). */
export function ownTransactions(db: Database): SqliteCommitter {
  return {
    db,
    write<R>(work: () => R): Promise<R> {
      try {
        return Promise.resolve(db.transaction(work).immediate());
      } catch (error) {
        return Promise.reject(error);
      }
    },
  };
}

export interface SqliteQueueOptions extends QueueOptions {
  /** Queue name: several queues can share the tables. Default 'default'. */
  name?: string;
  /**
   * Who commits the queue's writes: default ownTransactions(db). Pass the store
   * (SqliteStore.committer) so queue writes share its group commit; it must be on the same db.
   */
  committer?: SqliteCommitter;
  /**
   * Runs inside the write that dead-letters a job (a permanent failure, attempts used up, or
   * a lapsed lease on its last attempt), so what it writes commits with the job's new state:
   * the delivery worker marks the delivery failed there. The 'dead' event follows the commit.
   */
  onDeadLetter?: (job: { id: string; attempt: number; code: string }) => void;
  /**
   * Runs inside the write that parks a job (an ambiguous failure of a non-idempotent job), so
   * what it writes commits with the job's new state: the delivery worker marks the delivery
   * `review` there. The 'parked' event follows the commit.
   */
  onParked?: (job: { id: string; attempt: number; code: string }) => void;
}

/**
 * The queue's schema, as append-only migration steps (store/sqlite-db.ts `migrate`,
 * component 'queue'): never edit a released step, add one.
 */
export const QUEUE_MIGRATIONS: readonly string[] = [
  `CREATE TABLE queue_jobs (
     seq           INTEGER PRIMARY KEY,
     queue         TEXT    NOT NULL,
     id            TEXT    NOT NULL,
     state         TEXT    NOT NULL CHECK (state IN ('pending','active','done','cancelled','parked','dead')),
     data          TEXT    NOT NULL,          -- JSON
     run_at        INTEGER NOT NULL,          -- epoch ms: due time (first run or retry)
     attempts      INTEGER NOT NULL DEFAULT 0,
     max_attempts  INTEGER NOT NULL,
     idempotent    INTEGER NOT NULL,
     cancel_keys   TEXT    NOT NULL,          -- JSON array, for reading back; lookups use queue_cancel_keys
     lease_owner   TEXT,                      -- token of the take that holds the job
     lease_until   INTEGER,                   -- epoch ms; active jobs only
     error_class   TEXT,
     error_code    TEXT,
     cancel_reason TEXT,
     created_at    INTEGER NOT NULL,
     updated_at    INTEGER NOT NULL,
     UNIQUE (queue, id)
   );
   -- Next due job and next due time: one probe. Ties run in insertion order (seq).
   CREATE INDEX queue_jobs_due ON queue_jobs (queue, state, run_at);
   -- Lapsed leases: only active jobs are indexed, so this stays tiny.
   CREATE INDEX queue_jobs_lease ON queue_jobs (queue, lease_until) WHERE state = 'active';
   -- cancel(key): one probe per key, whatever the number of pending jobs.
   CREATE TABLE queue_cancel_keys (
     queue   TEXT    NOT NULL,
     key     TEXT    NOT NULL,
     job_seq INTEGER NOT NULL,
     PRIMARY KEY (queue, key, job_seq)
   ) WITHOUT ROWID;`,
  // Runs that are not attempts (deferred, rate-limited: backoff.ts) and the start of the retry
  // span (the first failure since the job was added or replayed, epoch ms).
  `ALTER TABLE queue_jobs ADD COLUMN free_runs INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE queue_jobs ADD COLUMN first_failed_at INTEGER;`,
];

/** Create or update the queue tables. Safe on every start; one transaction. */
export function migrateQueueSchema(db: Database): void {
  migrate(db, 'queue', QUEUE_MIGRATIONS);
}

interface JobRow {
  seq: number;
  id: string;
  state: JobState;
  data: string;
  run_at: number;
  attempts: number;
  max_attempts: number;
  idempotent: number;
  cancel_keys: string;
  error_class: string | null;
  error_code: string | null;
  cancel_reason: string | null;
  created_at: number;
  updated_at: number;
  free_runs: number;
  first_failed_at: number | null;
}

interface TakenRow {
  seq: number;
  run_at: number;
  id: string;
  data: string;
  attempts: number;
  max_attempts: number;
  idempotent: number;
  error_code: string | null;
  free_runs: number;
  first_failed_at: number | null;
}

/** A job checked and serialized, ready to insert. */
interface PreparedJob {
  job: NewJob<unknown>;
  runAtMs: number;
  data: string;
  keys: string[];
}

type NextDue = { run: number | null; lease: number | null };

interface Running {
  seq: number;
  id: string;
  /** The job's attempts after this take: the take's fencing token (see `take`). */
  attempt: number;
  controller: AbortController;
  settled: Promise<void>;
}

const JOB_COLUMNS =
  'seq, id, state, data, run_at, attempts, max_attempts, idempotent, cancel_keys, error_class, error_code, cancel_reason, created_at, updated_at, free_runs, first_failed_at';

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

export class SqliteQueue<T> implements Queue<T> {
  readonly name: string;
  private readonly db: Database;
  private readonly committer: SqliteCommitter;
  private readonly onDeadLetter: SqliteQueueOptions['onDeadLetter'];
  private readonly onParked: SqliteQueueOptions['onParked'];
  private readonly opts: NormalizedQueueOptions;

  private handler: JobHandler<T> | undefined;
  private concurrency = 0;
  private closing = false;
  private closed: Promise<void> | undefined;
  private readonly running = new Map<number, Running>();
  private readonly listeners = new QueueListeners();
  /** The poll (one round at a time). */
  private readonly polls = new PollLoop<NextDue>({
    canRun: () => this.handler !== undefined && !this.closing,
    round: () => this.pollOnce(),
    // SQLITE_BUSY past the busy timeout, disk full…: keep the process up and try again.
    failed: (error) => this.emit({ type: 'error', code: errorCodeOf(error), message: 'queue poll failed' }),
    done: (next) => this.armPollTimer(next),
    busy: () => this.running.size > 0,
  });
  private pollTimer: NodeJS.Timeout | undefined;
  private renewTimer: NodeJS.Timeout | undefined;

  private readonly stmt: ReturnType<SqliteQueue<T>['prepare']>;
  /** The synchronous operations joinTransaction hands out. */
  private readonly tx: QueueTransaction<T>;

  constructor(db: Database, options: SqliteQueueOptions = {}) {
    this.db = db;
    this.name = options.name ?? 'default';
    this.opts = normalizeQueueOptions(options);
    this.committer = options.committer ?? ownTransactions(db);
    this.onDeadLetter = options.onDeadLetter;
    this.onParked = options.onParked;
    if (this.committer.db !== db) throw new Error(`queue ${this.name}: the committer must write to the queue's own database`);
    migrateQueueSchema(db);
    this.stmt = this.prepare();
    this.tx = {
      add: (job) => this.insert(this.prepareJob(job)),
      reschedule: (id, runAt, data) => this.move(id, toEpochMs(runAt, `queue.reschedule(${JSON.stringify(id)})`), data === undefined ? null : serializeJobData(data, `queue.reschedule(${JSON.stringify(id)})`)),
      cancel: (key, reason) => this.stmt.cancel.run({ queue: this.name, key, reason: reason ?? null, now: this.opts.now() }).changes,
      state: (id) => this.stmt.state.get(this.name, id)?.state,
    };
  }

  private prepare() {
    const db = this.db;
    return {
      insert: db.prepare<[string, string, string, number, number, number, string, number, number], { seq: number }>(
        `INSERT INTO queue_jobs (queue, id, state, data, run_at, max_attempts, idempotent, cancel_keys, created_at, updated_at)
         VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (queue, id) DO NOTHING
         RETURNING seq`,
      ),
      insertKey: db.prepare<[string, string, number]>(
        'INSERT OR IGNORE INTO queue_cancel_keys (queue, key, job_seq) VALUES (?, ?, ?)',
      ),
      // Up to @limit due jobs in one write, earliest first (the caller sorts what RETURNING gives).
      // The take's token is the job's new attempts count: every take adds one, and nothing else
      // changes it while the job is active, so the run that holds the lease is the one whose
      // attempt is the row's (renew, complete and fail check it). Nothing is written for it: a
      // row that grows in a full page splits the page. (lease_owner is only cleared: a token
      // written by an older version.)
      take: db.prepare<{ queue: string; now: number; leaseUntil: number; limit: number }, TakenRow>(
        `UPDATE queue_jobs
            SET state = 'active', attempts = attempts + 1, lease_owner = NULL, lease_until = @leaseUntil, updated_at = @now
          WHERE seq IN (SELECT seq FROM queue_jobs
                         WHERE queue = @queue AND state = 'pending' AND run_at <= @now
                         ORDER BY run_at LIMIT @limit)
         RETURNING seq, run_at, id, data, attempts, max_attempts, idempotent, error_code, free_runs, first_failed_at`,
      ),
      // A lapsed lease: the worker vanished. Back to pending at once, or dead when it has
      // used all its attempts (a job that kills its worker every time must not loop forever).
      // The lost run counts as an attempt and starts the retry span.
      reclaim: db.prepare<{ queue: string; now: number }, { id: string; state: JobState; attempts: number }>(
        `UPDATE queue_jobs
            SET state = CASE WHEN attempts - free_runs >= max_attempts THEN 'dead' ELSE 'pending' END,
                run_at = lease_until, lease_owner = NULL, lease_until = NULL,
                error_class = '${QueueErrorCode.LeaseExpired}', error_code = '${QueueErrorCode.LeaseExpired}',
                first_failed_at = COALESCE(first_failed_at, @now),
                updated_at = @now
          WHERE queue = @queue AND state = 'active' AND lease_until <= @now
         RETURNING id, state, attempts`,
      ),
      // The poll: one read answering "when is the next job due, when does the next lease
      // lapse" from the two indexes. Only when something is due does a write (take/reclaim)
      // follow, so an idle poll never holds the file's write lock.
      next: db.prepare<[string, string], NextDue>(
        `SELECT (SELECT MIN(run_at) FROM queue_jobs WHERE queue = ? AND state = 'pending') AS run,
                (SELECT MIN(lease_until) FROM queue_jobs WHERE queue = ? AND state = 'active') AS lease`,
      ),
      renew: db.prepare<[number, number, number, number]>(
        `UPDATE queue_jobs SET lease_until = ?, updated_at = ? WHERE seq = ? AND state = 'active' AND attempts = ?`,
      ),
      complete: db.prepare<[number, number, number]>(
        `UPDATE queue_jobs SET state = 'done', lease_owner = NULL, lease_until = NULL, updated_at = ?
          WHERE seq = ? AND state = 'active' AND attempts = ?`,
      ),
      // A run that did not succeed. @errorClass/@errorCode NULL (a plain deferral) keep the
      // last error; @free counts a run that was not an attempt; @failed starts the retry span.
      fail: db.prepare<{
        state: JobState;
        runAt: number | null;
        errorClass: string | null;
        errorCode: string | null;
        free: number;
        failed: number;
        now: number;
        seq: number;
        attempt: number;
      }>(
        `UPDATE queue_jobs
            SET state = @state, run_at = COALESCE(@runAt, run_at),
                error_class = COALESCE(@errorClass, error_class), error_code = COALESCE(@errorCode, error_code),
                free_runs = free_runs + @free,
                first_failed_at = CASE WHEN @failed = 1 THEN COALESCE(first_failed_at, @now) ELSE first_failed_at END,
                lease_owner = NULL, lease_until = NULL, updated_at = @now
          WHERE seq = @seq AND state = 'active' AND attempts = @attempt`,
      ),
      cancel: db.prepare<{ queue: string; key: string; reason: string | null; now: number }>(
        `UPDATE queue_jobs SET state = 'cancelled', cancel_reason = @reason, updated_at = @now
          WHERE seq IN (SELECT job_seq FROM queue_cancel_keys WHERE queue = @queue AND key = @key
                        UNION ALL SELECT seq FROM queue_jobs WHERE queue = @queue AND id = @key)
            AND state = 'pending'`,
      ),
      reschedule: db.prepare<{ queue: string; id: string; runAt: number; data: string | null; now: number }>(
        `UPDATE queue_jobs SET run_at = @runAt, data = COALESCE(@data, data), updated_at = @now
          WHERE queue = @queue AND id = @id AND state = 'pending'`,
      ),
      retryDead: db.prepare<{ queue: string; id: string; now: number }>(
        `UPDATE queue_jobs SET state = 'pending', run_at = @now, max_attempts = attempts - free_runs + 1,
                first_failed_at = NULL, updated_at = @now
          WHERE queue = @queue AND id = @id AND state IN ('dead', 'parked')`,
      ),
      get: db.prepare<[string, string], JobRow>(`SELECT ${JOB_COLUMNS} FROM queue_jobs WHERE queue = ? AND id = ?`),
      state: db.prepare<[string, string], { state: JobState }>('SELECT state FROM queue_jobs WHERE queue = ? AND id = ?'),
      counts: db.prepare<[string], { state: JobState; n: number }>(
        'SELECT state, COUNT(*) AS n FROM queue_jobs WHERE queue = ? GROUP BY state',
      ),
    };
  }

  // ── adding and changing jobs ───────────────────────────────────────────────────────

  async add(job: NewJob<T>): Promise<AddResult> {
    const [result] = await this.addMany([job]);
    return result!;
  }

  async addMany(jobs: NewJob<T>[]): Promise<AddResult[]> {
    // Every job is checked before anything is written: one bad job adds none.
    const prepared = jobs.map((job) => this.prepareJob(job));
    const results = await this.committer.write(() => prepared.map((p) => this.insert(p)));
    if (results.includes('added')) this.wake();
    return results;
  }

  joinTransaction(ops: (tx: QueueTransaction<T>) => void): JoinedWork {
    return { database: this.db, run: () => ops(this.tx), committed: () => this.wake() };
  }

  private prepareJob(job: NewJob<T>): PreparedJob {
    const { runAtMs } = validateNewJob(job);
    const data = serializeJobData(job.data, `queue.add(${JSON.stringify(job.id)})`);
    return { job, runAtMs, data, keys: [...new Set(job.cancelKeys ?? [])] };
  }

  private insert(p: PreparedJob): AddResult {
    const now = this.opts.now();
    const row = this.stmt.insert.get(
      this.name,
      p.job.id,
      p.data,
      p.runAtMs,
      p.job.maxAttempts ?? this.opts.retry.maxAttempts,
      p.job.idempotent ? 1 : 0,
      JSON.stringify(p.keys),
      now,
      now,
    );
    if (!row) return 'duplicate';
    for (const key of p.keys) this.stmt.insertKey.run(this.name, key, row.seq);
    return 'added';
  }

  private move(id: string, runAtMs: number, data: string | null): boolean {
    return this.stmt.reschedule.run({ queue: this.name, id, runAt: runAtMs, data, now: this.opts.now() }).changes > 0;
  }

  async reschedule(id: string, runAt: Date | string, data?: T): Promise<boolean> {
    const runAtMs = toEpochMs(runAt, `queue.reschedule(${JSON.stringify(id)})`);
    const json = data === undefined ? null : serializeJobData(data, `queue.reschedule(${JSON.stringify(id)})`);
    const moved = await this.committer.write(() => this.move(id, runAtMs, json));
    if (moved) this.wake();
    return moved;
  }

  async cancel(key: string, reason?: string): Promise<number> {
    return this.committer.write(() => this.tx.cancel(key, reason));
  }

  async retryDead(id: string): Promise<boolean> {
    const changed = await this.committer.write(() => this.stmt.retryDead.run({ queue: this.name, id, now: this.opts.now() }).changes);
    if (changed > 0) this.wake();
    return changed > 0;
  }


  // ── reading ─────────────────────────────────────────────────────────────────────────

  async get(id: string): Promise<JobInfo<T> | undefined> {
    const row = this.stmt.get.get(this.name, id);
    return row ? this.toInfo(row) : undefined;
  }

  async list(filter: ListFilter = {}): Promise<JobInfo<T>[]> {
    const { limit, states } = listArguments(filter);
    const columns = JOB_COLUMNS.split(', ').map((c) => `j.${c}`).join(', ');
    let sql: string;
    const params: (string | number)[] = [];
    if (filter.cancelKey !== undefined) {
      // CROSS JOIN keeps the key table as the outer loop: a key has few jobs, a state many.
      sql = `SELECT ${columns} FROM queue_cancel_keys k CROSS JOIN queue_jobs j ON j.seq = k.job_seq
              WHERE k.queue = ? AND k.key = ? AND j.queue = ?`;
      params.push(this.name, filter.cancelKey, this.name);
    } else {
      sql = `SELECT ${columns} FROM queue_jobs j WHERE j.queue = ?`;
      params.push(this.name);
    }
    if (states.length > 0) {
      sql += ` AND j.state IN (${states.map(() => '?').join(', ')})`;
      params.push(...states);
    }
    sql += ' ORDER BY j.run_at, j.seq LIMIT ?';
    params.push(limit);
    return this.db
      .prepare<(string | number)[], JobRow>(sql)
      .all(...params)
      .map((row) => this.toInfo(row));
  }

  async counts(): Promise<Record<JobState, number>> {
    const counts = Object.fromEntries(JOB_STATES.map((s) => [s, 0])) as Record<JobState, number>;
    for (const { state, n } of this.stmt.counts.all(this.name)) counts[state] = n;
    return counts;
  }

  private toInfo(row: JobRow): JobInfo<T> {
    const info: JobInfo<T> = {
      id: row.id,
      data: JSON.parse(row.data) as T,
      state: row.state,
      attempts: row.attempts,
      deferrals: row.free_runs,
      maxAttempts: row.max_attempts,
      idempotent: row.idempotent === 1,
      runAt: iso(row.run_at),
      cancelKeys: JSON.parse(row.cancel_keys) as string[],
      createdAt: iso(row.created_at),
      updatedAt: iso(row.updated_at),
    };
    if (row.error_code !== null) info.lastError = { failureClass: row.error_class ?? 'transient', code: row.error_code };
    if (row.cancel_reason !== null) info.cancelReason = row.cancel_reason;
    if (row.first_failed_at !== null) info.retryUntil = iso(row.first_failed_at + this.opts.retry.spanMs);
    return info;
  }

  subscribe(listener: (event: QueueEvent) => void): () => void {
    return this.listeners.subscribe(listener);
  }

  private emit(event: QueueEvent): void {
    this.listeners.emit(event);
  }

  // ── processing ──────────────────────────────────────────────────────────────────────

  process(handler: JobHandler<T>, options: ProcessOptions): void {
    checkProcessCall(this.name, { started: this.handler !== undefined, closing: this.closing }, options);
    this.handler = handler;
    this.concurrency = options.concurrency;
    void this.pump();
  }

  poke(): Promise<void> {
    return this.pump();
  }

  idle(): Promise<void> {
    return this.polls.idle();
  }

  /** Something changed in this instance: look again now rather than at the next timer. */
  private wake(): void {
    if (this.handler && !this.closing) void this.pump();
  }

  /** Take due jobs up to the concurrency limit, then arm the timer for the next due time. */
  private pump(): Promise<void> {
    return this.polls.run();
  }

  /** One round: give lapsed leases back, take what is due (one write), read the next due time. */
  private async pollOnce(): Promise<NextDue> {
    const now = this.opts.now();
    let next = this.stmt.next.get(this.name, this.name)!;
    if (next.lease !== null && next.lease <= now) {
      const reclaimed = await this.committer.write(() => {
        const rows = this.stmt.reclaim.all({ queue: this.name, now });
        for (const row of rows) {
          if (row.state === JobState.Dead) this.onDeadLetter?.({ id: row.id, attempt: row.attempts, code: QueueErrorCode.LeaseExpired });
        }
        return rows;
      });
      for (const row of reclaimed) {
        if (row.state === JobState.Dead) {
          this.emit({ type: 'dead', id: row.id, attempt: row.attempts, code: QueueErrorCode.LeaseExpired });
        } else {
          this.emit({ type: 'retry', id: row.id, attempt: row.attempts, code: QueueErrorCode.LeaseExpired, runAt: iso(now) });
        }
      }
      next = this.stmt.next.get(this.name, this.name)!;
    }
    const free = this.concurrency - this.running.size;
    if (free > 0 && !this.closing && next.run !== null && next.run <= now) {
      const rows = await this.committer.write(() => this.stmt.take.all({ queue: this.name, now, leaseUntil: now + this.opts.leaseMs, limit: free }));
      rows.sort((a, b) => a.run_at - b.run_at || a.seq - b.seq);
      // Taken (durably) even when close() began meanwhile: close waits for the poll first.
      for (const row of rows) this.start(row);
      // More may be due than there was room for, or than another instance left: look again.
      // Nothing taken (another instance holds the write lock): the timer looks again.
      if (rows.length > 0) this.polls.more();
      next = this.stmt.next.get(this.name, this.name)!;
    }
    return next;
  }

  /** Sleep until the next due time or lease end, at most maxPollIntervalMs (other writers). */
  private armPollTimer(next: NextDue | undefined): void {
    if (this.pollTimer) clearTimeout(this.pollTimer);
    this.pollTimer = undefined;
    if (this.closing || this.running.size >= this.concurrency) return; // a finishing handler pumps
    let delay = this.opts.maxPollIntervalMs;
    if (next) {
      const now = this.opts.now();
      for (const t of [next.run, next.lease]) {
        // Already due but not taken (another instance holds the write lock): look again
        // shortly rather than spin.
        if (t !== null) delay = Math.min(delay, Math.max(t - now, 5));
      }
    }
    this.pollTimer = setTimeout(() => void this.pump(), delay);
    this.pollTimer.unref();
  }

  private start(row: TakenRow): void {
    const handler = this.handler!;
    const controller = new AbortController();
    const attempt = row.attempts;
    const job: Running = { seq: row.seq, id: row.id, attempt, controller, settled: Promise.resolve() };
    this.running.set(row.seq, job);
    this.armRenewTimer();
    this.emit({ type: 'started', id: row.id, attempt });
    job.settled = (async () => {
      let outcome: { ok: true } | { ok: false; error: unknown };
      try {
        // Parsing inside the try: unreadable data fails this job, not the poller.
        const data = JSON.parse(row.data) as T;
        await handler({
          id: row.id,
          data,
          attempt,
          ...(row.error_code !== null ? { previousError: row.error_code } : {}),
          signal: controller.signal,
        });
        outcome = { ok: true };
      } catch (error) {
        outcome = { ok: false, error };
      }
      await this.finish(job, outcome, row);
    })();
  }

  /**
   * Records a job's outcome (complete, retry, park or dead-letter) through the committer:
   * outcomes of jobs that end together share a commit.
   */
  private async finish(job: Running, outcome: { ok: true } | { ok: false; error: unknown }, row: TakenRow): Promise<void> {
    const now = this.opts.now();
    try {
      if (outcome.ok) {
        const changed = await this.committer.write(() => this.stmt.complete.run(now, job.seq, job.attempt).changes);
        this.emit(changed > 0 ? { type: 'done', id: job.id, attempt: job.attempt } : { type: 'lease-lost', id: job.id, attempt: job.attempt });
      } else {
        const interrupted = this.closing && job.controller.signal.aborted;
        const decision = decideFailure(
          outcome.error,
          {
            attempt: job.attempt - row.free_runs,
            maxAttempts: row.max_attempts,
            idempotent: row.idempotent === 1,
            ...(row.first_failed_at !== null ? { firstFailedAtMs: row.first_failed_at } : {}),
          },
          this.opts.retry,
          now,
          this.opts.random,
          interrupted,
        );
        const state =
          decision.next === 'retry' || decision.next === 'deferred' ? JobState.Pending : decision.next === 'parked' ? JobState.Parked : JobState.Dead;
        const record = failureRecord(decision, outcome.error);
        const { code } = record;
        const params = {
          state,
          runAt: record.runAtMs ?? null,
          errorClass: record.failure?.failureClass ?? null,
          errorCode: record.failure?.code ?? null,
          free: record.free ? 1 : 0,
          failed: record.startsSpan ? 1 : 0,
          now,
          seq: job.seq,
          attempt: job.attempt,
        };
        const changed = await this.committer.write(() => {
          const n = this.stmt.fail.run(params).changes;
          if (n > 0 && state === JobState.Dead) this.onDeadLetter?.({ id: job.id, attempt: job.attempt, code });
          if (n > 0 && state === JobState.Parked) this.onParked?.({ id: job.id, attempt: job.attempt, code });
          return n;
        });
        if (changed === 0) this.emit({ type: 'lease-lost', id: job.id, attempt: job.attempt });
        else if (decision.next === 'retry') {
          this.emit({ type: 'retry', id: job.id, attempt: job.attempt, code, runAt: iso(decision.runAtMs) });
        } else if (decision.next === 'deferred') {
          this.emit({ type: 'deferred', id: job.id, attempt: job.attempt, code, runAt: iso(decision.runAtMs) });
        } else this.emit({ type: decision.next, id: job.id, attempt: job.attempt, code });
      }
    } catch (error) {
      // The outcome could not be written: the lease lapses and the job runs again
      // (at least once, never lost).
      this.emit({ type: 'error', code: errorCodeOf(error), message: 'queue could not record a job outcome' });
    }
    this.running.delete(job.seq);
    if (this.running.size === 0) this.stopRenewTimer();
    void this.pump();
    if (this.closing && this.running.size === 0) this.polls.resolveIdle();
  }

  /** One timer renews every lease this instance holds (one small write per tick). */
  private armRenewTimer(): void {
    if (this.renewTimer) return;
    this.renewTimer = setInterval(() => void this.renewLeases(), this.opts.leaseRenewMs);
    this.renewTimer.unref();
  }

  private stopRenewTimer(): void {
    if (this.renewTimer) clearInterval(this.renewTimer);
    this.renewTimer = undefined;
  }

  /**
   * Extend the lease of every job this instance is running to now + leaseMs; a job whose
   * lease another instance took over gets its signal aborted. Runs on a timer every
   * leaseRenewMs; public so a test with a fake clock can run it at a chosen instant (alone,
   * without the store's committer, the write is made before this returns).
   */
  async renewLeases(): Promise<void> {
    const now = this.opts.now();
    const jobs = [...this.running.values()];
    if (jobs.length === 0) return;
    try {
      const lost = await this.committer.write(() =>
        jobs.filter((job) => this.stmt.renew.run(now + this.opts.leaseMs, now, job.seq, job.attempt).changes === 0),
      );
      // Another instance took these over (our lease lapsed): stop the work if it listens.
      for (const job of lost) job.controller.abort(new Error('queue lease lost'));
    } catch (error) {
      this.emit({ type: 'error', code: errorCodeOf(error), message: 'queue could not renew leases' });
    }
  }

  async close(options: { graceMs?: number } = {}): Promise<void> {
    if (this.closed) return this.closed;
    this.closing = true;
    if (this.pollTimer) clearTimeout(this.pollTimer);
    this.pollTimer = undefined;
    const graceMs = options.graceMs ?? 10_000;
    this.closed = (async () => {
      // A take under way starts its jobs: they are waited for like the others.
      await this.polls.current;
      await settleRunning(() => this.running.values(), graceMs);
      this.stopRenewTimer();
      this.polls.resolveIdle();
    })();
    return this.closed;
  }
}

export function createSqliteQueue<T>(db: Database, options: SqliteQueueOptions = {}): SqliteQueue<T> {
  return new SqliteQueue<T>(db, options);
}

/**
 * Retention of finished jobs (workers/retention.ts, "done jobs"): one batch over every queue of
 * the file, oldest first — up to `limit` jobs created before `beforeMs`, of which those done or
 * cancelled before it are deleted with their cancel keys (only counted with dryRun). Dead and
 * parked jobs wait for a person and are kept, as are pending and active ones. `after` / `next`:
 * where the walk stands (a job seq); `next` absent when no job older than the cutoff is left.
 */
export async function pruneFinishedJobs(
  committer: SqliteCommitter,
  beforeMs: number,
  options: { limit: number; after?: string; dryRun?: boolean },
): Promise<{ removed: number; next?: string }> {
  const db = committer.db;
  migrateQueueSchema(db);
  const work = () => {
    const rows = db
      .prepare('SELECT seq, queue, state, cancel_keys, created_at, updated_at FROM queue_jobs WHERE seq > ? ORDER BY seq LIMIT ?')
      .all(Number(options.after ?? 0), Math.max(1, Math.trunc(options.limit))) as Array<{ seq: number; queue: string; state: JobState; cancel_keys: string; created_at: number; updated_at: number }>;
    const deleteKey = db.prepare('DELETE FROM queue_cancel_keys WHERE queue = ? AND key = ? AND job_seq = ?');
    const deleteJob = db.prepare('DELETE FROM queue_jobs WHERE seq = ?');
    let removed = 0;
    for (const row of rows) {
      // Jobs are numbered as they are added: past the cutoff, every later one is newer.
      if (row.created_at >= beforeMs) return { removed };
      if ((row.state !== JobState.Done && row.state !== JobState.Cancelled) || row.updated_at >= beforeMs) continue;
      removed++;
      if (options.dryRun) continue;
      for (const key of JSON.parse(row.cancel_keys) as string[]) deleteKey.run(row.queue, key, row.seq);
      deleteJob.run(row.seq);
    }
    return { removed, ...(rows.length === options.limit ? { next: String(rows[rows.length - 1]!.seq) } : {}) };
  };
  return options.dryRun ? work() : committer.write(work);
}
