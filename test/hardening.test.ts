// What a fuzzer and a hostile network found, each fixed and checked over real sockets on
// loopback (docs/reliability.md "Bad inputs"): a message an ACK could not frame, memory per
// byte trickled, silent sockets holding every slot, rejected frames filling the disk, HTTP
// ingest exposed without auth, unbounded log values, chunked bodies read to the end, ACKs in
// the wrong charset, and the small ones (repeated query parameters, the Bearer scheme's case,
// the README's inline YAML, CR/LF inside a name). TLS cases: hardening-tls.test.ts.
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { Writable } from 'node:stream';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/load.ts';
import { ConfigError } from '../src/errors.ts';
import { MllpFramer } from '../src/hl7v2/mllp.ts';
import { parseHl7 } from '../src/hl7v2/parse.ts';
import { createLogger, silentLogger } from '../src/log.ts';
import { startCarerelay } from '../src/main.ts';
import type { SqliteStore } from '../src/store/sqlite.ts';
import type { Trigger } from '../src/types.ts';
import { redisPrefix, redisSkipped, testRedisUrl } from './helpers/redis.ts';
import {
  adtMessage,
  hl7Field,
  mllpExchange,
  siuMessage,
  startServer,
  writeYamlConfig,
  type InProcessServer,
  type TestConfigDir,
} from './helpers/server.ts';

const cleanups: Array<() => Promise<void> | void> = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

/** Starts the server on a config (YAML with {dataDir}); stopped and removed after the file. */
async function serverWith(yaml: string, env: Record<string, string> = {}): Promise<{ server: InProcessServer; config: TestConfigDir }> {
  const config = writeYamlConfig(yaml);
  const server = await startServer(config, env);
  cleanups.push(() => config.remove(), () => server.stop());
  return { server, config };
}

const HEAD = ['server:', '  http: { host: 127.0.0.1, port: 0 }', '  dataDir: {dataDir}'];
const MLLP = ['  - name: ehr-mllp', '    type: hl7v2-mllp', '    host: 127.0.0.1', '    port: 0', '    plain: true'];
const HTTP = ['  - name: ehr-http', '    type: hl7v2-http'];

async function api<T>(server: InProcessServer, path: string, headers: Record<string, string> = {}): Promise<T> {
  const res = await fetch(`http://127.0.0.1:${server.httpPort}${path}`, { headers });
  expect(res.status, `GET ${path}`).toBe(200);
  return (await res.json()) as T;
}

function msa(ack: Buffer | string): { code: string; controlId: string; text: string } {
  const m = parseHl7(ack);
  return { code: m.get('MSA-1'), controlId: m.get('MSA-2'), text: m.get('MSA-3') };
}

/** A connection that stays open across exchanges and reads frames back. */
class Sender {
  private readonly framer = new MllpFramer();
  private readonly frames: Buffer[] = [];
  private wake: (() => void) | undefined;
  closed = false;
  readonly whenClosed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.frames.push(...this.framer.push(chunk));
      this.wake?.();
    });
    socket.on('error', () => {});
    this.whenClosed = new Promise((resolve) =>
      socket.once('close', () => {
        this.closed = true;
        this.wake?.();
        resolve();
      }),
    );
  }

  static open(port: number, localAddress = '127.0.0.1'): Promise<Sender> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port, localAddress });
      socket.once('connect', () => resolve(new Sender(socket)));
      socket.once('error', reject);
    });
  }

  /** Sends one payload framed by hand (it may hold block characters) and waits for a frame or the close. */
  async exchange(payload: Buffer | string): Promise<Buffer | null> {
    const bytes = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
    this.socket.write(Buffer.concat([Buffer.from([0x0b]), bytes, Buffer.from([0x1c, 0x0d])]));
    for (;;) {
      const frame = this.frames.shift();
      if (frame !== undefined) return frame;
      if (this.closed) return null;
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Resolves once `condition()` holds, checking after each event-loop turn (no fixed sleeps). */
async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setImmediate(resolve));
}

