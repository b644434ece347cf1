import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCrashWorker } from '../../test/helpers/crash-worker.ts';
import type { JobContext } from './queue.ts';
import { openSqliteDatabase, type Database } from '../store/sqlite-db.ts';
import { SqliteStore } from '../store/sqlite.ts';
import { createSqliteQueue, ownTransactions, pruneFinishedJobs, type SqliteQueue } from './sqlite.ts';

describe('SQLite queue', () => {
  let dir: string;
  let file: string;
  let dbs: Database[];
  let queues: SqliteQueue<unknown>[];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'carerelay-queue-'));
    file = join(dir, 'carerelay.db');
    dbs = [];
    queues = [];
  });

  afterEach(async () => {
    await Promise.all(queues.map((q) => q.close({ graceMs: 0 })));
    for (const db of dbs) db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function open(options: Parameters<typeof createSqliteQueue>[1] = {}): SqliteQueue<unknown> {
    const db = openSqliteDatabase(file);
    dbs.push(db);
    const queue = createSqliteQueue<unknown>(db, options);
    queues.push(queue);
    return queue;
  }

  it('gets a job back with attempt 2 after its worker process is killed mid-handler', async () => {
    const leaseMs = 30_000;
    const setup = open();
    await setup.add({ id: 'crash-1', data: { appointment: 'A1' }, runAt: new Date(Date.now() - 1_000) });

    const worker = await startCrashWorker('queue-crash-worker.ts', [file, String(leaseMs)]);
    expect(worker.firstLine).toBe('started crash-1 1\n');
    expect(await setup.get('crash-1')).toMatchObject({ state: 'active', attempts: 1 });

    expect(await worker.kill()).toEqual([null, 'SIGKILL']);
    expect(await setup.get('crash-1')).toMatchObject({ state: 'active', attempts: 1 });

    // A new process on the same file, its clock past the dead worker's lease.
    const later = open({ now: () => Date.now() + leaseMs + 5_000 });
    const calls: { id: string; attempt: number; previousError?: string; data: unknown }[] = [];
    later.process(
      async (job: JobContext<unknown>) => {
        calls.push({ id: job.id, attempt: job.attempt, previousError: job.previousError, data: job.data });
      },
      { concurrency: 1 },
    );
    await later.poke();
    await later.idle();
    expect(calls).toEqual([{ id: 'crash-1', attempt: 2, previousError: 'lease_expired', data: { appointment: 'A1' } }]);
    expect(await later.get('crash-1')).toMatchObject({ state: 'done', attempts: 2 });
  });

  it('keeps a running job by renewing its lease, and aborts a handler whose lease was taken over', async () => {
    let now = Date.parse('2030-01-07T09:00:00Z');
    const clock = () => now;
    // Renewals on the real-time timer every 1 ms; the lease is counted on the fake clock.
    const a = open({ now: clock, leaseMs: 10_000, leaseRenewMs: 1 });
    const b = open({ now: clock, leaseMs: 10_000 });
    let signal: AbortSignal | undefined;
    const aborted = new Promise<void>((resolve) => {
      a.process(
        (job) =>
          new Promise<void>((done) => {
            signal = job.signal;
            job.signal.addEventListener('abort', () => {
              resolve();
              done();
            });
          }),
        { concurrency: 1 },
      );
    });
    let releaseB!: () => void;
    const bGate = new Promise<void>((resolve) => (releaseB = resolve));
    const bCalls: number[] = [];
    b.process(
      async (job) => {
        bCalls.push(job.attempt);
        await Promise.race([bGate, new Promise((resolve) => job.signal.addEventListener('abort', resolve))]);
      },
      { concurrency: 1 },
    );
    await a.add({ id: 'long', data: null, runAt: new Date(now) });
    await a.poke();
    expect(await a.get('long')).toMatchObject({ state: 'active' });

    // A renews at 9 s: the lease now ends at 19 s, so at 15 s nobody else may take the job.
    now += 9_000;
    a.renewLeases();
    now += 6_000;
    await b.poke();
    expect(bCalls).toEqual([]);
    expect(signal?.aborted).toBe(false);

    // A stalls past its lease: B takes the job; A's renewal timer finds it gone and aborts
    // A's handler. A's late success must not touch B's run.
    now += 5_000;
    await b.poke();
    expect(bCalls).toEqual([2]);
    await aborted;
    await a.close();
    expect(await a.get('long')).toMatchObject({ state: 'active', attempts: 2 });
    releaseB();
    await b.idle();
    expect(await b.get('long')).toMatchObject({ state: 'done', attempts: 2 });
  });

  it('dead-letters a job that kills its worker on every attempt', async () => {
    let now = Date.parse('2030-01-07T09:00:00Z');
    const dead: string[] = [];
    for (let attempt = 1; attempt <= 3; attempt++) {
      // Lease 60 s of fake time; renewals would come every 20 s of real time: never here.
      const q = open({ now: () => now, leaseMs: 60_000, retry: { maxAttempts: 3 } });
      if (attempt === 1) await q.add({ id: 'poison', data: null, runAt: new Date(now) });
      q.subscribe((e) => {
        if (e.type === 'dead') dead.push(`${e.id}:${e.code}`);
      });
      // A handler that never returns on its own stands for a worker that dies with the job
      // (it ends when afterEach closes the queue).
      q.process((job) => new Promise((resolve) => job.signal.addEventListener('abort', resolve)), { concurrency: 1 });
      await q.poke();
      expect(await q.get('poison')).toMatchObject({ state: 'active', attempts: attempt });
      now += 60_000;
    }
    const last = open({ now: () => now, leaseMs: 60_000 });
    last.subscribe((e) => {
      if (e.type === 'dead') dead.push(`${e.id}:${e.code}`);
    });
    last.process(async () => undefined, { concurrency: 1 });
    await last.poke();
    await last.idle();
    expect(await last.get('poison')).toMatchObject({
      state: 'dead',
      attempts: 3,
      lastError: { code: 'lease_expired' },
    });
    expect(dead).toEqual(['poison:lease_expired']);
  });

  it("shares the store's database file, each with its own migrations", async () => {
    const queue = open({ name: 'deliveries' });
    const db = dbs[0]!;
    new SqliteStore(db);
    expect(await queue.add({ id: 'shared', data: { n: 1 }, runAt: new Date() })).toBe('added');
    const components = db.prepare('SELECT DISTINCT component FROM schema_migrations ORDER BY component').pluck().all();
    expect(components).toEqual(['queue', 'store']);
    // Reopening migrates nothing and keeps the job.
    const again = open({ name: 'deliveries' });
    expect(await again.get('shared')).toMatchObject({ state: 'pending', data: { n: 1 } });
  });

  it('keeps queues with different names apart in one file', async () => {
    const deliveries = open({ name: 'deliveries' });
    const ingest = open({ name: 'ingest' });
    expect(await deliveries.add({ id: 'same-id', data: 1, runAt: new Date(), cancelKeys: ['k'] })).toBe('added');
    expect(await ingest.add({ id: 'same-id', data: 2, runAt: new Date(), cancelKeys: ['k'] })).toBe('added');
    expect(await ingest.cancel('k')).toBe(1);
    expect(await deliveries.get('same-id')).toMatchObject({ state: 'pending', data: 1 });
    expect((await deliveries.counts()).pending).toBe(1);
  });

  it('answers take, next-due and cancel-by-key with index searches, never a table scan', () => {
    open();
    const db = dbs[0]!;
    const plan = (sql: string) =>
      (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all() as { detail: string }[]).map((r) => r.detail).join(' | ');
    const statements = [
      `UPDATE queue_jobs SET state = 'active' WHERE seq = (SELECT seq FROM queue_jobs
         WHERE queue = 'q' AND state = 'pending' AND run_at <= 1 ORDER BY run_at LIMIT 1)`,
      `SELECT (SELECT MIN(run_at) FROM queue_jobs WHERE queue = 'q' AND state = 'pending'),
              (SELECT MIN(lease_until) FROM queue_jobs WHERE queue = 'q' AND state = 'active')`,
      `UPDATE queue_jobs SET state = 'pending' WHERE queue = 'q' AND state = 'active' AND lease_until <= 1`,
      `UPDATE queue_jobs SET state = 'cancelled' WHERE seq IN
         (SELECT job_seq FROM queue_cancel_keys WHERE queue = 'q' AND key = 'k') AND state = 'pending'`,
    ];
    for (const sql of statements) {
      const detail = plan(sql);
      expect(detail).toMatch(/SEARCH/);
      expect(detail).not.toMatch(/SCAN (?!CONSTANT ROW)/);
    }
  });

  it('refuses bad options and a second process() with clear errors', () => {
    expect(() => open({ leaseMs: 0 })).toThrow(/leaseMs must be a positive number/);
    expect(() => open({ leaseMs: 1_000, leaseRenewMs: 1_000 })).toThrow(/shorter than leaseMs/);
    const q = open();
    expect(() => q.process(async () => undefined, { concurrency: 0 })).toThrow(/concurrency must be an integer/);
    q.process(async () => undefined, { concurrency: 1 });
    expect(() => q.process(async () => undefined, { concurrency: 1 })).toThrow(/already called/);
  });
});

