import { afterEach, describe, expect, it } from 'vitest';
import { crmDeps, marketingMessage as message, sendContext as ctx, standInFaults } from '../../../test/helpers/crm.ts';
import { startHubspotStandIn, type HubspotStandIn, type HubspotStandInOptions } from '../../../test/helpers/hubspot-standin.ts';
import { PermanentError, RateLimitedError, RecipientError, TransientError } from '../../errors.ts';
import { deliveryUuid } from '../common.ts';
import { outputConformanceSuite } from '../conformance.ts';
import { ForgetOutcome, OptOutOutcome } from '../spec.ts';
import { createHubspot, hubspotLimits, hubspotSpec, msUntilMidnight, type HubspotConfig } from './spec.ts';

const NOW = Date.parse('2030-03-15T13:30:00Z');

function config(standIn: HubspotStandIn, overrides: Partial<HubspotConfig> = {}): HubspotConfig {
  return {
    name: 'hubspot-contacts',
    type: 'hubspot',
    portalId: standIn.portalId,
    auth: { privateAppToken: { env: 'HUBSPOT_TOKEN' } },
    action: 'upsert',
    idProperty: 'email',
    properties: { 'patient.name.given': 'firstname', 'patient.name.family': 'lastname', 'patient.language': 'hs_language' },
    subscriptions: { 'service.info': 111, marketing: 222 },
    tier: 'starter',
    apiLimitIncreasePacks: 0,
    timeZone: 'UTC',
    apiBaseUrl: standIn.baseUrl,
    timeoutSeconds: 10,
    baa: false,
    allowedPurposes: ['service.info', 'marketing'],
    ...overrides,
  };
}

function depsFor(standIn: HubspotStandIn, nowMs = NOW) {
  return crmDeps(
    { HUBSPOT_TOKEN: standIn.privateAppToken, HUBSPOT_CLIENT_SECRET: standIn.oauth.clientSecret, HUBSPOT_REFRESH_TOKEN: standIn.oauth.refreshToken },
    nowMs,
  );
}

const oauthAuth = (standIn: HubspotStandIn): HubspotConfig['auth'] => ({
  oauth: { clientId: standIn.oauth.clientId, clientSecret: { env: 'HUBSPOT_CLIENT_SECRET' }, refreshToken: { env: 'HUBSPOT_REFRESH_TOKEN' }, tokenUrl: `${standIn.baseUrl}/oauth/v1/token` },
});

for (const action of ['upsert', 'event'] as const) {
  outputConformanceSuite(`hubspot ${action}`, {
    async start({ timeoutSeconds }) {
      const standIn = await startHubspotStandIn();
      const adapter = createHubspot(config(standIn, { action, event: { name: 'newsletter_invitation' }, timeoutSeconds }), depsFor(standIn));
      const api = () => standIn.requests.filter((r) => r.path !== '/oauth/v1/token');
      return {
        adapter,
        message,
        requests: () => api().length,
        waitForRequests: (n) => standIn.waitForRequests(n),
        // Upserts are keyed by the unique property's value, events by their uuid.
        keys: () => api().map((r) => String(action === 'upsert' ? (r.json as { inputs: Array<{ id: string }> }).inputs[0]!.id : (r.json as { uuid: string }).uuid)),
        retryAfterMs: 10_000,
        fail: standInFaults(standIn, {
          rateLimit: () => standIn.rateLimitNext('TEN_SECONDLY_ROLLING'),
          unavailable: { status: 503, body: { status: 'error', message: 'unavailable', category: 'SERVICE_UNAVAILABLE' } },
          rejected: { status: 400, body: { status: 'error', message: 'bad', category: 'VALIDATION_ERROR' } },
        }),
        close: () => standIn.close(),
      };
    },
  });
}

