// The scale-out queue: BullMQ on Redis (docs/architecture.md "Backends"), behind the same Queue
// interface and conformance suite as the embedded one. Several processes on several hosts
// share it: any worker takes any due job, and a job whose worker vanished comes back.
//
//   add ─▶ BullMQ add (delayed until the due time, or waiting) + CareRelay's fields, one MULTI
//   pump: due jobs (queue clock) ─▶ wait ─▶ BullMQ take (moveToActive: lock = lease) ─▶ handler
//        ─▶ done: BullMQ moveToCompleted │ retry / park / dead: crFail (lock-checked, Lua)
//   BullMQ's stalled checker: a job whose lock lapsed (worker killed, hung, cut off) goes back
//   to wait; the next take sees an attempt without an outcome ─▶ previousError lease_expired
//
// BullMQ is used for what it does well and its tooling understands — the job hashes, the
// delayed set, taking a job under a lock (Worker.getNextJob: BullMQ's documented manual
// processing), lock renewal, stalled-job detection, completion, the event stream. What the
// Queue interface promises beyond it (cancel by key, reschedule with data, cancelled and
// parked states, replay with one more attempt, a failure's class and code, due times on an
// injected clock) is a handful of Lua scripts on BullMQ's own keys (bullmq-scripts.ts).
//
// Leases are Redis locks: they lapse by the Redis server's clock, so worker hosts whose
// clocks differ agree on them; the stalled check runs every `leaseMs`, so a vanished worker's
// job is back within about 2 × leaseMs (BullMQ marks, then moves what is still unlocked).
// A job stalled on its last attempt is dead-lettered (lease_expired) when next taken, never
// run again: BullMQ's own stall limit is set out of reach so that every stalled job comes
// back through that one path.
//
// Ids: BullMQ refuses ':' in a job id and ids that look like integers, so ids are encoded
// (':' → %3A, '%' → %25, an integer-looking id gets a '%i' prefix) and decoded on the way out.
//
// Connections: `connection` serves adds, cancels and reads (fail fast: an add during a Redis
// outage fails and the router tries again); the worker side (takes, outcomes, renewals) runs
// on a connection with maxRetriesPerRequest: null, as BullMQ requires, so an outcome written
// during a Redis restart waits for Redis instead of being lost; a third connection blocks on
// BullMQ's marker to wake as soon as another process makes a job due.
import { randomUUID } from 'node:crypto';
import { Job, Queue as BullQueue, Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { decideFailure, errorCodeOf, failureRecord, normalizeQueueOptions, type NormalizedQueueOptions } from './backoff.ts';
import { BULLMQ_SCRIPTS, type BullMqScriptName } from './bullmq-scripts.ts';
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
  type ListFilter,
  type NewJob,
  type ProcessOptions,
  type Queue,
  type QueueEvent,
  type QueueOptions,
} from './queue.ts';

export interface BullMqQueueOptions extends QueueOptions {
  /** Queue name (no ':'). Default 'default'. */
  name?: string;
  /** Key prefix of every key (BullMQ's `prefix`, no ':'). Default 'carerelay'. */
  prefix?: string;
  /**
   * Adds, cancels, reads: an ioredis client, shared by the queues of a process and closed by
   * its owner. CareRelay's scripts are defined on it.
   */
  connection: Redis;
  /**
   * Takes, outcomes and lease renewals: an ioredis client with maxRetriesPerRequest: null
   * (BullMQ refuses a worker connection without it). Default: a duplicate of `connection`
   * with that setting, closed with the queue.
   */
  workerConnection?: Redis;
  /**
   * Called after a job was dead-lettered (its delivery is marked failed there). The job's id
   * stays in the queue's dead-letter inbox until the call resolves; process() hands the
   * leftovers of a crash to it again, so a dead letter is never lost between two systems.
   */
  onDeadLetter?: (job: { id: string; attempt: number; code: string }) => Promise<void>;
  /**
   * Called after a job was parked for review (an ambiguous failure of a job that is not
   * idempotent), handed over through the same inbox as dead letters.
   */
  onParked?: (job: { id: string; attempt: number; code: string }) => Promise<void>;
  /** Cancelled jobs are deleted after this long, seconds. Default 30 days. */
  keepCancelledSeconds?: number;
  /** Done jobs are deleted after this long, seconds (BullMQ's removeOnComplete age). Default 30 days. */
  keepDoneSeconds?: number;
}

