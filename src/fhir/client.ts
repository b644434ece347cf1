// CareRelay's FHIR client: fhir-kit-client for the REST calls, wrapped with what a
// middleware fetching from an EHR needs (docs/hl7-fhir.md "FHIR inputs", docs/reliability.md):
//
// - one configured base URL is the allow-list: a reference or paging link pointing
//   anywhere else is refused before any request is made ("id-only notification pointing
//   outside the configured FHIR server: refused; no fetch made"), and redirects are never
//   followed (a redirect could carry the bearer token to another host);
// - SMART backend-services auth (smart.ts) or a fixed bearer token; a 401 with a SMART
//   token renews the token once;
// - a few polite retries for 429/5xx/network failures (Retry-After honoured, exponential
//   backoff with full jitter), then a classified error (errors.ts) for the queue to
//   schedule. A Retry-After longer than `maxRetryAfterMs` is not slept on here: the
//   TransientError carries it to the queue;
// - error codes and messages carry resource types, ids and HTTP statuses only, never
//   response bodies (they may hold patient data).
import { Client, type RequestOptions, type SearchParams as FhirKitSearchParams } from 'fhir-kit-client';
import { AmbiguousError, PermanentError, TransientError } from '../errors.ts';
import { isFhirId, type FhirResource, type PayloadContent } from './notification.ts';
import {
  checkServiceUrl,
  parseRetryAfter,
  SmartTokenProvider,
  StaticTokenSource,
  type AccessTokenSource,
  type SmartBackendConfig,
} from './smart.ts';

export type FhirAuthConfig =
  | ({ kind: 'smart' } & SmartBackendConfig)
  | { kind: 'bearer'; token: string }
  /** A token source shared with other clients (e.g. one SmartTokenProvider per EHR). */
  | { kind: 'token-source'; source: AccessTokenSource };

export interface FhirClientOptions {
  /** FHIR base URL, e.g. https://ehr.example.org/fhir/R4. Every request stays under it. */
  baseUrl: string;
  /** No auth when absent. */
  auth?: FhirAuthConfig;
  /** Per attempt (headers and body), ms. Default 15,000. */
  timeoutMs?: number;
  /** Retries after the first attempt for 429/5xx/network failures. Default 2. */
  maxRetries?: number;
  /** Backoff: attempt n waits random(0 … min(cap, base·2^(n−1))), ms. Defaults 500 and 10,000. */
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** A Retry-After longer than this (ms) is handed to the queue instead of slept on. Default 30,000. */
  maxRetryAfterMs?: number;
  /** Pages `search` follows at most (the first page included). Default 50. */
  maxPages?: number;
  /** Injected for tests: sleep between retries, clock (ms), jitter source in [0, 1). */
  sleep?: (ms: number) => Promise<void>;
  now?: () => number;
  random?: () => number;
  /** Allow plain http off loopback (lab setups only). Default false. */
  allowInsecureHttp?: boolean;
}

export type SearchParamValue = string | number | boolean | readonly (string | number | boolean)[];
export type SearchParams = Readonly<Record<string, SearchParamValue>>;

export const SearchStop = {
  PageLimit: 'page-limit',
  NextLinkOutsideBase: 'next-link-outside-base',
} as const;
export type SearchStop = (typeof SearchStop)[keyof typeof SearchStop];

export interface SearchResult {
  /** Matches (entry.search.mode `match` or unset), in server order, across pages. */
  resources: FhirResource[];
  /** `_include`d resources (entry.search.mode `include`). */
  included: FhirResource[];
  /** Pages read. */
  pages: number;
  /** Bundle.total of the first page, when the server gave it. */
  total?: number;
  /** Set when paging stopped before the last page: more results exist than were read. */
  incomplete?: SearchStop;
  /** The `next` link that was not followed because of `maxPages` (it is under the base URL). */
  nextUrl?: string;
}


/** The server answered with an error that retrying will not fix. */
export class FhirRequestError extends PermanentError {
  readonly status?: number;
  /** OperationOutcome.issue[0].code (a FHIR issue-type code), when present. */
  readonly outcomeCode?: string;

  constructor(code: string, message: string, options: { status?: number; outcomeCode?: string; cause?: unknown } = {}) {
    super(code, message, { cause: options.cause });
    this.status = options.status;
    this.outcomeCode = options.outcomeCode;
  }
}

/** The server is busy, down or unreachable: worth retrying later (after `retryAfterMs`). */
export class FhirUnavailableError extends TransientError {
  readonly status?: number;

  constructor(code: string, message: string, options: { status?: number; retryAfterMs?: number; cause?: unknown } = {}) {
    super(code, message, { retryAfterMs: options.retryAfterMs, cause: options.cause });
    this.status = options.status;
  }
}

