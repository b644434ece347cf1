import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startTwilioStandIn, type TwilioStandIn } from '../../../test/helpers/twilio-standin.ts';
import { AmbiguousError, PermanentError, RateLimitedError, RecipientError } from '../../errors.ts';
import { memoryReceiptLedger, outputConformanceSuite, StandInFault } from '../conformance.ts';
import type { OutboundMessage, OutputDeps, SendContext } from '../spec.ts';
import { createTwilio, twilioSpec, validitySeconds, type TwilioConfig } from './spec.ts';

const NOW = Date.parse('2030-03-15T13:30:00Z');

const message: OutboundMessage = {
  deliveryId: 'sms-reminder-24h@appointment/A1#0',
  ruleId: 'sms-reminder-24h',
  purpose: 'care.logistics',
  channel: 'sms',
  to: '+15005550006',
  language: 'en',
  text: 'Reminder: see you tomorrow at 1:30 PM',
  expiresAt: '2030-03-16T11:30:00+00:00',
};

function config(standIn: TwilioStandIn, overrides: Partial<TwilioConfig> = {}): TwilioConfig {
  return {
    name: 'sms',
    type: 'twilio',
    accountSid: standIn.accountSid,
    authToken: { env: 'TWILIO_AUTH_TOKEN' },
    from: '+15005550006',
    maxValiditySeconds: 36_000,
    timeoutSeconds: 10,
    apiBaseUrl: standIn.baseUrl,
    baa: true,
    allowedPurposes: ['care.logistics'],
    ...overrides,
  };
}

function depsFor(standIn: TwilioStandIn, ledger = memoryReceiptLedger()): OutputDeps & { ledger: typeof ledger } {
  const env: Record<string, string> = { TWILIO_AUTH_TOKEN: standIn.authToken, TWILIO_KEY_SECRET: standIn.apiKey.secret };
  return { secret: (ref) => ('env' in ref ? env[ref.env]! : ''), receipts: ledger, now: () => new Date(NOW), ledger };
}

const ctx = (attempt = 1): SendContext => ({ deliveryId: message.deliveryId, attempt, signal: new AbortController().signal });

outputConformanceSuite('twilio', {
  async start({ timeoutSeconds }) {
    const standIn = await startTwilioStandIn();
    const deps = depsFor(standIn);
    const adapter = createTwilio(config(standIn, { timeoutSeconds }), deps);
    return {
      adapter,
      message,
      requests: () => standIn.requests.length,
      waitForRequests: (n) => standIn.waitForRequests(n),
      // Twilio has no idempotency key: CareRelay's ledger holds it, one `sending` per call.
      keys: () => deps.ledger.receipts.filter((r) => r.status === 'sending').map((r) => r.deliveryId),
      retryAfterMs: 7000,
      fail(fault) {
        if (fault === StandInFault.RateLimited) standIn.failNext({ kind: 'status', status: 429, code: 20429, retryAfter: '7' });
        else if (fault === StandInFault.Unavailable) standIn.failNext({ kind: 'status', status: 503, code: 20503 });
        else if (fault === StandInFault.Rejected) standIn.failNext({ kind: 'status', status: 400, code: 21606 });
        else if (fault === StandInFault.Hang) standIn.failNext({ kind: 'hang' });
        else standIn.failNext({ kind: 'reset' });
      },
      close: () => standIn.close(),
    };
  },
});

