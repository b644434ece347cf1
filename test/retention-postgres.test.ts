// Retention on the PostgreSQL store over the same history as test/retention.test.ts (fewer
// bookings): the same history written into the embedded store and into PostgreSQL loses the
// same number of records of every kind, what the dry run counted goes, an ingest commit lands
// between the batches, nothing still needed is gone, and every walk reads by an index.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RetentionConfig } from '../src/config/operations-schema.ts';
import { silentLogger } from '../src/log.ts';
import { PostgresStore } from '../src/store/postgres.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { RetentionJob, type RetentionRun } from '../src/workers/retention.ts';
import { createTestDatabase, postgresSkipped, type TestDatabase } from './helpers/postgres.ts';
import { runWithIngest, writeHistory, type History } from './helpers/retention-load.ts';

const NOW = Date.parse('2026-06-01T00:00:00Z');
const DAY = 86_400_000;
const BOOKINGS = 1500;
const CONFIG: RetentionConfig = {
  days: { rawMessages: 2, triggers: 7, deliveryBodies: 1, outbox: 1, deliveries: 7, doneJobs: 1, decisions: 30, audit: 30, outcomes: 30, videoJoins: 30, videoLinks: 30, replyPrompts: 30, staffTasks: 30, waitlist: 30 },
  everyMinutes: 60,
  batchSize: 200,
  vacuum: 'incremental',
};
const counts = (r: RetentionRun) => Object.fromEntries(r.kinds.map((k) => [k.kind, k.removed]));

