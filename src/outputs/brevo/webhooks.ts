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
// An unsubscribe stops the purposes the output carries; a hard bounce or a spam complaint makes
// the address unfit for every email.
import { PURPOSES, type Purpose } from '../../types.ts';
import { secretMatches } from '../common.ts';
import { ToolSignalKind, type ToolSignal } from '../spec.ts';

/** Whether a webhook request carries the credentials the webhook was created with. */
export function brevoWebhookAuthorized(authorization: string | undefined, expected: { bearerToken: string } | { user: string; password: string }): boolean {
  const given = authorization?.trim();
  if ('bearerToken' in expected) return secretMatches(/^Bearer (.+)$/.exec(given ?? '')?.[1], expected.bearerToken);
  const basic = /^Basic (.+)$/.exec(given ?? '')?.[1];
  return secretMatches(basic === undefined ? undefined : Buffer.from(basic, 'base64').toString('utf8'), `${expected.user}:${expected.password}`);
}

const KINDS: Readonly<Record<string, ToolSignalKind>> = {
  unsubscribed: ToolSignalKind.Unsubscribe,
  unsubscribe: ToolSignalKind.Unsubscribe,
  hard_bounce: ToolSignalKind.HardBounce,
  spam: ToolSignalKind.Complaint,
};

/**
 * The signals of one webhook POST (a JSON object, or an array when batched). `purposes`: what an
 * unsubscribe stops (the output's allowedPurposes; care.* is left out). Events of other kinds
 * give nothing; a body that is not JSON objects throws a TypeError.
 */
export function parseBrevoWebhook(body: unknown, purposes: readonly Purpose[]): ToolSignal[] {
  const events = Array.isArray(body) ? (body as unknown[]) : [body];
  const signals: ToolSignal[] = [];
  for (const event of events) {
    if (typeof event !== 'object' || event === null || Array.isArray(event)) throw new TypeError('a Brevo webhook event is a JSON object');
    const fields = event as Record<string, unknown>;
    const kind = typeof fields.event === 'string' ? KINDS[fields.event] : undefined;
    const email = typeof fields.email === 'string' ? fields.email.trim().toLowerCase() : '';
    if (kind === undefined || email === '') continue;
    const ms = typeof fields.ts_epoch === 'number' ? fields.ts_epoch : typeof fields.ts_event === 'number' ? fields.ts_event * 1000 : typeof fields.ts === 'number' ? fields.ts * 1000 : Number.NaN;
    const reference = fields['message-id'] ?? fields.camp_id;
    signals.push({
      tool: 'brevo',
      kind,
      email,
      scope: { channel: 'email', purposes: kind === ToolSignalKind.Unsubscribe ? purposes.filter((p) => !p.startsWith('care.')) : PURPOSES },
      at: new Date(Number.isFinite(ms) ? ms : 0).toISOString(),
      eventId: `${String(fields.event)}:${reference === undefined ? '' : String(reference)}:${email}`,
    });
  }
  return signals;
}
