import { afterEach, describe, expect, it } from 'vitest';
import { crmDeps, marketingMessage as message, sendContext as ctx, standInFaults } from '../../../test/helpers/crm.ts';
import { md5, startMailchimpStandIn, type MailchimpStandIn } from '../../../test/helpers/mailchimp-standin.ts';
import { AmbiguousError, RateLimitedError, RecipientError, TransientError } from '../../errors.ts';
import { outputConformanceSuite } from '../conformance.ts';
import { ForgetOutcome, OptOutOutcome } from '../spec.ts';
import { createMailchimp, dataCentreOf, mailchimpSpec, sameSmsNumber, subscriberHash, type MailchimpConfig } from './spec.ts';

function config(standIn: MailchimpStandIn, overrides: Partial<MailchimpConfig> = {}): MailchimpConfig {
  return {
    name: 'mailchimp-newsletter',
    type: 'mailchimp',
    apiKey: { env: 'MAILCHIMP_API_KEY' },
    listId: standIn.listId,
    action: 'upsert',
    statusIfNew: 'pending',
    properties: { 'patient.name.given': 'FNAME', 'patient.name.family': 'LNAME', 'patient.language': 'language' },
    tags: [],
    maxConnections: 10,
    apiBaseUrl: standIn.apiBaseUrl,
    timeoutSeconds: 10,
    baa: false,
    allowedPurposes: ['service.info', 'marketing'],
    ...overrides,
  };
}

const depsFor = (standIn: MailchimpStandIn) => crmDeps({ MAILCHIMP_API_KEY: standIn.apiKey });
const HASH = md5('pat.doe@example.org');

/** Puts the member in the stand-in's audience. */
async function seedMember(standIn: MailchimpStandIn) {
  await createMailchimp(config(standIn), depsFor(standIn)).send({ ...message, deliveryId: 'seed' }, ctx());
}

for (const action of ['upsert', 'tags', 'event'] as const) {
  outputConformanceSuite(`mailchimp ${action}`, {
    async start({ timeoutSeconds }) {
      const standIn = await startMailchimpStandIn();
      if (action !== 'upsert') await seedMember(standIn);
      const before = standIn.requests.length;
      const deps = depsFor(standIn);
      const adapter = createMailchimp(
        config(standIn, {
          action,
          timeoutSeconds,
          ...(action === 'tags' ? { tags: ['newsletter'], properties: {} } : {}),
          ...(action === 'event' ? { event: { name: 'newsletter_invitation' }, properties: { 'patient.language': 'lang' } } : {}),
        }),
        deps,
      );
      const calls = () => standIn.requests.slice(before);
      return {
        adapter,
        message,
        requests: () => calls().length,
        waitForRequests: (n) => standIn.waitForRequests(before + n),
        // The member hash addresses upserts and tags; events have no key: CareRelay's ledger holds it.
        keys: () => (action === 'event' ? deps.ledger.receipts.filter((r) => r.status === 'sending').map((r) => r.deliveryId) : calls().map((r) => r.path.split('/')[6]!)),
        retryAfterMs: undefined,
        fail: standInFaults(standIn, {
          rateLimit: () => standIn.bare403Next(),
          rejected: { status: 400, body: { type: 'x', title: 'Invalid Resource', status: 400, detail: 'bad', instance: 'i' } },
        }),
        close: () => standIn.close(),
      };
    },
  });
}

