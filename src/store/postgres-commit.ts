// Group commit on PostgreSQL (docs/reliability.md #1: a write resolves only once committed).
//
// Writes requested while a transaction is being committed wait and go together in the next
// one: parallel MLLP connections, HTTP requests, routing results and the delivery worker's
// records share one BEGIN … COMMIT, so one WAL flush (and about three round trips) serves
// them all. A write's promise settles only after COMMIT returned.
//
// Statements of a transaction are pipelined (postgres-db.ts): the writes of a batch run
// concurrently on its one connection, each awaiting only its own statements.
//
// One failing write does not fail the others, as in the embedded store: the batch first runs
// without savepoints; when a write fails for its own data (a constraint, a value refused, a
// check of its own), the transaction is rolled back and the batch runs again with a savepoint
// per write, one after the other, so that write alone fails. A lost race with another
// transaction (the dedupe key taken by a concurrent commit, a deadlock, a serialization
// failure) runs the batch again as it was: its look-ups then see what the other committed. A
// fault of the store (connection lost, disk full, read-only server) fails the whole batch, and
// every caller NAKs.
import type pg from 'pg';
import { pgParam } from './postgres-db.ts';

/** Runs statements on one connection: a transaction's, or the pool's for reads. */
export interface Sql {
  /** The rows of one statement (prepared once per connection). */
  rows<R>(text: string, params?: readonly unknown[]): Promise<R[]>;
  /** The number of rows one statement changed. */
  count(text: string, params?: readonly unknown[]): Promise<number>;
}

const names = new Map<string, string>();

/** A prepared statement's name: the same text gets the same name on every connection. */
function statementName(text: string): string {
  let name = names.get(text);
  if (name === undefined) {
    name = `cr${names.size.toString(36)}`;
    names.set(text, name);
  }
  return name;
}

/** Sql over a pool (each statement on any free connection) or one checked-out connection. */
export function sqlOf(target: pg.Pool | pg.PoolClient): Sql {
  const run = (text: string, params: readonly unknown[] = []) =>
    target.query({ name: statementName(text), text, values: params.map(pgParam) } as pg.QueryConfig);
  return {
    rows: async <R>(text: string, params?: readonly unknown[]) => (await run(text, params)).rows as R[],
    count: async (text: string, params?: readonly unknown[]) => (await run(text, params)).rowCount ?? 0,
  };
}

/** SQLSTATE classes and codes (PostgreSQL appendix A). */
const SERIALIZATION_FAILURE = '40001';
const DEADLOCK_DETECTED = '40P01';
const UNIQUE_VIOLATION = '23505';
const IN_FAILED_TRANSACTION = '25P02';

function sqlState(error: unknown): string | undefined {
  const code = (error as { code?: unknown })?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/**
 * What to do after a write failed. `raced` names unique constraints a concurrent transaction
 * can take first (the dedupe key): losing that race is not the record's fault.
 */
export function classify(error: unknown, raced: ReadonlySet<string>): 'retry' | 'record' | 'store' {
  const state = sqlState(error);
  if (state === SERIALIZATION_FAILURE || state === DEADLOCK_DETECTED) return 'retry';
  if (state === UNIQUE_VIOLATION && raced.has(String((error as { constraint?: unknown }).constraint))) return 'retry';
  if (state !== undefined) return state.startsWith('22') || state.startsWith('23') ? 'record' : 'store';
  // Node's errno codes and the client's own connection errors are the store's; anything else
  // thrown by a write (a RangeError, a StaleAttemptError) is about its own data.
  const code = (error as { code?: unknown })?.code;
  if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) return 'store';
  if (error instanceof Error && /Connection terminated|not queryable|Client was closed|connection timeout|timeout exceeded/i.test(error.message)) return 'store';
  return 'record';
}

export interface BatchRunner<Item, Result> {
  /** All items of a batch together, inside the transaction (no savepoints). */
  runAll(tx: Sql, items: readonly Item[]): Promise<Result[]>;
  /** One item alone (inside its own savepoint). */
  runOne(tx: Sql, item: Item): Promise<Result>;
}

interface Pending<Item, Result> {
  item: Item;
  resolve: (value: Result) => void;
  reject: (error: unknown) => void;
}

export interface GroupCommitterOptions {
  /** Most writes in one transaction. */
  maxBatch: number;
  /** Transactions being committed at once (each on its own connection). */
  concurrency: number;
  /** Unique constraints a concurrent transaction may take first (see classify). */
  raced: ReadonlySet<string>;
  /** Turns a store fault into the error callers see (names the server and the fix). */
  explain: (error: unknown) => Error;
  /** Called after each committed transaction (counters for benchmarks). */
  committed?: () => void;
}

/** How many times a batch that lost a race is run again before each write is tried alone. */
const MAX_RACE_RETRIES = 5;

export class GroupCommitter<Item, Result> {
  readonly #pool: pg.Pool;
  readonly #runner: BatchRunner<Item, Result>;
  readonly #options: GroupCommitterOptions;
  #pending: Array<Pending<Item, Result>> = [];
  #inFlight = 0;
  #scheduled = false;
  #closed = false;
  #drained: Array<() => void> = [];

