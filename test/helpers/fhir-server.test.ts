// The test FHIR server's own checks: its token endpoint must refuse every kind of bad
// client assertion, or the SMART tests that pass against it would prove nothing.
import { createPrivateKey, generateKeyPairSync, randomUUID, sign } from 'node:crypto';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startFhirTestServer, type FhirTestServer } from './fhir-server.ts';

const T0 = Date.UTC(2025, 4, 5, 6, 7, 8);
let clock = T0;
let server: FhirTestServer;
let keys: { privateKey: string; publicKey: string };

beforeAll(() => {
  keys = generateKeyPairSync('ec', {
    namedCurve: 'P-384',
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
});

beforeEach(async () => {
  clock = T0;
  server = await startFhirTestServer({ now: () => clock, auth: true, tokenLifetimeSeconds: 60 });
  server.registerClient('app', keys.publicKey, 'k1');
});

afterEach(async () => {
  await server.close();
});

const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');

/** A hand-made ES384 assertion; `der` signs in node's default DER form (wrong for JWS). */
function assertion(
  claims: Record<string, unknown> = {},
  header: Record<string, unknown> = {},
  options: { der?: boolean } = {},
): string {
  const s = Math.floor(clock / 1000);
  const input = `${b64({ alg: 'ES384', typ: 'JWT', kid: 'k1', ...header })}.${b64({
    iss: 'app',
    sub: 'app',
    aud: server.tokenUrl,
    exp: s + 240,
    jti: randomUUID(),
    ...claims,
  })}`;
  const key = createPrivateKey(keys.privateKey);
  const signature = options.der
    ? sign('sha384', Buffer.from(input), key)
    : sign('sha384', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  return `${input}.${signature.toString('base64url')}`;
}

async function token(clientAssertion: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(server.tokenUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'client_credentials',
      scope: 'system/*.rs',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: clientAssertion,
    }).toString(),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

describe('token endpoint', () => {
  it('issues a bearer token for a good assertion, and resources then accept it until it expires', async () => {
    server.put({ resourceType: 'Patient', id: 'p1' });
    const { status, body } = await token(assertion());
    expect(status).toBe(200);
    expect(body).toMatchObject({ token_type: 'bearer', expires_in: 60, access_token: expect.any(String) });
    const read = (auth?: string): Promise<Response> =>
      fetch(`${server.baseUrl}/Patient/p1`, { headers: auth ? { authorization: `Bearer ${auth}` } : {} });
    expect((await read(body.access_token as string)).status).toBe(200);
    expect((await read()).status).toBe(401);
    clock += 60_000;
    expect((await read(body.access_token as string)).status).toBe(401);
    // The CapabilityStatement stays public (it is how clients find the token URL).
    expect((await fetch(`${server.baseUrl}/metadata`)).status).toBe(200);
  });

  it.each<[string, () => string, string]>([
    ['a reused jti', () => assertion({ jti: 'same' }), 'jti_reused'],
    ['a wrong audience', () => assertion({ aud: 'https://elsewhere.example.org/token' }), 'aud_not_token_url'],
    ['an expired assertion', () => assertion({ exp: Math.floor(clock / 1000) - 1 }), 'expired'],
    ['exp more than five minutes ahead', () => assertion({ exp: Math.floor(clock / 1000) + 301 }), 'exp_too_far'],
    ['sub differing from iss', () => assertion({ sub: 'other' }), 'sub_not_iss'],
    ['an unknown client', () => assertion({ iss: 'nobody', sub: 'nobody' }), 'unknown_client'],
    ['an unknown kid', () => assertion({}, { kid: 'k2' }), 'unknown_kid'],
    ['alg none', () => assertion({}, { alg: 'none' }), 'alg_not_allowed'],
    ['a DER-encoded ECDSA signature', () => assertion({}, {}, { der: true }), 'bad_signature'],
    ['no jti', () => assertion({ jti: undefined }), 'jti_missing'],
  ])('refuses %s with invalid_client', async (_name, make, reason) => {
    if (reason === 'jti_reused') expect((await token(make())).status).toBe(200);
    const { status, body } = await token(make());
    expect(status).toBe(401);
    expect(body.error).toBe('invalid_client');
    expect(server.tokenRejections.at(-1)).toBe(reason);
  });
});

describe('FHIR endpoints and knobs', () => {
  beforeEach(async () => {
    await server.close();
    server = await startFhirTestServer({ now: () => clock });
  });

  it('stamps versions and lastUpdated, pages with absolute next links, records requests', async () => {
    for (let i = 0; i < 3; i++) {
      clock += 1000;
      server.put({ resourceType: 'Appointment', id: `a${i}` });
    }
    const first = (await (await fetch(`${server.baseUrl}/Appointment?_count=2&_lastUpdated=gt${new Date(T0).toISOString()}`)).json()) as {
      total: number;
      link: { relation: string; url: string }[];
      entry: { resource: { id: string; meta: { lastUpdated: string } } }[];
    };
    expect(first.total).toBe(3);
    expect(first.entry.map((e) => e.resource.id)).toEqual(['a0', 'a1']);
    expect(first.entry[0].resource.meta.lastUpdated).toBe(new Date(T0 + 1000).toISOString());
    const next = first.link.find((l) => l.relation === 'next')!.url;
    expect(next.startsWith(`${server.baseUrl}/Appointment?`)).toBe(true);
    const second = (await (await fetch(next)).json()) as { entry: { resource: { id: string } }[]; link: { relation: string }[] };
    expect(second.entry.map((e) => e.resource.id)).toEqual(['a2']);
    expect(second.link.some((l) => l.relation === 'next')).toBe(false);
    expect(server.countRequests('/fhir/Appointment')).toBe(2);
  });

  it('failNext answers the next N requests with the status and Retry-After, then recovers', async () => {
    server.put({ resourceType: 'Patient', id: 'p1' });
    server.failNext(429, 2, 7);
    const statuses: Array<[number, string | null]> = [];
    for (let i = 0; i < 3; i++) {
      const r = await fetch(`${server.baseUrl}/Patient/p1`);
      statuses.push([r.status, r.headers.get('retry-after')]);
      await r.arrayBuffer();
    }
    expect(statuses).toEqual([
      [429, '7'],
      [429, '7'],
      [200, null],
    ]);
  });

  it('$events answers POST with a Parameters body as well as GET', async () => {
    server.pushEvent('s1', 'Patient/p1');
    server.pushEvent('s1', 'Patient/p2');
    const response = await fetch(`${server.baseUrl}/Subscription/s1/$events`, {
      method: 'POST',
      headers: { 'content-type': 'application/fhir+json' },
      body: JSON.stringify({ resourceType: 'Parameters', parameter: [{ name: 'eventsSinceNumber', valueString: '2' }] }),
    });
    const bundle = (await response.json()) as { type: string; entry: { resource?: { parameter: { name: string }[] } }[] };
    expect(bundle.type).toBe('history');
    const events = bundle.entry[0].resource!.parameter.filter((p) => p.name === 'notification-event');
    expect(events).toHaveLength(1);
  });

  it('conditional create: If-None-Exist on identifier creates once, answers 200 with the match, 412 on several', async () => {
    const create = (identifier: string) =>
      fetch(`${server.baseUrl}/Communication`, {
        method: 'POST',
        headers: {
          'content-type': 'application/fhir+json',
          'if-none-exist': `identifier=${encodeURIComponent('urn:x')}|${encodeURIComponent(identifier)}`,
        },
        body: JSON.stringify({ resourceType: 'Communication', status: 'completed', identifier: [{ system: 'urn:x', value: identifier }] }),
      });
    const first = await create('d#1');
    const created = (await first.json()) as { id: string };
    expect(first.status).toBe(201);
    const again = await create('d#1');
    expect(again.status).toBe(200);
    expect(((await again.json()) as { id: string }).id).toBe(created.id);
    server.put({ resourceType: 'Communication', identifier: [{ system: 'urn:x', value: 'dup' }] });
    server.put({ resourceType: 'Communication', identifier: [{ system: 'urn:x', value: 'dup' }] });
    const several = await create('dup');
    expect(several.status).toBe(412);
    await several.arrayBuffer();
    expect(server.countRequests('/fhir/Communication')).toBe(3);
  });
});
