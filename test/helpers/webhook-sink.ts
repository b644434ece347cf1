// A Standard Webhooks receiver for tests, on 127.0.0.1 with an ephemeral port. It checks what
// the spec asks of a sender (POST, application/json, the three webhook-* headers, an integer
// timestamp within 5 minutes of its clock, a v1 signature that verifies with one of its
// secrets) and answers 400/401 when they are not met, records every request, and can be told
// to answer 429 with Retry-After, 5xx or 4xx, to redirect, to hang, or to reset the connection.
//
// The verification is written here with node:crypto, independently of src/webhooks, so a
// signing bug there cannot be hidden by the same bug in the checker.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { Arrivals } from './arrivals.ts';
import { FaultQueue } from './faults.ts';

export interface SinkRequest {
  id?: string;
  timestamp?: string;
  /** The signature verified with one of the sink's secrets. */
  signed: boolean;
  contentType?: string;
  body: string;
  /** What the sink answered (0: no answer). */
  status: number;
}

export type SinkFault =
  | { kind: 'status'; status: number; retryAfter?: string }
  | { kind: 'redirect'; status: 301 | 302 | 307 | 308; location: string }
  | { kind: 'hang' }
  | { kind: 'reset' };

export interface WebhookSink {
  readonly url: string;
  readonly requests: SinkRequest[];
  /** Bodies of the distinct webhook-ids accepted (what a deduping receiver processed). */
  accepted(): Map<string, unknown>;
  failNext(fault: SinkFault, count?: number): void;
  /** Resolves once `n` requests have arrived. */
  waitFor(n: number): Promise<void>;
  close(): Promise<void>;
}

const TOLERANCE_SECONDS = 300;
const MAX_BODY = 256 * 1024;

export interface WebhookSinkOptions {
  /** Standard Webhooks secrets (whsec_…base64). */
  secrets: string[];
  /** The sink's clock, ms. */
  now?: () => number;
  path?: string;
  /**
   * Decides the answer to a signed, well-formed request when no queued fault is pending:
   * `earlier` is how many requests with its webhook-id came before it (0: a first attempt).
   */
  answer?: (id: string, earlier: number) => Extract<SinkFault, { kind: 'status' }> | undefined;
}

export async function startWebhookSink(options: WebhookSinkOptions): Promise<WebhookSink> {
  const keys = options.secrets.map((s) => Buffer.from(s.replace(/^whsec_/, ''), 'base64'));
  const now = options.now ?? Date.now;
  const requests: SinkRequest[] = [];
  const faults = new FaultQueue<SinkFault>();
  const accepted = new Map<string, unknown>();
  const arrivals = new Arrivals();
  const seen = new Map<string, number>();

  const verify = (id: string, timestamp: string, signature: string, body: Buffer): boolean => {
    for (const key of keys) {
      const expected = createHmac('sha256', key).update(Buffer.concat([Buffer.from(`${id}.${timestamp}.`), body])).digest();
      for (const entry of signature.split(' ')) {
        if (!entry.startsWith('v1,')) continue;
        const presented = Buffer.from(entry.slice(3), 'base64');
        if (presented.length === expected.length && timingSafeEqual(presented, expected)) return true;
      }
    }
    return false;
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY) chunks.push(chunk);
    });
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const header = (name: string) => {
        const v = req.headers[name];
        return Array.isArray(v) ? v[0] : v;
      };
      const id = header('webhook-id');
      const timestamp = header('webhook-timestamp');
      const signature = header('webhook-signature') ?? '';
      const signed = id !== undefined && timestamp !== undefined && verify(id, timestamp, signature, body);
      const record: SinkRequest = { id, timestamp, signed, contentType: header('content-type'), body: body.toString('utf8'), status: 0 };
      requests.push(record);
      arrivals.arrive();
      const answer = (status: number, headers: Record<string, string> = {}) => {
        record.status = status;
        res.writeHead(status, { 'content-type': 'text/plain', ...headers }).end(String(status));
      };
      const earlier = id === undefined ? 0 : (seen.get(id) ?? 0);
      if (id !== undefined) seen.set(id, earlier + 1);
      const fault = faults.take(req, res) ?? (signed && options.answer ? options.answer(id!, earlier) : undefined);
      if (fault === 'handled') return;
      if (fault?.kind === 'redirect') return answer(fault.status, { location: fault.location });
      if (req.method !== 'POST' || (options.path !== undefined && req.url !== options.path)) return answer(404);
      if (!(record.contentType ?? '').startsWith('application/json') || size > MAX_BODY) return answer(415);
      if (id === undefined || timestamp === undefined || !/^\d{1,12}$/.test(timestamp)) return answer(400);
      if (Math.abs(Number(timestamp) - now() / 1000) > TOLERANCE_SECONDS || !signed) return answer(401);
      if (fault?.kind === 'status') return answer(fault.status, fault.retryAfter !== undefined ? { 'retry-after': fault.retryAfter } : {});
      try {
        if (!accepted.has(id)) accepted.set(id, JSON.parse(body.toString('utf8')));
      } catch {
        return answer(400);
      }
      answer(204);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}${options.path ?? '/hooks/carerelay'}`,
    requests,
    accepted: () => accepted,
    failNext: (fault, count) => faults.push(fault, count),
    waitFor: (n) => arrivals.waitFor(n),
    async close() {
      faults.releaseHanging();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The `outputs:` lines of a signed `webhook` output named hook to `sink` (secret in WEBHOOK_SECRET). */
export function webhookOutputLines(sink: WebhookSink): string[] {
  return ['outputs:', '  - name: hook', '    type: webhook', `    url: ${sink.url}`, '    secrets: [{ env: WEBHOOK_SECRET }]', '    allowPrivateAddresses: [127.0.0.1]', '    baa: true'];
}

/** Writes mappings/confirm.yaml into `configDir`: a confirmation per booking to the hook output, due `at`. */
export function writeConfirmRule(configDir: string, at: string): void {
  mkdirSync(path.join(configDir, 'mappings'), { recursive: true });
  writeFileSync(
    path.join(configDir, 'mappings', 'confirm.yaml'),
    ['rules:', '  - id: confirm', '    on: appointment.booked', '    purpose: care.logistics', '    channel: webhook', '    send: { output: hook, fields: [appointment.start] }', `    at: ${at}`, ''].join('\n'),
  );
}
