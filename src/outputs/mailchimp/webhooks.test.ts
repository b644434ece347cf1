import { describe, expect, it } from 'vitest';
import { mailchimpWebhookSecretMatches, parseMailchimpWebhook } from './webhooks.ts';

const options = { output: 'mailchimp-newsletter', listId: 'a6b5da1054', purposes: ['service.info', 'marketing'] as const };

describe('Mailchimp audience webhooks', () => {
  it('reads an unsubscribe into one consent signal per purpose of the audience', () => {
    const form = new URLSearchParams(
      'type=unsubscribe&fired_at=2025-01-24+15%3A30%3A00&data%5Baction%5D=unsub&data%5Breason%5D=manual&data%5Bid%5D=8a25ff1d98&data%5Blist_id%5D=a6b5da1054&data%5Bemail%5D=Pat%40Example.org',
    );
    const base = { tool: 'mailchimp', output: 'mailchimp-newsletter', kind: 'opted_out', contact: { email: 'pat@example.org' }, at: '2025-01-24T15:30:00.000Z' };
    expect(parseMailchimpWebhook(form, options)).toEqual([
      { ...base, scope: { channel: 'email', purpose: 'service.info' }, eventId: 'unsubscribe:8a25ff1d98:2025-01-24 15:30:00#service.info' },
      { ...base, scope: { channel: 'email', purpose: 'marketing' }, eventId: 'unsubscribe:8a25ff1d98:2025-01-24 15:30:00#marketing' },
    ]);
  });

  it('reads a cleaned address as a hard bounce, or as an opt-out of all email for abuse', () => {
    const cleaned = (reason: string) => new URLSearchParams({ type: 'cleaned', fired_at: '2025-01-24 15:30:00', 'data[list_id]': 'a6b5da1054', 'data[email]': 'pat@example.org', 'data[reason]': reason });
    expect(parseMailchimpWebhook(cleaned('hard'), options)).toMatchObject([{ kind: 'hard_bounce', scope: { channel: 'email' } }]);
    expect(parseMailchimpWebhook(cleaned('abuse'), options)).toEqual([expect.objectContaining({ kind: 'opted_out', scope: { channel: 'email' } })]);
  });

  it('gives nothing for other types, another audience or no address', () => {
    const base = { fired_at: '2025-01-24 15:30:00', 'data[list_id]': 'a6b5da1054', 'data[email]': 'pat@example.org' };
    expect(parseMailchimpWebhook(new URLSearchParams({ ...base, type: 'subscribe' }), options)).toEqual([]);
    expect(parseMailchimpWebhook(new URLSearchParams({ ...base, type: 'unsubscribe', 'data[list_id]': 'other' }), options)).toEqual([]);
    expect(parseMailchimpWebhook(new URLSearchParams({ ...base, type: 'unsubscribe', 'data[email]': '' }), options)).toEqual([]);
  });

  it('checks the secret of the webhook URL', () => {
    expect(mailchimpWebhookSecretMatches('s3cret-path-segment', 's3cret-path-segment')).toBe(true);
    expect(mailchimpWebhookSecretMatches('s3cret-path-segmenT', 's3cret-path-segment')).toBe(false);
    expect(mailchimpWebhookSecretMatches(undefined, 's3cret-path-segment')).toBe(false);
    expect(mailchimpWebhookSecretMatches('', '')).toBe(false);
  });
});