describe.skipIf(postgresSkipped())('retention on PostgreSQL after two months of history', () => {
  let db: TestDatabase;
  let store: PostgresStore;
  let history: History;
  let dry: RetentionRun;
  let run: RetentionRun;
  let embedded: RetentionRun;
  let commitDuringRun: boolean;
  let dir: string;

  beforeAll(async () => {
    db = await createTestDatabase('carerelay_retention');
    store = await PostgresStore.open({ url: db.url, pool: { max: 6 } });
    dir = mkdtempSync(path.join(tmpdir(), 'carerelay-retention-pg-'));
    const sqlite = SqliteStore.open(path.join(dir, 'carerelay.db'));
    try {
      await writeHistory(sqlite, { messages: BOOKINGS, now: NOW, days: 60 });
      embedded = await new RetentionJob({ store: sqlite, config: CONFIG, log: silentLogger, now: () => NOW }).run();
    } finally {
      await sqlite.close();
    }
    history = await writeHistory(store, { messages: BOOKINGS, now: NOW, days: 60 });
    const job = new RetentionJob({ store, config: CONFIG, log: silentLogger, now: () => NOW });
    dry = await job.run({ dryRun: true });
    // A message arriving while the job runs is committed between its batches, not after the run.
    ({ run, committedBeforeRunEnded: commitDuringRun } = await runWithIngest(job, store, NOW));
  }, 180_000);

  afterAll(async () => {
    await store?.close();
    await db?.drop();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  it('removes what the dry run counted, and what the embedded store removes of the same history', () => {
    expect(counts(run)).toEqual(counts(dry));
    // The store's kinds only (done jobs are the embedded queue's).
    expect(counts(run)).toEqual(counts(embedded));
    expect(counts(run)).not.toHaveProperty('doneJobs');
    expect(counts(run).rawMessages).toBeGreaterThan(BOOKINGS * 0.9);
    expect(counts(run).triggers).toBeGreaterThan(BOOKINGS * 0.8);
  });

  it('lets ingest commit between its batches', () => {
    expect(commitDuringRun).toBe(true);
  });

  it('keeps every pending delivery whole, with its trigger and appointment state; messages awaiting review; the consent ledger', async () => {
    expect((await store.countDeliveries()).pending).toBe(history.upcoming.length);
    for (const [i, appointmentId] of history.upcoming.entries()) {
      expect((await store.getSubjectState('appointment', appointmentId))?.status).toBe('booked');
      expect(await store.getTrigger(history.upcomingTriggers[i]!)).toBeDefined();
      expect(await store.getDelivery(`reminder@appointment/${appointmentId}#0`)).toMatchObject({ status: 'pending', delivery: { to: '+15550100' } });
    }
    for (const id of history.awaiting) expect((await store.getMessage(id))!.raw.length).toBeGreaterThan(0);
    const { events } = await store.consentRecords({ patientIds: ['HP1', 'HP2'] });
    expect(events.map((e) => e.action).sort()).toEqual(['grant', 'opt_out']);
    expect(await store.listAudit({})).toHaveLength(history.recentAudit);
    const cutoff = NOW - CONFIG.days.triggers * DAY;
    const recent = await store.listMessages({ since: new Date(cutoff).toISOString(), limit: 1000 });
    expect(recent.length).toBeGreaterThan(100);
  });

  it('walks every kind by an index (no sequential scan of a table it prunes)', async () => {
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      // A planner that knows the table is large (not the few rows left after the run).
      await client.query('SET enable_seqscan = off');
      const plans: Record<string, string> = {};
      const explain = async (name: string, sql: string) => {
        const rows = await client.query<{ 'QUERY PLAN': string }>(`EXPLAIN ${sql}`);
        plans[name] = rows.rows.map((r) => r['QUERY PLAN']).join('\n');
      };
      await explain('messages', 'SELECT id FROM messages WHERE received_ms < 1 AND (received_ms, id) > (0, 0) ORDER BY received_ms, id LIMIT 10');
      await explain(
        'bodies',
        `SELECT seq FROM deliveries WHERE bodies_cleared IS NULL AND status IN ('sent', 'suppressed', 'cancelled') AND updated_at COLLATE "C" < 'b' AND (updated_at COLLATE "C", seq) > ('a', 0) ORDER BY updated_at COLLATE "C", seq LIMIT 10`,
      );
      await explain('outbox', `SELECT seq FROM outbox WHERE kept_at COLLATE "C" < 'b' AND (kept_at COLLATE "C", seq) > ('a', 0) ORDER BY kept_at COLLATE "C", seq LIMIT 10`);
      await explain(
        'outcomes',
        `SELECT day FROM outcomes WHERE day COLLATE "C" < 'b' AND (day COLLATE "C", appointment_id COLLATE "C", rule COLLATE "C") > ('a', '', '') ORDER BY day COLLATE "C", appointment_id COLLATE "C", rule COLLATE "C" LIMIT 10`,
      );
      await explain('states', 'SELECT kind FROM subject_states WHERE message_id = ANY(ARRAY[1, 2]::bigint[])');
      await explain('attempts', 'SELECT id FROM messages WHERE replaces = 1');
      for (const [name, plan] of Object.entries(plans)) expect(plan, name).not.toMatch(/Seq Scan|Sort/);
    } finally {
      await client.end();
    }
  });
});

describe.skipIf(postgresSkipped())('retention runs of several processes on one PostgreSQL store', () => {
  it("a timer's run is skipped while another process runs retention; carerelay prune waits its turn", async () => {
    const db = await createTestDatabase('carerelay_retention_lock');
    const [a, b] = [await PostgresStore.open({ url: db.url }), await PostgresStore.open({ url: db.url })];
    try {
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      let entered!: () => void;
      const inside = new Promise<void>((resolve) => (entered = resolve));
      // Process A is in the middle of its run.
      const running = a.withLock('retention', async () => {
        entered();
        await held;
      });
      await inside;
      const job = new RetentionJob({ store: b, config: CONFIG, log: silentLogger, now: () => NOW });
      expect(await job.run({ ifFree: true })).toEqual({ dryRun: false, kinds: [], skipped: true });
      let pruned: RetentionRun | undefined;
      const prune = job.run().then((r) => (pruned = r));
      // A dry run (another `carerelay prune --dry-run`) takes no lock: it goes on meanwhile.
      expect(await new RetentionJob({ store: b, config: CONFIG, log: silentLogger, now: () => NOW }).run({ dryRun: true })).toMatchObject({ dryRun: true });
      expect(pruned).toBeUndefined();
      release();
      await running;
      await prune;
      expect(pruned).toMatchObject({ dryRun: false });
      expect(pruned!.skipped).toBeUndefined();
      expect(pruned!.kinds.length).toBeGreaterThan(0);
    } finally {
      await a.close();
      await b.close();
      await db.drop();
    }
  });
});
