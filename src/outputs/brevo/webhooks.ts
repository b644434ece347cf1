// What Brevo's webhooks post to CareRelay (the "from the tool" direction of opt-outs): checking
// the request and reading it into ToolSignals. Pure functions; the route and the consent ledger
// are wired elsewhere.
//
// Brevo signs nothing ("Secured webhooks"): a webhook is created with auth { type: bearer,
// token } (sent as Authorization: Bearer <token>) or with credentials in its URL (sent as
// Authorization: Basic); either is compared in constant time here. Payload: JSON, one event,
// or an array of them when the webhook is `batched`:
//   transactional ("Transactional webhooks"): event (unsubscribed, hard_bounce, spam, …), email,
//     message-id, ts_event (s), ts_epoch (ms), date, tags, reason
//   marketing ("Marketing webhooks"): event (unsubscribe[d], hard_bounce, spam, …), email, camp_id,
//     ts_event (s), date_event, list_id
// An unsubscribe stops the purposes the output carries; a hard bounce makes the address unfit,
// a spam complaint stops every non-care purpose.
import type { Purpose } from '../../types.ts';
import { consentSignals, secretMatches } from '../common.ts';
import { ToolSignalKind, type ToolConsentSignal } from '../consent-sync.ts';

/** Whether a webhook request carries the credentials the webhook was created with. */
export function brevoWebhookAuthorized(authorization: string | undefined, expected: { bearerToken: string } | { user: string; password: string }): boolean {
  const given = authorization?.trim();
  if ('bearerToken' in expected) return secretMatches(/^Bearer (.+)$/.exec(given ?? '')?.[1], expected.bearerToken);
  const basic = /^Basic (.+)$/.exec(given ?? '')?.[1];
  return secretMatches(basic === undefined ? undefined : Buffer.from(basic, 'base64').toString('utf8'), `${expected.user}:${expected.password}`);
}

/** Brevo's event names (transactional snake_case, marketing) that concern consent. */
const KINDS: Readonly<Record<string, { kind: ToolSignalKind; all: boolean }>> = {
  unsubscribed: { kind: ToolSignalKind.OptedOut, all: false },
  unsubscribe: { kind: ToolSignalKind.OptedOut, all: false },
  hard_bounce: { kind: ToolSignalKind.HardBounce, all: true },
  // A spam complaint: the person wants no more of this sender's non-care email.
  spam: { kind: ToolSignalKind.OptedOut, all: true },
};

/**
 * The consent signals of one webhook POST of `output` (a JSON object, or an array when batched).
 * `purposes`: what an unsubscribe stops (the output's allowedPurposes; care.* never). Events of
 * other kinds give nothing; a body that is not JSON objects throws a TypeError.
 */
export function parseBrevoWebhook(body: unknown, output: string, purposes: readonly Purpose[]): ToolConsentSignal[] {
  const events = Array.isArray(body) ? (body as unknown[]) : [body];
  const signals: ToolConsentSignal[] = [];
  for (const event of events) {
    if (typeof event !== 'object' || event === null || Array.isArray(event)) throw new TypeError('a Brevo webhook event is a JSON object');
    const fields = event as Record<string, unknown>;
    const known = typeof fields.event === 'string' ? KINDS[fields.event] : undefined;
    const email = typeof fields.email === 'string' ? fields.email.trim().toLowerCase() : '';
    if (known === undefined || email === '') continue;
    const ms = typeof fields.ts_epoch === 'number' ? fields.ts_epoch : typeof fields.ts_event === 'number' ? fields.ts_event * 1000 : typeof fields.ts === 'number' ? fields.ts * 1000 : Number.NaN;
    const reference = fields['message-id'] ?? fields.camp_id;
    const report = {
      tool: 'brevo',
      output,
      contact: { email },
      kind: known.kind,
      channel: 'email',
      at: new Date(Number.isFinite(ms) ? ms : 0).toISOString(),
      eventId: `${String(fields.event)}:${reference === undefined ? '' : String(reference)}:${email}`,
    } as const;
    signals.push(...consentSignals(report, known.all ? undefined : purposes));
  }
  return signals;
}
