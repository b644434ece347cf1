// Failure classes (docs/architecture.md invariant 4). Code that fails says what kind of failure
// it is, where it happens; the queue decides what each class means (retry, park, dead-letter).
// This module imports nothing.

export type FailureClass = 'transient' | 'ambiguous' | 'permanent';

abstract class ClassifiedError extends Error {
  abstract readonly failureClass: FailureClass;
  /** Machine-readable reason code from an allow-list: safe to log. */
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** Worth retrying with backoff; `retryAfterMs` honours a provider's Retry-After. */
export class TransientError extends ClassifiedError {
  readonly failureClass = 'transient';
  readonly retryAfterMs?: number;

  constructor(code: string, message: string, options?: { cause?: unknown; retryAfterMs?: number }) {
    super(code, message, options);
    this.retryAfterMs = options?.retryAfterMs;
  }
}

/**
 * The provider refused to take more for now (HTTP 429, Twilio 20429, SMTP 421/451 rate
 * limits): retry no sooner than `retryAfterMs` when the provider said when. Still a
 * TransientError; the distinct class lets the delivery engine slow the whole output down
 * rather than only this delivery.
 */
export class RateLimitedError extends TransientError {}

/**
 * What a provider's refusal says about the recipient's address, for the consent ledger
 * (docs/consent.md rules 2 and 8). The engine acts on it for the delivery's own address; the
 * error never carries the address itself.
 */
export const RecipientSignal = {
  /** The recipient opted out at the provider (Twilio 21610: replied STOP to this sender). */
  OptedOut: 'opted_out',
  /** The address cannot take this channel: not a valid number, not a mobile (Twilio 21211, 21614). */
  Unfit: 'unfit',
  /** The mailbox does not exist or refuses mail for good (an SMTP 5xx answer to RCPT TO). */
  HardBounce: 'hard_bounce',
} as const;
export type RecipientSignal = (typeof RecipientSignal)[keyof typeof RecipientSignal];

/** The outcome is unknown (the request may have been delivered): retry only when idempotent. */
export class AmbiguousError extends ClassifiedError {
  readonly failureClass = 'ambiguous';
}

/** Will never succeed as is: dead-letter now, with the reason. */
export class PermanentError extends ClassifiedError {
  readonly failureClass = 'permanent';
}

/**
 * A permanent refusal because of the recipient (opted out, unfit address, hard bounce):
 * `signal` says which, `providerCode` is the provider's own code (e.g. "21610", "550"),
 * both safe to log.
 */
export class RecipientError extends PermanentError {
  readonly signal: RecipientSignal;
  readonly providerCode?: string;

  constructor(signal: RecipientSignal, code: string, message: string, options?: { cause?: unknown; providerCode?: string }) {
    super(code, message, options);
    this.signal = signal;
    this.providerCode = options?.providerCode;
  }
}

export function failureClassOf(error: unknown): FailureClass {
  if (error instanceof ClassifiedError) return error.failureClass;
  // Unclassified errors are bugs or unexpected I/O faults: retrying is the safe default
  // only for code that cannot have had a side effect; callers that send must classify.
  return 'transient';
}

/**
 * A configuration problem at a precise place. Config loading collects every one of these
 * before refusing to start (docs/architecture.md invariant 5).
 */
export interface ConfigIssue {
  file: string;
  line?: number;
  column?: number;
  /** JSON-pointer-like path inside the document, e.g. `/inputs/0/port`. */
  path?: string;
  message: string;
}

export class ConfigError extends Error {
  readonly issues: ConfigIssue[];

  constructor(issues: ConfigIssue[]) {
    super(issues.map(formatConfigIssue).join('\n'));
    this.name = 'ConfigError';
    this.issues = issues;
  }
}

export function formatConfigIssue(issue: ConfigIssue): string {
  const where =
    issue.line !== undefined ? `${issue.file}:${issue.line}:${issue.column ?? 1}` : issue.file;
  return `${where}: ${issue.message}`;
}
