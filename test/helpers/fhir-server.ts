// A small FHIR R4 server for tests, on 127.0.0.1 with an ephemeral port. It implements
// only what CareRelay's FHIR client uses: read, vread, search by _lastUpdated with paging,
// create (conditional on If-None-Exist: identifier=…) and update, the Subscriptions Backport `$events` operation, the CapabilityStatement,
// and a SMART backend-services token endpoint that really verifies the client assertion.
// Tests steer it with fault-injection knobs and read back every request it saw.
//
// The assertion check is written here independently of src/fhir/smart.ts (node:crypto
// only), so a signing bug there cannot be hidden by the same bug in the verifier.
import { createPublicKey, randomUUID, verify, type KeyObject } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Arrivals } from './arrivals.ts';

export interface TestFhirResource {
  resourceType: string;
  id?: string;
  meta?: { versionId?: string; lastUpdated?: string; [key: string]: unknown };
  [key: string]: unknown;
}

export interface FhirTestServerOptions {
  /** Require a bearer token from /auth/token on every FHIR endpoint but /metadata. Default false. */
  auth?: boolean;
  /** `expires_in` of issued tokens, seconds. Default 300. */
  tokenLifetimeSeconds?: number;
  /** Clock, ms since the epoch: lastUpdated stamps, token expiry, assertion exp checks. Default Date.now. */
  now?: () => number;
  /** Path of the FHIR base on this server. Default `/fhir`. */
  basePath?: string;
  /** Advertise `$events` on Subscription in the CapabilityStatement. Default true. */
  supportsEvents?: boolean;
  /** Page size when the search has no _count. Default 10. */
  defaultPageSize?: number;
  /**
   * Accept a PUT to an id the server does not hold ("update as create", FHIR R4 §3.1.0.4.2,
   * optional). When false, such a PUT is refused with 400 as HAPI does by default for
   * client-assigned ids; POST still creates. Default true.
   */
  clientAssignedIds?: boolean;
}

export interface RecordedRequest {
  method: string;
  /** URL path without the query, e.g. `/fhir/Appointment/1`. */
  path: string;
  /** Query string including `?`, or ''. */
  query: string;
  /** Whether an Authorization header came with it. */
  authorized: boolean;
  /** The If-None-Exist header of a conditional create. */
  ifNoneExist?: string;
}

export interface PushedEvent {
  eventNumber: number;
  timestamp: string;
  focus?: string;
  additionalContext: string[];
}

export interface FhirTestServer {
  /** e.g. http://127.0.0.1:41234/fhir (no trailing slash). */
  readonly baseUrl: string;
  /** e.g. http://127.0.0.1:41234/auth/token */
  readonly tokenUrl: string;
  /** Every request received, in order (FHIR and token endpoint). */
  readonly requests: RecordedRequest[];
  /** Stores a resource as a new version (id assigned when missing); returns the stored copy. */
  put(resource: TestFhirResource): TestFhirResource;
  /** Current version of a stored resource. */
  get(type: string, id: string): TestFhirResource | undefined;
  /** Records an event for a subscription (`$events` returns it); returns its event number. */
  pushEvent(subscriptionId: string, focus: string | undefined, additionalContext?: string[]): number;
  /** The next `count` FHIR requests (not token requests) answer `status`, with Retry-After if given (seconds). */
  failNext(status: number, count: number, retryAfter?: number | string): void;
  /** The next `count` token requests answer `status` with an OAuth error body. */
  failNextToken(status: number, count: number, error?: string): void;
  /** The next `count` FHIR requests answer 302 to `location`. */
  redirectNext(location: string, count: number): void;
  /** The next `count` FHIR requests get no answer at all (until close): for timeout tests. */
  hangNext(count: number): void;
  /** The next `count` FHIR requests are read in full, then their connection is closed unanswered. */
  resetNext(count: number): void;
  /** The next `count` FHIR requests are carried out, then their connection is closed instead of answered. */
  loseAnswerNext(count: number): void;
  /** Absolute base used in paging links; default the server's own base. */
  linkBaseUrl: string;
  /**
   * Accepts client assertions for `clientId` signed by the key matching this public key;
   * when `kid` is given, the assertion header must name it.
   */
  registerClient(clientId: string, publicKeyPem: string, kid?: string): void;
  /** Why assertions were refused, in order (e.g. `bad_signature`, `jti_reused`). */
  readonly tokenRejections: string[];
  /** Forget issued tokens: the next FHIR request with an old token gets 401. */
  revokeTokens(): void;
  /** Requests whose path starts with `prefix` (default: all). */
  countRequests(prefix?: string): number;
  /** Resolves once `n` requests (of any kind) have arrived. */
  waitForRequests(n: number): Promise<void>;
  close(): Promise<void>;
}

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const OAUTH_JSON = 'application/json; charset=utf-8';
const MAX_BODY_BYTES = 1_000_000;
const ID_PATTERN = /^[A-Za-z0-9\-.]{1,64}$/;
const TYPE_PATTERN = /^[A-Z][A-Za-z]{1,63}$/;
const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const EVENTS_DEFINITION = 'http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events';

