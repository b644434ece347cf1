// `carerelay prune`: the retention job (workers/retention.ts) once, from a terminal, on the store
// of the configuration's data directory — beside a running server too (each batch is a short
// transaction; SQLite lets the server's writes through between them). `--dry-run` only counts
// what would go, per kind. `--vacuum` compacts the whole file with VACUUM and turns incremental
// auto-vacuum on, for databases created before it was the default: it rewrites the file (needing
// as much free disk again) and holds every write until it is done, so stop the server first.
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError } from './errors.ts';

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
  if (plan.server.store.type !== 'sqlite') {
    process.stderr.write('carerelay: prune works on the embedded store only; retention is not available on the PostgreSQL store yet (docs/scale-out.md "Limits"); nothing was pruned\n');
    return 1;
  }
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
    process.stdout.write(`${dryRun ? 'would remove' : 'removed'} (older than its retention, never what is still needed):\n`);
    for (const k of run.kinds) process.stdout.write(`  ${k.kind.padEnd(16)} ${number(k.removed).padStart(10)}   older than ${k.days} days (before ${k.before})\n`);
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
