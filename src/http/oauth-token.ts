// OAuth 2.0 access tokens for server-to-server API calls, one provider per configured output:
// the client credentials grant (RFC 6749 §4.4: Salesforce Marketing Cloud, Salesforce, Adobe
// IMS server-to-server), the refresh token grant (RFC 6749 §6: a HubSpot public app's
// installation) and the JWT bearer grant (RFC 7523 §2.1: Salesforce's "OAuth 2.0 JWT
// Bearer Flow", an RS256 assertion with iss = the connected app's consumer key, sub = the
// integration user's username, aud = the login host, exp within three minutes).
//
//   token() ──cached and not yet due for renewal──▶ the cached token
//           └─otherwise──▶ one token request, shared: every caller that arrives while it runs
//                          waits on the same request (never two refreshes at once)
//
// Lifetime: `expires_in` (seconds) when the answer has it (SFMC ~1,079 s, Adobe IMS ~86,399 s),
// else the configured lifetime (Salesforce answers without one: the token lives as long as the
// org's session timeout). A token is renewed `refreshBeforeSeconds` before it runs out (capped
// at half its lifetime), so an API call never carries one in its last seconds; SFMC asks for
// "five minutes before the token expires" and for at most one token request per 20 minutes
// (developer.salesforce.com, mc-apis "Best Practices to Prevent Rate-Limiting").
//
// A caller's AbortSignal ends only that caller's wait: the shared token request goes on with
// its own deadline for the others. Token requests never touch the API itself, so every
// failure here is safe to retry (no AmbiguousError): the endpoint refusing the credentials or
// the request (invalid_client, invalid_grant, unauthorized_client, invalid_scope, other 4xx,
// a redirect) is a PermanentError — retrying cannot help until the configuration changes —;
// 429 a RateLimitedError; 408, 5xx, timeouts and lost connections a TransientError.
//
// A 401 from the API itself means the token expired early or was revoked: sendWithToken()
// invalidates that token and repeats the call once with a fresh one. That repeat is
// authentication, not a retry of a failure: the API refused the first call before doing
// anything with it, so at most one call per send is ever acted on.
//
// Error codes are `<prefix>_token_<reason>`; messages name the host and the HTTP status and the
// OAuth error code, never a token, a secret or the server's description text.
import { createPrivateKey, randomUUID, sign, type KeyObject } from 'node:crypto';
import { AmbiguousError, PermanentError, RateLimitedError, TransientError } from '../errors.ts';
import { headerOf, parseRetryAfter, sendOnce, type AddressPolicy, type OutboundRequest, type OutboundResponse } from './outbound.ts';

/** RFC 6749 §5.2 error codes: the only server-sent strings that become part of an error code. */
const OAUTH_ERRORS: readonly string[] = ['invalid_request', 'invalid_client', 'invalid_grant', 'unauthorized_client', 'unsupported_grant_type', 'invalid_scope'];

export const JWT_BEARER_GRANT_TYPE = 'urn:ietf:params:oauth:grant-type:jwt-bearer';

export interface ClientCredentialsGrant {
  readonly kind: 'client_credentials';
  readonly clientId: string;
  readonly clientSecret: string;
  /** Space- or comma-separated as the provider wants it (SFMC: spaces; Adobe IMS: commas). */
  readonly scope?: string;
  /**
   * `form` (application/x-www-form-urlencoded, RFC 6749: Salesforce, Adobe IMS) or `json` (SFMC's
   * v2/token takes a JSON body).
   */
  readonly encoding: 'form' | 'json';
  /** Further body parameters, e.g. SFMC's `account_id` (the business unit's MID). */
  readonly extra?: Readonly<Record<string, string>>;
}

export interface JwtBearerGrant {
  readonly kind: 'jwt_bearer';
  /** `iss`: the client id (Salesforce: the connected app's consumer key). */
  readonly issuer: string;
  /** `sub`: the user the token acts as (Salesforce: the integration user's username). */
  readonly subject: string;
  /** `aud`: the authorization server (Salesforce: https://login.salesforce.com or https://test.salesforce.com). */
  readonly audience: string;
  /** PEM RSA private key (≥ 2048 bits) whose certificate the provider holds. Never logged. */
  readonly privateKey: string;
  /** Assertion lifetime, seconds. Default 180: Salesforce wants `exp` within three minutes. */
  readonly lifetimeSeconds?: number;
}

