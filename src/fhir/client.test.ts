import { generateKeyPairSync } from 'node:crypto';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { AmbiguousError, PermanentError, TransientError } from '../errors.ts';
import { startFhirTestServer, type FhirTestServer } from '../../test/helpers/fhir-server.ts';
import {
  FhirClient,
  FhirReferenceRefused,
  FhirRequestError,
  FhirUnavailableError,
  parseFhirReference,
  supportsSubscriptionEvents,
  type FhirClientOptions,
} from './client.ts';
import { readNotification, type TopicNotification } from './notification.ts';

const T0 = Date.UTC(2025, 3, 1, 8, 0, 0);
let clock = T0;
const now = (): number => clock;

let server: FhirTestServer;
let other: FhirTestServer | undefined;
let sleeps: number[];

function client(overrides: Partial<FhirClientOptions> = {}): FhirClient {
  return new FhirClient({
    baseUrl: server.baseUrl,
    maxRetries: 2,
    timeoutMs: 5_000,
    now,
    // Recorded instead of waited: the delay chosen is what the tests check.
    sleep: async (ms) => {
      sleeps.push(ms);
    },
    random: () => 0.5,
    ...overrides,
  });
}

async function rejection(promise: Promise<unknown>): Promise<Error> {
  return promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e: unknown) => e as Error,
  );
}

beforeEach(async () => {
  clock = T0;
  sleeps = [];
  server = await startFhirTestServer({ now });
});

afterEach(async () => {
  await server.close();
  await other?.close();
  other = undefined;
});

