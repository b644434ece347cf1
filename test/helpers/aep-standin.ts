// A stand-in for Adobe Experience Platform streaming ingestion on 127.0.0.1: Adobe IMS's token
// endpoint (POST /ims/token/v3, form client credentials, { access_token, token_type: bearer,
// expires_in }) and one HTTP API streaming connection (POST /collection/{inletId}). It enforces
// what the streaming tutorials document: an authenticated inlet wants a valid Bearer token (401
// with Adobe's problem body otherwise), application/json, at most 1 MB (413), the envelope
// { header: { schemaRef: { id, contentType: application/vnd.adobe.xed-full+json;version=N },
// imsOrgId, datasetId }, body: { xdmMeta: { schemaRef }, xdmEntity } } with the dataset and schema
// of the connection, xdmEntity._id and an RFC 3339 timestamp not in the future, an identityMap of
// { id, authenticatedState, primary } entries, and only the fields of the dataset's schema (400
// "Invalid XDM Message Format" naming the extraneous key). It answers 200 { inletId, xactionId,
// receivedTimeMs } and can be told to answer 429, any status, to hang or to reset.
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import { Arrivals } from './arrivals.ts';
import { FaultQueue, listenOnLoopback } from './faults.ts';
import { readBody, TokenIssuer } from './oauth-standin.ts';

export interface AepRequest {
  path: string;
  headers: http.IncomingHttpHeaders;
  auth: 'valid' | 'expired' | 'invalid';
  body: unknown;
  /** xdmEntity._id when there was one. */
  id?: string;
  status: number;
}

export type AepFault = { kind: 'status'; status: number; retryAfter?: string } | { kind: 'hang' } | { kind: 'reset' };

export interface AepStandInOptions {
  now?: () => number;
  /** The connection requires a token (authenticationRequired: true). Default true. */
  authenticated?: boolean;
  /** Dotted paths the dataset's schema has beyond _id, timestamp, eventType and identityMap. */
  schemaFields?: string[];
}

export interface AepStandIn {
  readonly baseUrl: string;
  readonly inletUrl: string;
  readonly inletId: string;
  readonly orgId: string;
  readonly datasetId: string;
  readonly schemaId: string;
  readonly clientId: string;
  readonly clientSecret: string;
  readonly tokens: TokenIssuer;
  readonly requests: AepRequest[];
  /** xdmEntity of every record taken, in order (a repeated _id appears twice). */
  readonly records: Array<Record<string, unknown>>;
  failNext(fault: AepFault, count?: number): void;
  waitForRequests(n: number): Promise<void>;
  close(): Promise<void>;
}

const MAX_BYTES = 1024 * 1024;
const CORE_FIELDS = ['_id', 'timestamp', 'eventType', 'identityMap'];
const CONTENT_TYPE = /^application\/vnd\.adobe\.xed-full(-notext)?\+json; ?version=\d+(\.\d+)?$/;

function leafPaths(value: unknown, prefix = ''): string[] {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return [prefix];
  return Object.entries(value).flatMap(([k, v]) => leafPaths(v, prefix ? `${prefix}.${k}` : k));
}