describe('twilio output', () => {
  let standIn: TwilioStandIn;
  beforeEach(async () => {
    standIn = await startTwilioStandIn();
  });
  afterEach(async () => {
    await standIn.close();
  });

  it('creates the message form-encoded with Basic auth, ValidityPeriod cut to expires, StatusCallback to our hook', async () => {
    const deps = depsFor(standIn);
    const adapter = createTwilio(config(standIn, { statusCallback: { baseUrl: 'https://carerelay.example.org/' } }), deps);
    const receipt = await adapter.send(message, ctx());
    const [sent] = standIn.messages;
    expect(receipt.providerId).toBe(sent!.sid);
    expect(sent).toMatchObject({
      to: '+15005550006',
      from: '+15005550006',
      body: message.text,
      // expires 2030-03-16T11:30Z − now 2030-03-15T13:30Z = 22 h = 79,200 s > 36,000: capped.
      validityPeriod: 36_000,
      statusCallback: 'https://carerelay.example.org/hooks/twilio/status/sms',
    });
    expect(standIn.requests[0]).toMatchObject({ authorized: true, contentType: 'application/x-www-form-urlencoded' });
    expect(deps.ledger.receipts.map((r) => r.status)).toEqual(['sending', 'accepted']);
  });

  it('a reminder two hours before its expiry may wait in Twilio\'s queue two hours at most', async () => {
    const adapter = createTwilio(config(standIn), depsFor(standIn));
    await adapter.send({ ...message, expiresAt: new Date(NOW + 2 * 3600_000 + 999).toISOString() }, ctx());
    expect(standIn.messages[0]!.validityPeriod).toBe(7200);
    expect(validitySeconds(NOW, new Date(NOW + 900).toISOString(), 36_000)).toBeUndefined();
    await expect(adapter.send({ ...message, deliveryId: 'late', expiresAt: new Date(NOW + 500).toISOString() }, ctx())).rejects.toMatchObject({
      code: 'expired',
      failureClass: 'permanent',
    });
    expect(standIn.requests).toHaveLength(1);
  });

  it('authenticates with an API key and a Messaging Service', async () => {
    const adapter = createTwilio(
      config(standIn, { authToken: undefined, apiKey: { sid: standIn.apiKey.sid, secret: { env: 'TWILIO_KEY_SECRET' } }, from: undefined, messagingServiceSid: `MG${'0'.repeat(32)}` }),
      depsFor(standIn),
    );
    await adapter.send(message, ctx());
    expect(standIn.messages[0]).toMatchObject({ messagingServiceSid: `MG${'0'.repeat(32)}` });
    const wrong = createTwilio(config(standIn, { authToken: { env: 'TWILIO_KEY_SECRET' } }), depsFor(standIn));
    await expect(wrong.send({ ...message, deliveryId: 'other' }, ctx())).rejects.toMatchObject({ code: 'twilio_unauthorized', failureClass: 'permanent' });
  });

  it('maps 21610 to an opt-out, 21211 and 21614 to an unfit number, 20429 to rate-limited', async () => {
    const adapter = createTwilio(config(standIn), depsFor(standIn));
    const optOut = await adapter.send({ ...message, deliveryId: 'd1', to: '+15005550004' }, ctx()).catch((e: unknown) => e);
    expect(optOut).toBeInstanceOf(RecipientError);
    expect(optOut).toMatchObject({ signal: 'opted_out', code: 'recipient_opted_out', providerCode: '21610' });
    for (const to of ['+15005550001', '+15005550009']) {
      const unfit = await adapter.send({ ...message, deliveryId: `d-${to}`, to }, ctx()).catch((e: unknown) => e);
      expect(unfit).toMatchObject({ signal: 'unfit', code: 'recipient_unfit', failureClass: 'permanent' });
    }
    standIn.failNext({ kind: 'status', status: 400, code: 20429 });
    await expect(adapter.send({ ...message, deliveryId: 'd2' }, ctx())).rejects.toBeInstanceOf(RateLimitedError);
    expect(standIn.messages).toHaveLength(0);
  });

  it('a 500 may have created the message: ambiguous, and the ledger says unknown', async () => {
    const deps = depsFor(standIn);
    const adapter = createTwilio(config(standIn), deps);
    standIn.failNext({ kind: 'status', status: 500, code: 20500 });
    await expect(adapter.send(message, ctx())).rejects.toBeInstanceOf(AmbiguousError);
    expect(deps.ledger.receipts.map((r) => r.status)).toEqual(['sending', 'unknown']);
  });

  it('an attempt after a crash during the call does not send again; a replay of the parked delivery does', async () => {
    const deps = depsFor(standIn);
    const adapter = createTwilio(config(standIn), deps);
    // The process died after writing `sending`, during its call.
    await deps.receipts.addDeliveryReceipt({ deliveryId: message.deliveryId, output: 'sms', status: 'sending', attempt: 1, at: new Date(NOW).toISOString() });
    const error = await adapter.send(message, ctx(2)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AmbiguousError);
    expect(error).toMatchObject({ code: 'twilio_outcome_unknown' });
    expect(standIn.requests).toHaveLength(0);
    // The queue parked it (not idempotent); a person replays it: it is sent once.
    const receipt = await adapter.send(message, ctx(3));
    expect(standIn.messages).toHaveLength(1);
    expect(receipt.providerId).toBe(standIn.messages[0]!.sid);
    expect(deps.ledger.receipts.map((r) => `${r.status}/${r.attempt}`)).toEqual(['sending/1', 'unknown/2', 'sending/3', 'accepted/3']);
  });

  it('refuses a body Twilio would refuse, and a config without sender or credentials', async () => {
    const adapter = createTwilio(config(standIn), depsFor(standIn));
    await expect(adapter.send({ ...message, text: 'x'.repeat(1601) }, ctx())).rejects.toBeInstanceOf(PermanentError);
    expect(standIn.requests).toHaveLength(0);
    const issues = twilioSpec.check!(config(standIn, { from: undefined, authToken: undefined, statusCallback: { baseUrl: 'http://carerelay.example.org' } }));
    expect(issues.map((i) => i.message)).toEqual([
      'give exactly one of from (a sender number or id) and messagingServiceSid',
      'give authToken or apiKey: { sid, secret } to call the API',
      'status callbacks are signed with the Auth Token: give authToken too',
      'plain http is only for loopback addresses: use https, or set allowInsecureHttp: true for a lab',
    ]);
  });
});