describe('read, vread, readReference', () => {
  it('reads the current version and a past version', async () => {
    server.put({ resourceType: 'Appointment', id: 'a1', status: 'booked' });
    clock += 1000;
    server.put({ resourceType: 'Appointment', id: 'a1', status: 'cancelled' });
    const c = client();
    expect(await c.read('Appointment', 'a1')).toMatchObject({ status: 'cancelled', meta: { versionId: '2' } });
    expect(await c.vread('Appointment', 'a1', '1')).toMatchObject({ status: 'booked', meta: { versionId: '1' } });
  });

  it('readReference accepts relative, versioned and absolute references under the base URL', async () => {
    server.put({ resourceType: 'Patient', id: 'p1', active: true });
    server.put({ resourceType: 'Patient', id: 'p1', active: false });
    const c = client();
    expect(await c.readReference('Patient/p1')).toMatchObject({ active: false });
    expect(await c.readReference('Patient/p1/_history/1')).toMatchObject({ active: true });
    expect(await c.readReference(`${server.baseUrl}/Patient/p1`)).toMatchObject({ id: 'p1' });
    expect(server.countRequests('/fhir/Patient/p1')).toBe(3);
  });

  it('refuses a reference to another server, making no request anywhere', async () => {
    other = await startFhirTestServer({ now });
    other.put({ resourceType: 'Patient', id: 'p1' });
    const c = client();
    const error = await rejection(c.readReference(`${other.baseUrl}/Patient/p1`));
    expect(error).toBeInstanceOf(FhirReferenceRefused);
    expect(error).toBeInstanceOf(PermanentError);
    expect(error).toMatchObject({ code: 'fhir_reference_outside_base', reason: 'outside-base' });
    expect(server.requests).toEqual([]);
    expect(other.requests).toEqual([]);
  });

  it.each([
    ['another port on the same host', (base: string) => base.replace(/:(\d+)/, (_m, p) => `:${Number(p) + 1}`) + '/Patient/1', 'outside-base'],
    ['https instead of http', (base: string) => base.replace('http:', 'https:') + '/Patient/1', 'outside-base'],
    ['a sibling path sharing the prefix', (base: string) => `${base}x/Patient/1`, 'outside-base'],
    ['the parent path', (base: string) => base.replace(/\/fhir$/, '/Patient/1'), 'outside-base'],
    ['a path climbing out with ..', (base: string) => `${base}/../admin/Patient/1`, 'outside-base'],
    ['credentials in the URL', (base: string) => base.replace('http://', 'http://u:p@') + '/Patient/1', 'outside-base'],
    ['a contained reference', () => '#p1', 'contained'],
    ['a Bundle-local urn', () => 'urn:uuid:0b6c7a8e-7a35-4a57-9b5c-7c1f2d1e3a44', 'urn'],
    ['a file: URL', () => 'file:///etc/passwd', 'scheme'],
    ['a search URL', (base: string) => `${base}/Patient?name=x`, 'malformed'],
    ['an operation', () => 'Patient/1/$everything', 'malformed'],
    ['a relative path with ..', () => '../Patient/1', 'malformed'],
    ['an encoded slash in the id', () => 'Patient/1%2F..%2F2', 'malformed'],
    ['an empty reference', () => '', 'malformed'],
    // The id pattern lets "." and ".." through; as path segments they fetch [base]/Patient/ or [base]/.
    ['the id "."', () => 'Patient/.', 'malformed'],
    ['the id ".."', () => 'Patient/..', 'malformed'],
    ['the version id ".."', () => 'Patient/p1/_history/..', 'malformed'],
    ['an absolute reference ending in ..', (base: string) => `${base}/Patient/..`, 'malformed'],
    ['an absolute reference ending in an encoded ..', (base: string) => `${base}/Patient/%2e%2e`, 'malformed'],
  ])('refuses %s without a request', async (_name, make, reason) => {
    const reference = make(server.baseUrl);
    const error = await rejection(client().readReference(reference));
    expect(error).toBeInstanceOf(FhirReferenceRefused);
    expect((error as FhirReferenceRefused).reason).toBe(reason);
    expect(server.requests).toEqual([]);
  });

  it('parseFhirReference treats HAPI-style bases with a trailing slash the same', () => {
    expect(parseFhirReference('https://ehr.example.org/fhir/R4/Encounter/e-9', 'https://ehr.example.org/fhir/R4/')).toEqual({
      type: 'Encounter',
      id: 'e-9',
    });
    expect(parseFhirReference('HTTPS://EHR.example.org:443/fhir/R4/Encounter/e-9/_history/3', 'https://ehr.example.org/fhir/R4')).toEqual({
      type: 'Encounter',
      id: 'e-9',
      versionId: '3',
    });
  });

  it('a 404 is a permanent not-found, not retried', async () => {
    const error = await rejection(client().read('Appointment', 'missing'));
    expect(error).toBeInstanceOf(FhirRequestError);
    expect(error).toMatchObject({ code: 'fhir_not_found', status: 404, outcomeCode: 'not-found' });
    expect(server.countRequests()).toBe(1);
    expect(sleeps).toEqual([]);
  });

  it('refuses bad types and ids before any request', async () => {
    const c = client();
    await expect(c.read('appointment', '1')).rejects.toMatchObject({ code: 'fhir_request_invalid' });
    await expect(c.read('Appointment', '../metadata')).rejects.toMatchObject({ code: 'fhir_request_invalid' });
    await expect(c.read('Appointment', '..')).rejects.toMatchObject({ code: 'fhir_request_invalid' });
    await expect(c.vread('Appointment', 'a1', '.')).rejects.toMatchObject({ code: 'fhir_request_invalid' });
    await expect(c.read('HttpFoo:', '1')).rejects.toMatchObject({ code: 'fhir_request_invalid' });
    expect(server.requests).toEqual([]);
  });
});

describe('search and paging', () => {
  function seedAppointments(count: number): string {
    for (let i = 0; i < count; i++) {
      clock += 1000;
      server.put({ resourceType: 'Appointment', id: `a${String(i).padStart(2, '0')}`, status: 'booked' });
    }
    return new Date(T0 + 5_500).toISOString(); // after the first five
  }

  it('follows next links under the base URL and returns every match in order', async () => {
    const cursor = seedAppointments(25);
    const result = await client().search('Appointment', { _lastUpdated: `gt${cursor}`, _count: 7, _sort: '_lastUpdated' });
    expect(result.pages).toBe(3);
    expect(result.total).toBe(20);
    expect(result.incomplete).toBeUndefined();
    expect(result.resources.map((r) => r.id)).toEqual(Array.from({ length: 20 }, (_, i) => `a${String(i + 5).padStart(2, '0')}`));
    expect(server.requests.map((r) => r.path)).toEqual(['/fhir/Appointment', '/fhir/Appointment', '/fhir/Appointment']);
    expect(server.requests[0].query).toContain(`_lastUpdated=gt${encodeURIComponent(cursor)}`);
  });

  it('stops at maxPages and says so, with the next link to resume from', async () => {
    seedAppointments(25);
    const result = await client({ maxPages: 2 }).search('Appointment', { _count: 10 });
    expect(result.resources).toHaveLength(20);
    expect(result.incomplete).toBe('page-limit');
    expect(result.nextUrl).toMatch(new RegExp(`^${server.baseUrl}/Appointment\\?.*_offset=20`));
    expect(server.countRequests()).toBe(2);
  });

  it('does not follow a next link to another host', async () => {
    seedAppointments(12);
    other = await startFhirTestServer({ now });
    server.linkBaseUrl = other.baseUrl; // e.g. a proxy that pages with an internal host name
    const result = await client().search('Appointment', { _count: 10 });
    expect(result.resources).toHaveLength(10);
    expect(result.pages).toBe(1);
    expect(result.incomplete).toBe('next-link-outside-base');
    expect(other.requests).toEqual([]);
    expect(server.countRequests()).toBe(1);
  });

  it('keeps _include results apart and an empty search is an empty result', async () => {
    const result = await client().search('Encounter', { _lastUpdated: 'gt2025-01-01T00:00:00Z' });
    expect(result).toMatchObject({ resources: [], included: [], pages: 1, total: 0 });
  });
});

