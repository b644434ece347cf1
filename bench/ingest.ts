// Durable MLLP ingest benchmark. In one run, on the same machine and with the same client:
//   (a) the real durable server (startCarerelay: parse, dedupe look-up, normalize, one
//       SQLite commit with synchronous=FULL — an fsync — then the ACK), plain MLLP on
//       127.0.0.1:0, data dir in a fresh temp directory;
//   (b) a bare MLLP echo listener (startEchoMllpServer: same transport, no storage);
//   (c) the ingest pipeline without storage: the same listener, parse, sender check,
//       normalize and ACK as (a), with a store whose look-ups find nothing and whose
//       commits resolve at once. Not a mode CareRelay offers: it shows what the rest of the
//       pipeline costs, i.e. the ceiling any storage design leaves for (a);
//   (d) `fsynclog`: (c) plus the least a durable commit can cost — the raw bytes appended
//       to a file and one fdatasync per group, nothing else (no dedupe, no triggers, no
//       routing): the ceiling for any design that, like (a), fsyncs before it ACKs.
// Each is driven with 1 connection and with 8 connections, one message in flight per
// connection (how HL7 senders work), for DURATION_S seconds or MAX_MESSAGES messages,
// whichever comes first, every message a distinct SIU^S12 (own MSH-10 and appointment id).
// Reported: msgs/s and ACK latency p50/p99 (ms, send to matching ACK), and the ratio
// durable/echo at 8 connections (goal >= 40 %).
//
// Client and servers share the process (and its cores), equally for both targets.
// Set CARERELAY_BENCH_DIR to put the data dir on the disk to measure (default: os.tmpdir()).
// Run alone with `node --expose-gc --import tsx bench/ingest.ts`, or through bench/run.ts.
import { closeSync, fdatasyncSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { MllpClient } from '../src/hl7v2/mllp-client.ts';
import { MllpServer, startEchoMllpServer } from '../src/hl7v2/mllp-server.ts';
import { silentLogger } from '../src/log.ts';
import { startCarerelay } from '../src/main.ts';
import { storedMessageOf } from '../src/store/common.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { CommitOutcome, InboundRecord, Store } from '../src/store/store.ts';
import { Hl7Ingest } from '../src/workers/ingest.ts';

const DURATION_S = Number(process.env.BENCH_INGEST_SECONDS ?? 10);
const MAX_MESSAGES = Number(process.env.BENCH_INGEST_MESSAGES ?? 20_000);
/** Messages per connection before measuring (JIT, SQLite page cache, socket buffers). */
const WARMUP_PER_CONNECTION = 100;
const CONNECTIONS = [1, 8] as const;

interface RunResult {
  messages: number;
  msgsPerS: number;
  p50Ms: number;
  p99Ms: number;
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

/** A real-shaped SIU^S12 (booking) with its own MSH-10 and appointment id. */
function siu(controlId: string, n: number): string {
  const start = new Date(Date.UTC(2030, 0, 1, 8) + (n % 100_000) * 900_000).toISOString().replace(/[-:T]/g, '').slice(0, 14);
  return (
    [
      `MSH|^~\\&|EPIC|NORTHCLINIC|CARERELAY|CR|20300101080000+0000||SIU^S12^SIU_S12|${controlId}|P|2.5.1`,
      `SCH|PL-${controlId}|AP-${controlId}||||NEW|CHK^Annual check-up^LOCAL||30|MIN|||||||||||||||Booked`,
      `TQ1|1||||||${start}+0000`,
      `PID|1||P${n % 5_000}^^^NORTHCLINIC^MR||DOE^Test||19600101|M|||||0478000000^PRN^PH`,
      'RGS|1',
      'AIL|1||CARDIO1^^^NORTHCLINIC',
      'AIP|1||DR-22^PETIT^Jean',
    ].join('\r') + '\r'
  );
}

/**
 * Drives `port` with `connections` senders, one message in flight each, until the time or
 * message budget is spent. `prefix` keeps MSH-10s distinct across runs.
 */
async function drive(port: number, connections: number, prefix: string): Promise<RunResult> {
  const clients = Array.from({ length: connections }, () => new MllpClient({ host: '127.0.0.1', port, ackTimeoutMs: 30_000 }));
  await Promise.all(clients.map((c) => c.connect()));
  try {
    // Warm-up, not measured.
    await Promise.all(
      clients.map(async (client, c) => {
        for (let i = 0; i < WARMUP_PER_CONNECTION; i++) await client.send(siu(`${prefix}W${c}-${i}`, i));
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
          const message = siu(`${prefix}${n}`, n);
          const t0 = performance.now();
          const ack = await client.send(message);
          latencies[count++] = performance.now() - t0;
          // "MSA|AA|" — a NAK would make the figure meaningless.
          if (ack.indexOf('MSA|AA|') === -1) throw new Error(`message ${prefix}${n} was not accepted: ${ack.toString('latin1')}`);
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

type CommitStrategy = (record: InboundRecord, stored: () => CommitOutcome) => Promise<CommitOutcome>;

/**
 * Targets (c) and (d): HL7 ingest over MLLP with a store whose look-ups find nothing and
 * whose commits are `commit` (the other Store methods are an in-memory SQLite store's).
 */
async function startPipeline(commit: CommitStrategy): Promise<{ port: number; close: () => Promise<void> }> {
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
function fsyncedLogCommit(file: string): { commit: CommitStrategy; close: () => void } {
  const fd = openSync(file, 'a');
  let group: Array<{ record: InboundRecord; stored: () => CommitOutcome; resolve: (o: CommitOutcome) => void }> = [];
  const flush = (): void => {
    const batch = group;
    group = [];
    writeSync(fd, Buffer.concat(batch.map((p) => p.record.raw)));
    fdatasyncSync(fd);
    for (const p of batch) p.resolve(p.stored());
  };
  return {
    commit: (record, stored) =>
      new Promise((resolve) => {
        group.push({ record, stored, resolve });
        if (group.length === 1) setImmediate(() => setImmediate(flush));
      }),
    close: () => closeSync(fd),
  };
}

function writeBenchConfig(dir: string): void {
  mkdirSync(join(dir, 'connectors'));
  writeFileSync(
    join(dir, 'connectors', 'bench.yaml'),
    [
      'server:',
      '  http: { host: 127.0.0.1, port: 0 }',
      `  dataDir: ${JSON.stringify(join(dir, 'data'))}`,
      'inputs:',
      '  - name: bench-mllp',
      '    type: hl7v2-mllp',
      '    host: 127.0.0.1',
      '    port: 0',
      '    plain: true',
      '    timezone: UTC',
      'outputs: []',
      '',
    ].join('\n'),
  );
}

export async function benchIngest(): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(process.env.CARERELAY_BENCH_DIR ?? tmpdir(), 'carerelay-bench-ingest-'));
  const figures: Record<string, number> = {};
  const table: Array<{ target: string; connections: number } & RunResult> = [];
  try {
    writeBenchConfig(dir);
    const durable = await startCarerelay({ configDir: dir, env: {}, log: silentLogger });
    const echo = await startEchoMllpServer({ host: '127.0.0.1', port: 0 });
    const noStorage = await startPipeline(freeCommit);
    const log = fsyncedLogCommit(join(dir, 'fsynclog.bin'));
    const fsyncLog = await startPipeline(log.commit);
    try {
      const targets = [
        { name: 'durable', port: durable.mllpPorts.get('bench-mllp')! },
        { name: 'echo', port: echo.port },
        { name: 'nostore', port: noStorage.port },
        { name: 'fsynclog', port: fsyncLog.port },
      ];
      for (const connections of CONNECTIONS) {
        for (const target of targets) {
          const result = await drive(target.port, connections, `B-${target.name}-${connections}-`);
          table.push({ target: target.name, connections, ...result });
          if (target.name === 'durable') {
            // Routing of the triggers just committed runs after their ACKs: let it finish, so
            // the next phase (the echo listener in this same process) is not measured while
            // the durable server is still busy, and report how long the backlog took.
            const drainStarted = performance.now();
            await durable.deliveries.idle();
            figures[`ingest_durable_${connections}conn_routing_drain_ms`] = Math.round(performance.now() - drainStarted);
          }
          const key = `ingest_${target.name}_${connections}conn`;
          figures[`${key}_msgs_per_s`] = result.msgsPerS;
          figures[`${key}_p50_ms`] = result.p50Ms;
          figures[`${key}_p99_ms`] = result.p99Ms;
          figures[`${key}_messages`] = result.messages;
        }
      }
    } finally {
      await fsyncLog.close();
      log.close();
      await noStorage.close();
      await echo.close();
      await durable.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }

  const ratio = (target: string, connections: number): number =>
    Math.round((figures[`ingest_${target}_${connections}conn_msgs_per_s`]! / figures[`ingest_echo_${connections}conn_msgs_per_s`]!) * 1000) / 10;
  figures.ingest_durable_vs_echo_1conn_pct = ratio('durable', 1);
  figures.ingest_durable_vs_echo_8conn_pct = ratio('durable', 8);
  figures.ingest_nostore_vs_echo_8conn_pct = ratio('nostore', 8);
  figures.ingest_fsynclog_vs_echo_8conn_pct = ratio('fsynclog', 8);

  console.log(`\nMLLP ingest, one message in flight per connection (${DURATION_S} s or ${MAX_MESSAGES} messages per run)`);
  console.log('target   conns  messages   msgs/s   p50 ms   p99 ms');
  for (const r of table) {
    console.log(
      `${r.target.padEnd(8)} ${String(r.connections).padStart(5)} ${String(r.messages).padStart(9)} ${String(r.msgsPerS).padStart(8)} ` +
        `${r.p50Ms.toFixed(2).padStart(8)} ${r.p99Ms.toFixed(2).padStart(8)}`,
    );
  }
  console.log(
    `durable/echo: ${figures.ingest_durable_vs_echo_1conn_pct} % at 1 connection, ` +
      `${figures.ingest_durable_vs_echo_8conn_pct} % at 8 connections (goal >= 40 %)`,
  );
  console.log(
    `at 8 connections, pipeline without storage (nostore)/echo: ${figures.ingest_nostore_vs_echo_8conn_pct} %; ` +
      `with only an fsynced append per group (fsynclog)/echo: ${figures.ingest_fsynclog_vs_echo_8conn_pct} % ` +
      '(ceilings for any storage design, and for any that fsyncs before the ACK)\n',
  );
  return figures;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const figures = await benchIngest();
  for (const [name, value] of Object.entries(figures)) console.log(`${name.padEnd(40)} ${value}`);
}
