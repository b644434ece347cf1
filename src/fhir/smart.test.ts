import { generateKeyPairSync, verify } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PermanentError, TransientError } from '../errors.ts';
import { startFhirTestServer, type FhirTestServer } from '../../test/helpers/fhir-server.ts';
import {
  checkServiceUrl,
  jwkThumbprint,
  loadSigningKey,
  parseRetryAfter,
  publicJwks,
  signClientAssertion,
  SmartTokenError,
  SmartTokenProvider,
  type SmartAlgorithm,
} from './smart.ts';

interface Pem {
  privateKey: string;
  publicKey: string;
}

function pemPair(kind: 'rsa' | 'ec', size?: number): Pem {
  return kind === 'rsa'
    ? generateKeyPairSync('rsa', {
        modulusLength: size ?? 2048,
        publicKeyEncoding: { type: 'spki', format: 'pem' },
        privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
      })
    : generateKeyPairSync('ec', {
        namedCurve: 'P-384',
        publicKeyEncoding: { type: 'spki', format: 'pem' },
        privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
      });
}

function decodeJwt(token: string): { header: Record<string, unknown>; claims: Record<string, unknown>; signature: Buffer; input: Buffer } {
  const [h, c, s] = token.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString()),
    claims: JSON.parse(Buffer.from(c, 'base64url').toString()),
    signature: Buffer.from(s, 'base64url'),
    input: Buffer.from(`${h}.${c}`),
  };
}

let rsa: Pem;
let ec: Pem;
let otherRsa: Pem;

beforeAll(() => {
  rsa = pemPair('rsa');
  ec = pemPair('ec');
  otherRsa = pemPair('rsa');
});

describe('client assertion', () => {
  const config = { tokenUrl: 'https://ehr.example.org/auth/token', clientId: 'carerelay-test' };

  it('ES384: claims per SMART backend services, kid = JWK thumbprint, P1363 signature', () => {
    const key = loadSigningKey(ec.privateKey, 'ES384');
    const now = Date.UTC(2025, 0, 2, 3, 4, 5, 678);
    const jwt = decodeJwt(signClientAssertion({ ...config, algorithm: 'ES384' }, key, now));
    expect(jwt.header).toEqual({ typ: 'JWT', kid: jwkThumbprint(key), alg: 'ES384' });
    expect(jwt.claims).toMatchObject({
      iss: 'carerelay-test',
      sub: 'carerelay-test',
      aud: 'https://ehr.example.org/auth/token',
      iat: Math.floor(now / 1000),
      exp: Math.floor(now / 1000) + 300,
    });
    expect(jwt.claims.jti).toMatch(/^[0-9a-f-]{36}$/);
    // R‖S for P-384 is 2 × 48 bytes; DER would be ~102-104 bytes and start with 0x30.
    expect(jwt.signature.length).toBe(96);
    expect(verify('sha384', jwt.input, { key: ec.publicKey, dsaEncoding: 'ieee-p1363' }, jwt.signature)).toBe(true);
  });

  it('RS384: verifies with the public key; keyId overrides the kid; jti differs per assertion', () => {
    const key = loadSigningKey(rsa.privateKey, 'RS384');
    const a = decodeJwt(signClientAssertion({ ...config, algorithm: 'RS384', keyId: 'key-2025' }, key, Date.now()));
    const b = decodeJwt(signClientAssertion({ ...config, algorithm: 'RS384', keyId: 'key-2025' }, key, Date.now()));
    expect(a.header).toEqual({ typ: 'JWT', kid: 'key-2025', alg: 'RS384' });
    expect(verify('sha384', a.input, rsa.publicKey, a.signature)).toBe(true);
    expect(verify('sha384', a.input, otherRsa.publicKey, a.signature)).toBe(false);
    expect(a.claims.jti).not.toBe(b.claims.jti);
  });

  it('publicJwks publishes only public members under the default kid', () => {
    const jwks = publicJwks(ec.privateKey, 'ES384');
    const key = loadSigningKey(ec.privateKey, 'ES384');
    expect(jwks.keys).toHaveLength(1);
    expect(jwks.keys[0]).toMatchObject({ kty: 'EC', crv: 'P-384', alg: 'ES384', kid: jwkThumbprint(key), key_ops: ['verify'] });
    expect(jwks.keys[0]).not.toHaveProperty('d');
  });

  it.each<[string, () => string, SmartAlgorithm, RegExp]>([
    ['garbage', () => 'not a key', 'RS384', /not a readable PEM private key/],
    ['an RSA key for ES384', () => rsa.privateKey, 'ES384', /needs an EC P-384/],
    ['an EC key for RS384', () => ec.privateKey, 'RS384', /needs an RSA private key/],
    ['a P-256 key for ES384', () => generateKeyPairSync('ec', { namedCurve: 'P-256', privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } }).privateKey, 'ES384', /prime256v1/],
    ['a 1024-bit RSA key', () => pemPair('rsa', 1024).privateKey, 'RS384', /1024 bits; 2048 or more/],
  ])('refuses %s with smart_key_invalid, without echoing the key', (_name, pem, algorithm, message) => {
    const key = pem();
    let error: unknown;
    try {
      loadSigningKey(key, algorithm);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(PermanentError);
    expect((error as PermanentError).code).toBe('smart_key_invalid');
    expect((error as Error).message).toMatch(message);
    expect((error as Error).message).not.toContain('PRIVATE KEY-----\n');
  });
});