describe('retries', () => {
  it('429 + Retry-After: the retry waits at least the delay the server asked for', async () => {
    server.put({ resourceType: 'Patient', id: 'p1' });
    server.failNext(429, 1, 3);
    expect(await client().read('Patient', 'p1')).toMatchObject({ id: 'p1' });
    expect(sleeps).toHaveLength(1);
    expect(sleeps[0]).toBeGreaterThanOrEqual(3000);
    expect(server.countRequests('/fhir/Patient/p1')).toBe(2);
  });

  it('503 twice then success: exponential backoff with jitter, inside the ceilings', async () => {
    server.put({ resourceType: 'Patient', id: 'p1' });
    server.failNext(503, 2);
    expect(await client({ backoffBaseMs: 400, random: () => 0.999 }).read('Patient', 'p1')).toMatchObject({ id: 'p1' });
    // Full jitter: retry n waits random(0 … 400·2^(n−1)); random≈1 hits the ceilings.
    expect(sleeps).toEqual([400, 800]);
    expect(server.countRequests()).toBe(3);
  });

  it('still failing after maxRetries: a TransientError for the queue, with the status', async () => {
    server.failNext(503, 5, 1);
    const error = await rejection(client({ maxRetries: 2 }).read('Patient', 'p1'));
    expect(error).toBeInstanceOf(FhirUnavailableError);
    expect(error).toBeInstanceOf(TransientError);
    expect(error).toMatchObject({ code: 'fhir_unavailable', status: 503, retryAfterMs: 1000 });
    expect(server.countRequests()).toBe(3);
    expect(sleeps).toEqual([1000, 1000]);
  });

  it('a Retry-After longer than maxRetryAfterMs is handed to the queue without sleeping', async () => {
    server.failNext(429, 1, 3600);
    const error = await rejection(client({ maxRetryAfterMs: 30_000 }).read('Patient', 'p1'));
    expect(error).toMatchObject({ code: 'fhir_rate_limited', retryAfterMs: 3_600_000 });
    expect(sleeps).toEqual([]);
    expect(server.countRequests()).toBe(1);
  });

  it('Retry-After as an HTTP-date is honoured against the injected clock', async () => {
    server.put({ resourceType: 'Patient', id: 'p1' });
    server.failNext(503, 1, new Date(T0 + 12_000).toUTCString());
    await client().read('Patient', 'p1');
    expect(sleeps[0]).toBeGreaterThanOrEqual(12_000);
  });

  it('a hung request times out as transient', async () => {
    server.hangNext(1);
    const error = await rejection(client({ timeoutMs: 200, maxRetries: 0 }).read('Patient', 'p1'));
    expect(error).toMatchObject({ code: 'fhir_timeout', failureClass: 'transient' });
  });

  it('a server that is down is transient (unreachable)', async () => {
    const baseUrl = server.baseUrl;
    await server.close();
    server = await startFhirTestServer({ now });
    const error = await rejection(client({ baseUrl, maxRetries: 1 }).read('Patient', 'p1'));
    expect(error).toMatchObject({ code: 'fhir_unreachable', failureClass: 'transient' });
    expect(sleeps).toHaveLength(1);
  });

  it('redirects are not followed, least of all to another host', async () => {
    other = await startFhirTestServer({ now });
    other.put({ resourceType: 'Patient', id: 'p1' });
    server.redirectNext(`${other.baseUrl}/Patient/p1`, 1);
    const error = await rejection(client().read('Patient', 'p1'));
    expect(error).toMatchObject({ code: 'fhir_redirect_refused', status: 302 });
    expect(error.message).toContain(new URL(other.baseUrl).origin);
    expect(other.requests).toEqual([]);
  });
});

