// SMART App Launch "Backend Services" (SMART App Launch IG 2.x, §Backend Services and
// §Client Authentication: Asymmetric): the client proves who it is with a JWT it signs
// with its own private key, and trades it for a short-lived bearer token:
//
//   POST {tokenUrl}  (application/x-www-form-urlencoded)
//     grant_type=client_credentials
//     scope=system/Appointment.rs …
//     client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer
//     client_assertion=<JWS: header {alg, kid, typ:"JWT"}, claims {iss, sub, aud, exp, jti}>
//   → { access_token, token_type: "bearer", expires_in, scope }
//
// iss = sub = client id, aud = the token URL, exp no more than five minutes ahead, jti
// never reused. Signing algorithms are RS384 and ES384 (the two the IG requires servers to
// support). JWS compact serialization is done here with node:crypto: no JOSE dependency.
import { createHash, createPrivateKey, createPublicKey, randomUUID, sign, type KeyObject } from 'node:crypto';
import { PermanentError, TransientError } from '../errors.ts';
import { isLoopbackUrl, parseRetryAfter } from '../http/outbound.ts';

export const SmartAlgorithm = {
  RS384: 'RS384',
  ES384: 'ES384',
} as const;
export type SmartAlgorithm = (typeof SmartAlgorithm)[keyof typeof SmartAlgorithm];

export const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

export interface SmartBackendConfig {
  /** The authorization server's token endpoint (smart-configuration `token_endpoint`). */
  tokenUrl: string;
  /** The client id the EHR registered for CareRelay (becomes `iss` and `sub`). */
  clientId: string;
  /** PEM private key: RSA (≥ 2048 bits) for RS384, EC P-384 for ES384. Never logged. */
  privateKey: string;
  /**
   * `kid` of the registered public key (must match the JWK Set the EHR holds). Default: the
   * RFC 7638 JWK thumbprint of the public key, which is what `publicJwks` publishes.
   */
  keyId?: string;
  algorithm: SmartAlgorithm;
  /** Space-separated SMART scopes, e.g. `system/Appointment.rs system/Patient.rs`. */
  scope: string;
}

export interface SmartTokenProviderOptions {
  /** Clock, ms since the epoch. Default Date.now. */
  now?: () => number;
  /** Token request timeout, ms. Default 10,000. */
  timeoutMs?: number;
  /**
   * Renew this long before `expires_in` runs out, ms (default 60,000), so a token is never
   * sent in its last seconds. Capped at half the token's lifetime for very short tokens.
   */
  refreshSkewMs?: number;
  /** Client assertion lifetime, seconds. Default 300: the IG's maximum (five minutes). */
  assertionLifetimeSeconds?: number;
  /** Allow plain http for a token URL that is not a loopback address (never in production). */
  allowInsecureHttp?: boolean;
}

/** Something that hands out bearer tokens: the SMART provider, or a test double. */
export interface AccessTokenSource {
  getToken(): Promise<string>;
  /** Forget the cached token (the resource server answered 401 with it). */
  invalidate(): void;
}

/**
 * The token endpoint refused CareRelay's credentials or request. `oauthError` is the
 * RFC 6749 §5.2 error code (`invalid_client`, `invalid_scope`, …) when the server gave one.
 */
export class SmartTokenError extends PermanentError {
  readonly oauthError?: string;
  readonly status?: number;

  constructor(code: string, message: string, options: { oauthError?: string; status?: number; cause?: unknown } = {}) {
    super(code, message, { cause: options.cause });
    this.oauthError = options.oauthError;
    this.status = options.status;
  }
}

/** RFC 6749 §5.2 error codes: the only server-sent strings that become part of an error code. */
const OAUTH_ERROR_CODES: readonly string[] = [
  'invalid_request',
  'invalid_client',
  'invalid_grant',
  'unauthorized_client',
  'unsupported_grant_type',
  'invalid_scope',
];

// ---------------------------------------------------------------------------------------
// Keys and JWS

function base64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

/**
 * Parses the PEM private key and checks that it fits the algorithm. Throws a PermanentError
 * (code `smart_key_invalid`) saying what is wrong — never echoing the key.
 */