export const ReferenceRefusal = {
  Malformed: 'malformed',
  Contained: 'contained',
  Urn: 'urn',
  Scheme: 'scheme',
  OutsideBase: 'outside-base',
} as const;
export type ReferenceRefusal = (typeof ReferenceRefusal)[keyof typeof ReferenceRefusal];

/** A reference CareRelay will not fetch; no request was made. */
export class FhirReferenceRefused extends PermanentError {
  readonly reason: ReferenceRefusal;

  constructor(reason: ReferenceRefusal, message: string) {
    super(`fhir_reference_${reason.replace('-', '_')}`, message);
    this.reason = reason;
  }
}

export interface ParsedReference {
  type: string;
  id: string;
  /** Set for `Type/id/_history/vid` references. */
  versionId?: string;
}

// FHIR R4 §2.24.0.1 (resource type names) and §2.1.27.5 id datatype: [A-Za-z0-9\-\.]{1,64}.
const TYPE_PATTERN = /^[A-Z][A-Za-z]{1,63}$/;
const RELATIVE_REFERENCE = /^([A-Z][A-Za-z]{1,63})\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/([A-Za-z0-9\-.]{1,64}))?$/;
const MAX_REFERENCE_LENGTH = 2048;

/** Base URL as the allow-list: scheme, host, port and path prefix (no trailing slash). */
interface Base {
  href: string;
  origin: string;
  path: string;
}

function toBase(url: URL): Base {
  const path = url.pathname.replace(/\/+$/, '');
  return { href: `${url.origin}${path}`, origin: url.origin, path };
}

/** True when `url` is the base itself or lies under it (same scheme, host, port; path prefix). */
function isUnderBase(url: URL, base: Base): boolean {
  if (url.username !== '' || url.password !== '') return false;
  if (url.origin !== base.origin) return false;
  // HAPI pages as `[base]?_getpages=…`, so the base path itself counts as under the base.
  return url.pathname === base.path || url.pathname === `${base.path}/` || url.pathname.startsWith(`${base.path}/`);
}

/**
 * Reads a reference as `Type/id[/_history/vid]`, accepting a relative reference or an
 * absolute URL under `baseUrl`. Anything else (another host, another scheme, `#contained`,
 * `urn:uuid:`, a search URL, an operation) throws FhirReferenceRefused.
 */
export function parseFhirReference(reference: string, baseUrl: string): ParsedReference {
  if (typeof reference !== 'string' || reference === '' || reference.length > MAX_REFERENCE_LENGTH) {
    throw new FhirReferenceRefused(ReferenceRefusal.Malformed, 'reference is empty or longer than 2048 characters');
  }
  if (reference.startsWith('#')) {
    throw new FhirReferenceRefused(ReferenceRefusal.Contained, 'a contained (#) reference is resolved inside its resource, not fetched');
  }
  let relative = reference;
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(reference);
  if (scheme !== null) {
    const name = scheme[1].toLowerCase();
    if (name === 'urn') {
      throw new FhirReferenceRefused(ReferenceRefusal.Urn, 'a urn: reference names a Bundle entry; it cannot be fetched');
    }
    if (name !== 'http' && name !== 'https') {
      throw new FhirReferenceRefused(ReferenceRefusal.Scheme, `references with scheme ${name}: are not fetched`);
    }
    let url: URL;
    try {
      url = new URL(reference);
    } catch {
      throw new FhirReferenceRefused(ReferenceRefusal.Malformed, 'reference is not a valid URL');
    }
    const base = toBase(new URL(baseUrl));
    if (!isUnderBase(url, base)) {
      throw new FhirReferenceRefused(
        ReferenceRefusal.OutsideBase,
        `reference points to ${url.origin}${url.pathname === '/' ? '' : ' (another path)'}, outside the configured ` +
          `FHIR base ${base.href}; only the configured server is fetched from`,
      );
    }
    if (url.search !== '' || url.hash !== '') {
      throw new FhirReferenceRefused(ReferenceRefusal.Malformed, 'a reference with a query or fragment is not a resource reference');
    }
    relative = url.pathname.slice(base.path.length).replace(/^\/+/, '');
  }
  const match = RELATIVE_REFERENCE.exec(relative);
  if (match === null) {
    throw new FhirReferenceRefused(
      ReferenceRefusal.Malformed,
      'reference is not of the form Type/id or Type/id/_history/vid (ids are 1-64 of A-Z a-z 0-9 - .)',
    );
  }
  if (!isFhirId(match[2]) || (match[3] !== undefined && !isFhirId(match[3]))) {
    throw new FhirReferenceRefused(ReferenceRefusal.Malformed, 'a FHIR id is never "." or ".." (they would name another path on the server)');
  }
  const parsed: ParsedReference = { type: match[1], id: match[2] };
  if (match[3] !== undefined) parsed.versionId = match[3];
  return parsed;
}

