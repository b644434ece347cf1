import { describe, expect, it } from 'vitest';
import { AmbiguousError, PermanentError, TransientError } from '../errors.ts';
import { backoffCeilingMs, decideFailure, DEFAULT_RETRY_POLICY, errorCodeOf, retryDelayMs } from './backoff.ts';

describe('backoff', () => {
  it('doubles the ceiling from the base up to the cap', () => {
    const policy = { baseMs: 5_000, capMs: 3_600_000 };
    expect([1, 2, 3, 10, 11, 18, 500].map((n) => backoffCeilingMs(policy, n))).toEqual([
      5_000, 10_000, 20_000, 2_560_000, 3_600_000, 3_600_000, 3_600_000,
    ]);
  });

  it('matches the totals documented for the default policy (≈ 9.4 h worst case)', () => {
    let worst = 0;
    for (let attempt = 1; attempt < DEFAULT_RETRY_POLICY.maxAttempts; attempt++) {
      worst += backoffCeilingMs(DEFAULT_RETRY_POLICY, attempt);
    }
    expect(worst).toBe(33_915_000);
  });

  it('draws the delay from [0, ceiling] and never below retryAfterMs', () => {
    const policy = { baseMs: 1_000, capMs: 8_000 };
    expect(retryDelayMs(policy, 3, () => 0)).toBe(0);
    expect(retryDelayMs(policy, 3, () => 0.999_999_9)).toBe(4_000);
    expect(retryDelayMs(policy, 3, () => 0.5)).toBe(2_000);
    expect(retryDelayMs(policy, 1, () => 0.5, 90_000)).toBe(90_000);
    expect(retryDelayMs(policy, 4, () => 0.999_999_9, 1_500)).toBe(8_000);
  });

  it('turns each failure class into its decision', () => {
    const policy = { baseMs: 1_000, capMs: 8_000 };
    const job = { attempt: 1, maxAttempts: 3, idempotent: false };
    const random = () => 0.5;
    expect(decideFailure(new TransientError('rate_limited', 'x', { retryAfterMs: 30_000 }), job, policy, 100, random)).toEqual({
      next: 'retry',
      runAtMs: 30_100,
      failureClass: 'transient',
      code: 'rate_limited',
    });
    expect(decideFailure(new PermanentError('recipient_invalid', 'x'), job, policy, 100, random)).toEqual({
      next: 'dead',
      failureClass: 'permanent',
      code: 'recipient_invalid',
    });
    expect(decideFailure(new AmbiguousError('connection_dropped', 'x'), job, policy, 100, random).next).toBe('parked');
    expect(decideFailure(new AmbiguousError('connection_dropped', 'x'), { ...job, idempotent: true }, policy, 100, random).next).toBe(
      'retry',
    );
    expect(decideFailure(new TransientError('timeout', 'x'), { ...job, attempt: 3 }, policy, 100, random)).toEqual({
      next: 'dead',
      failureClass: 'transient',
      code: 'timeout',
    });
    expect(decideFailure(new Error('aborted'), job, policy, 100, random, true)).toEqual({
      next: 'retry',
      runAtMs: 100,
      failureClass: 'transient',
      code: 'interrupted',
    });
  });

  it('keeps only token-like codes, so an error cannot smuggle data into the record', () => {
    expect(errorCodeOf(Object.assign(new Error('x'), { code: 'ECONNRESET' }))).toBe('ECONNRESET');
    expect(errorCodeOf(Object.assign(new Error('x'), { code: 'CANARY PATIENT NAME' }))).toBe('unclassified');
    expect(errorCodeOf('a string')).toBe('unclassified');
    expect(errorCodeOf(null)).toBe('unclassified');
  });
});
