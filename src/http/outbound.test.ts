import http from 'node:http';
import type net from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AmbiguousError, PermanentError, TransientError } from '../errors.ts';
import { AddressPolicy, KeepAlive, parseRetryAfter, sendOnce, type OutboundRequest } from './outbound.ts';

describe('AddressPolicy', () => {
  it('refuses non-public addresses unless allow-listed', () => {
    const none = new AddressPolicy();
    for (const address of ['127.0.0.1', '10.1.2.3', '172.16.0.1', '192.168.1.1', '169.254.169.254', '100.64.0.1', '0.0.0.0', '::1', 'fe80::1', 'fd00::1', '::ffff:127.0.0.1', '[::1]']) {
      expect(none.permits(address), address).toBe(false);
    }
    for (const address of ['93.184.216.34', '2606:4700::1111', '::ffff:8.8.8.8']) expect(none.permits(address), address).toBe(true);
    expect(none.permits('example.org')).toBe(false);
    const some = new AddressPolicy(['127.0.0.1', '10.20.0.0/16', 'fd00::/8']);
    expect(some.permits('127.0.0.1')).toBe(true);
    expect(some.permits('127.0.0.2')).toBe(false);
    expect(some.permits('10.20.9.9')).toBe(true);
    expect(some.permits('10.21.0.1')).toBe(false);
    expect(some.permits('fd12::1')).toBe(true);
  });

  it('names an allow-list entry that is not an address', () => {
    expect(() => new AddressPolicy(['intranet.local'])).toThrow(/"intranet.local" is not an IP address or CIDR block/);
    expect(() => new AddressPolicy(['10.0.0.0/33'])).toThrow(/10.0.0.0\/33/);
  });
});

it('parseRetryAfter reads seconds and HTTP-dates', () => {
  const now = Date.UTC(2030, 0, 1);
  expect(parseRetryAfter('7', now)).toBe(7000);
  expect(parseRetryAfter(new Date(now + 90_000).toUTCString(), now)).toBe(90_000);
  expect(parseRetryAfter('soon', now)).toBeUndefined();
});

