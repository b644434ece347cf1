// What the BullMQ queue does beyond the shared conformance suite (conformance.test.ts): a
// worker process really killed, jobs shared by instances, ids BullMQ would refuse, dead letters
// kept until recorded, wake-ups from another process, and BullMQ's own view of the jobs.
// Real Redis (test/helpers/redis.ts), a fresh key prefix per test.
import { Queue as BullQueue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { startCrashWorker } from '../../test/helpers/crash-worker.ts';
import { describeWithRedis, dropPrefix, redisPrefix, testRedisClient, testRedisUrl } from '../../test/helpers/redis.ts';
import { PermanentError } from '../errors.ts';
import { BullMqQueue, fromBullId, toBullId, type BullMqQueueOptions } from './bullmq.ts';
import { connectRedis } from './redis.ts';
import type { JobContext, QueueEvent } from './queue.ts';

describeWithRedis('BullMQ queue', () => {
  let url: string;
  let prefix: string;
  let admin: Redis;
  let clients: Redis[];
  let queues: BullMqQueue<unknown>[];

  beforeEach(async () => {
    url = await testRedisUrl();
    prefix = redisPrefix('bullmq');
    admin = await testRedisClient();
    clients = [];
    queues = [];
  });

  afterEach(async () => {
    await Promise.all(queues.map((q) => q.close({ graceMs: 0 })));
    await dropPrefix(admin, prefix);
    for (const c of clients) c.disconnect();
    admin.disconnect();
  });

  function open(options: Partial<BullMqQueueOptions> = {}): BullMqQueue<unknown> {
    const connection = connectRedis({ url }, 'commands');
    clients.push(connection);
    const queue = new BullMqQueue<unknown>({ name: 'deliveries', prefix, connection, ...options });
    queues.push(queue);
    return queue;
  }

  function next(queue: BullMqQueue<unknown>, match: (e: QueueEvent) => boolean): Promise<QueueEvent> {
    return new Promise((resolve) => {
      const off = queue.subscribe((e) => {
        if (match(e)) {
          off();
          resolve(e);
        }
      });
    });
  }

  it('gets a job back with attempt 2 after its worker process is killed mid-handler', async () => {
    const leaseMs = 1_000;
    const setup = open();
    await setup.add({ id: 'crash-1', data: { appointment: 'A1' }, runAt: new Date(Date.now() - 1_000) });

    const worker = await startCrashWorker('bullmq-crash-worker.ts', [url, prefix, String(leaseMs)]);
    expect(worker.firstLine).toBe('started crash-1 1\n');
    expect(await setup.get('crash-1')).toMatchObject({ state: 'active', attempts: 1 });
    expect(await worker.kill()).toEqual([null, 'SIGKILL']);

    // Another process's worker: its stalled check finds the dead worker's lock lapsed.
    const later = open({ leaseMs });
    const calls: Array<{ id: string; attempt: number; previousError?: string; data: unknown }> = [];
    const done = next(later, (e) => e.type === 'done');
    later.process(
      async (job: JobContext<unknown>) => {
        calls.push({ id: job.id, attempt: job.attempt, previousError: job.previousError, data: job.data });
      },
      { concurrency: 1 },
    );
    await done;
    expect(calls).toEqual([{ id: 'crash-1', attempt: 2, previousError: 'lease_expired', data: { appointment: 'A1' } }]);
    expect(await later.get('crash-1')).toMatchObject({ state: 'done', attempts: 2 });
  });

  it('dead-letters a job whose worker vanished on its last attempt, without running it again', async () => {
    const holder = open({ leaseMs: 1_000, retry: { maxAttempts: 1 } });
    holder.process((job) => new Promise((resolve) => job.signal.addEventListener('abort', resolve)), { concurrency: 1 });
    const started = next(holder, (e) => e.type === 'started');
    await holder.add({ id: 'poison', data: null, runAt: new Date() });
    await started;
    holder.freeze();

    const survivor = open({ leaseMs: 1_000 });
    const dead = next(survivor, (e) => e.type === 'dead');
    const calls: number[] = [];
    survivor.process(async (job) => void calls.push(job.attempt), { concurrency: 1 });
    expect(await dead).toEqual({ type: 'dead', id: 'poison', attempt: 1, code: 'lease_expired' });
    expect(calls).toEqual([]);
    expect(await survivor.get('poison')).toMatchObject({ state: 'dead', attempts: 1, lastError: { code: 'lease_expired' } });
    // A replay gives it exactly one more attempt.
    const done = next(survivor, (e) => e.type === 'done');
    expect(await survivor.retryDead('poison')).toBe(true);
    await done;
    expect(calls).toEqual([2]);
  });

  it('shares jobs between instances: each runs once, whichever instance takes it', async () => {
    const a = open();
    const b = open();
    const runs = new Map<string, number>();
    const handler = async (job: JobContext<unknown>) => {
      runs.set(job.id, (runs.get(job.id) ?? 0) + 1);
      await new Promise((resolve) => setImmediate(resolve));
    };
    const doneIds = new Set<string>();
    let resolveAll!: () => void;
    const all = new Promise<void>((resolve) => (resolveAll = resolve));
    for (const q of [a, b]) {
      q.subscribe((e) => {
        if (e.type === 'done') doneIds.add(e.id);
        if (doneIds.size === 300) resolveAll();
      });
    }
    a.process(handler, { concurrency: 4 });
    b.process(handler, { concurrency: 4 });
    await a.addMany(Array.from({ length: 300 }, (_, n) => ({ id: `share-${n}`, data: n, runAt: new Date() })));
    await all;
    expect(runs.size).toBe(300);
    expect([...runs.values()].every((count) => count === 1)).toBe(true);
    expect(await a.counts()).toMatchObject({ done: 300, pending: 0, active: 0 });
  });

  it("starts a job another process made due at once, without waiting for a poll", async () => {
    const producer = open();
    // A poll once a minute: only the wake-up on BullMQ's marker can start the job in time.
    const worker = open({ maxPollIntervalMs: 60_000 });
    worker.process(async () => undefined, { concurrency: 1 });
    await worker.idle();
    const done = next(worker, (e) => e.type === 'done');
    await producer.add({ id: 'from-ingest', data: null, runAt: new Date() });
    expect(await done).toMatchObject({ id: 'from-ingest' });
  });

  it("keeps ids BullMQ would refuse (':', integers) apart and intact", async () => {
    const q = open();
    const ids = ['mirror:evt-1:crm', '42', '-7', 'a%3Ab', 'a:b', '%i42', 'rule@appointment/A%3A1#0~1'];
    for (const id of ids) {
      expect(toBullId(id)).not.toContain(':');
      expect(`${Number.parseInt(toBullId(id), 10)}`).not.toBe(toBullId(id));
      expect(fromBullId(toBullId(id))).toBe(id);
    }
    expect(new Set(ids.map(toBullId)).size).toBe(ids.length);
    expect(await q.addMany(ids.map((id, n) => ({ id, data: n, runAt: new Date(Date.now() + 60_000), cancelKeys: [`k:${n}`] })))).toEqual(ids.map(() => 'added'));
    for (const [n, id] of ids.entries()) expect(await q.get(id)).toMatchObject({ id, data: n, state: 'pending' });
    expect(await q.cancel('a:b')).toBe(1);
    expect(await q.get('a%3Ab')).toMatchObject({ state: 'pending' });
    expect((await q.list({ state: 'pending' })).map((j) => j.id).sort()).toEqual(ids.filter((id) => id !== 'a:b').sort());
  });

  it('keeps a dead letter until its recorder succeeds, and hands it over again after a restart', async () => {
    const recorded: string[] = [];
    let failRecording = true;
    let recordedOne!: () => void;
    const recordedFirst = new Promise<void>((resolve) => (recordedOne = resolve));
    const onDeadLetter = async (job: { id: string; code: string }) => {
      if (failRecording) throw new Error('store down');
      recorded.push(`${job.id}:${job.code}`);
      recordedOne();
    };
    const first = open({ onDeadLetter });
    const errored = next(first, (e) => e.type === 'error');
    first.process(async () => {
      throw new PermanentError('recipient_invalid', 'refused');
    }, { concurrency: 1 });
    await first.add({ id: 'dl-1', data: null, runAt: new Date() });
    expect(await errored).toMatchObject({ type: 'error', message: 'dead letter not recorded' });
    await first.close();
    expect(recorded).toEqual([]);

    failRecording = false;
    const second = open({ onDeadLetter });
    second.process(async () => undefined, { concurrency: 1 });
    await recordedFirst;
    await second.close();
    expect(recorded).toEqual(['dl-1:recipient_invalid']);
    expect(await admin.smembers(`${prefix}:deliveries:cr:dead-inbox`)).toEqual([]);
  });

  it("leaves BullMQ's own view of the jobs true (its tooling shows the same states)", async () => {
    const q = open();
    await q.add({ id: 'later', data: null, runAt: new Date(Date.now() + 3_600_000) });
    await q.add({ id: 'now', data: null, runAt: new Date() });
    const bull = new BullQueue('deliveries', { connection: admin, prefix });
    try {
      expect(await bull.getJobState('later')).toBe('delayed');
      expect(await bull.getJobState('now')).toBe('waiting');
      const done = next(q, (e) => e.type === 'done');
      q.process(async () => undefined, { concurrency: 1 });
      await done;
      expect(await bull.getJobState('now')).toBe('completed');
      expect(await q.cancel('later', 'appointment_cancelled')).toBe(1);
      expect(await bull.getJobState('later')).toBe('unknown');
      expect(await q.get('later')).toMatchObject({ state: 'cancelled', cancelReason: 'appointment_cancelled' });
    } finally {
      await bull.close();
    }
  });
});
