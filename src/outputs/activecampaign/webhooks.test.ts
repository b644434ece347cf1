import { describe, expect, it } from 'vitest';
import { PURPOSES } from '../../types.ts';
import { activeCampaignWebhookSecretMatches, parseActiveCampaignWebhook } from './webhooks.ts';

const options = { output: 'activecampaign-contacts', listIds: [2], purposes: PURPOSES };

describe('ActiveCampaign webhooks', () => {
  it('reads an unsubscribe from a list the output uses', () => {
    const form = new URLSearchParams('type=unsubscribe&date_time=2025-01-20T10%3A00%3A00-06%3A00&initiated_by=public&list=2&contact%5Bid%5D=10&contact%5Bemail%5D=Pat%40Example.org');
    expect(parseActiveCampaignWebhook(form, options)).toEqual([
      {
        tool: 'activecampaign',
        output: 'activecampaign-contacts',
        kind: 'opted_out',
        contact: { email: 'pat@example.org' },
        // Every purpose the output carries but care: every non-care email.
        scope: { channel: 'email' },
        at: '2025-01-20T16:00:00.000Z',
        eventId: 'unsubscribe:10:2:2025-01-20T10:00:00-06:00',
      },
    ]);
    form.set('list', '7');
    expect(parseActiveCampaignWebhook(form, options)).toEqual([]);
    expect(parseActiveCampaignWebhook(form, { ...options, listIds: [], purposes: ['marketing'] })).toMatchObject([{ scope: { channel: 'email', purpose: 'marketing' } }]);
  });

  it('reads an SMS STOP as an SMS opt-out of the phone number; ignores other types', () => {
    const form = new URLSearchParams({ type: 'sms_unsub', date_time: '2025-01-20T10:00:00-06:00', 'contact[id]': '10', 'contact[phone]': '+1 (555) 010-0199' });
    expect(parseActiveCampaignWebhook(form, options)).toMatchObject([{ kind: 'opted_out', contact: { phone: '+15550100199' }, scope: { channel: 'sms' } }]);
    expect(parseActiveCampaignWebhook(new URLSearchParams({ type: 'subscribe', list: '2', 'contact[email]': 'pat@example.org' }), options)).toEqual([]);
  });

  it('checks the secret of the webhook URL', () => {
    expect(activeCampaignWebhookSecretMatches('k3y', 'k3y')).toBe(true);
    expect(activeCampaignWebhookSecretMatches('k3Y', 'k3y')).toBe(false);
  });
});
