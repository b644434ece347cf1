import { createHmac } from 'node:crypto';
import express from 'express';
import request from 'supertest';
import { beforeEach, describe, expect, it } from 'vitest';
import type { LogFields, Logger } from '../log.ts';
import type { ToolConsentSignal } from '../outputs/consent-sync.ts';
import { hubspotSignatureV3 } from '../outputs/hubspot/webhooks.ts';
import { createToolHooksRouter, toolHooks, unsubscribePurposes, widenOptOuts, type ToolHook } from './tool-hooks.ts';

const PUBLIC = 'https://carerelay.example.org';
const NOW = Date.parse('2030-03-15T13:31:00Z');
const SECRET = 'mc-secret-0123456789abcdef';
const HUBSPOT_SECRET = 'hs-client-secret-0123456789';
const ENS_KEY = 'V27FXfqI3DnhfQW1bhFDeJixpt8eDAY5R24UJI3cK6M=';

let signals: ToolConsentSignal[];
let lines: Array<{ message: string } & LogFields>;
let confirmed: Array<{ callbackId: string; verificationKey: string }>;
let confirmFails: boolean;
let app: express.Express;

function build(hooks: Map<string, ToolHook>): void {
  app = express();
  app.use(
    '/hooks',
    createToolHooksRouter({
      hooks,
      consent: {
        toolSignal: async (signal) => {
          signals.push(signal);
          return { recorded: 1, suppressed: [] };
        },
      },
      publicUrl: () => PUBLIC,
      log: { info: (m, f) => void lines.push({ message: m, ...f }), warn: (m, f) => void lines.push({ message: m, ...f }), error: () => {}, debug: () => {} } satisfies Logger,
      now: () => NOW,
    }),
  );
}

beforeEach(() => {
  signals = [];
  lines = [];
  confirmed = [];
  confirmFails = false;
  build(
    new Map<string, ToolHook>([
      ['hubspot', { tool: 'hubspot', clientSecret: HUBSPOT_SECRET, subscriptions: { 'service.info': 111 } }],
      ['mailchimp', { tool: 'mailchimp', secret: SECRET, listId: 'a1b2c3', purposes: ['survey', 'service.info', 'marketing'] }],
      ['brevo', { tool: 'brevo', secret: SECRET, purposes: ['service.info', 'marketing'] }],
      ['ac', { tool: 'activecampaign', secret: SECRET, listIds: [3], purposes: ['service.info', 'marketing'] }],
      [
        'sfmc',
        {
          tool: 'sfmc',
          signatureKey: ENS_KEY,
          contactKeyIsPatientId: true,
          confirm: async (v) => {
            if (confirmFails) throw Object.assign(new Error('refused'), { code: 'sfmc_rejected' });
            confirmed.push(v);
          },
        },
      ],
      ['sfmc-new', { tool: 'sfmc', contactKeyIsPatientId: false, confirm: async (v) => void confirmed.push(v) }],
    ]),
  );
});

const refusals = () => lines.filter((l) => l.message === 'hooks.unauthorized').map((l) => `${l.output}:${l.reason}`);

describe('unsubscribe scope', () => {
  it('an unsubscribe stops the non-care purposes the output carries, marketing and service.info together', () => {
    expect(unsubscribePurposes(['care.logistics', 'service.info'])).toEqual(['service.info', 'marketing']);
    expect(unsubscribePurposes(['survey'])).toEqual(['survey']);
    expect(unsubscribePurposes(['care.followup'])).toEqual([]);
  });

  it('widens an opt-out of one purpose, keeps ids derived from the source, drops repeats', () => {
    const base = { tool: 'hubspot', output: 'hubspot', contact: { toolId: '101' }, kind: 'opted_out', at: '2030-01-01T00:00:00.000Z' } as const;
    const widened = widenOptOuts([
      { ...base, scope: { channel: 'email', purpose: 'service.info' }, eventId: 'e1' },
      { ...base, scope: { channel: 'email', purpose: 'marketing' }, eventId: 'e2' },
      { ...base, kind: 'hard_bounce', scope: { channel: 'email' }, eventId: 'e3' },
    ]);
    expect(widened.map((s) => [s.kind, s.scope.purpose ?? '-', s.eventId])).toEqual([
      ['opted_out', 'service.info', 'e1'],
      ['opted_out', 'marketing', 'e2'],
      ['hard_bounce', '-', 'e3'],
    ]);
    expect(widenOptOuts([{ ...base, scope: { channel: 'email', purpose: 'service.info' }, eventId: 'e1' }]).map((s) => [s.scope.purpose, s.eventId])).toEqual([
      ['service.info', 'e1'],
      ['marketing', 'e1~marketing'],
    ]);
  });
});

