// Embedded queue benchmark: 1,000,000 pending jobs with cancel keys in a temp-file SQLite
// queue (WAL, synchronous=FULL, as in production), then
//   - cancel-by-key latency, median and p99 over 1,000 cancels (goal ≤ 1 ms), with the
//     production fsync per commit and again without it (index work alone),
//   - restart: reopen the file and become ready to process (schema check + first poll),
//   - drain: 1,000 due jobs run to done through the 1,000,000 pending ones.
// Run alone with `node --expose-gc --import tsx bench/queue.ts`, or through bench/run.ts.
// The cancel tail (p99, max) includes SQLite's WAL auto-checkpoints, which a commit runs
// when the log passes 1,000 pages (copy to the main file + fsync under synchronous=FULL).
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import type { NewJob } from '../src/queue/queue.ts';
import { createSqliteQueue } from '../src/queue/sqlite.ts';
import { openSqliteDatabase } from '../src/store/sqlite-db.ts';

const PENDING = 1_000_000;
const DUE_NOW = 1_000;
const BATCH = 10_000;
const CANCELS = 1_000;

interface BenchJob {
  appointmentId: string;
  step: number;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

export async function benchQueue(): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(tmpdir(), 'carerelay-bench-queue-'));
  const file = join(dir, 'carerelay.db');
  try {
    const start = Date.now();
    let db = openSqliteDatabase(file);
    let queue = createSqliteQueue<BenchJob>(db, { name: 'deliveries' });

    // Fill: a reminder per appointment over the next 30 days, keyed by appointment and by
    // patient; the first DUE_NOW jobs are already due (they measure the drain after restart).
    const fillStart = performance.now();
    for (let base = 0; base < PENDING + DUE_NOW; base += BATCH) {
      const jobs: NewJob<BenchJob>[] = [];
      for (let i = base; i < Math.min(base + BATCH, PENDING + DUE_NOW); i++) {
        const runAt = i < DUE_NOW ? start - 60_000 : start + 3_600_000 + ((i * 2_654_435_761) % (30 * 86_400_000));
        jobs.push({
          id: `delivery-${i}`,
          data: { appointmentId: `A${i}`, step: 1 },
          runAt: new Date(runAt),
          cancelKeys: [`appointment:A${i}`, `patient:P${i % 400_000}`],
        });
      }
      await queue.addMany(jobs);
    }
    const fillMs = performance.now() - fillStart;

    // Cancel 1,000 distinct future appointments, spread over the key space. Collect the
    // fill's garbage first (when run with --expose-gc) so a GC pause is not billed to cancel.
    (globalThis as { gc?: () => void }).gc?.();
    const latencies: number[] = [];
    let cancelled = 0;
    for (let k = 0; k < CANCELS; k++) {
      const i = DUE_NOW + ((k * 7_919) % PENDING);
      const t = performance.now();
      cancelled += await queue.cancel(`appointment:A${i}`, 'appointment_cancelled');
      latencies.push(performance.now() - t);
    }
    if (cancelled !== CANCELS) throw new Error(`expected ${CANCELS} cancelled jobs, got ${cancelled}`);
    latencies.sort((a, b) => a - b);

    // The same on other keys without the per-commit fsync (synchronous=NORMAL): what the
    // index work costs, apart from the disk's flush latency that FULL adds to every commit.
    db.pragma('synchronous = NORMAL');
    const noSync: number[] = [];
    for (let k = 0; k < CANCELS; k++) {
      const i = DUE_NOW + ((k * 7_919 + 1) % PENDING);
      const t = performance.now();
      cancelled += await queue.cancel(`appointment:A${i}`, 'appointment_cancelled');
      noSync.push(performance.now() - t);
    }
    db.pragma('synchronous = FULL');
    if (cancelled !== 2 * CANCELS) throw new Error(`expected ${2 * CANCELS} cancelled jobs, got ${cancelled}`);
    noSync.sort((a, b) => a - b);

    await queue.close();
    db.close();
    const fileMb = statSync(file).size / 1_048_576;

    // Restart: open the file, check the schema, poll once.
    const restartStart = performance.now();
    db = openSqliteDatabase(file);
    queue = createSqliteQueue<BenchJob>(db, { name: 'deliveries' });
    let handled = 0;
    let firstStartMs = 0;
    queue.process(
      async () => {
        if (handled++ === 0) firstStartMs = performance.now() - restartStart;
      },
      { concurrency: 8 },
    );
    await queue.poke();
    const restartMs = performance.now() - restartStart;
    await queue.idle();
    const drainMs = performance.now() - restartStart;
    if (handled !== DUE_NOW) throw new Error(`expected ${DUE_NOW} due jobs to run, ran ${handled}`);
    const counts = await queue.counts();
    if (counts.pending !== PENDING - 2 * CANCELS) throw new Error(`unexpected pending count ${counts.pending}`);
    await queue.close();
    db.close();

    return {
      queue_pending_jobs: PENDING,
      queue_fill_ms: Math.round(fillMs),
      queue_fill_jobs_per_s: Math.round(((PENDING + DUE_NOW) / fillMs) * 1_000),
      queue_file_mb: Math.round(fileMb),
      queue_cancel_median_ms: Number(percentile(latencies, 0.5).toFixed(3)),
      queue_cancel_p99_ms: Number(percentile(latencies, 0.99).toFixed(3)),
      queue_cancel_max_ms: Number(latencies[latencies.length - 1]!.toFixed(3)),
      queue_cancel_nosync_median_ms: Number(percentile(noSync, 0.5).toFixed(3)),
      queue_cancel_nosync_p99_ms: Number(percentile(noSync, 0.99).toFixed(3)),
      queue_restart_ready_ms: Number(restartMs.toFixed(1)),
      queue_restart_first_job_ms: Number(firstStartMs.toFixed(1)),
      queue_drain_1000_due_ms: Math.round(drainMs),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const figures = await benchQueue();
  for (const [name, value] of Object.entries(figures)) console.log(`${name.padEnd(32)} ${value}`);
}
