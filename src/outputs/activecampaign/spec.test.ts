import { afterEach, describe, expect, it } from 'vitest';
import { startActiveCampaignStandIn, type ActiveCampaignStandIn } from '../../../test/helpers/activecampaign-standin.ts';
import { crmDeps, marketingMessage as message, sendContext as ctx, standInFaults } from '../../../test/helpers/crm.ts';
import { RateLimitedError, RecipientError } from '../../errors.ts';
import { outputConformanceSuite } from '../conformance.ts';
import { ForgetOutcome, OptOutOutcome } from '../spec.ts';
import { activeCampaignLimits, activeCampaignSpec, createActiveCampaign, type ActiveCampaignAction, type ActiveCampaignConfig } from './spec.ts';

const NOW = Date.parse('2030-03-15T13:30:00Z');

function config(standIn: ActiveCampaignStandIn, overrides: Partial<ActiveCampaignConfig> = {}): ActiveCampaignConfig {
  return {
    name: 'ac-contacts',
    type: 'activecampaign',
    apiUrl: standIn.baseUrl,
    apiToken: { env: 'AC_API_TOKEN' },
    action: 'upsert',
    properties: { 'patient.name.given': 'firstName', 'patient.name.family': 'lastName', 'patient.language': '3' },
    listIds: [2],
    ratePerSecond: 5,
    timeoutSeconds: 10,
    baa: false,
    allowedPurposes: ['service.info', 'marketing'],
    ...overrides,
  };
}

const depsFor = (standIn: ActiveCampaignStandIn) => crmDeps({ AC_API_TOKEN: standIn.apiToken, AC_EVENT_KEY: standIn.eventKey }, NOW);
const eventConfig = (standIn: ActiveCampaignStandIn): Partial<ActiveCampaignConfig> => ({
  event: { name: 'newsletter_invitation', accountId: standIn.accountId, key: { env: 'AC_EVENT_KEY' }, trackingUrl: `${standIn.baseUrl}/event` },
  properties: { 'patient.language': 'language' },
});

for (const action of ['upsert', 'event'] as const satisfies ActiveCampaignAction[]) {
  outputConformanceSuite(`activecampaign ${action}`, {
    async start({ timeoutSeconds }) {
      // A clock that does not move: the stand-in's bucket never refills, so at most 5 calls pass; the suite makes fewer.
      const standIn = await startActiveCampaignStandIn({ now: () => NOW });
      const deps = depsFor(standIn);
      const adapter = createActiveCampaign(config(standIn, { action, timeoutSeconds, ...(action === 'event' ? eventConfig(standIn) : {}) }), deps);
      return {
        adapter,
        message,
        requests: () => standIn.requests.length,
        waitForRequests: (n) => standIn.waitForRequests(n),
        // Contacts are synced by email; events have no key: CareRelay's ledger holds it.
        keys: () =>
          action === 'upsert'
            ? standIn.requests.map((r) => String((r.json as { contact: { email: string } }).contact.email))
            : deps.ledger.receipts.filter((r) => r.status === 'sending').map((r) => r.deliveryId),
        retryAfterMs: 30_000,
        fail: standInFaults(standIn, { rateLimit: () => standIn.rateLimitNext(30), rejected: { status: 400, body: {} } }),
        close: () => standIn.close(),
      };
    },
  });
}