/**
 * Whether a CapabilityStatement declares the Backport `$events` operation on Subscription
 * (by name `events` or by the IG's OperationDefinition canonical).
 */
export function supportsSubscriptionEvents(capabilityStatement: FhirResource): boolean {
  const rest = Array.isArray(capabilityStatement.rest) ? capabilityStatement.rest : [];
  for (const r of rest as Array<Record<string, unknown>>) {
    const resources = Array.isArray(r?.resource) ? (r.resource as Array<Record<string, unknown>>) : [];
    for (const resource of resources) {
      if (resource?.type !== 'Subscription' || !Array.isArray(resource.operation)) continue;
      for (const op of resource.operation as Array<Record<string, unknown>>) {
        const definition = typeof op?.definition === 'string' ? op.definition : '';
        if (op?.name === 'events' || op?.name === '$events' || definition.endsWith('/OperationDefinition/backport-subscription-events')) {
          return true;
        }
      }
    }
  }
  return false;
}

interface Normalized {
  base: Base;
  timeoutMs: number;
  maxRetries: number;
  backoffBaseMs: number;
  backoffCapMs: number;
  maxRetryAfterMs: number;
  maxPages: number;
  sleep: (ms: number) => Promise<void>;
  now: () => number;
  random: () => number;
}

/** Fill defaults and refuse nonsense in one place. */
function normalizeOptions(options: FhirClientOptions): Normalized {
  const url = checkServiceUrl(options.baseUrl, 'FHIR baseUrl', options.allowInsecureHttp ?? false);
  if (url.search !== '' || url.hash !== '') {
    throw new PermanentError('fhir_config_invalid', 'FHIR baseUrl must not have a query or fragment');
  }
  const n: Normalized = {
    base: toBase(url),
    timeoutMs: options.timeoutMs ?? 15_000,
    maxRetries: options.maxRetries ?? 2,
    backoffBaseMs: options.backoffBaseMs ?? 500,
    backoffCapMs: options.backoffCapMs ?? 10_000,
    maxRetryAfterMs: options.maxRetryAfterMs ?? 30_000,
    maxPages: options.maxPages ?? 50,
    sleep: options.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms))),
    now: options.now ?? Date.now,
    random: options.random ?? Math.random,
  };
  const checks: Array<[string, number, number]> = [
    ['timeoutMs', n.timeoutMs, 1],
    ['maxRetries', n.maxRetries, 0],
    ['backoffBaseMs', n.backoffBaseMs, 0],
    ['backoffCapMs', n.backoffCapMs, 0],
    ['maxRetryAfterMs', n.maxRetryAfterMs, 0],
    ['maxPages', n.maxPages, 1],
  ];
  for (const [name, value, min] of checks) {
    if (!(Number.isFinite(value) && value >= min)) {
      throw new PermanentError('fhir_config_invalid', `FHIR client option ${name} must be a number ≥ ${min}, got ${value}`);
    }
  }
  if (!Number.isInteger(n.maxRetries) || !Number.isInteger(n.maxPages)) {
    throw new PermanentError('fhir_config_invalid', 'FHIR client options maxRetries and maxPages must be integers');
  }
  return n;
}

function tokenSourceFor(options: FhirClientOptions, now: () => number, timeoutMs: number): AccessTokenSource | undefined {
  const auth = options.auth;
  if (auth === undefined) return undefined;
  switch (auth.kind) {
    case 'smart': {
      const { kind: _kind, ...config } = auth;
      return new SmartTokenProvider(config, { now, timeoutMs, allowInsecureHttp: options.allowInsecureHttp });
    }
    case 'bearer':
      return new StaticTokenSource(auth.token);
    case 'token-source':
      return auth.source;
    default: {
      const unknown: never = auth;
      throw new PermanentError(
        'fhir_config_invalid',
        `FHIR auth kind ${String((unknown as { kind?: unknown }).kind)} is unknown (use smart, bearer or token-source)`,
      );
    }
  }
}

/** How an outgoing call may be retried: reads and PUT are idempotent; a POST create is not. */
interface CallKind {
  /** Short description for messages: `read Patient/1`, `search Appointment`. */
  what: string;
  idempotent: boolean;
}

/** The parts of fhir-kit-client's thrown HTTP error that are read here. */
interface FhirKitHttpError {
  response: { status: number; data: unknown };
  config?: { headers?: Headers };
}

