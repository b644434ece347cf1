// An OAuth 2.0 token endpoint for tests, mounted by the provider stand-ins (SFMC, Salesforce,
// Adobe IMS) or started alone. It issues opaque bearer tokens that expire on its own clock (so a
// test moves the clock and the refresh path runs), enforces what each provider documents for its
// token request (path, content type — SFMC's v2/token takes JSON, Salesforce and Adobe IMS take
// a form —, grant_type, the client's id and secret, or a JWT bearer assertion: RS256, verified
// here with node:crypto against the registered public key, iss/sub/aud/exp checked), answers
// RFC 6749 §5.2 errors ({ error, error_description }, 400/401), counts requests, and can be told
// to hold its answers (to count concurrent refreshes), to answer a status, or to drop the
// connection.
import { randomBytes, verify } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Arrivals } from './arrivals.ts';

export interface TokenIssuerOptions {
  /** Path of the token endpoint, e.g. /v2/token, /services/oauth2/token, /ims/token/v3. */
  path: string;
  encoding: 'form' | 'json';
  /** Accepted client credentials. */
  clients?: Array<{ id: string; secret: string }>;
  /** Accepted JWT bearer assertions: the registered public key (PEM) and the claims expected. */
  jwt?: { publicKey: string; issuer: string; audience: string; subjects: string[] };
  /** How long a token lives on the issuer's clock, seconds. */
  lifetimeSeconds: number;
  /** Whether the answer says so (`expires_in`): Salesforce's does not. */
  sendExpiresIn: boolean;
  /** Other members of the answer (instance_url, rest_instance_url, scope…). */
  fields?: () => Record<string, string>;
  /** The issuer's clock, ms. Default Date.now. */
  now?: () => number;
  /** token_type in answers. Default "Bearer". */
  tokenType?: string;
}

export type TokenFault = { kind: 'status'; status: number; body?: unknown; retryAfter?: string } | { kind: 'reset' };

export interface TokenRequestRecord {
  contentType?: string;
  params: Record<string, string>;
  /** What was answered (0: not yet, or no answer). */
  status: number;
}

export type TokenCheck = 'valid' | 'expired' | 'invalid';

export class TokenIssuer {
  readonly options: TokenIssuerOptions;
  readonly requests: TokenRequestRecord[] = [];
  readonly #tokens = new Map<string, number>();
  readonly #faults: TokenFault[] = [];
  readonly #arrivals = new Arrivals();
  #held: Array<() => void> | undefined;

  constructor(options: TokenIssuerOptions) {
    this.options = options;
  }

  get now(): number {
    return (this.options.now ?? Date.now)();
  }

  /** Resolves once `n` token requests have arrived in full (answered or held). */
  waitForRequests(n: number): Promise<void> {
    return this.#arrivals.waitFor(n);
  }

  /** Tokens issued so far. */
  get issued(): number {
    return this.#tokens.size;
  }

  failNext(fault: TokenFault): void {
    this.#faults.push(fault);
  }

  /** Token requests wait until the returned function is called. */
  hold(): () => void {
    this.#held = [];
    return () => {
      const waiting = this.#held ?? [];
      this.#held = undefined;
      for (const go of waiting) go();
    };
  }

  /** Requests received and not answered yet (while held). */
  get waiting(): number {
    return this.#held?.length ?? 0;
  }

