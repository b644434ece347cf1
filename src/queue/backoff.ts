// Retry timing shared by every queue backend: exponential backoff with full jitter
// (delay = random in [0, min(cap, base · 2^(attempt−1))]), never sooner than a provider's
// Retry-After (docs/reliability.md promise 5), for as long as the retry span lasts. Full jitter
// spreads a burst of failures from one outage over the whole window instead of retrying them in
// lock-step.
//
// What counts. A run that failed counts as an attempt (the exponent, maxAttempts). A run the
// provider refused to take yet (RateLimitedError, a 429 with Retry-After) and a run the handler
// put back itself (Deferral: a local rate limit, an output's concurrency cap or open circuit) do
// not: they wait, they do not use up the delivery's chances. The span bounds everything that is
// a failure — failed attempts, rate limits, an open circuit —, measured from the first of them:
// no job is retried for longer than spanMs, whatever its attempts.
import { failureClassOf, RateLimitedError, TransientError, type FailureClass } from '../errors.ts';
import { Deferral, QueueErrorCode, type QueueOptions, type RetryPolicy } from './queue.ts';

/**
 * Default policy: base 5 s, cap 1 h, a span of 24 h, at most 100 attempts.
 * Ceilings after failed attempt n: 5 s, 10 s, 20 s, 40 s, 80 s, 160 s, 320 s, 640 s,
 * 1,280 s, 2,560 s (n = 1..10, together 5,115 s ≈ 85 min), then 3,600 s. With full jitter a
 * retry comes on average half its ceiling later, so a delivery failing for a whole day gets
 * about 50 attempts (≈ 10 in the first 85 min, then one every 30 min on average) and is
 * dead-lettered 24 h after its first failure, its last attempt at that time at the latest.
 * maxAttempts only stops a job whose clock misbehaves; the span is what ends retries.
 * Operators set the three times in `server.deliveries.retry` (config/server-schema.ts).
 */
export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = Object.freeze({
  baseMs: 5_000,
  capMs: 3_600_000,
  spanMs: 86_400_000,
  maxAttempts: 100,
});

/** Upper bound of the wait after failed attempt `attempt` (1-based), ms. */
export function backoffCeilingMs(policy: Pick<RetryPolicy, 'baseMs' | 'capMs'>, attempt: number): number {
  // 2^(attempt−1) overflows nothing here: past ~40 doublings the cap has long won.
  const exponent = Math.min(Math.max(attempt - 1, 0), 40);
  return Math.min(policy.capMs, policy.baseMs * 2 ** exponent);
}

/**
 * Delay before the next attempt after failed attempt `attempt`, ms: full jitter, and never
 * less than `retryAfterMs` when the failure carried one.
 */
export function retryDelayMs(
  policy: Pick<RetryPolicy, 'baseMs' | 'capMs'>,
  attempt: number,
  random: () => number,
  retryAfterMs?: number,
): number {
  const jittered = Math.floor(random() * (backoffCeilingMs(policy, attempt) + 1));
  const floor = retryAfterMs !== undefined && Number.isFinite(retryAfterMs) && retryAfterMs > 0 ? retryAfterMs : 0;
  return Math.max(jittered, Math.ceil(floor));
}

export interface NormalizedQueueOptions {
  now: () => number;
  leaseMs: number;
  leaseRenewMs: number;
  retry: RetryPolicy;
  random: () => number;
  maxPollIntervalMs: number;
}

/** Fill defaults and refuse nonsense in one place (docs/contributing.md habit 8). */
export function normalizeQueueOptions(options: QueueOptions = {}): NormalizedQueueOptions {
  const leaseMs = options.leaseMs ?? 30_000;
  const retry: RetryPolicy = { ...DEFAULT_RETRY_POLICY, ...options.retry };
  const normalized: NormalizedQueueOptions = {
    now: options.now ?? Date.now,
    leaseMs,
    leaseRenewMs: options.leaseRenewMs ?? Math.max(1, Math.floor(leaseMs / 3)),
    retry,
    random: options.random ?? Math.random,
    maxPollIntervalMs: options.maxPollIntervalMs ?? 1_000,
  };
  const positive: [string, number][] = [
    ['leaseMs', normalized.leaseMs],
    ['leaseRenewMs', normalized.leaseRenewMs],
    ['retry.baseMs', retry.baseMs],
    ['retry.capMs', retry.capMs],
    ['retry.spanMs', retry.spanMs],
    ['maxPollIntervalMs', normalized.maxPollIntervalMs],
  ];
  for (const [name, value] of positive) {
    if (!(Number.isFinite(value) && value > 0)) {
      throw new RangeError(`queue options: ${name} must be a positive number of milliseconds, got ${value}`);
    }
  }
  if (!(Number.isInteger(retry.maxAttempts) && retry.maxAttempts >= 1)) {
    throw new RangeError(`queue options: retry.maxAttempts must be an integer ≥ 1, got ${retry.maxAttempts}`);
  }
  if (normalized.leaseRenewMs >= leaseMs) {
    throw new RangeError(
      `queue options: leaseRenewMs (${normalized.leaseRenewMs}) must be shorter than leaseMs (${leaseMs}), ` +
        'or the lease lapses between renewals',
    );
  }
  return normalized;
}