function isFhirKitHttpError(error: unknown): error is FhirKitHttpError {
  if (typeof error !== 'object' || error === null) return false;
  const response = (error as { response?: unknown }).response;
  return typeof response === 'object' && response !== null && typeof (response as { status?: unknown }).status === 'number';
}

function outcomeCodeOf(data: unknown): string | undefined {
  if (typeof data !== 'object' || data === null) return undefined;
  const outcome = data as { resourceType?: unknown; issue?: unknown };
  if (outcome.resourceType !== 'OperationOutcome' || !Array.isArray(outcome.issue)) return undefined;
  const code = (outcome.issue[0] as { code?: unknown } | undefined)?.code;
  // issue-type codes are lowercase words with hyphens; anything else is not echoed.
  return typeof code === 'string' && /^[a-z-]{1,40}$/.test(code) ? code : undefined;
}

const PERMANENT_CODES: Readonly<Record<number, string>> = {
  400: 'fhir_bad_request',
  401: 'fhir_unauthorized',
  403: 'fhir_forbidden',
  404: 'fhir_not_found',
  405: 'fhir_not_supported',
  406: 'fhir_not_acceptable',
  409: 'fhir_conflict',
  410: 'fhir_gone',
  412: 'fhir_precondition_failed',
  413: 'fhir_too_large',
  415: 'fhir_not_acceptable',
  422: 'fhir_unprocessable',
  501: 'fhir_not_supported',
};

export class FhirClient {
  readonly baseUrl: string;
  private readonly fhir: Client;
  private readonly options: Normalized;
  private readonly tokens?: AccessTokenSource;
  /** A fixed bearer token cannot be renewed: its 401 is final. */
  private readonly renewable: boolean;

  constructor(options: FhirClientOptions) {
    this.options = normalizeOptions(options);
    this.baseUrl = this.options.base.href;
    this.tokens = tokenSourceFor(options, this.options.now, this.options.timeoutMs);
    this.renewable = this.tokens !== undefined && options.auth?.kind !== 'bearer';
    // redirect: 'manual' makes a 3xx come back as a response (an error here) instead of
    // being followed by fetch, possibly to another host with the Authorization header.
    this.fhir = new Client({ baseUrl: this.baseUrl, requestOptions: { redirect: 'manual' } });
  }

  /** FHIR read: the current version of `type/id`. */
  async read(type: string, id: string): Promise<FhirResource> {
    checkType(type);
    checkId(id, 'id');
    const resource = await this.call({ what: `read ${type}/${id}`, idempotent: true }, (options) =>
      this.fhir.read({ resourceType: type, id, options }),
    );
    return expectType(resource, type, `read ${type}/${id}`);
  }

  /** FHIR vread: version `versionId` of `type/id`. */
  async vread(type: string, id: string, versionId: string): Promise<FhirResource> {
    checkType(type);
    checkId(id, 'id');
    checkId(versionId, 'versionId');
    const what = `vread ${type}/${id}/_history/${versionId}`;
    const resource = await this.call({ what, idempotent: true }, (options) =>
      this.fhir.vread({ resourceType: type, id, version: versionId, options }),
    );
    return expectType(resource, type, what);
  }

  /**
   * Fetches what a reference names, relative (`Patient/1`, `Patient/1/_history/2`) or
   * absolute under the base URL. Refuses — with FhirReferenceRefused and no request — any
   * other reference, notably an absolute URL on another server.
   */
  async readReference(reference: string): Promise<FhirResource> {
    const parsed = parseFhirReference(reference, this.baseUrl);
    return parsed.versionId === undefined
      ? this.read(parsed.type, parsed.id)
      : this.vread(parsed.type, parsed.id, parsed.versionId);
  }

  /**
   * Type-level search, following `next` links up to `maxPages` pages. A `next` link outside
   * the base URL is not followed (`incomplete: 'next-link-outside-base'`): servers behind a
   * proxy sometimes page with an internal host name, and that host is not ours to call.
   */
  async search(type: string, params: SearchParams = {}, options: { maxPages?: number } = {}): Promise<SearchResult> {
    checkType(type);
    const maxPages = options.maxPages ?? this.options.maxPages;
    const searchParams = params as FhirKitSearchParams;
    let bundle = expectType(
      await this.call({ what: `search ${type}`, idempotent: true }, (requestOptions) =>
        this.fhir.search({ resourceType: type, searchParams, options: requestOptions }),
      ),
      'Bundle',
      `search ${type}`,
    );
    const result: SearchResult = { resources: [], included: [], pages: 0 };
    if (typeof bundle.total === 'number') result.total = bundle.total;
    for (;;) {
      result.pages += 1;
      collectEntries(bundle, result);
      const next = nextLink(bundle);
      if (next === undefined) return result;
      let nextUrl: URL;
      try {
        nextUrl = new URL(next, `${this.baseUrl}/`);
      } catch {
        throw new FhirRequestError('fhir_invalid_response', `search ${type}: the next link is not a valid URL`);
      }
      if (!isUnderBase(nextUrl, this.options.base)) {
        result.incomplete = SearchStop.NextLinkOutsideBase;
        return result;
      }
      if (result.pages >= maxPages) {
        result.incomplete = SearchStop.PageLimit;
        result.nextUrl = nextUrl.href;
        return result;
      }
      const what = `search ${type} page ${result.pages + 1}`;
      bundle = expectType(
        await this.call({ what, idempotent: true }, (requestOptions) =>
          this.fhir.request(nextUrl.href, { options: requestOptions }),
        ),
        'Bundle',
        what,
      );
    }
  }

