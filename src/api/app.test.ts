// The express app on its own (supertest drives it without a listener): authentication runs
// before anything is read, errors are RFC 9457 problem documents, HL7 over HTTP answers with
// the ACK. The running server is tested over real sockets in test/api.test.ts.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../log.ts';
import { SqliteStore } from '../store/sqlite.ts';
import { Hl7Ingest } from '../workers/ingest.ts';
import { createApp } from './app.ts';
import { bearerMatches } from './http.ts';

const TOKEN = 'admin-token-3f9a';
let dir: string;
let store: SqliteStore;
let app: ReturnType<typeof createApp>;

const S12 = [
  'MSH|^~\\&|EPIC|NORTHCLINIC|CARERELAY|CR|20270601101500+0200||SIU^S12^SIU_S12|APP-1|P|2.5.1',
  'SCH|PL-1|AP-1||||NEW|CHK^Check-up^LOCAL||30|MIN|||||||||||||||Booked',
  'TQ1|1||||||20270615143000+0200|20270615150000+0200',
  'PID|1||E1^^^NORTHCLINIC^MR||DOE^Jane||19800101|F',
].join('\r');

beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'carerelay-app-'));
  store = SqliteStore.open(path.join(dir, 'store.db'));
  const settings = { input: 'ehr-http', timezone: 'UTC', unknownMessageTypes: 'accept' as const, missingFieldAck: 'AR' as const };
  app = createApp({
    store,
    log: silentLogger,
    hl7Ingest: new Hl7Ingest({ store, log: silentLogger }),
    hl7Inputs: new Map([['ehr-http', { settings, maxBodyBytes: 64 * 1024 }]]),
    adminToken: TOKEN,
  });
});

afterAll(async () => {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('bearerMatches', () => {
  it('accepts only the exact token in a Bearer header', () => {
    expect(bearerMatches(`Bearer ${TOKEN}`, TOKEN)).toBe(true);
    expect(bearerMatches(`Bearer ${TOKEN}x`, TOKEN)).toBe(false);
    expect(bearerMatches(`Basic ${TOKEN}`, TOKEN)).toBe(false);
    expect(bearerMatches(undefined, TOKEN)).toBe(false);
  });

  it('matches the scheme name whatever its case (RFC 9110 §11.1), never the token', () => {
    expect(bearerMatches(`bearer ${TOKEN}`, TOKEN)).toBe(true);
    expect(bearerMatches(`BEARER\t${TOKEN}`, TOKEN)).toBe(true);
    expect(bearerMatches(`bearer ${TOKEN.toUpperCase()}`, TOKEN)).toBe(false);
    expect(bearerMatches(`Bearer`, TOKEN)).toBe(false);
    expect(bearerMatches(`Bearer${TOKEN}`, TOKEN)).toBe(false);
  });
});

describe('the express app', () => {
  it('answers health without a token and the admin API only with one', async () => {
    await request(app).get('/healthz').expect(200, { status: 'ok' });
    await request(app).get('/readyz').expect(200);
    const refused = await request(app).get('/api/messages').expect(401);
    expect(refused.headers['content-type']).toContain('application/problem+json');
    expect(refused.headers['www-authenticate']).toBe('Bearer');
    expect(JSON.parse(refused.text)).toMatchObject({ status: 401, title: 'Unauthorized' });
    await request(app).get('/api/messages').set('Authorization', `Bearer ${TOKEN}`).expect(200, { items: [], totals: { accepted: 0, ignored: 0, rejected: 0, quarantined: 0 } });
  });

  it('refuses an unauthenticated admin call with a JSON body before parsing it', async () => {
    const res = await request(app)
      .post('/api/messages')
      .set('Content-Type', 'application/json')
      .send('{"__proto__": {"polluted": true}}')
      .expect(401);
    expect(JSON.parse(res.text).status).toBe(401);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('ingests HL7 over HTTP and returns the ACK; the message is then listed', async () => {
    const res = await request(app).post('/ingest/hl7v2/ehr-http').set('Content-Type', 'x-application/hl7-v2+er7').send(S12).expect(200);
    expect(res.headers['content-type']).toContain('x-application/hl7-v2+er7');
    expect(res.text).toMatch(/\rMSA\|AA\|APP-1(\r|$)/);
    const list = await request(app).get('/api/messages?controlId=APP-1').set('Authorization', `Bearer ${TOKEN}`).expect(200);
    expect(list.body.items).toHaveLength(1);
    expect(list.body.items[0]).toMatchObject({ controlId: 'APP-1', sender: 'EPIC^NORTHCLINIC', status: 'accepted', ackCode: 'AA' });
    const one = await request(app).get(`/api/messages/${list.body.items[0].id}`).set('Authorization', `Bearer ${TOKEN}`).expect(200);
    expect(one.body.raw).toBe(S12);
    expect(one.body.triggers[0].type).toBe('appointment.booked');
  });

  it('gives problem documents for an unknown input, an empty body, a bad query and an unknown route', async () => {
    const unknown = await request(app).post('/ingest/hl7v2/nope').send(S12).expect(404);
    expect(JSON.parse(unknown.text).detail).toContain('no hl7v2-http input named "nope"');
    await request(app).post('/ingest/hl7v2/ehr-http').expect(400);
    const bad = await request(app).get('/api/messages?limit=0').set('Authorization', `Bearer ${TOKEN}`).expect(400);
    expect(JSON.parse(bad.text).detail).toContain('limit');
    const since = await request(app).get('/api/messages?since=yesterday').set('Authorization', `Bearer ${TOKEN}`).expect(400);
    expect(JSON.parse(since.text).detail).toContain('ISO-8601');
    await request(app).get('/nowhere').expect(404);
  });

  it('refuses a body over the input limit with 413', async () => {
    const big = Buffer.alloc(65 * 1024, 0x41);
    const res = await request(app).post('/ingest/hl7v2/ehr-http').set('Content-Type', 'x-application/hl7-v2+er7').send(big).expect(413);
    expect(JSON.parse(res.text).title).toBe('Payload too large');
  });
});
