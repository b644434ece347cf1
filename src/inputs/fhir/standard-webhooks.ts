// Standard Webhooks, symmetric scheme v1 (https://www.standardwebhooks.com, spec
// "Signature scheme" and "Webhook headers"): the sender signs "webhook-id.webhook-timestamp.body"
// with HMAC-SHA256 and sends the base64 signature as "v1,<sig>" in webhook-signature, several
// space-separated while a key is rotated. The secret is base64, shown with a "whsec_" prefix.
import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * The signing key of a Standard Webhooks secret: base64, optionally prefixed "whsec_".
 * Undefined when it is not base64 or decodes to nothing.
 */
export function standardWebhooksKey(secret: string): Buffer | undefined {
  const text = secret.trim().replace(/^whsec_/, '');
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(text) || text.length % 4 === 1) return undefined;
  const key = Buffer.from(text, 'base64');
  return key.length === 0 ? undefined : key;
}

/**
 * Whether one of the `v1,<base64>` entries of a webhook-signature header is the HMAC-SHA256
 * of "id.timestamp.body" with `key` (other schemes, e.g. v1a, are skipped).
 */
export function standardWebhooksSignatureMatches(body: Buffer, id: string, timestamp: string, signatures: string, key: Buffer): boolean {
  const expected = createHmac('sha256', key).update(`${id}.${timestamp}.`).update(body).digest();
  let matched = false;
  for (const entry of signatures.split(' ')) {
    const comma = entry.indexOf(',');
    if (comma === -1 || entry.slice(0, comma) !== 'v1') continue;
    const presented = Buffer.from(entry.slice(comma + 1), 'base64');
    // Every entry is compared (no early exit), in constant time for its length.
    if (presented.length === expected.length && timingSafeEqual(presented, expected)) matched = true;
  }
  return matched;
}
