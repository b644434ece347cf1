import { generateKeyPairSync } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readBody, startTokenIssuer, type TokenIssuer, type TokenIssuerOptions } from '../../test/helpers/oauth-standin.ts';
import { AmbiguousError, PermanentError, RateLimitedError, TransientError } from '../errors.ts';
import { OAuthTokenProvider, sendWithToken, type OAuthGrant, type OAuthTokenOptions } from './oauth-token.ts';
import { AddressPolicy } from './outbound.ts';

const T0 = Date.UTC(2030, 0, 1, 8, 0, 0);
const loopback = new AddressPolicy(['127.0.0.1']);

let rsa: { publicKey: string; privateKey: string };
beforeAll(() => {
  rsa = generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } });
});

function providerFor(url: string, now: () => number, options: Partial<OAuthTokenOptions> & Pick<OAuthTokenOptions, 'grant'>): OAuthTokenProvider {
  return new OAuthTokenProvider({
    tokenUrl: new URL(url),
    defaultLifetimeSeconds: 900,
    refreshBeforeSeconds: 300,
    timeoutMs: 5000,
    codePrefix: 'test',
    addresses: loopback,
    now,
    ...options,
  });
}

describe('OAuthTokenProvider', () => {
  let clock = T0;
  let endpoint: Awaited<ReturnType<typeof startTokenIssuer>> | undefined;
  afterEach(async () => {
    await endpoint?.close();
    endpoint = undefined;
    clock = T0;
  });

  const start = async (issuer: Partial<TokenIssuerOptions> = {}) => {
    endpoint = await startTokenIssuer({
      path: '/token',
      encoding: 'form',
      clients: [{ id: 'carerelay', secret: 's3cret' }],
      lifetimeSeconds: 1200,
      sendExpiresIn: true,
      now: () => clock,
      ...issuer,
    });
    return endpoint.issuer;
  };
  const provider = (options: Partial<OAuthTokenOptions> = {}, grant: Partial<OAuthGrant> = {}) =>
    providerFor(endpoint!.url, () => clock, { grant: { kind: 'client_credentials', clientId: 'carerelay', clientSecret: 's3cret', encoding: 'form', ...grant } as OAuthGrant, ...options });

  it('caches the token and renews it refreshBeforeSeconds before expires_in runs out', async () => {
    const issuer = await start({ fields: () => ({ rest_instance_url: 'https://mc.rest.example/', scope: 'journeys_execute' }) });
    const tokens = provider();
    const first = await tokens.token();
    expect(first.expiresAt).toBe(T0 + 1_200_000);
    expect(first.fields).toEqual({ token_type: 'Bearer', rest_instance_url: 'https://mc.rest.example/', scope: 'journeys_execute' });
    clock = T0 + 899_999;
    expect(await tokens.token()).toBe(first);
    expect(issuer.requests).toHaveLength(1);
    // 1,200 s − 300 s: the next caller gets a new one, the old one still being valid on the server.
    clock = T0 + 900_000;
    const second = await tokens.token();
    expect(second.accessToken).not.toBe(first.accessToken);
    expect(issuer.check(`Bearer ${first.accessToken}`)).toBe('valid');
    expect(issuer.requests).toHaveLength(2);
    expect(tokens.requests).toBe(2);
  });

  it('without expires_in keeps the token for the configured lifetime', async () => {
    const issuer = await start({ sendExpiresIn: false, lifetimeSeconds: 7200 });
    const tokens = provider({ defaultLifetimeSeconds: 900, refreshBeforeSeconds: 60 });
    const first = await tokens.token();
    expect(first.expiresAt).toBe(T0 + 900_000);
    clock = T0 + 839_999;
    expect(await tokens.token()).toBe(first);
    clock = T0 + 840_000;
    await tokens.token();
    expect(issuer.requests).toHaveLength(2);
  });

  it('a short-lived token is renewed at half its life at the latest', async () => {
    await start({ lifetimeSeconds: 100 });
    const tokens = provider({ refreshBeforeSeconds: 300 });
    expect((await tokens.token()).renewAt).toBe(T0 + 50_000);
  });

  it('sends JSON with the extra parameters when asked (SFMC v2/token)', async () => {
    const issuer = await start({ encoding: 'json' });
    await provider({}, { encoding: 'json', scope: 'journeys_execute email_send', extra: { account_id: '514000123' } }).token();
    expect(issuer.requests[0]).toMatchObject({
      contentType: 'application/json',
      params: { grant_type: 'client_credentials', client_id: 'carerelay', client_secret: 's3cret', scope: 'journeys_execute email_send', account_id: '514000123' },
      status: 200,
    });
  });

  it('concurrent callers share one token request', async () => {
    const issuer = await start();
    const tokens = provider();
    const release = issuer.hold();
    const waiting = Array.from({ length: 20 }, () => tokens.token());
    await issuer.waitForRequests(1);
    release();
    const got = await Promise.all(waiting);
    expect(new Set(got.map((t) => t.accessToken)).size).toBe(1);
    expect(issuer.requests).toHaveLength(1);
    expect(tokens.requests).toBe(1);
  });

  it("a caller's signal ends its own wait only", async () => {
    const issuer = await start();
    const tokens = provider();
    const release = issuer.hold();
    const controller = new AbortController();
    const mine = tokens.token(controller.signal).catch((e: unknown) => e);
    const other = tokens.token();
    await issuer.waitForRequests(1);
    controller.abort();
    expect(await mine).toMatchObject({ code: 'test_token_aborted', failureClass: 'transient' });
    release();
    expect((await other).accessToken).toMatch(/.+/);
    expect(issuer.requests).toHaveLength(1);
    await expect(tokens.token(controller.signal)).rejects.toBeInstanceOf(TransientError);
  });

  it('classifies the token endpoint: refused credentials are permanent, 5xx and lost connections transient, 429 rate-limited', async () => {
    const issuer = await start();
    const wrong = provider({}, { clientSecret: 'nope' });
    const refused = await wrong.token().catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(PermanentError);
    expect(refused).toMatchObject({ code: 'test_token_invalid_client' });
    expect((refused as Error).message).not.toContain('nope');

    const tokens = provider();
    issuer.failNext({ kind: 'status', status: 503 });
    await expect(tokens.token()).rejects.toMatchObject({ code: 'test_token_unavailable', failureClass: 'transient' });
    issuer.failNext({ kind: 'status', status: 429, retryAfter: '30' });
    const limited = await tokens.token().catch((e: unknown) => e);
    expect(limited).toBeInstanceOf(RateLimitedError);
    expect(limited).toMatchObject({ retryAfterMs: 30_000 });
    issuer.failNext({ kind: 'reset' });
    const lost = await tokens.token().catch((e: unknown) => e);
    // The request had left, but asking for a token changes nothing: not ambiguous.
    expect(lost).toBeInstanceOf(TransientError);
    expect(lost).not.toBeInstanceOf(AmbiguousError);
    issuer.failNext({ kind: 'status', status: 200, body: { token_type: 'Bearer' } });
    await expect(tokens.token()).rejects.toMatchObject({ code: 'test_token_invalid_response', failureClass: 'permanent' });
    issuer.failNext({ kind: 'status', status: 400, body: { error: 'invalid_scope', error_description: 'scope x' } });
    await expect(tokens.token()).rejects.toMatchObject({ code: 'test_token_invalid_scope' });
    issuer.failNext({ kind: 'status', status: 403, body: { error: 'something_else' } });
    await expect(tokens.token()).rejects.toMatchObject({ code: 'test_token_rejected', failureClass: 'permanent' });
    // Failures are not cached: the next call asks again.
    await expect(tokens.token()).resolves.toMatchObject({ expiresAt: T0 + 1_200_000 });
    expect(issuer.requests).toHaveLength(8);
  });

  it('no answer within the deadline is transient', async () => {
    const issuer = await start();
    issuer.hold();
    await expect(provider({ timeoutMs: 200 }).token()).rejects.toMatchObject({ code: 'test_token_timeout', failureClass: 'transient' });
  });

  it('JWT bearer: an RS256 assertion with iss, sub, aud and exp the server verifies', async () => {
    const issuer = await start({ jwt: { publicKey: rsa.publicKey, issuer: '3MVG9-consumer-key', audience: 'https://login.salesforce.com', subjects: ['integration@northclinic.example'] } });
    const grant = { kind: 'jwt_bearer', issuer: '3MVG9-consumer-key', subject: 'integration@northclinic.example', audience: 'https://login.salesforce.com', privateKey: rsa.privateKey } as const;
    const tokens = provider({}, grant);
    await tokens.token();
    expect(issuer.requests[0]).toMatchObject({ status: 200, params: { grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer' } });
    const claims = JSON.parse(Buffer.from(issuer.requests[0]!.params.assertion!.split('.')[1]!, 'base64url').toString());
    expect(claims).toMatchObject({ iss: '3MVG9-consumer-key', sub: 'integration@northclinic.example', aud: 'https://login.salesforce.com', exp: T0 / 1000 + 180 });
    const stranger = provider({}, { ...grant, subject: 'someone@else.example' });
    await expect(stranger.token()).rejects.toMatchObject({ code: 'test_token_invalid_grant', failureClass: 'permanent' });
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256', privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
    expect(() => provider({}, { ...grant, privateKey: ec.privateKey })).toThrow(/RSA key of 2048 bits or more/);
    expect(() => provider({}, { ...grant, privateKey: 'not a key' })).toThrow(/not a readable PEM private key/);
  });
});

describe('sendWithToken', () => {
  let clock = T0;
  let endpoint: Awaited<ReturnType<typeof startTokenIssuer>>;
  let api: http.Server;
  let apiUrl: URL;
  let issuer: TokenIssuer;
  let calls: string[];

  const setUp = async () => {
    endpoint = await startTokenIssuer({ path: '/token', encoding: 'form', clients: [{ id: 'c', secret: 's' }], lifetimeSeconds: 1200, sendExpiresIn: true, now: () => clock });
    issuer = endpoint.issuer;
    calls = [];
    api = http.createServer((req, res) => {
      void readBody(req).then(() => {
        const check = issuer.check(req.headers.authorization);
        calls.push(check);
        res.writeHead(check === 'valid' ? 200 : 401, { 'content-type': 'application/json' }).end(check === 'valid' ? '{"ok":true}' : '[{"errorCode":"INVALID_SESSION_ID"}]');
      });
    });
    await new Promise<void>((resolve) => api.listen(0, '127.0.0.1', resolve));
    apiUrl = new URL(`http://127.0.0.1:${(api.address() as AddressInfo).port}/api`);
  };
  afterEach(async () => {
    await endpoint.close();
    api.closeAllConnections();
    await new Promise<void>((resolve) => api.close(() => resolve()));
    clock = T0;
  });

  const tokens = () => providerFor(endpoint.url, () => clock, { grant: { kind: 'client_credentials', clientId: 'c', clientSecret: 's', encoding: 'form' } });
  const call = (provider: OAuthTokenProvider) =>
    sendWithToken(provider, new AbortController().signal, (token) => ({
      url: apiUrl,
      headers: { authorization: `Bearer ${token.accessToken}` },
      body: Buffer.from('{}'),
      timeoutMs: 5000,
      addresses: loopback,
      codePrefix: 'test',
    }));

  it('a token the API refuses (revoked, expired early) is renewed once for all concurrent sends; each call is repeated once', async () => {
    await setUp();
    const provider = tokens();
    await call(provider);
    expect(issuer.requests).toHaveLength(1);
    issuer.revokeAll();
    const results = await Promise.all(Array.from({ length: 8 }, () => call(provider)));
    expect(results.map((r) => r.response.status)).toEqual(Array(8).fill(200));
    expect(issuer.requests).toHaveLength(2);
    expect(calls.filter((c) => c === 'invalid')).toHaveLength(8);
    expect(calls.filter((c) => c === 'valid')).toHaveLength(9);
  });

  it('expiry on the clock renews before the call; a second 401 is returned as it is, never a third call', async () => {
    await setUp();
    const provider = tokens();
    await call(provider);
    clock = T0 + 1_000_000;
    expect((await call(provider)).response.status).toBe(200);
    expect(calls).toEqual(['valid', 'valid']);
    expect(issuer.requests).toHaveLength(2);
    // A server that refuses every token.
    issuer.check = () => 'invalid';
    const { response } = await call(provider);
    expect(response.status).toBe(401);
    expect(calls).toHaveLength(4);
    expect(issuer.requests).toHaveLength(3);
  });
});
