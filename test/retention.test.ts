// Retention over a store with two months of history (test/helpers/retention-load.ts: 5,000
// bookings with their deliveries, outbox entries, decisions, disclosures, queue jobs and
// outcomes) and short retention: the dry run counts what goes, the run removes exactly that, in
// batches ingest commits get between, the file is back under a stated size, and nothing still
// needed is gone. bench/retention.ts does the same with 100,000 and prints the figures.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RetentionConfig } from '../src/config/operations-schema.ts';
import { silentLogger } from '../src/log.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { RetentionJob, fileSize, type RetentionRun } from '../src/workers/retention.ts';
import { runWithIngest, writeHistory, type History } from './helpers/retention-load.ts';
import { CLI_PATH } from './helpers/server.ts';

const NOW = Date.parse('2026-06-01T00:00:00Z');
const DAY = 86_400_000;
const CONFIG: RetentionConfig = {
  days: { rawMessages: 2, triggers: 7, deliveryBodies: 1, outbox: 1, deliveries: 7, doneJobs: 1, decisions: 30, audit: 30, outcomes: 30, videoJoins: 30, videoLinks: 30, replyPrompts: 30, staffTasks: 30, waitlist: 30 },
  everyMinutes: 60,
  batchSize: 500,
  vacuum: 'incremental',
};
/** The stated size: 5,000 bookings over 60 days (about 24 MB) kept 1 to 30 days come back under 8 MiB. */
const STATED_BYTES = 8 * 1024 * 1024;

let dir: string;
let file: string;
let store: SqliteStore;
let history: History;
let sizeBefore: number;
let dry: RetentionRun;
let run: RetentionRun;
let commitDuringRun: boolean;

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'carerelay-retention-'));
  file = path.join(dir, 'carerelay.db');
  store = SqliteStore.open(file);
  history = await writeHistory(store, { messages: 5000, now: NOW, days: 60 });
  store.db.pragma('wal_checkpoint(TRUNCATE)');
  sizeBefore = fileSize(file);
  const job = new RetentionJob({ store, config: CONFIG, sqlite: { db: store.db, write: (work) => store.write(work), file }, log: silentLogger, now: () => NOW });
  dry = await job.run({ dryRun: true });
  // A message arriving while the job runs is committed between its batches, not after the run.
  ({ run, committedBeforeRunEnded: commitDuringRun } = await runWithIngest(job, store, NOW));
}, 180_000);

