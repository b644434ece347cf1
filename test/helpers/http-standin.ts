// The plumbing every HTTP provider stand-in shares (test/helpers/<tool>-standin.ts): a server on
// 127.0.0.1 with an ephemeral port that records each request in full, can be told to answer the
// next requests with a given status and headers, to hang (take the request, never answer) or to
// reset the connection after the request, counts requests in flight, and lets a test wait for
// a number of arrivals instead of sleeping. What a provider documents — paths, auth, content
// types, body shapes, limits, its error bodies — is each stand-in's own `handle`.
import http, { type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Arrivals } from './arrivals.ts';

export interface RecordedRequest {
  method: string;
  /** Path without the query string. */
  path: string;
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
  text: string;
  /** The body parsed as JSON when it is JSON, else undefined. */
  json: unknown;
  /** The body's form fields when it is form-encoded. */
  form: URLSearchParams | undefined;
  /** What the stand-in answered (0: no answer). */
  status: number;
}

export interface Answer {
  status: number;
  headers?: Record<string, string>;
  /** A JSON value (sent as JSON), a string or Buffer (sent as is), or nothing. */
  body?: unknown;
}

export type Fault = ({ kind: 'answer' } & Answer) | { kind: 'hang' } | { kind: 'reset' };

export interface HttpStandIn {
  /** e.g. http://127.0.0.1:41234 */
  readonly baseUrl: string;
  readonly requests: RecordedRequest[];
  /** Requests received and not answered yet. */
  inFlight(): number;
  failNext(fault: Fault, count?: number): void;
  /** Resolves once `n` requests have arrived in full. */
  waitForRequests(n: number): Promise<void>;
  /** Answers every hanging request with `answer` (a test that held requests in flight lets them go). */
  release(answer: Answer): void;
  close(): Promise<void>;
}

export type Handler = (request: RecordedRequest) => Answer | 'hang';

/** Starts a stand-in whose answers come from `handle` unless a fault was queued. */
export async function startHttpStandIn(handle: Handler): Promise<HttpStandIn> {
  const requests: RecordedRequest[] = [];
  const faults: Fault[] = [];
  const hanging = new Set<http.ServerResponse>();
  const arrivals = new Arrivals();
  let inFlight = 0;

  const write = (res: http.ServerResponse, record: RecordedRequest, answer: Answer): void => {
    record.status = answer.status;
    const headers = { ...answer.headers };
    let body: Buffer | undefined;
    if (Buffer.isBuffer(answer.body)) body = answer.body;
    else if (typeof answer.body === 'string') body = Buffer.from(answer.body);
    else if (answer.body !== undefined) {
      body = Buffer.from(JSON.stringify(answer.body));
      headers['content-type'] ??= 'application/json';
    }
    res.writeHead(answer.status, headers).end(body);
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      inFlight++;
      res.on('close', () => {
        inFlight--;
        hanging.delete(res);
      });
      const url = new URL(req.url ?? '/', 'http://stand-in');
      const text = Buffer.concat(chunks).toString('utf8');
      const type = req.headers['content-type'] ?? '';
      let json: unknown;
      if (type.startsWith('application/json')) {
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
      }
      const record: RecordedRequest = {
        method: req.method ?? '',
        path: url.pathname,
        query: url.searchParams,
        headers: req.headers,
        text,
        json,
        form: type.startsWith('application/x-www-form-urlencoded') ? new URLSearchParams(text) : undefined,
        status: 0,
      };
      requests.push(record);
      arrivals.arrive();
      const fault = faults.shift();
      if (fault?.kind === 'hang') {
        hanging.add(res);
        return;
      }
      if (fault?.kind === 'reset') {
        req.socket.destroy();
        return;
      }
      if (fault?.kind === 'answer') {
        write(res, record, fault);
        return;
      }
      const answer = handle(record);
      if (answer === 'hang') {
        hanging.add(res);
        // Answered later by release() with what the handler decided then.
        (res as http.ServerResponse & { record?: RecordedRequest }).record = record;
        return;
      }
      write(res, record, answer);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    baseUrl: `http://127.0.0.1:${port}`,
    requests,
    inFlight: () => inFlight,
    failNext(fault, count = 1) {
      for (let i = 0; i < count; i++) faults.push(fault);
    },
    waitForRequests: (n) => arrivals.waitFor(n),
    release(answer) {
      for (const res of [...hanging]) {
        hanging.delete(res);
        const record = (res as http.ServerResponse & { record?: RecordedRequest }).record;
        if (record) write(res, record, answer);
        else res.destroy();
      }
    },
    async close() {
      for (const res of hanging) res.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The value of a header (the first of a repeated one). */
export function header(request: RecordedRequest, name: string): string | undefined {
  const value = request.headers[name.toLowerCase()];
  return Array.isArray(value) ? value[0] : value;
}