describe('sendOnce', () => {
  let server: http.Server;
  let base: string;
  let behaviour: (req: http.IncomingMessage, res: http.ServerResponse) => void;
  let requests: string[];

  beforeEach(async () => {
    requests = [];
    behaviour = (_req, res) => res.end('ok');
    server = http.createServer((req, res) => {
      requests.push(`${req.method} ${req.url}`);
      req.resume();
      req.on('end', () => behaviour(req, res));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterEach(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  const loopback = new AddressPolicy(['127.0.0.1']);
  const request = (path: string, extra: Partial<OutboundRequest> = {}): OutboundRequest => ({
    url: new URL(path, base),
    headers: { 'content-type': 'application/json' },
    body: Buffer.from('{}'),
    timeoutMs: 2_000,
    addresses: loopback,
    codePrefix: 'test',
    ...extra,
  });

  it('returns the answer of one request', async () => {
    const response = await sendOnce(request('/a'));
    expect(response.status).toBe(200);
    expect(response.body.toString()).toBe('ok');
    expect(requests).toEqual(['POST /a']);
  });

  it('refuses a loopback address that is not allow-listed, by literal and by name, before connecting', async () => {
    await expect(sendOnce(request('/a', { addresses: new AddressPolicy() }))).rejects.toMatchObject({ code: 'test_address_refused' });
    const byName = sendOnce(request(`http://localhost:${new URL(base).port}/b`, { addresses: new AddressPolicy() }));
    await expect(byName).rejects.toBeInstanceOf(PermanentError);
    await expect(byName).rejects.toMatchObject({ code: 'test_address_refused' });
    expect(requests).toEqual([]);
  });

  it('follows a 307 to the same origin; returns a redirect to another host unfollowed', async () => {
    behaviour = (req, res) => {
      if (req.url === '/old') res.writeHead(307, { location: '/new' }).end();
      else if (req.url === '/away') res.writeHead(308, { location: 'http://127.0.0.2:1/x' }).end();
      else res.end('moved');
    };
    expect((await sendOnce(request('/old'))).body.toString()).toBe('moved');
    expect(requests).toEqual(['POST /old', 'POST /new']);
    expect((await sendOnce(request('/away'))).status).toBe(308);
    expect(requests).toHaveLength(3);
  });

  it('a hang after the request left is ambiguous; a refused connection is transient', async () => {
    behaviour = () => {};
    const hang = sendOnce(request('/hang', { timeoutMs: 150 }));
    await expect(hang).rejects.toBeInstanceOf(AmbiguousError);
    await expect(hang).rejects.toMatchObject({ code: 'test_timeout' });
    const closed = await new Promise<number>((resolve) => {
      const s = http.createServer().listen(0, '127.0.0.1', () => {
        const port = (s.address() as AddressInfo).port;
        s.close(() => resolve(port));
      });
    });
    const refused = sendOnce(request(`http://127.0.0.1:${closed}/x`));
    await expect(refused).rejects.toBeInstanceOf(TransientError);
    await expect(refused).rejects.toMatchObject({ code: 'test_unreachable' });
  });

  it('a connection reset after the request left is ambiguous', async () => {
    behaviour = (req) => req.socket.destroy();
    await expect(sendOnce(request('/reset'))).rejects.toMatchObject({ code: 'test_connection_lost', failureClass: 'ambiguous' });
  });

  describe('with kept-alive connections', () => {
    let pool: KeepAlive;
    let connections: net.Socket[];
    beforeEach(() => {
      connections = [];
      server.on('connection', (socket) => connections.push(socket));
    });
    afterEach(() => pool.close());

    it('sends one request after the other on one connection', async () => {
      pool = new KeepAlive();
      for (const path of ['/a', '/b', '/c']) expect((await sendOnce(request(path, { keepAlive: pool }))).status).toBe(200);
      expect(requests).toEqual(['POST /a', 'POST /b', 'POST /c']);
      expect(connections).toHaveLength(1);
    });

    it('checks the address of a kept connection each time it is reused', async () => {
      pool = new KeepAlive();
      const byName = `http://localhost:${new URL(base).port}`;
      expect((await sendOnce(request(`${byName}/a`, { keepAlive: pool }))).status).toBe(200);
      // The same pool, a request whose allow-list does not have the address the connection goes to.
      const refused = sendOnce(request(`${byName}/b`, { keepAlive: pool, addresses: new AddressPolicy() }));
      await expect(refused).rejects.toMatchObject({ code: 'test_address_refused', failureClass: 'permanent' });
      expect(requests).toEqual(['POST /a']);
      expect(connections).toHaveLength(1);
    });

    it('closes an idle connection after its idle time and opens a new one for the next request', async () => {
      pool = new KeepAlive({ idleMs: 50 });
      await sendOnce(request('/a', { keepAlive: pool }));
      await new Promise<void>((resolve) => connections[0]!.once('close', () => resolve()));
      await sendOnce(request('/b', { keepAlive: pool }));
      expect(connections).toHaveLength(2);
    });
  });

  it('honours the abort signal', async () => {
    behaviour = () => {};
    const controller = new AbortController();
    const pending = sendOnce(request('/slow', { signal: controller.signal, timeoutMs: 60_000 }));
    await new Promise<void>((resolve) => server.once('request', () => setImmediate(resolve)));
    controller.abort();
    await expect(pending).rejects.toMatchObject({ code: 'test_aborted', failureClass: 'ambiguous' });
    const before = new AbortController();
    before.abort();
    await expect(sendOnce(request('/x', { signal: before.signal }))).rejects.toMatchObject({ code: 'test_aborted', failureClass: 'transient' });
  });
});
