// What HubSpot posts to CareRelay about its contacts (the "from the tool" direction of opt-outs,
// docs/consent.md): verifying the request and reading it into ToolSignals. Pure functions; the
// route that receives the POST and the consent ledger that records the signals are wired
// elsewhere.
//
// Signature v3 (developers.hubspot.com "Validating requests", changelog "Introducing version 3 of
// webhook signatures"): headers X-HubSpot-Signature-v3 and X-HubSpot-Request-Timestamp (epoch
// ms). Reject a timestamp older than 5 minutes; HMAC-SHA256, keyed with the app's client secret,
// of the UTF-8 string method + URI + body + timestamp, base64; compare in constant time. The URI
// is the full URL HubSpot called (scheme, host, path, query), with the URL-encoded characters of
// HubSpot's table decoded (%3A : %2F / %3F ? %40 @ %21 ! %24 $ %27 ' %28 ( %29 ) %2A * %2C , %3B ;).
//
// Payload (Webhooks API v3): a JSON array of events { eventId, subscriptionId, portalId,
// occurredAt (ms), subscriptionType, attemptNumber, objectId, propertyName, propertyValue,
// changeSource }. HubSpot has no webhook for subscription statuses; what it does send is
// contact.propertyChange for the opt-out properties: hs_email_optout ("opted out of all email")
// and hs_email_optout_<subscription id> (one per subscription type). Events carry the contact's
// objectId, not its email: the signal names the contact by providerContactId.
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Purpose } from '../../types.ts';
import { consentSignals } from '../common.ts';
import { ToolSignalKind, type ToolConsentSignal } from '../consent-sync.ts';

export const HUBSPOT_SIGNATURE_V3_HEADER = 'x-hubspot-signature-v3';
export const HUBSPOT_TIMESTAMP_HEADER = 'x-hubspot-request-timestamp';
/** Requests signed longer ago than this are refused (replays). */
export const HUBSPOT_MAX_AGE_MS = 5 * 60_000;

export const HubspotSignatureCheck = {
  Valid: 'valid',
  /** A header is absent or the timestamp is not a number. */
  Missing: 'missing',
  /** Signed more than 5 minutes from now. */
  Stale: 'stale',
  Mismatch: 'mismatch',
} as const;
export type HubspotSignatureCheck = (typeof HubspotSignatureCheck)[keyof typeof HubspotSignatureCheck];

const DECODED: ReadonlyArray<[RegExp, string]> = [
  ['%3A', ':'],
  ['%2F', '/'],
  ['%3F', '?'],
  ['%40', '@'],
  ['%21', '!'],
  ['%24', '$'],
  ['%27', "'"],
  ['%28', '('],
  ['%29', ')'],
  ['%2A', '*'],
  ['%2C', ','],
  ['%3B', ';'],
].map(([from, to]) => [new RegExp(from!, 'gi'), to!]);

/** The URI as HubSpot signs it: the characters of its table decoded, the rest as sent. */
export function hubspotSignedUri(uri: string): string {
  return DECODED.reduce((text, [from, to]) => text.replace(from, to), uri);
}

/** The v3 signature of a request (base64 HMAC-SHA256). */
export function hubspotSignatureV3(clientSecret: string, method: string, uri: string, body: string | Buffer, timestamp: string): string {
  const source = Buffer.concat([Buffer.from(`${method.toUpperCase()}${hubspotSignedUri(uri)}`, 'utf8'), Buffer.from(body), Buffer.from(timestamp, 'utf8')]);
  return createHmac('sha256', clientSecret).update(source).digest('base64');
}

/** Checks a request HubSpot says it sent; `uri` is the full URL it called, `body` the raw bytes. */
export function verifyHubspotSignatureV3(
  request: { method: string; uri: string; body: string | Buffer; signature: string | undefined; timestamp: string | undefined },
  clientSecret: string,
  nowMs: number,
): HubspotSignatureCheck {
  const { signature, timestamp } = request;
  if (signature === undefined || timestamp === undefined || !/^\d{1,15}$/.test(timestamp)) return HubspotSignatureCheck.Missing;
  if (Math.abs(nowMs - Number(timestamp)) > HUBSPOT_MAX_AGE_MS) return HubspotSignatureCheck.Stale;
  const expected = Buffer.from(hubspotSignatureV3(clientSecret, request.method, request.uri, request.body, timestamp), 'utf8');
  const given = Buffer.from(signature, 'utf8');
  return given.length === expected.length && timingSafeEqual(given, expected) ? HubspotSignatureCheck.Valid : HubspotSignatureCheck.Mismatch;
}

/**
 * The opt-outs in a webhook batch, as consent signals of `output`. `subscriptions` is the
 * output's purpose → subscription type id map: an opt-out of one type stops the purposes sent
 * under it; hs_email_optout stops every non-care email. Other events (and opt-ins: a value other
 * than "true") give nothing. Throws a TypeError when the body is not a HubSpot event batch.
 */
export function parseHubspotWebhook(body: unknown, output: string, subscriptions: Readonly<Partial<Record<Purpose, number>>>): ToolConsentSignal[] {
  if (!Array.isArray(body)) throw new TypeError('a HubSpot webhook body is a JSON array of events');
  const signals: ToolConsentSignal[] = [];
  for (const event of body as unknown[]) {
    if (typeof event !== 'object' || event === null) throw new TypeError('a HubSpot webhook event is a JSON object');
    const { subscriptionType, propertyName, propertyValue, objectId, occurredAt, eventId } = event as Record<string, unknown>;
    if (subscriptionType !== 'contact.propertyChange' || propertyValue !== 'true' || typeof propertyName !== 'string') continue;
    if (typeof objectId !== 'number' && typeof objectId !== 'string') continue;
    let purposes: readonly Purpose[] | undefined;
    if (propertyName !== 'hs_email_optout') {
      const id = /^hs_email_optout_(\d+)$/.exec(propertyName)?.[1];
      if (id === undefined) continue;
      purposes = (Object.entries(subscriptions) as Array<[Purpose, number]>).filter(([, sub]) => String(sub) === id).map(([purpose]) => purpose);
      if (purposes.length === 0) continue;
    }
    const at = typeof occurredAt === 'number' ? new Date(occurredAt) : new Date(Number.NaN);
    signals.push(
      ...consentSignals(
        {
          tool: 'hubspot',
          output,
          contact: { toolId: String(objectId) },
          kind: ToolSignalKind.OptedOut,
          channel: 'email',
          at: Number.isNaN(at.getTime()) ? new Date(0).toISOString() : at.toISOString(),
          eventId: `${String(eventId ?? '')}:${String(objectId)}:${propertyName}`,
        },
        purposes,
      ),
    );
  }
  return signals;
}
