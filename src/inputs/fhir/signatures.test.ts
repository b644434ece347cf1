import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { hmacMatches, standardWebhooksKey, standardWebhooksSignatureMatches } from './signatures.ts';

// The example of the Standard Webhooks reference libraries' tests: secret, id, timestamp,
// body and the signature they give for them.
const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const ID = 'msg_p5jXN8AQM9LWM0D4loKWxJek';
const TIMESTAMP = '1614265330';
const BODY = Buffer.from('{"test": 2432232314}');
const SIGNATURE = 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=';

describe('body HMAC (Medplum X-Signature)', () => {
  const body = Buffer.from('{"resourceType":"Bundle"}');
  const hex = createHmac('sha256', 'shared').update(body).digest('hex');

  it('accepts hex, sha256=hex and base64, and nothing signed otherwise', () => {
    expect(hmacMatches(body, hex, 'shared')).toBe(true);
    expect(hmacMatches(body, `sha256=${hex.toUpperCase()}`, 'shared')).toBe(true);
    expect(hmacMatches(body, Buffer.from(hex, 'hex').toString('base64'), 'shared')).toBe(true);
    expect(hmacMatches(body, hex, 'other')).toBe(false);
    expect(hmacMatches(Buffer.from('{}'), hex, 'shared')).toBe(false);
    expect(hmacMatches(body, hex.slice(2), 'shared')).toBe(false);
  });
});

describe('Standard Webhooks v1', () => {
  const key = standardWebhooksKey(SECRET)!;

  it('decodes the secret with or without its whsec_ prefix, and refuses what is not base64', () => {
    expect(key).toEqual(Buffer.from('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'base64'));
    expect(standardWebhooksKey('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')).toEqual(key);
    for (const bad of ['', 'whsec_', 'not base64!', 'whsec_a']) expect([bad, standardWebhooksKey(bad)]).toEqual([bad, undefined]);
  });

  it('matches the reference signature, and nothing that differs in id, timestamp, body or key', () => {
    expect(standardWebhooksSignatureMatches(BODY, ID, TIMESTAMP, SIGNATURE, key)).toBe(true);
    expect(standardWebhooksSignatureMatches(BODY, `${ID}x`, TIMESTAMP, SIGNATURE, key)).toBe(false);
    expect(standardWebhooksSignatureMatches(BODY, ID, '1614265331', SIGNATURE, key)).toBe(false);
    expect(standardWebhooksSignatureMatches(Buffer.from('{"test": 2432232315}'), ID, TIMESTAMP, SIGNATURE, key)).toBe(false);
    expect(standardWebhooksSignatureMatches(BODY, ID, TIMESTAMP, SIGNATURE, Buffer.from('other key'))).toBe(false);
  });

  it('accepts any v1 entry of a rotated list, and ignores other schemes and junk', () => {
    const old = `v1,${createHmac('sha256', 'old key').update(`${ID}.${TIMESTAMP}.`).update(BODY).digest('base64')}`;
    expect(standardWebhooksSignatureMatches(BODY, ID, TIMESTAMP, `${old} ${SIGNATURE}`, key)).toBe(true);
    expect(standardWebhooksSignatureMatches(BODY, ID, TIMESTAMP, `v1a,${SIGNATURE.slice(3)}`, key)).toBe(false);
    expect(standardWebhooksSignatureMatches(BODY, ID, TIMESTAMP, `v2,${SIGNATURE.slice(3)} garbage v1,`, key)).toBe(false);
  });
});
