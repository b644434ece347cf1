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

/** The outcome is unknown (the request may have been delivered): retry only when idempotent. */
export class AmbiguousError extends ClassifiedError {
  readonly failureClass = 'ambiguous';
}

/** Will never succeed as is: dead-letter now, with the reason. */
export class PermanentError extends ClassifiedError {
  readonly failureClass = 'permanent';
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
