import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { hubspotSignedUri, parseHubspotWebhook, verifyHubspotSignatureV3 } from './webhooks.ts';

const SECRET = 'yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy';
const NOW = Date.parse('2030-03-15T13:30:00Z');

/** HubSpot's recipe, written out independently: HMAC-SHA256(secret, method + uri + body + timestamp), base64. */
function sign(method: string, uri: string, body: string, timestamp: string): string {
  return createHmac('sha256', SECRET).update(`${method}${uri}${body}${timestamp}`, 'utf8').digest('base64');
}

describe('HubSpot signature v3', () => {
  const body = JSON.stringify([{ eventId: 1, objectId: 101, propertyName: 'hs_email_optout', propertyValue: 'true' }]);
  const uri = 'https://carerelay.example.org/hooks/hubspot/hubspot-contacts?portal=1';
  const timestamp = String(NOW - 60_000);

  it('accepts a request signed with the client secret within 5 minutes', () => {
    const request = { method: 'POST', uri, body, timestamp, signature: sign('POST', uri, body, timestamp) };
    expect(verifyHubspotSignatureV3(request, SECRET, NOW)).toBe('valid');
    expect(verifyHubspotSignatureV3({ ...request, body: Buffer.from(body) }, SECRET, NOW)).toBe('valid');
  });

  it('refuses a changed body, another secret, an old or missing timestamp', () => {
    const request = { method: 'POST', uri, body, timestamp, signature: sign('POST', uri, body, timestamp) };
    expect(verifyHubspotSignatureV3({ ...request, body: body.replace('101', '102') }, SECRET, NOW)).toBe('mismatch');
    expect(verifyHubspotSignatureV3(request, 'other-secret', NOW)).toBe('mismatch');
    expect(verifyHubspotSignatureV3(request, SECRET, NOW + 5 * 60_000)).toBe('stale');
    expect(verifyHubspotSignatureV3({ ...request, timestamp: undefined }, SECRET, NOW)).toBe('missing');
    expect(verifyHubspotSignatureV3({ ...request, signature: undefined }, SECRET, NOW)).toBe('missing');
  });

  it('signs the URI with the characters of HubSpot\'s table decoded', () => {
    expect(hubspotSignedUri('https://h.example.org/hook?email=a%40b.org&x=%3A%2f%2C%20')).toBe('https://h.example.org/hook?email=a@b.org&x=:/,%20');
    const encoded = 'https://carerelay.example.org/hooks/hubspot?e=pat%40example.org';
    const request = { method: 'POST', uri: encoded, body, timestamp, signature: sign('POST', 'https://carerelay.example.org/hooks/hubspot?e=pat@example.org', body, timestamp) };
    expect(verifyHubspotSignatureV3(request, SECRET, NOW)).toBe('valid');
  });
});

describe('HubSpot webhook events', () => {
  const subscriptions = { 'service.info': 111, marketing: 222 };

  it('reads opt-outs of all email and of one subscription type as consent signals', () => {
    const signals = parseHubspotWebhook(
      [
        { eventId: 10, subscriptionType: 'contact.propertyChange', objectId: 101, propertyName: 'hs_email_optout', propertyValue: 'true', occurredAt: NOW },
        { eventId: 11, subscriptionType: 'contact.propertyChange', objectId: 102, propertyName: 'hs_email_optout_222', propertyValue: 'true', occurredAt: NOW },
      ],
      'hubspot-contacts',
      subscriptions,
    );
    const base = { tool: 'hubspot', output: 'hubspot-contacts', kind: 'opted_out', at: new Date(NOW).toISOString() };
    expect(signals).toEqual([
      // Every email but care.
      { ...base, contact: { toolId: '101' }, scope: { channel: 'email' }, eventId: '10:101:hs_email_optout' },
      { ...base, contact: { toolId: '102' }, scope: { channel: 'email', purpose: 'marketing' }, eventId: '11:102:hs_email_optout_222#marketing' },
    ]);
  });

  it('ignores opt-ins, other properties, unknown subscription types and other events', () => {
    expect(
      parseHubspotWebhook(
        [
          { subscriptionType: 'contact.propertyChange', objectId: 1, propertyName: 'hs_email_optout', propertyValue: 'false' },
          { subscriptionType: 'contact.propertyChange', objectId: 1, propertyName: 'firstname', propertyValue: 'true' },
          { subscriptionType: 'contact.propertyChange', objectId: 1, propertyName: 'hs_email_optout_999', propertyValue: 'true' },
          { subscriptionType: 'contact.creation', objectId: 1 },
        ],
        'hubspot-contacts',
        subscriptions,
      ),
    ).toEqual([]);
    expect(() => parseHubspotWebhook({ objectId: 1 }, 'hubspot-contacts', subscriptions)).toThrow(TypeError);
  });
});
