// A circuit breaker per output (docs/reliability.md promise 6): a provider that keeps failing is
// not called by every due delivery in turn — each would hold a worker until its timeout — but
// rested, then probed with one delivery.
//
//   closed ──(failures in a row ≥ N, or failure rate over the last calls ≥ R)──▶ open
//   open ──(openMs passed: the next delivery is the probe)──▶ half_open
//   half_open ──(probe succeeded)──▶ closed        half_open ──(probe failed)──▶ open, 2 × openMs
//
// What counts as a failure is the caller's call (output-gate.ts): transient and ambiguous
// failures of a call; a refusal of one message (4xx) and a rate limit are answers, not outages.
// Times are the engine's clock (epoch ms).

export const CircuitState = {
  /** Calls go. */
  Closed: 'closed',
  /** Failing: no call until openUntil; deliveries wait. */
  Open: 'open',
  /** One delivery is let through as a probe; the others wait for its outcome. */
  HalfOpen: 'half_open',
} as const;
export type CircuitState = (typeof CircuitState)[keyof typeof CircuitState];

export interface CircuitSettings {
  /** Failures in a row that open the circuit. */
  failures: number;
  /** Share of failed calls among the last `window` that opens it. */
  failureRate: number;
  /** Calls the rate is measured over (only once that many were made). */
  window: number;
  /** First open period, ms; doubled after each failed probe. */
  openMs: number;
  maxOpenMs: number;
}

/** What the admin API shows of a circuit (GET /api/outputs). */
export interface CircuitSnapshot {
  state: CircuitState;
  /** ISO instant of the last change of state. */
  since: string;
  failuresInARow: number;
  /** Failed share of the last calls (up to `window`), 0–1. */
  recentFailureRate: number;
  recentCalls: number;
  /** While open: when the probe may go (ISO). */
  openUntil?: string;
  /** The code of the last failure (a reason code, safe to show). */
  lastError?: string;
}

export type Admit = { go: true; probe: boolean } | { go: false; retryAt: number };

export class CircuitBreaker {
  readonly #settings: CircuitSettings;
  readonly #random: () => number;
  readonly #onChange: (state: CircuitState, snapshot: CircuitSnapshot) => void;
  #state: CircuitState = CircuitState.Closed;
  #since: number;
  #openMs: number;
  #openUntil = 0;
  #probe: string | undefined;
  #inARow = 0;
  /** Outcomes of the last calls, true = failed (a ring of `window`). */
  #recent: boolean[] = [];
  #lastError: string | undefined;

  constructor(settings: CircuitSettings, now: number, onChange: (state: CircuitState, snapshot: CircuitSnapshot) => void, random: () => number = Math.random) {
    this.#settings = settings;
    this.#since = now;
    this.#openMs = settings.openMs;
    this.#onChange = onChange;
    this.#random = random;
  }

  get state(): CircuitState {
    return this.#state;
  }

  /** Whether the delivery `key` may call now: closed, or it is the half-open probe. */
  admit(now: number, key: string): Admit {
    if (this.#state === CircuitState.Open) {
      // Spread the waiting deliveries over the next period rather than all at the probe time.
      if (now < this.#openUntil) return { go: false, retryAt: this.#openUntil + Math.floor(this.#random() * this.#openMs) };
      this.#change(CircuitState.HalfOpen, now);
    }
    if (this.#state === CircuitState.HalfOpen) {
      if (this.#probe === undefined || this.#probe === key) {
        this.#probe = key;
        return { go: true, probe: true };
      }
      return { go: false, retryAt: now + Math.floor(this.#openMs / 2 + this.#random() * (this.#openMs / 2)) };
    }
    return { go: true, probe: false };
  }

  /** The delivery admitted as `key` did not call after all (suppressed, deferred): a probe may go again. */
  release(key: string): void {
    if (this.#probe === key) this.#probe = undefined;
  }

  /** The outcome of a call made by `key`. */
  record(now: number, key: string, failed: boolean, code?: string): void {
    if (failed) this.#lastError = code;
    if (this.#state === CircuitState.HalfOpen && this.#probe === key) {
      this.#probe = undefined;
      if (failed) {
        this.#openMs = Math.min(this.#settings.maxOpenMs, this.#openMs * 2);
        this.#open(now);
      } else {
        this.#reset();
        this.#openMs = this.#settings.openMs;
        this.#change(CircuitState.Closed, now);
      }
      return;
    }
    if (this.#state !== CircuitState.Closed) return; // a call begun before it opened
    this.#inARow = failed ? this.#inARow + 1 : 0;
    this.#recent.push(failed);
    if (this.#recent.length > this.#settings.window) this.#recent.shift();
    const rate = this.#failedShare();
    if (this.#inARow >= this.#settings.failures || (this.#recent.length >= this.#settings.window && rate >= this.#settings.failureRate)) {
      this.#open(now);
    }
  }

  snapshot(): CircuitSnapshot {
    return {
      state: this.#state,
      since: new Date(this.#since).toISOString(),
      failuresInARow: this.#inARow,
      recentFailureRate: Number(this.#failedShare().toFixed(3)),
      recentCalls: this.#recent.length,
      ...(this.#state === CircuitState.Open ? { openUntil: new Date(this.#openUntil).toISOString() } : {}),
      ...(this.#lastError !== undefined ? { lastError: this.#lastError } : {}),
    };
  }

  #failedShare(): number {
    return this.#recent.length === 0 ? 0 : this.#recent.filter(Boolean).length / this.#recent.length;
  }

  #open(now: number): void {
    this.#openUntil = now + this.#openMs;
    this.#change(CircuitState.Open, now);
    this.#reset();
  }

  #reset(): void {
    this.#inARow = 0;
    this.#recent = [];
  }

  #change(state: CircuitState, now: number): void {
    const failures = this.#inARow;
    this.#state = state;
    this.#since = now;
    this.#onChange(state, { ...this.snapshot(), failuresInARow: failures });
  }
}
