import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { makeTestPki, type TestPki } from '../../test/helpers/certs.ts';
import { encodeFrame, MllpFramer, START_BLOCK } from './mllp.ts';
import { MllpClient } from './mllp-client.ts';
import {
  MllpServer,
  startEchoMllpServer,
  type MllpHandler,
  type MllpPeer,
  type MllpServerEvent,
  type MllpServerOptions,
} from './mllp-server.ts';
import { parseHl7 } from './parse.ts';

function hl7(id: string, extra = ''): Buffer {
  return Buffer.from(
    `MSH|^~\\&|EPIC|GHH|CARERELAY|GHH|20250301120000||SIU^S12|${id}|P|2.5.1\rSCH|A100^EPIC|F200^EPIC|||||ROUTINE${extra}\rPID|1||P123^^^GHH^MR||Doe^Jane\r`,
  );
}

function ackFor(message: Buffer): string {
  return `MSH|^~\\&|CARERELAY|GHH|EPIC|GHH|20250301120001||ACK^S12^ACK|A-${parseHl7(message).controlId}|P|2.5.1\rMSA|AA|${parseHl7(message).controlId}\r`;
}

function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Records server events and lets a test wait for one (already seen or future). */
class EventLog {
  readonly events: MllpServerEvent[] = [];
  private waiters: Array<{ match: (e: MllpServerEvent) => boolean; resolve: (e: MllpServerEvent) => void }> = [];

  readonly onEvent = (event: MllpServerEvent): void => {
    this.events.push(event);
    this.waiters = this.waiters.filter((w) => {
      if (!w.match(event)) return true;
      w.resolve(event);
      return false;
    });
  };

  waitFor(match: (e: MllpServerEvent) => boolean): Promise<MllpServerEvent> {
    const seen = this.events.find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve) => this.waiters.push({ match, resolve }));
  }

  closed(connectionId?: number): Promise<Extract<MllpServerEvent, { type: 'connection_closed' }>> {
    return this.waitFor((e) => e.type === 'connection_closed' && (connectionId === undefined || e.connectionId === connectionId)) as never;
  }
}

/** A raw TCP sender that reads frames back. */
class RawPeer {
  readonly frames: Buffer[] = [];
  readonly closed: Promise<void>;
  private readonly framer = new MllpFramer();
  private waiters: Array<{ count: number; resolve: () => void }> = [];

