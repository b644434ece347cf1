// Durable ingest benchmark. In one run, on the same machine and with the same client:
//   (a) `none`: the real durable server (startCarerelay: parse, dedupe look-up, normalize,
//       one SQLite commit with synchronous=FULL — an fsync — then the ACK) with no mappings,
//       plain MLLP on 127.0.0.1:0, data dir in a fresh temp directory;
//   (b) `shipped`: the same server with the repository's mappings/ and the connectors their
//       outputs are declared in (connectors/outbox.yaml, connectors/marketing.yaml)
//       (what every user runs): each booking plans its confirmation (due now, kept by the
//       email outbox), the 24 h SMS and, for first visits and bookings a week ahead, more;
//       reported too: how many confirmations reached the outbox and how long after the
//       booking's ACK (goal: all within a second);
//   (c) `fhir`: full-resource FHIR notifications over HTTP to a server with the shipped
//       mappings (bench/fhir.ts), one subscription per connection;
//   (d) a bare MLLP echo listener (startEchoMllpServer: same transport, no storage);
//   (e) `nostore`: the ingest pipeline without storage: the same listener, parse, sender
//       check, normalize and ACK as (a), with a store whose look-ups find nothing and whose
//       commits resolve at once. Not a mode CareRelay offers: what the rest costs;
//   (f) `floor` (fsync floor): (e) plus the least a durable commit can cost — the raw bytes
//       appended to a file and one fdatasync per group, nothing else (no dedupe, no
//       triggers, no routing): the ceiling for any design that, like (a), fsyncs before it
//       ACKs. The goals are ratios to it at 8 connections: none ≥ 70 %, shipped ≥ 30 %;
//   (g) `writer`: (e) with the store's inbound commit (the same SqliteStore.commitInbound as
//       (a), routing left out) on a thread of its own (bench/writer-thread.ts): what a writer
//       thread would give. Not a mode CareRelay offers; its loop figure is the event loop's
//       only, and the thread's own busy time is reported beside it (what bounds that design).
// Each is driven with 1 connection and with 8 connections, one message in flight per
// connection (how HL7 senders work), for DURATION_S seconds or MAX_MESSAGES messages,
// whichever comes first, every message a distinct SIU^S12 (own MSH-10 and appointment id).
// Reported: msgs/s, ACK latency p50/p99 (ms, send to matching ACK), and per message: the event
// loop's busy time (what a message costs the one thread every target saturates), the
// process's CPU time on every thread (what the cores must supply), SQLite commits, bytes
// written to storage, and database growth (bench/measure.ts), each measured from the start of
// the run until the routing and deliveries it caused are done.
//
// Client and servers share the process (and its cores), equally for every target.
// Set CARERELAY_BENCH_DIR to put the data dir on the disk to measure (default: os.tmpdir()),
// CARERELAY_BENCH_KEEP=1 to keep the databases afterwards.
// Run alone with `node --expose-gc --import tsx bench/ingest.ts`, or through bench/run.ts.
import { closeSync, fdatasyncSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { MllpClient } from '../src/hl7v2/mllp-client.ts';
import { MllpServer, startEchoMllpServer } from '../src/hl7v2/mllp-server.ts';
import { silentLogger } from '../src/log.ts';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { storedMessageOf } from '../src/store/common.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { CommitOutcome, InboundRecord, Store } from '../src/store/store.ts';
import { Hl7Ingest } from '../src/workers/ingest.ts';
import { startFhirTarget } from './fhir.ts';
import { startWriterThread } from './writer-thread.ts';
import { benchConnectorLines, bookingSiu, confirmationFigures, meter, perMessage, storageWrites, writeConfig, type ConfirmationFigures, type Meter } from './measure.ts';

const DURATION_S = Number(process.env.BENCH_INGEST_SECONDS ?? 10);
const MAX_MESSAGES = Number(process.env.BENCH_INGEST_MESSAGES ?? 20_000);
/** Messages per connection before measuring (JIT, SQLite page cache, socket buffers). */
export const WARMUP_PER_CONNECTION = 100;
const CONNECTIONS = [1, 8] as const;

export interface RunResult {
  messages: number;
  msgsPerS: number;
  p50Ms: number;
  p99Ms: number;
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

/**
 * Drives `port` with `connections` senders, one message in flight each, until the time or
 * message budget is spent. `prefix` keeps MSH-10s distinct across runs.
 */
export async function drive(port: number, connections: number, prefix: string, acked?: Map<string, number>): Promise<RunResult> {
  const clients = Array.from({ length: connections }, () => new MllpClient({ host: '127.0.0.1', port, ackTimeoutMs: 30_000 }));
  await Promise.all(clients.map((c) => c.connect()));
  try {
    // Warm-up, not measured.
    await Promise.all(
      clients.map(async (client, c) => {
        for (let i = 0; i < WARMUP_PER_CONNECTION; i++) await client.send(bookingSiu(`${prefix}W${c}-${i}`, i));
      }),
    );
    (globalThis as { gc?: () => void }).gc?.();

    const latencies = new Float64Array(MAX_MESSAGES);
    let count = 0;
    let seq = 0;
    const deadline = performance.now() + DURATION_S * 1000;
    const started = performance.now();
    await Promise.all(
      clients.map(async (client) => {
        while (performance.now() < deadline) {
          const n = seq++;
          if (n >= MAX_MESSAGES) break;
          const message = bookingSiu(`${prefix}${n}`, n);
          const t0 = performance.now();
          const ack = await client.send(message);
          latencies[count++] = performance.now() - t0;
          // "MSA|AA|" — a NAK would make the figure meaningless.
          if (ack.indexOf('MSA|AA|') === -1) throw new Error(`message ${prefix}${n} was not accepted: ${ack.toString('latin1')}`);
          acked?.set(`AP-${prefix}${n}`, Date.now());
        }
      }),
    );
    const elapsedS = (performance.now() - started) / 1000;
    const sorted = latencies.subarray(0, count).sort();
    return {
      messages: count,
      msgsPerS: Math.round(count / elapsedS),
      p50Ms: Number(percentile(sorted, 0.5).toFixed(2)),
      p99Ms: Number(percentile(sorted, 0.99).toFixed(2)),
    };
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
}

export type CommitStrategy = (record: InboundRecord, stored: () => CommitOutcome) => Promise<CommitOutcome>;

/**
 * Targets (c) and (d): HL7 ingest over MLLP with a store whose look-ups find nothing and
 * whose commits are `commit` (the other Store methods are an in-memory SQLite store's).
 */
export async function startPipeline(commit: CommitStrategy): Promise<{ port: number; close: () => Promise<void> }> {
  const memory = SqliteStore.open(':memory:');
  let id = 0;
  const store: Store = Object.assign(Object.create(memory) as SqliteStore, {
    findMessage: async () => undefined,
    getSubjectState: async () => undefined,
    listSubjectStates: async () => [],
    commitInbound: (r: InboundRecord): Promise<CommitOutcome> =>
      commit(r, () => ({
        outcome: 'stored',
        message: storedMessageOf(r, String(++id), { ...r, reason: r.reason, triggerIds: r.triggers.map((t) => t.id) }),
      })),
  });
  const ingest = new Hl7Ingest({ store, log: silentLogger });
  const settings = { input: 'bench-mllp', timezone: 'UTC', unknownMessageTypes: 'accept', missingFieldAck: 'AR' } as const;
  const server = new MllpServer({
    host: '127.0.0.1',
    port: 0,
    handler: async (message) => (await ingest.handle(message, settings)).ack ?? '',
  });
  const { port } = await server.listen();
  return {
    port,
    close: async () => {
      await server.close();
      await memory.close();
    },
  };
}

/** (c): commits that cost nothing. */
const freeCommit: CommitStrategy = async (_record, stored) => stored();

/**
 * (d): the least a durable commit can cost — the raw bytes appended to a file and one
 * fdatasync per group (the store's grouping: two event-loop turns), nothing else.
 */
export function fsyncedLogCommit(file: string): { commit: CommitStrategy; close: () => void; syncs: () => number } {
  const fd = openSync(file, 'a');
  let syncs = 0;
  let group: Array<{ record: InboundRecord; stored: () => CommitOutcome; resolve: (o: CommitOutcome) => void }> = [];
  const flush = (): void => {
    const batch = group;
    group = [];
    writeSync(fd, Buffer.concat(batch.map((p) => p.record.raw)));
    fdatasyncSync(fd);
    syncs++;
    for (const p of batch) p.resolve(p.stored());
  };
  return {
    commit: (record, stored) =>
      new Promise((resolve) => {
        group.push({ record, stored, resolve });
        if (group.length === 1) setImmediate(() => setImmediate(flush));
      }),
    close: () => closeSync(fd),
    syncs: () => syncs,
  };
}

/**
 * A server with one plain MLLP input, with or without the shipped mappings; `store`: lines of
 * a server.store block (default: the embedded store) and the environment they read.
 */
export async function startServer(dir: string, shipped: boolean, store: { lines: readonly string[]; env: Record<string, string> } = { lines: [], env: {} }): Promise<{ running: RunningCarerelay; port: number }> {
  writeConfig(dir, benchConnectorLines(dir, store.lines), shipped);
  const running = await startCarerelay({ configDir: dir, env: store.env, log: silentLogger, watchMappings: false });
  return { running, port: running.mllpPorts.get('bench-mllp')! };
}

interface Row extends RunResult {
  target: string;
  connections: number;
  /** Event-loop busy time per message, µs (startCosts). */
  loopUsPerMsg: number;
  /** The process's CPU time per message, every thread, µs (startCosts). */
  cpuUsPerMsg: number;
  /** writer: its thread's busy time per message, µs (fsync waits included). */
  threadUsPerMsg?: number;
  commitsPerMsg?: number;
  writtenPerMsg?: number;
  growthPerMsg?: number;
  growthByTable?: Array<[string, number]>;
  confirmations?: ConfirmationFigures;
}

/** What the messages of a run cost per message, in µs, from startCosts() on. */
type Costs = Pick<Row, 'loopUsPerMsg' | 'cpuUsPerMsg'>;

/**
 * Starts measuring, for a run's `messages`, per message in µs:
 * - loopUsPerMsg: the event loop's busy time (performance.eventLoopUtilization: client, server
 *   and any blocking fsync alike). Every target keeps the loop busy all the time, so this is
 *   what a message costs the one thread they all share: msgs/s is about a million over it,
 *   and it does not move with the run's length.
 * - cpuUsPerMsg: the process's CPU time (user + system, every thread: the event loop, a writer
 *   thread, libuv's pool, the garbage collector's helpers). Unlike the loop's busy time it
 *   leaves out waits (a blocking fsync): it is what the machine's cores must supply.
 */
function startCosts(): (messages: number) => Costs {
  const loop = performance.eventLoopUtilization();
  const cpu = process.cpuUsage();
  return (messages) => {
    const used = process.cpuUsage(cpu);
    const n = Math.max(messages, 1);
    return {
      loopUsPerMsg: Math.round((performance.eventLoopUtilization(loop).active * 1000) / n),
      cpuUsPerMsg: Math.round((used.user + used.system) / n),
    };
  };
}

export async function benchIngest(): Promise<Record<string, number>> {
  const root = mkdtempSync(join(process.env.CARERELAY_BENCH_DIR ?? tmpdir(), 'carerelay-bench-ingest-'));
  const figures: Record<string, number> = {};
  const table: Row[] = [];
  try {
    const none = await startServer(join(root, 'none'), false);
    const shipped = await startServer(join(root, 'shipped'), true);
    const fhir = await startFhirTarget(join(root, 'fhir'), { shipped: true });
    const echo = await startEchoMllpServer({ host: '127.0.0.1', port: 0 });
    const noStorage = await startPipeline(freeCommit);
    const log = fsyncedLogCommit(join(root, 'fsynclog.bin'));
    const floor = await startPipeline(log.commit);
    const writerThread = startWriterThread(join(root, 'writer', 'carerelay.db'));
    const writer = await startPipeline(writerThread.commit);
    try {
      for (const connections of CONNECTIONS) {
        // The floor first: every other figure is read as a share of it.
        {
          const before = { commits: log.syncs(), writes: storageWrites(), bytes: 0 };
          const costs = startCosts();
          const result = await drive(floor.port, connections, `B-floor-${connections}-`);
          const messages = result.messages + connections * WARMUP_PER_CONNECTION;
          const after = { commits: log.syncs(), writes: storageWrites(), bytes: 0 };
          table.push({ target: 'floor', connections, ...result, ...costs(messages), ...perMessage(before, after, messages) });
        }
        for (const [name, server] of [['none', none], ['shipped', shipped]] as const) {
          const acked = name === 'shipped' ? new Map<string, number>() : undefined;
          const before: Meter = meter(server.running, { tables: name === 'shipped' });
          const costs = startCosts();
          const result = await drive(server.port, connections, `B-${name}-${connections}-`, acked);
          // Routing (and for shipped, the confirmations due now) of what was just ACKed: let it
          // finish, so the next target is not measured while this server is still busy, and
          // count its commits and writes with this run's.
          const drainStarted = performance.now();
          await server.running.deliveries.idle();
          figures[`ingest_${name}_${connections}conn_drain_ms`] = Math.round(performance.now() - drainStarted);
          const messages = result.messages + connections * WARMUP_PER_CONNECTION;
          const row: Row = { target: name, connections, ...result, ...costs(messages), ...perMessage(before, meter(server.running, { tables: name === 'shipped' }), messages) };
          if (acked) row.confirmations = await confirmationFigures(server.running, acked);
          table.push(row);
        }
        {
          const before = meter(fhir.running);
          const costs = startCosts();
          const result = await fhir.run(connections);
          await fhir.running.deliveries.idle();
          table.push({ target: 'fhir', connections, ...result, ...costs(result.messages), ...perMessage(before, meter(fhir.running), result.messages) });
        }
        // The writer target's thread is measured too: its own busy time bounds that design.
        for (const [name, port, thread] of [['echo', echo.port, undefined], ['nostore', noStorage.port, undefined], ['writer', writer.port, writerThread]] as const) {
          const costs = startCosts();
          const threadBusyMs = thread?.busyMs();
          const result = await drive(port, connections, `B-${name}-${connections}-`);
          const messages = result.messages + connections * WARMUP_PER_CONNECTION;
          const row: Row = { target: name, connections, ...result, ...costs(messages) };
          if (thread !== undefined) row.threadUsPerMsg = Math.round(((thread.busyMs() - threadBusyMs!) * 1000) / messages);
          table.push(row);
        }
      }
    } finally {
      await floor.close();
      log.close();
      await writer.close();
      await writerThread.close();
      await noStorage.close();
      await echo.close();
      await fhir.close();
      await shipped.running.stop();
      await none.running.stop();
    }
  } finally {
    // CARERELAY_BENCH_KEEP=1 keeps the servers' databases to look into (sqlite3, dbstat).
    if (process.env.CARERELAY_BENCH_KEEP === '1') console.log(`bench databases kept in ${root}`);
    else rmSync(root, { recursive: true, force: true });
  }

  for (const r of table) {
    const key = `ingest_${r.target}_${r.connections}conn`;
    figures[`${key}_msgs_per_s`] = r.msgsPerS;
    figures[`${key}_p50_ms`] = r.p50Ms;
    figures[`${key}_p99_ms`] = r.p99Ms;
    figures[`${key}_messages`] = r.messages;
    figures[`${key}_loop_us_per_msg`] = r.loopUsPerMsg;
    figures[`${key}_cpu_us_per_msg`] = r.cpuUsPerMsg;
    if (r.threadUsPerMsg !== undefined) figures[`${key}_thread_us_per_msg`] = r.threadUsPerMsg;
    if (r.commitsPerMsg !== undefined) figures[`${key}_commits_per_msg`] = r.commitsPerMsg;
    if (r.writtenPerMsg !== undefined) figures[`${key}_written_bytes_per_msg`] = r.writtenPerMsg;
    if (r.growthPerMsg !== undefined && r.target !== 'floor') figures[`${key}_db_growth_bytes_per_msg`] = r.growthPerMsg;
    if (r.confirmations) {
      figures[`${key}_confirmations`] = r.confirmations.confirmations;
      figures[`${key}_confirmation_lag_p99_ms`] = r.confirmations.lagP99Ms;
      figures[`${key}_confirmation_lag_max_ms`] = r.confirmations.lagMaxMs;
      figures[`${key}_confirmations_late_or_missing`] = r.confirmations.lateOrMissing;
    }
  }
  const pct = (target: string, connections: number): number =>
    Math.round((figures[`ingest_${target}_${connections}conn_msgs_per_s`]! / figures[`ingest_floor_${connections}conn_msgs_per_s`]!) * 1000) / 10;
  for (const target of ['none', 'shipped', 'fhir', 'echo', 'nostore', 'writer']) {
    for (const connections of CONNECTIONS) figures[`ingest_${target}_vs_floor_${connections}conn_pct`] = pct(target, connections);
  }

  console.log(`\nDurable ingest, one message in flight per connection (${DURATION_S} s or ${MAX_MESSAGES} messages per run)`);
  console.log('target   conns  messages   msgs/s  % floor   p50 ms   p99 ms  loop µs/msg  cpu µs/msg  commits/msg  written B/msg  growth B/msg');
  for (const r of table) {
    const pctFloor = figures[`ingest_${r.target}_vs_floor_${r.connections}conn_pct`];
    console.log(
      `${r.target.padEnd(8)} ${String(r.connections).padStart(5)} ${String(r.messages).padStart(9)} ${String(r.msgsPerS).padStart(8)} ` +
        `${(pctFloor === undefined ? '100' : String(pctFloor)).padStart(8)} ${r.p50Ms.toFixed(2).padStart(8)} ${r.p99Ms.toFixed(2).padStart(8)} ${String(r.loopUsPerMsg).padStart(12)} ${String(r.cpuUsPerMsg).padStart(11)} ` +
        `${(r.commitsPerMsg === undefined ? '-' : r.commitsPerMsg.toFixed(3)).padStart(12)} ${(r.writtenPerMsg === undefined ? '-' : String(r.writtenPerMsg)).padStart(14)} ` +
        `${(r.growthPerMsg === undefined || r.target === 'floor' ? '-' : String(r.growthPerMsg)).padStart(13)}`,
    );
  }
  for (const r of table.filter((x) => x.confirmations)) {
    const c = r.confirmations!;
    console.log(
      `shipped, ${r.connections} conn: ${c.confirmations} confirmations in the outbox for ${r.messages} measured bookings; ` +
        `lag after the ACK p50 ${c.lagP50Ms} ms, p99 ${c.lagP99Ms} ms, max ${c.lagMaxMs} ms; later than 1 s or missing: ${c.lateOrMissing}`,
    );
  }
  for (const r of table.filter((x) => x.growthByTable)) {
    const parts = r.growthByTable!;
    const shown = parts.slice(0, 14).map(([name, bytes]) => `${name.replace(/^sqlite_autoindex_(.*)_\d+$/, '$1 (unique)')} ${bytes}`);
    const rest = parts.slice(14).reduce((sum, [, bytes]) => sum + bytes, 0);
    console.log(`${r.target}, ${r.connections} conn, growth B/msg by table and index: ${shown.join(', ')}${rest !== 0 ? `, the rest ${rest}` : ''}`);
  }
  figures.ingest_load_average = Number(loadavg()[0]!.toFixed(1));
  console.log(`load average on this machine at the end: ${figures.ingest_load_average} (other work takes cores from every target alike)`);
  const floorCost = figures.ingest_floor_8conn_loop_us_per_msg!;
  console.log(
    `event loop per message at 8 connections: floor ${floorCost} µs, none ${figures.ingest_none_8conn_loop_us_per_msg} µs ` +
      `(70 % of the floor's rate leaves ${Math.round(floorCost / 0.7)}), shipped ${figures.ingest_shipped_8conn_loop_us_per_msg} µs (30 % leaves ${Math.round(floorCost / 0.3)})`,
  );
  // What the machine's cores allow at the goals' rates: the CPU time a message may cost, every
  // core busy all the time, against what it costs now (client and server share the process).
  const cores = availableParallelism();
  const floorRate = figures.ingest_floor_8conn_msgs_per_s!;
  console.log(
    `${cores} cores at the goals' rates: none at 70 % (${Math.round(floorRate * 0.7)} msgs/s) may cost at most ${Math.round((cores * 1e6) / (floorRate * 0.7))} µs of CPU ` +
      `per message (costs ${figures.ingest_none_8conn_cpu_us_per_msg}), shipped at 30 % (${Math.round(floorRate * 0.3)}/s) at most ${Math.round((cores * 1e6) / (floorRate * 0.3))} ` +
      `(costs ${figures.ingest_shipped_8conn_cpu_us_per_msg}); only with the work spread evenly over every core`,
  );
  // Why the spread cannot be even: a database's writes go through one connection at a time.
  // The writer thread's busy time is work that one thread does per message, so it bounds that
  // design however little the event loop does.
  const writerThreadCost = figures.ingest_writer_8conn_thread_us_per_msg!;
  const writerCeiling = Math.round(1e6 / writerThreadCost);
  figures.ingest_writer_8conn_thread_ceiling_pct = Number(((writerCeiling / floorRate) * 100).toFixed(1));
  console.log(
    `writer: its thread was busy ${writerThreadCost} µs per message (statements, packing, COMMIT and its fsync), which holds a writer thread to ` +
      `${writerCeiling} msgs/s, ${figures.ingest_writer_8conn_thread_ceiling_pct} % of the floor, however little the event loop does`,
  );
  console.log(
    `goals at 8 connections: none ${figures.ingest_none_vs_floor_8conn_pct} % of the floor (>= 70 %), ` +
      `shipped ${figures.ingest_shipped_vs_floor_8conn_pct} % (>= 30 %), shipped DB growth ${figures.ingest_shipped_8conn_db_growth_bytes_per_msg} B/msg (<= 5,120)\n`,
  );
  return figures;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const figures = await benchIngest();
  for (const [name, value] of Object.entries(figures)) console.log(`${name.padEnd(40)} ${value}`);
}
