// The HTTP face of the running server: health, admin authentication (bearer token),
// message filters and paging, bad queries, and the body limits of HL7 ingest — including
// docs/reliability.md promise 11: an unauthenticated upload is answered 401 before its body is read.
import http from 'node:http';
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseHl7 } from '../src/hl7v2/parse.ts';
import type { InboundRecord } from '../src/store/store.ts';
import { MessageStatus } from '../src/types.ts';
import { siuMessage, startServer, writeConfigDir, type InProcessServer, type TestConfigDir } from './helpers/server.ts';

const ADMIN_TOKEN = 'admin-token-for-tests-0123456789';
const INGEST_TOKEN = 'ingest-token-for-tests-9876543210';
/** main.ts HTTP_MAX_BODY_BYTES (10 MiB). */
const INGEST_LIMIT = 10 * 1024 * 1024;

let config: TestConfigDir;
let server: InProcessServer;

function url(path: string): string {
  return `http://127.0.0.1:${server.httpPort}${path}`;
}

/** GET with `Authorization: Bearer <token>`; null sends no Authorization header. */
function admin(path: string, token: string | null = ADMIN_TOKEN): Promise<Response> {
  return fetch(url(path), token === null ? {} : { headers: { authorization: `Bearer ${token}` } });
}

interface Page {
  items: Array<{ id: string; sender: string; controlId: string; status: string; input: string; receivedAt: string }>;
  next?: string;
}

async function page(path: string): Promise<Page> {
  const res = await admin(path);
  expect(res.status, path).toBe(200);
  return (await res.json()) as Page;
}

/** A record committed straight into the server's store, at a chosen receivedAt. */
function record(sender: string, controlId: string, receivedAt: string, status: MessageStatus = MessageStatus.Accepted): InboundRecord {
  const raw = Buffer.from(`MSH|^~\\&|${sender.replace('^', '|')}|CARERELAY|CR|20200101000000||ADT^A08|${controlId}|P|2.5.1\r`);
  return {
    input: 'seeded',
    format: 'hl7v2',
    sender,
    controlId,
    messageType: 'ADT^A08',
    contentHash: createHash('sha256').update(raw).digest('hex'),
    raw,
    status,
    ack: `MSH|^~\\&|CARERELAY|CR|||20200101000000||ACK|ACK-${controlId}|P|2.5.1\rMSA|AA|${controlId}\r`,
    ackCode: 'AA',
    receivedAt,
    triggers: [],
    subjectStates: [],
  };
}

beforeAll(async () => {
  config = writeConfigDir({ httpInputs: [{ name: 'ehr-http' }, { name: 'secure-http', tokenEnv: 'EHR_HTTP_TOKEN' }] });
  server = await startServer(config, { CARERELAY_ADMIN_TOKEN: ADMIN_TOKEN, EHR_HTTP_TOKEN: INGEST_TOKEN });
  // Seven messages in 2020, one hour apart: five from LAB^NORTH, two from RIS^SOUTH.
  for (let h = 0; h < 7; h++) {
    const sender = h < 5 ? 'LAB^NORTH' : 'RIS^SOUTH';
    const status = h === 3 ? MessageStatus.Ignored : MessageStatus.Accepted;
    await server.store.commitInbound(record(sender, `SEED-${h}`, `2020-01-01T0${h}:00:00Z`, status));
  }
});

afterAll(async () => {
  await server?.stop();
  config?.remove();
});

describe('health', () => {
  it('answers /healthz and /readyz without a token', async () => {
    const live = await fetch(url('/healthz'));
    expect(live.status).toBe(200);
    expect(await live.json()).toEqual({ status: 'ok' });
    const ready = await fetch(url('/readyz'));
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ status: 'ready' });
  });
});

describe('admin authentication (CARERELAY_ADMIN_TOKEN set)', () => {
  it.each([
    ['no token', null],
    ['a wrong token', 'not-the-token'],
    ['the token with one character more', `${ADMIN_TOKEN}x`],
    ['an empty token', ''],
  ])('refuses %s with 401 problem+json and WWW-Authenticate', async (_name, token) => {
    for (const path of ['/api/messages', '/api/triggers', '/api/messages/1']) {
      const res = await admin(path, token);
      expect(res.status, path).toBe(401);
      expect(res.headers.get('www-authenticate')).toBe('Bearer');
      expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(await res.json()).toMatchObject({ status: 401, title: 'Unauthorized' });
    }
  });

  it('refuses another scheme carrying the right token', async () => {
    const res = await fetch(url('/api/messages'), { headers: { authorization: `Basic ${ADMIN_TOKEN}` } });
    expect(res.status).toBe(401);
  });

  it('serves the admin API with the right token', async () => {
    expect((await admin('/api/messages')).status).toBe(200);
    expect((await admin('/api/triggers')).status).toBe(200);
  });
});