describe('1. a message holding an MLLP block character is refused (AR) before anything is stored', () => {
  let server: InProcessServer;
  beforeAll(async () => {
    ({ server } = await serverWith([...HEAD, 'inputs:', ...MLLP, ...HTTP, ''].join('\n')));
  });

  it('over MLLP: an ADT^A08 whose MSH-10 ends in 0x1C gets a framed AR naming the byte; the connection goes on', async () => {
    const sender = await Sender.open(server.mllpPort());
    cleanups.push(() => sender.close());
    const message = adtMessage({ controlId: 'BLK-1\x1c', event: 'A08', patientId: 'P-BLK-1' });
    const ack = await sender.exchange(message);
    expect(ack, 'an ACK frame, not a closed connection').not.toBeNull();
    expect(msa(ack!)).toMatchObject({ code: 'AR', controlId: 'BLK-1\x1c' });
    // MSA-2 carries the same MSH-10 value, escaped: raw 0x1C cannot be framed.
    expect(hl7Field(ack!, 'MSA', 2)).toBe('BLK-1\\X1C\\');
    expect(ack!.includes(0x1c)).toBe(false);
    expect(msa(ack!).text).toMatch(/block character 0x1C in MSH-10/);
    // A resend gets the same refusal, and the connection still carries good messages.
    expect(msa((await sender.exchange(message))!).code).toBe('AR');
    expect(msa((await sender.exchange(adtMessage({ controlId: 'BLK-2', event: 'A08', patientId: 'P-BLK-2' })))!).code).toBe('AA');

    const triggers = await api<{ items: Trigger[] }>(server, '/api/triggers?patientId=P-BLK-1');
    expect(triggers.items).toEqual([]);
    const refused = (await api<{ items: Array<{ reason: string; controlId: string; triggerIds: string[] }> }>(server, '/api/messages?status=rejected'))
      .items.filter((m) => m.reason === 'mllp_block_character');
    expect(refused.length).toBeGreaterThanOrEqual(2);
    // Outside the dedupe key: its MSH-10 is not a usable one.
    expect(refused.every((m) => m.controlId === '' && m.triggerIds.length === 0)).toBe(true);
  });

  it('over MLLP: a 0x0B inside PID-5 is refused too, naming the field', async () => {
    const message = adtMessage({ controlId: 'BLK-3', event: 'A08', patientId: 'P-BLK-3' }).replace('DOE^Test', 'DO\x0bE^Test');
    const ack = await mllpExchange(server.mllpPort(), message);
    expect(msa(ack!)).toMatchObject({ code: 'AR', controlId: 'BLK-3' });
    expect(msa(ack!).text).toMatch(/0x0B in PID-5/);
    expect((await api<{ items: Trigger[] }>(server, '/api/triggers?patientId=P-BLK-3')).items).toEqual([]);
  });

  it('over HTTP: the same bytes are answered AR, never AA, and give no trigger', async () => {
    const message = adtMessage({ controlId: 'BLK-4\x1c', event: 'A08', patientId: 'P-BLK-4' });
    const res = await fetch(`http://127.0.0.1:${server.httpPort}/ingest/hl7v2/ehr-http`, { method: 'POST', body: message });
    expect(res.status).toBe(200);
    expect(msa(Buffer.from(await res.arrayBuffer()))).toMatchObject({ code: 'AR', controlId: 'BLK-4\x1c' });
    expect((await api<{ items: Trigger[] }>(server, '/api/triggers?patientId=P-BLK-4')).items).toEqual([]);
  });
});

describe('2. memory follows the bytes buffered, not the number of reads', () => {
  it('40 connections trickling one byte per write hold a small multiple of what they sent', async () => {
    const { server } = await serverWith([...HEAD, 'inputs:', ...MLLP, '    maxConnectionsPerAddress: 100', ''].join('\n'));
    const port = server.mllpPort();
    v8.setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const connections = 40;
    const bytesEach = 1500;
    const sockets = await Promise.all(
      Array.from(
        { length: connections },
        () =>
          new Promise<net.Socket>((resolve) => {
            const s = net.connect({ host: '127.0.0.1', port }, () => resolve(s));
            s.setNoDelay(true);
          }),
      ),
    );
    cleanups.push(() => sockets.forEach((s) => s.destroy()));
    for (const s of sockets) s.write(Buffer.from([0x0b]));
    await until(() => server.mllpStats('ehr-mllp')!.connections === connections);
    gc();
    const heapOf = (): number => {
      const m = process.memoryUsage();
      return m.heapUsed + m.arrayBuffers;
    };
    const before = heapOf();
    // One byte per connection per event-loop turn: each arrives at the server as its own read.
    for (let i = 0; i < bytesEach; i++) {
      for (const s of sockets) s.write(Buffer.from([0x41]));
      await new Promise((resolve) => setImmediate(resolve));
    }
    await until(() => server.mllpStats('ehr-mllp')!.bufferedBytes === connections * bytesEach);
    gc();
    const grown = heapOf() - before;
    const stats = server.mllpStats('ehr-mllp')!;
    // The listener's own accounting: one buffer per connection, at most twice what it holds.
    expect(stats.retainedBytes).toBeLessThanOrEqual(2 * stats.bufferedBytes + connections * 4096);
    // And the process: a slice kept per read cost ~200 bytes of heap per byte (12 MB here);
    // with the copy it is the buffers above plus the sockets' own state.
    expect(grown, `heap grew ${grown} bytes for ${stats.bufferedBytes} bytes buffered`).toBeLessThan(40 * stats.bufferedBytes);
  });
});

