import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { SubjectState, VideoLink } from '../store/store.ts';
import { LinkState, linkStatus, mintToken, tokenHash, TOKEN_BYTES } from './link.ts';

describe('tokens', () => {
  it('carry 128 random bits: 16 bytes from crypto.randomBytes, every one in the token', () => {
    expect(TOKEN_BYTES * 8).toBeGreaterThanOrEqual(128);
    let asked = 0;
    const fixed = (n: number) => {
      asked = n;
      return Buffer.from(Array.from({ length: n }, (_, i) => i * 17));
    };
    const token = mintToken(fixed);
    expect(asked).toBe(16);
    expect(Buffer.from(token, 'base64url')).toEqual(fixed(16));
    expect(() => mintToken(() => Buffer.alloc(8))).toThrow(RangeError);
  });

  it('are distinct and unbiased: each of the 128 bit positions is set in about half of 4,000 tokens', () => {
    const n = 4000;
    const counts = new Array<number>(128).fill(0);
    const seen = new Set<string>();
    for (let i = 0; i < n; i++) {
      const token = mintToken();
      seen.add(token);
      const bytes = Buffer.from(token, 'base64url');
      expect(bytes.length).toBe(16);
      for (let bit = 0; bit < 128; bit++) if ((bytes[bit >> 3]! >> (bit & 7)) & 1) counts[bit]!++;
    }
    expect(seen.size).toBe(n);
    // Binomial(4000, 1/2): sd ≈ 31.6; 7 sd either side fails by chance about once in 10^11 runs.
    for (const c of counts) expect(Math.abs(c - n / 2)).toBeLessThan(7 * Math.sqrt(n / 4));
  });

  it('are kept as their SHA-256; text that cannot be a token has no hash', () => {
    const token = mintToken(randomBytes);
    expect(tokenHash(token)).toMatch(/^[0-9a-f]{64}$/);
    expect(tokenHash(token)).not.toContain(token);
    for (const bad of ['', 'short', 'a'.repeat(21), `${'a'.repeat(22)}/`, '../../etc/passwd', 'a'.repeat(87)]) expect(tokenHash(bad)).toBeUndefined();
  });
});

describe('linkStatus (injected clock)', () => {
  const start = '2027-06-15T14:30:00+02:00';
  const link: VideoLink = { tokenHash: 'a'.repeat(64), appointmentId: 'A1', patientId: 'P', deliveryId: 'd', start, mintedAt: '2027-06-15T12:00:00Z' };
  const state = (extra: Partial<SubjectState> = {}): SubjectState => ({ kind: 'appointment', id: 'A1', patientId: 'P', status: 'booked', start, end: '2027-06-15T15:00:00+02:00', asOf: '2027-06-01T00:00:00Z', ...extra });
  const window = { opensMinutesBefore: 60, closesMinutesAfter: 30 };
  const at = (iso: string) => Date.parse(iso);

  it('opens an hour before the start and closes 30 minutes after the end (the start without an end)', () => {
    expect(linkStatus(link, state(), true, at('2027-06-15T13:29:59+02:00'), window)).toEqual({ state: LinkState.Early, opensAt: at('2027-06-15T13:30:00+02:00') });
    expect(linkStatus(link, state(), true, at('2027-06-15T13:30:00+02:00'), window)).toEqual({ state: LinkState.Open, closesAt: at('2027-06-15T15:30:00+02:00') });
    expect(linkStatus(link, state(), true, at('2027-06-15T15:29:59+02:00'), window).state).toBe(LinkState.Open);
    expect(linkStatus(link, state(), true, at('2027-06-15T15:30:00+02:00'), window).state).toBe(LinkState.Ended);
    const noEnd = state();
    delete noEnd.end;
    expect(linkStatus(link, noEnd, true, at('2027-06-15T15:00:00+02:00'), window).state).toBe(LinkState.Ended);
    expect(linkStatus(link, state(), true, at('2027-06-15T14:00:00+02:00'), { opensMinutesBefore: 15, closesMinutesAfter: 0 }).state).toBe(LinkState.Early);
  });

  it('is dead once the appointment is cancelled, moved, fulfilled or without join information, whatever the time', () => {
    const now = at('2027-06-15T14:30:00+02:00');
    for (const status of ['cancelled', 'noshow', 'entered-in-error']) expect(linkStatus(link, state({ status }), true, now, window).state).toBe(LinkState.Cancelled);
    expect(linkStatus(link, state({ start: '2027-06-16T14:30:00+02:00' }), true, now, window).state).toBe(LinkState.Moved);
    // The same instant written with another offset is not a move.
    expect(linkStatus(link, state({ start: '2027-06-15T12:30:00Z' }), true, now, window).state).toBe(LinkState.Open);
    expect(linkStatus(link, state({ status: 'fulfilled' }), true, now, window).state).toBe(LinkState.Ended);
    expect(linkStatus(link, state(), false, now, window).state).toBe(LinkState.Unavailable);
    expect(linkStatus(link, undefined, true, now, window).state).toBe(LinkState.Unavailable);
    expect(linkStatus(undefined, state(), true, now, window).state).toBe(LinkState.Unknown);
    // Checked in for the visit: still joinable.
    expect(linkStatus(link, state({ status: 'arrived' }), true, now, window).state).toBe(LinkState.Open);
  });
});
