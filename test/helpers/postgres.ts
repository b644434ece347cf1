// PostgreSQL for tests and benchmarks: a real server on loopback, never a mock.
//
// Where the server comes from, in order:
//   1. CARERELAY_TEST_PG_URL: a server CI (.ci/run) or the developer started, as
//      postgres://USER@127.0.0.1:PORT/postgres with the right to create databases;
//   2. else a throwaway cluster this process starts itself (initdb into a temporary directory,
//      pg_ctl on 127.0.0.1 and a free port, stopped when the process ends, even by a signal), when PostgreSQL's
//      binaries are installed (/usr/lib/postgresql/<version>/bin, or CARERELAY_PG_BIN);
//   3. else the tests FAIL, saying how to get one. CARERELAY_TEST_PG=skip skips them instead
//      (an explicit opt-out, README "Tests").
// Each test file gets databases of its own (createTestDatabase), dropped at its end.
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterProcessGone } from './process-gone.ts';

export const TEST_PG_URL_ENV = 'CARERELAY_TEST_PG_URL';
export const TEST_PG_OPT_OUT_ENV = 'CARERELAY_TEST_PG';

/** True when the run opted out of PostgreSQL tests (CARERELAY_TEST_PG=skip). */
export function postgresSkipped(): boolean {
  return process.env[TEST_PG_OPT_OUT_ENV] === 'skip';
}

/** The directory of PostgreSQL's server binaries, or undefined when none is installed. */
export function postgresBinDir(): string | undefined {
  const given = process.env.CARERELAY_PG_BIN;
  if (given) return existsSync(path.join(given, 'initdb')) ? given : undefined;
  const root = '/usr/lib/postgresql';
  if (existsSync(root)) {
    const versions = readdirSync(root)
      .filter((v) => /^\d+$/.test(v) && existsSync(path.join(root, v, 'bin', 'initdb')))
      .sort((a, b) => Number(b) - Number(a));
    if (versions.length > 0) return path.join(root, versions[0]!, 'bin');
  }
  const which = spawnSync('sh', ['-c', 'command -v initdb'], { encoding: 'utf8' });
  return which.status === 0 && which.stdout.trim() !== '' ? path.dirname(which.stdout.trim()) : undefined;
}

export interface PostgresCluster {
  /** postgres://postgres@127.0.0.1:PORT/postgres */
  url: string;
  port: number;
  dataDir: string;
  /** Stops the server as a crash would (immediate mode: no checkpoint) and starts it again on the same port and files. */
  restart(): void;
  stop(): void;
}

