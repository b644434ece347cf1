// Retention at scale (docs/operations.md "Retention"): a store holding two months of history —
// COUNT bookings (default 100,000) written through the store as ingest, routing and the
// delivery worker would (test/helpers/retention-load.ts) — pruned with short retention (the
// retention test's: bytes 2 days, records 7, bodies and outbox 1, evidence 30). Prints the file
// size before and after (the run's incremental vacuum gives the pages back), what each kind
// removed, how long the run took, and what a commit arriving meanwhile waited: a probe commits a
// small message every 20 ms before the run (the floor on this disk and load) and during it, so
// the figure to read is the ratio of the two.
//
//   node --expose-gc --import tsx bench/retention.ts [COUNT]
//   npm run bench -- retention            (COUNT from RETENTION_MESSAGES, default 100,000)
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import type { RetentionConfig } from '../src/config/operations-schema.ts';
import { silentLogger } from '../src/log.ts';
import { testRecord } from '../src/store/conformance.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { RetentionJob, fileSize } from '../src/workers/retention.ts';
import { writeHistory } from '../test/helpers/retention-load.ts';

const CONFIG: RetentionConfig = {
  days: { rawMessages: 2, triggers: 7, deliveryBodies: 1, outbox: 1, deliveries: 7, doneJobs: 1, decisions: 30, audit: 30, outcomes: 30, videoJoins: 30, videoLinks: 30, replyPrompts: 30, staffTasks: 30, waitlist: 30 },
  everyMinutes: 60,
  batchSize: 100,
  vacuum: 'incremental',
};

const quantile = (sorted: number[], q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
const round = (n: number, digits = 1) => Number(n.toFixed(digits));

/** Commits a small record every `everyMs` until `until` resolves; the latency of each, ms. */
async function probe(store: SqliteStore, until: Promise<unknown>, everyMs: number, tag: string): Promise<number[]> {
  const latencies: number[] = [];
  let done = false;
  void until.finally(() => {
    done = true;
  });
  for (let i = 0; !done; i++) {
    const started = performance.now();
    await store.commitInbound(testRecord({ controlId: `${tag}-${i}`, receivedAt: new Date().toISOString() }));
    latencies.push(performance.now() - started);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
  return latencies.sort((a, b) => a - b);
}

export async function benchRetention(count = Number(process.env.RETENTION_MESSAGES ?? 100_000)): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(tmpdir(), 'carerelay-bench-retention-'));
  const file = join(dir, 'carerelay.db');
  const store = SqliteStore.open(file);
  try {
    const now = Date.now();
    const writeStarted = performance.now();
    await writeHistory(store, { messages: count, now, days: 60, chunk: 500 });
    store.db.pragma('wal_checkpoint(TRUNCATE)');
    const written = (performance.now() - writeStarted) / 1000;
    const sizeBefore = fileSize(file);
    const job = new RetentionJob({ store, config: CONFIG, sqlite: { db: store.db, write: (work) => store.write(work), file }, log: silentLogger, now: () => now });

    const dryStarted = performance.now();
    const dry = await job.run({ dryRun: true });
    const drySeconds = (performance.now() - dryStarted) / 1000;

    // The floor: the probe alone for two seconds.
    const floor = await probe(store, new Promise((resolve) => setTimeout(resolve, 2000)), 20, 'floor');
    const loop = monitorEventLoopDelay({ resolution: 10 });
    loop.enable();
    const runStarted = performance.now();
    const running = job.run();
    const during = await probe(store, running, 20, 'during');
    const run = await running;
    const runSeconds = (performance.now() - runStarted) / 1000;
    loop.disable();

    const figures: Record<string, number> = {
      'bookings written': count,
      'history written, s': round(written),
      'load average (1 min)': round(loadavg()[0]!, 2),
      'database before, MB': round(sizeBefore / 1_048_576),
      'database after, MB': round((run.sizeAfter ?? 0) / 1_048_576),
      'pages given back': run.vacuumedPages ?? 0,
      'dry run, s': round(drySeconds),
      'prune run, s': round(runSeconds),
      'event-loop delay during the run, max ms': round(loop.max / 1e6),
      'event-loop delay during the run, p99 ms': round(loop.percentile(99) / 1e6),
      'probe commit alone, p50 ms': round(quantile(floor, 0.5), 2),
      'probe commit alone, p99 ms': round(quantile(floor, 0.99), 2),
      'probe commit during the run, p50 ms': round(quantile(during, 0.5), 2),
      'probe commit during the run, p99 ms': round(quantile(during, 0.99), 2),
      'probe commit during the run, max ms': round(during[during.length - 1] ?? 0, 2),
      'probe commits during the run': during.length,
    };
    for (const k of run.kinds) {
      figures[`removed: ${k.kind} (${k.days} d)`] = k.removed;
      if (dry.kinds.find((d) => d.kind === k.kind)?.removed !== k.removed) figures[`dry run disagrees: ${k.kind}`] = dry.kinds.find((d) => d.kind === k.kind)?.removed ?? -1;
    }
    return figures;
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const figures = await benchRetention(process.argv[2] ? Number(process.argv[2]) : undefined);
  for (const [name, value] of Object.entries(figures)) console.log(`${name.padEnd(44)} ${value}`);
}
