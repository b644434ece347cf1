import { describe, expect, it } from 'vitest';
import { brevoWebhookAuthorized, parseBrevoWebhook } from './webhooks.ts';

const purposes = ['service.info', 'care.followup'] as const;

describe('Brevo webhooks', () => {
  it('reads a transactional unsubscribe and a hard bounce', () => {
    const signals = parseBrevoWebhook(
      [
        { event: 'unsubscribed', email: 'Pat@Example.org', id: 1, 'message-id': '<a@smtp-relay.mailin.fr>', ts_event: 1737363600, ts_epoch: 1737363600123 },
        { event: 'hard_bounce', email: 'old@example.org', id: 1, 'message-id': '<b@smtp-relay.mailin.fr>', ts_event: 1737363600, reason: '550 user unknown' },
      ],
      'brevo-contacts',
      purposes,
    );
    expect(signals).toEqual([
      {
        tool: 'brevo',
        output: 'brevo-contacts',
        kind: 'opted_out',
        contact: { email: 'pat@example.org' },
        // The output's purposes, care left out.
        scope: { channel: 'email', purpose: 'service.info' },
        at: '2025-01-20T09:00:00.123Z',
        eventId: 'unsubscribed:<a@smtp-relay.mailin.fr>:pat@example.org#service.info',
      },
      {
        tool: 'brevo',
        output: 'brevo-contacts',
        kind: 'hard_bounce',
        contact: { email: 'old@example.org' },
        scope: { channel: 'email' },
        at: '2025-01-20T09:00:00.000Z',
        eventId: 'hard_bounce:<b@smtp-relay.mailin.fr>:old@example.org',
      },
    ]);
  });

  it('reads a marketing unsubscribe and a spam complaint; ignores other events', () => {
    expect(parseBrevoWebhook({ event: 'unsubscribe', email: 'pat@example.org', camp_id: 7, ts_event: 1737363600 }, 'b', purposes)).toMatchObject([{ kind: 'opted_out', eventId: 'unsubscribe:7:pat@example.org#service.info' }]);
    expect(parseBrevoWebhook({ event: 'spam', email: 'pat@example.org', ts_event: 1737363600 }, 'b', purposes)).toMatchObject([{ kind: 'opted_out', scope: { channel: 'email' } }]);
    expect(parseBrevoWebhook({ event: 'delivered', email: 'pat@example.org' }, 'b', purposes)).toEqual([]);
    expect(parseBrevoWebhook({ event: 'unsubscribed' }, 'b', purposes)).toEqual([]);
    expect(() => parseBrevoWebhook('unsubscribed', 'b', purposes)).toThrow(TypeError);
  });

  it('checks the bearer token or the Basic credentials the webhook was created with', () => {
    expect(brevoWebhookAuthorized('Bearer t0ken', { bearerToken: 't0ken' })).toBe(true);
    expect(brevoWebhookAuthorized('Bearer other', { bearerToken: 't0ken' })).toBe(false);
    expect(brevoWebhookAuthorized(undefined, { bearerToken: 't0ken' })).toBe(false);
    const basic = `Basic ${Buffer.from('brevo:pa:ss').toString('base64')}`;
    expect(brevoWebhookAuthorized(basic, { user: 'brevo', password: 'pa:ss' })).toBe(true);
    expect(brevoWebhookAuthorized(basic, { user: 'brevo', password: 'pass' })).toBe(false);
  });
});
