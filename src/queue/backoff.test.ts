import { describe, expect, it } from 'vitest';
import { AmbiguousError, PermanentError, RateLimitedError, TransientError } from '../errors.ts';
import { Deferral } from './queue.ts';
import { backoffCeilingMs, decideFailure, DEFAULT_RETRY_POLICY, errorCodeOf, retryDelayMs } from './backoff.ts';

describe('backoff', () => {
  it('doubles the ceiling from the base up to the cap', () => {
    const policy = { baseMs: 5_000, capMs: 3_600_000 };
    expect([1, 2, 3, 10, 11, 18, 500].map((n) => backoffCeilingMs(policy, n))).toEqual([
      5_000, 10_000, 20_000, 2_560_000, 3_600_000, 3_600_000, 3_600_000,
    ]);
  });

  it('matches the figures documented for the default policy: a day, about 50 attempts', () => {
    expect(DEFAULT_RETRY_POLICY).toMatchObject({ baseMs: 5_000, capMs: 3_600_000, spanMs: 86_400_000 });
    let ceilings = 0;
    for (let attempt = 1; attempt <= 10; attempt++) ceilings += backoffCeilingMs(DEFAULT_RETRY_POLICY, attempt);
    expect(ceilings).toBe(5_115_000);
    // Expected delays are half the ceilings: 10 retries in ≈ 43 min, then one per 30 min.
    const expected = 10 + (DEFAULT_RETRY_POLICY.spanMs - ceilings / 2) / (DEFAULT_RETRY_POLICY.capMs / 2);
    expect(Math.round(expected)).toBe(57);
    expect(DEFAULT_RETRY_POLICY.maxAttempts).toBeGreaterThan(expected);
  });

  it('draws the delay from [0, ceiling] and never below retryAfterMs', () => {
    const policy = { baseMs: 1_000, capMs: 8_000 };
    expect(retryDelayMs(policy, 3, () => 0)).toBe(0);
    expect(retryDelayMs(policy, 3, () => 0.999_999_9)).toBe(4_000);
    expect(retryDelayMs(policy, 3, () => 0.5)).toBe(2_000);
    expect(retryDelayMs(policy, 1, () => 0.5, 90_000)).toBe(90_000);
    expect(retryDelayMs(policy, 4, () => 0.999_999_9, 1_500)).toBe(8_000);
  });

  const policy = { baseMs: 1_000, capMs: 8_000, spanMs: 60_000 };
  const job = { attempt: 1, maxAttempts: 3, idempotent: false };
  const random = () => 0.5;

  it('turns each failure class into its decision', () => {
    expect(decideFailure(new TransientError('timeout', 'x', { retryAfterMs: 30_000 }), job, policy, 100, random)).toEqual({
      next: 'retry',
      runAtMs: 30_100,
      failureClass: 'transient',
      code: 'timeout',
      counted: true,
    });
    expect(decideFailure(new PermanentError('recipient_invalid', 'x'), job, policy, 100, random)).toEqual({
      next: 'dead',
      failureClass: 'permanent',
      code: 'recipient_invalid',
      counted: true,
    });
    expect(decideFailure(new AmbiguousError('connection_dropped', 'x'), job, policy, 100, random).next).toBe('parked');
    expect(decideFailure(new AmbiguousError('connection_dropped', 'x'), { ...job, idempotent: true }, policy, 100, random).next).toBe(
      'retry',
    );
    expect(decideFailure(new TransientError('timeout', 'x'), { ...job, attempt: 3 }, policy, 100, random)).toEqual({
      next: 'dead',
      failureClass: 'transient',
      code: 'timeout',
      counted: true,
    });
    expect(decideFailure(new Error('aborted'), job, policy, 100, random, true)).toEqual({
      next: 'retry',
      runAtMs: 100,
      failureClass: 'transient',
      code: 'interrupted',
      counted: false,
    });
  });

  it('retries a rate-limited run after its Retry-After without using up an attempt, even on the last one', () => {
    const limited = new RateLimitedError('webhook_rate_limited', '429', { retryAfterMs: 5_000 });
    expect(decideFailure(limited, { ...job, attempt: 3 }, policy, 100, random)).toEqual({
      next: 'retry',
      runAtMs: 5_100,
      failureClass: 'transient',
      code: 'webhook_rate_limited',
      counted: false,
    });
  });

  it('stops retrying at the end of the span: a last try at its end, then dead', () => {
    const long = { ...job, maxAttempts: 100 };
    // First failed at 0, span 60 s: a retry drawn past 60 s is moved to 60 s.
    expect(decideFailure(new TransientError('timeout', 'x'), { ...long, attempt: 8, firstFailedAtMs: 0 }, policy, 55_000, () => 0.99)).toMatchObject({
      next: 'retry',
      runAtMs: 60_000,
    });
    expect(decideFailure(new TransientError('timeout', 'x'), { ...long, attempt: 9, firstFailedAtMs: 0 }, policy, 60_000, () => 0)).toEqual({
      next: 'dead',
      failureClass: 'transient',
      code: 'timeout',
      counted: true,
    });
    // A Retry-After reaching past the span's end: dead now rather than a try the provider refuses.
    expect(decideFailure(new RateLimitedError('x_rate_limited', '429', { retryAfterMs: 10_000 }), { ...long, firstFailedAtMs: 0 }, policy, 55_000, random).next).toBe('dead');
  });

  it('puts a deferred run back without a failure, or within the span when it counts in it', () => {
    expect(decideFailure(new Deferral(5_000, 'output_busy'), { ...job, attempt: 3 }, policy, 100, random)).toEqual({ next: 'deferred', runAtMs: 5_000 });
    expect(decideFailure(new Deferral(50, 'output_busy'), job, policy, 100, random)).toEqual({ next: 'deferred', runAtMs: 100 });
    expect(decideFailure(new Deferral(90_000, 'circuit_open', { inSpan: true }), { ...job, firstFailedAtMs: 0 }, policy, 100, random)).toEqual({
      next: 'deferred',
      runAtMs: 60_000,
      failure: { failureClass: 'transient', code: 'circuit_open' },
    });
    expect(decideFailure(new Deferral(90_000, 'circuit_open', { inSpan: true }), { ...job, firstFailedAtMs: 0 }, policy, 60_000, random)).toEqual({
      next: 'dead',
      failureClass: 'transient',
      code: 'circuit_open',
      counted: false,
    });
  });

  it('keeps only token-like codes, so an error cannot smuggle data into the record', () => {
    expect(errorCodeOf(Object.assign(new Error('x'), { code: 'ECONNRESET' }))).toBe('ECONNRESET');
    expect(errorCodeOf(Object.assign(new Error('x'), { code: 'CANARY PATIENT NAME' }))).toBe('unclassified');
    expect(errorCodeOf('a string')).toBe('unclassified');
    expect(errorCodeOf(null)).toBe('unclassified');
  });
});