export interface ClusterOptions {
  /**
   * Keep PostgreSQL's durability settings (fsync, synchronous commit, full-page writes): for
   * benchmarks. Tests run without them (nothing there survives a power cut anyway).
   */
  durable?: boolean;
  /** Turn TLS on with this certificate and key (PEM). */
  tls?: { cert: string; key: string };
  /** pg_hba.conf lines replacing the default (trust for every local TCP connection). */
  hba?: readonly string[];
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** The user the cluster runs as: this one, or `postgres` when this is root (initdb refuses root). */
function runAs(): { prefix: string[]; uid?: number; gid?: number } {
  if (process.getuid?.() !== 0) return { prefix: [] };
  const id = (flag: string) => spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' });
  const uid = id('-u');
  if (uid.status !== 0) {
    throw new Error('PostgreSQL refuses to run as root and there is no "postgres" user to run it as: create one (useradd -r postgres) or run the tests as another user');
  }
  return { prefix: ['runuser', '-u', 'postgres', '--'], uid: Number(uid.stdout.trim()), gid: Number(id('-g').stdout.trim()) };
}

/** Starts a throwaway cluster on 127.0.0.1 (about a second); stop() removes it. */
export async function startPostgresCluster(options: ClusterOptions = {}): Promise<PostgresCluster> {
  const bin = postgresBinDir();
  if (bin === undefined) throw new Error(missingServerMessage());
  const user = runAs();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'carerelay-pg-'));
  const dataDir = path.join(dir, 'data');
  const own = (file: string) => {
    if (user.uid !== undefined) chownSync(file, user.uid, user.gid!);
  };
  own(dir);
  const run = (command: string, args: string[]) => {
    const [cmd, ...rest] = [...user.prefix, path.join(bin, command), ...args];
    execFileSync(cmd!, rest, { stdio: ['ignore', 'ignore', 'pipe'], cwd: dir });
  };
  run('initdb', ['-D', dataDir, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--no-locale', '--no-sync']);
  const port = await freePort();
  const settings = [
    "listen_addresses = '127.0.0.1'",
    `port = ${port}`,
    `unix_socket_directories = '${dir}'`,
    'max_connections = 200',
    ...(options.durable ? [] : ['fsync = off', 'synchronous_commit = off', 'full_page_writes = off']),
  ];
  if (options.tls) {
    for (const [name, pem] of [['server.crt', options.tls.cert], ['server.key', options.tls.key]] as const) {
      const file = path.join(dataDir, name);
      writeFileSync(file, pem, { mode: 0o600 });
      own(file);
    }
    settings.push('ssl = on', "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'");
  }
  appendFileSync(path.join(dataDir, 'postgresql.conf'), `\n${settings.join('\n')}\n`);
  if (options.hba) writeFileSync(path.join(dataDir, 'pg_hba.conf'), `${options.hba.join('\n')}\n`);
  const start = () => run('pg_ctl', ['-D', dataDir, '-l', path.join(dir, 'server.log'), '-w', '-t', '60', 'start']);
  start();
  let stopped = false;
  const restart = () => {
    run('pg_ctl', ['-D', dataDir, '-m', 'immediate', '-w', 'stop']);
    start();
  };
  const stop = () => {
    if (stopped) return;
    stopped = true;
    try {
      run('pg_ctl', ['-D', dataDir, '-m', 'immediate', '-w', 'stop']);
    } catch {
      // Already gone.
    }
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', stop);
  afterProcessGone([[...user.prefix, path.join(bin, 'pg_ctl'), '-D', dataDir, '-m', 'immediate', '-w', 'stop'], ['rm', '-rf', dir]]);
  return { url: `postgres://postgres@127.0.0.1:${port}/postgres`, port, dataDir, restart, stop };
}

function missingServerMessage(): string {
  return (
    'PostgreSQL tests need a server: set CARERELAY_TEST_PG_URL=postgres://USER@127.0.0.1:PORT/postgres (a user that may create ' +
    'databases), or install PostgreSQL (apt-get install postgresql) so the tests start a throwaway one; ' +
    'CARERELAY_TEST_PG=skip skips them instead'
  );
}

let server: Promise<string> | undefined;

/** The URL of the server this process's tests use (see the top of this file). */
export function testPostgresServer(): Promise<string> {
  server ??= (async () => {
    const given = process.env[TEST_PG_URL_ENV];
    if (given) return given;
    if (postgresBinDir() === undefined) throw new Error(missingServerMessage());
    return (await startPostgresCluster()).url;
  })();
  return server;
}

/** `url` with another database name. */
export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

export interface TestDatabase {
  url: string;
  name: string;
  drop(): Promise<void>;
}

/** A new, empty database on the test server; drop() removes it (connections closed by force). */
export async function createTestDatabase(prefix = 'carerelay_test'): Promise<TestDatabase> {
  const serverUrl = await testPostgresServer();
  const name = `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`;
  await adminQuery(serverUrl, `CREATE DATABASE ${name}`);
  return {
    url: withDatabase(serverUrl, name),
    name,
    drop: () => dropDatabase(serverUrl, name),
  };
}

/**
 * Drops a test database and the connections still open to it. WITH (FORCE) refuses, for a
 * role that is not a superuser, when one of those is an autovacuum worker (PostgreSQL 15
 * checks its right to signal every backend there, and a worker belongs to no role: "must be a
 * member of the role whose process is being terminated"); CI's role is such a role, and a
 * test that wrote a lot leaves autovacuum busy in its database. Then: this role's own
 * connections are ended, and a plain DROP DATABASE, which stops autovacuum workers itself
 * and waits up to 5 s for ended backends to go.
 */
export async function dropDatabase(serverUrl: string, name: string): Promise<void> {
  try {
    await adminQuery(serverUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  } catch (error) {
    if ((error as { code?: string }).code !== INSUFFICIENT_PRIVILEGE) throw error;
    await endConnections(serverUrl, name);
    await adminQuery(serverUrl, `DROP DATABASE IF EXISTS ${name}`);
  }
}

/**
 * Ends the connections this role has open to database `name` (a store's pool: tests that
 * make the server drop them). Only this role's: another role's backend, or an autovacuum
 * worker, would make pg_terminate_backend fail for a role that is not a superuser.
 */
export async function endConnections(serverUrl: string, name: string): Promise<void> {
  await adminQuery(serverUrl, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${name}' AND usename = current_user AND pid <> pg_backend_pid()`);
}

/** SQLSTATE 42501. */
const INSUFFICIENT_PRIVILEGE = '42501';

/** Runs one statement on the server's maintenance database. */
export async function adminQuery(serverUrl: string, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

/** Empties every table of a CareRelay database but schema_migrations (identities restart). */
export async function truncateAll(url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ name: string }>(
      "SELECT quote_ident(tablename) AS name FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'schema_migrations'",
    );
    if (rows.length > 0) await client.query(`TRUNCATE ${rows.map((r) => r.name).join(', ')} RESTART IDENTITY`);
  } finally {
    await client.end();
  }
}
