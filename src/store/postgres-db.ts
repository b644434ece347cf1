// Connecting to PostgreSQL (the scale-out store, docs/scale-out.md): the connection settings a
// configuration gives, the pool with its limits and TLS, errors that name the server and the fix,
// the per-component schema migrations, and the text encoding every query goes through.
//
// Text and NUL. PostgreSQL's text type cannot hold the character U+0000, which a sender may put
// in an identifier (an HL7 MSH-10 with a NUL byte is parsed as such, and the embedded store
// keeps it). Every string parameter is therefore written with U+0000 as U+0001 "0" and U+0001
// as U+0001 "1", and every text column read back is decoded (`types` below): an injective
// encoding that keeps equality, prefixes and lengths' order of magnitude, and leaves ordinary
// text byte for byte as it was. JSON text never holds either character raw (JSON.stringify
// escapes both), so JSON stays readable in SQL.
import pg from 'pg';
import { SCHEMA_MIGRATIONS_TABLE } from './common.ts';

/** What `server.store` gives for PostgreSQL once its secrets are read (config/server-schema.ts). */
export interface PostgresSettings {
  /** postgres://user[:password]@host[:port]/database[?application_name=…] */
  url: string;
  /** Password, when the URL holds none (read from its own secret). */
  password?: string;
  /** TLS to the server; absent: a plain connection (loopback or a trusted network only). */
  tls?: PostgresTls;
  pool?: PostgresPoolLimits;
}

export interface PostgresTls {
  /** verify-full: the certificate must chain to `ca` (else the system CAs) and name the host; require: encrypted, not verified. */
  mode: 'verify-full' | 'require';
  /** PEM of the CA(s) that signed the server's certificate. */
  ca?: string;
  /** Client certificate and key (PEM), for servers that authenticate clients by certificate. */
  cert?: string;
  key?: string;
  /** Name the server's certificate must carry when it differs from the URL's host. */
  servername?: string;
}

export interface PostgresPoolLimits {
  /** Connections this process opens at most (default 10). */
  max?: number;
  /** How long a query waits for a free connection or a new one to open, ms (default 10,000). */
  connectionTimeoutMs?: number;
  /** An unused connection is closed after this long, ms (default 30,000). */
  idleTimeoutMs?: number;
}

/** Where a store connects, for messages and logs (never the password). */
export interface PostgresTarget {
  host: string;
  port: number;
  database: string;
  user: string;
}

export const DEFAULT_POOL_MAX = 10;
const DEFAULT_CONNECTION_TIMEOUT_MS = 10_000;
const DEFAULT_IDLE_TIMEOUT_MS = 30_000;
/**
 * Fewest connections a store runs with: the group commit's writer, a reader, and a routing
 * lock holder (withLock) must each be able to get one, or they could wait on each other.
 */
export const MIN_POOL_MAX = 3;

/** URL parameters the store reads; TLS is configured in `tls`, never in the URL. */
const URL_PARAMETERS = new Set(['application_name']);

export interface ParsedPostgresUrl extends PostgresTarget {
  password?: string;
  applicationName?: string;
}

/**
 * Reads a postgres:// (or postgresql://) URL. Throws an Error naming what is wrong — never
 * echoing the URL, which may hold a password.
 */
