// A real Redis for the tests that need one (docs/contributing.md habit 10: queues on real
// servers, fresh names per test).
//
//   CARERELAY_TEST_REDIS_URL set      → that server (CI: .ci/run starts a throwaway one)
//   unset, redis-server on the PATH   → this test process starts its own on 127.0.0.1 with a
//                                       temp directory and the durable settings CareRelay
//                                       requires, and stops it when the process ends (even by a signal)
//   neither                           → the test fails, saying how to get one
//   CARERELAY_TEST_REDIS=skip         → the explicit opt-out: tests that need Redis are
//                                       skipped (describeWithRedis), nothing else is
//
// Every test gets its own key prefix (redisPrefix()), so files running in parallel on one
// server never see each other's keys; dropPrefix() deletes them afterwards.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { describe } from 'vitest';
import { afterProcessGone } from './process-gone.ts';

export const REDIS_URL_ENV = 'CARERELAY_TEST_REDIS_URL';

/** True when the tests needing Redis were explicitly switched off (CARERELAY_TEST_REDIS=skip). */
export const redisSkipped = process.env.CARERELAY_TEST_REDIS === 'skip';

/** `describe`, skipped only under the explicit opt-out. */
export const describeWithRedis: typeof describe = (redisSkipped ? describe.skip : describe) as typeof describe;

let started: Promise<string> | undefined;

/** The URL of the Redis the tests use (starting one when needed); throws how to get one. */
export function testRedisUrl(): Promise<string> {
  const url = process.env[REDIS_URL_ENV];
  if (url) return Promise.resolve(url);
  started ??= startOwnRedis();
  return started;
}

function which(binary: string): string | undefined {
  const found = spawnSync('sh', ['-c', `command -v ${binary}`], { encoding: 'utf8' });
  const out = found.stdout.trim();
  return found.status === 0 && out !== '' ? out : undefined;
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** The redis-server arguments of a throwaway instance with CareRelay's durable settings. */
export function throwawayRedisArgs(port: number, dir: string): string[] {
  return [
    '--port', String(port),
    '--bind', '127.0.0.1',
    '--dir', dir,
    '--appendonly', 'yes',
    '--appendfsync', 'everysec',
    '--maxmemory-policy', 'noeviction',
    '--save', '',
    '--daemonize', 'no',
    '--loglevel', 'warning',
  ];
}

/**
 * A redis-server child on a free port (or `port`), with the durable settings and then `extraArgs`
 * (which win: `--appendonly no` makes a Redis CareRelay must refuse); resolves once it answers PING.
 */
export async function spawnRedis(dir: string, port?: number, extraArgs: string[] = []): Promise<{ url: string; port: number; child: ChildProcess }> {
  const binary = which('redis-server');
  if (binary === undefined) throw new Error(noRedisMessage());
  for (let attempt = 0; ; attempt++) {
    const chosen = port ?? (await freePort());
    const child = spawn(binary, [...throwawayRedisArgs(chosen, dir), ...extraArgs], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const url = `redis://127.0.0.1:${chosen}`;
    const ready = await waitForPing(url, exited);
    if (ready) return { url, port: chosen, child };
    child.kill('SIGKILL');
    // The free port was taken between the check and the start: try another one (bounded).
    if (port !== undefined || attempt >= 4) throw new Error(`redis-server did not start on port ${chosen}: ${stderr.trim()}`);
  }
}

/**
 * Stops a redis-server child of spawnRedis and removes its directory: after the process has
 * exited, and tolerating a file an orphaned background rewrite (a fork of the killed server)
 * writes meanwhile — removing it at once made rmSync fail with ENOTEMPTY.
 */
export async function stopAndRemoveRedis(child: ChildProcess, dir: string): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGKILL');
    await exited;
  }
  rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 });
}

/** PINGs until it answers (true) or the process exits (false); bounded by the process. */
async function waitForPing(url: string, exited: Promise<number | null>): Promise<boolean> {
  let gone = false;
  void exited.then(() => (gone = true));
  for (let i = 0; i < 200 && !gone; i++) {
    const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
    client.on('error', () => {});
    try {
      await client.connect();
      if ((await client.ping()) === 'PONG') return true;
    } catch {
      // not listening yet
    } finally {
      client.disconnect();
    }
    await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 25))]);
  }
  return false;
}

function noRedisMessage(): string {
  return (
    `These tests need a Redis server. Set ${REDIS_URL_ENV}=redis://127.0.0.1:6379 (a throwaway ` +
    'instance: tests write keys under fresh prefixes and delete them), or install redis-server ' +
    '(Debian/Ubuntu: apt-get install redis-server) so the tests start one themselves; ' +
    'CARERELAY_TEST_REDIS=skip skips them instead.'
  );
}

async function startOwnRedis(): Promise<string> {
  const dir = mkdtempSync(path.join(tmpdir(), 'carerelay-redis-'));
  const { url, port, child } = await spawnRedis(dir);
  const stop = (): void => {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', stop);
  // By its command line (its port), not its pid: a pid may belong to another process by then.
  afterProcessGone([['pkill', '-9', '-f', `redis-server 127\\.0\\.0\\.1:${port}( |$)`], ['rm', '-rf', dir]]);
  return url;
}

/** A fresh key prefix for one test (BullMQ's `prefix`): no colons, unique per call. */
export function redisPrefix(label = 't'): string {
  return `carerelay-test-${label}-${randomBytes(6).toString('hex')}`;
}

/** A client on the test Redis; the caller quits it. */
export async function testRedisClient(options: { maxRetriesPerRequest?: number | null } = {}): Promise<Redis> {
  const client = new Redis(await testRedisUrl(), { maxRetriesPerRequest: options.maxRetriesPerRequest ?? null });
  client.on('error', () => {});
  return client;
}

/** Deletes every key under `prefix` (SCAN, so a shared server is never blocked long). */
export async function dropPrefix(client: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) await client.del(...keys);
  } while (cursor !== '0');
}