/** What cancelled and done jobs are kept for by default: the duplicate-id promise holds this long. */
export const DEFAULT_KEEP_SECONDS = 30 * 86_400;

/** BullMQ retries nothing by itself: every retry is decideFailure's (backoff.ts). */
const BULL_ATTEMPTS = 1;
/** Out of reach: a stalled job comes back to be dead-lettered (or run) by our take. */
const NO_STALL_LIMIT = 1_000_000_000;
/** How often cancelled jobs past their keep time are deleted, ms. */
const PRUNE_EVERY_MS = 3_600_000;

/** BullMQ refuses ':' and integer-looking ids; both are encoded reversibly. */
export function toBullId(id: string): string {
  const escaped = id.replace(/[%:]/g, (c) => (c === '%' ? '%25' : '%3A'));
  return `${Number.parseInt(escaped, 10)}` === escaped ? `%i${escaped}` : escaped;
}

export function fromBullId(bullId: string): string {
  const body = bullId.startsWith('%i') ? bullId.slice(2) : bullId;
  return body.replace(/%(25|3A)/g, (_m, code: string) => (code === '25' ? '%' : ':'));
}

function checkName(what: string, value: string): void {
  if (value === '' || value.includes(':')) throw new RangeError(`BullMQ queue: ${what} must be non-empty and without ':', got ${JSON.stringify(value)}`);
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

type ScriptClient = Redis & { [K in BullMqScriptName]: (...args: (string | number)[]) => Promise<unknown> };

/** Defines CareRelay's scripts on a client once (ioredis keeps them for its pipelines too). */
function withScripts(client: Redis): ScriptClient {
  const c = client as ScriptClient;
  for (const [name, lua] of Object.entries(BULLMQ_SCRIPTS)) {
    if (typeof (c as unknown as Record<string, unknown>)[name] !== 'function') c.defineCommand(name, { numberOfKeys: 0, lua });
  }
  return c;
}

/** BullMQ's finishing errors that mean this worker no longer holds the job. */
function lostLock(error: unknown): boolean {
  const message = error instanceof Error ? error.message : '';
  return /Missing lock|lock mismatch|not in the active|Missing key for job|Lock mismatch/i.test(message);
}

interface Running {
  bullId: string;
  id: string;
  attempt: number;
  token: string;
  job: Job;
  controller: AbortController;
  settled: Promise<void>;
}

interface Taken {
  job: Job;
  token: string;
  attempt: number;
  maxAttempts: number;
  idempotent: boolean;
  previousError: string;
  /** Runs that were not attempts (deferred, rate-limited): counted attempts are attempt − free. */
  free: number;
  /** Epoch ms of the first failure since the job was added or replayed (its retry span's start). */
  firstFailedAtMs?: number;
}

type Row = [string, string, ...string[]];

export class BullMqQueue<T> implements Queue<T> {
  readonly name: string;
  readonly prefix: string;
  private readonly opts: NormalizedQueueOptions;
  private readonly client: ScriptClient;
  private readonly ownWorkerConnection: boolean;
  private readonly workerClient: ScriptClient;
  private readonly bull: BullQueue;
  /** `<prefix>:<name>:`: BullMQ's key base, and the base of CareRelay's keys. */
  readonly base: string;
  private readonly onDeadLetter: BullMqQueueOptions['onDeadLetter'];
  private readonly onParked: BullMqQueueOptions['onParked'];
  private readonly keepCancelledMs: number;
  private readonly keepDoneSeconds: number;
  private readonly instanceId = randomUUID();
  private tokenCounter = 0;
  private ready: Promise<void>;

  private worker: Worker | undefined;
  private blocking: Redis | undefined;
  private handler: JobHandler<T> | undefined;
  private concurrency = 0;
  private closing = false;
  private frozen = false;
  private closed: Promise<void> | undefined;
  private readonly running = new Map<string, Running>();
  private readonly listeners = new QueueListeners();
  private readonly polls = new PollLoop<number | null>({
    canRun: () => this.handler !== undefined && !this.closing && !this.frozen,
    round: async () => {
      await this.ready;
      return this.pollOnce();
    },
    failed: (error) => this.emit({ type: 'error', code: errorCodeOf(error), message: 'queue poll failed' }),
    done: (next) => this.armPollTimer(next),
    busy: () => this.running.size > 0,
  });
  private pollTimer: NodeJS.Timeout | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private lastPrune = 0;
  private waking: Promise<void> | undefined;
  /** The hand-over of dead letters a crash left (close waits for it). */
  private leftovers: Promise<void> | undefined;

  constructor(options: BullMqQueueOptions) {
    this.name = options.name ?? 'default';
    this.prefix = options.prefix ?? 'carerelay';
    checkName('name', this.name);
    checkName('prefix', this.prefix);
    this.opts = normalizeQueueOptions(options);
    this.onDeadLetter = options.onDeadLetter;
    this.onParked = options.onParked;
    this.keepCancelledMs = (options.keepCancelledSeconds ?? DEFAULT_KEEP_SECONDS) * 1000;
    this.keepDoneSeconds = options.keepDoneSeconds ?? DEFAULT_KEEP_SECONDS;
    this.client = withScripts(options.connection);
    this.ownWorkerConnection = options.workerConnection === undefined;
    this.workerClient = withScripts(options.workerConnection ?? options.connection.duplicate({ maxRetriesPerRequest: null }));
    this.workerClient.on('error', () => {});
    this.bull = new BullQueue(this.name, { connection: this.client, prefix: this.prefix });
    // An EventEmitter without an 'error' listener throws: connection trouble is reported as events.
    this.bull.on('error', (error) => this.emit({ type: 'error', code: errorCodeOf(error), message: 'queue connection error' }));
    this.base = `${this.prefix}:${this.name}:`;
    this.ready = this.bull.waitUntilReady().then(() => undefined);
    this.ready.catch(() => {});
  }

  // ── adding and changing jobs ───────────────────────────────────────────────────────

  async add(job: NewJob<T>): Promise<AddResult> {
    const [result] = await this.addMany([job]);
    return result!;
  }

  /**
   * One MULTI: BullMQ's add of each job, each followed by crAfterAdd, which tells a new job
   * from a duplicate (in one MULTI nothing runs in between) and indexes its cancel keys.
   */
  async addMany(jobs: NewJob<T>[]): Promise<AddResult[]> {
    // Every job is checked before anything is written: one bad job adds none.
    const prepared = jobs.map((job) => {
      const { runAtMs } = validateNewJob(job);
      const what = `queue.add(${JSON.stringify(job.id)})`;
      const data = serializeJobData(job.data, what);
      return { job, runAtMs, data, keys: [...new Set(job.cancelKeys ?? [])] };
    });
    if (prepared.length === 0) return [];
    await this.ready;
    const now = this.opts.now();
    const client = await this.bull.client;
    const multi = client.multi();
    for (const p of prepared) {
      const bullId = toBullId(p.job.id);
      const job = new Job(
        this.bull,
        this.name,
        p.job.data,
        {
          jobId: bullId,
          timestamp: now,
          delay: Math.max(0, p.runAtMs - now),
          attempts: BULL_ATTEMPTS,
          removeOnComplete: { age: this.keepDoneSeconds },
          removeOnFail: false,
        },
        bullId,
      );
      // Queued on the MULTI synchronously; the promise settles with the MULTI.
      job.addJob(multi as never).catch(() => {});
      (multi as unknown as ScriptClient).crAfterAdd(
        this.base,
        bullId,
        p.runAtMs,
        p.job.maxAttempts ?? this.opts.retry.maxAttempts,
        p.job.idempotent ? 1 : 0,
        JSON.stringify(p.keys),
        now,
        ...p.keys,
      );
    }
    const replies = (await multi.exec()) as [Error | null, unknown][] | null;
    if (replies === null) throw new Error(`queue ${this.name}: the add transaction was discarded`);
    const results: AddResult[] = [];
    for (let i = 0; i < replies.length; i += 2) {
      const [addError] = replies[i]!;
      const [markError, added] = replies[i + 1]!;
      if (addError) throw addError;
      if (markError) throw markError;
      results.push(added === 1 ? 'added' : 'duplicate');
    }
    if (results.includes('added')) this.wake();
    return results;
  }

  async reschedule(id: string, runAt: Date | string, data?: T): Promise<boolean> {
    const what = `queue.reschedule(${JSON.stringify(id)})`;
    const runAtMs = toEpochMs(runAt, what);
    const json = data === undefined ? '' : serializeJobData(data, what);
    await this.ready;
    const moved = (await this.client.crReschedule(this.base, toBullId(id), runAtMs, this.opts.now(), data === undefined ? 0 : 1, json)) === 1;
    if (moved) this.wake();
    return moved;
  }

  async cancel(key: string, reason?: string): Promise<number> {
    await this.ready;
    return Number(await this.client.crCancel(this.base, key, toBullId(key), reason ?? '', this.opts.now()));
  }

  async retryDead(id: string): Promise<boolean> {
    await this.ready;
    const changed = (await this.client.crRetryDead(this.base, toBullId(id), this.opts.now())) === 1;
    if (changed) this.wake();
    return changed;
  }


  // ── reading ─────────────────────────────────────────────────────────────────────────

  async get(id: string): Promise<JobInfo<T> | undefined> {
    await this.ready;
    const [row] = (await this.client.crRead(this.base, toBullId(id))) as Row[];
    return row && row[1] !== '' ? this.toInfo(row) : undefined;
  }

  async list(filter: ListFilter = {}): Promise<JobInfo<T>[]> {
    const { limit, states } = listArguments(filter);
    await this.ready;
    // Candidates from the key's set or the states' lists, read and sorted here: this reads
    // every job of the states asked for (an admin view; each state's set is what it is).
    const source = filter.cancelKey !== undefined ? ['key', filter.cancelKey] : states.length > 0 ? states : [...JOB_STATES];
    const ids = [...new Set((await this.client.crIdsIn(this.base, ...source)) as string[])];
    const infos: Array<JobInfo<T> & { seq: number }> = [];
    for (let i = 0; i < ids.length; i += 500) {
      const rows = (await this.client.crRead(this.base, ...ids.slice(i, i + 500))) as Row[];
      for (const row of rows) {
        if (row[1] === '') continue;
        const info = this.toInfo(row);
        if (states.length > 0 && !states.includes(info.state)) continue;
        infos.push({ ...info, seq: Number(row[5]) });
      }
    }
    infos.sort((a, b) => Date.parse(a.runAt) - Date.parse(b.runAt) || a.seq - b.seq);
    return infos.slice(0, limit).map(({ seq: _seq, ...info }) => info as JobInfo<T>);
  }

  async counts(): Promise<Record<JobState, number>> {
    await this.ready;
    const [pending, active, done, cancelled, parked, dead] = ((await this.client.crCounts(this.base)) as number[]).map(Number);
    return { pending: pending!, active: active!, done: done!, cancelled: cancelled!, parked: parked!, dead: dead! };
  }

  /** row: id, state, data, timestamp, ats, crSeq, crRunAt, crMax, crIdem, crKeys, crErrRun, crErrClass, crErrCode, crReason, crUpdated, crFree, crFirstFail */
  private toInfo(row: Row): JobInfo<T> {
    const [bullId, state, data, timestamp, ats, , runAt, max, idem, keys, errRun, errClass, errCode, reason, updated, free, firstFail] = row as string[];
    const attempts = Number(ats || 0);
    const info: JobInfo<T> = {
      id: fromBullId(bullId!),
      data: JSON.parse(data || 'null') as T,
      state: state as JobState,
      attempts,
      deferrals: Number(free || 0),
      maxAttempts: Number(max),
      idempotent: idem === '1',
      runAt: iso(Number(runAt)),
      cancelKeys: JSON.parse(keys || '[]') as string[],
      createdAt: iso(Number(timestamp)),
      updatedAt: iso(Number(updated || timestamp)),
    };
    if (errCode) info.lastError = { failureClass: errClass || 'transient', code: errCode };
    // Taken and given back by the stalled check, not taken again yet: its last run was lost.
    if (state === JobState.Pending && attempts > Number(errRun || 0)) {
      info.lastError = { failureClass: QueueErrorCode.LeaseExpired, code: QueueErrorCode.LeaseExpired };
    }
    if (reason) info.cancelReason = reason;
    if (firstFail) info.retryUntil = iso(Number(firstFail) + this.opts.retry.spanMs);
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
    // Manual processing (docs.bullmq.io/patterns/manually-fetching-jobs): no processor, no
    // autorun; the lock is the lease, the stalled check gives lapsed ones back.
    this.worker = new Worker(this.name, undefined, {
      connection: this.workerClient,
      prefix: this.prefix,
      autorun: false,
      lockDuration: this.opts.leaseMs,
      stalledInterval: this.opts.leaseMs,
      maxStalledCount: NO_STALL_LIMIT,
    });
    this.worker.on('error', (error) => this.emit({ type: 'error', code: errorCodeOf(error), message: 'queue worker error' }));
    this.worker.on('stalled', (bullId: string) => void this.stalled(bullId));
    void this.worker.startStalledCheckTimer().catch(() => {});
    this.leftovers = this.recordLeftoverDeadLetters();
    void this.pump();
    this.blocking = this.workerClient.duplicate({ maxRetriesPerRequest: null });
    this.blocking.on('error', () => {});
    this.waking = this.waitForMarkers(this.blocking);
  }

  /** A job given back by this process's stalled check: a retry (lease_expired) until taken again. */
  private async stalled(bullId: string): Promise<void> {
    try {
      const attempts = Number(await this.client.hget(this.base + bullId, 'ats'));
      this.emit({ type: 'retry', id: fromBullId(bullId), attempt: attempts, code: QueueErrorCode.LeaseExpired, runAt: iso(this.opts.now()) });
    } catch {
      // Only the event is lost; the job is back on wait.
    }
    this.wake();
  }

  /**
   * Wakes the pump when another process makes a job due: BullMQ's marker (a sorted set that
   * every move to wait, and every earlier delayed job, writes) popped with a blocking call.
   */
  private async waitForMarkers(connection: Redis): Promise<void> {
    const timeoutS = Math.max(this.opts.maxPollIntervalMs / 1000, 0.01);
    while (!this.closing) {
      try {
        const popped = await connection.bzpopmin(`${this.base}marker`, timeoutS);
        if (popped && !this.closing && !this.frozen) void this.pump();
      } catch {
        if (this.closing) return;
        // Redis away: the client reconnects; the poll timer keeps the pump going meanwhile.
        await new Promise((resolve) => setTimeout(resolve, this.opts.maxPollIntervalMs).unref());
      }
    }
  }

  poke(): Promise<void> {
    return this.pump();
  }

  idle(): Promise<void> {
    return this.polls.idle();
  }

  private wake(): void {
    if (this.handler && !this.closing && !this.frozen) void this.pump();
  }

  private pump(): Promise<void> {
    return this.polls.run();
  }

  /** One round: due jobs to wait (queue clock), take up to the free slots. Next due ms or null. */
  private async pollOnce(): Promise<number | null> {
    const now = this.opts.now();
    if (now - this.lastPrune >= PRUNE_EVERY_MS) {
      this.lastPrune = now;
      await this.client.crPruneCancelled(this.base, now - this.keepCancelledMs);
    }
    const [, nextDue, waiting] = ((await this.workerClient.crPromote(this.base, now)) as number[]).map(Number);
    const free = this.concurrency - this.running.size;
    if (free > 0 && !this.closing && waiting! > 0) {
      const takes = await Promise.all(Array.from({ length: Math.min(free, waiting!) }, () => this.take(now)));
      let took = 0;
      for (const taken of takes) {
        if (!taken) continue;
        took++;
        // Its counted attempts before this take reach the limit: the last one was lost with its worker.
        if (taken.attempt - taken.free > taken.maxAttempts) await this.deadOnTake(taken);
        else this.start(taken);
      }
      // More may be due than there was room for: look again.
      if (took > 0) this.polls.more();
    }
    return nextDue! >= 0 ? nextDue! : null;
  }

  private async take(now: number): Promise<Taken | undefined> {
    const token = `${this.instanceId}:${++this.tokenCounter}`;
    const job = (await this.worker!.getNextJob(token, { block: false })) as Job | undefined;
    if (!job?.id) return undefined;
    const [attempt, maxAttempts, idempotent, previousError, free, firstFail] = (await this.workerClient.crTaken(this.base, job.id, now)) as [number, number, number, string, number, number];
    return {
      job,
      token,
      attempt: Number(attempt),
      maxAttempts: Number(maxAttempts),
      idempotent: Number(idempotent) === 1,
      previousError,
      free: Number(free),
      ...(Number(firstFail) >= 0 ? { firstFailedAtMs: Number(firstFail) } : {}),
    };
  }

  /** Taken after its last attempt was lost with its worker: dead-lettered, not run again. */
  private async deadOnTake(taken: Taken): Promise<void> {
    const id = fromBullId(taken.job.id!);
    const attempt = taken.attempt - 1;
    const code = QueueErrorCode.LeaseExpired;
    const result = Number(
      await this.workerClient.crFail(this.base, taken.job.id!, taken.token, 'dead-on-take', 0, code, code, attempt, this.opts.now(), 0, 0),
    );
    if (result === 0) {
      this.emit({ type: 'dead', id, attempt, code });
      await this.deadLettered(taken.job.id!, { id, attempt, code });
    }
  }

  private armPollTimer(nextDue: number | null | undefined): void {
    if (this.pollTimer) clearTimeout(this.pollTimer);
    this.pollTimer = undefined;
    if (this.closing || this.frozen || this.running.size >= this.concurrency) return;
    let delay = this.opts.maxPollIntervalMs;
    if (nextDue !== null && nextDue !== undefined) delay = Math.min(delay, Math.max(nextDue - this.opts.now(), 5));
    this.pollTimer = setTimeout(() => void this.pump(), delay);
    this.pollTimer.unref();
  }

  private start(taken: Taken): void {
    const handler = this.handler!;
    const bullId = taken.job.id!;
    const id = fromBullId(bullId);
    const controller = new AbortController();
    const run: Running = { bullId, id, attempt: taken.attempt, token: taken.token, job: taken.job, controller, settled: Promise.resolve() };
    this.running.set(bullId, run);
    this.armRenewTimer();
    this.emit({ type: 'started', id, attempt: taken.attempt });
    run.settled = (async () => {
      let outcome: { ok: true } | { ok: false; error: unknown };
      try {
        await handler({
          id,
          data: taken.job.data as T,
          attempt: taken.attempt,
          ...(taken.previousError !== '' ? { previousError: taken.previousError } : {}),
          signal: controller.signal,
        });
        outcome = { ok: true };
      } catch (error) {
        outcome = { ok: false, error };
      }
      await this.finish(run, outcome, taken);
    })();
  }

  private async finish(run: Running, outcome: { ok: true } | { ok: false; error: unknown }, taken: Taken): Promise<void> {
    const now = this.opts.now();
    try {
      if (outcome.ok) {
        try {
          await run.job.moveToCompleted(null, run.token, false);
          this.emit({ type: 'done', id: run.id, attempt: run.attempt });
        } catch (error) {
          if (!lostLock(error)) throw error;
          this.emit({ type: 'lease-lost', id: run.id, attempt: run.attempt });
        }
      } else {
        const interrupted = this.closing && run.controller.signal.aborted;
        const decision = decideFailure(
          outcome.error,
          {
            attempt: run.attempt - taken.free,
            maxAttempts: taken.maxAttempts,
            idempotent: taken.idempotent,
            ...(taken.firstFailedAtMs !== undefined ? { firstFailedAtMs: taken.firstFailedAtMs } : {}),
          },
          this.opts.retry,
          now,
          this.opts.random,
          interrupted,
        );
        const record = failureRecord(decision, outcome.error);
        const { code } = record;
        const result = Number(
          await this.workerClient.crFail(
            this.base,
            run.bullId,
            run.token,
            decision.next,
            record.runAtMs ?? 0,
            record.failure?.failureClass ?? '',
            record.failure?.code ?? '',
            run.attempt,
            now,
            record.free ? 1 : 0,
            record.startsSpan ? 1 : 0,
          ),
        );
        if (result !== 0) this.emit({ type: 'lease-lost', id: run.id, attempt: run.attempt });
        else if (decision.next === 'retry' || decision.next === 'deferred') {
          this.emit({ type: decision.next, id: run.id, attempt: run.attempt, code, runAt: iso(decision.runAtMs) });
        } else {
          this.emit({ type: decision.next, id: run.id, attempt: run.attempt, code });
          await this.deadLettered(run.bullId, { id: run.id, attempt: run.attempt, code }, decision.next);
        }
      }
    } catch (error) {
      // The outcome could not be written: the lock lapses and the job runs again (at least
      // once, never lost).
      this.emit({ type: 'error', code: errorCodeOf(error), message: 'queue could not record a job outcome' });
    }
    this.running.delete(run.bullId);
    if (this.running.size === 0) this.stopRenewTimer();
    void this.pump();
    if (this.closing && this.running.size === 0) this.polls.resolveIdle();
  }

  /** Hands a dead letter to onDeadLetter (a parked job to onParked); its inbox entry goes once that is done. */
  private async deadLettered(bullId: string, job: { id: string; attempt: number; code: string }, state: 'dead' | 'parked' = 'dead'): Promise<void> {
    const hand = state === 'parked' ? this.onParked : this.onDeadLetter;
    if (!hand) {
      await this.workerClient.srem(`${this.base}cr:dead-inbox`, bullId).catch(() => {});
      return;
    }
    try {
      await hand(job);
      await this.workerClient.srem(`${this.base}cr:dead-inbox`, bullId);
    } catch (error) {
      // Stays in the inbox: the next start of a worker hands it over again.
      this.emit({ type: 'error', code: errorCodeOf(error), message: 'dead letter not recorded' });
    }
  }

  /** Dead letters a crash left unrecorded (process() start). */
  private async recordLeftoverDeadLetters(): Promise<void> {
    try {
      await this.ready;
      const ids = await this.workerClient.smembers(`${this.base}cr:dead-inbox`);
      for (const bullId of ids) {
        const info = await this.get(fromBullId(bullId));
        if (info?.state !== JobState.Dead && info?.state !== JobState.Parked) {
          await this.workerClient.srem(`${this.base}cr:dead-inbox`, bullId);
          continue;
        }
        await this.deadLettered(bullId, { id: info.id, attempt: info.attempts, code: info.lastError?.code ?? QueueErrorCode.Unclassified }, info.state);
      }
    } catch (error) {
      this.emit({ type: 'error', code: errorCodeOf(error), message: 'dead letters not read' });
    }
  }

  private armRenewTimer(): void {
    if (this.renewTimer || this.frozen) return;
    this.renewTimer = setInterval(() => void this.renewLeases(), this.opts.leaseRenewMs);
    this.renewTimer.unref();
  }

  private stopRenewTimer(): void {
    if (this.renewTimer) clearInterval(this.renewTimer);
    this.renewTimer = undefined;
  }

  /**
   * Extends the lock of every job this instance runs to leaseMs from now; a job whose lock
   * another worker holds now (this one stalled past its lease) has its signal aborted.
   */
  async renewLeases(): Promise<void> {
    const runs = [...this.running.values()];
    if (runs.length === 0 || !this.worker || this.frozen) return;
    try {
      const failed = new Set(
        await this.worker.extendJobLocks(
          runs.map((r) => r.bullId),
          runs.map((r) => r.token),
          this.opts.leaseMs,
        ),
      );
      for (const run of runs) if (failed.has(run.bullId)) run.controller.abort(new Error('queue lease lost'));
    } catch (error) {
      this.emit({ type: 'error', code: errorCodeOf(error), message: 'queue could not renew leases' });
    }
  }

  /**
   * Behaves from now on as a process that stopped (SIGSTOP, a hung event loop, a host cut
   * off): no more takes, lease renewals, stalled checks or wake-ups; running handlers carry on
   * and their outcomes are written (or refused) when they end. The conformance suite uses it
   * for a worker that vanishes; close() still closes.
   */
  freeze(): void {
    this.frozen = true;
    this.stopRenewTimer();
    if (this.pollTimer) clearTimeout(this.pollTimer);
    this.pollTimer = undefined;
    // Stops BullMQ's stalled check on this worker (it runs while not paused or closing).
    if (this.worker) void this.worker.pause(true).catch(() => {});
  }

  async close(options: { graceMs?: number } = {}): Promise<void> {
    if (this.closed) return this.closed;
    this.closing = true;
    if (this.pollTimer) clearTimeout(this.pollTimer);
    this.pollTimer = undefined;
    const graceMs = options.graceMs ?? 10_000;
    this.closed = (async () => {
      await this.polls.current;
      await this.leftovers;
      await settleRunning(() => this.running.values(), graceMs);
      this.stopRenewTimer();
      this.blocking?.disconnect();
      await this.waking;
      await this.worker?.close().catch(() => {});
      await this.bull.close().catch(() => {});
      if (this.ownWorkerConnection) this.workerClient.disconnect();
      this.polls.resolveIdle();
    })();
    return this.closed;
  }
}
