// Signatures a FHIR server may put on the notifications it POSTs (auth.hmac and
// auth.standardWebhooks of a fhir-rest-hook input), verified over the raw body bytes:
//   - body HMAC (Medplum's X-Signature): HMAC-SHA256 of the body with a shared secret, hex
//     (optionally "sha256=") or base64, in one header;
//   - Standard Webhooks, symmetric scheme v1 (https://www.standardwebhooks.com, spec
//     "Signature scheme" and "Webhook headers"): the sender signs
//     "webhook-id.webhook-timestamp.body" with HMAC-SHA256 and sends the base64 signature as
//     "v1,<sig>" in webhook-signature, several space-separated while a key is rotated. The
//     secret is base64, shown with a "whsec_" prefix.
// Comparisons are constant-time for the signature's length.
import { createHmac, timingSafeEqual } from 'node:crypto';

/** The signature bytes of a body-HMAC header value: `sha256=<hex>`, `<hex>` or `<base64>`. */
export function signatureBytes(value: string): Buffer | undefined {
  const text = value.trim().replace(/^sha256=/i, '');
  if (/^[0-9a-f]{64}$/i.test(text)) return Buffer.from(text, 'hex');
  if (/^[A-Za-z0-9+/_-]{43}=?$/.test(text)) return Buffer.from(text, 'base64');
  return undefined;
}

/** Whether `signature` (a header value, see signatureBytes) is the HMAC-SHA256 of `body` with `secret`. */
export function hmacMatches(body: Buffer, signature: string, secret: string): boolean {
  const presented = signatureBytes(signature);
  if (presented === undefined) return false;
  const expected = createHmac('sha256', secret).update(body).digest();
  return presented.length === expected.length && timingSafeEqual(presented, expected);
}

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