describe('hubspot output', () => {
  let standIn: HubspotStandIn;
  const start = async (options: HubspotStandInOptions = {}) => {
    standIn = await startHubspotStandIn({ now: () => NOW, ...options });
    return standIn;
  };
  afterEach(async () => {
    await standIn?.close();
  });

  it("upserts the contact by email with the mapped properties only, records the holding first, then HubSpot's id of it", async () => {
    await start();
    const deps = depsFor(standIn);
    const adapter = createHubspot(config(standIn), deps);
    const receipt = await adapter.send({ ...message, fields: { ...message.fields, patient: { ...(message.fields!.patient as object), id: 'MRN-1' } } }, ctx());
    const [request] = standIn.requests;
    expect(request).toMatchObject({ method: 'POST', path: '/crm/v3/objects/contacts/batch/upsert' });
    expect(request!.headers.authorization).toBe(`Bearer ${standIn.privateAppToken}`);
    expect(request!.json).toEqual({
      inputs: [
        {
          idProperty: 'email',
          id: 'pat.doe@example.org',
          // patient.id is in the payload but has no property: it does not leave.
          properties: { firstname: 'Pat Q', lastname: 'Doe', hs_language: 'en', email: 'pat.doe@example.org' },
          objectWriteTraceId: deliveryUuid(message.deliveryId),
        },
      ],
    });
    expect(receipt).toMatchObject({ providerId: '100', detail: { created: true, rateLimitRemaining: 99, dailyRemaining: 249_999 } });
    // The id HubSpot's webhooks will name the contact by.
    expect(deps.holdingsLedger.holdings).toEqual([{ output: 'hubspot-contacts', patientId: 'P1', contactKey: 'pat.doe@example.org', firstSentAt: new Date(NOW).toISOString(), toolId: '100' }]);
    // Again: the same contact, updated.
    expect((await adapter.send(message, ctx(2))).providerId).toBe('100');
    expect(standIn.contacts.size).toBe(1);
  });

  it('upserts by a configured unique property (a BAA-covered output sending the MRN)', async () => {
    await start({ uniqueProperties: ['carerelay_patient_id'] });
    const adapter = createHubspot(
      config(standIn, { baa: true, idProperty: 'carerelay_patient_id', properties: { 'patient.id': 'carerelay_patient_id', 'patient.name.given': 'firstname' } }),
      depsFor(standIn),
    );
    await adapter.send({ ...message, fields: { patient: { id: 'MRN-1', name: { given: ['Pat'] } } } }, ctx());
    expect((standIn.requests[0]!.json as { inputs: unknown[] }).inputs[0]).toMatchObject({ idProperty: 'carerelay_patient_id', id: 'MRN-1' });
    const missing = await adapter.send({ ...message, deliveryId: 'd2', fields: { patient: { name: { given: ['Pat'] } } } }, ctx()).catch((e: unknown) => e);
    expect(missing).toMatchObject({ code: 'hubspot_no_id', failureClass: 'permanent' });
  });

  it('sends the custom event with a uuid derived from the delivery id, kept once by HubSpot', async () => {
    await start();
    const adapter = createHubspot(config(standIn, { action: 'event', event: { name: 'newsletter_invitation' }, properties: { 'patient.language': 'language' } }), depsFor(standIn));
    const first = await adapter.send(message, ctx(1));
    await adapter.send(message, ctx(2));
    const uuid = deliveryUuid(message.deliveryId);
    expect(uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(first.providerId).toBe(uuid);
    expect(standIn.requests[0]).toMatchObject({ path: '/events/v3/send' });
    expect(standIn.requests[0]!.json).toEqual({ eventName: 'pe1234567_newsletter_invitation', email: 'pat.doe@example.org', uuid, occurredAt: new Date(NOW).toISOString(), properties: { language: 'en' } });
    expect(standIn.events).toHaveLength(1);
    // The delivery id names the appointment; the uuid does not.
    expect(JSON.stringify(standIn.requests.map((r) => r.json))).not.toContain('A-1001');
  });

  it('an invalid email is the recipient\'s problem: RecipientError unfit', async () => {
    await start();
    const error = await createHubspot(config(standIn), depsFor(standIn)).send({ ...message, to: 'pat@localhost' }, ctx()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(RecipientError);
    expect(error).toMatchObject({ signal: 'unfit', providerCode: 'INVALID_EMAIL' });
  });

  it('429 waits for the window, or for midnight in the account\'s zone when the daily limit is spent', async () => {
    await start({ perTenSeconds: 2 });
    const adapter = createHubspot(config(standIn, { timeZone: 'America/New_York' }), depsFor(standIn));
    await adapter.send(message, ctx());
    await adapter.send(message, ctx());
    // The stand-in's own 10-second window is full.
    const windowFull = await adapter.send(message, ctx()).catch((e: unknown) => e);
    expect(windowFull).toBeInstanceOf(RateLimitedError);
    expect(windowFull).toMatchObject({ code: 'hubspot_rate_limited', retryAfterMs: 10_000 });
    standIn.rateLimitNext('DAILY');
    const daily = await adapter.send(message, ctx()).catch((e: unknown) => e);
    // 13:30Z is 09:30 in New York (EDT, UTC−4): midnight there is 14 h 30 min away.
    expect(daily).toMatchObject({ code: 'hubspot_rate_limited', retryAfterMs: 14.5 * 3600_000 });
    expect(msUntilMidnight(Date.parse('2030-03-15T23:59:00Z'), 'UTC')).toBe(60_000);
  });

  it('classifies HubSpot\'s other answers', async () => {
    await start();
    const adapter = createHubspot(config(standIn), depsFor(standIn));
    standIn.failNext({ kind: 'answer', status: 403, body: { status: 'error', message: 'This app hasn\'t been granted all required scopes', category: 'MISSING_SCOPES' } });
    await expect(adapter.send(message, ctx())).rejects.toMatchObject({ code: 'hubspot_forbidden', failureClass: 'permanent' });
    standIn.failNext({ kind: 'answer', status: 477, headers: { 'retry-after': '30' }, body: { status: 'error', message: 'migration in progress' } });
    await expect(adapter.send(message, ctx())).rejects.toMatchObject({ code: 'hubspot_unavailable', failureClass: 'transient', retryAfterMs: 30_000 });
    standIn.failNext({ kind: 'answer', status: 207, body: { status: 'COMPLETE', results: [], numErrors: 1, errors: [{ status: 'error', category: 'CONFLICT', message: 'conflict' }] } });
    await expect(adapter.send(message, ctx())).rejects.toMatchObject({ code: 'hubspot_rejected', failureClass: 'permanent' });
    const wrongToken = createHubspot(config(standIn), crmDeps({ HUBSPOT_TOKEN: 'pat-na1-wrong' }));
    await expect(wrongToken.send(message, ctx())).rejects.toMatchObject({ code: 'hubspot_unauthorized' });
    await expect(adapter.send({ ...message, to: undefined }, ctx())).rejects.toMatchObject({ code: 'hubspot_no_contact', failureClass: 'permanent' });
  });

  it('OAuth: one token fetch shared by concurrent sends, reused, refreshed before it expires', async () => {
    let now = NOW;
    standIn = await startHubspotStandIn({ now: () => now, tokenLifetimeSeconds: 1800 });
    const deps = depsFor(standIn);
    const adapter = createHubspot(config(standIn, { auth: oauthAuth(standIn) }), deps);
    await Promise.all([adapter.send(message, ctx()), adapter.send(message, ctx()), adapter.send(message, ctx())]);
    expect(standIn.issuedTokens).toHaveLength(1);
    now += 1700_000;
    deps.setNow(now);
    await adapter.send(message, ctx());
    expect(standIn.issuedTokens).toHaveLength(1);
    // Within the last minute of its life: a new one before the call.
    now += 50_000;
    deps.setNow(now);
    await adapter.send(message, ctx());
    expect(standIn.issuedTokens).toHaveLength(2);
    const last = standIn.requests.at(-1)!;
    expect(last.headers.authorization).toBe(`Bearer ${standIn.issuedTokens[1]}`);
  });

  it('OAuth: a refused refresh token is permanent and nothing reaches the API', async () => {
    await start();
    const deps = crmDeps({ HUBSPOT_CLIENT_SECRET: standIn.oauth.clientSecret, HUBSPOT_REFRESH_TOKEN: 'revoked' }, NOW);
    const adapter = createHubspot(config(standIn, { auth: oauthAuth(standIn) }), deps);
    await expect(adapter.send(message, ctx())).rejects.toMatchObject({ code: 'hubspot_token_rejected', failureClass: 'permanent' });
    standIn.failNext({ kind: 'reset' });
    const good = createHubspot(config(standIn, { auth: oauthAuth(standIn) }), depsFor(standIn));
    const lost = await good.send(message, ctx()).catch((e: unknown) => e);
    // The token request was lost: the API call never left, so only a transient delay.
    expect(lost).toBeInstanceOf(TransientError);
    expect(standIn.requests.filter((r) => r.path !== '/oauth/v1/token')).toHaveLength(0);
  });

  it('pushes an opt-out as UNSUBSCRIBED for the subscription of each purpose in scope, and nothing else', async () => {
    await start();
    const adapter = createHubspot(config(standIn), depsFor(standIn));
    const contact = { patientId: 'P1', contactKey: 'pat.doe@example.org' };
    const signal = new AbortController().signal;
    expect(await adapter.optOut!(contact, { channel: 'email' }, { signal })).toBe(OptOutOutcome.Applied);
    expect(standIn.requests[0]).toMatchObject({ path: '/communication-preferences/v4/statuses/batch/write' });
    expect(standIn.statuses).toEqual(
      new Map([
        ['pat.doe@example.org|222', 'UNSUBSCRIBED'],
        ['pat.doe@example.org|111', 'UNSUBSCRIBED'],
      ]),
    );
    // Again: nothing changes, still applied.
    expect(await adapter.optOut!(contact, { channel: 'email', purpose: 'marketing' }, { signal })).toBe(OptOutOutcome.Applied);
    // An SMS STOP, or a purpose without a subscription: no call.
    expect(await adapter.optOut!(contact, { channel: 'sms', purpose: 'marketing' }, { signal })).toBe(OptOutOutcome.NotApplicable);
    expect(await adapter.optOut!(contact, { channel: 'sms', address: '+33611223344' }, { signal })).toBe(OptOutOutcome.NotApplicable);
    expect(await adapter.optOut!(contact, { purpose: 'survey' }, { signal })).toBe(OptOutOutcome.NotApplicable);
    expect(standIn.requests).toHaveLength(2);
    // The communication preferences API keeps EMAIL statuses only: a STOP is never routed here.
    expect(adapter.optOutChannels).toEqual(['email']);
    standIn.failNext({ kind: 'answer', status: 503 });
    await expect(adapter.optOut!(contact, { purpose: 'marketing' }, { signal })).rejects.toBeInstanceOf(TransientError);
  });

  it('forgets a contact it created with a GDPR delete by email (HubSpot blocklists the address)', async () => {
    await start();
    const adapter = createHubspot(config(standIn), depsFor(standIn));
    await adapter.send(message, ctx());
    const signal = new AbortController().signal;
    expect(await adapter.forget!({ patientId: 'P1', contactKey: 'pat.doe@example.org' }, { signal })).toBe(ForgetOutcome.Forgotten);
    expect(standIn.requests.at(-1)).toMatchObject({ path: '/crm/v3/objects/contacts/gdpr-delete', json: { objectId: 'pat.doe@example.org', idProperty: 'email' } });
    expect(standIn.contacts.size).toBe(0);
    expect(standIn.gdprBlocked).toEqual(new Set(['pat.doe@example.org']));
    // Again: nothing left to delete, HubSpot answers the same.
    expect(await adapter.forget!({ patientId: 'P1', contactKey: 'pat.doe@example.org' }, { signal })).toBe(ForgetOutcome.Forgotten);
    standIn.failNext({ kind: 'answer', status: 403, body: { status: 'error', message: 'missing scopes', category: 'MISSING_SCOPES' } });
    await expect(adapter.forget!({ patientId: 'P1', contactKey: 'pat.doe@example.org' }, { signal })).rejects.toBeInstanceOf(PermanentError);
  });

  it('declares the documented limits, shared by the outputs of one account', async () => {
    await start();
    expect(hubspotLimits({ portalId: 42, tier: 'starter', apiLimitIncreasePacks: 0 })).toEqual({ ratePerSecond: 10, burst: 100, perDay: 250_000, account: 'hubspot:42' });
    expect(hubspotLimits({ portalId: 42, tier: 'professional', apiLimitIncreasePacks: 0 })).toMatchObject({ ratePerSecond: 19, burst: 190, perDay: 625_000 });
    expect(hubspotLimits({ portalId: 42, tier: 'enterprise', apiLimitIncreasePacks: 2 })).toMatchObject({ ratePerSecond: 25, burst: 250, perDay: 3_000_000 });
    expect(hubspotSpec.info(config(standIn))).toMatchObject({ channel: 'crm', baa: false, idempotent: true, fields: ['patient.name.given', 'patient.name.family', 'patient.language'] });
  });

  it('refuses at load: a name as the unique property, two auths, an event without a name, opt-outs as properties', async () => {
    await start();
    const issues = (overrides: Partial<HubspotConfig>) => hubspotSpec.check!(config(standIn, overrides)).map((i) => `${i.path.join('.')}: ${i.message}`);
    expect(issues({})).toEqual([]);
    expect(issues({ idProperty: 'firstname' })).toEqual([expect.stringContaining('idProperty: contacts are matched on a property with unique values, never a name')]);
    expect(issues({ idProperty: 'nickname', properties: { 'patient.name.given': 'nickname' } })).toEqual([expect.stringContaining('never a name')]);
    expect(issues({ idProperty: 'carerelay_id' })).toEqual([expect.stringContaining('no field is mapped to "carerelay_id"')]);
    expect(issues({ auth: { privateAppToken: { env: 'A' }, ...oauthAuth(standIn) } })).toEqual(['auth: give exactly one of privateAppToken and oauth']);
    expect(issues({ action: 'event' })).toEqual([expect.stringContaining('action event needs event')]);
    expect(issues({ properties: { 'patient.language': 'hs_email_optout' } })).toEqual([expect.stringContaining('subscription statuses')]);
    expect(issues({ properties: { 'patient.language': 'email' } })).toEqual([expect.stringContaining("the contact's email is the rule's send.to")]);
    expect(issues({ action: 'event', event: { name: 'pe999_other' } })).toEqual([expect.stringContaining('another account')]);
  });

  it('a send aborted before it starts records nothing', async () => {
    await start();
    const deps = depsFor(standIn);
    const controller = new AbortController();
    controller.abort();
    await expect(createHubspot(config(standIn), deps).send(message, { ...ctx(), signal: controller.signal })).rejects.toBeInstanceOf(TransientError);
    expect(deps.holdingsLedger.holdings).toEqual([]);
    expect(PermanentError).toBeDefined();
  });
});
