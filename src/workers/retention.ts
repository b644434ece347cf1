// Retention (docs/operations.md "Retention"): what is older than its kind's days goes, in small
// batches that never hold ingest up, and the space it took is given back.
//
//   every everyMinutes: for each kind, oldest first ─▶ store.prune(kind, cutoff, batch)
//     (one short write among the group commit's, then a turn of the event loop) ─▶ …until
//     nothing older is left ─▶ done queue jobs likewise ─▶ incremental vacuum in steps
//
// What each kind removes and what is never removed (pending deliveries, their triggers and
// appointment states, messages awaiting review, the consent ledger…): store.ts RetentionKind.
// `carerelay prune --dry-run` runs the same walk and only counts.
import { statSync } from 'node:fs';
import type { RetentionConfig } from '../config/operations-schema.ts';
import type { Logger } from '../log.ts';
import { pruneFinishedJobs, type SqliteCommitter } from '../queue/sqlite.ts';
import { RetentionKind, type PruneBatch, type Store } from '../store/store.ts';
import { BACKGROUND_TIMER, repeat, type Timer } from './timer.ts';

/** Finished queue jobs: not the store's (the queue owns them), retained all the same. */
export const DONE_JOBS = 'doneJobs';
export type RetainedKind = RetentionKind | typeof DONE_JOBS;

/**
 * The order of a run: bodies first (the shortest-lived and most sensitive), records after the
 * bodies they held, triggers after the deliveries that kept them, the long-lived evidence last.
 */
export const RETENTION_ORDER: readonly RetainedKind[] = [
  RetentionKind.DeliveryBodies,
  RetentionKind.Outbox,
  RetentionKind.RawMessages,
  RetentionKind.Deliveries,
  DONE_JOBS,
  RetentionKind.Triggers,
  RetentionKind.Decisions,
  RetentionKind.Audit,
  RetentionKind.Outcomes,
  RetentionKind.VideoJoins,
  RetentionKind.VideoLinks,
  RetentionKind.ReplyPrompts,
  RetentionKind.StaffTasks,
  RetentionKind.Waitlist,
];

/** Kinds whose walk position is kept between runs (what lies behind it is done for good). */
const RESUMABLE = new Set<RetainedKind>([RetentionKind.RawMessages]);
const cursorKey = (kind: RetainedKind) => `retention.${kind}.after`;

/** The store lock one retention run holds across processes. */
const RETENTION_LOCK = 'retention';

/**
 * Pages freed per vacuum step (4 KiB pages: 1 MiB a step). A step moves pages from the end of
 * the file into the holes and rewrites what points to them: over 100,000 bookings of history a
 * step of 1,024 pages held the event loop 15–54 ms (bench/retention.ts), the longest waits of
 * the run.
 */
const VACUUM_PAGES = 256;
const DAY_MS = 86_400_000;

export interface RetentionRun {
  dryRun: boolean;
  kinds: Array<{ kind: RetainedKind; days: number; before: string; removed: number }>;
  /** Database file size (with its WAL) before and after, bytes; embedded store only. */
  sizeBefore?: number;
  sizeAfter?: number;
  /** Pages handed back to the file system by the incremental vacuum. */
  vacuumedPages?: number;
  /** The timer's run found another process running retention on the shared store: nothing done. */
  skipped?: true;
}

export interface RetentionOptions {
  store: Store;
  config: RetentionConfig;
  /** The embedded store's file and commits: done jobs and the vacuum; absent for other stores. */
  sqlite?: SqliteCommitter & { file?: string };
  log: Logger;
  now?: () => number;
  timer?: Timer;
}

const turn = () => new Promise((resolve) => setImmediate(resolve));

export class RetentionJob {
  readonly #options: RetentionOptions;
  readonly #now: () => number;
  readonly #timer: Timer;
  #repeating: { stop(): void } | undefined;
  #running: Promise<RetentionRun> | undefined;
  #stopped = false;

  constructor(options: RetentionOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#timer = options.timer ?? BACKGROUND_TIMER;
  }

