import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { AmbiguousError, TransientError } from '../errors.ts';
import { encodeFrame, MllpFramer } from './mllp.ts';
import { MllpClient } from './mllp-client.ts';
import { parseHl7 } from './parse.ts';

function hl7(id: string): Buffer {
  return Buffer.from(`MSH|^~\\&|CARERELAY|GHH|EHR|GHH|20250301120000||SIU^S12|${id}|P|2.5.1\rSCH|A1^X|F1^X\r`);
}

function ack(controlId: string, code = 'AA'): Buffer {
  return encodeFrame(`MSH|^~\\&|EHR|GHH|CARERELAY|GHH|20250301120001||ACK|K-${controlId}|P|2.5.1\rMSA|${code}|${controlId}\r`);
}

interface FakeConnection {
  socket: net.Socket;
  /** Message control ids received on this connection, in order. */
  received: string[];
  closed: Promise<void>;
}

/**
 * A scripted MLLP receiver: `onMessage` decides what to write back for each frame (or
 * nothing), so tests can send stale ACKs, hold ACKs back or drop the connection.
 */
async function fakeReceiver(onMessage: (id: string, conn: FakeConnection) => void): Promise<{
  port: number;
  connections: FakeConnection[];
  nextConnection: () => Promise<FakeConnection>;
}> {
  const connections: FakeConnection[] = [];
  let waiting: ((c: FakeConnection) => void) | undefined;
  const server = net.createServer((socket) => {
    const framer = new MllpFramer();
    const conn: FakeConnection = {
      socket,
      received: [],
      closed: new Promise((resolve) => socket.once('close', () => resolve())),
    };
    connections.push(conn);
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => {
      for (const frame of framer.push(chunk)) {
        const id = parseHl7(frame).get('MSH-10');
        conn.received.push(id);
        onMessage(id, conn);
      }
    });
    waiting?.(conn);
    waiting = undefined;
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  cleanups.push(async () => {
    for (const c of connections) c.socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return {
    port,
    connections,
    nextConnection: () => new Promise((resolve) => (waiting = resolve)),
  };
}

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function connectedClient(port: number): Promise<MllpClient> {
  const client = new MllpClient({ host: '127.0.0.1', port });
  await client.connect();
  cleanups.push(() => client.close());
  return client;
}

describe('MllpClient', () => {
  it('returns the ACK whose MSA-2 matches MSH-10, discarding a stale one first', async () => {
    const receiver = await fakeReceiver((id, conn) => {
      conn.socket.write(Buffer.concat([ack('OLD-1'), ack(id)]));
    });
    const client = await connectedClient(receiver.port);
    const reply = parseHl7(await client.send(hl7('NEW-2'), { timeoutMs: 5000 }));
    expect(reply.get('MSA-2')).toBe('NEW-2');
    expect(client.discardedAcks).toBe(1);
  });

  it('also discards an unparseable frame and an ACK that arrives when nothing is in flight', async () => {
    const receiver = await fakeReceiver((id, conn) => {
      conn.socket.write(Buffer.concat([encodeFrame('garbage'), ack(id)]));
    });
    const client = await connectedClient(receiver.port);
    await client.send(hl7('G1'), { timeoutMs: 5000 });
    expect(client.discardedAcks).toBe(1);
    receiver.connections[0]!.socket.write(ack('UNSOLICITED'));
    // The next exchange on the same connection happens after the unsolicited frame.
    const reply = parseHl7(await client.send(hl7('G2'), { timeoutMs: 5000 }));
    expect(reply.get('MSA-2')).toBe('G2');
    expect(client.discardedAcks).toBe(3);
  });

  it('times out with an ambiguous error, closes the connection, and never matches the late ACK to the next message', async () => {
    let held: FakeConnection | undefined;
    const receiver = await fakeReceiver((id, conn) => {
      if (id === 'SLOW') held = conn;
      else conn.socket.write(Buffer.concat([ack('SLOW'), ack(id)]));
    });
    const client = await connectedClient(receiver.port);
    const error = await client.send(hl7('SLOW'), { timeoutMs: 100 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AmbiguousError);
    expect((error as AmbiguousError).code).toBe('mllp_ack_timeout');
    expect((error as Error).message).toMatch(/no ACK for MSH-10 "SLOW" .* within 100 ms/);
    expect(client.connected).toBe(false);
    await held!.closed; // the receiver sees the connection go

    await expect(client.send(hl7('NEXT'), { timeoutMs: 5000 })).rejects.toBeInstanceOf(TransientError);
    const second = receiver.nextConnection();
    await client.connect();
    await second;
    // The receiver now answers with the stale SLOW ACK first: it must be skipped.
    const reply = parseHl7(await client.send(hl7('NEXT'), { timeoutMs: 5000 }));
    expect(reply.get('MSA-2')).toBe('NEXT');
    expect(client.discardedAcks).toBe(1);
  });

  it('sendWithoutAck writes a message that asks for no ACK and waits for none; an ACK sent anyway is discarded', async () => {
    const receiver = await fakeReceiver((id, conn) => {
      conn.socket.write(ack(id)); // a receiver that acknowledges every message anyway
    });
    const client = await connectedClient(receiver.port);
    await client.sendWithoutAck(hl7('QUIET-1'));
    const reply = parseHl7(await client.send(hl7('LOUD-2'), { timeoutMs: 5000 }));
    expect(reply.get('MSA-2')).toBe('LOUD-2');
    expect(receiver.connections[0]!.received).toEqual(['QUIET-1', 'LOUD-2']);
    expect(client.discardedAcks).toBe(1);
  });

  it('keeps one message in flight: a second send waits for the first ACK', async () => {
    let outstanding = 0;
    let maxOutstanding = 0;
    const receiver = await fakeReceiver((id, conn) => {
      outstanding++;
      maxOutstanding = Math.max(maxOutstanding, outstanding);
      // Answer on a later turn so queued sends would have a chance to overtake.
      setImmediate(() => {
        outstanding--;
        conn.socket.write(ack(id));
      });
    });
    const client = await connectedClient(receiver.port);
    const ids = ['Q1', 'Q2', 'Q3', 'Q4', 'Q5'];
    const replies = await Promise.all(ids.map((id) => client.send(hl7(id), { timeoutMs: 5000 })));
    expect(replies.map((r) => parseHl7(r).get('MSA-2'))).toEqual(ids);
    expect(receiver.connections[0]!.received).toEqual(ids);
    expect(maxOutstanding).toBe(1);
  });

  it('rejects a waiting send when the connection closes', async () => {
    const receiver = await fakeReceiver((_id, conn) => conn.socket.destroy());
    const client = await connectedClient(receiver.port);
    const error = await client.send(hl7('X1'), { timeoutMs: 5000 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AmbiguousError);
    expect((error as AmbiguousError).code).toBe('mllp_connection_closed');
    expect(client.connected).toBe(false);
  });

  it('refuses to send before connect() and reports a refused connection clearly', async () => {
    const receiver = await fakeReceiver(() => {});
    const client = new MllpClient({ host: '127.0.0.1', port: receiver.port });
    await expect(client.send(hl7('Z'))).rejects.toThrow(/not connected: call connect\(\) first/);
    const closedPort = receiver.port;
    await cleanups.pop()!(); // stop the receiver: its port now refuses
    await expect(new MllpClient({ host: '127.0.0.1', port: closedPort }).connect()).rejects.toThrow(
      new RegExp(`cannot open MLLP connection to 127.0.0.1:${closedPort}: .*ECONNREFUSED`),
    );
  });
});