describe('4. silent sockets: per-address limit, slots reserved for trusted senders, first-byte deadline', () => {
  it('refuses a third socket from one address and an untrusted one past the unreserved slots; the trusted sender still connects', async () => {
    const { server } = await serverWith(
      [
        ...HEAD,
        'inputs:',
        ...MLLP,
        '    maxConnections: 8',
        '    maxConnectionsPerAddress: 2',
        '    reservedConnections: 3',
        '    trustedSenders: { addresses: [127.0.0.2] }',
        '',
      ].join('\n'),
    );
    const port = server.mllpPort();
    const silent: Sender[] = [];
    cleanups.push(() => silent.forEach((s) => s.close()));
    silent.push(await Sender.open(port, '127.0.0.3'), await Sender.open(port, '127.0.0.3'));
    await until(() => server.mllpStats('ehr-mllp')!.sockets === 2);
    const third = await Sender.open(port, '127.0.0.3');
    await third.whenClosed;
    expect(server.mllpStats('ehr-mllp')!.refused.per_address_limit).toBe(1);

    // 8 slots, 3 reserved: three more untrusted peers fill the other 5.
    for (const address of ['127.0.0.4', '127.0.0.5', '127.0.0.6']) silent.push(await Sender.open(port, address));
    await until(() => server.mllpStats('ehr-mllp')!.sockets === 5);
    const crowd = await Sender.open(port, '127.0.0.7');
    await crowd.whenClosed;
    expect(server.mllpStats('ehr-mllp')!.refused.reserved_for_trusted).toBe(1);

    const trusted = await Sender.open(port, '127.0.0.2');
    cleanups.push(() => trusted.close());
    expect(msa((await trusted.exchange(siuMessage({ controlId: 'RES-1', appointmentId: 'AP-RES-1' })))!).code).toBe('AA');
    const refusals = server.logs.filter((l) => l.message === 'mllp.connection_refused');
    expect(refusals.map((l) => l.reason)).toEqual(['per_address_limit', 'reserved_for_trusted']);
    expect(refusals.every((l) => typeof l.peer === 'string' && l.count === 1)).toBe(true);
  });

  it('closes an untrusted silent socket at its first-byte deadline; a trusted sender may wait before its first message', async () => {
    const { server } = await serverWith(
      [...HEAD, 'inputs:', ...MLLP, '    firstByteTimeoutSeconds: 1', '    trustedSenders: { addresses: [127.0.0.2] }', ''].join('\n'),
    );
    const port = server.mllpPort();
    const untrusted = await Sender.open(port, '127.0.0.3');
    const trusted = await Sender.open(port, '127.0.0.2');
    cleanups.push(() => trusted.close());
    await untrusted.whenClosed; // idle timeout is 300 s: only the first-byte deadline closes it
    await until(() => server.mllpStats('ehr-mllp')!.firstByteTimeouts === 1);
    expect(trusted.closed).toBe(false);
    expect(msa((await trusted.exchange(siuMessage({ controlId: 'FB-1', appointmentId: 'AP-FB-1' })))!).code).toBe('AA');
    expect(server.logs.some((l) => l.message === 'mllp.connection_refused' && l.reason === 'first_byte_timeout')).toBe(true);
  });
});

