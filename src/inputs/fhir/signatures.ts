// Signatures a FHIR server may put on the notifications it POSTs (auth.hmac and
// auth.standardWebhooks of a fhir-rest-hook input), verified over the raw body bytes:
//   - body HMAC (Medplum's X-Signature): HMAC-SHA256 of the body with a shared secret, hex
//     (optionally "sha256=") or base64, in one header;
//   - Standard Webhooks, symmetric scheme v1: src/webhooks/standard-webhooks.ts (the
//     webhook output signs with the same code).
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

// The Standard Webhooks computation is shared with the webhook output (protocol module).
export { standardWebhooksKey, standardWebhooksSignatureMatches } from '../../webhooks/standard-webhooks.ts';
