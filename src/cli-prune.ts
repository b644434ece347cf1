// `carerelay prune`: the retention job (workers/retention.ts) once, from a terminal, on the
// configured store (the data directory's file, or PostgreSQL) — beside running servers too (each
// batch is a short transaction; the servers' writes go through between them). `--dry-run` only counts
// what would go, per kind. `--vacuum` compacts the whole file with VACUUM and turns incremental
// auto-vacuum on, for databases created before it was the default: it rewrites the file (needing
// as much free disk again) and holds every write until it is done, so stop the server first.
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { CarerelayPlan } from './config/load.ts';
import { ConfigError } from './errors.ts';
import type { Store } from './store/store.ts';
import type { RetentionRun } from './workers/retention.ts';

export const PRUNE_USAGE = `  prune [--config-dir DIR] [--dry-run] [--vacuum] [--json]
                                           remove what is older than its retention (the
                                           retention block), never what is still needed;
                                           --dry-run: count what would go, per kind;
                                           --vacuum (server stopped): compact the file and turn
                                           incremental auto-vacuum on
`;

const number = (n: number) => n.toLocaleString('en-US');
const megabytes = (n: number) => `${(n / 1_048_576).toFixed(1)} MB`;

export async function cmdPrune(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      'config-dir': { type: 'string', default: '.' },
      'dry-run': { type: 'boolean', default: false },
      vacuum: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const { loadConfig } = await import('./config/load.ts');
  const { openSqliteDatabase } = await import('./store/sqlite-db.ts');
  const { SqliteStore } = await import('./store/sqlite.ts');
  const { RetentionJob, fileSize } = await import('./workers/retention.ts');
  const { storeFile } = await import('./workers/store-setup.ts');
  const { silentLogger } = await import('./log.ts');
  const dryRun = values['dry-run'] === true;
  let plan;
  try {
    plan = await loadConfig({ configDir: path.resolve(values['config-dir'] as string), env: process.env, checkSecrets: false });
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`${error.message}\n${error.issues.length} problem(s) found; nothing was pruned.\n`);
    return 1;
  }
  if (plan.server.store.type === 'postgres') return prunePostgres(plan, dryRun, values.json === true, values.vacuum === true);
  const file = storeFile(plan.server.dataDir);
  const { existsSync } = await import('node:fs');
  if (!existsSync(file)) {
    process.stderr.write(`carerelay: no CareRelay store at ${file}: check the configuration's server.dataDir (or CARERELAY_DATA)\n`);
    return 1;
  }
  // A dry run only reads: it opens the file read-only, so it cannot disturb a running server.
  const db = openSqliteDatabase(file, { readonly: dryRun });
  const store = new SqliteStore(db, { closeDatabase: true });
  try {
    const job = new RetentionJob({ store, config: plan.retention, sqlite: { db, write: (work) => store.write(work), file }, log: silentLogger });
    const run = await job.run({ dryRun });
    let vacuum: { before: number; after: number } | undefined;
    if (values.vacuum === true && !dryRun) {
      const before = fileSize(file);
      db.pragma('auto_vacuum = INCREMENTAL');
      db.exec('VACUUM');
      db.pragma('wal_checkpoint(TRUNCATE)');
      vacuum = { before, after: fileSize(file) };
    }
    if (values.json === true) {
      process.stdout.write(`${JSON.stringify({ ...run, ...(vacuum ? { vacuum } : {}) })}\n`);
      return 0;
    }
    writeKinds(run, dryRun);
    if (!dryRun && run.sizeBefore !== undefined && run.sizeAfter !== undefined) {
      process.stdout.write(`database: ${megabytes(run.sizeBefore)} before, ${megabytes(run.sizeAfter)} after (${number(run.vacuumedPages ?? 0)} pages given back)\n`);
    }
    if (vacuum) process.stdout.write(`VACUUM: ${megabytes(vacuum.before)} → ${megabytes(vacuum.after)}; incremental auto-vacuum now on\n`);
    if (db.pragma('auto_vacuum', { simple: true }) !== 2 && !vacuum) {
      process.stdout.write('note: this database was created without incremental auto-vacuum: freed space is reused, not given back; `carerelay prune --vacuum` (server stopped) compacts it\n');
    }
    return 0;
  } finally {
    await store.close();
  }
}

function writeKinds(run: RetentionRun, dryRun: boolean): void {
  process.stdout.write(`${dryRun ? 'would remove' : 'removed'} (older than its retention, never what is still needed):\n`);
  for (const k of run.kinds) process.stdout.write(`  ${k.kind.padEnd(16)} ${number(k.removed).padStart(10)}   older than ${k.days} days (before ${k.before})\n`);
}

/**
 * The PostgreSQL store (server.store type postgres): the same walk, each batch one short
 * transaction among the servers' (postgres-retention.ts). Done queue jobs are the embedded
 * queue's, in the data directory's file when this machine has it; a queue on Redis drops its
 * own (queue/bullmq.ts). PostgreSQL's autovacuum makes the freed space reusable; the files
 * shrink only with VACUUM FULL, which an operator runs (docs/operations.md "Retention").
 */
async function prunePostgres(plan: CarerelayPlan, dryRun: boolean, json: boolean, vacuum: boolean): Promise<number> {
  if (vacuum) {
    process.stderr.write('carerelay: --vacuum compacts the embedded SQLite file; on PostgreSQL autovacuum reuses the freed space (VACUUM FULL, run by an operator, shrinks the files); nothing was pruned\n');
    return 1;
  }
  const { existsSync } = await import('node:fs');
  const { openSqliteDatabase } = await import('./store/sqlite-db.ts');
  const { ownTransactions } = await import('./queue/sqlite.ts');
  const { RetentionJob } = await import('./workers/retention.ts');
  const { openStore, storeFile, storeLocation } = await import('./workers/store-setup.ts');
  const { silentLogger } = await import('./log.ts');
  let store: Store;
  try {
    store = await openStore(storeLocation(plan, process.env));
  } catch (error) {
    process.stderr.write(`carerelay: ${(error as Error).message}; nothing was pruned\n`);
    return 1;
  }
  const queueFile = storeFile(plan.server.dataDir);
  const embeddedQueue = plan.server.queue.type !== 'bullmq' && existsSync(queueFile);
  const db = embeddedQueue ? openSqliteDatabase(queueFile, { readonly: dryRun }) : undefined;
  try {
    const job = new RetentionJob({ store, config: plan.retention, ...(db !== undefined ? { sqlite: ownTransactions(db) } : {}), log: silentLogger });
    const run = await job.run({ dryRun });
    if (json) process.stdout.write(`${JSON.stringify(run)}\n`);
    else writeKinds(run, dryRun);
    return 0;
  } finally {
    db?.close();
    await store.close();
  }
}