export function loadSigningKey(privateKeyPem: string, algorithm: SmartAlgorithm): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: privateKeyPem, format: 'pem' });
  } catch (cause) {
    throw new PermanentError(
      'smart_key_invalid',
      'SMART privateKey is not a readable PEM private key (expected "-----BEGIN PRIVATE KEY-----", ' +
        '"-----BEGIN RSA PRIVATE KEY-----" or "-----BEGIN EC PRIVATE KEY-----")',
      { cause },
    );
  }
  const details = key.asymmetricKeyDetails ?? {};
  switch (algorithm) {
    case SmartAlgorithm.RS384:
      if (key.asymmetricKeyType !== 'rsa') {
        throw new PermanentError(
          'smart_key_invalid',
          `SMART algorithm RS384 needs an RSA private key, got ${key.asymmetricKeyType ?? 'unknown'}; ` +
            'use ES384 for an EC P-384 key',
        );
      }
      // RFC 7518 §3.3: RSA keys for RS* SHALL be 2048 bits or larger.
      if ((details.modulusLength ?? 0) < 2048) {
        throw new PermanentError('smart_key_invalid', `SMART RS384 key is ${details.modulusLength} bits; 2048 or more is required`);
      }
      return key;
    case SmartAlgorithm.ES384:
      if (key.asymmetricKeyType !== 'ec' || details.namedCurve !== 'secp384r1') {
        throw new PermanentError(
          'smart_key_invalid',
          `SMART algorithm ES384 needs an EC P-384 (secp384r1) private key, got ` +
            `${key.asymmetricKeyType ?? 'unknown'}${details.namedCurve ? ` ${details.namedCurve}` : ''}`,
        );
      }
      return key;
    default:
      throw new PermanentError(
        'smart_key_invalid',
        `SMART algorithm ${String(algorithm satisfies never)} is not supported (use RS384 or ES384)`,
      );
  }
}

/** JWS compact serialization (RFC 7515 §7.1) signed with RS384 or ES384. */
export function signJws(
  header: Record<string, unknown>,
  payload: Record<string, unknown>,
  key: KeyObject,
  algorithm: SmartAlgorithm,
): string {
  const signingInput = `${base64url(JSON.stringify({ ...header, alg: algorithm }))}.${base64url(JSON.stringify(payload))}`;
  // RFC 7518 §3.4: an ECDSA JWS signature is R‖S (IEEE P1363), not node's default DER.
  const signature =
    algorithm === SmartAlgorithm.ES384
      ? sign('sha384', Buffer.from(signingInput), { key, dsaEncoding: 'ieee-p1363' })
      : sign('sha384', Buffer.from(signingInput), key);
  return `${signingInput}.${base64url(signature)}`;
}

/** RFC 7638 JWK thumbprint (SHA-256, base64url) of the public half of `key`. */
export function jwkThumbprint(key: KeyObject): string {
  const jwk = createPublicKey(key).export({ format: 'jwk' });
  // Required members only, in lexicographic order (RFC 7638 §3.2).
  const canonical =
    jwk.kty === 'EC'
      ? JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y })
      : JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n });
  return createHash('sha256').update(canonical).digest('base64url');
}

/**
 * The JWK Set to register with the EHR (or publish at a jku URL) for this private key:
 * public members only, with `alg`, `kid` and `key_ops: ["verify"]`.
 */
export function publicJwks(privateKeyPem: string, algorithm: SmartAlgorithm, keyId?: string): { keys: Record<string, unknown>[] } {
  const key = loadSigningKey(privateKeyPem, algorithm);
  const jwk = createPublicKey(key).export({ format: 'jwk' });
  return { keys: [{ ...jwk, alg: algorithm, kid: keyId ?? jwkThumbprint(key), key_ops: ['verify'] }] };
}

export interface ClientAssertionClaims {
  iss: string;
  sub: string;
  aud: string;
  /** Seconds since the epoch. */
  exp: number;
  iat: number;
  jti: string;
}

