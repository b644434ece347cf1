import { afterEach, describe, expect, it } from 'vitest';
import { startBrevoStandIn, type BrevoStandIn } from '../../../test/helpers/brevo-standin.ts';
import { crmDeps, marketingMessage, sendContext as ctx, standInFaults } from '../../../test/helpers/crm.ts';
import { AmbiguousError, RateLimitedError } from '../../errors.ts';
import { deliveryUuid } from '../common.ts';
import { outputConformanceSuite } from '../conformance.ts';
import { ForgetOutcome, OptOutOutcome, type OutboundMessage } from '../spec.ts';
import { brevoLimits, brevoSpec, createBrevo, isGsm7, type BrevoAction, type BrevoConfig } from './spec.ts';

const NOW = Date.parse('2030-03-15T13:30:00.250Z');

function config(standIn: BrevoStandIn, overrides: Partial<BrevoConfig> = {}): BrevoConfig {
  return {
    name: 'brevo-contacts',
    type: 'brevo',
    apiKey: { env: 'BREVO_API_KEY' },
    action: 'upsert',
    listIds: [12],
    properties: { 'patient.name.given': 'FIRSTNAME', 'patient.name.family': 'LASTNAME', 'patient.language': 'LANGUAGE' },
    ratePerSecond: 0,
    apiBaseUrl: standIn.baseUrl,
    timeoutSeconds: 10,
    baa: false,
    allowedPurposes: ['service.info', 'marketing'],
    ...overrides,
  };
}

const depsFor = (standIn: BrevoStandIn) => crmDeps({ BREVO_API_KEY: standIn.apiKey }, NOW);

const emailMessage: OutboundMessage = {
  ...marketingMessage,
  deliveryId: 'newsletter@patient/P1#0',
  channel: 'email',
  subject: 'Our spring newsletter',
  text: 'Hello Pat, here is our newsletter.',
  unsubscribe: { url: 'https://carerelay.example.org/u/abc', mailto: 'mailto:unsubscribe@example.org' },
};
const smsMessage: OutboundMessage = { ...marketingMessage, deliveryId: 'sms@patient/P1#0', channel: 'sms', to: '+33612345678', text: 'Clinique du Nord : nouveauté, consultations le samedi 🙂' };

const ACTION_CONFIG: Record<BrevoAction, Partial<BrevoConfig>> = {
  upsert: {},
  event: { event: { name: 'newsletter_invitation' }, properties: { 'patient.language': 'language' } },
  email: { email: { sender: { email: 'news@northclinic.example.org', name: 'North Clinic' }, requireUnsubscribe: true }, properties: {} },
  sms: { sms: { sender: 'NorthClinic' }, properties: {} },
};
const ACTION_MESSAGE: Record<BrevoAction, OutboundMessage> = { upsert: marketingMessage, event: marketingMessage, email: emailMessage, sms: smsMessage };

for (const action of ['upsert', 'event', 'email', 'sms'] as const) {
  outputConformanceSuite(`brevo ${action}`, {
    async start({ timeoutSeconds }) {
      const standIn = await startBrevoStandIn();
      const deps = depsFor(standIn);
      const adapter = createBrevo(config(standIn, { action, timeoutSeconds, ...ACTION_CONFIG[action] }), deps);
      return {
        adapter,
        message: ACTION_MESSAGE[action],
        requests: () => standIn.requests.length,
        waitForRequests: (n) => standIn.waitForRequests(n),
        // Contacts are keyed by their address; the others by CareRelay's ledger (email also carries idempotencyKey).
        keys: () =>
          action === 'upsert'
            ? standIn.requests.map((r) => String((r.json as { email: string }).email))
            : deps.ledger.receipts.filter((r) => r.status === 'sending').map((r) => r.deliveryId),
        retryAfterMs: 1000,
        fail: standInFaults(standIn, { rateLimit: () => standIn.rateLimitNext(1), rejected: { status: 400, body: { code: 'invalid_parameter', message: 'bad' } } }),
        close: () => standIn.close(),
      };
    },
  });
}

