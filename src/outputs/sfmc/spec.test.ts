import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startSfmcStandIn, type SfmcStandIn } from '../../../test/helpers/sfmc-standin.ts';
import { AmbiguousError, PermanentError, RateLimitedError } from '../../errors.ts';
import { memoryReceiptLedger, outputConformanceSuite, StandInFault } from '../conformance.ts';
import type { OutboundMessage, OutputDeps, SendContext } from '../spec.ts';
import { pseudonym } from '../api-output.ts';
import { createSfmc, sfmcMessageKey, sfmcSpec, type SfmcConfig } from './spec.ts';

const T0 = Date.UTC(2030, 2, 15, 9, 0, 0);

const journeyMessage: OutboundMessage = {
  deliveryId: 'newsletter-invite@encounter/E1#0',
  ruleId: 'newsletter-invite',
  purpose: 'service.info',
  channel: 'crm',
  to: 'pat@example.org',
  language: 'en',
  text: '',
  fields: { patient: { name: { given: ['Pat', 'Q'] }, language: 'en' } },
  patientId: 'MRN-1001',
};
const emailMessage: OutboundMessage = { ...journeyMessage, deliveryId: 'newsletter-email@encounter/E1#0', channel: 'email', subject: 'Our newsletter', text: 'Hello Pat' };

function config(standIn: SfmcStandIn, overrides: Partial<SfmcConfig> = {}): SfmcConfig {
  return {
    name: 'sfmc-journey',
    type: 'sfmc',
    subdomain: 'mc563885gzs27c5t9-63k636ttgm',
    clientId: standIn.clientId,
    clientSecret: { env: 'SFMC_CLIENT_SECRET' },
    mode: 'journey-event',
    eventDefinitionKey: 'APIEvent-carerelay',
    contactKey: { source: '$patientId' },
    data: { 'patient.name.given': 'FirstName', 'patient.language': 'Language', $to: 'EmailAddress' },
    authBaseUrl: standIn.baseUrl,
    timeoutSeconds: 10,
    limits: { ratePerSecond: 10, burst: 20, concurrency: 5 },
    baa: false,
    allowedPurposes: ['service.info', 'marketing'],
    ...overrides,
  };
}

function depsFor(standIn: SfmcStandIn, clock: () => number = () => T0, env: Record<string, string> = {}) {
  const ledger = memoryReceiptLedger();
  const all: Record<string, string> = { SFMC_CLIENT_SECRET: standIn.clientSecret, PSEUDONYM_KEY: 'k3y', ...env };
  const deps: OutputDeps = { secret: (ref) => ('env' in ref ? all[ref.env]! : ''), receipts: ledger, now: () => new Date(clock()) };
  return { deps, ledger };
}

const ctx = (message: OutboundMessage, attempt = 1): SendContext => ({ deliveryId: message.deliveryId, attempt, signal: new AbortController().signal });

function failWith(standIn: SfmcStandIn, fault: StandInFault): void {
  if (fault === StandInFault.RateLimited) standIn.failNext({ kind: 'status', status: 429, errorcode: 50100, retryAfter: '5' });
  else if (fault === StandInFault.Unavailable) standIn.failNext({ kind: 'status', status: 503 });
  else if (fault === StandInFault.Rejected) standIn.failNext({ kind: 'status', status: 400, errorcode: 10005 });
  else if (fault === StandInFault.Hang) standIn.failNext({ kind: 'hang' });
  else standIn.failNext({ kind: 'reset' });
}

outputConformanceSuite('sfmc journey-event', {
  async start({ timeoutSeconds }) {
    const standIn = await startSfmcStandIn({ now: () => T0 });
    const { deps, ledger } = depsFor(standIn);
    const api = () => standIn.requests.filter((r) => r.path.startsWith('/interaction'));
    return {
      adapter: createSfmc(config(standIn, { timeoutSeconds }), deps),
      message: journeyMessage,
      requests: () => api().length,
      waitForRequests: (n) => standIn.waitForRequests(n),
      // Entry events have no key: CareRelay's ledger holds it, one `sending` per call.
      keys: () => ledger.receipts.filter((r) => r.status === 'sending').map((r) => r.deliveryId),
      retryAfterMs: 5000,
      fail: (fault) => failWith(standIn, fault),
      close: () => standIn.close(),
    };
  },
});