  constructor(pool: pg.Pool, runner: BatchRunner<Item, Result>, options: GroupCommitterOptions) {
    this.#pool = pool;
    this.#runner = runner;
    this.#options = options;
  }

  /** Queues `item` for the next transaction; resolves once that transaction committed. */
  submit(item: Item): Promise<Result> {
    return new Promise<Result>((resolve, reject) => {
      if (this.#closed) throw new Error('the PostgreSQL store is closed');
      this.#pending.push({ item, resolve, reject });
      this.#schedule();
    });
  }

  /** Commits what is queued, then refuses new writes. */
  async close(): Promise<void> {
    this.#closed = true;
    while (this.#pending.length > 0 || this.#inFlight > 0) {
      await new Promise<void>((resolve) => {
        this.#drained.push(resolve);
        this.#schedule();
      });
    }
  }

  #schedule(): void {
    if (this.#scheduled || this.#inFlight >= this.#options.concurrency || this.#pending.length === 0) return;
    this.#scheduled = true;
    // One event-loop turn: frames that arrived on other connections in the same poll phase
    // join this transaction. While a transaction is in flight, writes gather for the next one.
    setImmediate(() => {
      this.#scheduled = false;
      this.#flush();
    });
  }

  #flush(): void {
    while (this.#inFlight < this.#options.concurrency && this.#pending.length > 0) {
      const batch = this.#pending.splice(0, this.#options.maxBatch);
      this.#inFlight++;
      void this.#commit(batch).finally(() => {
        this.#inFlight--;
        if (this.#pending.length > 0) this.#schedule();
        else if (this.#inFlight === 0) for (const resolve of this.#drained.splice(0)) resolve();
      });
    }
  }

  async #commit(batch: Array<Pending<Item, Result>>): Promise<void> {
    let client: pg.PoolClient;
    try {
      client = await this.#pool.connect();
    } catch (error) {
      const explained = this.#options.explain(error);
      for (const p of batch) p.reject(explained);
      return;
    }
    let broken = false;
    try {
      const outcomes = await this.#transact(client, batch);
      batch.forEach((p, i) => {
        const outcome = outcomes[i]!;
        if ('error' in outcome) p.reject(outcome.error);
        else p.resolve(outcome.value);
      });
    } catch (error) {
      broken = classify(error, this.#options.raced) === 'store';
      const explained = this.#options.explain(error);
      for (const p of batch) p.reject(explained);
    } finally {
      // A connection that failed mid-transaction is not given back for reuse.
      client.release(broken ? true : undefined);
    }
  }

  /** Runs the batch to a commit; each write's value or its own error. Throws a store fault. */
  async #transact(client: pg.PoolClient, batch: Array<Pending<Item, Result>>): Promise<Array<{ value: Result } | { error: unknown }>> {
    const tx = sqlOf(client);
    const items = batch.map((p) => p.item);
    for (let attempt = 0; ; attempt++) {
      try {
        // BEGIN goes out with the batch's first statements (pipelined), not a round trip ahead.
        const [, values] = await settleAll<unknown>([client.query('BEGIN'), this.#runner.runAll(tx, items)]) as [unknown, Result[]];
        await client.query('COMMIT');
        this.#options.committed?.();
        return values.map((value) => ({ value }));
      } catch (error) {
        await client.query('ROLLBACK').catch(() => {});
        const kind = classify(error, this.#options.raced);
        if (kind === 'store') throw error;
        if (kind === 'retry' && attempt < MAX_RACE_RETRIES) continue;
        return this.#isolated(client, tx, items);
      }
    }
  }

  /** The batch again, one write per savepoint: a write that fails for its own data fails alone. */
  async #isolated(client: pg.PoolClient, tx: Sql, items: readonly Item[]): Promise<Array<{ value: Result } | { error: unknown }>> {
    for (let attempt = 0; ; attempt++) {
      const out: Array<{ value: Result } | { error: unknown }> = [];
      try {
        await client.query('BEGIN');
        for (const item of items) {
          await client.query('SAVEPOINT w');
          try {
            out.push({ value: await this.#runner.runOne(tx, item) });
            await client.query('RELEASE SAVEPOINT w');
          } catch (error) {
            const kind = classify(error, this.#options.raced);
            if (kind !== 'record') throw error;
            await client.query('ROLLBACK TO SAVEPOINT w');
            out.push({ error });
          }
        }
        await client.query('COMMIT');
        this.#options.committed?.();
        return out;
      } catch (error) {
        await client.query('ROLLBACK').catch(() => {});
        if (classify(error, this.#options.raced) === 'retry' && attempt < MAX_RACE_RETRIES) continue;
        throw error;
      }
    }
  }
}

/** The first error of settled results that is not a consequence of another (25P02). */
export function firstCause(results: readonly PromiseSettledResult<unknown>[]): unknown {
  const failures = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason);
  return failures.find((e) => sqlState(e) !== IN_FAILED_TRANSACTION) ?? failures[0];
}

/** Awaits every promise (pipelined statements), then throws the root cause if any failed. */
export async function settleAll<T>(promises: ReadonlyArray<Promise<T>>): Promise<T[]> {
  const results = await Promise.allSettled(promises);
  if (results.some((r) => r.status === 'rejected')) throw firstCause(results);
  return results.map((r) => (r as PromiseFulfilledResult<T>).value);
}
