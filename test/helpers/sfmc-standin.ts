// A stand-in for Salesforce Marketing Cloud Engagement on 127.0.0.1: the tenant's auth host and
// REST host on one port. It enforces what the REST reference documents for the routes CareRelay
// calls:
//   - POST /v2/token (JSON body, client credentials; tokens expire on the stand-in's clock after
//     expires_in seconds) answering rest_instance_url = this server;
//   - POST /interaction/v1/events: Bearer token (401 { message: "Not Authorized" } otherwise),
//     application/json, { ContactKey, EventDefinitionKey (a known one, no period), Data (only
//     attributes of the event's data extension) } → 201 { eventInstanceId };
//   - POST /messaging/v1/{email|sms}/messages/{messageKey}: key of 1..100 characters, unique in the
//     business unit for 2 days (400 with responses [{ errorcode: 109110 }] otherwise), { definitionKey
//     (a known one), recipient: { contactKey, to (an email address; digits for SMS), attributes } }
//     and no `recipients` beside it → 202 { requestId, errorcode: 0, responses: [{ messageKey }] }.
//   - Event Notification Service ("Get Started with ENS", "Verify a Callback", "Notification
//     Signing"): registerCallback(url) answers as POST /platform/v1/ens-callbacks does (callbackId,
//     signatureKey) and posts the unsigned { callbackId, verificationKey } to the URL; POST
//     /platform/v1/ens-verify { callbackId, verificationKey } verifies it (400 for a key it did
//     not issue); postEvents() sends a batch to a verified callback, signed x-sfmc-ens-signature =
//     base64 HMAC-SHA256 of the body with the signatureKey (as its UTF-8 text).
// Errors use SFMC's body { message, errorcode, documentation }. It can be told to answer 429 (50100
// with Retry-After and retryAfter, or 50200 without), any status, to hang or to reset.
import { createHmac, randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import { Arrivals } from './arrivals.ts';
import { FaultQueue, listenOnLoopback } from './faults.ts';
import { readBody, TokenIssuer } from './oauth-standin.ts';

export interface SfmcRequest {
  path: string;
  /** What the Authorization header was to the token issuer. */
  auth: 'valid' | 'expired' | 'invalid';
  contentType?: string;
  body: unknown;
  /** The transactional message key, or the entry event's ContactKey. */
  key?: string;
  status: number;
}

export type SfmcFault =
  | { kind: 'status'; status: number; errorcode?: number; retryAfter?: string; bodyRetryAfter?: number }
  | { kind: 'hang' }
  | { kind: 'reset' };

export interface SfmcStandIn {
  readonly baseUrl: string;
  readonly clientId: string;
  readonly clientSecret: string;
  readonly tokens: TokenIssuer;
  readonly requests: SfmcRequest[];
  /** Entry events taken. */
  readonly events: Array<{ id: string; ContactKey: string; EventDefinitionKey: string; Data: Record<string, unknown> }>;
  /** Transactional messages taken, by message key. */
  readonly messages: Map<string, { channel: 'email' | 'sms'; definitionKey: string; recipient: Record<string, unknown>; at: number }>;
  failNext(fault: SfmcFault, count?: number): void;
  waitForRequests(n: number): Promise<void>;
  /** Registers an ENS callback for `url` and posts its verification there; the registration's answer and the receiver's status. */
  registerCallback(url: string): Promise<{ callbackId: string; signatureKey: string; status: number }>;
  /** Callback ids verified through /platform/v1/ens-verify. */
  readonly verifiedCallbacks: Set<string>;
  /** Posts a signed batch of ENS events to a verified callback; the receiver's status. */
  postEvents(callbackId: string, events: unknown[]): Promise<number>;
  close(): Promise<void>;
}

export interface SfmcStandInOptions {
  /** The stand-in's clock (tokens, the message key window), ms. */
  now?: () => number;
  /** Event definition keys and the attributes of their data extensions. */
  eventDefinitions?: Record<string, string[]>;
  /** Transactional send definition keys. */
  sendDefinitions?: string[];
  /** Token lifetime, seconds (SFMC: 1,079). */
  tokenLifetimeSeconds?: number;
}

const DOCS = 'https://developer.salesforce.com/docs/marketing/marketing-cloud/guide/error-handling.html';
const KEY_WINDOW_MS = 2 * 24 * 3600_000;

export async function startSfmcStandIn(options: SfmcStandInOptions = {}): Promise<SfmcStandIn> {
  const now = options.now ?? Date.now;
  const clientId = `client-${randomUUID().slice(0, 8)}`;
  const clientSecret = randomUUID();
  const eventDefinitions = options.eventDefinitions ?? { 'APIEvent-carerelay': ['FirstName', 'Language', 'EmailAddress'] };
  const sendDefinitions = new Set(options.sendDefinitions ?? ['carerelay-newsletter', 'carerelay-sms']);
  const requests: SfmcRequest[] = [];
  const events: SfmcStandIn['events'] = [];
  const callbacks = new Map<string, { url: string; signatureKey: string; verificationKey: string }>();
  const verifiedCallbacks = new Set<string>();
  const messages: SfmcStandIn['messages'] = new Map();
  const faults = new FaultQueue<SfmcFault>();
  const arrivals = new Arrivals();
  let baseUrl = '';
  const tokens = new TokenIssuer({
    path: '/v2/token',
    encoding: 'json',
    clients: [{ id: clientId, secret: clientSecret }],
    lifetimeSeconds: options.tokenLifetimeSeconds ?? 1079,
    sendExpiresIn: true,
    now,
    fields: () => ({ rest_instance_url: `${baseUrl}/`, soap_instance_url: `${baseUrl}/soap/`, scope: 'journeys_execute email_send sms_send' }),
  });

  const server = http.createServer((req, res) => {
    void readBody(req).then((raw) => {
      if (tokens.handle(req, raw, res)) return;
      const path = new URL(req.url ?? '/', 'http://x').pathname;
      const contentType = req.headers['content-type'];
      let body: unknown;
      try {
        body = raw.length > 0 ? JSON.parse(raw.toString('utf8')) : undefined;
      } catch {
        body = undefined;
      }
      const record: SfmcRequest = { path, auth: tokens.check(req.headers.authorization), ...(contentType !== undefined ? { contentType } : {}), body, status: 0 };
      requests.push(record);
      arrivals.arrive();
      const answer = (status: number, json: unknown, headers: Record<string, string> = {}) => {
        record.status = status;
        res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', ...headers }).end(JSON.stringify(json));
      };
      const error = (status: number, errorcode: number, message: string, extra: Record<string, unknown> = {}, headers: Record<string, string> = {}) =>
        answer(status, { message, errorcode, documentation: DOCS, ...extra }, headers);

      const transactional = /^\/messaging\/v1\/(email|sms)\/messages\/([^/]*)$/.exec(path);
      if (transactional) record.key = decodeURIComponent(transactional[2]!);
      if (path === '/interaction/v1/events' && typeof (body as { ContactKey?: unknown })?.ContactKey === 'string') record.key = (body as { ContactKey: string }).ContactKey;

      const fault = faults.take(req, res);
      if (fault === 'handled') return;
      if (record.auth !== 'valid') return error(401, 0, 'Not Authorized');
      if (fault?.kind === 'status') {
        if (fault.status === 429) {
          const code = fault.errorcode ?? 50100;
          return code === 50200
            ? error(429, 50200, 'Your requests are temporarily blocked.')
            : error(429, code, 'Rate limit exceeded', fault.bodyRetryAfter !== undefined ? { retryAfter: fault.bodyRetryAfter } : { retryAfter: Number(fault.retryAfter ?? 5) }, fault.retryAfter !== undefined ? { 'retry-after': fault.retryAfter } : {});
        }
        return error(fault.status, fault.errorcode ?? (fault.status >= 500 ? 0 : 10000), 'injected');
      }
      if (req.method !== 'POST') return error(405, 0, 'Method not allowed');
      if (!(contentType ?? '').startsWith('application/json')) return error(415, 0, 'Unsupported Media Type');
      if (typeof body !== 'object' || body === null || Array.isArray(body)) return error(400, 10004, 'Invalid Message Format');
      const b = body as Record<string, unknown>;

      if (path === '/platform/v1/ens-verify') {
        const callback = typeof b.callbackId === 'string' ? callbacks.get(b.callbackId) : undefined;
        if (callback === undefined || b.verificationKey !== callback.verificationKey) return error(400, 10002, 'Invalid callbackId or verificationKey');
        verifiedCallbacks.add(b.callbackId as string);
        return answer(200, { callbackId: b.callbackId, verified: true });
      }

      if (path === '/interaction/v1/events') {
        if (typeof b.ContactKey !== 'string' || b.ContactKey === '') return error(400, 10002, 'ContactKey is required');
        if (typeof b.EventDefinitionKey !== 'string' || b.EventDefinitionKey.includes('.')) return error(400, 10002, 'EventDefinitionKey is required and has no period');
        const fields = eventDefinitions[b.EventDefinitionKey];
        if (fields === undefined) return error(400, 30003, `Event definition key ${b.EventDefinitionKey} not found`);
        const data = (b.Data ?? {}) as Record<string, unknown>;
        if (typeof data !== 'object' || Array.isArray(data)) return error(400, 10001, 'Data must be an object');
        const unknown = Object.keys(data).filter((k) => !fields.includes(k));
        if (unknown.length > 0) return error(400, 10005, `Data contains fields not in the event's data extension: ${unknown.join(', ')}`);
        const id = randomUUID();
        events.push({ id, ContactKey: b.ContactKey, EventDefinitionKey: b.EventDefinitionKey, Data: data });
        return answer(201, { eventInstanceId: id });
      }

      if (transactional) {
        const channel = transactional[1] as 'email' | 'sms';
        const messageKey = record.key!;
        const responseError = (errorcode: number, message: string) =>
          answer(400, { requestId: randomUUID(), errorcode: 109001, message: 'MCMS_UTM_ResponsesHasErrors', responses: [{ messageKey, errorcode, message }] });
        if (messageKey === '' || messageKey.length > 100) return responseError(109108, 'MCMS_UTM_Validation_InvalidValue_messageKey');
        if ('recipients' in b) return responseError(109101, 'MCMS_UTM_Validation_TooManySubscribers: recipient and recipients are mutually exclusive');
        if (typeof b.definitionKey !== 'string' || !sendDefinitions.has(b.definitionKey)) return responseError(109111, 'MCMS_UTM_Validation_InvalidValue_definitionKey');
        const recipient = b.recipient as Record<string, unknown> | undefined;
        if (typeof recipient !== 'object' || recipient === null) return responseError(109102, 'MCMS_UTM_Validation_NoSubscribers');
        if (typeof recipient.contactKey !== 'string' || recipient.contactKey === '') return responseError(109105, 'MCMS_UTM_Validation_MissingRequiredField_subscriberKey');
        const to = recipient.to;
        if (typeof to !== 'string') return responseError(109106, 'MCMS_UTM_Validation_MissingRequiredField_to');
        if (channel === 'email' ? !/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(to) : !/^\d{7,15}$/.test(to)) return responseError(109121, 'MCMS_UTM_Validation_InvalidValue_to');
        if (recipient.attributes !== undefined && (typeof recipient.attributes !== 'object' || Array.isArray(recipient.attributes))) return responseError(10001, 'attributes must be an object');
        const earlier = messages.get(messageKey);
        if (earlier !== undefined && now() - earlier.at < KEY_WINDOW_MS) return responseError(109110, 'MCMS_UTM_Validation_DuplicateMessageKey: messageKey reused within the past 2 days');
        messages.set(messageKey, { channel, definitionKey: b.definitionKey, recipient, at: now() });
        return answer(202, { requestId: randomUUID(), errorcode: 0, responses: [{ messageKey }] });
      }
      return error(404, 0, 'Not Found');
    });
  });
  const listener = await listenOnLoopback(server);
  baseUrl = listener.baseUrl;

  return {
    baseUrl,
    clientId,
    clientSecret,
    tokens,
    requests,
    events,
    messages,
    failNext: (fault, count) => faults.push(fault, count),
    verifiedCallbacks,
    async registerCallback(url: string) {
      const callbackId = randomUUID();
      const signatureKey = randomBytes(32).toString('base64');
      const verificationKey = randomUUID();
      callbacks.set(callbackId, { url, signatureKey, verificationKey });
      const res = await fetch(url, { method: 'POST', body: JSON.stringify({ callbackId, verificationKey }), headers: { 'content-type': 'application/json' } });
      await res.arrayBuffer();
      return { callbackId, signatureKey, status: res.status };
    },
    async postEvents(callbackId: string, list: unknown[]) {
      const callback = callbacks.get(callbackId);
      if (callback === undefined || !verifiedCallbacks.has(callbackId)) throw new Error('ENS sends nothing to a callback that is not verified');
      const body = JSON.stringify(list);
      const signature = createHmac('sha256', Buffer.from(callback.signatureKey, 'utf8')).update(body).digest('base64');
      const res = await fetch(callback.url, { method: 'POST', body, headers: { 'content-type': 'application/json', 'x-sfmc-ens-signature': signature } });
      await res.arrayBuffer();
      return res.status;
    },
    waitForRequests: (n) => arrivals.waitFor(n),
    async close() {
      faults.releaseHanging();
      await listener.close();
    },
  };
}
