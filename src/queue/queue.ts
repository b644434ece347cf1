// The Queue interface (docs/architecture.md "Interfaces", invariant 4). Workers see only this;
// the embedded SQLite backend (sqlite.ts) implements it, and so must the Redis/BullMQ one to
// come; both pass one conformance suite (conformance.ts). Nothing here may assume a
// particular backend.
//
// What a job's failure means is decided here, not by the code that failed (docs/contributing.md habit 4):
//   resolve                          → done
//   TransientError / unclassified    → retried with backoff (never before retryAfterMs),
//                                      dead once the retry span (RetryPolicy.spanMs) is over
//                                      or after maxAttempts, with the last code
//   RateLimitedError                 → retried no sooner than its retryAfterMs without using
//                                      up an attempt (within the span)
//   AmbiguousError                   → retried like a transient failure when the job is
//                                      idempotent, otherwise parked for review (a duplicate
//                                      message to a patient is a real harm)
//   PermanentError                   → dead now, with its code
//   Deferral (thrown by the handler) → pending again until its runAt, not an attempt (a local
//                                      rate limit, a busy or failing output); dead once the
//                                      span is over only when the deferral counts in it
//   worker vanished (lease expired)  → taken again with attempt + 1 and
//                                      previousError 'lease_expired' (docs/reliability.md #4)

export const JobState = {
  /** Waiting for its run time (first run or a retry). */
  Pending: 'pending',
  /** Held by a worker under a lease. */
  Active: 'active',
  Done: 'done',
  /** Removed by cancel(key) before it ran. */
  Cancelled: 'cancelled',
  /** An ambiguous failure of a non-idempotent job: waits for a person (retryDead). */
  Parked: 'parked',
  /** Permanent failure or attempts exhausted: waits for a person (retryDead). */
  Dead: 'dead',
} as const;
export type JobState = (typeof JobState)[keyof typeof JobState];
export const JOB_STATES: readonly JobState[] = Object.values(JobState);

/**
 * Error codes the queue itself records (handlers' codes come from their errors.ts classes).
 * Safe to log: reason codes only.
 */
export const QueueErrorCode = {
  /** The worker holding the job stopped renewing its lease (crash, kill -9, hang). */
  LeaseExpired: 'lease_expired',
  /** The handler threw something that is not an Error with a code. */
  Unclassified: 'unclassified',
  /** The handler failed after close() aborted it: retried without backoff. */
  Interrupted: 'interrupted',
} as const;
export type QueueErrorCode = (typeof QueueErrorCode)[keyof typeof QueueErrorCode];

/**
 * Thrown by a handler to put its job back, pending, until `runAt`: the run does not count as
 * an attempt and leaves the job's last error as it was. For waits that are not the job's own
 * failure: a local rate limit, an output's concurrency cap (delivery engine, workers/output-gate.ts).
 * With `inSpan` the wait is a failure of where the job goes (an output whose circuit is open):
 * it starts the job's retry span like a failure, is recorded as its last error (`code`, class
 * transient), and once the span is over the job is dead with `code`. BullMQ's equivalent is
 * `job.moveToDelayed()` + `DelayedError`, which does not count an attempt either.
 */
export class Deferral extends Error {
  readonly runAtMs: number;
  /** Reason code (allow-listed, safe to log). */
  readonly code: string;
  readonly inSpan: boolean;

  constructor(runAt: number | Date, code: string, options: { inSpan?: boolean } = {}) {
    super(`deferred (${code})`);
    this.name = 'Deferral';
    this.runAtMs = typeof runAt === 'number' ? runAt : runAt.getTime();
    this.code = code;
    this.inSpan = options.inSpan ?? false;
  }
}

/** A job to add. `data` must survive JSON (it is stored, possibly in another process). */
export interface NewJob<T> {
  /**
   * Deterministic id (e.g. delivery id = trigger id + rule id): adding the same id again is
   * refused with 'duplicate', whatever state the first one is in.
   */
  id: string;
  data: T;
  /** Not run before this instant. A string must be ISO 8601 with a zone (`Z` or `±hh:mm`). */
  runAt: Date | string;
  /**
   * cancel(key) cancels every pending job carrying the key (e.g. `appointment:123`). A job's
   * own id always counts as one of its keys, without being listed: a caller that knows the
   * id needs no key (and no storage for one).
   */
  cancelKeys?: string[];
  /** Safe to repeat after an ambiguous failure (the receiver dedupes on the job id). */
  idempotent?: boolean;
  /** Total attempts including the first; defaults to the queue's retry policy. */
  maxAttempts?: number;
}

export type AddResult = 'added' | 'duplicate';

