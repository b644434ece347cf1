import { describe, expect, it } from 'vitest';
import { REJECTED_RAW_DEFAULTS, rawQuotaAccount, rawQuotaFor } from './raw-quota.ts';

describe('raw-bytes quota accounts', () => {
  it('bounds account names: a 1 MB sender is counted under its hash', () => {
    const account = rawQuotaAccount('sender', 'X'.repeat(1_000_000));
    expect(account).toMatch(/^sender:sha256:[0-9a-f]{32}$/);
    expect(rawQuotaAccount('peer', '10.0.0.1')).toBe('peer:10.0.0.1');
  });

  it('gives a record its account and limits, or nothing without limits', () => {
    expect(rawQuotaFor(undefined, 'sender', 'EPIC^GHH')).toEqual({});
    expect(rawQuotaFor({ ...REJECTED_RAW_DEFAULTS, extra: 1 } as typeof REJECTED_RAW_DEFAULTS, 'sender', 'EPIC^GHH')).toEqual({
      rawQuota: { account: 'sender:EPIC^GHH', totalBytes: 1024 ** 3, perSenderBytes: 64 * 1024 ** 2, keepBytes: 4096 },
    });
  });
});
