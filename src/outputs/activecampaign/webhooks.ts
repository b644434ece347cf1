// What ActiveCampaign's webhooks post to CareRelay (the "from the tool" direction of opt-outs):
// checking the request and reading it into a ToolSignal. Pure functions; the route and the
// consent ledger are wired elsewhere.
//
// ActiveCampaign signs nothing: the secret is a path segment of the webhook URL, compared in
// constant time. Webhooks are "never retried" and delivered "at least once" (developers.
// activecampaign.com "Webhooks"). Payload: application/x-www-form-urlencoded with PHP-style
// keys — type, date_time (ISO 8601 with offset), initiated_by, initiated_from, list,
// contact[id], contact[email], contact[phone], … For opt-outs, subscribe the webhook to:
//   unsubscribe   the contact unsubscribed from `list` (email)
//   sms_unsub     the contact replied STOP to an ActiveCampaign SMS (sms)
// Other types give nothing. An unsubscribe from a list this output does not use (listIds) is
// not CareRelay's business and gives nothing either.
import type { Purpose } from '../../types.ts';
import { consentSignals, contactKeyOf, secretMatches } from '../common.ts';
import { ToolSignalKind, type ToolConsentSignal } from '../consent-sync.ts';

/** Whether the secret in the webhook URL's path is the configured one. */
export function activeCampaignWebhookSecretMatches(fromPath: string | undefined, configured: string): boolean {
  return secretMatches(fromPath, configured);
}

/**
 * The consent signals of one webhook POST of `output`. `listIds`: the lists the output uses
 * (empty: any list); `purposes`: what an email unsubscribe stops (care.* never). An SMS STOP
 * belongs to the number and stops every non-care SMS.
 */
export function parseActiveCampaignWebhook(form: URLSearchParams, options: { output: string; listIds: readonly number[]; purposes: readonly Purpose[] }): ToolConsentSignal[] {
  const type = form.get('type');
  const list = form.get('list');
  const at = new Date(form.get('date_time') ?? '');
  const report = {
    tool: 'activecampaign',
    output: options.output,
    kind: ToolSignalKind.OptedOut,
    at: Number.isNaN(at.getTime()) ? new Date(0).toISOString() : at.toISOString(),
    eventId: `${type}:${form.get('contact[id]') ?? ''}:${list ?? ''}:${form.get('date_time') ?? ''}`,
  } as const;
  if (type === 'unsubscribe') {
    if (options.listIds.length > 0 && !options.listIds.some((id) => String(id) === list)) return [];
    const email = form.get('contact[email]')?.trim().toLowerCase();
    if (email === undefined || email === '') return [];
    return consentSignals({ ...report, contact: { email }, channel: 'email' }, options.purposes);
  }
  if (type === 'sms_unsub') {
    const phone = contactKeyOf(form.get('contact[phone]') ?? '');
    if (phone === '' || phone.includes('@')) return [];
    return consentSignals({ ...report, contact: { phone }, channel: 'sms' });
  }
  return [];
}
