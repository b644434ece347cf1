import { describe, expect, it } from 'vitest';
import { inboundAuthFor } from './fhir-setup.ts';

describe('inboundAuthFor', () => {
  it('decodes a Standard Webhooks secret, and names the fix when it is not one', () => {
    const secret = { env: 'SW' };
    const auth = inboundAuthFor({ standardWebhooks: { secret, toleranceSeconds: 300 } }, { SW: 'whsec_c2VjcmV0LWtleQ==' }, '.');
    expect(auth).toEqual({ kind: 'standardWebhooks', key: Buffer.from('secret-key'), toleranceSeconds: 300 });
    expect(() => inboundAuthFor({ standardWebhooks: { secret, toleranceSeconds: 300 } }, { SW: 'my secret!' }, '.')).toThrow(
      /auth.standardWebhooks.secret is not a Standard Webhooks secret: give the base64 signing secret/,
    );
  });
});