describe('brevo output', () => {
  let standIn: BrevoStandIn;
  afterEach(async () => {
    await standIn?.close();
  });

  it('upserts the contact with its attributes and lists, never a blocklist flag', async () => {
    standIn = await startBrevoStandIn({ now: () => NOW });
    const deps = depsFor(standIn);
    const adapter = createBrevo(config(standIn), deps);
    const created = await adapter.send(marketingMessage, ctx());
    const updated = await adapter.send(marketingMessage, ctx(2));
    expect(standIn.requests[0]!.headers['api-key']).toBe(standIn.apiKey);
    expect(standIn.requests[0]!.json).toEqual({ email: 'pat.doe@example.org', attributes: { FIRSTNAME: 'Pat Q', LASTNAME: 'Doe', LANGUAGE: 'en' }, listIds: [12], updateEnabled: true });
    expect(created).toMatchObject({ detail: { created: true, contactId: 1 } });
    expect(updated.providerId).toBe(created.providerId);
    expect(standIn.contacts).toHaveLength(1);
    expect(deps.holdingsLedger.holdings.map((h) => h.contactKey)).toEqual(['pat.doe@example.org']);
  });

  it('blocklists on opt-out, and a later upsert or event leaves the blocklist in place', async () => {
    standIn = await startBrevoStandIn({ now: () => NOW });
    const adapter = createBrevo(config(standIn), depsFor(standIn));
    await adapter.send(marketingMessage, ctx());
    const signal = new AbortController().signal;
    const contact = { patientId: 'P1', contactKey: 'pat.doe@example.org' };
    expect(await adapter.optOut!(contact, { channel: 'email' }, { signal })).toBe(OptOutOutcome.Applied);
    expect(standIn.requests.at(-1)).toMatchObject({ method: 'PUT', path: '/v3/contacts/pat.doe%40example.org', json: { emailBlacklisted: true } });
    expect(standIn.requests.at(-1)!.query.get('identifierType')).toBe('email_id');
    await adapter.send({ ...marketingMessage, fields: { patient: { name: { given: ['Patricia'] }, language: 'fr' } } }, ctx());
    await createBrevo(config(standIn, { action: 'event', ...ACTION_CONFIG.event }), depsFor(standIn)).send(marketingMessage, ctx());
    expect(standIn.contacts[0]).toMatchObject({ emailBlacklisted: true, attributes: { FIRSTNAME: 'Patricia' } });
    // The stand-in does lift it, as Brevo warns, when the address is changed: CareRelay never does.
    expect(JSON.stringify(standIn.requests.map((r) => r.json))).not.toMatch(/"EMAIL"|Blacklisted":false/);
    expect(await adapter.optOut!({ patientId: 'P2', contactKey: 'nobody@example.org' }, { purpose: 'marketing' }, { signal })).toBe(OptOutOutcome.NotHeld);
    expect(await adapter.optOut!(contact, { purpose: 'care.logistics' }, { signal })).toBe(OptOutOutcome.NotApplicable);
  });

  it('forgets a contact by deleting it (by email or by phone); one it does not hold is not_held', async () => {
    standIn = await startBrevoStandIn({ now: () => NOW });
    const adapter = createBrevo(config(standIn, { properties: {} }), depsFor(standIn));
    await adapter.send(marketingMessage, ctx());
    await adapter.send({ ...marketingMessage, to: '+33 6 12 34 56 78' }, ctx());
    const signal = new AbortController().signal;
    expect(await adapter.forget!({ patientId: 'P1', contactKey: 'pat.doe@example.org' }, { signal })).toBe(ForgetOutcome.Forgotten);
    expect(standIn.requests.at(-1)).toMatchObject({ method: 'DELETE', path: '/v3/contacts/pat.doe%40example.org' });
    expect(await adapter.forget!({ patientId: 'P1', contactKey: '+33612345678' }, { signal })).toBe(ForgetOutcome.Forgotten);
    expect(standIn.requests.at(-1)!.query.get('identifierType')).toBe('phone_id');
    expect(standIn.contacts).toEqual([]);
    expect(await adapter.forget!({ patientId: 'P1', contactKey: 'pat.doe@example.org' }, { signal })).toBe(ForgetOutcome.NotHeld);
  });

  it('an SMS STOP blocklists the SMS of a contact known by phone', async () => {
    standIn = await startBrevoStandIn({ now: () => NOW });
    const adapter = createBrevo(config(standIn, { properties: {} }), depsFor(standIn));
    await adapter.send({ ...marketingMessage, to: '+33 6 12 34 56 78' }, ctx());
    expect(standIn.requests[0]!.json).toMatchObject({ attributes: { SMS: '+33612345678' } });
    const outcome = await adapter.optOut!({ patientId: 'P1', contactKey: '+33612345678' }, { channel: 'sms', purpose: 'marketing' }, { signal: new AbortController().signal });
    expect(outcome).toBe(OptOutOutcome.Applied);
    expect(standIn.requests.at(-1)).toMatchObject({ path: '/v3/contacts/33612345678', json: { smsBlacklisted: true } });
    expect(standIn.contacts[0]).toMatchObject({ smsBlacklisted: true, emailBlacklisted: false });
  });

  it("a keyword's STOP blocklists the SMS of the contact Brevo holds under that number, whatever key the output holds; never email", async () => {
    standIn = await startBrevoStandIn({ now: () => NOW });
    const adapter = createBrevo(config(standIn, { properties: {} }), depsFor(standIn));
    expect(adapter.optOutChannels).toEqual(['email', 'sms']);
    await adapter.send(marketingMessage, ctx());
    const signal = new AbortController().signal;
    const held = { patientId: 'P1', contactKey: 'pat.doe@example.org' };
    // Brevo has no contact under the number: not_held, nothing changes.
    expect(await adapter.optOut!(held, { channel: 'sms', address: '+33611223344' }, { signal })).toBe(OptOutOutcome.NotHeld);
    expect(standIn.requests.at(-1)!.query.get('identifierType')).toBe('phone_id');
    expect(standIn.contacts[0]).toMatchObject({ smsBlacklisted: false, emailBlacklisted: false });
    await adapter.send({ ...marketingMessage, to: '+33 6 11 22 33 44' }, ctx());
    expect(await adapter.optOut!(held, { channel: 'sms', address: '+33611223344' }, { signal })).toBe(OptOutOutcome.Applied);
    expect(standIn.requests.at(-1)).toMatchObject({ method: 'PUT', path: '/v3/contacts/33611223344', json: { smsBlacklisted: true } });
    expect(standIn.contacts.map((c) => [c.email ?? c.attributes.SMS, c.smsBlacklisted, c.emailBlacklisted])).toEqual([
      ['pat.doe@example.org', false, false],
      ['+33611223344', true, false],
    ]);
  });

  it('records a custom event once per delivery', async () => {
    standIn = await startBrevoStandIn({ now: () => NOW });
    const adapter = createBrevo(config(standIn, { action: 'event', ...ACTION_CONFIG.event }), depsFor(standIn));
    const first = await adapter.send(marketingMessage, ctx(1));
    const second = await adapter.send(marketingMessage, ctx(2));
    expect(second.providerId).toBe(first.providerId);
    expect(standIn.events).toEqual([{ event_name: 'newsletter_invitation', identifiers: { email_id: 'pat.doe@example.org' }, event_properties: { language: 'en' } }]);
    expect(standIn.requests[0]!.json).toMatchObject({ event_date: new Date(NOW).toISOString() });
  });

  it('sends a transactional email once, with the idempotency key and one-click unsubscribe headers', async () => {
    standIn = await startBrevoStandIn({ now: () => NOW });
    const deps = depsFor(standIn);
    const adapter = createBrevo(config(standIn, { action: 'email', ...ACTION_CONFIG.email }), deps);
    standIn.failNext({ kind: 'reset' });
    await expect(adapter.send(emailMessage, ctx(1))).rejects.toBeInstanceOf(AmbiguousError);
    // A person replays the parked delivery: it goes once more, knowingly.
    const receipt = await adapter.send(emailMessage, ctx(2));
    await adapter.send(emailMessage, ctx(3));
    expect(standIn.emails).toHaveLength(1);
    expect(receipt.providerId).toBe(standIn.emails[0]!.messageId);
    expect(standIn.requests.at(-1)!.json).toEqual({
      sender: { email: 'news@northclinic.example.org', name: 'North Clinic' },
      to: [{ email: 'pat.doe@example.org' }],
      subject: 'Our spring newsletter',
      htmlContent: '<pre>Hello Pat, here is our newsletter.</pre>',
      textContent: 'Hello Pat, here is our newsletter.',
      headers: {
        idempotencyKey: deliveryUuid(emailMessage.deliveryId),
        'List-Unsubscribe': '<https://carerelay.example.org/u/abc>, <mailto:unsubscribe@example.org>',
        'List-Unsubscribe-Post': 'List-Unsubscribe=One-Click',
      },
    });
    expect(deps.ledger.receipts.map((r) => r.status)).toEqual(['sending', 'unknown', 'sending', 'accepted']);
    await expect(adapter.send({ ...emailMessage, deliveryId: 'no-link', unsubscribe: undefined }, ctx())).rejects.toMatchObject({ code: 'unsubscribe_missing' });
  });

  it('sends a transactional SMS (marketing type off care, unicode when needed), not after it expires', async () => {
    standIn = await startBrevoStandIn({ now: () => NOW });
    const adapter = createBrevo(config(standIn, { action: 'sms', ...ACTION_CONFIG.sms }), depsFor(standIn));
    const receipt = await adapter.send(smsMessage, ctx());
    expect(standIn.requests[0]!.json).toEqual({ sender: 'NorthClinic', recipient: '33612345678', content: smsMessage.text, type: 'marketing', unicodeEnabled: true });
    expect(receipt.providerId).toBe('1000');
    await expect(adapter.send({ ...smsMessage, deliveryId: 'late', expiresAt: new Date(NOW - 1).toISOString() }, ctx())).rejects.toMatchObject({ code: 'expired' });
    expect(isGsm7('Clinique du Nord : nouveauté à 9h, 10€ [x]')).toBe(true);
    expect(isGsm7('Clinique 🙂')).toBe(false);
    expect(isGsm7('Łódź')).toBe(false);
  });

  it('reads the x-sib-ratelimit headers of the stand-in\'s own per-second limit', async () => {
    standIn = await startBrevoStandIn({ now: () => NOW, perSecond: { contacts: 2 } });
    const adapter = createBrevo(config(standIn), depsFor(standIn));
    await adapter.send(marketingMessage, ctx());
    await adapter.send(marketingMessage, ctx());
    const third = await adapter.send(marketingMessage, ctx()).catch((e: unknown) => e);
    expect(third).toBeInstanceOf(RateLimitedError);
    expect(third).toMatchObject({ code: 'brevo_rate_limited', retryAfterMs: 1000, providerCode: 'too_many_requests' });
    const wrongKey = createBrevo(config(standIn), crmDeps({ BREVO_API_KEY: 'xkeysib-wrong' }));
    await expect(wrongKey.send(marketingMessage, ctx())).rejects.toMatchObject({ code: 'brevo_unauthorized', providerCode: 'unauthorized' });
  });

  it('declares each action\'s documented limit, shared by the outputs of one key', async () => {
    standIn = await startBrevoStandIn();
    const key = { env: 'BREVO_API_KEY' };
    expect(brevoLimits({ action: 'upsert', apiKey: key, ratePerSecond: 0 })).toEqual({ ratePerSecond: 10, burst: 10, account: 'brevo:env:BREVO_API_KEY:contacts' });
    expect(brevoLimits({ action: 'email', apiKey: key, ratePerSecond: 0 })).toMatchObject({ ratePerSecond: 1000 });
    expect(brevoLimits({ action: 'sms', apiKey: key, ratePerSecond: 0 })).toMatchObject({ ratePerSecond: 150, account: 'brevo:env:BREVO_API_KEY:transactional-sms' });
    expect(brevoLimits({ action: 'event', apiKey: key, ratePerSecond: 20 })).toMatchObject({ ratePerSecond: 20 });
    expect(brevoSpec.info(config(standIn, { action: 'email', ...ACTION_CONFIG.email }))).toMatchObject({ channel: 'email', idempotent: false });
    expect(brevoSpec.info(config(standIn, { action: 'email', ...ACTION_CONFIG.email })).fields).toBeUndefined();
    expect(brevoSpec.info(config(standIn))).toMatchObject({ channel: 'crm', idempotent: true, fields: ['patient.name.given', 'patient.name.family', 'patient.language'] });
  });

  it('refuses at load: address attributes, lower-case attributes, a missing sender', async () => {
    standIn = await startBrevoStandIn();
    const issues = (overrides: Partial<BrevoConfig>) => brevoSpec.check!(config(standIn, overrides)).map((i) => i.message);
    expect(issues({})).toEqual([]);
    expect(issues({ properties: { 'patient.name.given': 'EMAIL' } })).toEqual([expect.stringContaining('can lift the contact\'s blocklist')]);
    expect(issues({ properties: { 'patient.name.given': 'firstname' } })).toEqual([expect.stringContaining('upper-case')]);
    expect(issues({ action: 'email', properties: {} })).toEqual(['action email needs email: { sender: { email } }']);
  });
});
