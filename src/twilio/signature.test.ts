import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { formParams, twilioBodySignatureMatches, twilioSignature, twilioSignatureMatches } from './signature.ts';

// The example of Twilio's documentation (security/signature_validation, api-snippets):
// auth token 12345, this URL and these parameters give GvWf1cFY/Q7PnoempGyD5oXAezc=.
const TOKEN = '12345';
const URL_ = 'https://mycompany.com/myapp.php?foo=1&bar=2';
const PARAMS = { CallSid: 'CA1234567890ABCDE', Caller: '+14158675310', Digits: '1234', From: '+14158675310', To: '+18005551212' };

describe('X-Twilio-Signature', () => {
  it("matches Twilio's documented example", () => {
    expect(twilioSignature(TOKEN, URL_, PARAMS)).toBe('GvWf1cFY/Q7PnoempGyD5oXAezc=');
    expect(twilioSignatureMatches(TOKEN, 'GvWf1cFY/Q7PnoempGyD5oXAezc=', URL_, PARAMS)).toBe(true);
  });

  it('refuses another token, another URL, an edited or missing parameter, a missing header', () => {
    const sig = twilioSignature(TOKEN, URL_, PARAMS);
    expect(twilioSignatureMatches('54321', sig, URL_, PARAMS)).toBe(false);
    expect(twilioSignatureMatches(TOKEN, sig, 'https://mycompany.com/myapp.php?foo=1&bar=3', PARAMS)).toBe(false);
    expect(twilioSignatureMatches(TOKEN, sig, URL_, { ...PARAMS, Digits: '1235' })).toBe(false);
    const { Digits: _d, ...fewer } = PARAMS;
    expect(twilioSignatureMatches(TOKEN, sig, URL_, fewer)).toBe(false);
    expect(twilioSignatureMatches(TOKEN, undefined, URL_, PARAMS)).toBe(false);
    expect(twilioSignatureMatches(TOKEN, '', URL_, PARAMS)).toBe(false);
  });

  it('accepts the URL signed with or without its default port, as Twilio signs either way', () => {
    const withPort = twilioSignature(TOKEN, 'https://mycompany.com:443/myapp.php?foo=1&bar=2', PARAMS);
    expect(twilioSignatureMatches(TOKEN, withPort, URL_, PARAMS)).toBe(true);
    const without = twilioSignature(TOKEN, 'https://cr.example.org/hooks/sms/out', PARAMS);
    expect(twilioSignatureMatches(TOKEN, without, 'https://cr.example.org:443/hooks/sms/out', PARAMS)).toBe(true);
  });

  it('sorts parameters by name, each repeated value distinct and sorted, and reads form bodies that way', () => {
    const params = formParams('To=%2B1555&Body=STOP+now&MediaUrl=b&MediaUrl=a&MediaUrl=a');
    expect(params).toEqual({ To: '+1555', Body: 'STOP now', MediaUrl: ['b', 'a', 'a'] });
    expect(twilioSignature(TOKEN, 'https://x/y', params)).toBe(twilioSignature(TOKEN, 'https://x/y', { Body: 'STOP now', MediaUrl: ['a', 'b'], To: '+1555' }));
  });

  it('a JSON body is signed through bodySHA256 in the URL', () => {
    const body = Buffer.from('{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}');
    const url = `https://example.com/myapp?bodySHA256=${createHash('sha256').update(body).digest('hex')}`;
    const sig = twilioSignature(TOKEN, url, {});
    expect(twilioBodySignatureMatches(TOKEN, sig, url, body)).toBe(true);
    expect(twilioBodySignatureMatches(TOKEN, sig, url, Buffer.from('{}'))).toBe(false);
  });
});