describe('create, update, capabilities', () => {
  const subscription = {
    resourceType: 'Subscription',
    status: 'requested',
    reason: 'CareRelay appointment feed',
    criteria: 'http://example.org/SubscriptionTopic/appointment-changed',
    channel: { type: 'rest-hook', endpoint: 'https://carerelay.example.org/fhir/notify', payload: 'application/fhir+json' },
  };

  it('creates and updates a Subscription', async () => {
    const c = client();
    const created = await c.create(subscription);
    expect(created).toMatchObject({ resourceType: 'Subscription', id: expect.any(String), meta: { versionId: '1' } });
    const updated = await c.update({ ...created, status: 'off' });
    expect(updated).toMatchObject({ id: created.id, status: 'off', meta: { versionId: '2' } });
    expect(server.requests.map((r) => `${r.method} ${r.path}`)).toEqual(['POST /fhir/Subscription', `PUT /fhir/Subscription/${created.id}`]);
  });

  it('a create answered 429 is retried (nothing was processed)', async () => {
    server.failNext(429, 1, 1);
    const created = await client().create(subscription);
    expect(created.id).toBeDefined();
    expect(server.countRequests('/fhir/Subscription')).toBe(2);
  });

  it('a create answered 500 is ambiguous and not retried (the Subscription may exist)', async () => {
    server.failNext(500, 1);
    const error = await rejection(client().create(subscription));
    expect(error).toBeInstanceOf(AmbiguousError);
    expect(error).toMatchObject({ code: 'fhir_outcome_unknown' });
    expect(server.countRequests()).toBe(1);
  });

  it('update without an id is refused before any request', async () => {
    await expect(client().update(subscription)).rejects.toMatchObject({ code: 'fhir_request_invalid' });
    expect(server.requests).toEqual([]);
  });

  it('capabilities() tells whether $events is supported', async () => {
    expect(supportsSubscriptionEvents(await client().capabilities())).toBe(true);
    await server.close();
    server = await startFhirTestServer({ now, supportsEvents: false });
    expect(supportsSubscriptionEvents(await client().capabilities())).toBe(false);
  });
});

describe('$events', () => {
  it('returns the requested events as a notification Bundle readNotification understands', async () => {
    server.put({ resourceType: 'Subscription', id: 'sub-1', status: 'active', criteria: 'http://example.org/SubscriptionTopic/appointment-changed' });
    server.put({ resourceType: 'Appointment', id: 'a1', status: 'booked' });
    server.put({ resourceType: 'Appointment', id: 'a2', status: 'booked' });
    server.put({ resourceType: 'Patient', id: 'p1' });
    server.pushEvent('sub-1', 'Appointment/a1', ['Patient/p1']);
    server.pushEvent('sub-1', 'Appointment/a2', ['Patient/p1']);
    server.pushEvent('sub-1', 'Appointment/a1', ['Patient/p1']);
    server.pushEvent('sub-1', 'Appointment/a2', ['Patient/p1']);

    const bundle = await client().subscriptionEvents('sub-1', 2, 3);
    const notification = readNotification(bundle) as TopicNotification;
    expect(notification).toMatchObject({ kind: 'topic', version: 'r4-backport', type: 'query-event', eventsSinceSubscriptionStart: 4, payload: 'id-only' });
    expect(notification.events.map((e) => [e.eventNumber, e.focus])).toEqual([
      [2, 'Appointment/a2'],
      [3, 'Appointment/a1'],
    ]);
    const query = new URLSearchParams(server.requests[0].query);
    expect(server.requests[0].path).toBe('/fhir/Subscription/sub-1/$events');
    expect(query.get('eventsSinceNumber')).toBe('2');
    expect(query.get('eventsUntilNumber')).toBe('3');
  });

  it('asks for full-resource content when told to', async () => {
    server.put({ resourceType: 'Appointment', id: 'a1', status: 'booked' });
    server.pushEvent('sub-2', 'Appointment/a1');
    const notification = readNotification(await client().subscriptionEvents('sub-2', 1, undefined, { content: 'full-resource' })) as TopicNotification;
    expect(notification.payload).toBe('full-resource');
    expect(notification.resources.get('Appointment/a1')).toMatchObject({ status: 'booked' });
  });

  it('refuses nonsense event ranges before any request', async () => {
    const c = client();
    await expect(c.subscriptionEvents('sub-1', 5, 2)).rejects.toMatchObject({ code: 'fhir_request_invalid' });
    await expect(c.subscriptionEvents('sub-1', -1)).rejects.toMatchObject({ code: 'fhir_request_invalid' });
    await expect(c.subscriptionEvents('a/b', 1)).rejects.toMatchObject({ code: 'fhir_request_invalid' });
    expect(server.requests).toEqual([]);
  });
});