  /**
   * One whole run (or a dry one: counts only). One run at a time, in this process and in every
   * process sharing the store (its lock `retention`): on PostgreSQL the processes of a scale-out
   * do not walk and delete the same rows at once. `ifFree` (the timer's runs): when another
   * process is running retention now, this run is skipped (`skipped`), its work being done;
   * without it (`carerelay prune`) the run waits its turn. A dry run changes nothing and takes no lock.
   */
  async run(options: { dryRun?: boolean; ifFree?: boolean } = {}): Promise<RetentionRun> {
    while (this.#running) await this.#running.catch(() => undefined);
    const { store, log } = this.#options;
    const dryRun = options.dryRun === true;
    this.#running = dryRun
      ? this.#run(true)
      : options.ifFree
        ? store.tryLock(RETENTION_LOCK, () => this.#run(false)).then((run) => {
            if (run !== undefined) return run;
            log.info('retention.skipped', { reason: 'running_elsewhere' });
            return { dryRun: false, kinds: [], skipped: true };
          })
        : store.withLock(RETENTION_LOCK, () => this.#run(false));
    try {
      return await this.#running;
    } finally {
      this.#running = undefined;
    }
  }

  async #run(dryRun: boolean): Promise<RetentionRun> {
    const { store, config, sqlite, log } = this.#options;
    const now = this.#now();
    const run: RetentionRun = { dryRun, kinds: [] };
    const size = sqlite?.file === undefined ? undefined : () => fileSize(sqlite.file!);
    if (size) run.sizeBefore = size();
    for (const kind of RETENTION_ORDER) {
      if (this.#stopped) break;
      // Done jobs are the embedded queue's: none to walk without it (BullMQ drops its own).
      if (kind === DONE_JOBS && sqlite === undefined) continue;
      const days = config.days[kind];
      const beforeMs = now - days * DAY_MS;
      const before = new Date(beforeMs).toISOString();
      let removed = 0;
      let after = RESUMABLE.has(kind) && !dryRun ? await store.getCursor(cursorKey(kind)) : undefined;
      for (;;) {
        let batch: PruneBatch;
        const options = { limit: config.batchSize, ...(after !== undefined ? { after } : {}), ...(dryRun ? { dryRun } : {}) };
        if (kind === DONE_JOBS) {
          batch = await pruneFinishedJobs(sqlite!, beforeMs, options);
        } else {
          batch = await store.prune(kind, before, options);
        }
        removed += batch.removed;
        if (batch.next === undefined || this.#stopped) break;
        after = batch.next;
        await turn();
      }
      if (RESUMABLE.has(kind) && !dryRun && after !== undefined) await store.setCursor(cursorKey(kind), after);
      run.kinds.push({ kind, days, before, removed });
      if (!dryRun && removed > 0) log.info('retention.pruned', { reason: kind, count: removed });
    }
    if (!dryRun && sqlite !== undefined && config.vacuum === 'incremental') run.vacuumedPages = await this.#vacuum(sqlite);
    if (size) run.sizeAfter = size();
    return run;
  }

  /**
   * Gives free pages back to the file system, VACUUM_PAGES at a time, each step one write of the
   * group commit; only on a database with incremental auto-vacuum (sqlite-db.ts). Then the WAL is
   * checkpointed and truncated so the bytes leave the disk too.
   */
  async #vacuum(sqlite: SqliteCommitter): Promise<number> {
    const db = sqlite.db;
    if (db.pragma('auto_vacuum', { simple: true }) !== 2) return 0;
    let freed = 0;
    for (;;) {
      const free = db.pragma('freelist_count', { simple: true }) as number;
      if (free === 0 || this.#stopped) break;
      await sqlite.write(() => db.pragma(`incremental_vacuum(${VACUUM_PAGES})`));
      freed += Math.min(free, VACUUM_PAGES);
      await turn();
    }
    try {
      db.pragma('wal_checkpoint(TRUNCATE)');
    } catch {
      // Busy (another connection reading): the next checkpoint will do.
    }
    return freed;
  }

  /** Runs every everyMinutes, the first a minute after the start. */
  start(): void {
    const every = this.#options.config.everyMinutes * 60_000;
    this.#repeating = repeat(this.#timer, Math.min(60_000, every), every, () => this.run({ ifFree: true }), (error) =>
      this.#options.log.error('retention.failed', { code: (error as Error).name }),
    );
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#repeating?.stop();
    await this.#running?.catch(() => undefined);
  }
}

/** The database file and its WAL, bytes. */
export function fileSize(file: string): number {
  let total = 0;
  for (const f of [file, `${file}-wal`]) {
    try {
      total += statSync(f).size;
    } catch {
      // No WAL file (yet).
    }
  }
  return total;
}
