import { describe, expect, it } from 'vitest';
import { twilioSignature, twilioSignatureMatches } from './signature.ts';

// The example of Twilio's "Webhooks security" page (Auth Token 12345).
const URL_ = 'https://mycompany.com/myapp.php?foo=1&bar=2';
const PARAMS = { CallSid: 'CA1234567890ABCDE', Caller: '+14158675310', Digits: '1234', From: '+14158675310', To: '+18005551212' };

describe('X-Twilio-Signature', () => {
  it('computes the documented example', () => {
    expect(twilioSignature('12345', URL_, PARAMS)).toBe('GvWf1cFY/Q7PnoempGyD5oXAezc=');
  });

  it('verifies a form read as URLSearchParams, in any order', () => {
    const form = new URLSearchParams([...Object.entries(PARAMS)].reverse());
    expect(twilioSignatureMatches('12345', URL_, form, 'GvWf1cFY/Q7PnoempGyD5oXAezc=')).toBe(true);
    expect(twilioSignatureMatches('12346', URL_, form, 'GvWf1cFY/Q7PnoempGyD5oXAezc=')).toBe(false);
    form.set('Digits', '1235');
    expect(twilioSignatureMatches('12345', URL_, form, 'GvWf1cFY/Q7PnoempGyD5oXAezc=')).toBe(false);
    expect(twilioSignatureMatches('12345', URL_, PARAMS, undefined)).toBe(false);
  });

  it('accepts the URL signed with or without the default port', () => {
    const withPort = twilioSignature('12345', 'https://mycompany.com:443/myapp.php?foo=1&bar=2', PARAMS);
    expect(twilioSignatureMatches('12345', URL_, PARAMS, withPort)).toBe(true);
    expect(twilioSignatureMatches('12345', 'https://mycompany.com:8443/x', PARAMS, twilioSignature('12345', 'https://mycompany.com/x', PARAMS))).toBe(false);
  });

  it('signs a repeated name once per distinct value, values sorted', () => {
    const form = new URLSearchParams([['b', '2'], ['a', 'y'], ['a', 'x'], ['a', 'x']]);
    expect(twilioSignature('t', 'https://h/p', form)).toBe(twilioSignature('t', 'https://h/p', { a: ['x', 'y'], b: '2' }));
  });
});