export interface JobContext<T> {
  id: string;
  data: T;
  /**
   * 1-based; counts every time a worker took the job, including runs lost to a crash and
   * deferred or rate-limited runs (which do not use up an attempt): two runs of a job never
   * share a number.
   */
  attempt: number;
  /**
   * Code of the previous attempt's failure, if any. 'lease_expired' means the previous
   * worker vanished mid-run: the job may already have had its effect, so a sender should
   * check its own ledger or rely on an idempotency key before sending again.
   */
  previousError?: string;
  /** Aborted when the queue closes or this worker lost the job's lease. */
  signal: AbortSignal;
}

export type JobHandler<T> = (job: JobContext<T>) => Promise<unknown>;

export interface ProcessOptions {
  /** Maximum handlers running at once in this queue instance (≥ 1). */
  concurrency: number;
}

export interface JobError {
  /** 'transient' | 'ambiguous' | 'permanent' (errors.ts FailureClass) or 'lease_expired'. */
  failureClass: string;
  /** Reason code (allow-listed, safe to log). */
  code: string;
}

export interface JobInfo<T> {
  id: string;
  data: T;
  state: JobState;
  /** Runs started so far (every take, deferred and rate-limited ones included). */
  attempts: number;
  /**
   * Runs that did not count as attempts (deferred, rate-limited, interrupted by a shutdown):
   * attempts − deferrals is what maxAttempts limits.
   */
  deferrals: number;
  maxAttempts: number;
  idempotent: boolean;
  /** ISO 8601 UTC: when it is (or was last) due. */
  runAt: string;
  cancelKeys: string[];
  lastError?: JobError;
  /**
   * ISO 8601 UTC: when the retry span ends (spanMs after the first failure since the job was
   * added or replayed); absent until it first failed.
   */
  retryUntil?: string;
  /** Reason given to cancel(), when cancelled. */
  cancelReason?: string;
  createdAt: string;
  updatedAt: string;
}

export interface ListFilter {
  state?: JobState | JobState[];
  cancelKey?: string;
  /** Default 100, at most 1,000. Sorted by runAt, then insertion order. */
  limit?: number;
}

/** Events for metrics and the admin view. Ids and codes only: never job data. */
export type QueueEvent =
  | { type: 'started'; id: string; attempt: number }
  | { type: 'done'; id: string; attempt: number }
  | { type: 'retry'; id: string; attempt: number; code: string; runAt: string }
  /** The handler put the job back (Deferral): pending until runAt, not an attempt. */
  | { type: 'deferred'; id: string; attempt: number; code: string; runAt: string }
  | { type: 'parked'; id: string; attempt: number; code: string }
  | { type: 'dead'; id: string; attempt: number; code: string }
  /** The handler finished after another worker took the job over: its result was ignored. */
  | { type: 'lease-lost'; id: string; attempt: number }
  /** The queue's own storage failed while polling or recording (it keeps trying). */
  | { type: 'error'; code: string; message: string };

export interface RetryPolicy {
  /** First retry ceiling, ms. */
  baseMs: number;
  /** Largest ceiling, ms. */
  capMs: number;
  /**
   * How long a job is retried after its first failure, ms: no retry starts later than this
   * (the last one at its end), then the job is dead with its last code.
   */
  spanMs: number;
  /** Counted attempts including the first (rate-limited and deferred runs do not count). */
  maxAttempts: number;
}

/** Options every backend accepts, normalized by normalizeQueueOptions(). */
export interface QueueOptions {
  /** Clock in epoch ms; injected by tests. Default Date.now. */
  now?: () => number;
  /** How long a taken job stays reserved without a renewal, ms. Default 30,000. */
  leaseMs?: number;
  /** Real-time interval between lease renewals while a handler runs, ms. Default leaseMs / 3. */
  leaseRenewMs?: number;
  /** Backoff and attempt limits; see backoff.ts for the default policy and its totals. */
  retry?: Partial<RetryPolicy>;
  /** Jitter source in [0, 1); injected by tests. Default Math.random. */
  random?: () => number;
  /**
   * Longest real-time wait between polls, ms, so jobs added by another process or a clock
   * jump are noticed. Default 1,000.
   */
  maxPollIntervalMs?: number;
}

/**
 * Synchronous queue operations inside a transaction that another component of the same
 * database opened (Queue.joinTransaction): they take effect, or not, with that transaction.
 */
export interface QueueTransaction<T> {
  /** As Queue.add. */
  add(job: NewJob<T>): AddResult;
  /** As Queue.reschedule. */
  reschedule(id: string, runAt: Date | string, data?: T): boolean;
  /** As Queue.cancel. */
  cancel(key: string, reason?: string): number;
  /** The job's state; undefined when no job has the id. */
  state(id: string): JobState | undefined;
}