  /**
   * Subscriptions Backport IG `$events` on `Subscription/{id}`: the notifications numbered
   * `sinceNumber` … `untilNumber` (both inclusive), as a `history` notification Bundle
   * (read it with readNotification). `content` is a hint the server may ignore.
   */
  async subscriptionEvents(
    subscriptionId: string,
    sinceNumber: number,
    untilNumber?: number,
    options: { content?: PayloadContent } = {},
  ): Promise<FhirResource> {
    checkId(subscriptionId, 'subscriptionId');
    checkEventNumber(sinceNumber, 'sinceNumber');
    const input: Record<string, string> = { eventsSinceNumber: String(sinceNumber) };
    if (untilNumber !== undefined) {
      checkEventNumber(untilNumber, 'untilNumber');
      if (untilNumber < sinceNumber) {
        throw new PermanentError('fhir_request_invalid', `$events: untilNumber ${untilNumber} is below sinceNumber ${sinceNumber}`);
      }
      input.eventsUntilNumber = String(untilNumber);
    }
    if (options.content !== undefined) input.content = options.content;
    const what = `$events Subscription/${subscriptionId}`;
    // GET: the operation does not change state, and GET keeps it a plain idempotent read.
    const bundle = await this.call({ what, idempotent: true }, (requestOptions) =>
      this.fhir.operation({ name: '$events', resourceType: 'Subscription', id: subscriptionId, method: 'GET', input, options: requestOptions }),
    );
    return expectType(bundle, 'Bundle', what);
  }

  /** The server's CapabilityStatement (`GET [base]/metadata`). */
  async capabilities(): Promise<FhirResource> {
    const statement = await this.call({ what: 'metadata', idempotent: true }, (options) => this.fhir.capabilityStatement(options));
    return expectType(statement, 'CapabilityStatement', 'metadata');
  }

  /**
   * FHIR create (POST). Not idempotent: only a 429/503 (nothing was processed) is retried;
   * a timeout, reset or other 5xx is an AmbiguousError (the resource may exist now).
   *
   * `ifNoneExist` makes it a conditional create (FHIR R4 §3.1.0.8.1, header If-None-Exist: a
   * search query without "?"): a server that supports it answers 200 with the existing match
   * instead of creating a second one, so a repeat after an ambiguous failure is safe.
   * `signal` aborts the call (the queue's lease or shutdown).
   */
  async create(resource: FhirResource, options: { ifNoneExist?: string; signal?: AbortSignal } = {}): Promise<FhirResource> {
    checkType(resource?.resourceType);
    const body = stripId(resource);
    const what = `create ${resource.resourceType}`;
    const extraHeaders: Record<string, string> = { prefer: 'return=representation' };
    if (options.ifNoneExist !== undefined) extraHeaders['if-none-exist'] = options.ifNoneExist;
    const created = await this.call(
      { what, idempotent: false },
      (requestOptions) =>
        this.fhir.create({
          resourceType: resource.resourceType,
          body: body as FhirResource & Record<string, unknown>,
          options: { ...requestOptions, headers: { ...requestOptions.headers, ...extraHeaders } },
        }),
      options.signal,
    );
    if (created.resourceType !== undefined) return expectType(created, resource.resourceType, what);
    // A server may answer 201 with an empty body despite Prefer: return=representation;
    // the Location header (`[base]/Type/id/_history/vid`) still names the new resource.
    const location = Client.httpFor(created as Record<string, unknown> & { resourceType: string }).response?.headers.get('location');
    const result: FhirResource = { ...body };
    if (location) {
      try {
        const parsed = parseFhirReference(new URL(location, `${this.baseUrl}/`).href, this.baseUrl);
        result.id = parsed.id;
        if (parsed.versionId !== undefined) result.meta = { ...result.meta, versionId: parsed.versionId };
      } catch {
        // A Location outside the base or not naming a resource: return the body without an id.
      }
    }
    // A Location without _history (Oracle Health Millennium): the ETag still names the version.
    const version = versionOf(created);
    if (result.meta?.versionId === undefined && version !== undefined) result.meta = { ...result.meta, versionId: version };
    return result;
  }

