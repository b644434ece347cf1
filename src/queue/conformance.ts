// The behaviour every Queue backend must show (docs/architecture.md "Interfaces", docs/reliability.md
// promises 4–6). conformance.test.ts runs queueConformanceSuite() over every backend (SQLite
// alone, SQLite in the store's group commit, BullMQ on Redis), each with a factory for a fresh
// store per test; the suite only uses the Queue interface and an injected clock.
//
// One thing a clock cannot move: a lease kept by a server. The embedded queue's leases are
// times on the queue's clock, so the suite lets one lapse by moving the clock; a Redis lock
// lapses by the Redis server's clock, so for such a backend (QueueTestBackend.realTimeLeases)
// the worker holding the job stops as a frozen process would, and the suite waits for the
// server to let its lease lapse and another worker to take the job.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AmbiguousError, PermanentError, RateLimitedError, TransientError } from '../errors.ts';
import { Deferral, type JobContext, type JobInfo, type Queue, type QueueEvent, type QueueOptions } from './queue.ts';

export interface ConformanceJobData {
  n: number;
  note?: string;
}

/** One store for one test. `open` may be called several times: each call is one worker. */
export interface QueueTestBackend {
  open(options: QueueOptions): Promise<Queue<ConformanceJobData>>;
  /** Remove the store; called after every queue the test opened is closed. */
  destroy(): Promise<void>;
  /**
   * Present when leases lapse by a server's real-time clock (Redis), not by the injected one:
   * the lease test opens its queues with `leaseMs` and makes the holder stop with `freeze`
   * (no more renewals, polls or checks; its handlers carry on, like a stopped process's).
   */
  realTimeLeases?: {
    leaseMs: number;
    freeze(queue: Queue<ConformanceJobData>): void;
  };
}

export interface FakeClock {
  now: () => number;
  set(ms: number): void;
  advance(ms: number): void;
}

export function createFakeClock(startMs: number): FakeClock {
  let t = startMs;
  return {
    now: () => t,
    set: (ms) => {
      t = ms;
    },
    advance: (ms) => {
      t += ms;
    },
  };
}

/** Monday 2030-01-07 09:00 UTC: any fixed instant works, tests move it explicitly. */
const T0 = Date.parse('2030-01-07T09:00:00Z');
/** Suite policy: small numbers keep the arithmetic readable. Ceilings 1 s, 2 s, 4 s. */
const RETRY = { baseMs: 1_000, capMs: 8_000, maxAttempts: 4 };
/** Fake-clock ms. Renewals run every leaseMs / 3 of real time (200 s): never during a test. */
const LEASE_MS = 600_000;

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Resolves at the first queue event matching `match` (subscribe before acting). */
function nextEvent(queue: Queue<ConformanceJobData>, match: (e: QueueEvent) => boolean): Promise<QueueEvent> {
  return new Promise((resolve) => {
    const off = queue.subscribe((event) => {
      if (match(event)) {
        off();
        resolve(event);
      }
    });
  });
}

/** Re-checks `condition` every time `notify()` is called; `until` resolves when it holds. */
function createWatch() {
  let waiters: { check: () => boolean; resolve: () => void }[] = [];
  return {
    notify() {
      waiters = waiters.filter((w) => {
        if (!w.check()) return true;
        w.resolve();
        return false;
      });
    },
    until(check: () => boolean): Promise<void> {
      if (check()) return Promise.resolve();
      return new Promise((resolve) => waiters.push({ check, resolve }));
    },
  };
}

interface Call {
  id: string;
  n: number;
  attempt: number;
  at: number;
  previousError?: string;
}