describe('GET /api/messages filters and paging', () => {
  it('filters by sender, controlId, status and input', async () => {
    expect((await page('/api/messages?sender=RIS%5ESOUTH')).items.map((m) => m.controlId)).toEqual(['SEED-6', 'SEED-5']);
    expect((await page('/api/messages?controlId=SEED-2')).items.map((m) => m.controlId)).toEqual(['SEED-2']);
    expect((await page('/api/messages?status=ignored')).items.map((m) => m.controlId)).toEqual(['SEED-3']);
    expect((await page('/api/messages?input=seeded')).items).toHaveLength(7);
    expect((await page('/api/messages?sender=LAB%5ENORTH&status=accepted')).items).toHaveLength(4);
    expect((await page('/api/messages?controlId=NOPE')).items).toEqual([]);
  });

  it('filters by since/until (inclusive) on receivedAt, newest first', async () => {
    const p = await page('/api/messages?since=2020-01-01T01:00:00Z&until=2020-01-01T03:00:00Z');
    expect(p.items.map((m) => m.controlId)).toEqual(['SEED-3', 'SEED-2', 'SEED-1']);
    // An offset is an instant: 02:30+01:00 is 01:30Z.
    const q = await page('/api/messages?input=seeded&until=2020-01-01T02:30:00%2B01:00');
    expect(q.items.map((m) => m.controlId)).toEqual(['SEED-1', 'SEED-0']);
  });

  it('pages with limit and next until every message was seen exactly once', async () => {
    const seen: string[] = [];
    let path = '/api/messages?input=seeded&limit=3';
    for (let guard = 0; guard < 10; guard++) {
      const p = await page(path);
      expect(p.items.length).toBeLessThanOrEqual(3);
      seen.push(...p.items.map((m) => m.controlId));
      if (p.next === undefined) break;
      expect(p.next).toBe(p.items[p.items.length - 1]!.id);
      path = `/api/messages?input=seeded&limit=3&before=${p.next}`;
    }
    expect(seen).toEqual(['SEED-6', 'SEED-5', 'SEED-4', 'SEED-3', 'SEED-2', 'SEED-1', 'SEED-0']);
  });

  it.each([
    ['limit=0', /limit/],
    ['limit=1001', /limit/],
    ['limit=ten', /limit/],
    ['limit=2.5', /limit/],
    ['since=yesterday', /since/],
    ['until=2020-13-45T00:00:00Z', /until/],
    ['status=lost', /status/],
    ['before=999999999', /before/],
    ['before=abc', /before/],
  ])('answers 400 problem+json to %s, naming the parameter', async (query, named) => {
    const res = await admin(`/api/messages?${query}`);
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    const problem = (await res.json()) as { status: number; detail: string };
    expect(problem.status).toBe(400);
    expect(problem.detail).toMatch(named);
  });

  it('answers 400 to a bad trigger query and 404 problem+json to an unknown message id', async () => {
    expect((await admin('/api/triggers?since=soon')).status).toBe(400);
    const res = await admin('/api/messages/987654321');
    expect(res.status).toBe(404);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  });
});

/**
 * Streams `total` bytes as a POST body (Content-Length set, no Expect: 100-continue) and
 * stops writing as soon as a response arrives. Resolves with the status and how many
 * bytes had been handed to the socket by then.
 */
function uploadUntilAnswered(
  path: string,
  total: number,
  headers: Record<string, string> = {},
): Promise<{ status: number; writtenWhenAnswered: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port: server.httpPort,
      method: 'POST',
      path,
      headers: { 'content-type': 'x-application/hl7-v2+er7', 'content-length': String(total), ...headers },
    });
    const chunk = Buffer.alloc(64 * 1024, 0x41);
    let written = 0;
    let answered = false;
    req.on('response', (res) => {
      answered = true;
      const writtenWhenAnswered = written;
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => {
        req.destroy();
        resolve({ status: res.statusCode!, writtenWhenAnswered, body: Buffer.concat(parts).toString('utf8') });
      });
    });
    req.on('error', (error) => {
      if (!answered) reject(error);
    });
    const pump = (): void => {
      while (!answered && written < total) {
        const n = Math.min(chunk.length, total - written);
        written += n;
        if (!req.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
          req.once('drain', pump);
          return;
        }
      }
      if (!answered) req.end();
    };
    pump();
  });
}