  /**
   * A type-level operation invoked by POST (`[base]/type/$name`, FHIR R4 §3.1.0.17 / operations.html)
   * with a Parameters body; answers whatever resource the operation returns. Not idempotent
   * (e.g. Appointment `$book`): classified like a create (a timeout or 5xx other than 503 is an
   * AmbiguousError — the caller decides how a repeat finds what the first attempt did).
   */
  async operate(type: string, name: string, parameters: FhirResource, options: { signal?: AbortSignal } = {}): Promise<FhirResource> {
    checkType(type);
    if (!/^\$[a-z][a-z0-9-]{0,63}$/i.test(name)) throw new PermanentError('fhir_request_invalid', `${JSON.stringify(name).slice(0, 70)} is not an operation name (e.g. $book)`);
    const what = `${type}/${name}`;
    const answered = await this.call(
      { what, idempotent: false },
      (requestOptions) => this.fhir.operation({ name, resourceType: type, method: 'POST', input: parameters, options: requestOptions }),
      options.signal,
    );
    if (typeof answered.resourceType !== 'string') throw new FhirRequestError('fhir_invalid_response', `${what}: the answer is not a FHIR resource`);
    return answered;
  }

  /**
   * FHIR update (PUT `type/id`); `resource.id` is required. Idempotent, so retried like a read.
   * `ifMatch` makes it a version-aware update (FHIR R4 §3.1.0.5 "Managing resource contention":
   * a server whose current version differs answers 412, some 409): the caller re-reads.
   */
  async update(resource: FhirResource, options: { ifMatch?: string; signal?: AbortSignal } = {}): Promise<FhirResource> {
    checkType(resource?.resourceType);
    if (typeof resource.id !== 'string') {
      throw new PermanentError('fhir_request_invalid', `update ${resource.resourceType}: the resource has no id (use create)`);
    }
    checkId(resource.id, 'id');
    const what = `update ${resource.resourceType}/${resource.id}`;
    const extra: Record<string, string> = { prefer: 'return=representation', ...(options.ifMatch !== undefined ? { 'if-match': options.ifMatch } : {}) };
    const updated = await this.call(
      { what, idempotent: true },
      (requestOptions) =>
        this.fhir.update({
          resourceType: resource.resourceType,
          id: resource.id,
          body: resource as FhirResource & Record<string, unknown>,
          options: { ...requestOptions, headers: { ...requestOptions.headers, ...extra } },
        }),
      options.signal,
    );
    if (updated.resourceType !== undefined) return expectType(updated, resource.resourceType, what);
    // No body (Prefer ignored): the ETag still says which version was written.
    const version = versionOf(updated);
    return version === undefined ? { ...resource } : { ...resource, meta: { ...resource.meta, versionId: version } };
  }

  /**
   * FHIR read that also gives the version to write against: the ETag header, else
   * W/"<meta.versionId>" (servers SHALL send one or the other: FHIR R4 §3.1.0.5).
   */
  async readForUpdate(type: string, id: string, options: { signal?: AbortSignal } = {}): Promise<{ resource: FhirResource; etag?: string }> {
    checkType(type);
    checkId(id, 'id');
    const resource = expectType(
      await this.call({ what: `read ${type}/${id}`, idempotent: true }, (requestOptions) => this.fhir.read({ resourceType: type, id, options: requestOptions }), options.signal),
      type,
      `read ${type}/${id}`,
    );
    const etag = etagOf(resource) ?? (typeof resource.meta?.versionId === 'string' ? `W/"${resource.meta.versionId}"` : undefined);
    return { resource, ...(etag !== undefined ? { etag } : {}) };
  }

  /**
   * JSON Patch (RFC 6902) on `type/id` (FHIR R4 §3.1.0.6, Content-Type
   * application/json-patch+json), version-aware with `ifMatch`. Some servers answer 200 with an
   * empty body (Oracle Health Millennium): the new version then comes from the ETag header.
   * Replace operations are idempotent, so it is retried like a read.
   */
  async patch(type: string, id: string, operations: ReadonlyArray<Record<string, unknown>>, options: { ifMatch?: string; signal?: AbortSignal } = {}): Promise<{ etag?: string }> {
    checkType(type);
    checkId(id, 'id');
    const headers: Record<string, string> = options.ifMatch !== undefined ? { 'if-match': options.ifMatch } : {};
    const patched = await this.call(
      { what: `patch ${type}/${id}`, idempotent: true },
      (requestOptions) => this.fhir.patch({ resourceType: type, id, jsonPatch: operations as never, options: { ...requestOptions, headers: { ...requestOptions.headers, ...headers } } }),
      options.signal,
    );
    const etag = etagOf(patched);
    return etag !== undefined ? { etag } : {};
  }