/** Queue work for a store to run inside one of its own transactions (Queue.joinTransaction). */
export interface JoinedWork {
  /** The database the work must run in: a store accepts the work only on its own database. */
  readonly database: object;
  /** Runs inside the transaction. Runs again when the store retries the transaction. */
  run(): void;
  /** Called once the transaction committed (the queue looks for due jobs). */
  committed?(): void;
}

export interface Queue<T> {
  /** Add one job; 'duplicate' when the id exists (in any state), nothing changed then. */
  add(job: NewJob<T>): Promise<AddResult>;
  /** Add several jobs atomically (all committed or none); results in input order. */
  addMany(jobs: NewJob<T>[]): Promise<AddResult[]>;
  /**
   * Move a pending job to a new time and optionally new data (a replan after a
   * reschedule). False when the job is not pending (running, finished, unknown).
   */
  reschedule(id: string, runAt: Date | string, data?: T): Promise<boolean>;
  /**
   * Cancel every pending job carrying `key`, and the pending job whose id is `key`; running
   * and finished jobs are not touched. Returns how many were cancelled.
   */
  cancel(key: string, reason?: string): Promise<number>;
  /**
   * Optional: only a backend whose jobs live in the store's own database has it (the embedded
   * SQLite queue). Returns work that the store runs inside the transaction of one of its writes
   * (Store.saveRouting's `joined`), so what `ops` does to the queue commits together with that
   * write or not at all: routing and the timers it sets are one transaction. Backends without
   * it (BullMQ on Redis) are driven through the methods above, and their callers repair a crash
   * between the two by doing both again (adds of an existing id are duplicates).
   */
  joinTransaction?(ops: (tx: QueueTransaction<T>) => void): JoinedWork;
  /** Start taking due jobs. Call once per instance. */
  process(handler: JobHandler<T>, options: ProcessOptions): void;
  /**
   * Look for due jobs now (after the clock moved, or after a change made elsewhere).
   * Resolves once the jobs due at this moment have been handed to handlers, up to the
   * concurrency limit. A no-op before process().
   */
  poke(): Promise<void>;
  /**
   * Resolves when no handler of this instance is running and no job is due (by the queue's
   * clock). Resolves at once before process() or after close().
   */
  idle(): Promise<void>;
  get(id: string): Promise<JobInfo<T> | undefined>;
  list(filter?: ListFilter): Promise<JobInfo<T>[]>;
  counts(): Promise<Record<JobState, number>>;
  /**
   * Replay a dead or parked job: pending now, with exactly one more counted attempt (runs
   * the provider rate-limits still do not count) and a fresh retry span. False when the job
   * is not dead or parked.
   */
  retryDead(id: string): Promise<boolean>;
  /** Listen to job events; returns the unsubscribe function. */
  subscribe(listener: (event: QueueEvent) => void): () => void;
  /**
   * Stop taking jobs and wait for running handlers. After `graceMs` (real time, default
   * 10,000) their signals are aborted; close still waits for them to settle. Idempotent.
   */
  close(options?: { graceMs?: number }): Promise<void>;
}

/** Parse a job's run time; throws a clear error naming the job and the expected form. */
export function toEpochMs(value: Date | string, what: string): number {
  if (value instanceof Date) {
    const ms = value.getTime();
    if (Number.isNaN(ms)) throw new RangeError(`${what}: runAt is an invalid Date`);
    return ms;
  }
  if (typeof value === 'string') {
    // A time without a zone would be read in the server's local zone: refuse it.
    const zoned = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$/i.test(value);
    const ms = Date.parse(value);
    if (zoned && !Number.isNaN(ms)) return ms;
  }
  throw new RangeError(
    `${what}: runAt ${JSON.stringify(String(value))} is not a time; ` +
      'pass a Date or an ISO 8601 string with a zone, e.g. 2026-03-02T09:00:00Z',
  );
}

/** Validate a job before any backend stores it. */
export function validateNewJob<T>(job: NewJob<T>): { runAtMs: number } {
  if (typeof job.id !== 'string' || job.id.length === 0 || job.id.length > 512) {
    throw new TypeError('queue.add: job id must be a non-empty string of at most 512 characters');
  }
  const what = `queue.add(${JSON.stringify(job.id)})`;
  const runAtMs = toEpochMs(job.runAt, what);
  if (job.cancelKeys !== undefined) {
    if (!Array.isArray(job.cancelKeys) || job.cancelKeys.some((k) => typeof k !== 'string' || k === '')) {
      throw new TypeError(`${what}: cancelKeys must be an array of non-empty strings`);
    }
  }
  if (job.maxAttempts !== undefined && !(Number.isInteger(job.maxAttempts) && job.maxAttempts >= 1)) {
    throw new RangeError(`${what}: maxAttempts must be an integer ≥ 1, got ${job.maxAttempts}`);
  }
  if (job.data === undefined) {
    throw new TypeError(`${what}: data is required (use null for none)`);
  }
  return { runAtMs };
}