describe('5. rejected raw bytes stay within their quota; /readyz reports a store that cannot write', () => {
  let config: TestConfigDir;
  let server: InProcessServer;
  const yaml = [
    'server:',
    '  http: { host: 127.0.0.1, port: 0 }',
    '  dataDir: {dataDir}',
    '  rejectedRaw: { totalBytes: 6000, perSenderBytes: 3000, keepBytes: 100 }',
    'inputs:',
    ...MLLP,
    '',
  ].join('\n');

  beforeAll(async () => {
    ({ server, config } = await serverWith(yaml));
  });

  /** An ADT without a patient id (AR, kept for review) from EPIC^<facility>, padded to exactly `size` bytes. */
  function refused(controlId: string, facility: string, size = 1400): string {
    const base = adtMessage({ controlId, patientId: '' }).replace('|EPIC|NORTHCLINIC|', `|EPIC|${facility}|`);
    const note = 'NTE|1||';
    return `${base}${note}${'x'.repeat(size - base.length - note.length - 1)}\r`;
  }

  async function storedOf(s: InProcessServer, controlId: string): Promise<{ rawBase64: string; rawBytes?: number; ackCode: string }> {
    const [m] = (await api<{ items: Array<{ id: string }> }>(s, `/api/messages?controlId=${controlId}`)).items;
    return api(s, `/api/messages/${m!.id}`);
  }

  it('keeps whole up to the per-sender and total limits, then the first bytes and the length, across a restart', async () => {
    const port = server.mllpPort();
    for (const [id, facility] of [
      ['Q-A1', 'CLINIC-A'],
      ['Q-A2', 'CLINIC-A'],
      ['Q-A3', 'CLINIC-A'],
      ['Q-B1', 'CLINIC-B'],
      ['Q-B2', 'CLINIC-B'],
      ['Q-B3', 'CLINIC-B'],
    ] as const) {
      const message = refused(id, facility);
      expect(Buffer.byteLength(message)).toBe(1400);
      expect(msa((await mllpExchange(port, message))!).code).toBe('AR');
    }
    const whole = async (id: string): Promise<boolean> => {
      const m = await storedOf(server, id);
      return Buffer.from(m.rawBase64, 'base64').length === 1400 && m.rawBytes === undefined;
    };
    // A1, A2: 2,800 ≤ 3,000 per sender. A3 would pass it. B1, B2: total 5,600 ≤ 6,000. B3 would pass the total.
    expect(await whole('Q-A1')).toBe(true);
    expect(await whole('Q-A2')).toBe(true);
    expect(await whole('Q-B1')).toBe(true);
    expect(await whole('Q-B2')).toBe(true);
    for (const id of ['Q-A3', 'Q-B3']) {
      const m = await storedOf(server, id);
      const kept = Buffer.from(m.rawBase64, 'base64');
      expect(kept.length).toBe(100);
      expect(m.rawBytes).toBe(1400);
      expect(kept.equals(Buffer.from(refused(id, id === 'Q-A3' ? 'CLINIC-A' : 'CLINIC-B')).subarray(0, 100))).toBe(true);
      expect(m.ackCode).toBe('AR');
    }
    expect(server.logs.filter((l) => l.message === 'ingest.raw_truncated')).toHaveLength(2);
    // What was cut cannot be tried again by an operator: the sender must resend it.
    const [a3] = (await api<{ items: Array<{ id: string }> }>(server, '/api/messages?controlId=Q-A3')).items;
    const reprocess = await fetch(`http://127.0.0.1:${server.httpPort}/api/messages/${a3!.id}/reprocess`, { method: 'POST' });
    expect(reprocess.status).toBe(409);
    expect(await reprocess.text()).toMatch(/kept only its first 100 of 1400 bytes/);

    // The counters are durable: after a restart sender A is still past its quota.
    await server.stop();
    server = await startServer(config);
    cleanups.push(() => server.stop());
    expect(msa((await mllpExchange(server.mllpPort(), refused('Q-A4', 'CLINIC-A')))!).code).toBe('AR');
    expect((await storedOf(server, 'Q-A4')).rawBytes).toBe(1400);
    // The hash kept is the whole message's (its segments, CR-joined: workers/ingest.ts).
    const [a4] = (await api<{ items: Array<{ id: string }> }>(server, '/api/messages?controlId=Q-A4')).items;
    const sent = refused('Q-A4', 'CLINIC-A');
    expect((await server.store.getMessage(a4!.id))!.contentHash).toBe(createHash('sha256').update(sent.slice(0, -1)).digest('hex'));
  });

  /** The stored messages of a listing, oldest first, with how many raw bytes each kept and of how many. */
  async function keptOf(s: InProcessServer, query: string): Promise<Array<{ kept: number; rawBytes?: number; ackCode: string }>> {
    const { items } = await api<{ items: Array<{ id: string }> }>(s, `/api/messages?${query}`);
    const out = [];
    for (const { id } of items.reverse()) {
      const m = await api<{ rawBase64: string; rawBytes?: number; ackCode: string }>(s, `/api/messages/${id}`);
      out.push({ kept: Buffer.from(m.rawBase64, 'base64').length, ackCode: m.ackCode, ...(m.rawBytes !== undefined ? { rawBytes: m.rawBytes } : {}) });
    }
    return out;
  }

  it('counts quarantined copies (same MSH-10, other bytes) against the same quota', async () => {
    const { server: own } = await serverWith(yaml);
    const port = own.mllpPort();
    const original = siuMessage({ controlId: 'QC-1', appointmentId: 'AP-QC-1' });
    expect(msa((await mllpExchange(port, original))!).code).toBe('AA');
    // Three corrections sent under the same MSH-10, each 1,400 bytes: AE, kept for review.
    const copy = (n: number): string => {
      const base = siuMessage({ controlId: 'QC-1', appointmentId: 'AP-QC-1', extra: `NTE|1||${n}` });
      return `${base}${'x'.repeat(1400 - base.length - 1)}\r`;
    };
    for (const n of [1, 2, 3]) {
      expect(Buffer.byteLength(copy(n))).toBe(1400);
      expect(msa((await mllpExchange(port, copy(n)))!).code).toBe('AE');
    }
    // Per sender 3,000: two whole, the third cut. The accepted original is not counted.
    expect(await keptOf(own, 'controlId=QC-1&status=quarantined')).toEqual([
      { kept: 1400, ackCode: 'AE' },
      { kept: 1400, ackCode: 'AE' },
      { kept: 100, rawBytes: 1400, ackCode: 'AE' },
    ]);
    expect(own.logs.filter((l) => l.message === 'ingest.raw_truncated')).toHaveLength(1);
    // What was cut cannot be released: the sender resends it.
    const [, , cut] = (await api<{ items: Array<{ id: string }> }>(own, '/api/messages?controlId=QC-1&status=quarantined')).items.reverse();
    const release = await fetch(`http://127.0.0.1:${own.httpPort}/api/messages/${cut!.id}/release`, { method: 'POST' });
    expect(release.status).toBe(409);
  });

  it('counts the bodies of refused FHIR requests against the same quota, over HTTP', async () => {
    const { server: own } = await serverWith(
      [
        ...HEAD,
        '  rejectedRaw: { totalBytes: 100000, perSenderBytes: 3000, keepBytes: 100 }',
        'inputs:',
        '  - name: ehr-fhir',
        '    type: fhir-rest-hook',
        // Never asked: every request here is refused before anything is fetched.
        '    server: { baseUrl: "http://127.0.0.1:9/fhir" }',
        '    auth: { bearer: { token: { env: FHIR_HOOK_TOKEN } } }',
        '',
      ].join('\n'),
      { FHIR_HOOK_TOKEN: 'hook-secret' },
    );
    // Authenticated bodies that are not JSON: 400, recorded with the body as read.
    const body = (n: number): string => `{"n":${n},"junk":${'x'.repeat(1400 - 14)}`;
    for (const n of [1, 2, 3]) {
      expect(Buffer.byteLength(body(n))).toBe(1400);
      const res = await fetch(`http://127.0.0.1:${own.httpPort}/ingest/fhir/ehr-fhir`, {
        method: 'POST',
        headers: { authorization: 'Bearer hook-secret', 'content-type': 'application/fhir+json' },
        body: body(n),
      });
      expect(res.status).toBe(400);
      expect(await res.json()).toMatchObject({ reason: 'invalid_json' });
    }
    expect(await keptOf(own, 'input=ehr-fhir&status=rejected')).toEqual([
      { kept: 1400, ackCode: '400' },
      { kept: 1400, ackCode: '400' },
      { kept: 100, rawBytes: 1400, ackCode: '400' },
    ]);
    expect(own.logs.filter((l) => l.message === 'fhir.raw_truncated')).toMatchObject([{ input: 'ehr-fhir', reason: 'rejected_raw_quota', count: 1400 }]);
  });

  it.skipIf(redisSkipped)('holds as a whole for processes sharing one store: the accounting is the store\'s, in the commit', async () => {
    // Processes share a store with the queue on Redis (an embedded-queue process is alone on its
    // data directory, test/data-dir-lock.test.ts): two ingest processes here.
    const url = await testRedisUrl();
    const shared = writeYamlConfig(yaml.replace('  rejectedRaw:', `  queue: { type: bullmq, url: { env: REDIS_URL }, prefix: ${redisPrefix('quota')} }\n  rejectedRaw:`));
    cleanups.push(() => shared.remove());
    const ingest = async (): Promise<InProcessServer> => {
      const running = await startCarerelay({ configDir: shared.dir, env: { REDIS_URL: url }, log: silentLogger, role: 'ingest', watchMappings: false });
      cleanups.push(() => running.stop());
      return { ...running, logs: [], mllpPort: () => running.mllpPorts.get('ehr-mllp')! };
    };
    const first = await ingest();
    const second = await ingest();
    // Sender CLINIC-S through one process, then the other, then the first again: 4,200 > 3,000.
    expect(msa((await mllpExchange(first.mllpPort(), refused('S-1', 'CLINIC-S')))!).code).toBe('AR');
    expect(msa((await mllpExchange(second.mllpPort(), refused('S-2', 'CLINIC-S')))!).code).toBe('AR');
    expect(msa((await mllpExchange(first.mllpPort(), refused('S-3', 'CLINIC-S')))!).code).toBe('AR');
    expect(await keptOf(second, 'sender=EPIC%5ECLINIC-S')).toEqual([
      { kept: 1400, ackCode: 'AR' },
      { kept: 1400, ackCode: 'AR' },
      { kept: 100, rawBytes: 1400, ackCode: 'AR' },
    ]);
  });

  it('/readyz: 503 while the disk is full (a commit failed and a message-sized probe cannot write), ready again once it can', async () => {
    const db = (server.store as SqliteStore).db;
    const ready = async (): Promise<{ status: number; body: string }> => {
      const res = await fetch(`http://127.0.0.1:${server.httpPort}/readyz`);
      return { status: res.status, body: await res.text() };
    };
    expect((await ready()).status).toBe(200);
    const pages = db.pragma('page_count', { simple: true }) as number;
    const previousMax = db.pragma('max_page_count', { simple: true }) as number;
    db.pragma(`max_page_count = ${pages}`);
    try {
      // 80 kB that compression cannot shrink (the raw bytes are stored packed): the commit needs new pages.
      const big = siuMessage({ controlId: 'RDY-1', appointmentId: 'AP-RDY-1', extra: `NTE|1||${randomBytes(60_000).toString('base64')}\r` });
      expect(msa((await mllpExchange(server.mllpPort(), big))!).code).toBe('AE');
      const notReady = await ready();
      expect(notReady.status).toBe(503);
      expect(notReady.body).toMatch(/store_cannot_write/);
    } finally {
      db.pragma(`max_page_count = ${previousMax}`);
    }
    expect((await ready()).status).toBe(200);
  });

  it('/readyz: 503 on a read-only store after a failed commit', async () => {
    const db = (server.store as SqliteStore).db;
    db.pragma('query_only = ON');
    try {
      expect(msa((await mllpExchange(server.mllpPort(), siuMessage({ controlId: 'RDY-2', appointmentId: 'AP-RDY-2' })))!).code).toBe('AE');
      const res = await fetch(`http://127.0.0.1:${server.httpPort}/readyz`);
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).toMatch(/^\d+$/);
    } finally {
      db.pragma('query_only = OFF');
    }
    expect((await fetch(`http://127.0.0.1:${server.httpPort}/readyz`)).status).toBe(200);
  });

  it('/readyz: 503 when the data directory has less free space than minFreeDiskBytes', async () => {
    const { server: full } = await serverWith(
      ['server:', '  http: { host: 127.0.0.1, port: 0 }', '  dataDir: {dataDir}', `  minFreeDiskBytes: ${Number.MAX_SAFE_INTEGER}`, 'inputs: []', ''].join('\n'),
    );
    const res = await fetch(`http://127.0.0.1:${full.httpPort}/readyz`);
    expect(res.status).toBe(503);
    expect(await res.text()).toMatch(/disk_full/);
  });
});