/** What a failed (or deferred) run leads to. */
export type FailureOutcome =
  | {
      next: 'retry';
      runAtMs: number;
      failureClass: FailureClass;
      code: string;
      /** False for a rate-limited run: it does not use up an attempt. */
      counted: boolean;
    }
  | { next: 'parked'; failureClass: FailureClass; code: string; counted: true }
  | { next: 'dead'; failureClass: FailureClass; code: string; counted: boolean }
  /**
   * The handler put the job back (Deferral): pending at runAtMs, not an attempt. `failure`
   * when the wait counts in the retry span (an open circuit): recorded as the job's last error.
   */
  | { next: 'deferred'; runAtMs: number; failure?: { failureClass: FailureClass; code: string } };

/** Where a job is in its retries, as the backend stores it. */
export interface RetryState {
  /** Counted attempts so far, this run included (runs started minus deferred ones). */
  attempt: number;
  maxAttempts: number;
  idempotent: boolean;
  /** Epoch ms of the first failure since the job was added or replayed; undefined: none yet. */
  firstFailedAtMs?: number;
}

/** The instant the retry span of a job ends (spanMs after its first failure, or after now). */
export function spanEndMs(policy: Pick<RetryPolicy, 'spanMs'>, job: Pick<RetryState, 'firstFailedAtMs'>, nowMs: number): number {
  return (job.firstFailedAtMs ?? nowMs) + policy.spanMs;
}

/**
 * The one place where a failure class becomes a decision (docs/architecture.md invariant 4);
 * every backend calls it so they cannot drift apart.
 *
 * @param interrupted the handler failed after close() aborted it: a transient failure is
 *   then retried at once (the next start picks it up) without spending backoff.
 */
export function decideFailure(
  error: unknown,
  job: RetryState,
  policy: Pick<RetryPolicy, 'baseMs' | 'capMs' | 'spanMs'>,
  nowMs: number,
  random: () => number,
  interrupted = false,
): FailureOutcome {
  const spanEnd = spanEndMs(policy, job, nowMs);
  if (error instanceof Deferral) {
    if (!error.inSpan) return { next: 'deferred', runAtMs: Math.max(nowMs, error.runAtMs) };
    const failure = { failureClass: 'transient' as const, code: error.code };
    // The wait counts in the span: past its end the job is dead with the deferral's code.
    if (nowMs >= spanEnd) return { next: 'dead', ...failure, counted: false };
    return { next: 'deferred', runAtMs: Math.min(Math.max(nowMs, error.runAtMs), spanEnd), failure };
  }
  const failureClass = failureClassOf(error);
  const code = errorCodeOf(error);
  // A provider's "not now" (429 + Retry-After): the job waits without using up an attempt.
  const counted = !(error instanceof RateLimitedError);
  switch (failureClass) {
    case 'permanent':
      return { next: 'dead', failureClass, code, counted: true };
    case 'ambiguous':
      if (!job.idempotent) return { next: 'parked', failureClass, code, counted: true };
      break;
    case 'transient':
      break;
    default:
      failureClass satisfies never;
  }
  if (counted && job.attempt >= job.maxAttempts) return { next: 'dead', failureClass, code, counted };
  if (interrupted && failureClass === 'transient') {
    return { next: 'retry', runAtMs: nowMs, failureClass, code: QueueErrorCode.Interrupted, counted: false };
  }
  // The span is over: no more tries (its last one ran at its end).
  if (nowMs >= spanEnd) return { next: 'dead', failureClass, code, counted };
  const retryAfterMs = error instanceof TransientError ? error.retryAfterMs : undefined;
  const runAtMs = nowMs + retryDelayMs(policy, job.attempt, random, retryAfterMs);
  if (runAtMs > spanEnd) {
    // The span ends before the next try would: one last try at its end, or dead when the
    // span is over or a provider's Retry-After reaches past it.
    if (retryAfterMs !== undefined && nowMs + retryAfterMs > spanEnd) return { next: 'dead', failureClass, code, counted };
    return { next: 'retry', runAtMs: spanEnd, failureClass, code, counted };
  }
  return { next: 'retry', runAtMs, failureClass, code, counted };
}

/** What a backend writes for a decided failure (the same in every backend's finish). */
export interface FailureRecord {
  /** The failure to record as the job's last error; absent: a plain deferral keeps the last one. */
  failure?: { failureClass: FailureClass; code: string };
  /** Epoch ms the job is pending again from; absent when it is parked or dead. */
  runAtMs?: number;
  /** The run was not an attempt (deferred, rate-limited). */
  free: boolean;
  /** The run starts the retry span (a failure, unless a shutdown cut it short). */
  startsSpan: boolean;
  /** The reason code for events and hand-overs. */
  code: string;
}

/** How `decision` (decideFailure on `error`) is recorded. */
export function failureRecord(decision: FailureOutcome, error: unknown): FailureRecord {
  const failure = decision.next === 'deferred' ? decision.failure : { failureClass: decision.failureClass, code: decision.code };
  return {
    ...(failure !== undefined ? { failure } : {}),
    ...(decision.next === 'retry' || decision.next === 'deferred' ? { runAtMs: decision.runAtMs } : {}),
    free: decision.next === 'deferred' || !decision.counted,
    // A run cut short by a shutdown is no failure of the job: the span does not start.
    startsSpan: failure !== undefined && failure.code !== QueueErrorCode.Interrupted,
    code: failure?.code ?? (error instanceof Deferral ? error.code : QueueErrorCode.Unclassified),
  };
}

/** A loggable reason code: the error's `code` when it is a short token, else 'unclassified'. */
export function errorCodeOf(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  // Codes are allow-listed tokens (errors.ts); anything else could carry data, so it is
  // replaced rather than stored.
  if (typeof code === 'string' && /^[A-Za-z0-9_.:-]{1,64}$/.test(code)) return code;
  return QueueErrorCode.Unclassified;
}
