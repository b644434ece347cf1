// The fuzz harness (`npm run fuzz`; a short run is part of `npm test`, test/fuzz.test.ts).
//
// Starts the real server as a child process (`bin/carerelay.mjs start`, the shipped mappings
// and outbox outputs, a fresh data dir, loopback only), then for a bounded time:
//   - workers, each on its own loopback address, send the corpus messages (fixtures/corpus/hl7v2
//     and fixtures/hl7v2) mutated (fuzz/mutate.ts) over MLLP, split into random reads, on
//     connections they keep for a few messages, sometimes resending the same bytes; or over
//     HTTP; or play a framing scenario (noise, split end markers, block characters inside,
//     oversize frames, half-closes, silent and connect-and-close sockets, 1-byte trickles);
//   - a health probe, a trusted sender on 127.0.0.2, sends a valid message every probe
//     interval on its own connection and times its ACK;
//   - the server's RSS is sampled.
// Then every AA/CA received is looked up through the admin API. The run fails (report.failures)
// when the server exits, an exchange gets neither an answer nor a close within its deadline,
// an AA/CA'd message is not stored, a resend of the same bytes gets another ACK, the probe
// misses an ACK, or RSS grows over the run. Everything random comes from the seed.
import { spawn, type ChildProcess } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { MllpFramer, encodeFrame, END_BLOCK, CARRIAGE_RETURN, START_BLOCK } from '../src/hl7v2/mllp.ts';
import { writableAgain } from '../src/hl7v2/mllp-server.ts';
import { parseHl7 } from '../src/hl7v2/parse.ts';
import { onLines } from '../test/helpers/server.ts';
import { Rng, loadCorpus, mutateMessage, setMshField } from './mutate.ts';

const REPO_ROOT = fileURLToPath(new URL('../', import.meta.url));

export interface FuzzOptions {
  seed: number;
  /** Length of the sending phase. */
  seconds: number;
  /** Concurrent fuzzing workers (connections). */
  connections: number;
  /** Probe period, ms. Default 100. */
  probeIntervalMs?: number;
  /** Progress lines (default: none). */
  progress?: (line: string) => void;
}

export interface FuzzReport {
  seed: number;
  seconds: number;
  connections: number;
  /** Exchanges by scenario. */
  scenarios: Record<string, number>;
  /** Frames and HTTP bodies sent. */
  messagesSent: number;
  /** ACKs received by MSA-1 code (one per MSA segment). */
  acks: Record<string, number>;
  /** Exchanges the server closed (or refused) without an answer. */
  closedWithoutAck: number;
  /** HTTP answers by status. */
  httpStatus: Record<string, number>;
  /** AA/CA answers checked against the store, and how many were found there. */
  acceptedChecked: number;
  acceptedStored: number;
  /** Resends of the same bytes whose ACK was compared with the first one. */
  resendsChecked: number;
  probe: { sent: number; p50Ms: number; p99Ms: number; maxMs: number };
  rss: { startMb: number; peakMb: number; endMb: number; growthMb: number; slopeMbPerMin: number };
  /** Size of the data directory at the end, bytes. */
  dataBytes: number;
  /** Server log lines by event. */
  logEvents: Record<string, number>;
  /** Invariants broken; empty when the run passed. */
  failures: string[];
}

/** Scenario weights: mostly mutated messages, then framing oddities, HTTP, resends. */
const SCENARIOS = {
  message: 55,
  resend: 6,
  http: 8,
  split_every_byte: 2,
  split_end_marker: 3,
  noise_before: 3,
  pipelined: 4,
  block_inside: 3,
  empty_frame: 1,
  garbage_frame: 2,
  oversize: 1,
  unfinished_close: 2,
  half_close: 3,
  connect_close: 2,
  silent: 1,
  http_too_large: 1,
} as const;
type Scenario = keyof typeof SCENARIOS;

/** Server settings the harness relies on (connectors/fuzz.yaml below). */
const MAX_FRAME_BYTES = 1024 * 1024;
const IDLE_TIMEOUT_S = 3;
const FIRST_BYTE_TIMEOUT_S = 1;
const HTTP_MAX_BODY = 1024 * 1024;
/** An exchange with neither answer nor close within this is a hang (the server closes idle ones after IDLE_TIMEOUT_S). */
const EXCHANGE_DEADLINE_MS = (IDLE_TIMEOUT_S + 7) * 1000;
const PROBE_TIMEOUT_MS = 5000;
const PROBE_ADDRESS = '127.0.0.2';
/** RSS growth (MB) over the sending phase, after warm-up, that fails a run (also needs > 50 %). */
const RSS_GROWTH_LIMIT_MB = 96;

