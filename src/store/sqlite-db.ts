// Opening the embedded SQLite database (the data dir's one file, shared by the store and the
// embedded queue) and a small per-component schema migration helper.
import fs from 'node:fs';
import path from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { SCHEMA_MIGRATIONS_TABLE } from './common.ts';

export type Database = BetterSqlite3.Database;

export interface OpenSqliteOptions {
  /** Open without write access (inspection tools, tests). Default false. */
  readonly?: boolean;
  /**
   * How long a statement waits for another connection's write lock before failing with
   * SQLITE_BUSY, in milliseconds. Default 5000: long enough to ride out a checkpoint or
   * another process's transaction, short enough that a stuck writer turns into a NAK.
   */
  busyTimeoutMs?: number;
}

const DEFAULT_BUSY_TIMEOUT_MS = 5000;

/**
 * Opens (creating when needed) the SQLite database at `file` with the settings CareRelay's
 * durability promise relies on (docs/reliability.md #1, #2):
 * - `journal_mode=WAL`: readers (admin API, queue polling) never block the writer;
 * - `synchronous=FULL`: every commit is fsynced before it returns, so an ACK sent after a
 *   commit survives power loss (NORMAL would only survive a process crash);
 * - `busy_timeout`, and `foreign_keys=ON` (off by default in SQLite);
 * - `auto_vacuum=INCREMENTAL` on a new file (space freed by retention can be given back).
 * Throws an Error naming the path and the fix when the directory cannot be created or
 * written. `':memory:'` opens a private in-memory database (tests only: not durable).
 */
export function openSqliteDatabase(file: string, options: OpenSqliteOptions = {}): Database {
  const readonly = options.readonly ?? false;
  const inMemory = file === ':memory:';
  if (!inMemory) checkLocation(file, readonly);

  let db: Database;
  try {
    db = new BetterSqlite3(file, { readonly, fileMustExist: readonly });
  } catch (error) {
    throw new Error(
      `cannot open the SQLite database ${file}: ${(error as Error).message}. ` +
        'Check that the data directory (CARERELAY_DATA or --data) exists and is writable by this user.',
      { cause: error },
    );
  }
  try {
    db.pragma(`busy_timeout = ${Math.max(0, Math.trunc(options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS))}`);
    if (!readonly && !inMemory && (db.prepare('SELECT COUNT(*) AS n FROM sqlite_master').get() as { n: number }).n === 0) {
      // A new file: auto_vacuum can only be chosen before the first table exists. INCREMENTAL
      // lets the retention job hand pages freed by pruning back to the file system in short
      // steps (PRAGMA incremental_vacuum). A file created before keeps its mode: freed pages
      // are reused, and `carerelay prune --vacuum` (a full VACUUM, server stopped) converts it.
      db.pragma('auto_vacuum = INCREMENTAL');
    }
    if (!readonly && !inMemory) {
      // journal_mode is persistent in the file; a read-only connection just reads it.
      const mode = db.pragma('journal_mode = WAL', { simple: true });
      if (mode !== 'wal') {
        throw new Error(
          `SQLite refused WAL mode on ${file} (got "${String(mode)}"): put the data directory on a local ` +
            'filesystem (network filesystems do not support the shared memory WAL needs).',
        );
      }
    }
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
  } catch (error) {
    db.close();
    throw error;
  }
  return db;
}

function checkLocation(file: string, readonly: boolean): void {
  const dir = path.dirname(path.resolve(file));
  if (!readonly) {
    try {
      fs.mkdirSync(dir, { recursive: true });
    } catch (error) {
      throw new Error(
        `cannot create the data directory ${dir} (${(error as NodeJS.ErrnoException).code ?? 'error'}): ` +
          'set CARERELAY_DATA or --data to a directory this user can create and write.',
        { cause: error },
      );
    }
  }
  try {
    // WAL needs to create -wal and -shm files beside the database, so the directory itself
    // must be writable, not only the file.
    fs.accessSync(dir, readonly ? fs.constants.R_OK : fs.constants.R_OK | fs.constants.W_OK);
  } catch (error) {
    throw new Error(
      `the data directory ${dir} is not ${readonly ? 'readable' : 'writable'} by this user ` +
        `(${(error as NodeJS.ErrnoException).code ?? 'error'}): fix its permissions or point CARERELAY_DATA / --data elsewhere.`,
      { cause: error },
    );
  }
  if (readonly) return;
  for (const existing of [file, `${file}-wal`, `${file}-shm`]) {
    try {
      fs.accessSync(existing, fs.constants.W_OK);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw new Error(
        `the database file ${existing} is not writable by this user (${(error as NodeJS.ErrnoException).code ?? 'error'}): ` +
          'fix its permissions or point CARERELAY_DATA / --data elsewhere.',
        { cause: error },
      );
    }
  }
}


/**
 * Brings component `name`'s tables up to date: `steps[i]` is the SQL of version i + 1 and
 * runs once per database. The pending steps and their rows in `schema_migrations` commit
 * in one transaction (all or nothing). Versions are kept per component name, so the store
 * and the queue evolve their own tables independently in one file.
 * Steps are append-only: never edit a released one, add a new step.
 * Returns the number of steps applied now. Throws when the database was written by a newer
 * CareRelay (more versions recorded than `steps` knows).
 */
