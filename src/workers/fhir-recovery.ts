// When a FHIR subscription's owed work runs (fhir-state.ts OwedWork): right after the
// notification that left it (kick), then — while it fails — with backoff, never giving up.
//
//   notification committed (2xx) ─▶ kick ─▶ per subscription with work due: recover
//        ▲                                        │ failed: attempts + 1, nextAt = now + backoff
//        └──── timer at the earliest nextAt ◀─────┘ (state kept in the subscription's position)
//
// Recovery problems are CareRelay's to solve, not the sender's (the notification that
// revealed a gap was valid and is already stored): so a failure is retried here, its state
// is visible (the position's `recovery`, GET /api/fhir/subscriptions), and it is logged
// with its reason code. The run itself lives in FhirIngest.recoverSubscription.
import { BACKGROUND_TIMER, type Timer } from './timer.ts';

/** Backoff between failed recoveries: 5 s doubling, at most 15 min (full jitter, queue/backoff.ts). */
export const RECOVERY_RETRY = { baseMs: 5_000, capMs: 15 * 60_000 } as const;

export interface RecoveryTarget {
  /** Subscriptions with owed work and when each is due (ms since the epoch; ≤ now: due). */
  dueTimes(): Promise<Map<string, number>>;
  /** Does one subscription's owed work once; records a failure (with its backoff) itself. */
  recoverSubscription(id: string): Promise<void>;
}

/** setTimeout's ceiling (about 24.8 days); a later due time is re-armed when reached. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export class RecoveryScheduler {
  private running: Promise<void> | undefined;
  /** A kick arrived during a run: look again before resting. */
  private again = false;
  private force = false;
  private handle: unknown;
  private stopped = false;

  constructor(
    private readonly target: RecoveryTarget,
    private readonly now: () => number,
    private readonly timer: Timer = BACKGROUND_TIMER,
  ) {}

  /** Runs what is due now (after the run in progress, if any). */
  kick(): void {
    if (this.stopped) return;
    if (this.running !== undefined) {
      this.again = true;
      return;
    }
    this.running = this.loop()
      // The store could not even be read: look again after the first backoff step.
      .catch(() => this.arm(this.now() + RECOVERY_RETRY.baseMs))
      .finally(() => {
        this.running = undefined;
      });
  }

  /** Runs every owed work now, backoff or not (an operator's "retry now", tests). */
  async runNow(): Promise<void> {
    this.force = true;
    this.kick();
    await this.idle();
  }

  /** Resolves once no run is in progress (work in backoff waits for its timer). */
  async idle(): Promise<void> {
    while (this.running !== undefined) await this.running;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.handle !== undefined) this.timer.clearTimeout(this.handle);
    this.handle = undefined;
    await this.idle();
  }

  private async loop(): Promise<void> {
    if (this.handle !== undefined) this.timer.clearTimeout(this.handle);
    this.handle = undefined;
    let next: number | undefined;
    do {
      this.again = false;
      const force = this.force;
      this.force = false;
      next = undefined;
      for (const [id, at] of await this.target.dueTimes()) {
        if (this.stopped) return;
        if (force || at <= this.now()) await this.target.recoverSubscription(id);
      }
      for (const at of (await this.target.dueTimes()).values()) next = next === undefined ? at : Math.min(next, at);
    } while (this.again && !this.stopped);
    if (next !== undefined) this.arm(next);
  }

  private arm(at: number): void {
    if (this.stopped) return;
    if (this.handle !== undefined) this.timer.clearTimeout(this.handle);
    this.handle = this.timer.setTimeout(() => {
      this.handle = undefined;
      this.kick();
    }, Math.min(MAX_TIMER_MS, Math.max(0, at - this.now())));
  }
}