describe('POST /hooks/hubspot/:output', () => {
  const events = [
    { eventId: 7001, subscriptionId: 9, portalId: 1234567, occurredAt: NOW - 1000, subscriptionType: 'contact.propertyChange', attemptNumber: 0, objectId: 101, propertyName: 'hs_email_optout_111', propertyValue: 'true', changeSource: 'EMAIL' },
    { eventId: 7002, subscriptionId: 9, portalId: 1234567, occurredAt: NOW - 1000, subscriptionType: 'contact.creation', attemptNumber: 0, objectId: 102 },
  ];
  const post = (body: string, o: { secret?: string; timestamp?: number; path?: string } = {}) => {
    const path = o.path ?? '/hooks/hubspot/hubspot';
    const timestamp = String(o.timestamp ?? NOW);
    return request(app)
      .post(path)
      .set('content-type', 'application/json')
      .set('x-hubspot-request-timestamp', timestamp)
      .set('x-hubspot-signature-v3', hubspotSignatureV3(o.secret ?? HUBSPOT_SECRET, 'POST', `${PUBLIC}${path}`, body, timestamp))
      .send(body);
  };

  it('records an opt-out of a subscription for the contact HubSpot names, widened to marketing', async () => {
    const res = await post(JSON.stringify(events)).expect(200);
    expect(res.body).toEqual({ signals: 2, recorded: 2, suppressed: 0 });
    expect(signals.map((s) => [s.contact, s.scope])).toEqual([
      [{ toolId: '101' }, { channel: 'email', purpose: 'service.info' }],
      [{ toolId: '101' }, { channel: 'email', purpose: 'marketing' }],
    ]);
  });

  it('refuses a missing, forged, stale or misaddressed signature and records nothing', async () => {
    const body = JSON.stringify(events);
    await request(app).post('/hooks/hubspot/hubspot').set('content-type', 'application/json').send(body).expect(401);
    await post(body, { secret: 'another-client-secret-000' }).expect(403);
    await post(body, { timestamp: NOW - 6 * 60_000 }).expect(403);
    // Signed for another output's URL.
    await request(app)
      .post('/hooks/hubspot/hubspot')
      .set('content-type', 'application/json')
      .set('x-hubspot-request-timestamp', String(NOW))
      .set('x-hubspot-signature-v3', hubspotSignatureV3(HUBSPOT_SECRET, 'POST', `${PUBLIC}/hooks/hubspot/other`, body, String(NOW)))
      .send(body)
      .expect(403);
    expect(signals).toEqual([]);
    expect(refusals()).toEqual(['hubspot:signature_missing', 'hubspot:signature_mismatch', 'hubspot:signature_stale', 'hubspot:signature_mismatch']);
  });

  it('a body that is not an event batch is a 400 with the reason; an unknown output a 404', async () => {
    const res = await post(JSON.stringify({ eventId: 1 })).expect(400);
    expect(res.body.detail).toMatch(/JSON array of events/);
    expect((await post('{not json').expect(400)).body.detail).toMatch(/not JSON/);
    await post('[]', { path: '/hooks/hubspot/mailchimp' }).expect(404);
    expect(signals).toEqual([]);
  });
});