describe('mailchimp output', () => {
  let standIn: MailchimpStandIn;
  afterEach(async () => {
    await standIn?.close();
  });

  it('upserts the member at its hash with status_if_new, merge fields and language, never status', async () => {
    standIn = await startMailchimpStandIn();
    const deps = depsFor(standIn);
    const receipt = await createMailchimp(config(standIn), deps).send(message, ctx());
    const [request] = standIn.requests;
    expect(request).toMatchObject({ method: 'PUT', path: `/dc-us14/3.0/lists/${standIn.listId}/members/${HASH}` });
    expect(subscriberHash(' Pat.Doe@Example.org')).toBe(HASH);
    expect(request!.json).toEqual({ email_address: 'pat.doe@example.org', status_if_new: 'pending', merge_fields: { FNAME: 'Pat Q', LNAME: 'Doe' }, language: 'en' });
    expect(Buffer.from(request!.headers.authorization!.replace('Basic ', ''), 'base64').toString()).toBe(`carerelay:${standIn.apiKey}`);
    expect(receipt).toMatchObject({ providerId: HASH, detail: { memberStatus: 'pending' } });
    expect(deps.holdingsLedger.holdings.map((h) => [h.output, h.patientId, h.contactKey])).toEqual([['mailchimp-newsletter', 'P1', 'pat.doe@example.org']]);
  });

  it('never subscribes again a member who unsubscribed', async () => {
    standIn = await startMailchimpStandIn();
    const adapter = createMailchimp(config(standIn, { statusIfNew: 'subscribed' }), depsFor(standIn));
    await adapter.send(message, ctx());
    standIn.members.get(HASH)!.status = 'unsubscribed';
    const receipt = await adapter.send(message, ctx());
    expect(standIn.members.get(HASH)!.status).toBe('unsubscribed');
    expect(receipt.detail).toEqual({ memberStatus: 'unsubscribed' });
  });

  it('tags the member and adds member events (the event once per delivery)', async () => {
    standIn = await startMailchimpStandIn();
    await seedMember(standIn);
    await createMailchimp(config(standIn, { action: 'tags', tags: ['newsletter', 'north-clinic'], properties: {} }), depsFor(standIn)).send(message, ctx());
    expect(standIn.requests.at(-1)!.json).toEqual({ tags: [{ name: 'newsletter', status: 'active' }, { name: 'north-clinic', status: 'active' }], is_syncing: false });
    const deps = depsFor(standIn);
    const events = createMailchimp(config(standIn, { action: 'event', event: { name: 'newsletter_invitation' }, properties: { 'patient.language': 'lang' } }), deps);
    const first = await events.send(message, ctx(1));
    const again = await events.send(message, ctx(2));
    expect(again.providerId).toBe(first.providerId);
    expect(standIn.members.get(HASH)).toMatchObject({ tags: ['newsletter', 'north-clinic'], events: [{ name: 'newsletter_invitation', properties: { lang: 'en' } }] });
    expect(deps.ledger.receipts.map((r) => r.status)).toEqual(['sending', 'accepted']);
  });

  it('a bare 403 under load and the 11th simultaneous call are rate limits; a 403 with a problem body is not', async () => {
    standIn = await startMailchimpStandIn();
    const adapter = createMailchimp(config(standIn), depsFor(standIn));
    standIn.bare403Next();
    await expect(adapter.send(message, ctx())).rejects.toBeInstanceOf(RateLimitedError);
    standIn.failNext({ kind: 'answer', status: 403, body: { type: 't', title: 'Forbidden', status: 403, detail: 'User does not have access', instance: 'i' } });
    await expect(adapter.send(message, ctx())).rejects.toMatchObject({ code: 'mailchimp_forbidden', failureClass: 'permanent' });
    // Ten calls held in flight: Mailchimp's limit is reached, the eleventh is refused.
    standIn.holdNext(10);
    const held = Array.from({ length: 10 }, (_, i) => adapter.send({ ...message, deliveryId: `held-${i}` }, ctx()).catch((e: unknown) => e));
    await standIn.waitForRequests(12);
    const eleventh = await adapter.send({ ...message, deliveryId: 'eleventh' }, ctx()).catch((e: unknown) => e);
    expect(eleventh).toBeInstanceOf(RateLimitedError);
    standIn.release({ status: 200, body: { id: HASH, status: 'pending' } });
    expect((await Promise.all(held)).every((r) => !(r instanceof Error))).toBe(true);
    expect(mailchimpSpec.info(config(standIn)).limits).toEqual({ concurrency: 10, account: 'mailchimp:env:MAILCHIMP_API_KEY' });
  });

  it('reads what Mailchimp says about the address', async () => {
    standIn = await startMailchimpStandIn();
    const adapter = createMailchimp(config(standIn), depsFor(standIn));
    standIn.forgotten.add('pat.doe@example.org');
    const forgotten = await adapter.send(message, ctx()).catch((e: unknown) => e);
    expect(forgotten).toBeInstanceOf(RecipientError);
    expect(forgotten).toMatchObject({ signal: 'opted_out', providerCode: 'forgotten_email' });
    const fake = await adapter.send({ ...message, to: 'pat@example' }, ctx()).catch((e: unknown) => e);
    expect(fake).toMatchObject({ signal: 'unfit', providerCode: 'invalid_email' });
    standIn.failNext({ kind: 'answer', status: 500, body: { type: 't', title: 'Internal Server Error', status: 500, detail: 'x', instance: 'i' } });
    await expect(adapter.send({ ...message, to: 'other@example.org' }, ctx())).rejects.toBeInstanceOf(AmbiguousError);
    // The key's data centre must be the host's.
    const wrongDc = createMailchimp(config(standIn), crmDeps({ MAILCHIMP_API_KEY: standIn.apiKey.replace('-us14', '-us2') }));
    await expect(wrongDc.send(message, ctx())).rejects.toMatchObject({ code: 'mailchimp_unauthorized' });
    expect(() => createMailchimp(config(standIn), crmDeps({ MAILCHIMP_API_KEY: 'no-data-centre' }))).toThrow(/does not end with its data centre/);
    expect(dataCentreOf(standIn.apiKey)).toBe('us14');
  });

  it('pushes an opt-out as status unsubscribed; a member it does not hold is not_held', async () => {
    standIn = await startMailchimpStandIn();
    await seedMember(standIn);
    const adapter = createMailchimp(config(standIn), depsFor(standIn));
    const signal = new AbortController().signal;
    expect(await adapter.optOut!({ patientId: 'P1', contactKey: 'pat.doe@example.org' }, { channel: 'email' }, { signal })).toBe(OptOutOutcome.Applied);
    expect(standIn.requests.at(-1)).toMatchObject({ method: 'PATCH', json: { status: 'unsubscribed' } });
    expect(standIn.members.get(HASH)!.status).toBe('unsubscribed');
    expect(await adapter.optOut!({ patientId: 'P2', contactKey: 'nobody@example.org' }, { purpose: 'marketing' }, { signal })).toBe(OptOutOutcome.NotHeld);
    const calls = standIn.requests.length;
    expect(await adapter.optOut!({ patientId: 'P1', contactKey: 'pat.doe@example.org' }, { channel: 'sms', purpose: 'marketing' }, { signal })).toBe(OptOutOutcome.NotApplicable);
    expect(await adapter.optOut!({ patientId: 'P1', contactKey: 'pat.doe@example.org' }, { channel: 'email', purpose: 'survey' }, { signal })).toBe(OptOutOutcome.NotApplicable);
    expect(standIn.requests).toHaveLength(calls);
  });

  it("an SMS STOP sets the member's SMS marketing consent to denied when its SMS number is the one that said STOP, never its email status", async () => {
    standIn = await startMailchimpStandIn();
    await seedMember(standIn);
    const adapter = createMailchimp(config(standIn), depsFor(standIn));
    expect(adapter.optOutChannels).toEqual(['email', 'sms']);
    const signal = new AbortController().signal;
    const contact = { patientId: 'P1', contactKey: 'pat.doe@example.org' };
    const stop = { channel: 'sms', address: '+15550100222' } as const;
    // No SMS number in Mailchimp (CareRelay never hands it one): nothing to stop there, one read.
    expect(await adapter.optOut!(contact, stop, { signal })).toBe(OptOutOutcome.NotApplicable);
    expect(standIn.requests.at(-1)).toMatchObject({ method: 'GET', path: `/dc-us14/3.0/lists/${standIn.listId}/members/${HASH}` });
    expect(standIn.requests.at(-1)!.query.get('fields')).toBe('contact_id,sms_phone_number');
    // Another number signed up in Mailchimp: not the one that said STOP.
    standIn.memberSmsSignup('pat.doe@example.org', '+15550100999');
    expect(await adapter.optOut!(contact, stop, { signal })).toBe(OptOutOutcome.NotApplicable);
    expect(standIn.requests.filter((r) => r.method === 'PATCH')).toEqual([]);

    standIn.memberSmsSignup('pat.doe@example.org', '(555) 010-0222');
    expect(await adapter.optOut!(contact, stop, { signal })).toBe(OptOutOutcome.Applied);
    const member = standIn.members.get(HASH)!;
    expect(standIn.requests.at(-1)).toMatchObject({
      method: 'PATCH',
      path: `/dc-us14/3.0/audiences/${standIn.listId}/contacts/${member.contact_id}`,
      json: { sms_channel: { marketing_consent: { status: 'denied' } } },
    });
    expect(member).toMatchObject({ sms_subscription_status: 'unsubscribed', status: 'pending' });
    expect(standIn.requests.filter((r) => r.method === 'PATCH')).toHaveLength(1);
    // A member the audience does not have; an SMS opt-out naming no number (an admin's): no write.
    expect(await adapter.optOut!({ patientId: 'P2', contactKey: 'nobody@example.org' }, stop, { signal })).toBe(OptOutOutcome.NotHeld);
    expect(await adapter.optOut!(contact, { channel: 'sms' }, { signal })).toBe(OptOutOutcome.NotApplicable);
    standIn.failNext({ kind: 'answer', status: 503 });
    await expect(adapter.optOut!(contact, stop, { signal })).rejects.toBeInstanceOf(TransientError);
  });

  it('compares SMS numbers as Mailchimp keeps them (a US number may lack +1)', () => {
    expect(sameSmsNumber('+1 (555) 010-0222', '+15550100222')).toBe(true);
    expect(sameSmsNumber('5550100222', '+15550100222')).toBe(true);
    expect(sameSmsNumber('+33611223344', '+33611223344')).toBe(true);
    expect(sameSmsNumber('5550100222', '+445550100222')).toBe(false);
    expect(sameSmsNumber('', '+15550100222')).toBe(false);
  });

  it('forgets a member with a permanent delete (the address can then not be added again); one it does not hold is not_held', async () => {
    standIn = await startMailchimpStandIn();
    await seedMember(standIn);
    const adapter = createMailchimp(config(standIn), depsFor(standIn));
    const signal = new AbortController().signal;
    expect(await adapter.forget!({ patientId: 'P1', contactKey: 'pat.doe@example.org' }, { signal })).toBe(ForgetOutcome.Forgotten);
    expect(standIn.requests.at(-1)).toMatchObject({ method: 'POST', path: `/dc-us14/3.0/lists/${standIn.listId}/members/${HASH}/actions/delete-permanent` });
    expect(standIn.members.has(HASH)).toBe(false);
    expect(await adapter.forget!({ patientId: 'P1', contactKey: 'pat.doe@example.org' }, { signal })).toBe(ForgetOutcome.NotHeld);
    await expect(adapter.send(message, ctx())).rejects.toMatchObject({ signal: 'opted_out', providerCode: 'forgotten_email' });
  });

  it('is never declared baa: true', async () => {
    standIn = await startMailchimpStandIn();
    expect(mailchimpSpec.check!(config(standIn, { baa: true })).map((i) => i.message)).toEqual([expect.stringContaining('Mailchimp signs no business associate agreement')]);
    expect(mailchimpSpec.info(config(standIn, { baa: true })).baa).toBe(false);
    expect(() => createMailchimp(config(standIn, { baa: true }), depsFor(standIn))).toThrow(/never be declared baa: true/);
    expect(mailchimpSpec.check!(config(standIn, { action: 'tags' })).map((i) => i.message)).toEqual(['action tags needs at least one tag', 'action tags sends no properties: remove them']);
  });
});