  /** Revokes every token (the API answers 401 to them from now on). */
  revokeAll(): void {
    for (const token of this.#tokens.keys()) this.#tokens.set(token, Number.NEGATIVE_INFINITY);
  }

  /** What an API stand-in makes of an Authorization header. */
  check(authorization: string | undefined): TokenCheck {
    const m = /^Bearer (\S+)$/.exec(authorization ?? '');
    const expires = m ? this.#tokens.get(m[1]!) : undefined;
    if (expires === undefined || expires === Number.NEGATIVE_INFINITY) return 'invalid';
    return this.now < expires ? 'valid' : 'expired';
  }

  /** Handles the request when it is for the token path; false otherwise. */
  handle(req: http.IncomingMessage, body: Buffer, res: http.ServerResponse): boolean {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname !== this.options.path) return false;
    const contentType = req.headers['content-type'];
    const params = parseParams(contentType, body);
    const record: TokenRequestRecord = { ...(contentType !== undefined ? { contentType } : {}), params, status: 0 };
    this.requests.push(record);
    this.#arrivals.arrive();
    const answer = () => this.#answer(req, res, record, contentType);
    if (this.#held !== undefined) this.#held.push(answer);
    else answer();
    return true;
  }

  #answer(req: http.IncomingMessage, res: http.ServerResponse, record: TokenRequestRecord, contentType: string | undefined): void {
    const send = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      record.status = status;
      res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body));
    };
    const error = (status: number, code: string, description: string) => send(status, { error: code, error_description: description });
    const fault = this.#faults.shift();
    if (fault?.kind === 'reset') {
      req.socket.destroy();
      return;
    }
    if (fault?.kind === 'status') {
      send(fault.status, fault.body ?? { error: 'server_error' }, fault.retryAfter !== undefined ? { 'retry-after': fault.retryAfter } : {});
      return;
    }
    if (req.method !== 'POST') return error(405, 'invalid_request', 'POST only');
    const wanted = this.options.encoding === 'json' ? 'application/json' : 'application/x-www-form-urlencoded';
    if (!(contentType ?? '').startsWith(wanted)) return error(400, 'invalid_request', `Content-Type must be ${wanted}`);
    const { params } = record;
    if (params.grant_type === 'client_credentials') {
      const client = this.options.clients?.find((c) => c.id === params.client_id);
      if (client === undefined || client.secret !== params.client_secret) return error(401, 'invalid_client', 'invalid client credentials');
    } else if (params.grant_type === 'urn:ietf:params:oauth:grant-type:jwt-bearer') {
      const problem = this.#checkAssertion(params.assertion ?? '');
      if (problem !== undefined) return error(400, 'invalid_grant', problem);
    } else {
      return error(400, 'unsupported_grant_type', 'grant type not supported');
    }
    const token = randomBytes(24).toString('base64url');
    this.#tokens.set(token, this.now + this.options.lifetimeSeconds * 1000);
    send(200, {
      access_token: token,
      token_type: this.options.tokenType ?? 'Bearer',
      ...(this.options.sendExpiresIn ? { expires_in: this.options.lifetimeSeconds } : {}),
      ...this.options.fields?.(),
    });
  }

  #checkAssertion(assertion: string): string | undefined {
    const jwt = this.options.jwt;
    if (jwt === undefined) return 'JWT bearer not enabled';
    const [h, c, s] = assertion.split('.');
    if (h === undefined || c === undefined || s === undefined) return 'malformed assertion';
    let header: Record<string, unknown>;
    let claims: Record<string, unknown>;
    try {
      header = JSON.parse(Buffer.from(h, 'base64url').toString());
      claims = JSON.parse(Buffer.from(c, 'base64url').toString());
    } catch {
      return 'malformed assertion';
    }
    if (header.alg !== 'RS256') return 'alg must be RS256';
    if (!verify('sha256', Buffer.from(`${h}.${c}`), jwt.publicKey, Buffer.from(s, 'base64url'))) return 'invalid assertion signature';
    if (claims.iss !== jwt.issuer) return 'invalid client identifier';
    if (claims.aud !== jwt.audience) return 'audience is invalid';
    if (typeof claims.sub !== 'string' || !jwt.subjects.includes(claims.sub)) return 'user hasn\'t approved this consumer';
    const nowSeconds = Math.floor(this.now / 1000);
    // Salesforce: exp within three minutes of the request, not in the past.
    if (typeof claims.exp !== 'number' || claims.exp < nowSeconds || claims.exp > nowSeconds + 180) return 'expired authorization code';
    return undefined;
  }
}

function parseParams(contentType: string | undefined, body: Buffer): Record<string, string> {
  const text = body.toString('utf8');
  if ((contentType ?? '').startsWith('application/json')) {
    try {
      const value: unknown = JSON.parse(text);
      if (typeof value !== 'object' || value === null) return {};
      return Object.fromEntries(Object.entries(value).filter(([, v]) => typeof v === 'string')) as Record<string, string>;
    } catch {
      return {};
    }
  }
  return Object.fromEntries(new URLSearchParams(text));
}

/** Reads a request's body in full. */
export function readBody(req: http.IncomingMessage): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
  });
}

/** A token endpoint alone on 127.0.0.1 (the token provider's own tests). */
export async function startTokenIssuer(options: TokenIssuerOptions): Promise<{ issuer: TokenIssuer; url: string; close(): Promise<void> }> {
  const issuer = new TokenIssuer(options);
  const server = http.createServer((req, res) => {
    void readBody(req).then((body) => {
      if (!issuer.handle(req, body, res)) res.writeHead(404).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    issuer,
    url: `http://127.0.0.1:${port}${options.path}`,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
