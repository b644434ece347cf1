// `npm run bench`: runs every benchmark module present in bench/, one after the other (each
// measures alone on the machine), and prints all figures at the end. A module is imported
// only when its file exists, so a checkout without one of them still runs the others.
//   bench/parse.ts   benchParse   parse + normalize µs/message (ours and node-hl7-client's)
//   bench/ingest.ts  benchIngest  durable ingest (no mappings, shipped mappings, FHIR) vs the fsync floor
//   bench/queue.ts   benchQueue   embedded queue: 1,000,000 pending jobs, cancel, restart, drain
//   bench/route.ts   benchRoute   router + store + queue: deliveries/s, cancel among 1,000,000, restart
//   bench/fhir.ts    benchFhir    full-resource FHIR notifications/s with 2xx after commit
//   bench/admin.ts   benchAdmin   admin API: longest event-loop stall per request, 1,000,000 deliveries
//   bench/retention.ts benchRetention  100,000 bookings of history pruned: size before/after, commits meanwhile
//   bench/deliver.ts benchDeliver due deliveries/s: checks, render, signed webhook or outbox, vs an HTTP echo floor
//   bench/postgres.ts benchPostgres  ingest msgs/s at 1 and 8 connections: embedded vs PostgreSQL vs the fsync floor
//   bench/scale.ts   benchScale   queue on Redis: deliveries/s with 1 and 2 worker processes beside BullMQ's no-op floor
// Run with `node --expose-gc --import tsx bench/run.ts` so each module can collect garbage
// between phases. `node … bench/run.ts ingest queue` runs only the named ones.
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

type Bench = () => Promise<Record<string, number>>;

const MODULES: ReadonlyArray<{ name: string; file: string; exportName: string }> = [
  { name: 'parse', file: 'parse.ts', exportName: 'benchParse' },
  { name: 'ingest', file: 'ingest.ts', exportName: 'benchIngest' },
  { name: 'queue', file: 'queue.ts', exportName: 'benchQueue' },
  { name: 'route', file: 'route.ts', exportName: 'benchRoute' },
  { name: 'fhir', file: 'fhir.ts', exportName: 'benchFhir' },
  { name: 'admin', file: 'admin.ts', exportName: 'benchAdmin' },
  { name: 'retention', file: 'retention.ts', exportName: 'benchRetention' },
  { name: 'deliver', file: 'deliver.ts', exportName: 'benchDeliver' },
  { name: 'postgres', file: 'postgres.ts', exportName: 'benchPostgres' },
  { name: 'scale', file: 'scale.ts', exportName: 'benchScale' },
];

const benchDir = fileURLToPath(new URL('.', import.meta.url));
const only = process.argv.slice(2);
const unknown = only.filter((n) => !MODULES.some((m) => m.name === n));
if (unknown.length > 0) {
  console.error(`unknown benchmark(s): ${unknown.join(', ')}; known: ${MODULES.map((m) => m.name).join(', ')}`);
  process.exit(2);
}

const results: Array<{ name: string; figures?: Record<string, number>; error?: string; seconds: number }> = [];
for (const m of MODULES) {
  if (only.length > 0 && !only.includes(m.name)) continue;
  const path = `${benchDir}${m.file}`;
  if (!existsSync(path)) {
    console.log(`bench/${m.file}: not present, skipped`);
    continue;
  }
  console.log(`bench/${m.file}: running ${m.exportName}…`);
  const started = performance.now();
  try {
    const mod = (await import(pathToFileURL(path).href)) as Record<string, unknown>;
    const fn = mod[m.exportName];
    if (typeof fn !== 'function') throw new Error(`bench/${m.file} does not export ${m.exportName}()`);
    const figures = await (fn as Bench)();
    results.push({ name: m.name, figures, seconds: (performance.now() - started) / 1000 });
  } catch (error) {
    // One failing benchmark must not hide the others' figures.
    results.push({ name: m.name, error: (error as Error).stack ?? String(error), seconds: (performance.now() - started) / 1000 });
  }
  (globalThis as { gc?: () => void }).gc?.();
}

console.log('\n=== figures ===');
for (const r of results) {
  console.log(`\n[${r.name}] (${r.seconds.toFixed(1)} s)`);
  if (r.error !== undefined) {
    console.log(`  FAILED: ${r.error}`);
    continue;
  }
  for (const [name, value] of Object.entries(r.figures!)) console.log(`  ${name.padEnd(40)} ${value}`);
}
process.exitCode = results.some((r) => r.error !== undefined) ? 1 : 0;