export function parsePostgresUrl(url: string): ParsedPostgresUrl {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error('the store URL is not a URL: write it as postgres://USER@HOST:PORT/DATABASE');
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    throw new Error(`the store URL must start with postgres:// (got ${parsed.protocol}//)`);
  }
  const database = decodeURIComponent(parsed.pathname.replace(/^\//, ''));
  if (parsed.hostname === '') throw new Error('the store URL names no host: write it as postgres://USER@HOST:PORT/DATABASE');
  if (database === '' || database.includes('/')) throw new Error('the store URL names no database: write it as postgres://USER@HOST:PORT/DATABASE');
  if (parsed.username === '') throw new Error('the store URL names no user: write it as postgres://USER@HOST:PORT/DATABASE');
  for (const key of parsed.searchParams.keys()) {
    if (key.startsWith('ssl')) throw new Error(`the store URL sets ${key}: configure TLS in server.store.tls (mode, ca) instead`);
    if (!URL_PARAMETERS.has(key)) throw new Error(`the store URL has the parameter ${key}, which CareRelay does not read (allowed: ${[...URL_PARAMETERS].join(', ')})`);
  }
  const port = parsed.port === '' ? 5432 : Number(parsed.port);
  const out: ParsedPostgresUrl = {
    host: parsed.hostname.replace(/^\[(.+)\]$/, '$1'),
    port,
    database,
    user: decodeURIComponent(parsed.username),
  };
  if (parsed.password !== '') out.password = decodeURIComponent(parsed.password);
  const applicationName = parsed.searchParams.get('application_name');
  if (applicationName !== null) out.applicationName = applicationName;
  return out;
}

/** host:port/database as user — for messages. */
export function describeTarget(target: PostgresTarget): string {
  const host = target.host.includes(':') ? `[${target.host}]` : target.host;
  return `PostgreSQL at ${host}:${target.port}, database "${target.database}" as user "${target.user}"`;
}

// Text columns (OID 25) come back decoded; bigint (20) as a number: CareRelay's bigints are
// epoch milliseconds and row ids, far below 2^53.
const TEXT_OID = 25;
const INT8_OID = 20;
const types: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') => {
    if (oid === TEXT_OID && format !== 'binary') return fromPgText;
    if (oid === INT8_OID && format !== 'binary') return (value: string) => Number(value);
    return pg.types.getTypeParser(oid, format as 'text');
  }) as pg.CustomTypesConfig['getTypeParser'],
};

/** A string as stored (see "Text and NUL" above). */
export function toPgText(value: string): string {
  return value.includes('\u0000') || value.includes('\u0001') ? value.replace(/[\u0000\u0001]/g, (c) => (c === '\u0000' ? '\u00010' : '\u00011')) : value;
}

/** The string a stored text stands for. */
export function fromPgText(value: string): string {
  return value.includes('\u0001') ? value.replace(/\u0001([01])/g, (_m, d: string) => (d === '0' ? '\u0000' : '\u0001')) : value;
}

/** A query parameter as sent: strings (also inside arrays) encoded. */
export function pgParam(value: unknown): unknown {
  if (typeof value === 'string') return toPgText(value);
  if (Array.isArray(value)) return value.map(pgParam);
  return value;
}

export interface PostgresConnection {
  pool: pg.Pool;
  target: PostgresTarget;
  /** The limits in force. */
  poolMax: number;
}

/**
 * A pool for `settings` (no connection is opened yet: see checkPostgres). Throws a clear Error
 * for a URL or TLS setting that cannot work.
 */
