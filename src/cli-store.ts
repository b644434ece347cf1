// The `carerelay` commands that work on the configured store directly (docs/scale-out.md):
// migrate, export, import, and validate's --connect. Results go to stdout, problems to stderr.
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { once } from 'node:events';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig, type CarerelayPlan } from './config/load.ts';
import { StoreType } from './config/store-schema.ts';
import { ConfigError } from './errors.ts';
import { DumpError, readDump, writeDump, type DumpSource } from './store/dump.ts';
import { postgresDumpSource, postgresDumpTarget } from './store/postgres-dump.ts';
import type { PostgresStore } from './store/postgres.ts';
import { sqliteDumpSource } from './store/sqlite-dump.ts';
import { openSqliteDatabase } from './store/sqlite-db.ts';
import { SqliteStore } from './store/sqlite.ts';
import type { Store } from './store/store.ts';
import { checkStoreConnection, describeLocation, migrateStore, openStore, storeLocation, type StoreLocation } from './workers/store-setup.ts';

export const STORE_USAGE = `  migrate [--config-dir DIR]               create or upgrade the store's tables (server.store; also
                                           done at every start) and print the schema version
  export [--config-dir DIR] [--out FILE]   write the whole store (messages, triggers, states,
                                           deliveries, outbox, consent ledger, decisions, audit…)
                                           as NDJSON to FILE (default: stdout); run it with
                                           CareRelay stopped
  import [--config-dir DIR] FILE           load an export into the configured store, which must
                                           be empty; all or nothing (e.g. sqlite → postgres:
                                           docs/scale-out.md "Moving a store")
`;

function fail(message: string): number {
  process.stderr.write(`carerelay: ${message}\n`);
  return 2;
}

async function plan(configDir: string): Promise<CarerelayPlan> {
  return loadConfig({ configDir: path.resolve(configDir), env: process.env, checkSecrets: false });
}

/** Prints a configuration or store problem; exit code 1. */
function report(error: unknown): number {
  if (error instanceof ConfigError) {
    process.stderr.write(`${error.message}\n${error.issues.length} problem(s) found.\n`);
    return 1;
  }
  process.stderr.write(`carerelay: ${(error as Error).message}\n`);
  return 1;
}

/** `validate --connect`: one connection to the configured store, and what it found. */
export async function connectCheck(loaded: CarerelayPlan): Promise<number> {
  try {
    process.stdout.write(`store: ${await checkStoreConnection(storeLocation(loaded, process.env))}\n`);
    return 0;
  } catch (error) {
    process.stderr.write(`store: ${(error as Error).message}\n`);
    return 1;
  }
}

export async function cmdMigrate(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { 'config-dir': { type: 'string', default: '.' } }, strict: true });
  try {
    const location = storeLocation(await plan(values['config-dir'] as string), process.env);
    const { applied, version } = await migrateStore(location);
    process.stdout.write(`${describeLocation(location)}: schema version ${version}${applied > 0 ? ` (${applied} step(s) applied now)` : ' (up to date)'}\n`);
    return 0;
  } catch (error) {
    return report(error);
  }
}

/** The records of the configured store, and how to let it go. Works beside a running server. */
async function exportSource(location: StoreLocation): Promise<{ source: DumpSource; close: () => Promise<void> }> {
  if (location.type === StoreType.Postgres) {
    const store = (await openStore(location)) as PostgresStore;
    return { source: postgresDumpSource(store), close: () => store.close() };
  }
  if (!existsSync(location.file)) throw new Error(`no CareRelay store at ${location.file}: check dataDir (or --config-dir), or start CareRelay once to create it`);
  const db = openSqliteDatabase(location.file, { readonly: true });
  try {
    // Read-only: a store written by an older CareRelay cannot be upgraded from here.
    new SqliteStore(db);
  } catch (error) {
    db.close();
    throw new Error(`cannot read ${describeLocation(location)} (${(error as Error).message}): start this CareRelay version once to update it`, { cause: error });
  }
  return {
    source: sqliteDumpSource(db),
    close: async () => {
      db.close();
    },
  };
}

export async function cmdExport(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { 'config-dir': { type: 'string', default: '.' }, out: { type: 'string' } }, strict: true });
  let location: StoreLocation;
  let opened: Awaited<ReturnType<typeof exportSource>>;
  try {
    location = storeLocation(await plan(values['config-dir'] as string), process.env);
    opened = await exportSource(location);
  } catch (error) {
    return report(error);
  }
  const file = values.out as string | undefined;
  try {
    // The file holds patient data: readable by this user only, and never an existing file.
    const out = file === undefined ? process.stdout : createWriteStream(file, { flags: 'wx', mode: 0o600 });
    if (file !== undefined) await once(out, 'open');
    const counts = await writeDump(opened.source, out);
    if (file !== undefined) {
      out.end();
      await once(out, 'finish');
    }
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    process.stderr.write(`exported ${total} record(s) from ${describeLocation(location)}${file !== undefined ? ` to ${file}` : ''}\n`);
    return 0;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return fail(`${file} exists already: give a new file (an export never overwrites one)`);
    return report(error);
  } finally {
    await opened.close();
  }
}

export async function cmdImport(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, options: { 'config-dir': { type: 'string', default: '.' } }, allowPositionals: true, strict: true });
  if (positionals.length !== 1) return fail('import needs one FILE (made by carerelay export)');
  const file = positionals[0]!;
  let location: StoreLocation;
  try {
    location = storeLocation(await plan(values['config-dir'] as string), process.env);
  } catch (error) {
    return report(error);
  }
  if (location.type === StoreType.Sqlite) {
    return fail(`import writes into a PostgreSQL store (server.store type postgres); this configuration keeps ${describeLocation(location)}`);
  }
  let store: Store;
  try {
    store = await openStore(location);
  } catch (error) {
    return report(error);
  }
  try {
    const target = postgresDumpTarget(store as PostgresStore);
    await target.assertEmpty();
    const input = createReadStream(file);
    const counts = await target.load(readDump(input));
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    process.stdout.write(`imported ${total} record(s) into ${describeLocation(location)}: ${Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(', ')}\n`);
    return 0;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return fail(`${file} does not exist`);
    if (error instanceof DumpError) process.stderr.write(`carerelay: ${file} ${error.message}; nothing was imported\n`);
    else process.stderr.write(`carerelay: ${(error as Error).message}; nothing was imported\n`);
    return 1;
  } finally {
    await store.close();
  }
}