/**
 * RFC 6749 §6, refreshing an access token: what a public app installed by an OAuth
 * authorization (HubSpot) holds. The refresh token itself is long-lived and kept in the config.
 */
export interface RefreshTokenGrant {
  readonly kind: 'refresh_token';
  readonly clientId: string;
  readonly clientSecret: string;
  readonly refreshToken: string;
}

export type OAuthGrant = ClientCredentialsGrant | JwtBearerGrant | RefreshTokenGrant;

export interface OAuthTokenOptions {
  readonly tokenUrl: URL;
  readonly grant: OAuthGrant;
  /** Used when the answer has no `expires_in`, seconds. */
  readonly defaultLifetimeSeconds: number;
  /** Renew this long before the token expires, seconds (capped at half its lifetime). */
  readonly refreshBeforeSeconds: number;
  /** Deadline of one token request, ms. */
  readonly timeoutMs: number;
  /** Error code prefix: `sfmc` gives `sfmc_token_invalid_client`. */
  readonly codePrefix: string;
  /** Non-public addresses the token URL may resolve to (tests, an internal proxy). */
  readonly addresses?: AddressPolicy;
  /** Clock, ms since the epoch. Default Date.now. */
  readonly now?: () => number;
}

export interface OAuthToken {
  readonly accessToken: string;
  /**
   * The answer's other string members an API call needs (`instance_url`, `rest_instance_url`,
   * `scope`…); never `access_token` or `refresh_token`.
   */
  readonly fields: Readonly<Record<string, string>>;
  /** When it expires, ms since the epoch. */
  readonly expiresAt: number;
  /** When the next caller asks for a new one instead, ms since the epoch. */
  readonly renewAt: number;
}

/** Reason codes of token failures (suffixes of `<prefix>_token_…`, besides the OAuth error codes). */
export const TokenFailure = {
  RateLimited: 'rate_limited',
  Unavailable: 'unavailable',
  Rejected: 'rejected',
  Redirect: 'redirect',
  InvalidResponse: 'invalid_response',
  KeyInvalid: 'key_invalid',
  Aborted: 'aborted',
} as const;