describe('activecampaign output', () => {
  let standIn: ActiveCampaignStandIn;
  afterEach(async () => {
    await standIn?.close();
  });

  it('syncs the contact by email with names and custom field values', async () => {
    standIn = await startActiveCampaignStandIn({ now: () => NOW });
    const deps = depsFor(standIn);
    const adapter = createActiveCampaign(config(standIn), deps);
    const first = await adapter.send(message, ctx());
    const second = await adapter.send(message, ctx(2));
    expect(standIn.requests[0]).toMatchObject({ method: 'POST', path: '/api/3/contact/sync' });
    expect(standIn.requests[0]!.headers['api-token']).toBe(standIn.apiToken);
    expect(standIn.requests[0]!.json).toEqual({ contact: { email: 'pat.doe@example.org', firstName: 'Pat Q', lastName: 'Doe', fieldValues: [{ field: '3', value: 'en' }] } });
    expect(second.providerId).toBe(first.providerId);
    expect(standIn.contacts).toMatchObject([{ email: 'pat.doe@example.org', fields: { '3': 'en' } }]);
    expect(deps.holdingsLedger.holdings.map((h) => h.contactKey)).toEqual(['pat.doe@example.org']);
  });

  it('tags: syncs the contact, then adds the tag (two calls, declared to the engine)', async () => {
    // A second passes between calls: the account's limit stays out of the way.
    let t = NOW;
    standIn = await startActiveCampaignStandIn({ now: () => (t += 1000) });
    const adapter = createActiveCampaign(config(standIn, { action: 'tag', tag: { id: 20 } }), depsFor(standIn));
    const receipt = await adapter.send(message, ctx());
    await adapter.send(message, ctx(2));
    expect(standIn.requests.map((r) => r.path)).toEqual(['/api/3/contact/sync', '/api/3/contactTags', '/api/3/contact/sync', '/api/3/contactTags']);
    expect(standIn.requests[1]!.json).toEqual({ contactTag: { contact: '1', tag: '20' } });
    expect(receipt.providerId).toBe('1:20');
    expect(standIn.contacts[0]!.tags).toEqual(['20']);
    expect(adapter.limits).toMatchObject({ callsPerSend: 2 });
    // A tag that does not exist is refused for good.
    const missing = createActiveCampaign(config(standIn, { action: 'tag', tag: { id: 99 } }), depsFor(standIn));
    await expect(missing.send(message, ctx())).rejects.toMatchObject({ code: 'activecampaign_rejected', failureClass: 'permanent' });
  });

  it('tracks the event once per delivery, form-encoded with the account id and event key', async () => {
    standIn = await startActiveCampaignStandIn({ now: () => NOW });
    const adapter = createActiveCampaign(config(standIn, { action: 'event', ...eventConfig(standIn) }), depsFor(standIn));
    await adapter.send(message, ctx(1));
    await adapter.send(message, ctx(2));
    expect(standIn.requests).toHaveLength(1);
    expect(Object.fromEntries(standIn.requests[0]!.form!)).toEqual({
      actid: standIn.accountId,
      key: standIn.eventKey,
      event: 'newsletter_invitation',
      visit: '{"email":"pat.doe@example.org"}',
      eventdata: '{"language":"en"}',
    });
    expect(standIn.events).toEqual([{ event: 'newsletter_invitation', email: 'pat.doe@example.org', eventdata: '{"language":"en"}' }]);
    const wrongKey = createActiveCampaign(config(standIn, { action: 'event', ...eventConfig(standIn) }), crmDeps({ AC_API_TOKEN: standIn.apiToken, AC_EVENT_KEY: 'wrong' }, NOW));
    await expect(wrongKey.send({ ...message, deliveryId: 'other' }, ctx())).rejects.toMatchObject({ code: 'activecampaign_event_refused', failureClass: 'permanent' });
  });

  it('the account\'s 5 requests per second: the sixth call in the same instant is refused with Retry-After', async () => {
    standIn = await startActiveCampaignStandIn({ now: () => NOW });
    const adapter = createActiveCampaign(config(standIn), depsFor(standIn));
    for (let i = 0; i < 5; i++) await adapter.send(message, ctx());
    const sixth = await adapter.send(message, ctx()).catch((e: unknown) => e);
    expect(sixth).toBeInstanceOf(RateLimitedError);
    expect(sixth).toMatchObject({ code: 'activecampaign_rate_limited', retryAfterMs: 1000 });
    // Another output of the same account draws from the same limit.
    const other = createActiveCampaign(config(standIn, { name: 'ac-other' }), depsFor(standIn));
    await expect(other.send(message, ctx())).rejects.toBeInstanceOf(RateLimitedError);
    expect(standIn.admitted).toHaveLength(5);
  });

  it('declares the limit keyed by the account, the same for every output and key of it', () => {
    const a = activeCampaignLimits({ apiUrl: 'https://NorthClinic.api-us1.com', action: 'upsert', ratePerSecond: 5 });
    const b = activeCampaignLimits({ apiUrl: 'https://northclinic.api-us1.com/', action: 'event', ratePerSecond: 2.5 });
    expect(a).toEqual({ ratePerSecond: 5, burst: 5, account: 'activecampaign:northclinic.api-us1.com' });
    expect(b).toEqual({ ratePerSecond: 2.5, burst: 2, account: a.account });
  });

  it('an invalid address is the recipient\'s problem; a bad token is permanent', async () => {
    standIn = await startActiveCampaignStandIn({ now: () => NOW });
    const adapter = createActiveCampaign(config(standIn), depsFor(standIn));
    const invalid = await adapter.send({ ...message, to: 'pat@example' }, ctx()).catch((e: unknown) => e);
    expect(invalid).toBeInstanceOf(RecipientError);
    expect(invalid).toMatchObject({ signal: 'unfit', providerCode: 'email_invalid' });
    const badToken = createActiveCampaign(config(standIn), crmDeps({ AC_API_TOKEN: 'wrong' }));
    await expect(badToken.send(message, ctx())).rejects.toMatchObject({ code: 'activecampaign_forbidden', failureClass: 'permanent' });
  });

  it('pushes an opt-out as status 2 on the configured lists, never status 1', async () => {
    let now = NOW;
    standIn = await startActiveCampaignStandIn({ now: () => now });
    const adapter = createActiveCampaign(config(standIn), depsFor(standIn));
    await adapter.send(message, ctx());
    const signal = new AbortController().signal;
    const contact = { patientId: 'P1', contactKey: 'pat.doe@example.org' };
    expect(await adapter.optOut!(contact, { channel: 'email', purpose: 'marketing' }, { signal })).toBe(OptOutOutcome.Applied);
    expect(standIn.requests.slice(-2).map((r) => `${r.method} ${r.path}`)).toEqual(['GET /api/3/contacts', 'POST /api/3/contactLists']);
    expect(standIn.requests.at(-1)!.json).toEqual({ contactList: { list: '2', contact: '1', status: '2' } });
    expect(standIn.contacts[0]!.lists).toEqual({ '2': '2' });
    now += 1000;
    expect(await adapter.optOut!({ patientId: 'P2', contactKey: 'nobody@example.org' }, { purpose: 'marketing' }, { signal })).toBe(OptOutOutcome.NotHeld);
    const noList = createActiveCampaign(config(standIn, { listIds: [] }), depsFor(standIn));
    expect(await noList.optOut!(contact, { purpose: 'marketing' }, { signal })).toBe(OptOutOutcome.NotApplicable);
    expect(JSON.stringify(standIn.requests.map((r) => r.json))).not.toContain('"status":"1"');
  });

  it('forgets a contact: found by email, then deleted; one it does not hold is not_held', async () => {
    let now = NOW;
    standIn = await startActiveCampaignStandIn({ now: () => now });
    const adapter = createActiveCampaign(config(standIn), depsFor(standIn));
    await adapter.send(message, ctx());
    const signal = new AbortController().signal;
    now += 1000;
    expect(await adapter.forget!({ patientId: 'P1', contactKey: 'pat.doe@example.org' }, { signal })).toBe(ForgetOutcome.Forgotten);
    expect(standIn.requests.slice(-2).map((r) => `${r.method} ${r.path}`)).toEqual(['GET /api/3/contacts', 'DELETE /api/3/contacts/1']);
    expect(standIn.contacts).toEqual([]);
    now += 1000;
    expect(await adapter.forget!({ patientId: 'P1', contactKey: 'pat.doe@example.org' }, { signal })).toBe(ForgetOutcome.NotHeld);
  });

  it('refuses at load: a property that is no contact field, a tag or event action without its settings', async () => {
    standIn = await startActiveCampaignStandIn();
    const issues = (overrides: Partial<ActiveCampaignConfig>) => activeCampaignSpec.check!(config(standIn, overrides)).map((i) => i.message);
    expect(issues({})).toEqual([]);
    expect(issues({ properties: { 'patient.name.given': 'first_name' } })).toEqual([expect.stringContaining('"first_name" is not a contact field')]);
    expect(issues({ action: 'tag' })).toEqual(['action tag needs tag: { id }']);
    expect(issues({ action: 'event' })).toEqual(['action event needs event: { name, accountId, key }']);
  });
});