export async function startAepStandIn(options: AepStandInOptions = {}): Promise<AepStandIn> {
  const now = options.now ?? Date.now;
  const authenticated = options.authenticated ?? true;
  const inletId = randomUUID().replace(/-/g, '') + randomUUID().replace(/-/g, '');
  const orgId = '7BF122A65C5B3FE40A494026@AdobeOrg';
  const datasetId = '5e72608b10f6e318ad2dee0f';
  const schemaId = 'https://ns.adobe.com/northclinic/schemas/9af5adccdb9c4692b82665d3abe68c22';
  const clientId = randomUUID().replace(/-/g, '');
  const clientSecret = `p8e-${randomUUID()}`;
  const schemaFields = options.schemaFields ?? ['_northclinic.patient.firstName', '_northclinic.patient.language', '_northclinic.appointment.start'];
  const requests: AepRequest[] = [];
  const records: Array<Record<string, unknown>> = [];
  const faults = new FaultQueue<AepFault>();
  const arrivals = new Arrivals();
  const tokens = new TokenIssuer({
    path: '/ims/token/v3',
    encoding: 'form',
    clients: [{ id: clientId, secret: clientSecret }],
    lifetimeSeconds: 86_399,
    sendExpiresIn: true,
    tokenType: 'bearer',
    now,
  });

  const server = http.createServer((req, res) => {
    void readBody(req).then((raw) => {
      if (tokens.handle(req, raw, res)) return;
      let body: unknown;
      try {
        body = JSON.parse(raw.toString('utf8'));
      } catch {
        body = undefined;
      }
      const entity = (body as { body?: { xdmEntity?: Record<string, unknown> } } | undefined)?.body?.xdmEntity;
      const record: AepRequest = { path: req.url ?? '', headers: req.headers, auth: tokens.check(req.headers.authorization), body, ...(typeof entity?._id === 'string' ? { id: entity._id } : {}), status: 0 };
      requests.push(record);
      arrivals.arrive();
      const answer = (status: number, json: unknown, headers: Record<string, string> = {}) => {
        record.status = status;
        res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(json));
      };
      const problem = (status: number, kind: string, title: string, message: string, extra: Record<string, unknown> = {}) =>
        answer(status, { type: `https://ns.adobe.com/adobecloud/problem/${kind}`, status, title, report: { message, ...extra } });
      const fault = faults.take(req, res);
      if (fault === 'handled') return;
      if (req.method !== 'POST' || req.url?.split('?')[0] !== `/collection/${inletId}`) return problem(404, 'data-collection-service/inlet', 'Not Found', 'unknown inlet');
      if (authenticated && record.auth !== 'valid') return problem(401, 'data-collection-service-authorization', 'Authorization', '[id] Ims service token is empty');
      // Adobe documents no Retry-After on 429/503; one is sent only when the test asks.
      if (fault?.kind === 'status') {
        record.status = fault.status;
        res.writeHead(fault.status, { 'content-type': 'application/json', ...(fault.retryAfter !== undefined ? { 'retry-after': fault.retryAfter } : {}) });
        res.end(JSON.stringify({ type: 'https://ns.adobe.com/adobecloud/problem/data-collection-service', status: fault.status, title: 'injected', report: { message: 'injected' } }));
        return;
      }
      if (raw.length > MAX_BYTES) return problem(413, 'data-collection-service', 'Payload Too Large', 'the message is over 1 MB');
      if (!(req.headers['content-type'] ?? '').startsWith('application/json')) return problem(415, 'data-collection-service', 'Unsupported Media Type', 'application/json only');
      const invalid = (message: string) => problem(400, 'data-collection-service/inlet', 'Invalid XDM Message Format', `inletId: [${inletId}] imsOrgId: [${orgId}] ${message}`);
      const b = body as { header?: Record<string, unknown>; body?: Record<string, unknown> } | undefined;
      const header = b?.header;
      const schemaRef = header?.schemaRef as { id?: unknown; contentType?: unknown } | undefined;
      if (typeof header !== 'object' || schemaRef?.id !== schemaId || typeof schemaRef.contentType !== 'string' || !CONTENT_TYPE.test(schemaRef.contentType)) return invalid('Message header schemaRef is missing or invalid');
      if (header.imsOrgId !== orgId) return invalid('imsOrgId does not match the connection');
      if (header.datasetId !== datasetId) return invalid('datasetId is unknown');
      const meta = (b?.body?.xdmMeta as { schemaRef?: { id?: unknown } } | undefined)?.schemaRef;
      if (meta?.id !== schemaId) return invalid('xdmMeta.schemaRef is missing or differs from the header');
      if (typeof entity !== 'object' || entity === null) return invalid('xdmEntity is missing');
      if (typeof entity._id !== 'string' || entity._id === '') return invalid('xdmEntity._id is required for time-series data');
      const ts = typeof entity.timestamp === 'string' ? Date.parse(entity.timestamp) : Number.NaN;
      if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(String(entity.timestamp)) || Number.isNaN(ts)) return invalid('xdmEntity.timestamp must be an RFC 3339 date-time');
      if (ts > now()) return invalid('xdmEntity.timestamp must not be in the future');
      const identities = entity.identityMap;
      if (typeof identities !== 'object' || identities === null) return invalid('identityMap is required');
      for (const list of Object.values(identities)) {
        if (!Array.isArray(list) || list.some((e) => typeof e?.id !== 'string' || !['ambiguous', 'authenticated', 'loggedOut'].includes(e?.authenticatedState))) return invalid('identityMap entries are { id, authenticatedState, primary }');
      }
      const extraneous = leafPaths(Object.fromEntries(Object.entries(entity).filter(([k]) => !CORE_FIELDS.includes(k)))).filter((p) => p !== '' && !schemaFields.includes(p));
      if (extraneous.length > 0) return invalid(`extraneous key [${extraneous[0]}] is not permitted`);
      records.push(entity);
      answer(200, { inletId, xactionId: `${now()}:${records.length}:${randomUUID().slice(0, 4)}`, receivedTimeMs: now(), syncValidation: { skipped: true } });
    });
  });
  const listener = await listenOnLoopback(server);

  return {
    baseUrl: listener.baseUrl,
    inletUrl: `${listener.baseUrl}/collection/${inletId}`,
    inletId,
    orgId,
    datasetId,
    schemaId,
    clientId,
    clientSecret,
    tokens,
    requests,
    records,
    failNext: (fault, count) => faults.push(fault, count),
    waitForRequests: (n) => arrivals.waitFor(n),
    async close() {
      faults.releaseHanging();
      await listener.close();
    },
  };
}