export function openPostgresPool(settings: PostgresSettings): PostgresConnection {
  const url = parsePostgresUrl(settings.url);
  if (url.password !== undefined && settings.password !== undefined) {
    throw new Error('the store URL holds a password and server.store.password gives another: keep one of them');
  }
  const poolMax = settings.pool?.max ?? DEFAULT_POOL_MAX;
  if (!Number.isInteger(poolMax) || poolMax < MIN_POOL_MAX) {
    throw new Error(`server.store.pool.max must be a whole number of at least ${MIN_POOL_MAX} (the writer, a reader and the routing lock each hold one), got ${poolMax}`);
  }
  const target: PostgresTarget = { host: url.host, port: url.port, database: url.database, user: url.user };
  const password = settings.password ?? url.password;
  const tls = settings.tls;
  const pool = new pg.Pool({
    host: url.host,
    port: url.port,
    database: url.database,
    user: url.user,
    ...(password !== undefined ? { password } : {}),
    application_name: url.applicationName ?? 'carerelay',
    max: poolMax,
    connectionTimeoutMillis: settings.pool?.connectionTimeoutMs ?? DEFAULT_CONNECTION_TIMEOUT_MS,
    idleTimeoutMillis: settings.pool?.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS,
    keepAlive: true,
    types,
    // Statements sent without waiting for the previous answer: a group commit's writes cost
    // about one round trip, not one each (measured on loopback: 27 µs per statement, not 105).
    pipeline: true,
    ssl:
      tls === undefined
        ? false
        : {
            rejectUnauthorized: tls.mode === 'verify-full',
            ...(tls.ca !== undefined ? { ca: tls.ca } : {}),
            ...(tls.cert !== undefined ? { cert: tls.cert } : {}),
            ...(tls.key !== undefined ? { key: tls.key } : {}),
            ...(tls.servername !== undefined ? { servername: tls.servername } : {}),
          },
  } as pg.PoolConfig);
  // An idle connection the server closed (restart, failover) must not crash the process: the
  // pool drops it and the next query opens a new one.
  pool.on('error', () => {});
  // A connection the server closes while it is checked out but between queries (the one
  // withLock holds during a routing pass, a commit's between two statements) emits 'error' on
  // its client, where the pool no longer listens: without a listener of its own that event
  // ended the process. The failure reaches the caller through its next query instead (which
  // rejects, and the connection is released as broken).
  pool.on('connect', (client) => {
    client.on('error', () => {});
  });
  return { pool, target, poolMax };
}

/** SQLSTATE codes and Node error codes, and what to do about each. */
function explanation(error: unknown, target: PostgresTarget): string | undefined {
  const e = error as { code?: unknown; message?: unknown };
  const code = typeof e?.code === 'string' ? e.code : undefined;
  const message = typeof e?.message === 'string' ? e.message : '';
  switch (code) {
    case 'ECONNREFUSED':
      return `nothing accepts connections at ${target.host}:${target.port}: start PostgreSQL there, or correct the host and port of the store URL`;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `the host name ${target.host} is not known: correct the store URL's host`;
    case 'ETIMEDOUT':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return `${target.host}:${target.port} cannot be reached: check the host, the port and any firewall between`;
    case '28P01':
      return `the server refused the password of user "${target.user}": check the secret of the store URL or server.store.password`;
    case '28000':
      return /no encryption/i.test(message)
        ? 'the server accepts this user only over TLS (pg_hba.conf hostssl): configure server.store.tls'
        : `the server does not let user "${target.user}" connect to database "${target.database}" from here: add a line for it to the server's pg_hba.conf`;
    case '3D000':
      return `the database "${target.database}" does not exist: create it (createdb -O ${target.user} ${target.database}) or correct the store URL`;
    case '42501':
      return `user "${target.user}" may not create CareRelay's tables: grant it CREATE on the database's schema (or run carerelay migrate as its owner)`;
    case '53300':
      return 'the server has no connection slot left: lower server.store.pool.max, or raise max_connections on the server';
    case '57P03':
      return 'the server is starting up or shutting down: try again once it accepts connections';
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'CERT_UNTRUSTED':
      return "the server's TLS certificate is not signed by a CA this process trusts: give the CA's certificate in server.store.tls.ca ({ file: PATH })";
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
      return `the server's TLS certificate does not name ${target.host}: connect by a name it holds, or set server.store.tls.servername`;
    case 'CERT_HAS_EXPIRED':
      return "the server's TLS certificate has expired: renew it on the server";
    default:
      break;
  }
  if (/does not support SSL/i.test(message)) return 'the server does not accept TLS connections: turn ssl on in postgresql.conf, or remove server.store.tls on a trusted network';
  if (/timeout exceeded when trying to connect|Connection terminated due to connection timeout/i.test(message)) {
    return `no connection to ${target.host}:${target.port} within the connection timeout: check that the server runs and is reachable (server.store.pool.connectionTimeoutSeconds sets the wait)`;
  }
  return undefined;
}

/**
 * An Error saying which server could not be used and how to fix it (the original as its
 * cause); errors that are not about reaching the server come back as they were.
 */
