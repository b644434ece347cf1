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
import { contactKeyOf, secretMatches } from '../common.ts';
import { ToolSignalKind, type ToolSignal } from '../spec.ts';

/** Whether the secret in the webhook URL's path is the configured one. */
export function activeCampaignWebhookSecretMatches(fromPath: string | undefined, configured: string): boolean {
  return secretMatches(fromPath, configured);
}

/**
 * The signal of one webhook POST, or undefined. `listIds`: the lists the output uses (empty:
 * any list); `purposes`: what an opt-out stops (care.* left out).
 */
export function parseActiveCampaignWebhook(form: URLSearchParams, options: { listIds: readonly number[]; purposes: readonly Purpose[] }): ToolSignal | undefined {
  const type = form.get('type');
  const list = form.get('list');
  if (type === 'unsubscribe' && options.listIds.length > 0 && !options.listIds.some((id) => String(id) === list)) return undefined;
  const purposes = options.purposes.filter((p) => !p.startsWith('care.'));
  const at = new Date(form.get('date_time') ?? '');
  const common = {
    tool: 'activecampaign',
    kind: ToolSignalKind.Unsubscribe,
    at: Number.isNaN(at.getTime()) ? new Date(0).toISOString() : at.toISOString(),
    eventId: `${type}:${form.get('contact[id]') ?? ''}:${list ?? ''}:${form.get('date_time') ?? ''}`,
  } as const;
  if (type === 'unsubscribe') {
    const email = form.get('contact[email]')?.trim().toLowerCase();
    if (email === undefined || email === '') return undefined;
    return { ...common, email, scope: { channel: 'email', purposes } };
  }
  if (type === 'sms_unsub') {
    const phone = contactKeyOf(form.get('contact[phone]') ?? '');
    if (phone === '' || phone.includes('@')) return undefined;
    return { ...common, phone, scope: { channel: 'sms', purposes } };
  }
  return undefined;
}