  private constructor(readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.frames.push(...this.framer.push(chunk));
      this.waiters = this.waiters.filter((w) => {
        if (this.frames.length < w.count) return true;
        w.resolve();
        return false;
      });
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  static async connect(port: number, localAddress?: string): Promise<RawPeer> {
    const socket = net.connect({ host: '127.0.0.1', port, ...(localAddress !== undefined ? { localAddress } : {}) });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawPeer(socket);
  }

  write(bytes: Buffer): Promise<void> {
    return new Promise((resolve, reject) => this.socket.write(bytes, (error) => (error ? reject(error) : resolve())));
  }

  /** Resolves once `count` frames in total have arrived. */
  framesReceived(count: number): Promise<Buffer[]> {
    if (this.frames.length >= count) return Promise.resolve(this.frames.slice(0, count));
    return new Promise((resolve) => this.waiters.push({ count, resolve: () => resolve(this.frames.slice(0, count)) }));
  }
}

const servers: MllpServer[] = [];
const peers: RawPeer[] = [];

async function startServer(
  handler: MllpHandler,
  options: Omit<MllpServerOptions, 'handler' | 'onEvent'> = {},
): Promise<{ server: MllpServer; port: number; log: EventLog }> {
  const log = new EventLog();
  const server = new MllpServer({ handler, onEvent: log.onEvent, ...options });
  servers.push(server);
  const { port } = await server.listen();
  return { server, port, log };
}

async function rawPeer(port: number): Promise<RawPeer> {
  const peer = await RawPeer.connect(port);
  peers.push(peer);
  return peer;
}

afterEach(async () => {
  for (const p of peers.splice(0)) p.socket.destroy();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

const ackHandler: MllpHandler = async (message) => ackFor(message);

describe('MllpServer over a real socket', () => {
  it('binds 127.0.0.1 on an ephemeral port by default and exposes it', async () => {
    const { server, port } = await startServer(ackHandler);
    expect(port).toBeGreaterThan(0);
    expect(server.port).toBe(port);
    expect(server.options.host).toBe('127.0.0.1');
    expect(server.options.maxFrameBytes).toBe(10 * 1024 * 1024);
  });

  it('gives one message per frame when each frame is split at every byte position', async () => {
    const received: Buffer[] = [];
    const { port } = await startServer(async (message) => {
      received.push(Buffer.from(message));
      return ackFor(message);
    });
    const peer = await rawPeer(port);
    const frameLength = encodeFrame(hl7('X0000')).length;
    for (let cut = 1; cut < frameLength; cut++) {
      const id = `X${String(cut).padStart(4, '0')}`;
      const frame = encodeFrame(hl7(id));
      await peer.write(frame.subarray(0, cut));
      await peer.write(frame.subarray(cut));
      const acks = await peer.framesReceived(cut);
      expect(parseHl7(acks[cut - 1]!).get('MSA-2')).toBe(id);
    }
    expect(received).toHaveLength(frameLength - 1);
    expect(received.every((m, i) => m.equals(hl7(`X${String(i + 1).padStart(4, '0')}`)))).toBe(true);
  });

  it('reassembles a frame written one byte per write', async () => {
    const received: Buffer[] = [];
    const { port } = await startServer(async (message) => {
      received.push(Buffer.from(message));
      return ackFor(message);
    });
    const peer = await rawPeer(port);
    for (const byte of encodeFrame(hl7('BYTEWISE'))) await peer.write(Buffer.from([byte]));
    const [ack] = await peer.framesReceived(1);
    expect(parseHl7(ack!).get('MSA-2')).toBe('BYTEWISE');
    expect(received).toEqual([hl7('BYTEWISE')]);
  });

  it('answers several frames in one write with ACKs in order, one handler at a time', async () => {
    let inFlight = 0;
    let maxInFlight = 0;
    const order: string[] = [];
    const { port } = await startServer(async (message) => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      await new Promise((resolve) => setImmediate(resolve)); // let later frames arrive meanwhile
      order.push(parseHl7(message).controlId);
      inFlight--;
      return ackFor(message);
    });
    const peer = await rawPeer(port);
    const ids = Array.from({ length: 20 }, (_, i) => `P${i}`);
    await peer.write(Buffer.concat(ids.map((id) => encodeFrame(hl7(id)))));
    const acks = await peer.framesReceived(ids.length);
    expect(acks.map((a) => parseHl7(a).get('MSA-2'))).toEqual(ids);
    expect(order).toEqual(ids);
    expect(maxInFlight).toBe(1);
  });

  it('stops reading from a pipelining sender while its frames wait (back-pressure)', async () => {
    const release = deferred();
    let calls = 0;
    const { port } = await startServer(async (m) => {
      if (calls++ === 0) await release.promise;
      return ackFor(m);
    });
    const peer = await rawPeer(port);
    const frames = Array.from({ length: 1000 }, (_, i) => encodeFrame(hl7(`BP${i}`, `|${'x'.repeat(16 * 1024)}`)));
    const written = peer.write(Buffer.concat(frames)).then(() => 'written' as const);
    // Negative check over a window: unpaused, the server would swallow these 16 MB of
    // loopback traffic in a few ms; paused, TCP flow control holds the sender.
    const windowMs = new Promise((resolve) => setTimeout(() => resolve('held'), 300));
    const outcome = await Promise.race([written, windowMs]);
    release.resolve();
    expect(outcome).toBe('held');
    expect(calls).toBe(1);
    expect(await written).toBe('written');
    const acks = await peer.framesReceived(frames.length);
    expect(parseHl7(acks.at(-1)!).get('MSA-2')).toBe('BP999');
  });

  it('also stops reading when the frames arrive one write at a time while a handler runs', async () => {
    const release = deferred();
    let calls = 0;
    const { server, port } = await startServer(async (m) => {
      if (calls++ === 0) await release.promise;
      return ackFor(m);
    });
    const peer = await rawPeer(port);
    // The first frame alone: the handler takes it and blocks with nothing else queued.
    await peer.write(encodeFrame(hl7('ONE0')));
    const frames = Array.from({ length: 1000 }, (_, i) => encodeFrame(hl7(`ONE${i + 1}`, `|${'x'.repeat(16 * 1024)}`)));
    const written = (async () => {
      for (const frame of frames) await peer.write(frame);
      return 'written' as const;
    })();
    // Over a window, the frames read by the server must stay a handful: unpaused, it would
    // read all 16 MB from loopback in a few ms and queue every frame in memory.
    const windowMs = new Promise((resolve) => setTimeout(() => resolve('held'), 300));
    await Promise.race([written, windowMs]);
    expect(server.queuedFrames).toBeLessThan(50);
    release.resolve();
    expect(await written).toBe('written');
    const acks = await peer.framesReceived(frames.length + 1);
    expect(parseHl7(acks.at(-1)!).get('MSA-2')).toBe('ONE1000');
  });

  it('discards noise before 0x0B, reports its size, and still handles the frame', async () => {
    const { port, log } = await startServer(ackHandler);
    const peer = await rawPeer(port);
    await peer.write(Buffer.concat([Buffer.from('\r\n\r\nGET / HTTP/1.0'), encodeFrame(hl7('N1'))]));
    const [ack] = await peer.framesReceived(1);
    expect(parseHl7(ack!).get('MSA-2')).toBe('N1');
    const noise = await log.waitFor((e) => e.type === 'noise');
    expect(noise).toMatchObject({ type: 'noise', bytes: 18, remoteAddress: '127.0.0.1' });
    expect(Object.keys(noise).sort()).toEqual(['bytes', 'connectionId', 'remoteAddress', 'remotePort', 'type']);
  });

  it('closes a connection whose frame passes maxFrameBytes, without calling the handler', async () => {
    let calls = 0;
    const { port, log } = await startServer(
      async (m) => {
        calls++;
        return ackFor(m);
      },
      { maxFrameBytes: 1000 },
    );
    const peer = await rawPeer(port);
    await peer.write(Buffer.concat([Buffer.from([START_BLOCK]), Buffer.alloc(1500, 0x41)]));
    const closed = await log.closed();
    expect(closed.reason).toBe('too_large');
    await peer.closed;
    expect(calls).toBe(0);
    expect(peer.frames).toHaveLength(0);
  });

  it('closes a silent connection after idleTimeoutMs', async () => {
    const { port, log } = await startServer(ackHandler, { idleTimeoutMs: 200 });
    const peer = await rawPeer(port);
    const started = Date.now();
    const closed = await log.closed();
    expect(closed.reason).toBe('idle');
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    await peer.closed;
  });

  it('closes a connection stuck mid-frame, and one trickling bytes, after idleTimeoutMs', async () => {
    let calls = 0;
    const { port, log } = await startServer(
      async (m) => {
        calls++;
        return ackFor(m);
      },
      { idleTimeoutMs: 200 },
    );
    const stuck = await rawPeer(port);
    await stuck.write(encodeFrame(hl7('STUCK')).subarray(0, 40));
    const trickle = await rawPeer(port);
    const frame = encodeFrame(hl7('TRICKLE'));
    // One byte each time the stuck connection's state changes would be too slow to test;
    // instead keep writing single bytes until the server gives up on the trickler.
    let sent = 0;
    const trickling = (async () => {
      while (!trickle.socket.destroyed && sent < frame.length - 3) {
        await trickle.write(frame.subarray(sent, sent + 1)).catch(() => {});
        sent++;
        await new Promise((resolve) => setTimeout(resolve, 20)); // pacing of the slow sender, not synchronisation
      }
    })();
    await stuck.closed;
    await trickle.closed;
    await trickling;
    expect(log.events.filter((e) => e.type === 'connection_closed').map((e) => (e as { reason: string }).reason)).toEqual(['idle', 'idle']);
    expect(calls).toBe(0);
  });

  it('does not count handler time as idle time', async () => {
    const { port, log } = await startServer(
      async (message) => {
        // Finish only after another connection has idled out (≥ idleTimeoutMs later).
        await log.waitFor((e) => e.type === 'connection_closed' && e.reason === 'idle');
        return ackFor(message);
      },
      { idleTimeoutMs: 200 },
    );
    const busy = await rawPeer(port);
    await busy.write(encodeFrame(hl7('SLOW')));
    await rawPeer(port); // stays silent and idles out
    const [ack] = await busy.framesReceived(1);
    expect(parseHl7(ack!).get('MSA-2')).toBe('SLOW');
    expect(busy.socket.destroyed).toBe(false);
  });

  it('closes connections past maxConnections at once; the others keep working', async () => {
    const { port, log } = await startServer(ackHandler, { maxConnections: 2 });
    const a = await rawPeer(port);
    const b = await rawPeer(port);
    await log.waitFor((e) => e.type === 'connection_opened' && e.connectionId === 2);
    const c = await rawPeer(port);
    const dropped = await log.closed();
    expect(dropped.reason).toBe('max_connections');
    await c.closed;
    await a.write(encodeFrame(hl7('A')));
    await b.write(encodeFrame(hl7('B')));
    expect(parseHl7((await a.framesReceived(1))[0]!).get('MSA-2')).toBe('A');
    expect(parseHl7((await b.framesReceived(1))[0]!).get('MSA-2')).toBe('B');
  });

  it('closes without an ACK when the handler answers null, and drops the frames behind it', async () => {
    const seen: string[] = [];
    const { port, log } = await startServer(async (m) => {
      seen.push(parseHl7(m).controlId);
      return null;
    });
    const peer = await rawPeer(port);
    await peer.write(Buffer.concat([encodeFrame(hl7('N1')), encodeFrame(hl7('N2'))]));
    await peer.closed;
    expect((await log.closed()).reason).toBe('no_ack');
    expect(peer.frames).toHaveLength(0);
    expect(seen).toEqual(['N1']);
  });

  it('sends nothing and keeps the connection when the handler answers empty (no accept ACK wanted)', async () => {
    const { port } = await startServer(async (m) => (parseHl7(m).controlId === 'QUIET' ? '' : ackFor(m)));
    const peer = await rawPeer(port);
    await peer.write(Buffer.concat([encodeFrame(hl7('QUIET')), encodeFrame(hl7('LOUD'))]));
    const [only] = await peer.framesReceived(1);
    expect(parseHl7(only!).get('MSA-2')).toBe('LOUD');
    expect(peer.frames).toHaveLength(1);
    expect(peer.socket.destroyed).toBe(false);
  });

  it('closes without an ACK when the handler throws', async () => {
    const { port, log } = await startServer(async () => {
      throw new Error('store down');
    });
    const peer = await rawPeer(port);
    await peer.write(encodeFrame(hl7('T1')));
    await peer.closed;
    expect((await log.closed()).reason).toBe('handler_error');
    expect(peer.frames).toHaveLength(0);
  });

  it('gives the handler the peer address and a connection id; reports opened/closed', async () => {
    const peersSeen: MllpPeer[] = [];
    const { port, log } = await startServer(async (m, peer) => {
      peersSeen.push(peer);
      return ackFor(m);
    });
    const peer = await rawPeer(port);
    await peer.write(encodeFrame(hl7('P1')));
    await peer.framesReceived(1);
    peer.socket.end();
    const closed = await log.closed();
    expect(peersSeen[0]).toEqual({ remoteAddress: '127.0.0.1', remotePort: peer.socket.localPort, connectionId: 1, tls: false, trusted: false });
    expect(closed).toMatchObject({ reason: 'peer', messages: 1, connectionId: 1 });
    expect(log.events[0]).toMatchObject({ type: 'connection_opened', connectionId: 1, tls: false });
  });

  it('close() lets the handler in flight finish and delivers its ACK before ending', async () => {
    const release = deferred();
    const started = deferred();
    const { server, port, log } = await startServer(async (m) => {
      started.resolve();
      await release.promise;
      return ackFor(m);
    });
    const peer = await rawPeer(port);
    await peer.write(encodeFrame(hl7('LAST')));
    await started.promise;
    let closeDone = false;
    const closing = server.close().then(() => {
      closeDone = true;
    });
    await new Promise((resolve) => setImmediate(resolve));
    expect(closeDone).toBe(false);
    release.resolve();
    await closing;
    await peer.closed;
    expect(peer.frames.map((f) => parseHl7(f).get('MSA-2'))).toEqual(['LAST']);
    expect((await log.closed()).reason).toBe('server_close');
    // No longer accepting.
    await expect(RawPeer.connect(port)).rejects.toThrow(/ECONNREFUSED/);
  });

  it('rejects bad options with a message naming the option', () => {
    expect(() => new MllpServer({ handler: ackHandler, idleTimeoutMs: -1 })).toThrow(/idleTimeoutMs must be a positive whole number/);
    expect(() => new MllpServer({ handler: ackHandler, port: 70000 })).toThrow(/port must be 0-65535/);
    expect(() => new MllpServer({ handler: ackHandler, tls: { key: 'k', cert: 'c', requestClientCert: true } })).toThrow(/requestClientCert needs tls.ca/);
    expect(() => new MllpServer({ handler: ackHandler, maxConnections: 5, reservedConnections: 5 })).toThrow(/reservedConnections must be a whole number from 0 to maxConnections - 1 \(4\)/);
    expect(() => new MllpServer({ handler: ackHandler, trustedSenders: { addresses: ['ehr.example.org'] } })).toThrow(/not an IP address or CIDR subnet/);
  });

  it('exempts a trusted subnet from the per-address limit and the first-byte deadline; reports both in stats()', async () => {
    const { server, port, log } = await startServer(ackHandler, {
      maxConnectionsPerAddress: 1,
      firstByteTimeoutMs: 100,
      trustedSenders: { addresses: ['127.0.0.0/30'] }, // 127.0.0.0-127.0.0.3
    });
    const connectFrom = (localAddress: string): Promise<RawPeer> => RawPeer.connect(port, localAddress);
    const trusted = [await connectFrom('127.0.0.2'), await connectFrom('127.0.0.2')];
    peers.push(...trusted);
    const untrusted = await connectFrom('127.0.0.9');
    peers.push(untrusted);
    const second = await connectFrom('127.0.0.9');
    peers.push(second);
    await second.closed;
    expect(server.stats().refused.per_address_limit).toBe(1);
    await untrusted.closed; // the first-byte deadline
    expect((await log.waitFor((e) => e.type === 'connection_closed' && e.reason === 'first_byte_timeout')).remoteAddress).toBe('127.0.0.9');
    // The trusted ones are still open, and answered.
    await trusted[1]!.write(encodeFrame(hl7('T2')));
    expect(parseHl7((await trusted[1]!.framesReceived(1))[0]!).get('MSA-2')).toBe('T2');
    expect(server.stats()).toMatchObject({ trusted: 2, connections: 2, bufferedBytes: 0 });
  });
});

describe('startEchoMllpServer', () => {
  it('answers each frame with AA echoing MSH-10', async () => {
    const server = await startEchoMllpServer();
    servers.push(server);
    const client = new MllpClient({ host: '127.0.0.1', port: server.port });
    await client.connect();
    const ack = parseHl7(await client.send(hl7('E1'), { timeoutMs: 5000 }));
    expect([ack.get('MSA-1'), ack.get('MSA-2')]).toEqual(['AA', 'E1']);
    await client.close();
  });
});

describe('MllpServer over TLS', () => {
  let dir: string;
  let pki: TestPki;

  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'carerelay-mllp-tls-'));
    pki = makeTestPki(dir, { clientCN: 'epic-interface' });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('serves a client that verifies the server certificate (SAN IP 127.0.0.1)', async () => {
    const peersSeen: MllpPeer[] = [];
    const { port } = await startServer(
      async (m, peer) => {
        peersSeen.push(peer);
        return ackFor(m);
      },
      { tls: { key: pki.server.key, cert: pki.server.cert } },
    );
    const client = new MllpClient({ host: '127.0.0.1', port, tls: { ca: pki.ca.cert } });
    await client.connect();
    const ack = await client.send(hl7('TLS1'), { timeoutMs: 5000 });
    expect(parseHl7(ack).get('MSA-2')).toBe('TLS1');
    expect(peersSeen[0]?.tls).toBe(true);
    expect(peersSeen[0]?.certificate).toBeUndefined();
    await client.close();
  });

  it('closes a connection that never finishes the TLS handshake after idleTimeoutMs', async () => {
    const { port, log } = await startServer(ackHandler, { tls: { key: pki.server.key, cert: pki.server.cert }, idleTimeoutMs: 200 });
    const silent = await rawPeer(port); // TCP only, never sends a ClientHello
    const closed = await log.closed();
    expect(closed).toMatchObject({ reason: 'idle', errorCode: 'ERR_TLS_HANDSHAKE_TIMEOUT' });
    await silent.closed;
  });

  it('is refused by a client that does not trust the server CA', async () => {
    const { port } = await startServer(ackHandler, { tls: { key: pki.server.key, cert: pki.server.cert } });
    const client = new MllpClient({ host: '127.0.0.1', port, tls: { ca: pki.untrustedCa.cert } });
    await expect(client.connect()).rejects.toThrow(/cannot open MLLP\/TLS connection/);
  });

  describe('mutual TLS', () => {
    const mtls = (): MllpServerOptions['tls'] => ({ key: pki.server.key, cert: pki.server.cert, ca: pki.ca.cert, requestClientCert: true });

    it('accepts a client certificate from the CA and shows the handler its CN', async () => {
      const peersSeen: MllpPeer[] = [];
      const { port } = await startServer(
        async (m, peer) => {
          peersSeen.push(peer);
          return ackFor(m);
        },
        { tls: mtls() },
      );
      const client = new MllpClient({ host: '127.0.0.1', port, tls: { ca: pki.ca.cert, cert: pki.client.cert, key: pki.client.key } });
      await client.connect();
      const ack = await client.send(hl7('M1'), { timeoutMs: 5000 });
      expect(parseHl7(ack).get('MSA-2')).toBe('M1');
      expect(peersSeen[0]?.certificate?.subjectCN).toBe('epic-interface');
      expect(peersSeen[0]?.certificate?.subject).toBe('CN=epic-interface, O=CareRelay Test');
      expect(peersSeen[0]?.certificate?.fingerprint256).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
      await client.close();
    });

    for (const variant of ['no client certificate', 'a certificate from an untrusted CA'] as const) {
      it(`cannot be used with ${variant}`, async () => {
        let calls = 0;
        const { port, log } = await startServer(
          async (m) => {
            calls++;
            return ackFor(m);
          },
          { tls: mtls() },
        );
        const identity = variant === 'no client certificate' ? {} : { cert: pki.untrustedClient.cert, key: pki.untrustedClient.key };
        const client = new MllpClient({ host: '127.0.0.1', port, tls: { ca: pki.ca.cert, ...identity } });
        // TLS 1.3: the client finishes its side before the server checks the certificate,
        // so the refusal shows either at connect or on the first send.
        const delivered = (async () => {
          await client.connect();
          return client.send(hl7('NOPE'), { timeoutMs: 5000 });
        })();
        await expect(delivered).rejects.toThrow(/cannot open|closed/);
        const closed = await log.closed();
        expect(closed.reason).toBe('tls_handshake');
        expect(calls).toBe(0);
        await client.close();
      });
    }
  });
});
