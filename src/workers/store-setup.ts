// The store a configuration names (server.store, config/store-schema.ts), for the server
// (main.ts) and the commands that read or write it directly (carerelay validate --connect,
// migrate, export, import, outbox). Secrets are read here, from the environment or files.
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { CarerelayPlan } from '../config/load.ts';
import { StoreType, type StoreConfig } from '../config/store-schema.ts';
import { readSecret, type Env } from '../config/yaml.ts';
import { checkPostgres, describeTarget, migratePostgres, migrationVersions, openPostgresPool, parsePostgresUrl, type PostgresSettings } from '../store/postgres-db.ts';
import { POSTGRES_STORE_COMPONENT, POSTGRES_STORE_MIGRATIONS, PostgresStore } from '../store/postgres.ts';
import { migrate, openSqliteDatabase, type Database } from '../store/sqlite-db.ts';
import { SQLITE_STORE_COMPONENT, SQLITE_STORE_MIGRATIONS, SqliteStore } from '../store/sqlite.ts';
import type { Store } from '../store/store.ts';

/** The embedded store's file (and the embedded queue's) in a data directory. */
export function storeFile(dataDir: string): string {
  return path.join(path.resolve(dataDir), 'carerelay.db');
}

/** Where the configured store is. */
export type StoreLocation = { type: typeof StoreType.Sqlite; file: string } | { type: typeof StoreType.Postgres; settings: PostgresSettings };

type PlanPart = Pick<CarerelayPlan, 'server' | 'configDir'>;

/** The store of `plan`, its secrets read (throws an Error naming a secret that cannot be read). */
export function storeLocation(plan: PlanPart, env: Env): StoreLocation {
  const config: StoreConfig | undefined = plan.server.store;
  if (config === undefined || config.type === StoreType.Sqlite) return { type: StoreType.Sqlite, file: storeFile(plan.server.dataDir) };
  const secret = (ref: NonNullable<StoreConfig['url']>) => readSecret(ref, env, plan.configDir);
  if (config.url === undefined) throw new Error('server.store: type postgres needs url: { env: DATABASE_URL } (or { file: PATH })');
  const tls = config.tls;
  return {
    type: StoreType.Postgres,
    settings: {
      url: secret(config.url),
      ...(config.password !== undefined ? { password: secret(config.password) } : {}),
      ...(tls !== undefined
        ? {
            tls: {
              mode: tls.mode,
              ...(tls.ca !== undefined ? { ca: secret(tls.ca) } : {}),
              ...(tls.cert !== undefined ? { cert: secret(tls.cert) } : {}),
              ...(tls.key !== undefined ? { key: secret(tls.key) } : {}),
              ...(tls.servername !== undefined ? { servername: tls.servername } : {}),
            },
          }
        : {}),
      pool: {
        max: config.pool.max,
        connectionTimeoutMs: Math.round(config.pool.connectionTimeoutSeconds * 1000),
        idleTimeoutMs: Math.round(config.pool.idleTimeoutSeconds * 1000),
      },
    },
  };
}

/** "SQLite file …" / "PostgreSQL at host:port, database …" — for messages (never a password). */
export function describeLocation(location: StoreLocation): string {
  if (location.type === StoreType.Sqlite) return `the SQLite file ${location.file}`;
  return describeTarget(parsePostgresUrl(location.settings.url));
}

/** Where a PostgreSQL store is, as log fields (host and port: configuration, never a password). */
export function storeLogFields(location: StoreLocation & { type: typeof StoreType.Postgres }): { host: string; port: number } {
  const { host, port } = parsePostgresUrl(location.settings.url);
  return { host, port };
}

/**
 * Opens the configured store, its schema brought up to date. `db`: the data dir's SQLite file
 * when the caller has it open already (the server: the embedded queue shares it); the store
 * then closes it in close().
 */
export async function openStore(location: StoreLocation, db?: Database): Promise<Store> {
  if (location.type === StoreType.Sqlite) {
    const file = db ?? openSqliteDatabase(location.file);
    try {
      return new SqliteStore(file, { closeDatabase: true });
    } catch (error) {
      file.close();
      throw error;
    }
  }
  return PostgresStore.open(location.settings);
}

/**
 * Opens one connection to the configured store and says what it found (validate --connect):
 * the server's version, or for SQLite whether the file exists. Throws an Error naming the
 * server and the fix when it cannot be reached.
 */
export async function checkStoreConnection(location: StoreLocation): Promise<string> {
  if (location.type === StoreType.Sqlite) {
    return existsSync(location.file) ? `${describeLocation(location)} exists` : `${describeLocation(location)} does not exist yet (created at the first start)`;
  }
  const connection = openPostgresPool(location.settings);
  try {
    const { serverVersion } = await checkPostgres(connection);
    const versions = await migrationVersions(connection.pool);
    const at = versions[POSTGRES_STORE_COMPONENT];
    const schema =
      at === undefined ? 'no CareRelay tables yet (created at the first start, or by carerelay migrate)' : `schema version ${at} of ${POSTGRES_STORE_MIGRATIONS.length}`;
    return `${describeTarget(connection.target)}: connected (PostgreSQL ${serverVersion}), ${schema}`;
  } finally {
    await connection.pool.end();
  }
}

/** Brings the configured store's schema up to date (carerelay migrate); the steps applied now. */
export async function migrateStore(location: StoreLocation): Promise<{ applied: number; version: number }> {
  if (location.type === StoreType.Sqlite) {
    const db = openSqliteDatabase(location.file);
    try {
      return { applied: migrate(db, SQLITE_STORE_COMPONENT, SQLITE_STORE_MIGRATIONS), version: SQLITE_STORE_MIGRATIONS.length };
    } finally {
      db.close();
    }
  }
  const connection = openPostgresPool(location.settings);
  try {
    await checkPostgres(connection);
    return { applied: await migratePostgres(connection.pool, POSTGRES_STORE_COMPONENT, POSTGRES_STORE_MIGRATIONS), version: POSTGRES_STORE_MIGRATIONS.length };
  } finally {
    await connection.pool.end();
  }
}