describe('auth', () => {
  let keys: { privateKey: string; publicKey: string };

  beforeAll(() => {
    keys = generateKeyPairSync('ec', {
      namedCurve: 'P-384',
      publicKeyEncoding: { type: 'spki', format: 'pem' },
      privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    });
  });

  async function smartServer(): Promise<FhirTestServer> {
    await server.close();
    server = await startFhirTestServer({ now, auth: true });
    server.registerClient('carerelay', keys.publicKey);
    server.put({ resourceType: 'Appointment', id: 'a1', status: 'booked' });
    return server;
  }

  function smartClient(s: FhirTestServer): FhirClient {
    return client({
      auth: { kind: 'smart', tokenUrl: s.tokenUrl, clientId: 'carerelay', privateKey: keys.privateKey, algorithm: 'ES384', scope: 'system/Appointment.rs' },
    });
  }

  it('SMART end to end: one token for many requests, renewed after expiry', async () => {
    const s = await smartServer();
    const c = smartClient(s);
    await c.read('Appointment', 'a1');
    await c.search('Appointment', { _count: 5 });
    await c.readReference('Appointment/a1');
    expect(s.countRequests('/auth/token')).toBe(1);
    expect(s.requests.filter((r) => r.path.startsWith('/fhir/')).every((r) => r.authorized)).toBe(true);
    clock += 300_000;
    await c.read('Appointment', 'a1');
    expect(s.countRequests('/auth/token')).toBe(2);
    expect(s.tokenRejections).toEqual([]);
  });

  it('a 401 for a revoked token renews it once and succeeds', async () => {
    const s = await smartServer();
    const c = smartClient(s);
    await c.read('Appointment', 'a1');
    s.revokeTokens();
    expect(await c.read('Appointment', 'a1')).toMatchObject({ id: 'a1' });
    expect(s.countRequests('/auth/token')).toBe(2);
    expect(s.countRequests('/fhir/Appointment/a1')).toBe(3);
  });

  it('no auth against a server that wants it: permanent 401 with a hint', async () => {
    await smartServer();
    const error = await rejection(client().read('Appointment', 'a1'));
    expect(error).toMatchObject({ code: 'fhir_unauthorized', status: 401 });
    expect(error.message).toMatch(/configure auth/);
  });

  it('a static bearer token that is refused is not retried', async () => {
    const s = await smartServer();
    const error = await rejection(client({ auth: { kind: 'bearer', token: 'wrong' } }).read('Appointment', 'a1'));
    expect(error).toMatchObject({ code: 'fhir_unauthorized' });
    expect(s.countRequests('/fhir/')).toBe(1);
  });

  it('a SMART client the server does not know fails permanently with invalid_client', async () => {
    const s = await smartServer();
    const stranger = generateKeyPairSync('ec', { namedCurve: 'P-384', privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
    const c = client({
      auth: { kind: 'smart', tokenUrl: s.tokenUrl, clientId: 'carerelay', privateKey: stranger.privateKey, algorithm: 'ES384', scope: 's' },
    });
    const error = await rejection(c.read('Appointment', 'a1'));
    expect(error).toMatchObject({ code: 'smart_invalid_client', oauthError: 'invalid_client', failureClass: 'permanent' });
    expect(s.countRequests('/fhir/')).toBe(0);
  });

  it('refuses plain http to a non-loopback base URL at construction', () => {
    expect(() => new FhirClient({ baseUrl: 'http://ehr.example.org/fhir' })).toThrow(/plain http/);
    expect(() => new FhirClient({ baseUrl: 'https://ehr.example.org/fhir?x=1' })).toThrow(/query/);
  });
});