function loadRsaKey(pem: string, code: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch (cause) {
    throw new PermanentError(code, 'the JWT bearer privateKey is not a readable PEM private key (expected "-----BEGIN PRIVATE KEY-----" or "-----BEGIN RSA PRIVATE KEY-----")', { cause });
  }
  // RS256 (RFC 7518 §3.3): an RSA key of 2048 bits or more.
  if (key.asymmetricKeyType !== 'rsa' || (key.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) {
    throw new PermanentError(code, `the JWT bearer privateKey must be an RSA key of 2048 bits or more (RS256), got ${key.asymmetricKeyType ?? 'unknown'}`);
  }
  return key;
}

/** An RS256-signed JWT (RFC 7519) in compact serialization, with these claims. */
export function signRs256Jwt(claims: Record<string, unknown>, key: KeyObject): string {
  const input = `${Buffer.from(JSON.stringify({ alg: 'RS256', typ: 'JWT' })).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
  return `${input}.${sign('sha256', Buffer.from(input), key).toString('base64url')}`;
}

/** The JWT bearer assertion for a request at `nowMs` (RFC 7523 §3: iss, sub, aud, exp; jti against replay). */
export function jwtBearerAssertion(grant: JwtBearerGrant, key: KeyObject, nowMs: number): string {
  const iat = Math.floor(nowMs / 1000);
  return signRs256Jwt({ iss: grant.issuer, sub: grant.subject, aud: grant.audience, exp: iat + (grant.lifetimeSeconds ?? 180), iat, jti: randomUUID() }, key);
}

/** Waits for `promise` unless `signal` aborts first (the promise itself goes on). */
function raceAbort<T>(promise: Promise<T>, signal: AbortSignal | undefined, onAbort: () => Error): Promise<T> {
  if (signal === undefined) return promise;
  if (signal.aborted) return Promise.reject(onAbort());
  return new Promise<T>((resolve, reject) => {
    const abort = () => reject(onAbort());
    signal.addEventListener('abort', abort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', abort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', abort);
        reject(error);
      },
    );
  });
}

/** Caches one access token and renews it, one request at a time (see the top of this file). */
export class OAuthTokenProvider {
  readonly #options: OAuthTokenOptions;
  readonly #now: () => number;
  readonly #key: KeyObject | undefined;
  #cached: OAuthToken | undefined;
  #inflight: Promise<OAuthToken> | undefined;
  /** Token requests made so far (a metric and a test hook). */
  requests = 0;

  /** Throws a PermanentError when a JWT bearer key is unusable (at start, not at the first send). */
  constructor(options: OAuthTokenOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#key = options.grant.kind === 'jwt_bearer' ? loadRsaKey(options.grant.privateKey, this.#code(TokenFailure.KeyInvalid)) : undefined;
  }

  #code(reason: string): string {
    return `${this.#options.codePrefix}_token_${reason}`;
  }

  /** A token valid for a while yet; `signal` ends this caller's wait only. */
  token(signal?: AbortSignal): Promise<OAuthToken> {
    const cached = this.#cached;
    if (signal?.aborted) return Promise.reject(this.#aborted());
    if (cached !== undefined && this.#now() < cached.renewAt) return Promise.resolve(cached);
    if (this.#inflight === undefined) {
      this.#inflight = this.#request().finally(() => {
        this.#inflight = undefined;
      });
    }
    return raceAbort(this.#inflight, signal, () => this.#aborted());
  }

  /** Forgets `token` (the API refused it); a newer token another caller already got is kept. */
  invalidate(token: OAuthToken): void {
    if (this.#cached === token) this.#cached = undefined;
  }

  #aborted(): TransientError {
    return new TransientError(this.#code(TokenFailure.Aborted), `waiting for an access token from ${this.#options.tokenUrl.host} was aborted; nothing was sent`);
  }

  #body(requestedAt: number): { body: Buffer; contentType: string } {
    const grant = this.#options.grant;
    if (grant.kind === 'jwt_bearer') {
      const form = new URLSearchParams({ grant_type: JWT_BEARER_GRANT_TYPE, assertion: jwtBearerAssertion(grant, this.#key!, requestedAt) });
      return { body: Buffer.from(form.toString()), contentType: 'application/x-www-form-urlencoded' };
    }
    if (grant.kind === 'refresh_token') {
      const form = new URLSearchParams({ grant_type: 'refresh_token', client_id: grant.clientId, client_secret: grant.clientSecret, refresh_token: grant.refreshToken });
      return { body: Buffer.from(form.toString()), contentType: 'application/x-www-form-urlencoded' };
    }
    const params: Record<string, string> = {
      grant_type: 'client_credentials',
      client_id: grant.clientId,
      client_secret: grant.clientSecret,
      ...(grant.scope !== undefined && grant.scope !== '' ? { scope: grant.scope } : {}),
      ...grant.extra,
    };
    return grant.encoding === 'json'
      ? { body: Buffer.from(JSON.stringify(params)), contentType: 'application/json' }
      : { body: Buffer.from(new URLSearchParams(params).toString()), contentType: 'application/x-www-form-urlencoded' };
  }

  async #request(): Promise<OAuthToken> {
    const { tokenUrl, timeoutMs, addresses } = this.#options;
    const host = tokenUrl.host;
    const requestedAt = this.#now();
    const { body, contentType } = this.#body(requestedAt);
    this.requests += 1;
    let response: OutboundResponse;
    try {
      response = await sendOnce({
        url: tokenUrl,
        headers: { 'content-type': contentType, accept: 'application/json', 'user-agent': 'CareRelay' },
        body,
        timeoutMs,
        ...(addresses !== undefined ? { addresses } : {}),
        codePrefix: `${this.#options.codePrefix}_token`,
        maxResponseBytes: 64 * 1024,
      });
    } catch (error) {
      // Asking for a token changes nothing at the provider: an unknown outcome is only a delay.
      if (error instanceof AmbiguousError) throw new TransientError(error.code, error.message, { cause: error });
      throw error;
    }
    const { status } = response;
    const what = `token endpoint ${host} answered HTTP ${status}`;
    if (status === 429) {
      throw new RateLimitedError(this.#code(TokenFailure.RateLimited), what, { retryAfterMs: parseRetryAfter(headerOf(response.headers, 'retry-after'), this.#now()) });
    }
    if (status === 408 || status >= 500) {
      throw new TransientError(this.#code(TokenFailure.Unavailable), what, { retryAfterMs: parseRetryAfter(headerOf(response.headers, 'retry-after'), this.#now()) });
    }
    if (status >= 300 && status < 400) throw new PermanentError(this.#code(TokenFailure.Redirect), `${what} (a redirect): configure the token endpoint's final address`);
    const json = parseObject(response.body);
    if (status >= 400) {
      const oauthError = typeof json.error === 'string' && OAUTH_ERRORS.includes(json.error) ? json.error : undefined;
      const hint =
        oauthError === 'invalid_client' || oauthError === 'unauthorized_client'
          ? ': check the client id and secret (or key) and what the app is allowed'
          : oauthError === 'invalid_grant'
            ? ': check the username, the uploaded certificate and that the user is pre-authorized for the app'
            : '';
      throw new PermanentError(this.#code(oauthError ?? TokenFailure.Rejected), `${what}${oauthError ? ` (${oauthError})` : ''}${hint}`);
    }
    const accessToken = json.access_token;
    if (typeof accessToken !== 'string' || accessToken === '') throw new PermanentError(this.#code(TokenFailure.InvalidResponse), `${what} without an access_token`);
    if (json.token_type !== undefined && (typeof json.token_type !== 'string' || json.token_type.toLowerCase() !== 'bearer')) {
      throw new PermanentError(this.#code(TokenFailure.InvalidResponse), `${what} with a token_type other than bearer`);
    }
    const lifetimeMs = typeof json.expires_in === 'number' && Number.isFinite(json.expires_in) && json.expires_in > 0 ? json.expires_in * 1000 : this.#options.defaultLifetimeSeconds * 1000;
    // Counted from when the request left: the server's clock started no earlier than that.
    const expiresAt = requestedAt + lifetimeMs;
    const renewAt = expiresAt - Math.min(this.#options.refreshBeforeSeconds * 1000, lifetimeMs / 2);
    const fields: Record<string, string> = {};
    for (const [name, value] of Object.entries(json)) {
      if (typeof value === 'string' && name !== 'access_token' && name !== 'refresh_token' && name !== 'id_token') fields[name] = value;
    }
    const token: OAuthToken = { accessToken, fields, expiresAt, renewAt };
    this.#cached = token;
    return token;
  }
}

function parseObject(body: Buffer): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(body.toString('utf8'));
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

/**
 * One API call with a bearer token from `provider` (`build` makes the request for a token). An
 * answer `isAuthFailure` says is an authentication refusal (default: HTTP 401) invalidates the
 * token and repeats the call once with a fresh one (see the top of this file); the second answer
 * is returned whatever it is. Token failures are thrown as they are (classified).
 */
export async function sendWithToken(
  provider: OAuthTokenProvider,
  signal: AbortSignal,
  build: (token: OAuthToken) => OutboundRequest,
  isAuthFailure: (response: OutboundResponse) => boolean = (response) => response.status === 401,
): Promise<{ response: OutboundResponse; token: OAuthToken }> {
  const token = await provider.token(signal);
  const response = await sendOnce({ ...build(token), signal });
  if (!isAuthFailure(response)) return { response, token };
  provider.invalidate(token);
  const fresh = await provider.token(signal);
  return { response: await sendOnce({ ...build(fresh), signal }), token: fresh };
}
