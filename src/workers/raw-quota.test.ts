import { describe, expect, it } from 'vitest';
import { REJECTED_RAW_CURSOR, RejectedRawQuota, rawQuotaAccount } from './raw-quota.ts';

function storeWith(cursors: Record<string, string> = {}) {
  let reads = 0;
  return {
    reads: () => reads,
    getCursor: async (key: string) => {
      reads++;
      return cursors[key];
    },
  };
}

const bytes = (n: number): Buffer => Buffer.alloc(n, 0x41);

describe('RejectedRawQuota', () => {
  it('keeps whole within both limits, counting; past either, keeps the first bytes and the length', async () => {
    const quota = new RejectedRawQuota(storeWith(), { totalBytes: 250, perSenderBytes: 150, keepBytes: 10 });
    const a = rawQuotaAccount('sender', 'EPIC^A');
    const b = rawQuotaAccount('sender', 'EPIC^B');
    await quota.load(a);
    await quota.load(b);
    const first = quota.charge(a, bytes(100));
    expect(first.raw.length).toBe(100);
    expect(first.receivedBytes).toBeUndefined();
    expect(first.cursors).toEqual({ [REJECTED_RAW_CURSOR]: '100', [`${REJECTED_RAW_CURSOR}:${a}`]: '100' });
    const second = quota.charge(a, bytes(100)); // per sender: 200 > 150
    expect(second.raw.length).toBe(10);
    expect(second.receivedBytes).toBe(100);
    expect(second.cursors).toEqual({});
    expect(quota.charge(b, bytes(100)).receivedBytes).toBeUndefined(); // total 200
    expect(quota.charge(b, bytes(100)).receivedBytes).toBe(100); // total 300 > 250
    // Small ones are always kept whole (cutting them would keep the same), and counted.
    expect(quota.charge(b, bytes(10)).cursors).toEqual({ [REJECTED_RAW_CURSOR]: '210', [`${REJECTED_RAW_CURSOR}:${b}`]: '110' });
  });

  it('gives bytes back on refund (nothing stored), once', async () => {
    const quota = new RejectedRawQuota(storeWith(), { totalBytes: 100, perSenderBytes: 100, keepBytes: 10 });
    await quota.load('peer:x');
    const charge = quota.charge('peer:x', bytes(100));
    charge.refund();
    charge.refund();
    expect(quota.charge('peer:x', bytes(100)).receivedBytes).toBeUndefined();
  });

  it('starts from the durable counters, read once per key', async () => {
    const store = storeWith({ [REJECTED_RAW_CURSOR]: '0', [`${REJECTED_RAW_CURSOR}:sender:A^B`]: '95' });
    const quota = new RejectedRawQuota(store, { totalBytes: 1000, perSenderBytes: 100, keepBytes: 1 });
    await Promise.all([quota.load('sender:A^B'), quota.load('sender:A^B')]);
    await quota.load('sender:A^B');
    expect(store.reads()).toBe(2);
    expect(quota.charge('sender:A^B', bytes(10)).receivedBytes).toBe(10);
    expect(() => quota.charge('sender:other', bytes(1))).toThrow(/before load/);
  });

  it('bounds account names: a 1 MB sender is counted under its hash', () => {
    const account = rawQuotaAccount('sender', 'X'.repeat(1_000_000));
    expect(account).toMatch(/^sender:sha256:[0-9a-f]{32}$/);
    expect(rawQuotaAccount('peer', '10.0.0.1')).toBe('peer:10.0.0.1');
  });
});