describe('bodies: authentication first, then the size limit', () => {
  const FIFTY_MB = 50 * 1024 * 1024;

  it('answers an unauthenticated 50 MB admin POST with 401 before the upload completes', async () => {
    const started = performance.now();
    const result = await uploadUntilAnswered('/api/messages', FIFTY_MB);
    expect(result.status).toBe(401);
    // Had the body been read before the token check, no answer could come before the last byte.
    expect(result.writtenWhenAnswered).toBeLessThan(FIFTY_MB);
    expect(performance.now() - started).toBeLessThan(5_000);
  });

  it('answers an unauthenticated 50 MB HL7 ingest POST with 401 before the upload completes', async () => {
    const result = await uploadUntilAnswered('/ingest/hl7v2/secure-http', FIFTY_MB, { authorization: 'Bearer wrong' });
    expect(result.status).toBe(401);
    expect(result.writtenWhenAnswered).toBeLessThan(FIFTY_MB);
    expect(JSON.parse(result.body)).toMatchObject({ status: 401 });
  });

  it('answers 413 problem+json to an ingest body one byte over the limit (Content-Length)', async () => {
    // The body parser discards (does not buffer) the rest of an oversized body before it
    // answers, so only the status is asserted here, not how early it comes.
    const result = await uploadUntilAnswered('/ingest/hl7v2/ehr-http', INGEST_LIMIT + 1);
    expect(result.status).toBe(413);
    expect(JSON.parse(result.body)).toMatchObject({ status: 413, title: 'Payload too large' });
    // Exactly at the limit is accepted by the parser (and refused by the HL7 parser: AR).
    const atLimit = await uploadUntilAnswered('/ingest/hl7v2/ehr-http', INGEST_LIMIT);
    expect(atLimit.status).toBe(200);
    expect(parseHl7(atLimit.body).get('MSA-1')).toBe('AR');
  });

  it('answers 413 to a chunked ingest body that grows past the limit', async () => {
    const res = await fetch(url('/ingest/hl7v2/ehr-http'), {
      method: 'POST',
      body: new ReadableStream({
        start(controller) {
          // 11 MiB in 1 MiB chunks, no Content-Length.
          for (let i = 0; i < 11; i++) controller.enqueue(new Uint8Array(1024 * 1024).fill(0x41));
          controller.close();
        },
      }),
      duplex: 'half',
    } as RequestInit);
    expect(res.status).toBe(413);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  });

  it('requires the input bearer token on a protected HL7 ingest input', async () => {
    const message = siuMessage({ controlId: 'API-SECURE-1', appointmentId: 'AP-API-1' });
    const post = (headers: Record<string, string>) =>
      fetch(url('/ingest/hl7v2/secure-http'), { method: 'POST', headers: { 'content-type': 'x-application/hl7-v2+er7', ...headers }, body: message });
    const missing = await post({});
    expect(missing.status).toBe(401);
    expect(missing.headers.get('www-authenticate')).toBe('Bearer');
    expect((await post({ authorization: `Bearer ${ADMIN_TOKEN}` })).status).toBe(401);
    // Nothing was stored by the refused attempts.
    expect((await page('/api/messages?controlId=API-SECURE-1')).items).toEqual([]);

    const ok = await post({ authorization: `Bearer ${INGEST_TOKEN}` });
    expect(ok.status).toBe(200);
    expect(parseHl7(await ok.text()).get('MSA-1')).toBe('AA');
    expect((await page('/api/messages?controlId=API-SECURE-1')).items).toHaveLength(1);
  });

  it('answers 404 problem+json to an unknown ingest input and 400 to an empty body', async () => {
    const unknown = await fetch(url('/ingest/hl7v2/nope'), { method: 'POST', body: 'MSH|' });
    expect(unknown.status).toBe(404);
    expect(unknown.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    const empty = await fetch(url('/ingest/hl7v2/ehr-http'), { method: 'POST', body: '' });
    expect(empty.status).toBe(400);
  });
});