describe('pruneFinishedJobs (retention of done jobs)', () => {
  it('deletes done and cancelled jobs finished before the cutoff, with their keys; keeps dead, pending and newer ones', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'carerelay-queue-'));
    const db = openSqliteDatabase(join(dir, 'carerelay.db'));
    try {
      let now = Date.parse('2024-01-01T00:00:00Z');
      const clock = () => now;
      const a = createSqliteQueue<string>(db, { name: 'a', now: clock, retry: { maxAttempts: 1 } });
      const b = createSqliteQueue<string>(db, { name: 'b', now: clock });
      const runAt = new Date(now);
      await a.addMany(['done', 'dead', 'cancelled', 'pending'].map((id) => ({ id, data: id, runAt: id === 'pending' ? new Date(now + 86_400_000 * 30) : runAt, cancelKeys: [`key/${id}`] })));
      await b.add({ id: 'other-done', data: 'x', runAt });
      await a.cancel('key/cancelled');
      const ran = new Promise<void>((resolve) => {
        let seen = 0;
        a.subscribe((e) => {
          if ((e.type === 'done' || e.type === 'dead') && ++seen === 2) resolve();
        });
      });
      a.process(async (job) => {
        if (job.id === 'dead') throw new Error('no');
      }, { concurrency: 2 });
      b.process(async () => {}, { concurrency: 1 });
      await ran;
      await b.idle();
      now += 86_400_000;
      await a.add({ id: 'late', data: 'late', runAt: new Date(now + 86_400_000), cancelKeys: ['key/late'] });
      await a.cancel('key/late');
      const cutoff = now - 1000;
      expect(await pruneFinishedJobs(ownTransactions(db), cutoff, { limit: 100, dryRun: true })).toEqual({ removed: 3 });
      let removed = 0;
      let after: string | undefined;
      do {
        const batch = await pruneFinishedJobs(ownTransactions(db), cutoff, { limit: 2, ...(after ? { after } : {}) });
        removed += batch.removed;
        after = batch.next;
      } while (after !== undefined);
      expect(removed).toBe(3);
      expect((await a.list({ limit: 100 })).map((j) => `${j.id}:${j.state}`).sort()).toEqual(['dead:dead', 'late:cancelled', 'pending:pending']);
      expect(await b.list()).toEqual([]);
      expect(db.prepare("SELECT key FROM queue_cancel_keys WHERE queue = 'a' ORDER BY key").all()).toEqual([{ key: 'key/dead' }, { key: 'key/late' }, { key: 'key/pending' }]);
      await a.close();
      await b.close();
    } finally {
      db.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