/**
 * One schema version: SQL, or a function for a change SQL alone cannot express (it runs in the
 * migration's transaction like SQL does).
 */
export type MigrationStep = string | ((db: Database) => void);

export function migrate(db: Database, name: string, steps: readonly MigrationStep[]): number {
  if (name === '') throw new Error('migrate: the component name must not be empty');
  const current = (): number =>
    (db.prepare('SELECT MAX(version) AS v FROM schema_migrations WHERE component = ?').get(name) as { v: number | null })
      .v ?? 0;

  const ensureTable = (): void => {
    const exists = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").get();
    if (exists === undefined) db.exec(SCHEMA_MIGRATIONS_TABLE);
  };

  // IMMEDIATE takes the write lock before reading the version, so two processes starting
  // at once cannot both apply the same step.
  const run = db.transaction((): number => {
    ensureTable();
    const from = current();
    if (from > steps.length) {
      throw new Error(
        `the database schema of "${name}" is at version ${from} but this CareRelay knows only ${steps.length}: ` +
          'it was written by a newer version; upgrade CareRelay or restore a matching backup.',
      );
    }
    const record = db.prepare('INSERT INTO schema_migrations (component, version, applied_at) VALUES (?, ?, ?)');
    for (let v = from + 1; v <= steps.length; v++) {
      const step = steps[v - 1]!;
      if (typeof step === 'string') db.exec(step);
      else step(db);
      record.run(name, v, new Date().toISOString());
    }
    return steps.length - from;
  });

  // Fast path without a write lock (and without failing on a read-only connection) when
  // everything is already applied.
  const hasTable = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").get();
  if (hasTable !== undefined && current() === steps.length) return 0;
  return run.immediate();
}

/** How the processes of one data directory share it (lockDataDir). */
export const DataDirUse = {
  /** The embedded queue: routing and delivery state in this process only — it must be alone. */
  Alone: 'alone',
  /** The queue on Redis: any number of processes of this host share the store's file. */
  Shared: 'shared',
} as const;
export type DataDirUse = (typeof DataDirUse)[keyof typeof DataDirUse];

/** The lock file beside the store's database. */
export const DATA_DIR_LOCK_FILE = 'carerelay.lock';

/**
 * Claims the data directory for the life of this process (release() ends the claim; the OS
 * ends it when the process dies, even by SIGKILL). SQLite in WAL mode lets several processes
 * of one host write one file safely, but the embedded queue is not made for it: two processes
 * would each route the same triggers and run the same jobs. So an `alone` process holds an
 * exclusive lock on a small SQLite file beside the store, and a `shared` one (queue on Redis)
 * holds an open read transaction on it: alone refuses while anyone holds it, shared refuses
 * while an alone process does. The locks are SQLite's own (POSIX advisory locks), which also
 * tell two connections of one process apart. Throws an Error saying what to do.
 */
export function lockDataDir(dataDir: string, use: DataDirUse): { release(): void } {
  const file = path.join(dataDir, DATA_DIR_LOCK_FILE);
  const db = openSqliteLock(file);
  try {
    if (use === DataDirUse.Alone) {
      // EXCLUSIVE locking mode keeps the lock the first write takes until the connection closes.
      db.pragma('locking_mode = EXCLUSIVE');
      db.exec('CREATE TABLE IF NOT EXISTS holder (one INTEGER PRIMARY KEY CHECK (one = 1), pid INTEGER NOT NULL)');
      db.prepare('INSERT OR REPLACE INTO holder (one, pid) VALUES (1, ?)').run(process.pid);
    } else {
      db.exec('CREATE TABLE IF NOT EXISTS holder (one INTEGER PRIMARY KEY CHECK (one = 1), pid INTEGER NOT NULL)');
      // A read transaction left open keeps its SHARED lock: an `alone` process cannot write.
      db.exec('BEGIN');
      db.prepare('SELECT COUNT(*) FROM holder').get();
    }
  } catch (error) {
    db.close();
    if ((error as { code?: string }).code?.startsWith('SQLITE_BUSY')) {
      throw new Error(
        use === DataDirUse.Alone
          ? `another CareRelay process is using the data directory ${dataDir} (${DATA_DIR_LOCK_FILE} is locked). ` +
              'With the embedded queue (server.queue type sqlite) one process serves a data directory: stop the other ' +
              'process, give this one another data directory, or put the queue on Redis (server.queue type: bullmq) ' +
              'to run several processes on it.'
          : `a CareRelay process with the embedded queue (server.queue type sqlite) is using the data directory ${dataDir} ` +
              `(${DATA_DIR_LOCK_FILE} is locked): it must be alone there. Stop it, or give every process of this ` +
              'data directory the same server.queue (type: bullmq).',
        { cause: error },
      );
    }
    throw error;
  }
  let released = false;
  return {
    release() {
      if (released) return;
      released = true;
      db.close();
    },
  };
}

function openSqliteLock(file: string): Database {
  checkLocation(file, false);
  const db = new BetterSqlite3(file);
  // Waits out another process creating the file's table at the same moment; a holder keeps
  // its lock for its whole life, so waiting longer would not help.
  db.pragma('busy_timeout = 1000');
  return db;
}