describe('helpers', () => {
  it('parseRetryAfter reads seconds and HTTP-dates', () => {
    const now = Date.UTC(2025, 5, 1, 12, 0, 0);
    expect(parseRetryAfter('7', now)).toBe(7000);
    expect(parseRetryAfter(' 0 ', now)).toBe(0);
    expect(parseRetryAfter(new Date(now + 90_000).toUTCString(), now)).toBe(90_000);
    expect(parseRetryAfter(new Date(now - 90_000).toUTCString(), now)).toBe(0);
    expect(parseRetryAfter('soon', now)).toBeUndefined();
    expect(parseRetryAfter(null, now)).toBeUndefined();
  });

  it('checkServiceUrl refuses plain http off loopback and credentials in the URL', () => {
    expect(checkServiceUrl('http://127.0.0.1:8080/fhir', 'x', false).host).toBe('127.0.0.1:8080');
    expect(checkServiceUrl('http://localhost/fhir', 'x', false).hostname).toBe('localhost');
    expect(() => checkServiceUrl('http://ehr.example.org/fhir', 'FHIR baseUrl', false)).toThrow(/plain http to ehr.example.org/);
    expect(checkServiceUrl('http://ehr.example.org/fhir', 'x', true).protocol).toBe('http:');
    expect(() => checkServiceUrl('https://user:pw@ehr.example.org/fhir', 'x', false)).toThrow(/credentials/);
    expect(() => checkServiceUrl('ftp://ehr.example.org/', 'x', false)).toThrow(/http\(s\)/);
    expect(() => checkServiceUrl('/fhir', 'x', false)).toThrow(/absolute URL/);
  });
});

