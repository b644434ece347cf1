// What a Mailchimp audience webhook posts to CareRelay (the "from the tool" direction of
// opt-outs): checking the request and reading it into a ToolSignal. Pure functions; the route
// (which must also answer Mailchimp's validator GET with 200) and the ledger are wired elsewhere.
//
// Mailchimp signs nothing ("About webhooks": "include a secret key in the URL that you provide
// and check that … in your scripts"): the secret is a path segment of the URL given to
// Mailchimp, compared in constant time. Payload (Marketing API "Sync audience data with
// webhooks"): POST, application/x-www-form-urlencoded, `type`, `fired_at` ("YYYY-MM-DD HH:MM:SS",
// read as UTC) and data[...] fields:
//   type=unsubscribe   data[email], data[list_id], data[action] (unsub | delete), data[reason]
//   type=cleaned       data[email], data[list_id], data[reason] (hard: a hard bounce; abuse: a
//                      spam complaint, read as an opt-out of every non-care purpose)
// Other types (subscribe, profile, upemail, campaign) give nothing. Set the webhook's sources so
// API changes are left out (sources.api = false): CareRelay's own opt-out pushes need no echo.
import type { Purpose } from '../../types.ts';
import { consentSignals, secretMatches } from '../common.ts';
import { ToolSignalKind, type ToolConsentSignal } from '../consent-sync.ts';

/** Whether the secret in the webhook URL's path is the configured one. */
export function mailchimpWebhookSecretMatches(fromPath: string | undefined, configured: string): boolean {
  return secretMatches(fromPath, configured);
}

/**
 * The consent signals of one webhook POST of `output`; none when it carries none (another type,
 * another audience, no address). `purposes`: what an unsubscribe stops — the purposes this
 * audience is used for (the output's allowedPurposes; care.* never).
 */
export function parseMailchimpWebhook(form: URLSearchParams, options: { output: string; listId: string; purposes: readonly Purpose[] }): ToolConsentSignal[] {
  const type = form.get('type');
  const email = form.get('data[email]')?.trim().toLowerCase();
  if (email === undefined || email === '' || form.get('data[list_id]') !== options.listId) return [];
  const firedAt = form.get('fired_at') ?? '';
  const at = /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$/.test(firedAt) ? new Date(`${firedAt.replace(' ', 'T')}Z`) : new Date(Number.NaN);
  const report = {
    tool: 'mailchimp',
    output: options.output,
    contact: { email },
    channel: 'email',
    at: Number.isNaN(at.getTime()) ? new Date(0).toISOString() : at.toISOString(),
    eventId: `${type}:${form.get('data[id]') ?? email}:${firedAt}`,
  } as const;
  if (type === 'unsubscribe') return consentSignals({ ...report, kind: ToolSignalKind.OptedOut }, options.purposes);
  // A cleaned address bounced for good (hard) or complained (abuse): it is done with this tool's email.
  if (type === 'cleaned') return consentSignals({ ...report, kind: form.get('data[reason]') === 'abuse' ? ToolSignalKind.OptedOut : ToolSignalKind.HardBounce });
  return [];
}
