import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { dataDirJoinKey, JoinVault, parseJoinKey, sealJoins, VaultError, VaultReason } from './seal.ts';

const K1 = { id: 'k1', key: Buffer.alloc(32, 1) };
const K2 = { id: 'k2', key: Buffer.alloc(32, 2) };
const URL = 'https://vendor.example/j/81234567890?pwd=Zx9QmT2';

describe('JoinVault', () => {
  it('seals with AES-256-GCM: the URL is not in the bytes, two seals differ, and it opens back', () => {
    const vault = new JoinVault(K1);
    const a = vault.seal('A1', URL);
    const b = vault.seal('A1', URL);
    expect(a.keyId).toBe('k1');
    expect(a.sealed.includes(Buffer.from('vendor.example'))).toBe(false);
    expect(a.sealed.equals(b.sealed)).toBe(false);
    expect(a.sealed.length).toBe(1 + 12 + 16 + Buffer.byteLength(URL));
    expect(vault.open('A1', a)).toBe(URL);
  });

  it('does not open for another appointment, with a changed byte, or without its key', () => {
    const vault = new JoinVault(K1);
    const sealed = vault.seal('A1', URL);
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (error) {
        return error instanceof VaultError ? error.code : 'other';
      }
      return 'opened';
    };
    expect(code(() => vault.open('A2', sealed))).toBe(VaultReason.Unreadable);
    for (const at of [0, 5, 20, sealed.sealed.length - 1]) {
      const tampered = Buffer.from(sealed.sealed);
      tampered[at] = tampered[at]! ^ 0x01;
      expect(code(() => vault.open('A1', { ...sealed, sealed: tampered }))).toBe(VaultReason.Unreadable);
    }
    expect(code(() => vault.open('A1', { ...sealed, sealed: sealed.sealed.subarray(0, 20) }))).toBe(VaultReason.Unreadable);
    expect(code(() => new JoinVault(K2).open('A1', sealed))).toBe(VaultReason.UnknownKey);
    expect(code(() => new JoinVault({ ...K2, id: 'k1' }).open('A1', sealed))).toBe(VaultReason.Unreadable);
  });

  it('rotates: new seals use the current key, previous keys still open theirs', () => {
    const old = new JoinVault(K1).seal('A1', URL);
    const rotated = new JoinVault(K2, [K1]);
    expect(rotated.seal('A1', URL).keyId).toBe('k2');
    expect(rotated.open('A1', old)).toBe(URL);
    expect(() => new JoinVault(K1, [{ ...K2, id: 'k1' }])).toThrow(/given twice/);
    expect(() => new JoinVault({ id: 'short', key: Buffer.alloc(16) })).toThrow(/32/);
  });

  it('reads keys as 64 hex digits or base64, and explains anything else without repeating it', () => {
    expect(parseJoinKey('01'.repeat(32), 'k')).toEqual(Buffer.alloc(32, 1));
    expect(parseJoinKey(`${Buffer.alloc(32, 2).toString('base64')}\n`, 'k')).toEqual(Buffer.alloc(32, 2));
    expect(parseJoinKey(Buffer.alloc(32, 3).toString('base64url'), 'k')).toEqual(Buffer.alloc(32, 3));
    expect(() => parseJoinKey('correct horse battery staple', 'server.video.key')).toThrow(/server\.video\.key must be 32 random bytes .*openssl rand -hex 32/);
    try {
      parseJoinKey('s3cret-value', 'k');
    } catch (error) {
      expect((error as Error).message).not.toContain('s3cret');
    }
  });

  it('keeps a default key in the data directory, readable by its owner only, the same across starts', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'carerelay-video-key-'));
    try {
      const a = dataDirJoinKey(path.join(dir, 'data'));
      const b = dataDirJoinKey(path.join(dir, 'data'));
      expect(a.key.equals(b.key)).toBe(true);
      expect(a.key.length).toBe(32);
      expect(statSync(path.join(dir, 'data', 'video.key')).mode & 0o777).toBe(0o600);
      expect(readFileSync(path.join(dir, 'data', 'video.key'), 'utf8')).toMatch(/^[0-9a-f]{64}\n$/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('sealJoins seals URLs, keeps clears, and without a vault never turns a URL into a clear', () => {
    const joins = [
      { appointmentId: 'A1', patientId: 'P', asOf: '2027-01-01T00:00:00Z', url: URL },
      { appointmentId: 'A2', patientId: 'P', asOf: '2027-01-01T00:00:00Z' },
    ];
    const vault = new JoinVault(K1);
    const sealed = sealJoins(vault, joins);
    expect(sealed.map((j) => [j.appointmentId, j.join?.keyId])).toEqual([['A1', 'k1'], ['A2', undefined]]);
    expect(vault.open('A1', sealed[0]!.join!)).toBe(URL);
    expect(sealJoins(undefined, joins)).toEqual([{ appointmentId: 'A2', patientId: 'P', asOf: '2027-01-01T00:00:00Z' }]);
  });
});