interface Fault {
  kind: 'status' | 'redirect' | 'hang' | 'reset' | 'lose-answer';
  status: number;
  retryAfter?: string;
  location?: string;
}

class HttpProblem extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export async function startFhirTestServer(options: FhirTestServerOptions = {}): Promise<FhirTestServer> {
  const now = options.now ?? Date.now;
  const basePath = (options.basePath ?? '/fhir').replace(/\/+$/, '');
  const tokenLifetimeSeconds = options.tokenLifetimeSeconds ?? 300;
  const supportsEvents = options.supportsEvents ?? true;
  const defaultPageSize = options.defaultPageSize ?? 10;

  /** type → id → versions (oldest first). */
  const store = new Map<string, Map<string, TestFhirResource[]>>();
  const events = new Map<string, PushedEvent[]>();
  const clients = new Map<string, { key: KeyObject; kid?: string }>();
  const tokens = new Map<string, number>();
  const usedJti = new Set<string>();
  const faults: Fault[] = [];
  const tokenFaults: { status: number; error: string }[] = [];
  const requests: RecordedRequest[] = [];
  const tokenRejections: string[] = [];
  const hanging = new Set<http.ServerResponse>();
  const arrivals = new Arrivals();
  let nextId = 1;

  const server = http.createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      if (error instanceof HttpProblem) {
        sendOutcome(res, error.status, error.code, error.message);
      } else {
        sendOutcome(res, 500, 'exception', error instanceof Error ? error.message : 'internal error');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const origin = `http://127.0.0.1:${port}`;
  const baseUrl = `${origin}${basePath}`;
  const tokenUrl = `${origin}/auth/token`;

  const api: FhirTestServer = {
    baseUrl,
    tokenUrl,
    requests,
    tokenRejections,
    linkBaseUrl: baseUrl,
    put: (resource) => storeVersion(resource),
    get: (type, id) => store.get(type)?.get(id)?.at(-1),
    pushEvent(subscriptionId, focus, additionalContext = []) {
      const list = events.get(subscriptionId) ?? [];
      const event: PushedEvent = {
        eventNumber: list.length + 1,
        timestamp: new Date(now()).toISOString(),
        additionalContext,
      };
      if (focus !== undefined) event.focus = focus;
      list.push(event);
      events.set(subscriptionId, list);
      return event.eventNumber;
    },
    failNext(status, count, retryAfter) {
      for (let i = 0; i < count; i++) {
        faults.push({ kind: 'status', status, retryAfter: retryAfter === undefined ? undefined : String(retryAfter) });
      }
    },
    failNextToken(status, count, error = 'temporarily_unavailable') {
      for (let i = 0; i < count; i++) tokenFaults.push({ status, error });
    },
    redirectNext(location, count) {
      for (let i = 0; i < count; i++) faults.push({ kind: 'redirect', status: 302, location });
    },
    hangNext(count) {
      for (let i = 0; i < count; i++) faults.push({ kind: 'hang', status: 0 });
    },
    resetNext(count) {
      for (let i = 0; i < count; i++) faults.push({ kind: 'reset', status: 0 });
    },
    loseAnswerNext(count) {
      for (let i = 0; i < count; i++) faults.push({ kind: 'lose-answer', status: 0 });
    },
    registerClient(clientId, publicKeyPem, kid) {
      clients.set(clientId, { key: createPublicKey(publicKeyPem), kid });
    },
    revokeTokens() {
      tokens.clear();
    },
    countRequests(prefix = '') {
      return requests.filter((r) => r.path.startsWith(prefix)).length;
    },
    waitForRequests: (n) => arrivals.waitFor(n),
    async close() {
      for (const res of hanging) res.destroy();
      hanging.clear();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return api;

  // -------------------------------------------------------------------------------------

  function storeVersion(input: TestFhirResource): TestFhirResource {
    if (!TYPE_PATTERN.test(input.resourceType)) throw new HttpProblem(400, 'invalid', 'bad resourceType');
    const id = input.id ?? String(nextId++);
    if (!ID_PATTERN.test(id)) throw new HttpProblem(400, 'invalid', 'bad id');
    let byId = store.get(input.resourceType);
    if (byId === undefined) {
      byId = new Map();
      store.set(input.resourceType, byId);
    }
    const versions = byId.get(id) ?? [];
    const stored: TestFhirResource = structuredClone({
      ...input,
      id,
      meta: { ...input.meta, versionId: String(versions.length + 1), lastUpdated: new Date(now()).toISOString() },
    });
    versions.push(stored);
    byId.set(id, versions);
    return structuredClone(stored);
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', origin);
    const method = req.method ?? 'GET';
    const ifNoneExist = req.headers['if-none-exist'];
    requests.push({
      method,
      path: url.pathname,
      query: url.search,
      authorized: req.headers.authorization !== undefined,
      ...(typeof ifNoneExist === 'string' ? { ifNoneExist } : {}),
    });
    arrivals.arrive();

    if (url.pathname === '/auth/token') {
      if (method !== 'POST') throw new HttpProblem(405, 'not-supported', 'POST only');
      await handleToken(req, res);
      return;
    }
    if (url.pathname !== basePath && !url.pathname.startsWith(`${basePath}/`)) {
      throw new HttpProblem(404, 'not-found', 'outside the FHIR base');
    }

    const fault = faults.shift();
    if (fault?.kind === 'lose-answer') LOST_ANSWERS.add(res);
    else if (fault !== undefined) {
      if (fault.kind === 'hang') {
        hanging.add(res);
        return;
      }
      if (fault.kind === 'reset') {
        await readBody(req);
        req.socket.destroy();
        return;
      }
      if (fault.kind === 'redirect') {
        res.writeHead(302, { location: fault.location ?? '/' });
        res.end();
        return;
      }
      if (fault.retryAfter !== undefined) res.setHeader('retry-after', fault.retryAfter);
      sendOutcome(res, fault.status, 'transient', `injected HTTP ${fault.status}`);
      return;
    }

    const segments = url.pathname
      .slice(basePath.length)
      .split('/')
      .filter((s) => s !== '')
      .map((s) => decodeURIComponent(s));

    if (segments.length === 1 && segments[0] === 'metadata' && method === 'GET') {
      sendJson(res, 200, capabilityStatement());
      return;
    }

    if (options.auth) {
      const header = req.headers.authorization ?? '';
      const match = /^Bearer (\S+)$/i.exec(header);
      const expiresAt = match ? tokens.get(match[1]) : undefined;
      if (expiresAt === undefined || now() >= expiresAt) {
        res.setHeader('www-authenticate', 'Bearer error="invalid_token"');
        throw new HttpProblem(401, 'login', 'missing, unknown or expired bearer token');
      }
    }

    const [type, id, third, vid] = segments;
    if (type === undefined || !TYPE_PATTERN.test(type)) throw new HttpProblem(404, 'not-found', 'unknown path');

    if (segments.length === 3 && type === 'Subscription' && third === '$events' && (method === 'GET' || method === 'POST')) {
      const body = method === 'POST' ? await readJson(req) : undefined;
      sendJson(res, 200, eventsBundle(id, url.searchParams, body));
      return;
    }
    if (segments.length === 1 && method === 'GET') {
      sendJson(res, 200, search(type, url.searchParams));
      return;
    }
    if (segments.length === 1 && method === 'POST') {
      const body = await readResource(req, type);
      delete body.id;
      // Conditional create (FHIR R4 §3.1.0.8.1): If-None-Exist holds a search; one match is
      // answered 200 with it and nothing is created, several are 412.
      const condition = req.headers['if-none-exist'];
      if (typeof condition === 'string') {
        const matches = conditionalMatches(type, condition);
        if (matches.length > 1) throw new HttpProblem(412, 'multiple-matches', `If-None-Exist matches ${matches.length} ${type} resources`);
        if (matches.length === 1) {
          const existing = matches[0]!;
          res.setHeader('location', `${baseUrl}/${type}/${existing.id}/_history/${existing.meta?.versionId}`);
          sendJson(res, 200, existing);
          return;
        }
      }
      const stored = storeVersion(body);
      res.setHeader('location', `${baseUrl}/${type}/${stored.id}/_history/${stored.meta?.versionId}`);
      sendJson(res, 201, stored);
      return;
    }
    if (segments.length === 2 && method === 'GET') {
      sendJson(res, 200, current(type, id));
      return;
    }
    if (segments.length === 2 && method === 'PUT') {
      const body = await readResource(req, type);
      if (body.id !== id) throw new HttpProblem(400, 'invalid', `body id ${String(body.id)} does not match URL id ${id}`);
      const existed = store.get(type)?.has(id) ?? false;
      if (!existed && options.clientAssignedIds === false) {
        throw new HttpProblem(400, 'processing', `${type}/${id} does not exist and this server does not let clients assign ids; create it with POST`);
      }
      const stored = storeVersion(body);
      res.setHeader('location', `${baseUrl}/${type}/${id}/_history/${stored.meta?.versionId}`);
      sendJson(res, existed ? 200 : 201, stored);
      return;
    }
    if (segments.length === 4 && third === '_history' && method === 'GET') {
      const versions = store.get(type)?.get(id);
      const version = versions?.find((v) => v.meta?.versionId === vid);
      if (version === undefined) throw new HttpProblem(404, 'not-found', `${type}/${id}/_history/${vid} not found`);
      sendJson(res, 200, version);
      return;
    }
    throw new HttpProblem(404, 'not-supported', `${method} ${url.pathname} is not implemented by the test server`);
  }

  /** Current resources of `type` matching an If-None-Exist query (identifier=[system]|value only). */
  function conditionalMatches(type: string, condition: string): TestFhirResource[] {
    const params = new URLSearchParams(condition);
    const names = [...new Set(params.keys())];
    if (names.length !== 1 || names[0] !== 'identifier') {
      throw new HttpProblem(400, 'not-supported', 'the test server supports If-None-Exist on identifier only');
    }
    const wanted = params.get('identifier')!;
    const bar = wanted.indexOf('|');
    const system = bar === -1 ? undefined : wanted.slice(0, bar);
    const value = bar === -1 ? wanted : wanted.slice(bar + 1);
    return [...(store.get(type)?.values() ?? [])]
      .map((versions) => versions.at(-1)!)
      .filter((r) =>
        Array.isArray(r.identifier) &&
        (r.identifier as Array<{ system?: string; value?: string }>).some((i) => i.value === value && (system === undefined || (i.system ?? '') === system)),
      );
  }

  function current(type: string, id: string): TestFhirResource {
    const version = store.get(type)?.get(id)?.at(-1);
    if (version === undefined) throw new HttpProblem(404, 'not-found', `${type}/${id} not found`);
    return version;
  }

  // --- search -----------------------------------------------------------------------------

  function search(type: string, params: URLSearchParams): TestFhirResource {
    let matches = [...(store.get(type)?.values() ?? [])].map((versions) => versions.at(-1)!);
    for (const value of params.getAll('_lastUpdated')) {
      const m = /^(gt|ge|lt|le)?(.+)$/.exec(value);
      const instant = m ? Date.parse(m[2]) : Number.NaN;
      if (!m || Number.isNaN(instant)) throw new HttpProblem(400, 'invalid', `bad _lastUpdated ${value}`);
      const prefix = m[1] ?? 'ge';
      matches = matches.filter((r) => {
        const t = Date.parse(r.meta?.lastUpdated ?? '');
        return prefix === 'gt' ? t > instant : prefix === 'ge' ? t >= instant : prefix === 'lt' ? t < instant : t <= instant;
      });
    }
    // status (Appointment, Encounter, Slot…): a token, several values comma-separated.
    const statuses = params.get('status');
    if (statuses !== null) {
      const wanted = new Set(statuses.split(','));
      matches = matches.filter((r) => wanted.has(String((r as { status?: unknown }).status ?? '')));
    }
    const ids = params.get('_id');
    if (ids !== null) {
      const wanted = new Set(ids.split(','));
      matches = matches.filter((r) => wanted.has(r.id ?? ''));
    }
    const sort = params.get('_sort') ?? '_lastUpdated';
    const direction = sort.startsWith('-') ? -1 : 1;
    matches.sort((a, b) => {
      const diff = Date.parse(a.meta?.lastUpdated ?? '') - Date.parse(b.meta?.lastUpdated ?? '');
      return direction * (diff !== 0 ? diff : (a.id ?? '').localeCompare(b.id ?? ''));
    });

    const count = Math.max(1, Number(params.get('_count') ?? defaultPageSize) || defaultPageSize);
    const offset = Math.max(0, Number(params.get('_offset') ?? 0) || 0);
    const page = matches.slice(offset, offset + count);
    const link = [{ relation: 'self', url: pageUrl(type, params, offset) }];
    if (offset + count < matches.length) link.push({ relation: 'next', url: pageUrl(type, params, offset + count) });
    return {
      resourceType: 'Bundle',
      type: 'searchset',
      total: matches.length,
      link,
      entry: page.map((resource) => ({
        fullUrl: `${baseUrl}/${type}/${resource.id}`,
        resource,
        search: { mode: 'match' },
      })),
    };
  }

  function pageUrl(type: string, params: URLSearchParams, offset: number): string {
    const next = new URLSearchParams(params);
    next.delete('_offset');
    if (offset > 0) next.set('_offset', String(offset));
    const query = next.toString();
    return `${api.linkBaseUrl}/${type}${query ? `?${query}` : ''}`;
  }

  // --- $events (Subscriptions Backport IG, R4 notification Bundle) -------------------------

  function eventsBundle(subscriptionId: string, query: URLSearchParams, body: unknown): TestFhirResource {
    const input = new Map<string, string>();
    for (const [k, v] of query) input.set(k, v);
    if (isRecord(body) && body.resourceType === 'Parameters' && Array.isArray(body.parameter)) {
      for (const p of body.parameter) {
        if (isRecord(p) && typeof p.name === 'string') {
          const value = p.valueString ?? p.valueCode ?? p.valueInteger;
          if (value !== undefined) input.set(p.name, String(value));
        }
      }
    }
    const list = events.get(subscriptionId);
    if (list === undefined && !store.get('Subscription')?.has(subscriptionId)) {
      throw new HttpProblem(404, 'not-found', `Subscription/${subscriptionId} not found`);
    }
    const since = Number(input.get('eventsSinceNumber') ?? 1);
    const until = Number(input.get('eventsUntilNumber') ?? Number.MAX_SAFE_INTEGER);
    if (Number.isNaN(since) || Number.isNaN(until)) throw new HttpProblem(400, 'invalid', 'event numbers must be integers');
    const content = input.get('content') ?? 'id-only';
    if (!['empty', 'id-only', 'full-resource'].includes(content)) throw new HttpProblem(400, 'invalid', `bad content ${content}`);
    const selected = (list ?? []).filter((e) => e.eventNumber >= since && e.eventNumber <= until);
    const subscription = store.get('Subscription')?.get(subscriptionId)?.at(-1);

    const parameter: unknown[] = [
      { name: 'subscription', valueReference: { reference: `${baseUrl}/Subscription/${subscriptionId}` } },
      {
        name: 'topic',
        valueCanonical:
          (subscription?.criteria as string | undefined) ?? 'http://example.org/SubscriptionTopic/appointment-changed',
      },
      { name: 'status', valueCode: 'active' },
      { name: 'type', valueCode: 'query-event' },
      { name: 'events-since-subscription-start', valueString: String(list?.length ?? 0) },
    ];
    const entries: unknown[] = [];
    const included = new Set<string>();
    for (const event of selected) {
      const part: unknown[] = [
        { name: 'event-number', valueString: String(event.eventNumber) },
        { name: 'timestamp', valueInstant: event.timestamp },
      ];
      if (content !== 'empty' && event.focus !== undefined) {
        part.push({ name: 'focus', valueReference: { reference: event.focus } });
        for (const ctx of event.additionalContext) part.push({ name: 'additional-context', valueReference: { reference: ctx } });
        for (const ref of [event.focus, ...event.additionalContext]) {
          if (included.has(ref)) continue;
          included.add(ref);
          const [type, id] = ref.split('/');
          const resource = store.get(type)?.get(id)?.at(-1);
          const entry: Record<string, unknown> = { fullUrl: `${baseUrl}/${ref}`, request: { method: 'PUT', url: ref } };
          if (content === 'full-resource' && resource !== undefined) entry.resource = resource;
          entries.push(entry);
        }
      }
      parameter.push({ name: 'notification-event', part });
    }
    return {
      resourceType: 'Bundle',
      type: 'history',
      timestamp: new Date(now()).toISOString(),
      entry: [
        { fullUrl: `urn:uuid:${randomUUID()}`, resource: { resourceType: 'Parameters', parameter }, request: { method: 'GET', url: `Subscription/${subscriptionId}/$events` } },
        ...entries,
      ],
    };
  }

  function capabilityStatement(): TestFhirResource {
    const resources = ['Appointment', 'Communication', 'Encounter', 'Patient', 'Subscription'].map((type) => {
      const entry: Record<string, unknown> = {
        type,
        interaction: [{ code: 'read' }, { code: 'vread' }, { code: 'search-type' }, { code: 'create' }, { code: 'update' }],
        conditionalCreate: true,
        searchParam: [{ name: '_lastUpdated', type: 'date' }],
      };
      if (type === 'Subscription' && supportsEvents) entry.operation = [{ name: 'events', definition: EVENTS_DEFINITION }];
      return entry;
    });
    return {
      resourceType: 'CapabilityStatement',
      status: 'active',
      kind: 'instance',
      fhirVersion: '4.0.1',
      format: ['json'],
      rest: [
        {
          mode: 'server',
          security: {
            extension: [
              {
                url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
                extension: [{ url: 'token', valueUri: tokenUrl }],
              },
            ],
          },
          resource: resources,
        },
      ],
    };
  }

  // --- SMART token endpoint -------------------------------------------------------------------

  async function handleToken(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const fault = tokenFaults.shift();
    if (fault !== undefined) {
      sendJson(res, fault.status, { error: fault.error }, OAUTH_JSON);
      return;
    }
    const contentType = req.headers['content-type'] ?? '';
    if (!contentType.startsWith('application/x-www-form-urlencoded')) {
      sendJson(res, 400, { error: 'invalid_request', error_description: 'form body required' }, OAUTH_JSON);
      return;
    }
    const form = new URLSearchParams((await readBody(req)).toString('utf8'));
    const refuse = (status: number, error: string, reason: string): void => {
      tokenRejections.push(reason);
      sendJson(res, status, { error, error_description: reason }, OAUTH_JSON);
    };
    if (form.get('grant_type') !== 'client_credentials') return refuse(400, 'unsupported_grant_type', 'grant_type');
    if (form.get('client_assertion_type') !== CLIENT_ASSERTION_TYPE) return refuse(400, 'invalid_request', 'client_assertion_type');
    if (!form.get('scope')) return refuse(400, 'invalid_scope', 'scope_missing');
    const assertion = form.get('client_assertion') ?? '';
    const parts = assertion.split('.');
    if (parts.length !== 3) return refuse(401, 'invalid_client', 'malformed_assertion');
    let header: Record<string, unknown>;
    let claims: Record<string, unknown>;
    try {
      header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
      claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
    } catch {
      return refuse(401, 'invalid_client', 'malformed_assertion');
    }
    const clientId = claims.iss;
    const registered = typeof clientId === 'string' ? clients.get(clientId) : undefined;
    if (registered === undefined) return refuse(401, 'invalid_client', 'unknown_client');
    if (registered.kid !== undefined && header.kid !== registered.kid) return refuse(401, 'invalid_client', 'unknown_kid');
    const key = registered.key;
    if (claims.sub !== clientId) return refuse(401, 'invalid_client', 'sub_not_iss');
    if (claims.aud !== tokenUrl) return refuse(401, 'invalid_client', 'aud_not_token_url');
    const alg = header.alg;
    const signingInput = Buffer.from(`${parts[0]}.${parts[1]}`);
    const signature = Buffer.from(parts[2], 'base64url');
    let valid = false;
    if (alg === 'RS384' && key.asymmetricKeyType === 'rsa') {
      valid = verify('sha384', signingInput, key, signature);
    } else if (alg === 'ES384' && key.asymmetricKeyType === 'ec') {
      valid = verify('sha384', signingInput, { key, dsaEncoding: 'ieee-p1363' }, signature);
    } else {
      return refuse(401, 'invalid_client', 'alg_not_allowed');
    }
    if (!valid) return refuse(401, 'invalid_client', 'bad_signature');
    const nowSeconds = Math.floor(now() / 1000);
    if (typeof claims.exp !== 'number' || claims.exp <= nowSeconds) return refuse(401, 'invalid_client', 'expired');
    if (claims.exp > nowSeconds + 300) return refuse(401, 'invalid_client', 'exp_too_far');
    if (typeof claims.jti !== 'string' || claims.jti === '') return refuse(401, 'invalid_client', 'jti_missing');
    if (usedJti.has(claims.jti)) return refuse(401, 'invalid_client', 'jti_reused');
    usedJti.add(claims.jti);

    const accessToken = randomUUID();
    tokens.set(accessToken, now() + tokenLifetimeSeconds * 1000);
    sendJson(res, 200, {
      access_token: accessToken,
      token_type: 'bearer',
      expires_in: tokenLifetimeSeconds,
      scope: form.get('scope'),
    }, OAUTH_JSON);
  }
}

// --- plumbing ---------------------------------------------------------------------------------

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

async function readBody(req: http.IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new HttpProblem(413, 'too-costly', 'body too large');
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

async function readJson(req: http.IncomingMessage): Promise<unknown> {
  const text = (await readBody(req)).toString('utf8');
  if (text === '') return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw new HttpProblem(400, 'structure', 'invalid JSON');
  }
}

async function readResource(req: http.IncomingMessage, type: string): Promise<TestFhirResource> {
  const body = await readJson(req);
  if (!isRecord(body) || body.resourceType !== type) {
    throw new HttpProblem(400, 'invalid', `expected a ${type} resource`);
  }
  return body as TestFhirResource;
}

/** Responses whose request is carried out but whose answer is lost (loseAnswerNext). */
const LOST_ANSWERS = new WeakSet<http.ServerResponse>();

function sendJson(res: http.ServerResponse, status: number, body: unknown, contentType = FHIR_JSON): void {
  if (LOST_ANSWERS.has(res)) {
    res.socket?.destroy();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function sendOutcome(res: http.ServerResponse, status: number, code: string, diagnostics: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(res, status, {
    resourceType: 'OperationOutcome',
    issue: [{ severity: 'error', code, diagnostics }],
  });
}
