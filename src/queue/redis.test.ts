// The start-up check that the queue's Redis keeps what it is given, against real redis-server
// processes of this test (never CONFIG SET on a shared server).
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { describeWithRedis, spawnRedis, stopAndRemoveRedis } from '../../test/helpers/redis.ts';
import { checkQueueConnection } from './connect-check.ts';
import { assertRedisDurable, connectRedis, redactRedisUrl, RedisDurabilityError, redisUrlProblem } from './redis.ts';

describeWithRedis('Redis durability check', () => {
  const cleanup: Array<() => unknown> = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function redis(extraArgs: string[]): Promise<string> {
    const dir = mkdtempSync(path.join(tmpdir(), 'carerelay-redis-check-'));
    const { url, child } = await spawnRedis(dir, undefined, extraArgs);
    cleanup.push(() => stopAndRemoveRedis(child, dir));
    return url;
  }

  it('refuses a Redis without the append-only file and with eviction, naming each setting and its fix', async () => {
    const url = await redis(['--appendonly', 'no', '--maxmemory-policy', 'allkeys-lru']);
    const client = connectRedis({ url }, 'commands');
    cleanup.push(() => client.disconnect());
    const refusal = await assertRedisDurable(client, { url }).then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(refusal).toBeInstanceOf(RedisDurabilityError);
    const error = refusal as RedisDurabilityError;
    expect(error.problems.map((p) => [p.setting, p.actual])).toEqual([
      ['appendonly', 'no'],
      ['maxmemory-policy', 'allkeys-lru'],
    ]);
    expect(error.message).toContain(`Redis at ${url}`);
    expect(error.message).toMatch(/appendonly is "no", must be yes: .*set `appendonly yes`/);
    expect(error.message).toMatch(/maxmemory-policy is "allkeys-lru", must be noeviction: .*set `maxmemory-policy noeviction`/);

    // Fixed at run time, the same Redis passes.
    await client.config('SET', 'appendonly', 'yes');
    await client.config('SET', 'maxmemory-policy', 'noeviction');
    await expect(assertRedisDurable(client, { url })).resolves.toBeUndefined();
  });

  it('refuses appendfsync no', async () => {
    const url = await redis(['--appendfsync', 'no']);
    const client = connectRedis({ url }, 'commands');
    cleanup.push(() => client.disconnect());
    await expect(assertRedisDurable(client, { url })).rejects.toThrow(/appendfsync is "no", must be everysec or always/);
  });
});

it('checks Redis URLs and keeps passwords out of messages', () => {
  expect(redisUrlProblem('redis://127.0.0.1:6379')).toBeUndefined();
  expect(redisUrlProblem('rediss://redis.example.org:6380/2')).toBeUndefined();
  expect(redisUrlProblem('http://redis:6379')).toMatch(/scheme http; expected redis:\/\/ or rediss:\/\//);
  expect(redisUrlProblem('localhost:6379')).toMatch(/scheme localhost/);
  expect(redisUrlProblem('redis://host:6379/queue')).toMatch(/database number/);
  expect(redisUrlProblem('not a url')).toMatch(/not a URL/);
  expect(redactRedisUrl('redis://carerelay:s3cret@redis:6379/0')).toBe('redis://carerelay:***@redis:6379/0');
});

describeWithRedis('carerelay validate --connect (checkQueueConnection)', () => {
  const cleanup: Array<() => unknown> = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function redis(extraArgs: string[] = []): Promise<string> {
    const dir = mkdtempSync(path.join(tmpdir(), 'carerelay-redis-connect-'));
    const { url, child } = await spawnRedis(dir, undefined, extraArgs);
    cleanup.push(() => stopAndRemoveRedis(child, dir));
    return url;
  }

  const bullmq = (durable: boolean) => ({ type: 'bullmq' as const, url: { env: 'REDIS_URL' }, prefix: 'carerelay', leaseSeconds: 30, durable });

  it('passes a durable Redis, fails one that may lose jobs (unless durable: false) or cannot be reached, never printing the password', async () => {
    const good = await redis();
    expect(await checkQueueConnection(bullmq(true), () => good)).toEqual({ ok: true, message: expect.stringMatching(/^queue: Redis at redis:\/\/127\.0\.0\.1:\d+ reachable; appendonly yes/) });

    const lossy = await redis(['--appendonly', 'no']);
    const refused = await checkQueueConnection(bullmq(true), () => lossy);
    expect(refused.ok).toBe(false);
    expect(refused.message).toMatch(/appendonly is "no", must be yes/);
    expect(await checkQueueConnection(bullmq(false), () => lossy)).toMatchObject({ ok: true, message: expect.stringMatching(/not durable, accepted by durable: false/) });

    // A port nobody listens on (the server was stopped), with a password in the URL.
    const gone = await redis();
    for (const fn of cleanup.splice(-1)) fn();
    const unreachable = await checkQueueConnection(bullmq(true), () => gone.replace('redis://', 'redis://:hunter2@'));
    expect(unreachable.ok).toBe(false);
    expect(unreachable.message).toMatch(/^queue: Redis at redis:\/\/.*127\.0\.0\.1:\d+ is not reachable .*start it, or fix server\.queue\.url$/);
    expect(unreachable.message).not.toContain('hunter2');

    expect(await checkQueueConnection({ type: 'sqlite', prefix: 'carerelay', leaseSeconds: 30, durable: true }, () => '')).toEqual({
      ok: true,
      message: 'queue: embedded (SQLite in the data directory), nothing to connect to',
    });
  });
});
