import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { parseEnsNotification, verifyEnsSignature } from './ens.ts';

// Payloads as "Supported Notification Events" shows them.
const unsubscribe = {
  eventCategoryType: 'EngagementEvents.EmailUnsubscribe',
  timestampUTC: 1591407815000,
  compositeId: '1722201.69238.15607.178363503',
  definitionKey: 'NA',
  definitionId: 'NA',
  mid: 1476456,
  eid: 1476266,
  composite: { jobId: '1722201', batchId: '15607', listId: '69238', subscriberId: '178363503' },
  info: { to: 'pat@example.org', domain: 'example.org', unsubscribeDate: 1591386215000, unsubscribeMethod: 'Click' },
};
const bounced = {
  eventCategoryType: 'TransactionalSendEvents.EmailBounced',
  timestampUTC: 1583849944000,
  definitionKey: 'carerelay-newsletter',
  mid: 1476456,
  eid: 1476266,
  info: { to: 'gone@example.org', subscriberKey: 'cr-0a1b', messageKey: 'cr-ff', bounceCode: 'HARD', bounceMessage: '5.1.1 User Unknown', smtpReason: '5.1.1' },
};
const notSent = {
  eventCategoryType: 'TransactionalSendEvents.EmailNotSent',
  timestampUTC: 1600630238373,
  info: { to: 'out@example.org', subscriberKey: '101660749', messageKey: 'cr-aa', reason: 'The subscriber ExactTarget system status is unsubscribed', statusCode: '1', statusMessage: 'Unsubscribed' },
};
const open = { eventCategoryType: 'EngagementEvents.EmailOpen', timestampUTC: 1600722902000, info: { ipAddress: '52.5.174.125' } };
const softBounce = { ...bounced, info: { ...bounced.info, bounceCode: 'SOFT' } };

const KEY = 'V27FXfqI3DnhfQW1bhFDeJixpt8eDAY5R24UJI3cK6M=';

describe('SFMC Event Notification Service', () => {
  it('verifies x-sfmc-ens-signature: base64 HMAC-SHA256 of the raw body', () => {
    const body = Buffer.from(JSON.stringify([unsubscribe]));
    const signature = createHmac('sha256', KEY).update(body).digest('base64');
    expect(verifyEnsSignature(body, signature, KEY)).toBe(true);
    expect(verifyEnsSignature(Buffer.concat([body, Buffer.from(' ')]), signature, KEY)).toBe(false);
    expect(verifyEnsSignature(body, signature, 'other')).toBe(false);
    expect(verifyEnsSignature(body, undefined, KEY)).toBe(false);
    expect(verifyEnsSignature(body, 'not base64!', KEY)).toBe(false);
  });

  it('turns unsubscribes, hard bounces and unsubscribed not-sent events into signals; ignores the rest', () => {
    const result = parseEnsNotification(Buffer.from(JSON.stringify([unsubscribe, bounced, notSent, open, softBounce])), 'sfmc-email');
    expect(result.kind).toBe('events');
    if (result.kind !== 'events') return;
    expect(result.ignored).toBe(2);
    expect(result.signals.map(({ eventId: _id, ...s }) => s)).toEqual([
      { tool: 'sfmc', output: 'sfmc-email', contact: { email: 'pat@example.org' }, kind: 'opted_out', scope: { channel: 'email' }, at: '2020-06-05T19:43:35.000Z' },
      { tool: 'sfmc', output: 'sfmc-email', contact: { email: 'gone@example.org', toolId: 'cr-0a1b' }, kind: 'hard_bounce', scope: { channel: 'email' }, at: '2020-03-10T14:19:04.000Z' },
      { tool: 'sfmc', output: 'sfmc-email', contact: { email: 'out@example.org', toolId: '101660749' }, kind: 'opted_out', scope: { channel: 'email' }, at: '2020-09-20T19:30:38.373Z' },
    ]);
  });

  it('gives a redelivered event the same id (ENS delivers at least once)', () => {
    const once = parseEnsNotification(Buffer.from(JSON.stringify([unsubscribe])), 'o');
    const again = parseEnsNotification(Buffer.from(JSON.stringify(unsubscribe)), 'o');
    const other = parseEnsNotification(Buffer.from(JSON.stringify([{ ...unsubscribe, timestampUTC: 1591407815001 }])), 'o');
    const id = (r: ReturnType<typeof parseEnsNotification>) => (r.kind === 'events' ? r.signals[0]!.eventId : undefined);
    expect(id(once)).toMatch(/^sfmc-ens:[0-9a-f]{64}$/);
    expect(id(again)).toBe(id(once));
    expect(id(other)).not.toBe(id(once));
  });

  it('recognises the callback verification and refuses what is not ENS', () => {
    expect(parseEnsNotification(Buffer.from('{"callbackId":"65b885ab","verificationKey":"v-123"}'), 'o')).toEqual({ kind: 'verification', callbackId: '65b885ab', verificationKey: 'v-123' });
    expect(parseEnsNotification(Buffer.from('nope'), 'o')).toMatchObject({ kind: 'invalid' });
    expect(parseEnsNotification(Buffer.from('[]'), 'o')).toMatchObject({ kind: 'invalid' });
    expect(parseEnsNotification(Buffer.from('[{"type":"x"}]'), 'o')).toMatchObject({ kind: 'invalid' });
  });
});
