// Twilio webhook request validation, exactly as Twilio documents it ("Validating requests",
// https://www.twilio.com/docs/usage/security#validating-requests) and as its Node library
// implements it (twilio-node src/webhooks/webhooks.ts, validateRequest):
//
//   1. the full URL Twilio requested, with its query string;
//   2. for a form-encoded POST, every parameter sorted by name, each appended as name + value
//      with no separator (a repeated name: each distinct value, sorted);
//   3. HMAC-SHA1 of that string with the account's auth token, base64;
//   4. compared in constant time with X-Twilio-Signature. Twilio's own signing is not
//      consistent about the port, so the URL is tried with and without it (:443 / :80 added
//      when absent, removed when present), as the library does.
//
// A JSON body is signed through the URL instead: Twilio adds `bodySHA256=<hex sha256 of the
// body>` to the query string and signs the URL alone. Protocol code only: used by the inbound
// SMS webhook and, later, by a Twilio output's status callbacks.
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';

export const TWILIO_SIGNATURE_HEADER = 'x-twilio-signature';

/** Form parameters as received: a repeated name holds every value. */
export type TwilioParams = Readonly<Record<string, string | readonly string[]>>;

/** The signature Twilio would send for this URL and these form parameters. */
export function twilioSignature(authToken: string, url: string, params: TwilioParams): string {
  let data = url;
  for (const name of Object.keys(params).sort()) {
    const value = params[name]!;
    const values = typeof value === 'string' ? [value] : [...new Set(value)].sort();
    for (const v of values) data += name + v;
  }
  return createHmac('sha1', authToken).update(Buffer.from(data, 'utf8')).digest('base64');
}

/** The URL with its scheme's default port written out, and without any port. */
function portVariants(url: string): string[] {
  const parsed = new URL(url);
  const withoutPort = new URL(url);
  withoutPort.port = '';
  let withPort = parsed.toString();
  if (parsed.port === '') {
    const port = parsed.protocol === 'https:' ? '443' : '80';
    // URL normalizes a default port away; splice it into the authority by hand.
    withPort = `${parsed.protocol}//${parsed.username}${parsed.password ? `:${parsed.password}` : ''}${parsed.username || parsed.password ? '@' : ''}${parsed.host}:${port}${parsed.pathname}${parsed.search}${parsed.hash}`;
  }
  return [withoutPort.toString(), withPort];
}

function equalSignatures(presented: string, expected: string): boolean {
  const a = Buffer.from(presented);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Whether `header` is Twilio's signature of a form-encoded request to `url` with `params`. */
export function twilioSignatureMatches(authToken: string, header: string | undefined, url: string, params: TwilioParams): boolean {
  if (header === undefined || header === '') return false;
  return portVariants(url).some((u) => equalSignatures(header, twilioSignature(authToken, u, params)));
}

/**
 * Whether a request with a raw (JSON) body is Twilio's: the URL (carrying bodySHA256) is
 * signed with no parameters, and bodySHA256 is the hex SHA-256 of the body.
 */
export function twilioBodySignatureMatches(authToken: string, header: string | undefined, url: string, body: Buffer): boolean {
  const hash = new URL(url).searchParams.get('bodySHA256');
  if (hash === null) return false;
  const actual = createHash('sha256').update(body).digest('hex');
  return twilioSignatureMatches(authToken, header, url, {}) && equalSignatures(hash, actual);
}

/** Form parameters of an application/x-www-form-urlencoded body, repeated names kept. */
export function formParams(body: string): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = Object.create(null) as Record<string, string | string[]>;
  for (const [name, value] of new URLSearchParams(body)) {
    const existing = out[name];
    if (existing === undefined) out[name] = value;
    else out[name] = Array.isArray(existing) ? [...existing, value] : [existing, value];
  }
  return out;
}
