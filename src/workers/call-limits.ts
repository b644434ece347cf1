// The three limits the delivery engine keeps in front of an output (outputs/spec.ts
// OutputLimits), each small and clock-injected so tests drive them with a fake clock:
//
//   CallWindow   at most `burst` calls in any window of burst / ratePerSecond seconds: a token
//                bucket whose tokens come back exactly one window after they were spent. This
//                is how providers word their limits ("5 requests per second per account",
//                "100 per 10 seconds per app"): a classic refilling bucket of the same size
//                would let twice `burst` through in one window. A call that cannot go now gets
//                a reserved time, so a burst of deliveries comes back spread at the rate
//                instead of all at once.
//   DailyQuota   calls per UTC day (a daily allocation), counted in this process.
//   Slots        calls in flight at once; a call waits off the workers when no slot is free.
//
// Times are epoch ms on the engine's clock (CallWindow, DailyQuota) or real time (Slots: how
// long a worker is held is a matter of real time, whatever the tests' clock says).
import { performance } from 'node:perf_hooks';

/** Lowest share of its declared rate an output is slowed to after a provider's 429s. */
const MIN_RATE_FACTOR = 1 / 8;
/** After this long without a 429 a slowed output gets twice its current rate back, ms. */
const RECOVER_EVERY_MS = 60_000;

