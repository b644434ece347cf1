// Ingest on the embedded store vs PostgreSQL, side by side in one run (docs/scale-out.md
// "Sizing"). The same server, configuration and client as bench/ingest.ts `shipped` (the
// repository's mappings and the connectors they name: what users run), over MLLP on
// 127.0.0.1, one message in flight per connection, 1 and 8 connections:
//   - `floor`:    the fsync floor of bench/ingest.ts (raw bytes appended, one fdatasync per
//                 group): the least any durable commit before the ACK can cost on this disk;
//   - `embedded`: server.store sqlite (synchronous=FULL: an fsync per group commit);
//   - `postgres`: server.store postgres on a PostgreSQL cluster of this run on the same disk
//                 with its durability settings on (fsync, synchronous_commit, full-page
//                 writes: a commit is on disk before the ACK, as with SQLite), over TCP on
//                 loopback, pool of 10 (the default).
// Reported: msgs/s, ACK latency p50/p99, commits per message (the store's transactions, queue
// writes of the embedded queue excluded on PostgreSQL), each as a share of the floor, and the
// goal: PostgreSQL at 8 connections >= the embedded figure.
//
// The cluster: CARERELAY_BENCH_PG_URL (a server with the right to create databases) or one
// started here from the installed PostgreSQL binaries (test/helpers/postgres.ts), removed at
// the end. Client, CareRelay and PostgreSQL share the machine's cores, equally for both stores.
// Run alone with `node --expose-gc --import tsx bench/postgres.ts`, or through bench/run.ts.
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import type { RunningCarerelay } from '../src/main.ts';
import { PostgresStore } from '../src/store/postgres.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { adminQuery, dropDatabase, startPostgresCluster, withDatabase } from '../test/helpers/postgres.ts';
import { WARMUP_PER_CONNECTION, drive, fsyncedLogCommit, startPipeline, startServer, type RunResult } from './ingest.ts';

const CONNECTIONS = [1, 8] as const;
const TARGETS = ['floor', 'embedded', 'postgres'] as const;

/** Transactions the server's store committed so far (either backend). */
function commits(running: RunningCarerelay): number {
  const store = running.store;
  if (store instanceof SqliteStore || store instanceof PostgresStore) return store.commits;
  return 0;
}

export async function benchPostgres(): Promise<Record<string, number>> {
  const root = mkdtempSync(join(process.env.CARERELAY_BENCH_DIR ?? tmpdir(), 'carerelay-bench-pg-'));
  const figures: Record<string, number> = {};
  const rows: Array<RunResult & { target: string; connections: number; commitsPerMsg?: number }> = [];
  // A durable cluster of this run (or the given server), and a database of its own.
  const given = process.env.CARERELAY_BENCH_PG_URL;
  const cluster = given ? undefined : await startPostgresCluster({ durable: true });
  const server = given ?? cluster!.url;
  const database = `carerelay_bench_${process.pid}`;
  await adminQuery(server, `CREATE DATABASE ${database}`);
  const url = withDatabase(server, database);
  try {
    const embedded = await startServer(join(root, 'embedded'), true);
    const postgres = await startServer(join(root, 'postgres'), true, { lines: ['  store:', '    type: postgres', '    url: { env: DATABASE_URL }'], env: { DATABASE_URL: url } });
    const log = fsyncedLogCommit(join(root, 'fsynclog.bin'));
    const floor = await startPipeline(log.commit);
    try {
      for (const connections of CONNECTIONS) {
        rows.push({ target: 'floor', connections, ...(await drive(floor.port, connections, `P-floor-${connections}-`)) });
        for (const [target, s] of [['embedded', embedded], ['postgres', postgres]] as const) {
          const before = commits(s.running);
          const result = await drive(s.port, connections, `P-${target}-${connections}-`);
          // Routing and the confirmations due now of what was ACKed finish before the next target.
          await s.running.deliveries.idle();
          const messages = result.messages + connections * WARMUP_PER_CONNECTION;
          rows.push({ target, connections, ...result, commitsPerMsg: Number(((commits(s.running) - before) / messages).toFixed(3)) });
        }
      }
    } finally {
      await floor.close();
      log.close();
      await postgres.running.stop();
      await embedded.running.stop();
    }
  } finally {
    // Said, not thrown: the figures are worth printing still (a given server keeps the database).
    await dropDatabase(server, database).catch((error: unknown) =>
      console.error(`the benchmark database ${database} was left on ${given ? 'the given server' : 'its cluster'}: ${(error as Error).message}`),
    );
    cluster?.stop();
    rmSync(root, { recursive: true, force: true });
  }

  for (const r of rows) {
    const key = `pg_ingest_${r.target}_${r.connections}conn`;
    figures[`${key}_msgs_per_s`] = r.msgsPerS;
    figures[`${key}_p50_ms`] = r.p50Ms;
    figures[`${key}_p99_ms`] = r.p99Ms;
    if (r.commitsPerMsg !== undefined) figures[`${key}_commits_per_msg`] = r.commitsPerMsg;
  }
  const rate = (target: string, connections: number) => figures[`pg_ingest_${target}_${connections}conn_msgs_per_s`]!;
  for (const connections of CONNECTIONS) {
    for (const target of TARGETS) figures[`pg_ingest_${target}_vs_floor_${connections}conn_pct`] = Math.round((rate(target, connections) / rate('floor', connections)) * 1000) / 10;
    figures[`pg_ingest_postgres_vs_embedded_${connections}conn_pct`] = Math.round((rate('postgres', connections) / rate('embedded', connections)) * 1000) / 10;
  }

  console.log('\nIngest with the shipped mappings: embedded store vs PostgreSQL (durable), one message in flight per connection');
  console.log('target     conns  messages   msgs/s  % floor  % embedded   p50 ms   p99 ms  commits/msg');
  for (const r of rows) {
    const vsEmbedded = r.target === 'floor' ? '-' : String(Math.round((r.msgsPerS / rate('embedded', r.connections)) * 1000) / 10);
    console.log(
      `${r.target.padEnd(10)} ${String(r.connections).padStart(5)} ${String(r.messages).padStart(9)} ${String(r.msgsPerS).padStart(8)} ` +
        `${String(figures[`pg_ingest_${r.target}_vs_floor_${r.connections}conn_pct`]).padStart(8)} ${vsEmbedded.padStart(11)} ` +
        `${r.p50Ms.toFixed(2).padStart(8)} ${r.p99Ms.toFixed(2).padStart(8)} ${(r.commitsPerMsg === undefined ? '-' : r.commitsPerMsg.toFixed(3)).padStart(12)}`,
    );
  }
  figures.pg_ingest_load_average = Number(loadavg()[0]!.toFixed(1));
  console.log(`load average on this machine at the end: ${figures.pg_ingest_load_average} (client, CareRelay and PostgreSQL share its cores)`);
  console.log(
    `goal: PostgreSQL at 8 connections >= embedded: ${rate('postgres', 8)} vs ${rate('embedded', 8)} msgs/s ` +
      `(${figures.pg_ingest_postgres_vs_embedded_8conn_pct} %) — ${rate('postgres', 8) >= rate('embedded', 8) ? 'met' : 'not met'}\n`,
  );
  return figures;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const started = performance.now();
  const figures = await benchPostgres();
  for (const [name, value] of Object.entries(figures)) console.log(`${name.padEnd(48)} ${value}`);
  console.log(`(${((performance.now() - started) / 1000).toFixed(1)} s)`);
}