/** Builds and signs one client assertion. `nowMs` is the caller's clock. */
export function signClientAssertion(
  config: Pick<SmartBackendConfig, 'tokenUrl' | 'clientId' | 'algorithm' | 'keyId'>,
  key: KeyObject,
  nowMs: number,
  lifetimeSeconds = 300,
): string {
  const iat = Math.floor(nowMs / 1000);
  const claims: ClientAssertionClaims = {
    iss: config.clientId,
    sub: config.clientId,
    aud: config.tokenUrl,
    exp: iat + lifetimeSeconds,
    iat,
    jti: randomUUID(),
  };
  const header = { typ: 'JWT', kid: config.keyId ?? jwkThumbprint(key) };
  return signJws(header, { ...claims }, key, config.algorithm);
}

// ---------------------------------------------------------------------------------------
// Shared HTTP helpers (used by client.ts too)

// Retry-After and loopback checks are shared with the outbound adapters (http/outbound.ts).
export { isLoopbackUrl, parseRetryAfter } from '../http/outbound.ts';

/**
 * Parses a configured URL and refuses credentials-in-URL and, unless allowed, plain http off
 * loopback (a bearer token or client assertion must not cross the network in clear).
 */
export function checkServiceUrl(raw: string, what: string, allowInsecureHttp: boolean): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new PermanentError('fhir_config_invalid', `${what} is not an absolute URL (expected https://host/path)`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new PermanentError('fhir_config_invalid', `${what} must be an http(s) URL, got ${url.protocol}`);
  }
  if (url.username !== '' || url.password !== '') {
    throw new PermanentError('fhir_config_invalid', `${what} must not carry credentials in the URL; configure auth instead`);
  }
  if (url.protocol === 'http:' && !allowInsecureHttp && !isLoopbackUrl(url)) {
    throw new PermanentError(
      'fhir_config_invalid',
      `${what} uses plain http to ${url.host}; use https (credentials would travel in clear), ` +
        'or set allowInsecureHttp for a lab setup',
    );
  }
  return url;
}

function isAbortError(error: unknown): boolean {
  return error instanceof Error && (error.name === 'TimeoutError' || error.name === 'AbortError');
}

// ---------------------------------------------------------------------------------------
// Token provider

interface CachedToken {
  accessToken: string;
  /** Epoch ms after which the token is no longer handed out. */
  renewAt: number;
}

/**
 * Fetches and caches a backend-services access token. Concurrent callers share one token
 * request (single-flight); the token is reused until `refreshSkewMs` before it expires.
 */
export class SmartTokenProvider implements AccessTokenSource {
  private readonly config: SmartBackendConfig;
  private readonly key: KeyObject;
  private readonly now: () => number;
  private readonly timeoutMs: number;
  private readonly refreshSkewMs: number;
  private readonly assertionLifetimeSeconds: number;
  private cached?: CachedToken;
  private inflight?: Promise<CachedToken>;
  /** Token requests sent so far (a metric and a test hook). */
  requestCount = 0;

  constructor(config: SmartBackendConfig, options: SmartTokenProviderOptions = {}) {
    checkServiceUrl(config.tokenUrl, 'SMART tokenUrl', options.allowInsecureHttp ?? false);
    if (typeof config.clientId !== 'string' || config.clientId === '') {
      throw new PermanentError('fhir_config_invalid', 'SMART clientId is empty; set the client id the EHR registered');
    }
    if (typeof config.scope !== 'string' || config.scope.trim() === '') {
      throw new PermanentError('fhir_config_invalid', 'SMART scope is empty; e.g. "system/Appointment.rs system/Patient.rs"');
    }
    this.key = loadSigningKey(config.privateKey, config.algorithm);
    this.config = { ...config };
    this.now = options.now ?? Date.now;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.refreshSkewMs = options.refreshSkewMs ?? 60_000;
    const lifetime = options.assertionLifetimeSeconds ?? 300;
    if (!(Number.isInteger(lifetime) && lifetime > 0 && lifetime <= 300)) {
      throw new PermanentError('fhir_config_invalid', `SMART assertion lifetime must be 1..300 s (the IG's five-minute limit), got ${lifetime}`);
    }
    this.assertionLifetimeSeconds = lifetime;
  }