function configText(): string {
  return [
    'server:',
    '  http: { host: 127.0.0.1, port: 0 }',
    '  dataDir: ./data',
    '  rejectedRaw: { totalBytes: 8388608, perSenderBytes: 1048576, keepBytes: 1024 }',
    '  minFreeDiskBytes: 0',
    'inputs:',
    '  - name: fuzz-mllp',
    '    type: hl7v2-mllp',
    '    host: 127.0.0.1',
    '    port: 0',
    '    plain: true',
    `    maxFrameBytes: ${MAX_FRAME_BYTES}`,
    `    idleTimeoutSeconds: ${IDLE_TIMEOUT_S}`,
    `    firstByteTimeoutSeconds: ${FIRST_BYTE_TIMEOUT_S}`,
    '    maxConnections: 400',
    '    maxConnectionsPerAddress: 48',
    '    reservedConnections: 8',
    `    trustedSenders: { addresses: [${PROBE_ADDRESS}] }`,
    '  - name: fuzz-http',
    '    type: hl7v2-http',
    `    maxBodyBytes: ${HTTP_MAX_BODY}`,
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------
// The server under test

interface ServerProcess {
  child: ChildProcess;
  mllpPort: number;
  httpPort: number;
  logEvents: Map<string, number>;
  /** Set when the process exited before stop(). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderrTail: string[];
}

function startServer(configDir: string): Promise<ServerProcess> {
  const child = spawn(process.execPath, [path.join(REPO_ROOT, 'bin', 'carerelay.mjs'), 'start', '--config-dir', configDir], {
    cwd: REPO_ROOT,
    env: { ...process.env, CARERELAY_LOG_LEVEL: 'info', CARERELAY_FAULT: '' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const logEvents = new Map<string, number>();
  const stderrTail: string[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  return new Promise((resolve, reject) => {
    let mllpPort: number | undefined;
    let httpPort: number | undefined;
    let settled = false;
    const timer = setTimeout(() => fail(new Error('the server did not start within 30 s')), 30_000);
    const fail = (error: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${error.message}\n${stderrTail.join('\n')}`));
    };
    onLines(child.stderr!, (line) => {
      stderrTail.push(line.slice(0, 300));
      if (stderrTail.length > 20) stderrTail.shift();
      let parsed: { message?: string; port?: number; input?: string };
      try {
        parsed = JSON.parse(line) as typeof parsed;
      } catch {
        return;
      }
      const event = String(parsed.message);
      logEvents.set(event, (logEvents.get(event) ?? 0) + 1);
      if (event === 'mllp.listening') mllpPort = Number(parsed.port);
      if (event === 'http.listening') httpPort = Number(parsed.port);
      if (!settled && mllpPort !== undefined && httpPort !== undefined) {
        settled = true;
        clearTimeout(timer);
        resolve({ child, mllpPort, httpPort, logEvents, exited, stderrTail });
      }
    });
    void exited.then(({ code, signal }) => fail(new Error(`the server exited while starting (code ${code}, signal ${signal})`)));
  });
}

/** Resident set size of a process, MB (Linux /proc; elsewhere `ps`). */
function rssMb(pid: number): number | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = /VmRSS:\s+(\d+) kB/.exec(status);
    return m === null ? undefined : Number(m[1]) / 1024;
  } catch {
    return undefined;
  }
}

function dirBytes(dir: string): number {
  let total = 0;
  for (const name of readdirSync(dir)) {
    const file = path.join(dir, name);
    const st = statSync(file);
    total += st.isDirectory() ? dirBytes(file) : st.size;
  }
  return total;
}

// ---------------------------------------------------------------------------------------
// A raw MLLP peer

type Answer = { kind: 'frame'; frame: Buffer } | { kind: 'closed' } | { kind: 'deadline' };

class Peer {
  private readonly framer = new MllpFramer({ maxFrameBytes: 64 * 1024 * 1024 });
  private readonly frames: Buffer[] = [];
  private waiter: (() => void) | undefined;
  closed = false;

  private constructor(readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      try {
        this.frames.push(...this.framer.push(chunk));
      } catch {
        this.socket.destroy();
      }
      this.waiter?.();
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      this.closed = true;
      this.waiter?.();
    });
  }

  static connect(port: number, localAddress: string): Promise<Peer> {
    return new Promise((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port, localAddress });
      const peer = new Peer(socket);
      socket.once('connect', () => resolve(peer));
      socket.once('close', () => resolve(peer));
    });
  }

  /** Writes the pieces one event-loop turn apart (each is likely its own read at the server). */
  async write(pieces: readonly Buffer[]): Promise<void> {
    for (const piece of pieces) {
      if (this.closed) return;
      if (!this.socket.write(piece)) {
        await writableAgain(this.socket);
      } else if (pieces.length > 1) {
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    }
  }

  /** The next frame, or the close, or the deadline. */
  async next(deadlineMs: number): Promise<Answer> {
    const started = Date.now();
    for (;;) {
      const frame = this.frames.shift();
      if (frame !== undefined) return { kind: 'frame', frame };
      if (this.closed) return { kind: 'closed' };
      const left = deadlineMs - (Date.now() - started);
      if (left <= 0) return { kind: 'deadline' };
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          this.waiter = undefined;
          resolve();
        };
      });
    }
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Splits a frame into random pieces (a sender's writes as the server may read them). */
function splitRandomly(rng: Rng, frame: Buffer): Buffer[] {
  if (rng.chance(0.6)) return [frame];
  const pieces: Buffer[] = [];
  let at = 0;
  while (at < frame.length) {
    const size = Math.min(frame.length - at, rng.int(1, Math.max(1, Math.floor(frame.length / rng.int(1, 6)))));
    pieces.push(frame.subarray(at, at + size));
    at += size;
  }
  return pieces;
}

/** Frame without the encodeFrame check (a payload may hold 0x1C 0x0D on purpose). */
function rawFrame(payload: Buffer): Buffer {
  return Buffer.concat([Buffer.from([START_BLOCK]), payload, Buffer.from([END_BLOCK, CARRIAGE_RETURN])]);
}

// ---------------------------------------------------------------------------------------
// The run

interface Tally {
  scenarios: Map<string, number>;
  acks: Map<string, number>;
  httpStatus: Map<string, number>;
  messagesSent: number;
  closedWithoutAck: number;
  resendsChecked: number;
  /** MSA-2 → code of every AA/CA received. */
  accepted: Map<string, string>;
  failures: string[];
}

function bump(map: Map<string, number>, key: string, by = 1): void {
  map.set(key, (map.get(key) ?? 0) + by);
}

/** Counts the MSA segments of an ACK frame and notes its AA/CA ids. Returns the first code. */
function noteAck(tally: Tally, frame: Buffer, where: string): string | undefined {
  let first: string | undefined;
  try {
    const ack = parseHl7(frame);
    for (const msa of ack.all('MSA')) {
      const code = msa.get(1);
      first ??= code;
      bump(tally.acks, code || '(empty)');
      if ((code === 'AA' || code === 'CA') && msa.get(2) !== '') tally.accepted.set(msa.get(2), code);
      if ((code === 'AA' || code === 'CA') && msa.get(2) === '') tally.failures.push(`${where}: ${code} with an empty MSA-2`);
    }
    if (first === undefined) tally.failures.push(`${where}: an answer without MSA`);
  } catch (error) {
    tally.failures.push(`${where}: an answer that does not parse (${(error as Error).message.slice(0, 80)})`);
  }
  return first;
}

/** MSA-1 of an ACK frame ('' when unreadable). */
function noteCode(frame: Buffer): string {
  try {
    return parseHl7(frame).get('MSA-1');
  } catch {
    return '';
  }
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function linearSlope(points: ReadonlyArray<{ t: number; v: number }>): number {
  const n = points.length;
  if (n < 2) return 0;
  const mt = points.reduce((s, p) => s + p.t, 0) / n;
  const mv = points.reduce((s, p) => s + p.v, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.t - mt) * (p.v - mv);
    den += (p.t - mt) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

export async function runFuzz(options: FuzzOptions): Promise<FuzzReport> {
  const progress = options.progress ?? (() => {});
  const rng = new Rng(options.seed);
  const corpus = loadCorpus([path.join(REPO_ROOT, 'fixtures', 'corpus', 'hl7v2'), path.join(REPO_ROOT, 'fixtures', 'hl7v2')]);
  const dir = mkdtempSync(path.join(tmpdir(), 'carerelay-fuzz-'));
  mkdirSync(path.join(dir, 'connectors'));
  writeFileSync(path.join(dir, 'connectors', 'fuzz.yaml'), configText());
  // The outputs the shipped mappings name.
  for (const file of ['outbox.yaml', 'marketing.yaml']) cpSync(path.join(REPO_ROOT, 'connectors', file), path.join(dir, 'connectors', file));
  cpSync(path.join(REPO_ROOT, 'mappings'), path.join(dir, 'mappings'), { recursive: true });

  const tally: Tally = {
    scenarios: new Map(),
    acks: new Map(),
    httpStatus: new Map(),
    messagesSent: 0,
    closedWithoutAck: 0,
    resendsChecked: 0,
    accepted: new Map(),
    failures: [],
  };
  const server = await startServer(dir);
  let serverGone = false;
  void server.exited.then(({ code, signal }) => {
    if (!stopping) {
      serverGone = true;
      tally.failures.push(`the server exited during the run (code ${code}, signal ${signal})`);
    }
  });
  let stopping = false;
  progress(`server pid ${server.child.pid}, MLLP ${server.mllpPort}, HTTP ${server.httpPort}, corpus ${corpus.length} messages`);

  const started = Date.now();
  const deadline = started + options.seconds * 1000;
  const rss: Array<{ t: number; v: number }> = [];
  const sampler = setInterval(() => {
    const v = rssMb(server.child.pid!);
    if (v !== undefined) rss.push({ t: (Date.now() - started) / 60_000, v });
  }, 250);
  let counter = 0;
  const newId = (prefix: string): string => `${prefix}${options.seed}-${++counter}`;

  // -- the probe ------------------------------------------------------------------------
  const probeLatencies: number[] = [];
  const probe = (async () => {
    const template = corpus.find((c) => c.includes('SIU^S12')) ?? corpus[0]!;
    let peer: Peer | undefined;
    while (Date.now() < deadline && !serverGone) {
      if (peer === undefined || peer.closed) peer = await Peer.connect(server.mllpPort, PROBE_ADDRESS);
      const id = newId('PROBE');
      const segments = template.toString('latin1').split(/\r\n|\r|\n/).filter((s) => s !== '');
      setMshField(segments, 10, id);
      const sentAt = performance.now();
      await peer.write([encodeFrame(Buffer.from(`${segments.join('\r')}\r`, 'latin1'))]);
      const answer = await peer.next(PROBE_TIMEOUT_MS);
      if (answer.kind !== 'frame') {
        tally.failures.push(`probe ${id}: no ACK (${answer.kind}) within ${PROBE_TIMEOUT_MS} ms`);
        peer.close();
        peer = undefined;
      } else {
        probeLatencies.push(performance.now() - sentAt);
        const code = noteAck(tally, answer.frame, `probe ${id}`);
        if (code !== 'AA') tally.failures.push(`probe ${id}: ${code ?? 'no code'} instead of AA`);
      }
      await new Promise((resolve) => setTimeout(resolve, options.probeIntervalMs ?? 100));
    }
    peer?.close();
  })();

  // -- the workers ----------------------------------------------------------------------
  const worker = async (index: number): Promise<void> => {
    const wr = rng.fork();
    const localAddress = `127.0.0.${10 + (index % 8)}`;
    let kept: Peer | undefined;
    let keptFor = 0;
    const exchange = async (peer: Peer, pieces: Buffer[], where: string, expectAnswer: boolean): Promise<Buffer | undefined> => {
      tally.messagesSent++;
      await peer.write(pieces);
      const answer = await peer.next(EXCHANGE_DEADLINE_MS);
      if (answer.kind === 'deadline') {
        if (expectAnswer) tally.failures.push(`${where}: neither an answer nor a close within ${EXCHANGE_DEADLINE_MS} ms`);
        peer.close();
        return undefined;
      }
      if (answer.kind === 'closed') {
        tally.closedWithoutAck++;
        return undefined;
      }
      noteAck(tally, answer.frame, where);
      return answer.frame;
    };
    const fresh = (): Promise<Peer> => Peer.connect(server.mllpPort, localAddress);

    while (Date.now() < deadline && !serverGone) {
      const scenario: Scenario = wr.weighted(SCENARIOS);
      bump(tally.scenarios, scenario);
      const original = wr.pick(corpus);
      const where = `worker ${index} ${scenario}`;
      switch (scenario) {
        case 'message':
        case 'resend': {
          if (kept === undefined || kept.closed || keptFor <= 0) {
            kept?.close();
            kept = await fresh();
            keptFor = wr.int(1, 20);
          }
          keptFor--;
          const m = mutateMessage(wr, original, newId('FZ'));
          const ackMode = /\|(NE|ER|SU)\|/.test(m.bytes.toString('latin1'));
          const first = await exchange(kept, splitRandomly(wr, rawFrame(m.bytes)), `${where} ${m.mutation} ${m.controlId}`, !ackMode);
          if (first === undefined) {
            kept.close();
            kept = undefined;
          } else if (scenario === 'resend') {
            const again = await fresh();
            const second = await exchange(again, [rawFrame(m.bytes)], `${where} again ${m.controlId}`, true);
            again.close();
            if (second !== undefined) {
              tally.resendsChecked++;
              // An accepted message is deduplicated: the resend gets the very same ACK. (A refusal
              // may be answered anew: one without a usable MSH-10 is not deduplicated.)
              if (/^(?:AA|CA)$/.test(noteCode(first)) && !second.equals(first)) {
                tally.failures.push(`${where} ${m.mutation} ${m.controlId}: a resend of the same bytes got a different ACK`);
              }
            }
          }
          break;
        }
        case 'http': {
          const m = mutateMessage(wr, original, newId('FH'));
          tally.messagesSent++;
          try {
            const res = await fetch(`http://127.0.0.1:${server.httpPort}/ingest/hl7v2/fuzz-http`, {
              method: 'POST',
              body: m.bytes,
              headers: { 'content-type': 'x-application/hl7-v2+er7' },
            });
            bump(tally.httpStatus, String(res.status));
            const body = Buffer.from(await res.arrayBuffer());
            // An empty 200: committed, and MSH-15 asked for no accept ACK.
            if (res.status === 200 && body.length > 0) noteAck(tally, body, `${where} ${m.controlId}`);
            // 503 is a store that could not commit; any other 5xx is a fault.
            else if (res.status >= 500 && res.status !== 503) tally.failures.push(`${where}: HTTP ${res.status}`);
          } catch (error) {
            tally.failures.push(`${where}: ${(error as Error).message}`);
          }
          break;
        }
        case 'http_too_large': {
          // A chunked body past the limit: answered 413 (or cut), never read to the end.
          const status = await new Promise<string>((resolve) => {
            const req = http.request({ host: '127.0.0.1', port: server.httpPort, path: '/ingest/hl7v2/fuzz-http', method: 'POST' }, (res) => {
              res.resume();
              resolve(String(res.statusCode));
            });
            req.on('error', () => resolve('reset'));
            const chunk = Buffer.alloc(64 * 1024, 0x41);
            let sent = 0;
            const pump = (): void => {
              while (sent < HTTP_MAX_BODY * 8) {
                sent += chunk.length;
                if (!req.write(chunk)) {
                  req.once('drain', pump);
                  return;
                }
              }
              req.end();
            };
            pump();
          });
          bump(tally.httpStatus, status);
          if (status !== '413' && status !== 'reset') tally.failures.push(`${where}: ${status} for a body past the limit`);
          break;
        }
        case 'split_every_byte': {
          const peer = await fresh();
          const m = mutateMessage(wr, original, newId('FB'));
          const frame = rawFrame(m.bytes.subarray(0, 600));
          await exchange(peer, [...frame].map((b) => Buffer.from([b])), `${where} ${m.controlId}`, false);
          peer.close();
          break;
        }
        case 'split_end_marker':
        case 'noise_before': {
          const peer = await fresh();
          const m = mutateMessage(wr, original, newId('FE'));
          const frame = rawFrame(m.bytes);
          const pieces =
            scenario === 'split_end_marker'
              ? [frame.subarray(0, -1), frame.subarray(-1)]
              : [Buffer.concat([Buffer.from(wr.bytes(wr.int(1, 64)).map((b) => (b === START_BLOCK ? 0x20 : b))), frame])];
          await exchange(peer, pieces, `${where} ${m.controlId}`, true);
          peer.close();
          break;
        }
        case 'pipelined': {
          const peer = await fresh();
          const frames = Array.from({ length: wr.int(2, 5) }, () => rawFrame(mutateMessage(wr, wr.pick(corpus), newId('FP')).bytes));
          tally.messagesSent += frames.length - 1;
          const first = await exchange(peer, [Buffer.concat(frames)], where, false);
          for (let i = 1; i < frames.length && first !== undefined; i++) {
            const answer = await peer.next(EXCHANGE_DEADLINE_MS);
            if (answer.kind !== 'frame') break;
            noteAck(tally, answer.frame, where);
          }
          peer.close();
          break;
        }
        case 'block_inside': {
          const peer = await fresh();
          const bytes = mutateMessage(wr, original, newId('FK')).bytes;
          const at = wr.int(0, bytes.length);
          const payload = Buffer.concat([bytes.subarray(0, at), Buffer.from([wr.chance(0.5) ? END_BLOCK : START_BLOCK]), bytes.subarray(at)]);
          await exchange(peer, [rawFrame(payload)], where, true);
          peer.close();
          break;
        }
        case 'empty_frame':
        case 'garbage_frame': {
          const peer = await fresh();
          const payload = scenario === 'empty_frame' ? Buffer.alloc(0) : Buffer.from(wr.bytes(wr.int(1, 2000)).map((b) => (b === END_BLOCK ? 0x20 : b)));
          await exchange(peer, [rawFrame(payload)], where, true);
          peer.close();
          break;
        }
        case 'oversize': {
          const peer = await fresh();
          const size = MAX_FRAME_BYTES + wr.int(1, 64 * 1024);
          await exchange(peer, [Buffer.from([START_BLOCK]), Buffer.alloc(size, 0x41), Buffer.from([END_BLOCK, CARRIAGE_RETURN])], where, true);
          peer.close();
          break;
        }
        case 'unfinished_close': {
          const peer = await fresh();
          const frame = rawFrame(mutateMessage(wr, original, newId('FU')).bytes);
          await peer.write([frame.subarray(0, wr.int(1, Math.max(1, frame.length - 2)))]);
          peer.close();
          break;
        }
        case 'half_close': {
          // A sender that half-closes after its frame still gets its ACK.
          const peer = await fresh();
          const m = mutateMessage(wr, original, newId('FQ'));
          await peer.write([rawFrame(m.bytes)]);
          peer.socket.end();
          tally.messagesSent++;
          const answer = await peer.next(EXCHANGE_DEADLINE_MS);
          if (answer.kind === 'frame') noteAck(tally, answer.frame, where);
          else if (answer.kind === 'closed') tally.closedWithoutAck++;
          else tally.failures.push(`${where}: neither an answer nor a close after a half-close`);
          peer.close();
          break;
        }
        case 'connect_close': {
          const peer = await fresh();
          peer.close();
          break;
        }
        case 'silent': {
          // The server must close it after its first-byte deadline.
          const peer = await fresh();
          const answer = await peer.next(EXCHANGE_DEADLINE_MS);
          if (answer.kind === 'deadline') tally.failures.push(`${where}: a silent socket was not closed within ${EXCHANGE_DEADLINE_MS} ms`);
          peer.close();
          break;
        }
        default:
          scenario satisfies never;
      }
    }
    kept?.close();
  };
  const workers = Array.from({ length: options.connections }, (_, i) => worker(i));
  const ticker = setInterval(() => {
    progress(
      `${Math.round((Date.now() - started) / 1000)} s: ${tally.messagesSent} sent, ${tally.accepted.size} accepted, ` +
        `RSS ${rss.length > 0 ? rss[rss.length - 1]!.v.toFixed(0) : '?'} MB, ${tally.failures.length} failures`,
    );
  }, 5000);
  await Promise.all([...workers, probe]);
  clearInterval(ticker);
  clearInterval(sampler);

  // -- every AA/CA must be stored -------------------------------------------------------
  let acceptedStored = 0;
  if (!serverGone) {
    const stored = new Set<string>();
    let before: string | undefined;
    for (;;) {
      const url = `http://127.0.0.1:${server.httpPort}/api/messages?limit=1000${before ? `&before=${before}` : ''}`;
      const page = (await (await fetch(url)).json()) as { items: Array<{ controlId: string; ackCode: string; status: string }>; next?: string };
      for (const m of page.items) {
        if ((m.ackCode === 'AA' || m.ackCode === 'CA') && (m.status === 'accepted' || m.status === 'ignored')) stored.add(m.controlId);
      }
      if (page.next === undefined) break;
      before = page.next;
    }
    for (const [id, code] of tally.accepted) {
      if (stored.has(id)) acceptedStored++;
      else tally.failures.push(`${code} for ${id}, which is not stored as accepted`);
    }
  }

  stopping = true;
  if (!serverGone) {
    server.child.kill('SIGTERM');
    const { code, signal } = await server.exited;
    if (code !== 0) tally.failures.push(`the server did not stop cleanly (code ${code}, signal ${signal})`);
  }
  const dataBytes = dirBytes(path.join(dir, 'data'));
  rmSync(dir, { recursive: true, force: true });

  // -- memory ---------------------------------------------------------------------------
  // Warm-up (JIT, SQLite page cache, first connections) is the first quarter of the run.
  const steady = rss.slice(Math.floor(rss.length / 4));
  const startMb = steady[0]?.v ?? 0;
  const endMb = steady[steady.length - 1]?.v ?? 0;
  const peakMb = rss.reduce((m, p) => Math.max(m, p.v), 0);
  const slope = linearSlope(steady);
  const growthMb = slope * (steady.length > 1 ? steady[steady.length - 1]!.t - steady[0]!.t : 0);
  if (growthMb > RSS_GROWTH_LIMIT_MB && growthMb > startMb * 0.5) {
    tally.failures.push(`RSS trends upward: +${growthMb.toFixed(0)} MB over the run (${slope.toFixed(1)} MB/min from ${startMb.toFixed(0)} MB)`);
  }

  const sortedProbe = [...probeLatencies].sort((a, b) => a - b);
  if (sortedProbe.length === 0) tally.failures.push('the probe got no ACK at all');
  return {
    seed: options.seed,
    seconds: options.seconds,
    connections: options.connections,
    scenarios: Object.fromEntries(tally.scenarios),
    messagesSent: tally.messagesSent,
    acks: Object.fromEntries(tally.acks),
    closedWithoutAck: tally.closedWithoutAck,
    httpStatus: Object.fromEntries(tally.httpStatus),
    acceptedChecked: tally.accepted.size,
    acceptedStored,
    resendsChecked: tally.resendsChecked,
    probe: {
      sent: sortedProbe.length,
      p50Ms: percentile(sortedProbe, 50),
      p99Ms: percentile(sortedProbe, 99),
      maxMs: sortedProbe[sortedProbe.length - 1] ?? 0,
    },
    rss: { startMb, peakMb, endMb, growthMb, slopeMbPerMin: slope },
    dataBytes,
    logEvents: Object.fromEntries(server.logEvents),
    failures: tally.failures,
  };
}

/** The report as a few readable lines. */
export function formatReport(r: FuzzReport): string {
  const kv = (o: Record<string, number>): string =>
    Object.entries(o)
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
  return [
    `seed ${r.seed}, ${r.seconds} s, ${r.connections} connections`,
    `sent ${r.messagesSent} frames/bodies; ACKs: ${kv(r.acks)}; closed without ACK ${r.closedWithoutAck}`,
    `HTTP: ${kv(r.httpStatus)}`,
    `scenarios: ${kv(r.scenarios)}`,
    `AA/CA stored: ${r.acceptedStored} of ${r.acceptedChecked}; resends with identical ACK checked: ${r.resendsChecked}`,
    `probe: ${r.probe.sent} ACKs, p50 ${r.probe.p50Ms.toFixed(1)} ms, p99 ${r.probe.p99Ms.toFixed(1)} ms, max ${r.probe.maxMs.toFixed(1)} ms`,
    `RSS: ${r.rss.startMb.toFixed(0)} MB after warm-up, peak ${r.rss.peakMb.toFixed(0)} MB, end ${r.rss.endMb.toFixed(0)} MB, ` +
      `trend ${r.rss.slopeMbPerMin >= 0 ? '+' : ''}${r.rss.slopeMbPerMin.toFixed(1)} MB/min`,
    `data dir ${(r.dataBytes / 1024 / 1024).toFixed(1)} MB; server log: ${kv(r.logEvents)}`,
    r.failures.length === 0 ? 'PASS: every invariant held' : `FAIL: ${r.failures.length} broken invariants:\n  ${r.failures.slice(0, 30).join('\n  ')}`,
  ].join('\n');
}
