// What every Queue backend does the same way, whatever it stores jobs in: job data to JSON,
// list() arguments, event listeners, process() arguments, and close()'s grace period.
import { JOB_STATES, type JobState, type ListFilter, type ProcessOptions, type QueueEvent } from './queue.ts';

/** The JSON a backend stores for a job's data; throws a clear error naming the operation. */
export function serializeJobData(data: unknown, what: string): string {
  let json: string | undefined;
  try {
    json = JSON.stringify(data);
  } catch (error) {
    throw new TypeError(`${what}: data cannot be stored as JSON (${(error as Error).message})`);
  }
  if (json === undefined) throw new TypeError(`${what}: data cannot be stored as JSON`);
  return json;
}

/** list()'s limit (default 100, 1..1,000) and states, each checked. */
export function listArguments(filter: ListFilter): { limit: number; states: JobState[] } {
  const limit = Math.min(Math.max(Math.trunc(filter.limit ?? 100), 1), 1_000);
  const states = filter.state === undefined ? [] : Array.isArray(filter.state) ? filter.state : [filter.state];
  for (const state of states) {
    if (!JOB_STATES.includes(state)) {
      throw new RangeError(`queue.list: unknown state ${JSON.stringify(state)}; expected one of ${JOB_STATES.join(', ')}`);
    }
  }
  return { limit, states };
}

/** process()'s preconditions: once per instance, not after close, a sane concurrency. */
export function checkProcessCall(queue: string, state: { started: boolean; closing: boolean }, options: ProcessOptions): void {
  if (state.started) throw new Error(`queue ${queue}: process() was already called on this instance`);
  if (state.closing) throw new Error(`queue ${queue}: process() called after close()`);
  if (!(Number.isInteger(options?.concurrency) && options.concurrency >= 1)) {
    throw new RangeError(`queue ${queue}: concurrency must be an integer ≥ 1, got ${options?.concurrency}`);
  }
}

/** The listeners of a queue's events (Queue.subscribe). */
export class QueueListeners {
  readonly #listeners = new Set<(event: QueueEvent) => void>();

  subscribe(listener: (event: QueueEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  emit(event: QueueEvent): void {
    for (const listener of this.#listeners) {
      try {
        listener(event);
      } catch {
        // A failing listener (metrics, logging) must not change what happens to jobs.
      }
    }
  }
}

/**
 * close()'s wait for running handlers: until they settle, at most `graceMs` (real time);
 * then their signals are aborted and they are waited for again (their outcome is recorded).
 */
export async function settleRunning(running: () => Iterable<{ controller: AbortController; settled: Promise<void> }>, graceMs: number): Promise<void> {
  const runs = [...running()];
  if (runs.length === 0) return;
  const settled = Promise.all(runs.map((run) => run.settled));
  let graceTimer: NodeJS.Timeout | undefined;
  const grace = new Promise<void>((resolve) => {
    graceTimer = setTimeout(resolve, graceMs);
  });
  await Promise.race([settled, grace]);
  clearTimeout(graceTimer);
  // Those still running (a finished one's signal stays as it was).
  for (const run of running()) run.controller.abort(new Error('queue closing'));
  await settled;
}

/** What a queue instance's PollLoop asks of it. */
export interface PollHooks<N> {
  /** Polls may run: process() was called, close() was not (and the instance is not frozen). */
  canRun(): boolean;
  /** One poll: give back lapsed leases, take due jobs; resolves with what to wait for next. */
  round(): Promise<N>;
  /** A round failed (the storage); the loop ends and `done` gets undefined. */
  failed(error: unknown): void;
  /** After the last round (arm the timer for `next`). */
  done(next: N | undefined): void;
  /** Handlers of this instance are running. */
  busy(): boolean;
}

/**
 * A queue instance's polling (Queue.poke, Queue.idle): one round at a time; a call while one
 * runs asks it for one more round, and resolves when that round is done.
 */
export class PollLoop<N> {
  #loop: Promise<void> | undefined;
  #again = false;
  #idleWaiters: (() => void)[] = [];

  constructor(private readonly hooks: PollHooks<N>) {}

  /** Runs a round now (or one more after the one under way). */
  run(): Promise<void> {
    if (!this.hooks.canRun()) return Promise.resolve();
    this.#again = true;
    this.#loop ??= this.#run();
    return this.#loop;
  }

  /** Called by a round that took jobs: more may be due than there was room for. */
  more(): void {
    this.#again = true;
  }

  /** The loop under way, if any (close waits for it: a take under way starts its jobs). */
  get current(): Promise<void> | undefined {
    return this.#loop;
  }

  /** Resolves once no handler runs and a round found nothing more to take. */
  idle(): Promise<void> {
    if (!this.hooks.canRun()) return Promise.resolve();
    const promise = new Promise<void>((resolve) => this.#idleWaiters.push(resolve));
    void this.run();
    return promise;
  }

  resolveIdle(): void {
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const resolve of waiters) resolve();
  }

  async #run(): Promise<void> {
    let next: N | undefined;
    try {
      while (this.#again && this.hooks.canRun()) {
        this.#again = false;
        next = await this.hooks.round();
      }
    } catch (error) {
      this.hooks.failed(error);
      next = undefined;
    } finally {
      // In the same synchronous step as the loop's last check: a run() from now on starts anew.
      this.#loop = undefined;
    }
    this.hooks.done(next);
    if (!this.hooks.busy() && next !== undefined) this.resolveIdle();
  }
}