outputConformanceSuite('sfmc transactional-email', {
  async start({ timeoutSeconds }) {
    const standIn = await startSfmcStandIn({ now: () => T0 });
    const { deps } = depsFor(standIn);
    const api = () => standIn.requests.filter((r) => r.path.startsWith('/messaging'));
    return {
      adapter: createSfmc(config(standIn, { timeoutSeconds, name: 'sfmc-email', mode: 'transactional-email', definitionKey: 'carerelay-newsletter' }), deps),
      message: emailMessage,
      requests: () => api().length,
      waitForRequests: (n) => standIn.waitForRequests(n),
      keys: () => api().map((r) => r.key ?? ''),
      retryAfterMs: 5000,
      fail: (fault) => failWith(standIn, fault),
      close: () => standIn.close(),
    };
  },
});

describe('sfmc output', () => {
  let standIn: SfmcStandIn;
  let clock = T0;
  beforeEach(async () => {
    clock = T0;
    standIn = await startSfmcStandIn({ now: () => clock });
  });
  afterEach(async () => {
    await standIn.close();
  });

  it('asks for a token the SFMC way, then fires the entry event with the contact key and the mapped Data', async () => {
    const { deps, ledger } = depsFor(standIn, () => clock);
    const adapter = createSfmc(config(standIn, { accountId: '514000123', scope: 'journeys_execute' }), deps);
    const receipt = await adapter.send(journeyMessage, ctx(journeyMessage));
    expect(standIn.tokens.requests[0]).toMatchObject({
      contentType: 'application/json',
      params: { grant_type: 'client_credentials', client_id: standIn.clientId, client_secret: standIn.clientSecret, account_id: '514000123', scope: 'journeys_execute' },
    });
    expect(standIn.events).toEqual([
      { id: receipt.providerId, ContactKey: 'MRN-1001', EventDefinitionKey: 'APIEvent-carerelay', Data: { FirstName: 'Pat Q', Language: 'en', EmailAddress: 'pat@example.org' } },
    ]);
    expect(standIn.requests[0]).toMatchObject({ path: '/interaction/v1/events', auth: 'valid', contentType: 'application/json; charset=utf-8', status: 201 });
    expect(ledger.receipts.map((r) => r.status)).toEqual(['sending', 'accepted']);
  });

  it('a pseudonymous contact key keeps the patient id out of SFMC', async () => {
    const { deps } = depsFor(standIn);
    const adapter = createSfmc(config(standIn, { contactKey: { source: '$patientId', pseudonymKey: { env: 'PSEUDONYM_KEY' } } }), deps);
    await adapter.send(journeyMessage, ctx(journeyMessage));
    expect(standIn.events[0]!.ContactKey).toBe(pseudonym('k3y', 'MRN-1001'));
    expect(standIn.events[0]!.ContactKey).toMatch(/^cr-[0-9a-f]{32}$/);
    expect(JSON.stringify(standIn.requests)).not.toContain('MRN-1001');
  });

  it('a transactional email carries the message key of the delivery; a repeat SFMC refuses as a duplicate is accepted', async () => {
    const { deps } = depsFor(standIn);
    const adapter = createSfmc(config(standIn, { mode: 'transactional-email', definitionKey: 'carerelay-newsletter', data: { 'patient.name.given': 'FirstName', $text: 'Body' } }), deps);
    const key = sfmcMessageKey(emailMessage.deliveryId);
    expect(key).toMatch(/^cr-[0-9a-f]{64}$/);
    const first = await adapter.send(emailMessage, ctx(emailMessage));
    expect(first).toMatchObject({ providerId: key, detail: { status: 202 } });
    expect(standIn.messages.get(key)).toMatchObject({
      channel: 'email',
      definitionKey: 'carerelay-newsletter',
      recipient: { contactKey: 'MRN-1001', to: 'pat@example.org', attributes: { FirstName: 'Pat Q', Body: 'Hello Pat' } },
    });
    const again = await adapter.send(emailMessage, ctx(emailMessage, 2));
    expect(again).toMatchObject({ providerId: key, detail: { duplicate: true } });
    expect(standIn.requests.map((r) => r.status)).toEqual([202, 400]);
    expect(standIn.messages.size).toBe(1);
  });

  it('a transactional SMS goes to the number in digits', async () => {
    const { deps } = depsFor(standIn);
    const adapter = createSfmc(config(standIn, { mode: 'transactional-sms', definitionKey: 'carerelay-sms', data: {} }), deps);
    const sms: OutboundMessage = { ...emailMessage, deliveryId: 'sms@A1#0', channel: 'sms', to: '+15555551234' };
    await adapter.send(sms, ctx(sms));
    expect(standIn.messages.get(sfmcMessageKey(sms.deliveryId))).toMatchObject({ channel: 'sms', recipient: { to: '15555551234' } });
    expect(adapter.channel).toBe('sms');
  });

  it('renews the token five minutes before it expires, once for concurrent sends', async () => {
    const { deps } = depsFor(standIn, () => clock);
    const adapter = createSfmc(config(standIn, { mode: 'transactional-email', definitionKey: 'carerelay-newsletter' }), deps);
    await adapter.send(emailMessage, ctx(emailMessage));
    expect(standIn.tokens.requests).toHaveLength(1);
    // 1,079 s − 300 s = 779 s: still the first token.
    clock = T0 + 778_000;
    await adapter.send({ ...emailMessage, deliveryId: 'd-2' }, ctx(emailMessage));
    expect(standIn.tokens.requests).toHaveLength(1);
    clock = T0 + 780_000;
    const release = standIn.tokens.hold();
    const sends = Array.from({ length: 6 }, (_, i) => adapter.send({ ...emailMessage, deliveryId: `c-${i}` }, ctx(emailMessage)));
    await standIn.tokens.waitForRequests(2);
    release();
    await Promise.all(sends);
    expect(standIn.tokens.requests).toHaveLength(2);
    expect(standIn.requests.every((r) => r.auth === 'valid')).toBe(true);
  });

  it('a token SFMC stops accepting is renewed and the call repeated once', async () => {
    const { deps } = depsFor(standIn);
    const adapter = createSfmc(config(standIn), deps);
    await adapter.send(journeyMessage, ctx(journeyMessage));
    standIn.tokens.revokeAll();
    await adapter.send({ ...journeyMessage, deliveryId: 'second' }, ctx(journeyMessage));
    expect(standIn.requests.map((r) => `${r.auth}/${r.status}`)).toEqual(['valid/201', 'invalid/401', 'valid/201']);
    expect(standIn.tokens.requests).toHaveLength(2);
    expect(standIn.events).toHaveLength(2);
  });

  it('wrong credentials: a permanent token failure and no API call', async () => {
    const { deps } = depsFor(standIn, () => T0, { SFMC_CLIENT_SECRET: 'wrong' });
    const adapter = createSfmc(config(standIn), deps);
    const error = await adapter.send(journeyMessage, ctx(journeyMessage)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PermanentError);
    expect(error).toMatchObject({ code: 'sfmc_token_invalid_client' });
    expect(standIn.requests).toHaveLength(0);
  });

  it('429 50200 (blocked, no Retry-After) is rate-limited without a time; retryAfter in the body counts when the header is missing', async () => {
    const { deps } = depsFor(standIn);
    const adapter = createSfmc(config(standIn, { mode: 'transactional-email', definitionKey: 'carerelay-newsletter' }), deps);
    standIn.failNext({ kind: 'status', status: 429, errorcode: 50200 });
    const blocked = await adapter.send(emailMessage, ctx(emailMessage)).catch((e: unknown) => e);
    expect(blocked).toBeInstanceOf(RateLimitedError);
    expect(blocked).toMatchObject({ code: 'sfmc_blocked', retryAfterMs: undefined, providerCode: '50200' });
    standIn.failNext({ kind: 'status', status: 429, errorcode: 50100, bodyRetryAfter: 9 });
    await expect(adapter.send(emailMessage, ctx(emailMessage))).rejects.toMatchObject({ code: 'sfmc_rate_limited', retryAfterMs: 9000 });
  });

  it('an unknown definition key or Data attribute is refused for good; a 500 on an entry event is ambiguous', async () => {
    const { deps } = depsFor(standIn);
    const unknownKey = createSfmc(config(standIn, { eventDefinitionKey: 'APIEvent-other' }), deps);
    await expect(unknownKey.send(journeyMessage, ctx(journeyMessage))).rejects.toMatchObject({ code: 'sfmc_rejected', providerCode: '30003', failureClass: 'permanent' });
    const extra = createSfmc(config(standIn, { data: { 'patient.language': 'Diagnosis' } }), deps);
    await expect(extra.send({ ...journeyMessage, deliveryId: 'x' }, ctx(journeyMessage))).rejects.toMatchObject({ code: 'sfmc_rejected', providerCode: '10005' });
    standIn.failNext({ kind: 'status', status: 500 });
    const adapter = createSfmc(config(standIn), deps);
    await expect(adapter.send({ ...journeyMessage, deliveryId: 'y' }, ctx(journeyMessage))).rejects.toBeInstanceOf(AmbiguousError);
    expect(standIn.events).toHaveLength(0);
  });

  it('a delivery without the contact key value or a transactional one without an address is refused before any call', async () => {
    const { deps } = depsFor(standIn);
    const adapter = createSfmc(config(standIn, { contactKey: { source: 'patient.language' } }), deps);
    await expect(adapter.send({ ...journeyMessage, fields: {} }, ctx(journeyMessage))).rejects.toMatchObject({ code: 'sfmc_no_contact_key' });
    const email = createSfmc(config(standIn, { mode: 'transactional-email', definitionKey: 'carerelay-newsletter' }), deps);
    const { to: _omit, ...noAddress } = emailMessage;
    await expect(email.send(noAddress, ctx(emailMessage))).rejects.toMatchObject({ code: 'sfmc_no_recipient' });
    expect(standIn.requests).toHaveLength(0);
  });

  it('declares channel, idempotency and limits per mode; checks the config', () => {
    const base = config(standIn);
    expect(sfmcSpec.info(base)).toEqual({
      channel: 'crm',
      baa: false,
      allowedPurposes: ['service.info', 'marketing'],
      idempotent: false,
      limits: { ratePerSecond: 10, burst: 20, concurrency: 5 },
    });
    expect(sfmcSpec.info({ ...base, mode: 'transactional-email' })).toMatchObject({ channel: 'email', idempotent: true });
    const issues = sfmcSpec.check!({
      ...base,
      eventDefinitionKey: undefined,
      contactKey: { source: 'patient.nickname' },
      data: { 'patient.name': 'Name', 'appointment.start': 'Name', $nope: 'X' },
      authBaseUrl: 'http://auth.example.org',
    });
    expect(issues.map((i) => `${i.path.join('.')}: ${i.message}`)).toEqual([
      ': mode journey-event needs eventDefinitionKey',
      expect.stringMatching(/^contactKey\.source: unknown trigger path "patient.nickname"/),
      'data.patient.name: "patient.name" is an object; map one of its values (e.g. patient.name.family)',
      'data.appointment.start: "Name" is already filled by patient.name',
      'data.$nope: "$nope" is not a message value (known: $to, $patientId, $deliveryId, $rule, $purpose, $language, $subject, $text)',
      'authBaseUrl: plain http is only for loopback addresses: use https, or set allowInsecureHttp: true for a lab',
    ]);
  });
});
