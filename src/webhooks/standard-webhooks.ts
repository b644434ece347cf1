// Standard Webhooks, symmetric signature scheme v1 (https://www.standardwebhooks.com, spec
// sections "Webhook headers" and "Signature scheme"): the sender puts
//
//   webhook-id         a message id, the same on every retry of the same message (receivers
//                      dedupe on it)
//   webhook-timestamp  integer Unix seconds of this attempt (receivers refuse stale ones)
//   webhook-signature  "v1,<base64 HMAC-SHA256 of `id.timestamp.body`>", several separated by
//                      spaces while a key is rotated
//
// The secret is base64, shown with a "whsec_" prefix. Both directions use this module: the
// fhir-rest-hook input verifies what a FHIR server signed, the webhook output signs what it
// sends. Comparisons are constant-time for the signature's length.
import { createHmac, timingSafeEqual } from 'node:crypto';

export const WEBHOOK_ID = 'webhook-id';
export const WEBHOOK_TIMESTAMP = 'webhook-timestamp';
export const WEBHOOK_SIGNATURE = 'webhook-signature';

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

/** HMAC-SHA256 of "id.timestamp.body" with `key`: the v1 signature bytes. */
export function standardWebhooksDigest(key: Buffer, id: string, timestamp: string, body: Buffer): Buffer {
  return createHmac('sha256', key).update(`${id}.${timestamp}.`).update(body).digest();
}

/** The webhook-signature header value: one "v1,<base64>" per key, space-separated (rotation). */
export function standardWebhooksSignature(keys: readonly Buffer[], id: string, timestamp: string, body: Buffer): string {
  return keys.map((key) => `v1,${standardWebhooksDigest(key, id, timestamp, body).toString('base64')}`).join(' ');
}

/**
 * Whether one of the `v1,<base64>` entries of a webhook-signature header is the HMAC-SHA256
 * of "id.timestamp.body" with `key` (other schemes, e.g. v1a, are skipped).
 */
export function standardWebhooksSignatureMatches(body: Buffer, id: string, timestamp: string, signatures: string, key: Buffer): boolean {
  const expected = standardWebhooksDigest(key, id, timestamp, body);
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
