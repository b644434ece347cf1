import { describe, expect, it } from 'vitest';
import { standardWebhooksKey, standardWebhooksSignature, standardWebhooksSignatureMatches } from './standard-webhooks.ts';

// The example of the Standard Webhooks reference libraries' tests.
const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const ID = 'msg_p5jXN8AQM9LWM0D4loKWxJek';
const TIMESTAMP = '1614265330';
const BODY = Buffer.from('{"test": 2432232314}');

describe('Standard Webhooks v1 signatures', () => {
  it('signs id.timestamp.body like the reference implementation', () => {
    const key = standardWebhooksKey(SECRET)!;
    expect(standardWebhooksSignature([key], ID, TIMESTAMP, BODY)).toBe('v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=');
  });

  it('signs with every key while one is rotated; each verifies on its own', () => {
    const oldKey = standardWebhooksKey(SECRET)!;
    const newKey = standardWebhooksKey(Buffer.alloc(32, 7).toString('base64'))!;
    const header = standardWebhooksSignature([newKey, oldKey], ID, TIMESTAMP, BODY);
    expect(header.split(' ')).toHaveLength(2);
    expect(standardWebhooksSignatureMatches(BODY, ID, TIMESTAMP, header, oldKey)).toBe(true);
    expect(standardWebhooksSignatureMatches(BODY, ID, TIMESTAMP, header, newKey)).toBe(true);
    expect(standardWebhooksSignatureMatches(Buffer.from('{"test": 1}'), ID, TIMESTAMP, header, oldKey)).toBe(false);
    expect(standardWebhooksSignatureMatches(BODY, ID, '1614265331', header, oldKey)).toBe(false);
  });

  it('reads secrets with or without whsec_, refuses what is not base64', () => {
    expect(standardWebhooksKey('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')).toEqual(standardWebhooksKey(SECRET));
    expect(standardWebhooksKey('not base64!')).toBeUndefined();
    expect(standardWebhooksKey('whsec_')).toBeUndefined();
  });
});