describe('6. an HTTP ingest input reachable beyond loopback must authenticate', () => {
  const exposed = (auth: string): string =>
    ['server:', '  http: { host: 0.0.0.0, port: 0 }', '  dataDir: {dataDir}', 'inputs:', ...HTTP, ...(auth ? [`    auth: ${auth}`] : []), ''].join('\n');

  it('validate and start refuse one without auth, naming the input and the fixes', async () => {
    const config = writeYamlConfig(exposed(''));
    cleanups.push(() => config.remove());
    const error = await loadConfig({ configDir: config.dir, env: {} }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).issues.map((i) => i.message).join('\n')).toMatch(/"ehr-http" has no auth, but server\.http\.host is 0\.0\.0\.0.*auth: none/s);
    await expect(startCarerelay({ configDir: config.dir, env: {}, watchMappings: false })).rejects.toBeInstanceOf(ConfigError);
  });

  it('accepts auth: none with a warning at every start, and a bearer token', async () => {
    await expect(loadConfig({ configDir: writeYamlConfig(exposed('{ bearerToken: { env: T } }')).dir, env: { T: 'x' } })).resolves.toBeDefined();
    // No admin token: the listener stays on 127.0.0.1 whatever host says (main.ts), so this test binds loopback only.
    const { server, config } = await serverWith(exposed('none'));
    expect(server.logs.filter((l) => l.message === 'ingest.unauthenticated')).toEqual([
      expect.objectContaining({ level: 'warn', input: 'ehr-http', reason: 'auth_none' }),
    ]);
    await server.stop();
    const again = await startServer(config);
    cleanups.push(() => again.stop());
    expect(again.logs.filter((l) => l.message === 'ingest.unauthenticated')).toHaveLength(1);
    const res = await fetch(`http://127.0.0.1:${again.httpPort}/ingest/hl7v2/ehr-http`, {
      method: 'POST',
      body: siuMessage({ controlId: 'NOAUTH-1', appointmentId: 'AP-NOAUTH-1' }),
    });
    expect(res.status).toBe(200);
  });
});