describe('SmartTokenProvider against the test token endpoint', () => {
  let server: FhirTestServer | undefined;
  let clock = Date.UTC(2025, 2, 3, 9, 0, 0);
  const now = (): number => clock;

  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  async function setUp(registeredPublicKey: string): Promise<FhirTestServer> {
    clock = Date.UTC(2025, 2, 3, 9, 0, 0);
    server = await startFhirTestServer({ now, tokenLifetimeSeconds: 300 });
    server.registerClient('carerelay', registeredPublicKey);
    return server;
  }

  function provider(s: FhirTestServer, pem: string, algorithm: SmartAlgorithm): SmartTokenProvider {
    return new SmartTokenProvider(
      { tokenUrl: s.tokenUrl, clientId: 'carerelay', privateKey: pem, algorithm, scope: 'system/Appointment.rs' },
      { now },
    );
  }

  it.each<[SmartAlgorithm, () => Pem]>([
    ['RS384', () => rsa],
    ['ES384', () => ec],
  ])('%s: the server verifies the assertion; the token is cached', async (algorithm, keys) => {
    const s = await setUp(keys().publicKey);
    const p = provider(s, keys().privateKey, algorithm);
    const token = await p.getToken();
    expect(token).toMatch(/\S{10,}/);
    expect(s.tokenRejections).toEqual([]);
    expect(await p.getToken()).toBe(token);
    expect(s.countRequests('/auth/token')).toBe(1);
  });

  it('renews shortly before expires_in, with a fresh jti the server accepts', async () => {
    const s = await setUp(ec.publicKey);
    const p = provider(s, ec.privateKey, 'ES384');
    const first = await p.getToken();
    clock += 239_000; // 300 s token, renewed 60 s before it runs out
    expect(await p.getToken()).toBe(first);
    expect(s.countRequests('/auth/token')).toBe(1);
    clock += 2_000;
    const second = await p.getToken();
    expect(second).not.toBe(first);
    expect(s.countRequests('/auth/token')).toBe(2);
    p.invalidate();
    expect(await p.getToken()).not.toBe(second);
    expect(s.tokenRejections).toEqual([]);
  });

  it('concurrent callers share one token request', async () => {
    const s = await setUp(rsa.publicKey);
    const p = provider(s, rsa.privateKey, 'RS384');
    const tokens = await Promise.all(Array.from({ length: 8 }, () => p.getToken()));
    expect(new Set(tokens).size).toBe(1);
    expect(s.countRequests('/auth/token')).toBe(1);
    expect(p.requestCount).toBe(1);
  });

  it('a key the server does not know gives a PermanentError with invalid_client, never the secret', async () => {
    const s = await setUp(rsa.publicKey);
    const p = provider(s, otherRsa.privateKey, 'RS384');
    const error = await p.getToken().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(SmartTokenError);
    expect(error).toBeInstanceOf(PermanentError);
    expect(error).toMatchObject({ code: 'smart_invalid_client', oauthError: 'invalid_client', status: 401 });
    expect(s.tokenRejections).toEqual(['bad_signature']);
    const text = `${(error as Error).message} ${JSON.stringify(error)}`;
    expect(text).not.toContain(otherRsa.privateKey.split('\n')[1]);
    expect(text).not.toContain('eyJ'); // no JWS (header or assertion) in the error
  });

  it('an unknown client id is invalid_client too', async () => {
    const s = await setUp(rsa.publicKey);
    const p = new SmartTokenProvider(
      { tokenUrl: s.tokenUrl, clientId: 'someone-else', privateKey: rsa.privateKey, algorithm: 'RS384', scope: 'system/*.rs' },
      { now },
    );
    await expect(p.getToken()).rejects.toMatchObject({ code: 'smart_invalid_client' });
    expect(s.tokenRejections).toEqual(['unknown_client']);
  });

  it('a token endpoint answering 503 or 429 gives a TransientError and caches nothing', async () => {
    const s = await setUp(rsa.publicKey);
    const p = provider(s, rsa.privateKey, 'RS384');
    s.failNextToken(503, 1);
    await expect(p.getToken()).rejects.toMatchObject({ code: 'smart_token_unavailable', failureClass: 'transient' });
    s.failNextToken(429, 1);
    await expect(p.getToken()).rejects.toBeInstanceOf(TransientError);
    expect(await p.getToken()).toMatch(/\S+/);
    expect(s.countRequests('/auth/token')).toBe(3);
  });

  it('a token endpoint that does not answer in time or at all is transient', async () => {
    // A listening socket that never answers, then a port nothing listens on.
    const silent = http.createServer(() => {});
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as AddressInfo).port;
    try {
      const slow = new SmartTokenProvider(
        { tokenUrl: `http://127.0.0.1:${port}/token`, clientId: 'c', privateKey: ec.privateKey, algorithm: 'ES384', scope: 's' },
        { timeoutMs: 150 },
      );
      await expect(slow.getToken()).rejects.toMatchObject({ code: 'smart_token_timeout', failureClass: 'transient' });
    } finally {
      silent.closeAllConnections();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    }
    const down = new SmartTokenProvider(
      { tokenUrl: `http://127.0.0.1:${port}/token`, clientId: 'c', privateKey: ec.privateKey, algorithm: 'ES384', scope: 's' },
      { timeoutMs: 2_000 },
    );
    await expect(down.getToken()).rejects.toMatchObject({ code: 'smart_token_unreachable', failureClass: 'transient' });
  });

  it('refuses bad configuration at construction', () => {
    const base = { tokenUrl: 'https://ehr.example.org/token', clientId: 'c', privateKey: ec.privateKey, algorithm: 'ES384' as const, scope: 's' };
    expect(() => new SmartTokenProvider({ ...base, clientId: '' })).toThrow(/clientId is empty/);
    expect(() => new SmartTokenProvider({ ...base, scope: ' ' })).toThrow(/scope is empty/);
    expect(() => new SmartTokenProvider({ ...base, tokenUrl: 'http://ehr.example.org/token' })).toThrow(/plain http/);
    expect(() => new SmartTokenProvider(base, { assertionLifetimeSeconds: 600 })).toThrow(/five-minute/);
  });
});