describe('/hooks/mailchimp/:output/:secret', () => {
  const form = (fields: Record<string, string>) => new URLSearchParams(fields).toString();
  const unsubscribe = { type: 'unsubscribe', fired_at: '2030-03-15 13:30:00', 'data[action]': 'unsub', 'data[reason]': 'manual', 'data[id]': '8a25ff1d98', 'data[list_id]': 'a1b2c3', 'data[email]': 'Pat@Example.org' };

  it("answers Mailchimp's URL check with 200, a wrong secret with 403", async () => {
    await request(app).get(`/hooks/mailchimp/mailchimp/${SECRET}`).expect(200);
    await request(app).get('/hooks/mailchimp/mailchimp/guessed-secret-000000').expect(403);
    await request(app).get(`/hooks/mailchimp/nothere/${SECRET}`).expect(404);
  });

  it('an unsubscribe stops the purposes of the audience; a cleaned (hard) address is a hard bounce', async () => {
    const res = await request(app).post(`/hooks/mailchimp/mailchimp/${SECRET}`).type('form').send(form(unsubscribe)).expect(200);
    expect(res.body).toMatchObject({ signals: 3 });
    expect(signals.map((s) => [s.kind, s.contact.email, s.scope.purpose])).toEqual([
      ['opted_out', 'pat@example.org', 'survey'],
      ['opted_out', 'pat@example.org', 'service.info'],
      ['opted_out', 'pat@example.org', 'marketing'],
    ]);
    signals = [];
    await request(app)
      .post(`/hooks/mailchimp/mailchimp/${SECRET}`)
      .type('form')
      .send(form({ type: 'cleaned', fired_at: '2030-03-15 13:30:00', 'data[list_id]': 'a1b2c3', 'data[email]': 'gone@example.org', 'data[reason]': 'hard' }))
      .expect(200);
    expect(signals.map((s) => [s.kind, s.contact.email, s.scope])).toEqual([['hard_bounce', 'gone@example.org', { channel: 'email' }]]);
  });

  it('refuses a wrong secret (403) and a form without a type (400); another audience records nothing', async () => {
    await request(app).post('/hooks/mailchimp/mailchimp/guessed-secret-000000').type('form').send(form(unsubscribe)).expect(403);
    await request(app).post(`/hooks/mailchimp/mailchimp/${SECRET}`).type('form').send(form({ 'data[email]': 'pat@example.org' })).expect(400);
    await request(app).post(`/hooks/mailchimp/mailchimp/${SECRET}`).set('content-type', 'application/json').send('{}').expect(415);
    const other = await request(app).post(`/hooks/mailchimp/mailchimp/${SECRET}`).type('form').send(form({ ...unsubscribe, 'data[list_id]': 'zzz' })).expect(200);
    expect(other.body).toEqual({ signals: 0, recorded: 0, suppressed: 0 });
    expect(signals).toEqual([]);
    expect(refusals()).toEqual(['mailchimp:bad_secret']);
  });
});

describe('POST /hooks/brevo/:output', () => {
  const events = [{ event: 'unsubscribed', email: 'pat@example.org', 'message-id': '<a@smtp-relay.mailin.fr>', ts_epoch: NOW }, { event: 'hard_bounce', email: 'old@example.org', 'message-id': '<b@x>', ts_event: NOW / 1000 }];

  it('takes the bearer token or Basic credentials; records unsubscribes and hard bounces', async () => {
    await request(app).post('/hooks/brevo/brevo').set('authorization', `Bearer ${SECRET}`).send(events).expect(200);
    await request(app).post('/hooks/brevo/brevo').auth('carerelay', SECRET).send(events[1]!).expect(200);
    expect(signals.map((s) => [s.kind, s.contact.email, s.scope.purpose ?? '-'])).toEqual([
      ['opted_out', 'pat@example.org', 'service.info'],
      ['opted_out', 'pat@example.org', 'marketing'],
      ['hard_bounce', 'old@example.org', '-'],
      ['hard_bounce', 'old@example.org', '-'],
    ]);
  });

  it('refuses missing (401) and wrong (403) credentials, and a body that is not Brevo events (400)', async () => {
    const missing = await request(app).post('/hooks/brevo/brevo').send(events).expect(401);
    expect(missing.headers['www-authenticate']).toBe('Bearer');
    await request(app).post('/hooks/brevo/brevo').set('authorization', 'Bearer guessed-secret-000000').send(events).expect(403);
    await request(app).post('/hooks/brevo/brevo').set('authorization', `Bearer ${SECRET}`).send(['text']).expect(400);
    expect(signals).toEqual([]);
  });
});

describe('POST /hooks/activecampaign/:output/:secret', () => {
  const unsubscribe = { type: 'unsubscribe', date_time: '2030-03-15T09:30:00-04:00', initiated_by: 'contact', list: '3', 'contact[id]': '42', 'contact[email]': 'pat@example.org' };

  it('records an unsubscribe from one of its lists; refuses a wrong secret and a form without a type', async () => {
    await request(app).post(`/hooks/activecampaign/ac/${SECRET}`).type('form').send(new URLSearchParams(unsubscribe).toString()).expect(200);
    expect(signals.map((s) => [s.contact.email, s.scope.purpose, s.at])).toEqual([
      ['pat@example.org', 'service.info', '2030-03-15T13:30:00.000Z'],
      ['pat@example.org', 'marketing', '2030-03-15T13:30:00.000Z'],
    ]);
    signals = [];
    await request(app).post('/hooks/activecampaign/ac/guessed-secret-000000').type('form').send(new URLSearchParams(unsubscribe).toString()).expect(403);
    await request(app).post(`/hooks/activecampaign/ac/${SECRET}`).type('form').send('contact[email]=x').expect(400);
    expect(signals).toEqual([]);
  });
});