  async getToken(): Promise<string> {
    const cached = this.cached;
    if (cached !== undefined && this.now() < cached.renewAt) return cached.accessToken;
    if (this.inflight === undefined) {
      this.inflight = this.requestToken().finally(() => {
        this.inflight = undefined;
      });
    }
    return (await this.inflight).accessToken;
  }

  invalidate(): void {
    this.cached = undefined;
  }

  private async requestToken(): Promise<CachedToken> {
    const requestedAt = this.now();
    const assertion = signClientAssertion(this.config, this.key, requestedAt, this.assertionLifetimeSeconds);
    const form = new URLSearchParams({
      grant_type: 'client_credentials',
      scope: this.config.scope,
      client_assertion_type: CLIENT_ASSERTION_TYPE,
      client_assertion: assertion,
    });
    this.requestCount += 1;
    let response: Response;
    let text: string;
    try {
      response = await fetch(this.config.tokenUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
        body: form.toString(),
        // A token endpoint that redirects is misconfigured; never replay the assertion elsewhere.
        redirect: 'manual',
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      text = await response.text();
    } catch (cause) {
      const code = isAbortError(cause) ? 'smart_token_timeout' : 'smart_token_unreachable';
      throw new TransientError(code, `SMART token endpoint ${new URL(this.config.tokenUrl).host} did not answer`, { cause });
    }
    const { status } = response;
    if (status === 429 || status >= 500) {
      throw new TransientError('smart_token_unavailable', `SMART token endpoint answered HTTP ${status}`, {
        retryAfterMs: parseRetryAfter(response.headers.get('retry-after'), this.now()),
      });
    }
    if (status >= 300 && status < 400) {
      throw new SmartTokenError('smart_token_redirect', `SMART token endpoint redirected (HTTP ${status}); configure tokenUrl to the final address`, { status });
    }
    let body: unknown;
    try {
      body = text === '' ? undefined : JSON.parse(text);
    } catch {
      body = undefined;
    }
    const fields = typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : {};
    if (status >= 400) {
      const oauthError = typeof fields.error === 'string' ? fields.error : undefined;
      const known = oauthError !== undefined && OAUTH_ERROR_CODES.includes(oauthError);
      const description =
        typeof fields.error_description === 'string' ? `: ${fields.error_description.slice(0, 200)}` : '';
      throw new SmartTokenError(
        known ? `smart_${oauthError}` : 'smart_token_rejected',
        `SMART token request refused (HTTP ${status}${oauthError ? `, ${oauthError}` : ''})${description}` +
          (oauthError === 'invalid_client' ? '; check clientId, keyId and that the public key is registered' : ''),
        { oauthError, status },
      );
    }
    const accessToken = fields.access_token;
    if (typeof accessToken !== 'string' || accessToken === '') {
      throw new SmartTokenError('smart_token_invalid_response', `SMART token response (HTTP ${status}) has no access_token`, { status });
    }
    if (typeof fields.token_type !== 'string' || fields.token_type.toLowerCase() !== 'bearer') {
      throw new SmartTokenError('smart_token_invalid_response', `SMART token_type must be "bearer", got ${JSON.stringify(fields.token_type)?.slice(0, 40)}`, { status });
    }
    // expires_in (seconds) is required by the IG; a server that omits it gets the
    // five-minute assertion lifetime as a conservative guess.
    const expiresInMs =
      typeof fields.expires_in === 'number' && Number.isFinite(fields.expires_in) && fields.expires_in > 0
        ? fields.expires_in * 1000
        : 300_000;
    // Count from when the request left: the server's clock started no earlier than that.
    const renewAt = requestedAt + expiresInMs - Math.min(this.refreshSkewMs, expiresInMs / 2);
    const token: CachedToken = { accessToken, renewAt };
    this.cached = token;
    return token;
  }
}

/** A fixed bearer token (configured secret). `invalidate` is a no-op: there is nothing to renew. */
export class StaticTokenSource implements AccessTokenSource {
  constructor(private readonly token: string) {
    if (typeof token !== 'string' || token === '') {
      throw new PermanentError('fhir_config_invalid', 'FHIR bearer token is empty');
    }
  }
  async getToken(): Promise<string> {
    return this.token;
  }
  invalidate(): void {}
}