describe('7. logged values are bounded ids and codes', () => {
  it('a 100 kB MSH-3, MSH-9 and MSH-10 give log lines of a few hundred bytes', async () => {
    const lines: string[] = [];
    const stream = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(...chunk.toString('utf8').split('\n').filter((l) => l !== ''));
        done();
      },
    });
    const config = writeYamlConfig([...HEAD, 'inputs:', ...MLLP, ''].join('\n'));
    const server = await startCarerelay({ configDir: config.dir, env: {}, log: createLogger({ stream }), watchMappings: false });
    cleanups.push(() => config.remove(), () => server.stop());
    const huge = 'Z'.repeat(100_000);
    const message = adtMessage({ controlId: `LOG-${huge}`, event: 'A01' })
      .replace('ADT^A01^ADT_A01', `ZZZ^${huge}`)
      .replace('|EPIC|', `|EPIC${huge}\r\n|`.replace('\r\n', '\x07'));
    const ack = await mllpExchange(server.mllpPorts.get('ehr-mllp')!, message);
    expect(msa(ack!).code).toBe('AA'); // an unknown type: accepted and recorded as ignored
    const line = lines.find((l) => l.includes('ingest.not_accepted'));
    expect(line).toBeDefined();
    const fields = JSON.parse(line!) as Record<string, string>;
    for (const key of ['sender', 'controlId', 'messageType']) {
      expect(fields[key]!.length, key).toBeLessThan(80);
      expect(fields[key]).toMatch(/…\(\+\d+\)$/);
    }
    expect(fields.sender).not.toMatch(/[\u0000-\u001f]/);
    expect(Math.max(...lines.map((l) => l.length))).toBeLessThan(1000);
  });
});