describe('POST /hooks/sfmc/:output', () => {
  const unsubscribe = {
    eventCategoryType: 'EngagementEvents.EmailUnsubscribe',
    timestampUTC: NOW - 60_000,
    info: { to: 'pat@example.org', subscriberKey: 'MRN-1', unsubscribeDate: NOW - 60_000, unsubscribeMethod: 'Click' },
  };
  const signed = (body: string, key = ENS_KEY) => createHmac('sha256', key).update(body).digest('base64');

  it('confirms the callback verification at once (unsigned, as Marketing Cloud sends it)', async () => {
    const res = await request(app).post('/hooks/sfmc/sfmc-new').send({ callbackId: 'cb-1', verificationKey: 'vk-1' }).expect(200);
    expect(res.body).toEqual({ verified: true });
    expect(confirmed).toEqual([{ callbackId: 'cb-1', verificationKey: 'vk-1' }]);
    expect(lines.map((l) => l.message)).toContain('hooks.sfmc_callback_verified');
  });

  it('a verification Marketing Cloud does not confirm is a 502; past ten an hour, 429', async () => {
    confirmFails = true;
    await request(app).post('/hooks/sfmc/sfmc').send({ callbackId: 'cb-x', verificationKey: 'vk' }).expect(502);
    confirmFails = false;
    for (let i = 0; i < 9; i++) await request(app).post('/hooks/sfmc/sfmc').send({ callbackId: `cb-${i}`, verificationKey: 'vk' }).expect(200);
    await request(app).post('/hooks/sfmc/sfmc').send({ callbackId: 'cb-11', verificationKey: 'vk' }).expect(429);
  });

  it('records a signed batch, the subscriber key read as the patient id', async () => {
    const body = JSON.stringify([unsubscribe, { eventCategoryType: 'EngagementEvents.EmailOpen', timestampUTC: NOW }]);
    const res = await request(app).post('/hooks/sfmc/sfmc').set('content-type', 'application/json').set('x-sfmc-ens-signature', signed(body)).send(body).expect(200);
    expect(res.body).toEqual({ signals: 1, recorded: 1, suppressed: 0 });
    expect(signals).toEqual([expect.objectContaining({ tool: 'sfmc', kind: 'opted_out', contact: { email: 'pat@example.org', toolId: 'MRN-1', patientId: 'MRN-1' }, scope: { channel: 'email' } })]);
  });

  it('refuses an unsigned or forged batch, and a batch before the signature key is configured; 400 for what is not ENS', async () => {
    const body = JSON.stringify([unsubscribe]);
    await request(app).post('/hooks/sfmc/sfmc').set('content-type', 'application/json').send(body).expect(401);
    await request(app).post('/hooks/sfmc/sfmc').set('content-type', 'application/json').set('x-sfmc-ens-signature', signed(body, 'another-key')).send(body).expect(403);
    await request(app).post('/hooks/sfmc/sfmc-new').set('content-type', 'application/json').set('x-sfmc-ens-signature', signed(body)).send(body).expect(401);
    await request(app).post('/hooks/sfmc/sfmc').set('content-type', 'application/json').set('x-sfmc-ens-signature', signed('[1]')).send('[1]').expect(400);
    expect(signals).toEqual([]);
    expect(refusals()).toEqual(['sfmc:signature_missing', 'sfmc:bad_signature', 'sfmc-new:signature_key_unset']);
  });
});

describe('toolHooks', () => {
  const plan = (type: string, name: string, config: Record<string, unknown>) => ({ type, name, config: { name, type, ...config }, file: 'connectors/x.yaml', line: 3, column: 5 });

  it('builds a hook for each output with a secret; none without; refuses a short secret', () => {
    const secrets: Record<string, string> = { LONG: SECRET, SHORT: 'short' };
    const read = (ref: { env?: string }) => secrets[ref.env!]!;
    const hooks = toolHooks(
      [
        plan('hubspot', 'hs', { auth: { oauth: { clientId: 'c', clientSecret: { env: 'LONG' }, refreshToken: { env: 'LONG' } } }, subscriptions: {} }),
        plan('hubspot', 'hs-private', { auth: { privateAppToken: { env: 'LONG' } } }),
        plan('mailchimp', 'mc', { listId: 'l1', webhookSecret: { env: 'LONG' }, allowedPurposes: ['service.info', 'care.logistics'] }),
        plan('brevo', 'quiet', {}),
        plan('outbox', 'mail', {}),
      ],
      read as never,
      new Map(),
    );
    expect([...hooks.keys()]).toEqual(['hs', 'mc']);
    expect(hooks.get('mc')).toEqual({ tool: 'mailchimp', secret: SECRET, listId: 'l1', purposes: ['service.info', 'marketing'] });
    expect(() => toolHooks([plan('activecampaign', 'ac', { webhookSecret: { env: 'SHORT' } })], read as never, new Map())).toThrow(/ac.*connectors\/x.yaml:3.*shorter than 16/);
  });
});