afterAll(async () => {
  await store?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('retention after two months of history', () => {
  it('removes what the dry run counted, kind by kind', () => {
    const counts = (r: RetentionRun) => Object.fromEntries(r.kinds.map((k) => [k.kind, k.removed]));
    expect(counts(run)).toEqual(counts(dry));
    // 5,000 bookings, one every 17.28 min over 60 days; 1 in 50 still to come.
    expect(counts(run)).toMatchObject({ rawMessages: 4834, deliveryBodies: 9735, outbox: 4818, doneJobs: 9735, decisions: 4900, outcomes: 2205 });
    expect(counts(run).triggers).toBeGreaterThan(4000);
  });

  it('lets ingest commit between its batches', () => {
    expect(commitDuringRun).toBe(true);
  });

  it(`brings the file back under the stated size (${STATED_BYTES / 1048576} MiB), the space given back`, () => {
    expect(sizeBefore).toBeGreaterThan(20 * 1024 * 1024);
    expect(run.sizeAfter).toBeLessThan(STATED_BYTES);
    expect(run.vacuumedPages).toBeGreaterThan(0);
    expect(store.db.pragma('freelist_count', { simple: true })).toBe(0);
  });

  it('keeps every pending delivery whole, with its trigger and appointment state', async () => {
    expect(history.upcoming).toHaveLength(100);
    expect((await store.countDeliveries()).pending).toBe(100);
    for (const [i, appointmentId] of history.upcoming.entries()) {
      const state = await store.getSubjectState('appointment', appointmentId);
      expect(state?.status).toBe('booked');
      expect(await store.getTrigger(history.upcomingTriggers[i]!)).toBeDefined();
      const pending = await store.getDelivery(`reminder@appointment/${appointmentId}#0`);
      expect(pending).toMatchObject({ status: 'pending', delivery: { to: '+15550100' } });
    }
  });

  it('keeps messages awaiting review whole, the consent ledger, and audit within its retention', async () => {
    for (const id of history.awaiting) expect((await store.getMessage(id))!.raw.length).toBeGreaterThan(0);
    const { events } = await store.consentRecords({ patientIds: ['HP1', 'HP2'] });
    expect(events.map((e) => e.action).sort()).toEqual(['grant', 'opt_out']);
    const audit = await store.listAudit({});
    expect(audit).toHaveLength(history.recentAudit);
    expect(audit.every((a) => Date.parse(a.at) > NOW - CONFIG.days.audit * DAY)).toBe(true);
  });

  it('keeps what is younger than its retention: bytes of the last 2 days, records of the last 7', async () => {
    const recent = await store.listMessages({ since: new Date(NOW - 1 * DAY).toISOString(), limit: 1000 });
    expect(recent.length).toBeGreaterThan(50);
    for (const m of recent.slice(0, 20)) expect((await store.getMessage(m.id))!.raw.length).toBeGreaterThan(0);
    const week = await store.listMessages({ since: new Date(NOW - 6 * DAY).toISOString(), until: new Date(NOW - 3 * DAY).toISOString(), limit: 1000 });
    expect(week.length).toBeGreaterThan(200);
    const cleared = (await store.getMessage(week[0]!.id))!;
    expect(cleared.raw.length).toBe(0);
    expect(cleared.rawBytes).toBeGreaterThan(1000);
    // Older than the triggers' retention, only records still needed are left: those awaiting
    // someone, and bookings of appointments that start after the cutoff (still to come, or just
    // past: their outcome may still come and needs the booking's routing).
    const cutoff = NOW - CONFIG.days.triggers * DAY;
    const old = await store.listMessages({ until: new Date(cutoff - 1).toISOString(), limit: 1000 });
    expect(old.length).toBeGreaterThan(history.upcoming.length);
    for (const m of old) {
      if (history.awaiting.includes(m.id)) continue;
      const [trigger] = (await store.getMessage(m.id))!.triggers;
      const start = (await store.getSubjectState('appointment', trigger!.appointment!.id))!.start!;
      expect(Date.parse(start)).toBeGreaterThanOrEqual(cutoff);
    }
  });
});

describe('carerelay prune', () => {
  let configDir: string;
  beforeAll(async () => {
    configDir = mkdtempSync(path.join(tmpdir(), 'carerelay-prune-'));
    const dataDir = path.join(configDir, 'data');
    const cliStore = SqliteStore.open(path.join(dataDir, 'carerelay.db'));
    await writeHistory(cliStore, { messages: 257, now: Date.now(), days: 60 });
    await cliStore.close();
    const connectors = path.join(configDir, 'connectors');
    (await import('node:fs')).mkdirSync(connectors);
    writeFileSync(
      path.join(connectors, 'c.yaml'),
      `server:\n  dataDir: ./data\npolicy:\n  sensitive: { windowDays: 5 }\nretention:\n  days: { rawMessages: 2, triggers: 7, deliveryBodies: 1, outbox: 1, deliveries: 7, doneJobs: 1, decisions: 30, audit: 30, outcomes: 30, videoJoins: 30, videoLinks: 30, replyPrompts: 30, staffTasks: 30 }\n`,
    );
  }, 120_000);
  afterAll(() => rmSync(configDir, { recursive: true, force: true }));

  const cli = async (...args: string[]) => {
    try {
      const { stdout } = await promisify(execFile)(process.execPath, [CLI_PATH, 'prune', '--config-dir', configDir, ...args]);
      return { code: 0, stdout };
    } catch (error) {
      return { code: (error as { code: number }).code, stdout: (error as { stdout: string }).stdout };
    }
  };

  it('--dry-run shows what would go per kind and changes nothing; then prune removes it', async () => {
    const first = await cli('--dry-run');
    expect(first.code).toBe(0);
    expect(first.stdout).toMatch(/^would remove \(older than its retention, never what is still needed\):\n {2}deliveryBodies +\d+ +older than 1 days/);
    for (const kind of ['outbox', 'rawMessages', 'deliveries', 'doneJobs', 'triggers', 'decisions', 'audit', 'outcomes']) expect(first.stdout).toContain(`  ${kind}`);
    const again = await cli('--dry-run', '--json');
    const counted = JSON.parse(again.stdout) as RetentionRun;
    expect(counted.kinds.find((k) => k.kind === 'rawMessages')!.removed).toBeGreaterThan(200);
    const pruned = JSON.parse((await cli('--json')).stdout) as RetentionRun;
    expect(pruned.kinds.find((k) => k.kind === 'rawMessages')!.removed).toBe(counted.kinds.find((k) => k.kind === 'rawMessages')!.removed);
    expect(pruned.sizeAfter).toBeLessThan(pruned.sizeBefore!);
    expect(JSON.parse((await cli('--dry-run', '--json')).stdout).kinds.every((k: { removed: number }) => k.removed === 0)).toBe(true);
  }, 60_000);
});