describe('8. an HTTP body past the limit is answered 413 and its connection closed, whatever its framing', () => {
  /**
   * POSTs a chunked body of up to 256 MiB as fast as the socket takes it; resolves with the
   * answer and how much was written before the server closed the connection.
   */
  async function chunkedPastLimit(port: number, path: string, headers: string): Promise<{ answer: string; written: number; attempt: number }> {
    const socket = net.connect({ host: '127.0.0.1', port });
    cleanups.push(() => {
      socket.destroy();
    });
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    let answer = '';
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
    socket.on('error', () => {});
    const closed = new Promise<void>((resolve) => socket.once('close', resolve));
    const attempt = 256 * 1024 * 1024;
    const chunk = Buffer.concat([Buffer.from('10000\r\n'), Buffer.alloc(0x10000, 0x41), Buffer.from('\r\n')]);
    socket.write(`POST ${path} HTTP/1.1\r\nHost: x\r\n${headers}Transfer-Encoding: chunked\r\n\r\n`);
    let written = 0;
    let gone = false;
    void closed.then(() => (gone = true));
    while (!gone && written < attempt) {
      written += 0x10000;
      if (!socket.write(chunk)) {
        await Promise.race([new Promise<void>((resolve) => socket.once('drain', resolve)), closed]);
      }
    }
    if (!gone) socket.end('0\r\n\r\n'); // the whole body went in: a server that read it all answers now
    await closed;
    return { answer, written, attempt };
  }

  let server: InProcessServer;
  beforeAll(async () => {
    ({ server } = await serverWith(
      [
        ...HEAD,
        'inputs:',
        ...HTTP,
        '    maxBodyBytes: 65536',
        '  - name: ehr-fhir',
        '    type: fhir-rest-hook',
        '    server: { baseUrl: "http://127.0.0.1:9/fhir" }',
        '    auth: { bearer: { token: { env: HOOK_TOKEN } } }',
        '    maxBodyBytes: 65536',
        '',
      ].join('\n'),
      { HOOK_TOKEN: 'hook-token' },
    ));
  });

  it('HL7 over HTTP: a chunked body is cut at the limit: 413, and most of what the client tried to send is never read', async () => {
    const { answer, written, attempt } = await chunkedPastLimit(server.httpPort, '/ingest/hl7v2/ehr-http', 'Content-Type: x-application/hl7-v2+er7\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 413 /);
    expect(answer).toMatch(/connection: close/i);
    // Kernel buffers on loopback hold a few MB; the server read at most the limit of them.
    expect(written).toBeLessThan(attempt / 4);
  });

  it('FHIR notifications: the same', async () => {
    const { answer, written, attempt } = await chunkedPastLimit(
      server.httpPort,
      '/ingest/fhir/ehr-fhir',
      'Content-Type: application/fhir+json\r\nAuthorization: Bearer hook-token\r\n',
    );
    expect(answer).toMatch(/^HTTP\/1\.1 413 /);
    expect(written).toBeLessThan(attempt / 4);
  });
});

describe('11. an ACK is encoded in the character set its message declares', () => {
  let server: InProcessServer;
  beforeAll(async () => {
    ({ server } = await serverWith([...HEAD, 'inputs:', ...MLLP, ...HTTP, ''].join('\n')));
  });

  const latin1Message = (controlId: string): Buffer =>
    Buffer.from(
      siuMessage({ controlId, appointmentId: `AP-${controlId}`, sendingFacility: 'HÔPITAL' }).replace('|2.5.1\r', '|2.5.1||||||8859/1\r'),
      'latin1',
    );

  it('MSH-18 8859/1 over MLLP: the echoed HÔPITAL is the byte 0xD4, not UTF-8', async () => {
    const ack = (await mllpExchange(server.mllpPort(), latin1Message('CS-1')))!;
    expect(ack.includes(Buffer.from([0xc3, 0x94]))).toBe(false);
    expect(ack.includes(Buffer.from('H\xd4PITAL', 'latin1'))).toBe(true);
    const parsed = parseHl7(ack);
    expect(parsed.get('MSH-18')).toBe('8859/1');
    expect(parsed.get('MSH-6')).toBe('HÔPITAL');
    expect(parsed.get('MSA-1')).toBe('AA');
  });

  it('MSH-18 8859/1 over HTTP: the body is Latin-1 and the Content-Type says so', async () => {
    const res = await fetch(`http://127.0.0.1:${server.httpPort}/ingest/hl7v2/ehr-http`, { method: 'POST', body: latin1Message('CS-2') });
    expect(res.headers.get('content-type')).toMatch(/charset=iso-8859-1/);
    const body = Buffer.from(await res.arrayBuffer());
    expect(body.includes(Buffer.from('H\xd4PITAL', 'latin1'))).toBe(true);
    expect(parseHl7(body).get('MSH-6')).toBe('HÔPITAL');
  });

  it('MSH-18 8859/15: the euro sign goes back as 0xA4', async () => {
    const text = siuMessage({ controlId: 'CS-3', appointmentId: 'AP-CS-3', sendingFacility: 'CAFE\u20ac' }).replace('|2.5.1\r', '|2.5.1||||||8859/15\r');
    const bytes = Buffer.from(text.replace('\u20ac', '\u00a4'), 'latin1'); // 0xA4 is € in ISO-8859-15
    const ack = (await mllpExchange(server.mllpPort(), bytes))!;
    expect(ack.includes(Buffer.from([0x43, 0x41, 0x46, 0x45, 0xa4]))).toBe(true);
    expect(parseHl7(ack).get('MSH-6')).toBe('CAFE\u20ac');
  });
});

describe('13. the small ones', () => {
  let server: InProcessServer;
  const TOKEN = 'admin-token-for-tests';
  beforeAll(async () => {
    ({ server } = await serverWith(
      [...HEAD, 'inputs:', ...MLLP, ...HTTP, '    auth: { bearerToken: { env: INGEST_TOKEN } }', ''].join('\n'),
      { CARERELAY_ADMIN_TOKEN: TOKEN, INGEST_TOKEN: 'ingest-token' },
    ));
  });
  const get = (path: string, authorization = `Bearer ${TOKEN}`) =>
    fetch(`http://127.0.0.1:${server.httpPort}${path}`, { headers: { authorization } });

  it('a repeated query parameter is refused (400), not dropped with its validation', async () => {
    for (const path of ['/api/messages?status=accepted&status=rejected', '/api/messages?status=nonsense&status=x', '/api/deliveries?status=pending&status=x']) {
      const res = await get(path);
      expect(res.status, path).toBe(400);
      expect(await res.text()).toMatch(/status may be given once/);
    }
    expect((await get('/api/messages?status=accepted')).status).toBe(200);
  });

  it('the Bearer scheme is matched whatever its case (RFC 9110), the token exactly', async () => {
    expect((await get('/api/messages', `bearer ${TOKEN}`)).status).toBe(200);
    expect((await get('/api/messages', `BEARER ${TOKEN}`)).status).toBe(200);
    expect((await get('/api/messages', `bearer ${TOKEN.toUpperCase()}`)).status).toBe(401);
    const res = await fetch(`http://127.0.0.1:${server.httpPort}/ingest/hl7v2/ehr-http`, {
      method: 'POST',
      headers: { authorization: 'bEaReR ingest-token' },
      body: siuMessage({ controlId: 'BEARER-1', appointmentId: 'AP-BEARER-1' }),
    });
    expect(res.status).toBe(200);
  });

  it("the README's inline `http: { host: 127.0.0.1, port: ${HTTP_PORT:-8080} }` parses and starts", async () => {
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    const line = readme.split('\n').find((l) => l.includes('http: { host: 127.0.0.1, port: ${HTTP_PORT:-8080} }'));
    expect(line).toBeDefined();
    const { server: fromReadme } = await serverWith(['server:', line!.trimEnd(), '  dataDir: {dataDir}', 'inputs: []', ''].join('\n'), { HTTP_PORT: '0' });
    expect((await fetch(`http://127.0.0.1:${fromReadme.httpPort}/healthz`)).status).toBe(200);
  });

  it('an HL7 \\X0D0A\\ escape puts no CR/LF into a name', async () => {
    const message = adtMessage({ controlId: 'CTL-1', event: 'A08', patientId: 'P-CTL-1' }).replace('DOE^Test', 'DOE\\X0D0A\\Bcc: x@example.org^Te\\X09\\st');
    expect(msa((await mllpExchange(server.mllpPort(), message))!).code).toBe('AA');
    const [trigger] = (await (await get('/api/triggers?patientId=P-CTL-1')).json() as { items: Trigger[] }).items;
    expect(trigger!.patient!.name).toEqual({ family: 'DOE Bcc: x@example.org', given: ['Te st'] });
  });
});