export function explainPostgresError(error: unknown, target: PostgresTarget): Error {
  const fix = explanation(error, target);
  if (fix === undefined) return error instanceof Error ? error : new Error(String(error));
  const wrapped = new Error(`cannot use ${describeTarget(target)}: ${fix}`, { cause: error });
  const code = (error as { code?: unknown })?.code;
  if (typeof code === 'string') (wrapped as Error & { code?: string }).code = code;
  return wrapped;
}

/** Opens one connection and asks the server's version: `validate --connect` and start-up. */
export async function checkPostgres(connection: PostgresConnection): Promise<{ serverVersion: string }> {
  try {
    const result = await connection.pool.query<{ server_version: string }>('SHOW server_version');
    return { serverVersion: result.rows[0]!.server_version };
  } catch (error) {
    throw explainPostgresError(error, connection.target);
  }
}

// ---------------------------------------------------------------------------------------
// Migrations.

/** Key space of CareRelay's advisory locks (pg_advisory_lock(int, int)): "CR". */
export const LOCK_SPACE = 0x4352;


/**
 * Brings component `name`'s tables up to date: `steps[i]` is the SQL of version i + 1, run once
 * per database. The pending steps and their rows in schema_migrations commit in one
 * transaction (PostgreSQL's DDL is transactional: all or nothing), under an advisory lock so
 * that processes starting at once apply each step once. Steps are append-only: never edit a
 * released one, add a new step. Returns the number of steps applied now; throws when the
 * database was written by a newer CareRelay.
 */
export async function migratePostgres(pool: pg.Pool, name: string, steps: readonly string[]): Promise<number> {
  if (name === '') throw new Error('migrate: the component name must not be empty');
  const client = await pool.connect();
  try {
    // Fast path, without the lock, when every step is applied.
    const applied = await currentVersion(client, name);
    if (applied === steps.length) return 0;
    await client.query('BEGIN');
    try {
      await client.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LOCK_SPACE, 'migrate']);
      await client.query(SCHEMA_MIGRATIONS_TABLE);
      const from = (await currentVersion(client, name)) ?? 0;
      if (from > steps.length) {
        throw new Error(
          `the database schema of "${name}" is at version ${from} but this CareRelay knows only ${steps.length}: ` +
            'it was written by a newer version; upgrade CareRelay or restore a matching backup.',
        );
      }
      for (let v = from + 1; v <= steps.length; v++) {
        await client.query(steps[v - 1]!);
        await client.query('INSERT INTO schema_migrations (component, version, applied_at) VALUES ($1, $2, $3)', [name, v, new Date().toISOString()]);
      }
      await client.query('COMMIT');
      return steps.length - from;
    } catch (error) {
      await client.query('ROLLBACK').catch(() => {});
      throw error;
    }
  } finally {
    client.release();
  }
}

/** The version applied for `name`, undefined when the table does not exist yet. */
async function currentVersion(client: pg.PoolClient, name: string): Promise<number | undefined> {
  const exists = await client.query<{ t: string | null }>("SELECT to_regclass('schema_migrations')::text AS t");
  if (exists.rows[0]!.t === null) return undefined;
  const row = await client.query<{ v: number | null }>('SELECT MAX(version) AS v FROM schema_migrations WHERE component = $1', [name]);
  return row.rows[0]!.v ?? 0;
}

/** Every component's version in this database (carerelay migrate prints them). */
export async function migrationVersions(pool: pg.Pool): Promise<Record<string, number>> {
  const exists = await pool.query<{ t: string | null }>("SELECT to_regclass('schema_migrations')::text AS t");
  if (exists.rows[0]!.t === null) return {};
  const rows = await pool.query<{ component: string; v: number }>('SELECT component, MAX(version) AS v FROM schema_migrations GROUP BY component ORDER BY component');
  return Object.fromEntries(rows.rows.map((r) => [r.component, r.v]));
}