  // -------------------------------------------------------------------------------------

  /** One logical call: auth header, timeout, classification, bounded retries. */
  private async call(kind: CallKind, send: (options: RequestOptions) => Promise<Record<string, unknown>>, signal?: AbortSignal): Promise<FhirResource> {
    let retries = 0;
    let renewed = false;
    for (;;) {
      // Aborted before this attempt left: nothing can have happened.
      if (signal?.aborted) throw new FhirUnavailableError('fhir_aborted', `${kind.what}: aborted before the request was made`);
      let error: Error;
      try {
        const headers: Record<string, string> = {};
        if (this.tokens !== undefined) headers.authorization = `Bearer ${await this.tokens.getToken()}`;
        const timeout = AbortSignal.timeout(this.options.timeoutMs);
        const result = await send({ headers, signal: signal === undefined ? timeout : AbortSignal.any([timeout, signal]) });
        return result as FhirResource;
      } catch (raw) {
        error = this.classify(raw, kind);
      }
      // A 401 with a renewable token: the token may have been revoked or expired early.
      if (error instanceof FhirRequestError && error.status === 401 && this.renewable && !renewed) {
        renewed = true;
        this.tokens?.invalidate();
        continue;
      }
      if (!(error instanceof TransientError) || retries >= this.options.maxRetries) throw error;
      const retryAfterMs = error.retryAfterMs;
      if (retryAfterMs !== undefined && retryAfterMs > this.options.maxRetryAfterMs) throw error;
      retries += 1;
      await this.options.sleep(this.retryDelay(retries, retryAfterMs));
    }
  }

  /** Full jitter, never sooner than Retry-After. */
  private retryDelay(retry: number, retryAfterMs: number | undefined): number {
    const ceiling = Math.min(this.options.backoffCapMs, this.options.backoffBaseMs * 2 ** Math.min(retry - 1, 30));
    const jittered = Math.floor(this.options.random() * (ceiling + 1));
    return Math.max(jittered, Math.ceil(retryAfterMs ?? 0));
  }

  private classify(raw: unknown, kind: CallKind): Error {
    if (raw instanceof PermanentError || raw instanceof TransientError || raw instanceof AmbiguousError) return raw;
    if (isFhirKitHttpError(raw)) return this.classifyResponse(raw, kind);
    const name = raw instanceof Error ? raw.name : '';
    const timedOut = name === 'TimeoutError' || name === 'AbortError';
    const refused = connectionRefused(raw);
    if (!kind.idempotent && !refused) {
      return new AmbiguousError(
        'fhir_outcome_unknown',
        `${kind.what}: ${timedOut ? 'no answer in time' : 'connection lost'}; the server may have applied it`,
        { cause: raw },
      );
    }
    return new FhirUnavailableError(
      timedOut ? 'fhir_timeout' : 'fhir_unreachable',
      `${kind.what}: ${timedOut ? `no answer within ${this.options.timeoutMs} ms` : `${this.options.base.origin} unreachable`}`,
      { cause: raw },
    );
  }

  private classifyResponse(raw: FhirKitHttpError, kind: CallKind): Error {
    const status = raw.response.status;
    const headers = raw.config?.headers;
    if (status >= 200 && status < 300) {
      // fhir-kit-client throws on a 2xx whose body is not JSON.
      return new FhirRequestError('fhir_invalid_response', `${kind.what}: HTTP ${status} with a body that is not JSON`, { status });
    }
    if (status >= 300 && status < 400) {
      const location = headers?.get('location');
      let where = 'elsewhere';
      if (location) {
        try {
          const target = new URL(location, `${this.baseUrl}/`);
          where = isUnderBase(target, this.options.base) ? 'another path under the base URL' : `another server (${target.origin})`;
        } catch {
          where = 'an invalid location';
        }
      }
      return new FhirRequestError(
        'fhir_redirect_refused',
        `${kind.what}: HTTP ${status} redirect to ${where} not followed; configure baseUrl to the server's final address`,
        { status },
      );
    }
    const retryAfterMs = parseRetryAfter(headers?.get('retry-after'), this.options.now());
    const outcomeCode = outcomeCodeOf(raw.response.data);
    const detail = outcomeCode !== undefined ? ` (${outcomeCode})` : '';
    const transient = status === 408 || status === 429 || status >= 500;
    if (transient && status !== 501) {
      // A create answered 429/503 was not processed (RFC 6585 §4, RFC 9110 §15.6.4); any
      // other 5xx may come after the resource was stored.
      if (!kind.idempotent && status !== 429 && status !== 503) {
        return new AmbiguousError('fhir_outcome_unknown', `${kind.what}: HTTP ${status}${detail}; the server may have applied it`);
      }
      const code = status === 429 ? 'fhir_rate_limited' : status === 408 ? 'fhir_timeout' : status === 500 ? 'fhir_server_error' : 'fhir_unavailable';
      return new FhirUnavailableError(code, `${kind.what}: HTTP ${status}${detail}`, { status, retryAfterMs });
    }
    const code = PERMANENT_CODES[status] ?? 'fhir_request_refused';
    const hint =
      status === 401
        ? this.tokens === undefined
          ? '; the server wants auth: configure auth'
          : '; the token was refused (check the client registration and scopes)'
        : status === 403
          ? '; check the SMART scopes granted to the client'
          : '';
    return new FhirRequestError(code, `${kind.what}: HTTP ${status}${detail}${hint}`, { status, outcomeCode });
  }
}

