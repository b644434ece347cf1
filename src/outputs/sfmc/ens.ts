// Opt-outs and hard bounces from Salesforce Marketing Cloud, read from its Event Notification
// Service (ENS) callbacks — what SFMC offers to push them (developer.salesforce.com/docs/
// marketing/marketing-cloud, "Event Notification Service": "Supported Notification Events",
// "Engagement Email Events", "Notification Signing", "Get Started with ENS"):
//
//   - a callback is registered (POST /platform/v1/ens-callbacks { callbackName, url: https,
//     maxBatchSize }) and answered once with an unsigned { callbackId, verificationKey } that the
//     receiver confirms (POST /platform/v1/ens-verify); the answer to the registration holds the
//     callback's signatureKey, shown only then;
//   - a subscription picks the event types; notifications then arrive as a JSON array (a batch of
//     up to maxBatchSize events), signed: header x-sfmc-ens-signature = base64 HMAC-SHA256 of the
//     raw body with the signatureKey. Salesforce's page does not say how the key is encoded; it is
//     used here as its UTF-8 text, as other ENS receivers do (not confirmed by Salesforce);
//   - delivery is at least once (a batch may come again): each event gets a stable id here, the
//     SHA-256 of its JSON, for the ledger to record it once.
//
// What counts: EngagementEvents.EmailUnsubscribe (the recipient clicked the unsubscribe link:
// an opt-out of email, every purpose but care — SFMC's unsubscribe is not per purpose),
// TransactionalSendEvents.EmailBounced with bounceCode HARD (a hard bounce), and
// TransactionalSendEvents.EmailNotSent with subscriber error 1 Unsubscribed or 3
// PartnerUnsubscribed (an opt-out SFMC already holds) or 2 Held (SFMC holds the address after
// bounces). Opens, clicks, sent/delivered events and SMS events are ignored (SMS stop words
// reach CareRelay through its own SMS provider).
//
// Not built here: the HTTPS route that receives the callbacks and registers/verifies them (it
// comes with the consent ledger's wiring). The other documented way back, polling unsubscribes
// through the SOAP API (UnsubEvent objects), is not implemented: CareRelay has no SOAP client.
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { ConsentChannel, ToolSignalKind, type ToolConsentSignal } from '../consent-sync.ts';

export const ENS_SIGNATURE_HEADER = 'x-sfmc-ens-signature';

/** Whether `signature` (the header) is the HMAC-SHA256 of `body` with `signatureKey`. */
export function verifyEnsSignature(body: Buffer, signature: string | undefined, signatureKey: string): boolean {
  if (signature === undefined || signatureKey === '') return false;
  const presented = Buffer.from(signature.trim(), 'base64');
  const expected = createHmac('sha256', Buffer.from(signatureKey, 'utf8')).update(body).digest();
  return presented.length === expected.length && timingSafeEqual(presented, expected);
}

export type EnsNotification =
  /** The one-time verification of a new callback (unsigned): confirm it with /platform/v1/ens-verify. */
  | { kind: 'verification'; callbackId: string; verificationKey: string }
  /** A batch of events: the opt-out signals in it, and how many events said nothing about consent. */
  | { kind: 'events'; signals: ToolConsentSignal[]; ignored: number }
  /** Not an ENS payload. */
  | { kind: 'invalid'; reason: string };

const UNSUBSCRIBED_STATUS = new Set(['1', '3']);
const HELD_STATUS = '2';

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function instant(value: unknown): string | undefined {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) return undefined;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? undefined : date.toISOString();
}

/** Reads an ENS payload (the raw body, after verifyEnsSignature for event batches). */
export function parseEnsNotification(body: Buffer, output: string): EnsNotification {
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch {
    return { kind: 'invalid', reason: 'not JSON' };
  }
  if (isRecord(value) && typeof value.callbackId === 'string' && typeof value.verificationKey === 'string') {
    return { kind: 'verification', callbackId: value.callbackId, verificationKey: value.verificationKey };
  }
  // The reference shows batches as arrays and single examples as bare objects.
  const events = Array.isArray(value) ? value : [value];
  if (events.length === 0 || !events.every((e) => isRecord(e) && typeof e.eventCategoryType === 'string')) {
    return { kind: 'invalid', reason: 'expected ENS events (objects with eventCategoryType)' };
  }
  const signals: ToolConsentSignal[] = [];
  let ignored = 0;
  for (const event of events as Array<Record<string, unknown>>) {
    const signal = signalOf(event, output);
    if (signal) signals.push(signal);
    else ignored++;
  }
  return { kind: 'events', signals, ignored };
}

function signalOf(event: Record<string, unknown>, output: string): ToolConsentSignal | undefined {
  const info = isRecord(event.info) ? event.info : isRecord(event.Info) ? event.Info : {};
  let kind: ToolSignalKind | undefined;
  let at = instant(event.timestampUTC);
  switch (event.eventCategoryType) {
    case 'EngagementEvents.EmailUnsubscribe':
      kind = ToolSignalKind.OptedOut;
      at = instant(info.unsubscribeDate) ?? at;
      break;
    case 'TransactionalSendEvents.EmailBounced':
      if (typeof info.bounceCode === 'string' && info.bounceCode.toUpperCase() === 'HARD') kind = ToolSignalKind.HardBounce;
      break;
    case 'TransactionalSendEvents.EmailNotSent': {
      const status = String(info.statusCode ?? '');
      if (UNSUBSCRIBED_STATUS.has(status)) kind = ToolSignalKind.OptedOut;
      else if (status === HELD_STATUS) kind = ToolSignalKind.HardBounce;
      break;
    }
    default:
      return undefined;
  }
  const email = typeof info.to === 'string' && info.to.includes('@') ? info.to : undefined;
  const toolId = typeof info.subscriberKey === 'string' && info.subscriberKey !== '' ? info.subscriberKey : undefined;
  if (kind === undefined || at === undefined || (email === undefined && toolId === undefined)) return undefined;
  return {
    tool: 'sfmc',
    output,
    contact: { ...(email !== undefined ? { email } : {}), ...(toolId !== undefined ? { toolId } : {}) },
    kind,
    scope: { channel: ConsentChannel.Email },
    at,
    eventId: `sfmc-ens:${createHash('sha256').update(JSON.stringify(event)).digest('hex')}`,
  };
}
