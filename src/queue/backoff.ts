// Retry timing shared by every queue backend: exponential backoff with full jitter
// (delay = random in [0, min(cap, base · 2^(attempt−1))]), never sooner than a provider's
// Retry-After (docs/reliability.md promise 5). Full jitter spreads a burst of failures from one
// outage over the whole window instead of retrying them in lock-step.
import { failureClassOf, TransientError, type FailureClass } from '../errors.ts';
import { QueueErrorCode, type QueueOptions, type RetryPolicy } from './queue.ts';

/**
 * Default policy: base 5 s, cap 1 h, 19 attempts (the first run + 18 retries).
 * Ceilings after failed attempt n: 5 s, 10 s, 20 s, 40 s, 80 s, 160 s, 320 s, 640 s,
 * 1,280 s, 2,560 s (n = 1..10, together 5,115 s ≈ 85 min), then 3,600 s for n = 11..18
 * (28,800 s). Worst case from first failure to dead: 33,915 s ≈ 9.4 h; with full jitter
 * the expected span is half that, ≈ 4.7 h. A longer window is a per-job `maxAttempts`
 * (each extra attempt adds at most 1 h), and a dead job can always be replayed.
 */
export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = Object.freeze({
  baseMs: 5_000,
  capMs: 3_600_000,
  maxAttempts: 19,
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

/** What a failed attempt leads to. */
export type FailureOutcome =
  | { next: 'retry'; runAtMs: number; failureClass: FailureClass; code: string }
  | { next: 'parked'; failureClass: FailureClass; code: string }
  | { next: 'dead'; failureClass: FailureClass; code: string };

/**
 * The one place where a failure class becomes a decision (docs/architecture.md invariant 4);
 * every backend calls it so they cannot drift apart.
 *
 * @param interrupted the handler failed after close() aborted it: a transient failure is
 *   then retried at once (the next start picks it up) without spending backoff.
 */
export function decideFailure(
  error: unknown,
  job: { attempt: number; maxAttempts: number; idempotent: boolean },
  policy: Pick<RetryPolicy, 'baseMs' | 'capMs'>,
  nowMs: number,
  random: () => number,
  interrupted = false,
): FailureOutcome {
  const failureClass = failureClassOf(error);
  const code = errorCodeOf(error);
  switch (failureClass) {
    case 'permanent':
      return { next: 'dead', failureClass, code };
    case 'ambiguous':
      if (!job.idempotent) return { next: 'parked', failureClass, code };
      break;
    case 'transient':
      break;
    default:
      failureClass satisfies never;
  }
  if (job.attempt >= job.maxAttempts) return { next: 'dead', failureClass, code };
  if (interrupted && failureClass === 'transient') {
    return { next: 'retry', runAtMs: nowMs, failureClass, code: QueueErrorCode.Interrupted };
  }
  const retryAfterMs = error instanceof TransientError ? error.retryAfterMs : undefined;
  return { next: 'retry', runAtMs: nowMs + retryDelayMs(policy, job.attempt, random, retryAfterMs), failureClass, code };
}

/** A loggable reason code: the error's `code` when it is a short token, else 'unclassified'. */
export function errorCodeOf(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  // Codes are allow-listed tokens (errors.ts); anything else could carry data, so it is
  // replaced rather than stored.
  if (typeof code === 'string' && /^[A-Za-z0-9_.:-]{1,64}$/.test(code)) return code;
  return QueueErrorCode.Unclassified;
}