export function queueConformanceSuite(makeBackend: () => Promise<QueueTestBackend>): void {
  describe('Queue conformance', () => {
    let backend: QueueTestBackend;
    let clock: FakeClock;
    let opened: Queue<ConformanceJobData>[];
    let gates: Deferred[];

    beforeEach(async () => {
      backend = await makeBackend();
      clock = createFakeClock(T0);
      opened = [];
      gates = [];
    });

    afterEach(async () => {
      for (const gate of gates) gate.resolve();
      await Promise.all(opened.map((q) => q.close({ graceMs: 0 })));
      await backend.destroy();
    });

    async function open(options: QueueOptions = {}): Promise<Queue<ConformanceJobData>> {
      const queue = await backend.open({ now: clock.now, leaseMs: LEASE_MS, retry: RETRY, ...options });
      opened.push(queue);
      return queue;
    }

    function gate(): Deferred {
      const g = deferred();
      gates.push(g);
      return g;
    }

    /** A handler that records every call and then runs `behaviour` (default: succeed). */
    function recorder(behaviour: (job: JobContext<ConformanceJobData>) => Promise<unknown> = async () => undefined) {
      const calls: Call[] = [];
      const handler = async (job: JobContext<ConformanceJobData>) => {
        calls.push({
          id: job.id,
          n: job.data.n,
          attempt: job.attempt,
          at: clock.now(),
          ...(job.previousError !== undefined ? { previousError: job.previousError } : {}),
        });
        return behaviour(job);
      };
      return { calls, handler };
    }

    /** Move the clock to each retry's due time until the job leaves `pending` (bounded). */
    async function driveRetries(queue: Queue<ConformanceJobData>, id: string): Promise<JobInfo<ConformanceJobData>> {
      for (let step = 0; step < 50; step++) {
        await queue.idle();
        const info = await queue.get(id);
        if (!info || info.state !== 'pending') return info!;
        clock.set(Math.max(clock.now(), Date.parse(info.runAt)));
        await queue.poke();
      }
      throw new Error(`job ${id} still pending after 50 steps`);
    }

    async function state(queue: Queue<ConformanceJobData>, id: string) {
      return (await queue.get(id))?.state;
    }

    describe('scheduling', () => {
      it('runs a delayed job at its time and not a millisecond before', async () => {
        const q = await open();
        const { calls, handler } = recorder();
        q.process(handler, { concurrency: 2 });
        expect(await q.add({ id: 'd1', data: { n: 1 }, runAt: new Date(T0 + 60_000) })).toBe('added');
        // An ISO string with a zone is accepted too: 10:01+01:00 is the same instant as d1's.
        expect(await q.add({ id: 'd2', data: { n: 2 }, runAt: '2030-01-07T10:01:00+01:00' })).toBe('added');

        await q.poke();
        await q.idle();
        clock.set(T0 + 59_999);
        await q.poke();
        await q.idle();
        expect(calls).toEqual([]);
        expect(await state(q, 'd1')).toBe('pending');

        clock.set(T0 + 60_000);
        await q.poke();
        await q.idle();
        expect(calls).toEqual([
          { id: 'd1', n: 1, attempt: 1, at: T0 + 60_000 },
          { id: 'd2', n: 2, attempt: 1, at: T0 + 60_000 },
        ]);
        expect(await q.get('d1')).toMatchObject({ state: 'done', attempts: 1, runAt: '2030-01-07T09:01:00.000Z' });
        expect(await q.get('d2')).toMatchObject({ state: 'done', runAt: '2030-01-07T09:01:00.000Z' });
      });

      it('runs a due job added while processing without being poked', async () => {
        const q = await open();
        const { calls, handler } = recorder();
        q.process(handler, { concurrency: 1 });
        await q.idle();
        const done = nextEvent(q, (e) => e.type === 'done' && e.id === 'now');
        await q.add({ id: 'now', data: { n: 7 }, runAt: new Date(T0) });
        await done;
        expect(calls.map((c) => c.id)).toEqual(['now']);
      });

      it('refuses a run time without a zone, naming the job and the expected form', async () => {
        const q = await open();
        await expect(q.add({ id: 'z1', data: { n: 1 }, runAt: '2030-01-07T09:00:00' })).rejects.toThrow(
          /z1.*zone/,
        );
        await expect(q.add({ id: 'z2', data: { n: 1 }, runAt: 'tomorrow' })).rejects.toThrow(/z2/);
        expect(await q.get('z1')).toBeUndefined();
      });

      it('reschedules a pending job to a new time with new data; refuses jobs that are not pending', async () => {
        const q = await open();
        const { calls, handler } = recorder();
        await q.add({ id: 'r1', data: { n: 1 }, runAt: new Date(T0 + 60_000) });
        await q.add({ id: 'r2', data: { n: 2 }, runAt: new Date(T0 + 60_000) });
        expect(await q.reschedule('r1', new Date(T0 + 120_000), { n: 10, note: 'moved' })).toBe(true);
        expect(await q.reschedule('r2', '2030-01-07T09:00:30Z')).toBe(true); // earlier, data kept
        expect(await q.reschedule('missing', new Date(T0))).toBe(false);
        q.process(handler, { concurrency: 1 });

        clock.set(T0 + 30_000);
        await q.poke();
        await q.idle();
        expect(calls.map((c) => [c.id, c.n])).toEqual([['r2', 2]]);

        clock.set(T0 + 60_000);
        await q.poke();
        await q.idle();
        expect(calls).toHaveLength(1);
        expect((await q.get('r1'))?.data).toEqual({ n: 10, note: 'moved' });

        clock.set(T0 + 120_000);
        await q.poke();
        await q.idle();
        expect(calls.map((c) => [c.id, c.n, c.at])).toEqual([
          ['r2', 2, T0 + 30_000],
          ['r1', 10, T0 + 120_000],
        ]);
        expect(await q.reschedule('r1', new Date(T0 + 999_000))).toBe(false);
        expect(await q.get('r1')).toMatchObject({ state: 'done', runAt: new Date(T0 + 120_000).toISOString() });
      });

      it('does not reschedule a running job', async () => {
        const q = await open();
        const g = gate();
        q.process(async () => g.promise, { concurrency: 1 });
        const started = nextEvent(q, (e) => e.type === 'started');
        await q.add({ id: 'busy', data: { n: 1 }, runAt: new Date(T0) });
        await started;
        expect(await q.reschedule('busy', new Date(T0 + 60_000))).toBe(false);
        expect(await state(q, 'busy')).toBe('active');
      });
    });

    describe('identity', () => {
      it('refuses a duplicate id whatever state the first job is in, and changes nothing', async () => {
        const q = await open();
        expect(await q.add({ id: 'dup', data: { n: 1 }, runAt: new Date(T0 + 1_000), cancelKeys: ['a'] })).toBe('added');
        expect(await q.add({ id: 'dup', data: { n: 2 }, runAt: new Date(T0), cancelKeys: ['b'] })).toBe('duplicate');
        expect(await q.get('dup')).toMatchObject({ data: { n: 1 }, cancelKeys: ['a'], runAt: new Date(T0 + 1_000).toISOString() });
        expect(await q.cancel('b')).toBe(0);

        const { calls, handler } = recorder();
        q.process(handler, { concurrency: 1 });
        clock.advance(1_000);
        await q.poke();
        await q.idle();
        expect(await q.add({ id: 'dup', data: { n: 3 }, runAt: new Date(T0) })).toBe('duplicate');
        await q.poke();
        await q.idle();
        expect(calls).toHaveLength(1);
      });

      it('adds many jobs at once, reporting duplicates within and across batches', async () => {
        const q = await open();
        await q.add({ id: 'm0', data: { n: 0 }, runAt: new Date(T0 + 1) });
        const results = await q.addMany([
          { id: 'm1', data: { n: 1 }, runAt: new Date(T0 + 1) },
          { id: 'm0', data: { n: 9 }, runAt: new Date(T0 + 1) },
          { id: 'm1', data: { n: 9 }, runAt: new Date(T0 + 1) },
          { id: 'm2', data: { n: 2 }, runAt: new Date(T0 + 1) },
        ]);
        expect(results).toEqual(['added', 'duplicate', 'duplicate', 'added']);
        expect((await q.get('m1'))?.data).toEqual({ n: 1 });
      });

      it('adds nothing from a batch when one job in it is invalid', async () => {
        const q = await open();
        await expect(
          q.addMany([
            { id: 'ok1', data: { n: 1 }, runAt: new Date(T0) },
            { id: 'bad', data: { n: 2 }, runAt: 'not a time' },
          ]),
        ).rejects.toThrow(/bad/);
        expect(await q.get('ok1')).toBeUndefined();
      });
    });

    describe('cancel by key', () => {
      it('cancels every pending job carrying the key and returns the count', async () => {
        const q = await open();
        await q.add({ id: 'c1', data: { n: 1 }, runAt: new Date(T0 + 60_000), cancelKeys: ['appointment:1', 'patient:9'] });
        await q.add({ id: 'c2', data: { n: 2 }, runAt: new Date(T0 + 90_000), cancelKeys: ['appointment:1'] });
        await q.add({ id: 'c3', data: { n: 3 }, runAt: new Date(T0 + 60_000), cancelKeys: ['appointment:2', 'patient:9'] });

        expect(await q.cancel('appointment:1', 'appointment_cancelled')).toBe(2);
        expect(await q.cancel('appointment:1')).toBe(0);
        expect(await q.cancel('appointment:404')).toBe(0);
        expect(await q.get('c1')).toMatchObject({ state: 'cancelled', cancelReason: 'appointment_cancelled' });
        expect(await state(q, 'c3')).toBe('pending');

        const { calls, handler } = recorder();
        q.process(handler, { concurrency: 2 });
        clock.advance(100_000);
        await q.poke();
        await q.idle();
        expect(calls.map((c) => c.id)).toEqual(['c3']);
        expect(await state(q, 'c2')).toBe('cancelled');
        // c3 is done now: a later cancel through its other key finds nothing pending.
        expect(await q.cancel('patient:9')).toBe(0);
      });

      it("cancels a pending job by its own id, which is a key it carries without listing it", async () => {
        const q = await open();
        await q.add({ id: 'own', data: { n: 1 }, runAt: new Date(T0 + 60_000) });
        await q.add({ id: 'other', data: { n: 2 }, runAt: new Date(T0 + 60_000), cancelKeys: ['k'] });
        expect((await q.get('own'))?.cancelKeys).toEqual([]);
        expect(await q.cancel('own', 'replaced')).toBe(1);
        expect(await q.cancel('own')).toBe(0);
        expect(await q.get('own')).toMatchObject({ state: 'cancelled', cancelReason: 'replaced' });
        expect(await state(q, 'other')).toBe('pending');
      });

      it('leaves running and finished jobs alone', async () => {
        const q = await open();
        const g = gate();
        q.process(async (job) => (job.id === 'running' ? g.promise : undefined), { concurrency: 2 });
        const finished = nextEvent(q, (e) => e.type === 'done' && e.id === 'finished');
        await q.add({ id: 'finished', data: { n: 1 }, runAt: new Date(T0), cancelKeys: ['k'] });
        await finished;
        const started = nextEvent(q, (e) => e.type === 'started' && e.id === 'running');
        await q.add({ id: 'running', data: { n: 2 }, runAt: new Date(T0), cancelKeys: ['k'] });
        await started;
        await q.add({ id: 'later', data: { n: 3 }, runAt: new Date(T0 + 60_000), cancelKeys: ['k'] });

        expect(await q.cancel('k', 'appointment_cancelled')).toBe(1);
        expect(await state(q, 'running')).toBe('active');
        const done = nextEvent(q, (e) => e.type === 'done' && e.id === 'running');
        g.resolve();
        await done;
        expect(await state(q, 'running')).toBe('done');
        expect(await state(q, 'finished')).toBe('done');
        expect(await state(q, 'later')).toBe('cancelled');
      });
    });

    describe('failures', () => {
      it('retries a transient failure with exponential backoff inside the jitter window', async () => {
        const q = await open();
        const { calls, handler } = recorder(async (job) => {
          if (job.attempt < 3) throw new TransientError('provider_unavailable', 'provider answered 503');
        });
        q.process(handler, { concurrency: 1 });
        await q.add({ id: 't1', data: { n: 1 }, runAt: new Date(T0) });
        const info = await driveRetries(q, 't1');

        expect(info).toMatchObject({ state: 'done', attempts: 3 });
        expect(calls.map((c) => c.attempt)).toEqual([1, 2, 3]);
        expect(calls.map((c) => c.previousError)).toEqual([undefined, 'provider_unavailable', 'provider_unavailable']);
        // Full jitter: wait after attempt n is within [0, base · 2^(n−1)].
        const waits = [calls[1]!.at - calls[0]!.at, calls[2]!.at - calls[1]!.at];
        expect(waits[0]).toBeGreaterThanOrEqual(0);
        expect(waits[0]).toBeLessThanOrEqual(1_000);
        expect(waits[1]).toBeGreaterThanOrEqual(0);
        expect(waits[1]).toBeLessThanOrEqual(2_000);
      });

      it('spreads retries over the jitter window instead of one instant', async () => {
        const q = await open();
        const retries: number[] = [];
        q.subscribe((e) => {
          if (e.type === 'retry') retries.push(Date.parse(e.runAt) - T0);
        });
        q.process(
          async (job) => {
            if (job.attempt === 1) throw new TransientError('provider_unavailable', 'provider answered 503');
          },
          { concurrency: 4 },
        );
        await q.addMany(Array.from({ length: 40 }, (_, n) => ({ id: `j${n}`, data: { n }, runAt: new Date(T0) })));
        await q.idle();
        expect(retries).toHaveLength(40);
        for (const wait of retries) {
          expect(wait).toBeGreaterThanOrEqual(0);
          expect(wait).toBeLessThanOrEqual(1_000);
        }
        expect(new Set(retries).size).toBeGreaterThan(1);
      });

      it("never retries before a TransientError's retryAfterMs", async () => {
        const q = await open();
        const { calls, handler } = recorder(async (job) => {
          if (job.attempt === 1) {
            throw new TransientError('rate_limited', 'provider answered 429', { retryAfterMs: 60_000 });
          }
        });
        q.process(handler, { concurrency: 1 });
        await q.add({ id: 'ra', data: { n: 1 }, runAt: new Date(T0) });
        await q.idle();
        const info = await q.get('ra');
        expect(info?.state).toBe('pending');
        expect(info?.lastError).toEqual({ failureClass: 'transient', code: 'rate_limited' });
        expect(Date.parse(info!.runAt)).toBeGreaterThanOrEqual(T0 + 60_000);

        clock.set(T0 + 59_999);
        await q.poke();
        await q.idle();
        expect(calls).toHaveLength(1);
        clock.set(Date.parse(info!.runAt));
        await q.poke();
        await q.idle();
        expect(calls.map((c) => c.attempt)).toEqual([1, 2]);
        expect(await state(q, 'ra')).toBe('done');
      });

      it('dead-letters after maxAttempts with the last error code', async () => {
        const q = await open();
        const dead = nextEvent(q, (e) => e.type === 'dead');
        const { calls, handler } = recorder(async (job) => {
          throw new TransientError(job.attempt < 4 ? 'provider_unavailable' : 'timeout', 'still failing');
        });
        q.process(handler, { concurrency: 1 });
        await q.add({ id: 'tx', data: { n: 1 }, runAt: new Date(T0) });
        await q.add({ id: 'tx3', data: { n: 2 }, runAt: new Date(T0), maxAttempts: 2 });
        const info = await driveRetries(q, 'tx');
        await driveRetries(q, 'tx3');

        expect(info).toMatchObject({ state: 'dead', attempts: 4, lastError: { failureClass: 'transient', code: 'timeout' } });
        expect(await q.get('tx3')).toMatchObject({ state: 'dead', attempts: 2, maxAttempts: 2 });
        expect(calls.filter((c) => c.id === 'tx').map((c) => c.attempt)).toEqual([1, 2, 3, 4]);
        expect(await dead).toMatchObject({ type: 'dead', code: expect.any(String) });
      });

      it('treats an unclassified error as transient', async () => {
        const q = await open();
        const { calls, handler } = recorder(async (job) => {
          if (job.attempt === 1) throw new Error('bug: undefined is not a function');
        });
        q.process(handler, { concurrency: 1 });
        await q.add({ id: 'u1', data: { n: 1 }, runAt: new Date(T0) });
        await q.idle();
        expect((await q.get('u1'))?.lastError?.failureClass).toBe('transient');
        const info = await driveRetries(q, 'u1');
        expect(info.state).toBe('done');
        expect(calls.map((c) => c.attempt)).toEqual([1, 2]);
      });

      it('dead-letters a permanent failure at once with its code', async () => {
        const q = await open();
        const { calls, handler } = recorder(async () => {
          throw new PermanentError('recipient_invalid', 'provider answered 400');
        });
        q.process(handler, { concurrency: 1 });
        await q.add({ id: 'p1', data: { n: 1 }, runAt: new Date(T0) });
        await q.idle();
        expect(await q.get('p1')).toMatchObject({
          state: 'dead',
          attempts: 1,
          lastError: { failureClass: 'permanent', code: 'recipient_invalid' },
        });
        clock.advance(RETRY.capMs * 10);
        await q.poke();
        await q.idle();
        expect(calls).toHaveLength(1);
      });

      it('parks an ambiguous failure unless the job is idempotent, which is retried', async () => {
        const q = await open();
        const { calls, handler } = recorder(async (job) => {
          if (job.attempt === 1) throw new AmbiguousError('connection_dropped', 'sink closed without answering');
        });
        q.process(handler, { concurrency: 2 });
        await q.add({ id: 'amb', data: { n: 1 }, runAt: new Date(T0) });
        await q.add({ id: 'amb-idem', data: { n: 2 }, runAt: new Date(T0), idempotent: true });
        await driveRetries(q, 'amb-idem');

        expect(await q.get('amb')).toMatchObject({
          state: 'parked',
          attempts: 1,
          lastError: { failureClass: 'ambiguous', code: 'connection_dropped' },
        });
        expect(await q.get('amb-idem')).toMatchObject({ state: 'done', attempts: 2, idempotent: true });
        clock.advance(RETRY.capMs * 10);
        await q.poke();
        await q.idle();
        expect(calls.filter((c) => c.id === 'amb')).toHaveLength(1);
      });

      it('replays a dead job once: delivered once, or dead again after one more attempt', async () => {
        const q = await open();
        let failing = true;
        const { calls, handler } = recorder(async (job) => {
          if (job.id === 'always') throw new TransientError('provider_unavailable', 'down');
          if (failing) throw new PermanentError('recipient_invalid', 'rejected');
        });
        q.process(handler, { concurrency: 1 });
        await q.add({ id: 'dl', data: { n: 1 }, runAt: new Date(T0) });
        await q.add({ id: 'always', data: { n: 2 }, runAt: new Date(T0) });
        await driveRetries(q, 'always');
        expect(await state(q, 'dl')).toBe('dead');
        expect(await q.retryDead('missing')).toBe(false);

        failing = false;
        expect(await q.retryDead('dl')).toBe(true);
        expect(await q.retryDead('dl')).toBe(false); // pending now, not dead
        await q.poke();
        await q.idle();
        expect(calls.filter((c) => c.id === 'dl').map((c) => c.attempt)).toEqual([1, 2]);
        expect(await state(q, 'dl')).toBe('done');
        expect(await q.retryDead('dl')).toBe(false);

        expect(await q.get('always')).toMatchObject({ state: 'dead', attempts: 4 });
        expect(await q.retryDead('always')).toBe(true);
        const info = await driveRetries(q, 'always');
        expect(info).toMatchObject({ state: 'dead', attempts: 5 });
      });

      it('replays a parked job', async () => {
        const q = await open();
        const { calls, handler } = recorder(async (job) => {
          if (job.attempt === 1) throw new AmbiguousError('connection_dropped', 'unknown outcome');
        });
        q.process(handler, { concurrency: 1 });
        await q.add({ id: 'pk', data: { n: 1 }, runAt: new Date(T0) });
        await q.idle();
        expect(await state(q, 'pk')).toBe('parked');
        expect(await q.retryDead('pk')).toBe(true);
        await q.poke();
        await q.idle();
        expect(await q.get('pk')).toMatchObject({ state: 'done', attempts: 2 });
        expect(calls).toHaveLength(2);
      });

      it('lets 999 jobs through while one always fails, then dead-letters that one', async () => {
        const q = await open();
        const done = new Set<string>();
        q.subscribe((e) => {
          if (e.type === 'done') done.add(e.id);
        });
        q.process(
          async (job) => {
            if (job.data.n === 500) throw new TransientError('provider_unavailable', 'always failing');
          },
          { concurrency: 8 },
        );
        await q.addMany(Array.from({ length: 1_000 }, (_, n) => ({ id: `bulk-${n}`, data: { n }, runAt: new Date(T0) })));
        await q.idle();
        // Before the clock moves at all, every healthy job ran.
        expect(done.size).toBe(999);
        expect(done.has('bulk-500')).toBe(false);
        const bad = await driveRetries(q, 'bulk-500');
        expect(bad).toMatchObject({ state: 'dead', attempts: 4 });
        expect(await q.counts()).toEqual({ pending: 0, active: 0, done: 999, cancelled: 0, parked: 0, dead: 1 });
      });
    });

    describe('waiting without using up attempts', () => {
      it('puts a deferred job back until its time: not an attempt, no error recorded, a deferred event', async () => {
        const q = await open();
        const deferredEvents: QueueEvent[] = [];
        q.subscribe((e) => {
          if (e.type === 'deferred') deferredEvents.push(e);
        });
        // maxAttempts 2: three deferrals and one failure leave one counted attempt to succeed.
        const { calls, handler } = recorder(async (job) => {
          if (job.attempt <= 3) throw new Deferral(clock.now() + 500, 'output_busy');
          if (job.attempt === 4) throw new TransientError('provider_unavailable', '503');
        });
        q.process(handler, { concurrency: 1 });
        await q.add({ id: 'df', data: { n: 1 }, runAt: new Date(T0), maxAttempts: 2 });
        await q.idle();
        expect(await q.get('df')).toMatchObject({ state: 'pending', attempts: 1, deferrals: 1, runAt: new Date(T0 + 500).toISOString() });
        expect((await q.get('df'))?.lastError).toBeUndefined();
        expect((await q.get('df'))?.retryUntil).toBeUndefined();
        clock.set(T0 + 499);
        await q.poke();
        await q.idle();
        expect(calls).toHaveLength(1);
        const info = await driveRetries(q, 'df');
        expect(info).toMatchObject({ state: 'done', attempts: 5, deferrals: 3, lastError: { code: 'provider_unavailable' } });
        expect(calls.map((c) => c.attempt)).toEqual([1, 2, 3, 4, 5]);
        expect(deferredEvents).toHaveLength(3);
        expect(deferredEvents[0]).toMatchObject({ id: 'df', attempt: 1, code: 'output_busy', runAt: new Date(T0 + 500).toISOString() });
      });

      it('waits out a RateLimitedError without using up an attempt, never before its Retry-After', async () => {
        const q = await open();
        const { calls, handler } = recorder(async (job) => {
          if (job.attempt <= 3) throw new RateLimitedError('provider_rate_limited', '429', { retryAfterMs: 30_000 });
        });
        q.process(handler, { concurrency: 1 });
        // One counted attempt only: three 429s do not use it up.
        await q.add({ id: 'rl', data: { n: 1 }, runAt: new Date(T0), maxAttempts: 1 });
        await q.idle();
        const first = await q.get('rl');
        expect(first).toMatchObject({ state: 'pending', deferrals: 1, lastError: { failureClass: 'transient', code: 'provider_rate_limited' } });
        expect(Date.parse(first!.runAt)).toBeGreaterThanOrEqual(T0 + 30_000);
        expect(first!.retryUntil).toBe(new Date(T0 + 86_400_000).toISOString());
        const info = await driveRetries(q, 'rl');
        expect(info).toMatchObject({ state: 'done', attempts: 4, deferrals: 3 });
        for (let i = 1; i < calls.length; i++) expect(calls[i]!.at - calls[i - 1]!.at).toBeGreaterThanOrEqual(30_000);
      });

      it('stops retrying when the span since the first failure is over: the last try at its end, then dead', async () => {
        const q = await open({ retry: { ...RETRY, maxAttempts: 1_000, spanMs: 20_000 } });
        const { calls, handler } = recorder(async () => {
          throw new TransientError('provider_unavailable', 'down');
        });
        q.process(handler, { concurrency: 1 });
        clock.set(T0 + 5_000);
        await q.add({ id: 'sp', data: { n: 1 }, runAt: new Date(T0 + 5_000) });
        await q.poke();
        await q.idle();
        expect((await q.get('sp'))?.retryUntil).toBe(new Date(T0 + 25_000).toISOString());
        const info = await driveRetries(q, 'sp');
        expect(info).toMatchObject({ state: 'dead', lastError: { code: 'provider_unavailable' } });
        // Ceilings 1, 2, 4, 8, 8… s: several tries, none after the span's end, the last one at it.
        expect(calls.length).toBeGreaterThan(3);
        expect(calls.every((c) => c.at <= T0 + 25_000)).toBe(true);
        expect(calls.at(-1)!.at).toBe(T0 + 25_000);
      });

      it('counts a deferral in the span when it says so, and dead-letters it with its code once the span is over', async () => {
        const q = await open({ retry: { ...RETRY, spanMs: 20_000 } });
        const { calls, handler } = recorder(async () => {
          throw new Deferral(clock.now() + 15_000, 'circuit_open', { inSpan: true });
        });
        q.process(handler, { concurrency: 1 });
        await q.add({ id: 'co', data: { n: 1 }, runAt: new Date(T0) });
        await q.idle();
        expect(await q.get('co')).toMatchObject({
          state: 'pending',
          deferrals: 1,
          lastError: { failureClass: 'transient', code: 'circuit_open' },
          retryUntil: new Date(T0 + 20_000).toISOString(),
        });
        const info = await driveRetries(q, 'co');
        expect(info).toMatchObject({ state: 'dead', lastError: { code: 'circuit_open' } });
        expect(calls.map((c) => c.at)).toEqual([T0, T0 + 15_000, T0 + 20_000]);
      });

      it('gives a replayed job a fresh span and one more counted attempt', async () => {
        const q = await open({ retry: { ...RETRY, spanMs: 5_000 } });
        let fail = true;
        const { calls, handler } = recorder(async (job) => {
          if (fail) throw new TransientError('provider_unavailable', 'down');
          if (job.attempt % 2 === 0) throw new RateLimitedError('provider_rate_limited', '429', { retryAfterMs: 1_000 });
        });
        q.process(handler, { concurrency: 1 });
        await q.add({ id: 'rp', data: { n: 1 }, runAt: new Date(T0) });
        const dead = await driveRetries(q, 'rp');
        expect(dead.state).toBe('dead');
        clock.advance(3_600_000);
        fail = false;
        expect(await q.retryDead('rp')).toBe(true);
        expect((await q.get('rp'))?.retryUntil).toBeUndefined();
        // The replay is rate-limited (or not) first: it still gets its one counted attempt.
        const info = await driveRetries(q, 'rp');
        expect(info.state).toBe('done');
        expect(calls.filter((c) => c.at > T0 + 3_600_000).length).toBeGreaterThanOrEqual(1);
      });
    });

    describe('workers', () => {
      it('never runs more handlers at once than the concurrency limit', async () => {
        const q = await open();
        const watch = createWatch();
        const releases: (() => void)[] = [];
        let inFlight = 0;
        let maxInFlight = 0;
        let finished = 0;
        q.subscribe(() => watch.notify());
        q.process(
          async (job) => {
            inFlight++;
            maxInFlight = Math.max(maxInFlight, inFlight);
            await new Promise<void>((resolve) => {
              releases.push(resolve);
              job.signal.addEventListener('abort', () => resolve()); // a failed test still closes
              watch.notify();
            });
            inFlight--;
            finished++;
          },
          { concurrency: 3 },
        );
        await q.addMany(Array.from({ length: 10 }, (_, n) => ({ id: `cc${n}`, data: { n }, runAt: new Date(T0) })));
        await watch.until(() => releases.length === 3);
        await q.poke();
        expect(inFlight).toBe(3);
        for (let i = 0; i < 20 && finished < 10; i++) {
          await watch.until(() => releases.length > 0);
          releases.shift()!();
          const target = finished + 1;
          await watch.until(() => finished >= target);
        }
        await q.idle();
        expect(finished).toBe(10);
        expect(maxInFlight).toBe(3);
      });

      it('close waits for running handlers and records their outcome', async () => {
        const q = await open();
        const g = gate();
        let signal: AbortSignal | undefined;
        q.process(
          async (job) => {
            signal = job.signal;
            await g.promise;
          },
          { concurrency: 1 },
        );
        const started = nextEvent(q, (e) => e.type === 'started');
        await q.add({ id: 'slow', data: { n: 1 }, runAt: new Date(T0) });
        await started;

        let closed = false;
        const closing = q.close().then(() => {
          closed = true;
        });
        for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
        expect(closed).toBe(false);
        g.resolve();
        await closing;
        expect(closed).toBe(true);
        expect(signal?.aborted).toBe(false);
        expect(await state(q, 'slow')).toBe('done');
      });

      it('close aborts handlers after the grace period; the interrupted job survives a restart', async () => {
        const q = await open();
        let signal: AbortSignal | undefined;
        q.process(
          (job) =>
            new Promise((_resolve, reject) => {
              signal = job.signal;
              job.signal.addEventListener('abort', () => reject(new TransientError('aborted', 'worker shutting down')));
            }),
          { concurrency: 1 },
        );
        const started = nextEvent(q, (e) => e.type === 'started');
        await q.add({ id: 'cut', data: { n: 1 }, runAt: new Date(T0) });
        await q.add({ id: 'waiting', data: { n: 2 }, runAt: new Date(T0 + 60_000) });
        await started;
        await q.close({ graceMs: 0 });
        expect(signal?.aborted).toBe(true);
        expect(await q.get('cut')).toMatchObject({ state: 'pending', attempts: 1 });

        const again = await open();
        const { calls, handler } = recorder();
        again.process(handler, { concurrency: 1 });
        await driveRetries(again, 'cut');
        await driveRetries(again, 'waiting');
        expect(calls.map((c) => [c.id, c.attempt])).toEqual([
          ['cut', 2],
          ['waiting', 1],
        ]);
      });

      it('gives a job back when its worker vanished and its lease expired', async () => {
        const real = backend.realTimeLeases;
        const leases = real ? { leaseMs: real.leaseMs } : {};
        const vanished = await open(leases);
        const g = gate();
        const first = recorder(async () => {
          await g.promise;
          throw new PermanentError('recipient_invalid', 'a late failure from the vanished worker');
        });
        vanished.process(first.handler, { concurrency: 1 });
        const started = nextEvent(vanished, (e) => e.type === 'started');
        await vanished.add({ id: 'lease', data: { n: 1 }, runAt: new Date(T0) });
        await started;

        const survivor = await open(leases);
        const second = recorder();
        survivor.process(second.handler, { concurrency: 1 });
        await survivor.poke();
        await survivor.idle();
        expect(second.calls).toEqual([]);
        expect(await survivor.get('lease')).toMatchObject({ state: 'active', attempts: 1 });

        if (real) {
          // The holder stops renewing; while it renewed, the survivor took nothing (above).
          // Its lease lapses by the server's clock, and the job comes back to the survivor.
          const done = nextEvent(survivor, (e) => e.type === 'done' && e.id === 'lease');
          real.freeze(vanished);
          await done;
          expect(second.calls).toEqual([{ id: 'lease', n: 1, attempt: 2, at: T0, previousError: 'lease_expired' }]);
        } else {
          clock.advance(LEASE_MS - 1);
          await survivor.poke();
          await survivor.idle();
          expect(second.calls).toEqual([]);

          clock.advance(1);
          await survivor.poke();
          await survivor.idle();
          expect(second.calls).toEqual([
            { id: 'lease', n: 1, attempt: 2, at: T0 + LEASE_MS, previousError: 'lease_expired' },
          ]);
        }
        expect(await survivor.get('lease')).toMatchObject({ state: 'done', attempts: 2 });

        // The vanished worker comes back late: its outcome (here a permanent failure) must
        // not overwrite the new one.
        const lost = nextEvent(vanished, (e) => e.type === 'lease-lost');
        g.resolve();
        await vanished.close();
        expect(await lost).toEqual({ type: 'lease-lost', id: 'lease', attempt: 1 });
        expect(await survivor.get('lease')).toMatchObject({ state: 'done', attempts: 2 });
        expect(first.calls).toHaveLength(1);
      });
    });

    describe('inspection', () => {
      it('gets, lists and counts jobs by state and cancel key', async () => {
        const q = await open();
        expect(await q.get('nothing')).toBeUndefined();
        await q.add({ id: 'i1', data: { n: 1 }, runAt: new Date(T0 + 2_000), cancelKeys: ['appointment:7'] });
        await q.add({ id: 'i2', data: { n: 2 }, runAt: new Date(T0 + 1_000), cancelKeys: ['appointment:7'] });
        await q.add({ id: 'i3', data: { n: 3 }, runAt: new Date(T0 + 3_000), cancelKeys: ['appointment:8'] });
        await q.add({ id: 'i4', data: { n: 4 }, runAt: new Date(T0 + 4_000), cancelKeys: ['appointment:9'] });
        await q.cancel('appointment:9');

        expect(await q.get('i1')).toMatchObject({
          id: 'i1',
          data: { n: 1 },
          state: 'pending',
          attempts: 0,
          maxAttempts: RETRY.maxAttempts,
          idempotent: false,
          cancelKeys: ['appointment:7'],
          runAt: new Date(T0 + 2_000).toISOString(),
        });
        expect((await q.list({ state: 'pending' })).map((j) => j.id)).toEqual(['i2', 'i1', 'i3']);
        expect((await q.list({ state: 'pending', limit: 2 })).map((j) => j.id)).toEqual(['i2', 'i1']);
        expect((await q.list({ cancelKey: 'appointment:7' })).map((j) => j.id)).toEqual(['i2', 'i1']);
        expect((await q.list({ state: ['cancelled', 'dead'] })).map((j) => j.id)).toEqual(['i4']);
        expect((await q.list()).map((j) => j.id)).toEqual(['i2', 'i1', 'i3', 'i4']);
        expect(await q.counts()).toEqual({ pending: 3, active: 0, done: 0, cancelled: 1, parked: 0, dead: 0 });
      });

      it('keeps jobs across a restart of the queue', async () => {
        const first = await open();
        await first.add({ id: 'keep', data: { n: 42, note: 'x' }, runAt: new Date(T0 + 5_000), cancelKeys: ['k1'] });
        await first.close();
        const second = await open();
        expect(await second.get('keep')).toMatchObject({ state: 'pending', data: { n: 42, note: 'x' }, cancelKeys: ['k1'] });
        const { calls, handler } = recorder();
        second.process(handler, { concurrency: 1 });
        clock.advance(5_000);
        await second.poke();
        await second.idle();
        expect(calls.map((c) => [c.id, c.n])).toEqual([['keep', 42]]);
      });
    });
  });
}