/** Index of the first element of sorted `a` that is > x. */
function upperBound(a: readonly number[], x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Index of the first element of sorted `a` that is ≥ x. */
function lowerBound(a: readonly number[], x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export class CallWindow {
  readonly burst: number;
  readonly #baseWindowMs: number;
  /** 1 normally; halved by each provider 429 (down to MIN_RATE_FACTOR), doubled back over time. */
  #factor = 1;
  #recoverAt = 0;
  /** No call before this instant (a provider's Retry-After). */
  #blockedUntil = 0;
  /** Times of calls made and reserved, sorted. */
  #times: number[] = [];
  readonly #reserved = new Map<string, { at: number; calls: number }>();

  /** `ratePerSecond` sustained, `burst` at once (default: the rate, at least 1). */
  constructor(ratePerSecond: number, burst?: number) {
    if (!(ratePerSecond > 0)) throw new RangeError(`ratePerSecond must be positive, got ${ratePerSecond}`);
    this.burst = Math.max(1, Math.floor(burst ?? Math.max(1, ratePerSecond)));
    this.#baseWindowMs = (this.burst / ratePerSecond) * 1000;
  }

  /** The window `burst` calls fit in now (longer while slowed after 429s), ms. */
  get windowMs(): number {
    return this.#baseWindowMs / this.#factor;
  }

  /** Share of the declared rate in force (1, ½, ¼, ⅛). */
  get rateFactor(): number {
    return this.#factor;
  }

  get blockedUntil(): number {
    return this.#blockedUntil;
  }

  /**
   * Takes `calls` tokens for `key` (a job): returns `now` when the call may go now (the tokens
   * are spent), else the later time reserved for it (the tokens are held for that time; the
   * key's next take uses them). A key that comes back takes its reservation again.
   */
  take(now: number, key: string, calls = 1): number {
    const k = Math.min(Math.max(1, Math.floor(calls)), this.burst);
    if (this.#factor < 1 && now >= this.#recoverAt) {
      this.#factor = Math.min(1, this.#factor * 2);
      this.#recoverAt = now + RECOVER_EVERY_MS;
    }
    this.#prune(now);
    const held = this.#reserved.get(key);
    if (held !== undefined) {
      this.#reserved.delete(key);
      this.#remove(held.at, held.calls);
    }
    const at = this.#earliest(Math.max(now, this.#blockedUntil), k);
    const i = lowerBound(this.#times, at);
    this.#times.splice(i, 0, ...new Array<number>(k).fill(at));
    if (at > now) this.#reserved.set(key, { at, calls: k });
    return at;
  }

  /** Gives back tokens taken at `at` for a call that was not made (a suppression). */
  refund(at: number, calls = 1): void {
    this.#remove(at, Math.min(Math.max(1, Math.floor(calls)), this.burst));
  }

  /**
   * The provider said "slow down" (429): no call before `until`, and half the rate for a
   * while (it comes back, doubling, after RECOVER_EVERY_MS without another 429).
   */
  slowDown(now: number, until: number): void {
    this.#blockedUntil = Math.max(this.#blockedUntil, until);
    this.#factor = Math.max(MIN_RATE_FACTOR, this.#factor / 2);
    this.#recoverAt = Math.max(now, until) + RECOVER_EVERY_MS;
  }

  /** Calls made or reserved in [from, to). */
  countBetween(from: number, to: number): number {
    return lowerBound(this.#times, to) - lowerBound(this.#times, from);
  }

  #remove(at: number, calls: number): void {
    let i = lowerBound(this.#times, at);
    let n = 0;
    while (i < this.#times.length && this.#times[i] === at && n < calls) n++, i++;
    if (n > 0) this.#times.splice(i - n, n);
  }

  /** Drops what no window reaching `now` can hold any more (and reservations never taken up). */
  #prune(now: number): void {
    const horizon = now - this.windowMs;
    const first = lowerBound(this.#times, horizon);
    if (first > 0) this.#times.splice(0, first);
    for (const [key, r] of this.#reserved) if (r.at < horizon) this.#reserved.delete(key);
  }

  /**
   * Whether `k` calls at `t` keep every window [x, x + W) that holds t within `burst`: the
   * windows that can hold the most start at t or at a time already in the list.
   */
  #fits(t: number, k: number): boolean {
    const w = this.windowMs;
    const limit = this.burst - k;
    const inWindow = (x: number) => lowerBound(this.#times, x + w) - lowerBound(this.#times, x);
    if (inWindow(t) > limit) return false;
    for (let i = upperBound(this.#times, t - w); i < this.#times.length && this.#times[i]! <= t; i++) {
      if (inWindow(this.#times[i]!) > limit) return false;
    }
    return true;
  }

  /** The earliest time ≥ t0 where `k` calls fit: t0, or when a time in the list leaves a window. */
  #earliest(t0: number, k: number): number {
    if (this.#fits(t0, k)) return t0;
    const w = this.windowMs;
    for (let i = lowerBound(this.#times, t0 - w); i < this.#times.length; i++) {
      const t = this.#times[i]! + w;
      if (t > t0 && this.#fits(t, k)) return t;
    }
    return this.#times.length === 0 ? t0 : Math.max(t0, this.#times[this.#times.length - 1]! + w);
  }
}

/** Calls per UTC day, counted in this process (a restart starts the day's count again). */
export class DailyQuota {
  readonly perDay: number;
  #day = -1;
  #used = 0;

  constructor(perDay: number) {
    this.perDay = perDay;
  }

  /** The calls used today (UTC) by the clock's `now`. */
  used(now: number): number {
    return Math.floor(now / 86_400_000) === this.#day ? this.#used : 0;
  }

  /** Takes `calls` of today's quota: true, or false when they do not fit today. */
  take(now: number, calls = 1): boolean {
    const day = Math.floor(now / 86_400_000);
    if (day !== this.#day) {
      this.#day = day;
      this.#used = 0;
    }
    if (this.#used + calls > this.perDay) return false;
    this.#used += calls;
    return true;
  }

  refund(now: number, calls = 1): void {
    if (Math.floor(now / 86_400_000) === this.#day) this.#used = Math.max(0, this.#used - calls);
  }

  /** Start of the next UTC day after `now`. */
  static nextDay(now: number): number {
    return (Math.floor(now / 86_400_000) + 1) * 86_400_000;
  }
}

/** A slot held by one call; release it exactly once. */
export interface SlotLease {
  release(): void;
}

/** How long a delivery may wait off its output's calls for a free slot before it is put back, real ms. */
export const SLOT_WAIT_MS = 250;

/**
 * Calls in flight at once. A call that finds every slot taken waits for one in memory when one
 * is expected to free up within SLOT_WAIT_MS (going by how long calls take, and how long the
 * oldest one has been running), and for at most that long; otherwise `acquire` answers
 * undefined at once and the caller puts the delivery back for later (its worker is freed).
 */
export class Slots {
  readonly cap: number;
  #inFlight = 0;
  readonly #started = new Set<{ at: number }>();
  #waiters: Array<{ grant: (lease: SlotLease | undefined) => void; timer: NodeJS.Timeout }> = [];
  /** Moving average of how long a slot is held, real ms. */
  #averageMs = 0;

  constructor(cap: number) {
    this.cap = Math.max(1, Math.floor(cap));
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  get waiting(): number {
    return this.#waiters.length;
  }

  /** Average time a call holds its slot (real ms), 0 before the first one ended. */
  get averageMs(): number {
    return this.#averageMs;
  }

  /** Expected real ms until a slot frees up for a newcomer. */
  expectedWaitMs(): number {
    if (this.#inFlight < this.cap) return 0;
    const now = performance.now();
    let oldest = 0;
    for (const s of this.#started) oldest = Math.max(oldest, now - s.at);
    return (Math.max(this.#averageMs, oldest) * (this.#waiters.length + 1)) / this.cap;
  }

  acquire(signal?: AbortSignal): Promise<SlotLease | undefined> {
    if (this.#inFlight < this.cap) {
      this.#inFlight++;
      return Promise.resolve(this.#lease());
    }
    if (signal?.aborted || this.expectedWaitMs() > SLOT_WAIT_MS) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const waiter = {
        grant: resolve,
        timer: setTimeout(() => {
          this.#waiters = this.#waiters.filter((w) => w !== waiter);
          resolve(undefined);
        }, SLOT_WAIT_MS),
      };
      waiter.timer.unref();
      this.#waiters.push(waiter);
    });
  }

  #lease(): SlotLease {
    const start = { at: performance.now() };
    this.#started.add(start);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.#started.delete(start);
        const held = performance.now() - start.at;
        this.#averageMs = this.#averageMs === 0 ? held : this.#averageMs * 0.8 + held * 0.2;
        const next = this.#waiters.shift();
        if (next === undefined) {
          this.#inFlight--;
          return;
        }
        clearTimeout(next.timer);
        next.grant(this.#lease());
      },
    };
  }
}