/** The ETag header of the response a result came with, when the server sent one. */
function etagOf(result: Record<string, unknown>): string | undefined {
  const headers = Client.httpFor(result as Record<string, unknown> & { resourceType: string }).response?.headers;
  return headers?.get('etag') ?? undefined;
}

/** The version an ETag names (W/"3" → 3). */
function versionOf(result: Record<string, unknown>): string | undefined {
  return /^(?:W\/)?"([^"]+)"$/.exec(etagOf(result) ?? '')?.[1];
}

function connectionRefused(error: unknown): boolean {
  const cause = error instanceof Error ? (error.cause as { code?: unknown } | undefined) : undefined;
  return cause?.code === 'ECONNREFUSED';
}

function checkType(type: unknown): asserts type is string {
  if (typeof type !== 'string' || !TYPE_PATTERN.test(type)) {
    throw new PermanentError('fhir_request_invalid', `${JSON.stringify(type)?.slice(0, 70)} is not a FHIR resource type (e.g. Appointment)`);
  }
}

function checkId(id: unknown, what: string): asserts id is string {
  if (typeof id !== 'string' || !isFhirId(id)) {
    throw new PermanentError('fhir_request_invalid', `${what} must be a FHIR id (1-64 of A-Z a-z 0-9 - ., not "." or "..")`);
  }
}

function checkEventNumber(value: unknown, what: string): void {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new PermanentError('fhir_request_invalid', `$events: ${what} must be a non-negative integer, got ${String(value)}`);
  }
}

function expectType(resource: Record<string, unknown>, type: string, what: string): FhirResource {
  if (resource?.resourceType !== type) {
    const got = typeof resource?.resourceType === 'string' ? resource.resourceType.slice(0, 64) : 'no resourceType';
    throw new FhirRequestError('fhir_invalid_response', `${what}: expected ${type}, got ${got}`);
  }
  return resource as FhirResource;
}

function stripId(resource: FhirResource): FhirResource {
  const { id: _id, meta, ...rest } = resource;
  // A create ignores id and server-managed meta (versionId, lastUpdated); keep profile/tags.
  if (meta === undefined) return { ...rest, resourceType: resource.resourceType };
  const { versionId: _v, lastUpdated: _l, ...keptMeta } = meta;
  return Object.keys(keptMeta).length > 0
    ? { ...rest, resourceType: resource.resourceType, meta: keptMeta }
    : { ...rest, resourceType: resource.resourceType };
}

function nextLink(bundle: FhirResource): string | undefined {
  if (!Array.isArray(bundle.link)) return undefined;
  for (const link of bundle.link as Array<{ relation?: unknown; url?: unknown }>) {
    if (link?.relation === 'next' && typeof link.url === 'string' && link.url !== '') return link.url;
  }
  return undefined;
}

function collectEntries(bundle: FhirResource, result: SearchResult): void {
  if (!Array.isArray(bundle.entry)) return;
  for (const entry of bundle.entry as Array<{ resource?: unknown; search?: { mode?: unknown } }>) {
    const resource = entry?.resource;
    if (typeof resource !== 'object' || resource === null || typeof (resource as FhirResource).resourceType !== 'string') continue;
    const mode = entry.search?.mode;
    if (mode === 'include') result.included.push(resource as FhirResource);
    else if (mode === undefined || mode === 'match') result.resources.push(resource as FhirResource);
    // mode `outcome`: an OperationOutcome about the search (warnings), not a result.
  }
}
