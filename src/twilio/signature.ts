// X-Twilio-Signature (Twilio docs, "Webhooks security" → "Validating signatures from Twilio";
// the algorithm of twilio-node's src/webhooks/webhooks.ts): for a form-encoded POST, the full
// URL Twilio requested (scheme, host, path, query) followed by every POST parameter — names
// sorted, each name immediately followed by its value, a repeated name once per distinct value
// in sorted order — HMAC-SHA1 with the account's Auth Token, base64. Twilio is inconsistent
// about the default port (":443") in the signed URL, so a request is valid when either form
// matches. An API key signs nothing: callbacks are always signed with the Auth Token.
//
// Protocol code only: the SMS output's status callback and the inbound SMS webhook both use it.
import { createHmac, timingSafeEqual } from 'node:crypto';

export const TWILIO_SIGNATURE_HEADER = 'x-twilio-signature';

/** Form parameters as received: a name may repeat. */
export type TwilioParams = URLSearchParams | Readonly<Record<string, string | readonly string[]>>;

function entriesOf(params: TwilioParams): Map<string, string[]> {
  const byName = new Map<string, string[]>();
  const add = (name: string, value: string): void => {
    const values = byName.get(name) ?? [];
    values.push(value);
    byName.set(name, values);
  };
  if (params instanceof URLSearchParams) {
    for (const [name, value] of params) add(name, value);
  } else {
    for (const [name, value] of Object.entries(params)) {
      for (const v of typeof value === 'string' ? [value] : value) add(name, v);
    }
  }
  return byName;
}

/** The expected X-Twilio-Signature of a POST to `url` with form `params`. */
export function twilioSignature(authToken: string, url: string, params: TwilioParams): string {
  const byName = entriesOf(params);
  let data = url;
  for (const name of [...byName.keys()].sort()) {
    for (const value of [...new Set(byName.get(name))].sort()) data += name + value;
  }
  return createHmac('sha1', authToken).update(Buffer.from(data, 'utf8')).digest('base64');
}

/** `url` with and without its scheme's default port, as Twilio may have signed either. */
function urlForms(url: string): string[] {
  const parsed = new URL(url);
  const defaultPort = parsed.protocol === 'https:' ? '443' : '80';
  if (parsed.port !== '' && parsed.port !== defaultPort) return [parsed.href];
  const without = parsed.href;
  const withPort = `${parsed.protocol}//${parsed.username}${parsed.password ? `:${parsed.password}` : ''}${parsed.username || parsed.password ? '@' : ''}${parsed.hostname}:${defaultPort}${parsed.pathname}${parsed.search}`;
  return [without, withPort];
}

/**
 * Whether `signature` (the X-Twilio-Signature header) signs a POST of `params` to `url` (the
 * public URL Twilio was given, not the one a proxy forwarded) with `authToken`.
 */
export function twilioSignatureMatches(authToken: string, url: string, params: TwilioParams, signature: string | undefined): boolean {
  if (signature === undefined || signature === '') return false;
  const presented = Buffer.from(signature);
  let matched = false;
  for (const form of urlForms(url)) {
    const expected = Buffer.from(twilioSignature(authToken, form, params));
    if (presented.length === expected.length && timingSafeEqual(presented, expected)) matched = true;
  }
  return matched;
}
