// What stands between a due delivery and its output's adapter (docs/reliability.md promises 5
// and 6): every call to a provider passes here first, so that no adapter ever has to slow
// itself down and one bad output never holds the workers the others need.
//
//   circuit (per output) ─▶ daily quota ─▶ a slot (calls in flight) ─▶ call window (rate)
//     └ open: wait, counted       └ used up: next UTC day   └ none soon: wait   └ later: wait at the reserved time
//       in the retry span
//
// A "wait" is a Deferral (queue.ts): the delivery's job goes back to the queue until a given
// time, without using up an attempt, and its worker is free at once. Only a delivery whose
// output's circuit is open waits inside its retry span: a day of a dead provider dead-letters it
// (`circuit_open`), to be replayed once the provider is back.
//
// Limits are the ones the output declares (outputs/spec.ts OutputLimits: the provider's
// documented limits or what its config narrows them to), shared by every output of one provider
// `account` (the strictest figures of their declarations), and, for calls in flight, never more
// than server.deliveries.outputConcurrency. A provider's 429 pauses the whole output until its
// Retry-After and halves its rate for a while. Everything here is in memory: with several
// processes each keeps its own count (divide the limits between them).
import { failureClassOf, RateLimitedError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { OutputInstanceInfo, OutputLimits } from '../outputs/spec.ts';
import { Deferral } from '../queue/queue.ts';
import { errorCodeOf } from '../queue/backoff.ts';
import { CallWindow, DailyQuota, Slots, type SlotLease } from './call-limits.ts';
import { CircuitBreaker, CircuitState, type CircuitSettings, type CircuitSnapshot } from './circuit.ts';

/** Why a delivery waits before its output (Deferral codes; safe to log). */
export const GateReason = {
  /** The output's (or its account's) call rate is used up: it goes at the time reserved for it. */
  RateLimit: 'output_rate_limit',
  /** The provider answered 429: the whole output waits for its Retry-After. */
  ProviderRateLimit: 'output_paused',
  /** Every call slot is taken and none is expected to free up soon. */
  Busy: 'output_busy',
  /** The output's daily quota is used up: next UTC day. */
  DailyQuota: 'output_daily_quota',
  /** The output's circuit is open (it has been failing): counted in the delivery's retry span. */
  CircuitOpen: 'circuit_open',
} as const;
export type GateReason = (typeof GateReason)[keyof typeof GateReason];

/** A provider's 429 without a Retry-After pauses the output this long, ms. */
const DEFAULT_PAUSE_MS = 1_000;
/** Longest a busy output's delivery waits before it looks again, ms. */
const MAX_BUSY_WAIT_MS = 30_000;
const MIN_BUSY_WAIT_MS = 100;

export interface OutputGateSettings {
  /** server.deliveries.outputConcurrency: the most calls one output (or account) has in flight. */
  outputConcurrency: number;
  circuit: CircuitSettings;
  /** The engine's clock, epoch ms (the queue's). */
  now: () => number;
  log: Logger;
  /** Jitter source in [0, 1); tests inject one. */
  random?: () => number;
}

/** The limits in force in front of an output (its account's, merged). */
export interface EffectiveLimits {
  /** Calls per second and burst: at most `burst` calls in any `windowSeconds`. */
  ratePerSecond?: number;
  burst?: number;
  windowSeconds?: number;
  concurrency: number;
  perDay?: number;
  account?: string;
  callsPerSend: number;
}

/** One output as the admin API shows it (GET /api/outputs). */
export interface OutputGateState {
  name: string;
  type?: string;
  channel: string;
  idempotent: boolean;
  circuit: CircuitSnapshot;
  limits: EffectiveLimits;
  /** Calls in flight now, and deliveries waiting in memory for a slot (shared by the account). */
  inFlight: number;
  waiting: number;
  /** While a provider's 429 holds the output: until when (ISO). */
  pausedUntil?: string;
  /** Share of the declared rate in force after 429s (1 = full). */
  rateFactor?: number;
  /** Calls counted today (UTC) against perDay. */
  usedToday?: number;
}

/** Which outputs the gates stand in front of. */
export interface GatedOutput {
  name: string;
  type?: string;
  info: Pick<OutputInstanceInfo, 'channel' | 'idempotent' | 'limits'>;
}

/** An output let through for one delivery: end it exactly once. */
export interface Admission {
  /** The output was called (with the error it threw, if any), or not (the checks said no). */
  end(result: { called: false } | { called: true; error?: unknown }): void;
}

interface Account {
  key: string;
  window?: CallWindow;
  quota?: DailyQuota;
  slots: Slots;
  limits: EffectiveLimits;
  pausedUntil: number;
}

interface Gate {
  output: GatedOutput;
  account: Account;
  breaker: CircuitBreaker;
  callsPerSend: number;
}

function min(values: Array<number | undefined>): number | undefined {
  const defined = values.filter((v): v is number => v !== undefined && Number.isFinite(v) && v > 0);
  return defined.length === 0 ? undefined : Math.min(...defined);
}

/** The strictest figures of the declarations of one account's outputs. */
export function mergeLimits(declared: ReadonlyArray<OutputLimits | undefined>, outputConcurrency: number): Omit<EffectiveLimits, 'callsPerSend'> {
  const ratePerSecond = min(declared.map((l) => l?.ratePerSecond));
  const burst = ratePerSecond === undefined ? undefined : Math.max(1, Math.floor(min(declared.map((l) => l?.burst ?? l?.ratePerSecond)) ?? Math.max(1, ratePerSecond)));
  const perDay = min(declared.map((l) => l?.perDay));
  const account = declared.find((l) => l?.account !== undefined)?.account;
  return {
    ...(ratePerSecond !== undefined ? { ratePerSecond, burst, windowSeconds: Number((burst! / ratePerSecond).toFixed(3)) } : {}),
    concurrency: Math.min(outputConcurrency, min(declared.map((l) => l?.concurrency)) ?? outputConcurrency),
    ...(perDay !== undefined ? { perDay } : {}),
    ...(account !== undefined ? { account } : {}),
  };
}

export class OutputGates {
  readonly #gates = new Map<string, Gate>();
  readonly #circuitListeners = new Set<(output: string, state: CircuitState) => void>();
  readonly #settings: OutputGateSettings;
  readonly #random: () => number;

  constructor(outputs: readonly GatedOutput[], settings: OutputGateSettings) {
    this.#settings = settings;
    this.#random = settings.random ?? Math.random;
    const groups = new Map<string, GatedOutput[]>();
    for (const output of outputs) {
      const key = output.info.limits?.account ?? `output:${output.name}`;
      groups.set(key, [...(groups.get(key) ?? []), output]);
    }
    for (const [key, members] of groups) {
      const merged = mergeLimits(
        members.map((m) => m.info.limits),
        settings.outputConcurrency,
      );
      const account: Account = {
        key,
        ...(merged.ratePerSecond !== undefined ? { window: new CallWindow(merged.ratePerSecond, merged.burst) } : {}),
        ...(merged.perDay !== undefined ? { quota: new DailyQuota(merged.perDay) } : {}),
        slots: new Slots(merged.concurrency),
        limits: { ...merged, callsPerSend: 1 },
        pausedUntil: 0,
      };
      for (const output of members) {
        const callsPerSend = Math.max(1, Math.floor(output.info.limits?.callsPerSend ?? 1));
        const breaker = new CircuitBreaker(settings.circuit, settings.now(), (state, snapshot) => this.#logChange(output.name, state, snapshot), this.#random);
        this.#gates.set(output.name, { output, account, breaker, callsPerSend });
      }
    }
  }

  /**
   * Lets the delivery (its job `key`) call `output` now, or throws a Deferral saying until when
   * it waits. An output without a gate (not running) passes: the worker refuses it.
   */
  async admit(output: string, key: string, signal?: AbortSignal): Promise<Admission> {
    const gate = this.#gates.get(output);
    if (gate === undefined) return { end: () => undefined };
    const { account, breaker, callsPerSend } = gate;
    // Refused at once when the output is failing or paused (no need to wait for a slot first),
    // and checked again once a slot is held: the call that held it may have opened the circuit
    // or brought a 429.
    this.#check(gate, key, this.#settings.now());
    const lease: SlotLease | undefined = await account.slots.acquire(signal);
    const at = this.#settings.now();
    if (lease === undefined) {
      breaker.release(key);
      const wait = Math.min(MAX_BUSY_WAIT_MS, Math.max(MIN_BUSY_WAIT_MS, account.slots.expectedWaitMs()));
      throw new Deferral(at + Math.floor(wait * (1 + this.#random())), GateReason.Busy);
    }
    try {
      this.#check(gate, key, at);
    } catch (deferral) {
      lease.release();
      throw deferral;
    }
    if (account.quota && !account.quota.take(at, callsPerSend)) {
      lease.release();
      breaker.release(key);
      throw new Deferral(DailyQuota.nextDay(at) + Math.floor(this.#random() * 60_000), GateReason.DailyQuota);
    }
    const giveBack = (): void => {
      account.quota?.refund(at, callsPerSend);
      breaker.release(key);
    };
    const takenAt = account.window?.take(at, key, callsPerSend);
    if (takenAt !== undefined && takenAt > at) {
      lease.release();
      giveBack();
      throw new Deferral(takenAt, GateReason.RateLimit);
    }
    let ended = false;
    return {
      end: (result) => {
        if (ended) return;
        ended = true;
        if (!result.called) {
          if (takenAt !== undefined) account.window?.refund(takenAt, callsPerSend);
          giveBack();
        } else {
          this.#outcome(gate, key, result.error);
        }
        // After the outcome: the delivery the slot goes to next sees what this call taught.
        lease.release();
      },
    };
  }

  /** The circuit and a provider's pause: throws the Deferral when the delivery must wait. */
  #check(gate: Gate, key: string, now: number): void {
    const { account, breaker } = gate;
    const circuit = breaker.admit(now, key);
    if (!circuit.go) throw new Deferral(circuit.retryAt, GateReason.CircuitOpen, { inSpan: true });
    if (now < account.pausedUntil) {
      breaker.release(key);
      const pause = account.pausedUntil - now;
      throw new Deferral(account.pausedUntil + Math.floor(this.#random() * Math.max(DEFAULT_PAUSE_MS, pause)), GateReason.ProviderRateLimit);
    }
  }

  /** What a call's outcome says about the output. */
  #outcome(gate: Gate, key: string, error: unknown): void {
    const now = this.#settings.now();
    const { account, breaker } = gate;
    if (error === undefined) {
      breaker.record(now, key, false);
      return;
    }
    if (error instanceof RateLimitedError) {
      // The provider is up and says "slower": the whole output waits, then goes at half rate.
      const until = now + (error.retryAfterMs !== undefined && error.retryAfterMs > 0 ? error.retryAfterMs : DEFAULT_PAUSE_MS);
      account.pausedUntil = Math.max(account.pausedUntil, until);
      account.window?.slowDown(now, until);
      this.#settings.log.warn('output.rate_limited', { output: gate.output.name, code: errorCodeOf(error), durationMs: until - now });
      breaker.record(now, key, false);
      return;
    }
    // Transient and ambiguous failures of the call count; a refusal of this one message
    // (permanent) is an answer from a provider that works.
    const failed = failureClassOf(error) !== 'permanent';
    breaker.record(now, key, failed, failed ? errorCodeOf(error) : undefined);
  }

  /** Every output's circuit, limits and load, in configuration order. */
  states(): OutputGateState[] {
    const now = this.#settings.now();
    return [...this.#gates.values()].map(({ output, account, breaker, callsPerSend }) => ({
      name: output.name,
      ...(output.type !== undefined ? { type: output.type } : {}),
      channel: output.info.channel,
      idempotent: output.info.idempotent,
      circuit: breaker.snapshot(),
      limits: { ...account.limits, callsPerSend },
      inFlight: account.slots.inFlight,
      waiting: account.slots.waiting,
      ...(account.pausedUntil > now ? { pausedUntil: new Date(account.pausedUntil).toISOString() } : {}),
      ...(account.window && account.window.rateFactor < 1 ? { rateFactor: account.window.rateFactor } : {}),
      ...(account.quota ? { usedToday: account.quota.used(now) } : {}),
    }));
  }

  /** One output's state, or undefined when it is not gated (not running). */
  state(output: string): OutputGateState | undefined {
    return this.states().find((s) => s.name === output);
  }

  /** Calls `listener` on every change of an output's circuit (metrics, alerts); returns the unsubscribe function. */
  onCircuitChange(listener: (output: string, state: CircuitState) => void): () => void {
    this.#circuitListeners.add(listener);
    return () => this.#circuitListeners.delete(listener);
  }

  #logChange(output: string, state: CircuitState, snapshot: CircuitSnapshot): void {
    for (const listener of this.#circuitListeners) listener(output, state);
    const log = this.#settings.log;
    if (state === CircuitState.Open) log.warn('output.circuit_opened', { output, status: state, reason: snapshot.lastError, count: snapshot.failuresInARow });
    else if (state === CircuitState.HalfOpen) log.info('output.circuit_half_open', { output, status: state });
    else log.info('output.circuit_closed', { output, status: state });
  }
}
