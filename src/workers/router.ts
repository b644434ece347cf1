// Routing at run time (docs/architecture.md invariant 2 "Route once, deliver many"): every
// committed trigger goes through the current rules once; what it plans, moves and cancels is
// written to the store, and the queue gets a timer per pending delivery.
//
//   trigger ─▶ route() ─▶ apply to stored deliveries (workers/apply.ts, the ordering rule)
//           ─▶ queue: add / reschedule / cancel ─▶ store.saveRouting (deliveries + routed mark)
//
// The store is the source of truth, the queue only a timer: a job carries the delivery id and
// its generation, and the deliver worker sends only when the stored delivery is still pending
// with that generation. Queue ops come before saveRouting so a crash between the two is
// repaired by routing the trigger again (it is still unrouted): an add of an existing job id
// is a duplicate, a reschedule or a cancel a no-op.
//
// Job ids are `<delivery id>~<generation>` (the queue refuses a reused id whatever the
// state of the first job, so a delivery that needs a new timer gets generation + 1). Every
// job of a delivery carries the delivery id as its cancel key.
//
// Triggers are routed in commit order, never two passes at once: applying a trigger reads the
// stored deliveries it touches and writes them back, so concurrent passes could lose a
// change. Triggers committed while a pass runs wait and are routed together in the next one,
// against one in-memory view of the deliveries they touch, and saved with one saveRouting
// (one transaction) — under load, routing keeps up with ingest instead of paying a commit
// per trigger.
import { PermanentError, TransientError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { QuietHours } from '../pipeline/policy.ts';
import { route, type DeliveryState } from '../pipeline/route.ts';
import type { RouteResult } from '../pipeline/rule.ts';
import type { Rule } from '../pipeline/rule.ts';
import type { Queue } from '../queue/queue.ts';
import type { DeliveryWrite, Store, StoredDelivery } from '../store/store.ts';
import type { Delivery, Trigger } from '../types.ts';
import { applyRouteResult, type AppliedChange } from './apply.ts';

/** What a delivery job carries (the queue stores it as JSON). */
export interface DeliveryJob {
  deliveryId: string;
  generation: number;
}

/** `<delivery id>~<generation>`. */
export function deliveryJobId(deliveryId: string, generation: number): string {
  return `${deliveryId}~${generation}`;
}

/** The delivery id and generation of a job id; undefined when it is not a delivery job. */
export function parseDeliveryJobId(jobId: string): DeliveryJob | undefined {
  // Delivery ids may contain '~' (encodeURIComponent keeps it); the generation is after the last.
  const at = jobId.lastIndexOf('~');
  if (at <= 0 || !/^[1-9]\d*$/.test(jobId.slice(at + 1))) return undefined;
  return { deliveryId: jobId.slice(0, at), generation: Number(jobId.slice(at + 1)) };
}

/** Reason codes the router logs. */
export const RouterReason = {
  /** route() or the store failed; the trigger stays unrouted and is tried again. */
  RouteFailed: 'route_failed',
  /** A replan arrived while the delivery's job was running: the running attempt decides. */
  ReplanWhileSending: 'replan_while_sending',
} as const;
export type RouterReason = (typeof RouterReason)[keyof typeof RouterReason];

export interface RouterDeps {
  store: Store;
  queue: Queue<DeliveryJob>;
  /** The current plan's rules: read for every trigger, so a reload applies to the next one. */
  rules: () => readonly Rule[];
  /** IANA zone for a trigger's due times (the patient's zone: pipeline/zones.ts). */
  zoneFor: (trigger: Trigger) => string;
  /** Quiet hours: a care.logistics message due in them is planned earlier when still useful (pipeline/quiet-hours.ts). */
  quietHours?: QuietHours;
  log: Logger;
  /** Epoch ms; injected by tests. Default Date.now. */
  now?: () => number;
  /** Whether the output deduplicates by delivery id (an ambiguous failure may be retried). */
  idempotentOutput?: (output: string) => boolean;
  /** First delay before routing failed triggers again, ms (doubles to 60 s). Default 1,000. */
  retryMs?: number;
}

/** What routing one trigger did. */
export interface RoutedTrigger {
  triggerId: string;
  changes: AppliedChange[];
  /** Delivery states written (changed ones only). */
  written: DeliveryWrite[];
}

/** Unrouted triggers read per store call at start-up. */
const SWEEP_BATCH = 500;
/** Most triggers routed and saved in one pass. */
const PASS_BATCH = 256;
const MAX_RETRY_MS = 60_000;

interface Working {
  state: DeliveryState;
  generation: number;
  subjectStart?: string;
  dirty: boolean;
}

export class Router {
  readonly #deps: RouterDeps;
  readonly #now: () => number;
  #chain: Promise<unknown> = Promise.resolve();
  #pending = 0;
  /** Triggers committed and waiting for the next routing pass. */
  #waiting: Trigger[] = [];
  #passQueued = false;
  /**
   * Set when a pass could not be saved: its triggers are unrouted in the store, and routing
   * newer ones first would apply a reschedule or cancel before the booking it follows. Until
   * a sweep (which reads unrouted triggers in commit order) succeeds, committed triggers are
   * left to it.
   */
  #recovering = false;
  #closed = false;
  #retryTimer: NodeJS.Timeout | undefined;
  #retryMs: number;

  constructor(deps: RouterDeps) {
    this.#deps = deps;
    this.#now = deps.now ?? Date.now;
    this.#retryMs = deps.retryMs ?? 1000;
  }

  /**
   * Routes every trigger committed but not routed yet (start-up: a crash between a commit
   * and its routing loses nothing). Resolves with the number routed.
   */
  routeUnrouted(): Promise<number> {
    return this.#enqueue(() => this.#sweep());
  }

  /** The ingest hook: routes the triggers of one commit, in order, after what is queued. */
  onCommitted(triggers: readonly Trigger[]): void {
    if (this.#recovering) return; // stored unrouted: the recovery sweep routes them in order
    this.#waiting.push(...triggers);
    if (this.#passQueued) return;
    this.#passQueued = true;
    void this.#enqueue(() => this.#routeWaiting()).catch((error: unknown) => this.#failed(undefined, error));
  }

  /** Routes one trigger now (after what is queued) and says what it did. */
  route(trigger: Trigger): Promise<RoutedTrigger> {
    return this.#enqueue(async () => (await this.#routeBatch([trigger]))[0]!);
  }

  /** One pass over the triggers waiting (at most PASS_BATCH; the rest get the next pass). */
  async #routeWaiting(): Promise<void> {
    const batch = this.#waiting.splice(0, PASS_BATCH);
    this.#passQueued = this.#waiting.length > 0;
    if (this.#passQueued) void this.#enqueue(() => this.#routeWaiting()).catch((error: unknown) => this.#failed(undefined, error));
    if (this.#recovering) return;
    try {
      await this.#routeBatch(batch);
    } catch (error) {
      // Nothing of this pass was saved: its triggers, and every one committed after them,
      // are left unrouted for the sweep, which routes them one by one in commit order.
      for (const trigger of batch) this.#logFailure(trigger.id, error);
      this.#recovering = true;
      this.#waiting = [];
      this.#passQueued = false;
      this.#scheduleRetry();
    }
  }

  /** Resolves once nothing is being routed or waiting to be. */
  async idle(): Promise<void> {
    // Bounded: each pass waits for the work queued before it; new work comes only from callers.
    for (let i = 0; i < 1000 && this.#pending > 0; i++) await this.#chain.catch(() => {});
  }

  /**
   * Resolves once the routing queued so far has finished (whatever its outcome). The
   * deliver worker waits on it when a job is newer than the stored delivery: the router adds
   * jobs before saving, so a job due at once can start before its delivery is written.
   */
  settled(): Promise<void> {
    return this.#chain.then(
      () => {},
      () => {},
    );
  }

  /** Stops the retry timer and waits for the routing under way. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    await this.idle();
  }

  #enqueue<T>(work: () => Promise<T>): Promise<T> {
    if (this.#closed) return Promise.reject(new Error('the router is closed'));
    this.#pending++;
    const run = this.#chain.catch(() => {}).then(work);
    this.#chain = run.finally(() => {
      this.#pending--;
    });
    return run;
  }

  async #sweep(): Promise<number> {
    let routed = 0;
    let stopped = false;
    const skipped = new Set<string>();
    // Commit order matters (a cancel must not be applied before the booking it follows), so
    // the sweep stops at the first trigger it cannot route because of the store or the queue,
    // and tries again later from there. A trigger the rules themselves cannot route (a
    // PermanentError: a bad zone, say) would block every later one forever: it is skipped,
    // logged, and retried on every sweep. Bounded: each pass routes, skips or stops.
    outer: for (;;) {
      const batch = await this.#deps.store.listUnroutedTriggers(SWEEP_BATCH);
      const todo = batch.filter((t) => !skipped.has(t.id));
      if (todo.length === 0) break;
      for (const trigger of todo) {
        try {
          await this.#routeBatch([trigger]);
          routed++;
        } catch (error) {
          this.#logFailure(trigger.id, error);
          if (error instanceof PermanentError) {
            skipped.add(trigger.id);
            continue;
          }
          stopped = true;
          break outer;
        }
      }
      if (batch.length < SWEEP_BATCH) break;
    }
    if (routed > 0) this.#deps.log.info('route.recovered', { count: routed });
    // Live routing resumes once nothing older is left unrouted but the skipped ones.
    this.#recovering = stopped;
    if (stopped || skipped.size > 0) this.#scheduleRetry();
    else this.#retryMs = this.#deps.retryMs ?? 1000;
    return routed;
  }

  #failed(triggerId: string | undefined, error: unknown): void {
    this.#logFailure(triggerId, error);
    this.#scheduleRetry();
  }

  #logFailure(triggerId: string | undefined, error: unknown): void {
    const code = typeof (error as { code?: unknown })?.code === 'string' ? (error as { code: string }).code : error instanceof Error ? error.name : 'unknown';
    this.#deps.log.error('route.failed', { ...(triggerId !== undefined ? { triggerId } : {}), reason: RouterReason.RouteFailed, code });
  }

  /** Tries the unrouted triggers again later, with a doubling delay (a store outage, a bad zone). */
  #scheduleRetry(): void {
    if (this.#closed || this.#retryTimer) return;
    const delay = this.#retryMs;
    this.#retryMs = Math.min(this.#retryMs * 2, MAX_RETRY_MS);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      if (!this.#closed) void this.routeUnrouted().catch((error: unknown) => this.#failed(undefined, error));
    }, delay);
    this.#retryTimer.unref();
  }

  /**
   * Routes triggers in order against one working view of the deliveries they touch (loaded
   * from the store the first time a pass needs them), then saves every changed delivery and
   * the routed marks in one saveRouting.
   */
  async #routeBatch(triggers: readonly Trigger[]): Promise<RoutedTrigger[]> {
    const { store, log } = this.#deps;
    const nowMs = this.#now();
    const work = new Map<string, Working>();
    const results: Array<{ triggerId: string; changes: AppliedChange[] }> = [];
    for (const trigger of triggers) {
      results.push({ triggerId: trigger.id, changes: await this.#applyOne(trigger, nowMs, work) });
    }

    const updatedAt = new Date(nowMs).toISOString();
    const written: DeliveryWrite[] = [];
    for (const w of work.values()) {
      if (!w.dirty || w.state.status === 'finished') continue;
      written.push({
        delivery: w.state.delivery,
        status: w.state.status,
        asOf: w.state.asOf,
        generation: Math.max(w.generation, 1),
        ...(w.subjectStart ? { subjectStart: w.subjectStart } : {}),
        updatedAt,
      });
    }
    const ids = triggers.map((t) => t.id);
    try {
      await store.saveRouting(ids, written, updatedAt);
    } catch (error) {
      // Unrouted still: the retry routes them again and the queue ops repeat harmlessly.
      throw new TransientError('store_failed', `routing of ${ids.length} trigger(s) could not be saved`, { cause: error });
    }
    if (written.length > 0) log.debug('route.routed', { count: written.length, triggerId: ids.length === 1 ? ids[0] : undefined });
    return results.map((r) => ({ ...r, written }));
  }

  /** Routes one trigger into the working view and makes the queue follow; returns its changes. */
  async #applyOne(trigger: Trigger, nowMs: number, work: Map<string, Working>): Promise<AppliedChange[]> {
    const { store, queue, log } = this.#deps;
    let result: RouteResult;
    try {
      const zone = this.#deps.zoneFor(trigger);
      result = route(trigger, this.#deps.rules(), nowMs, { zoneFor: () => zone, ...(this.#deps.quietHours ? { quietHours: this.#deps.quietHours } : {}) });
    } catch (error) {
      // Pure computation: trying again gives the same failure until the rules change.
      throw new PermanentError('route_failed', `trigger ${trigger.id} cannot be routed by the current rules`, { cause: error });
    }

    // Everything this trigger can touch, read before applying (the repository is synchronous).
    const load = (stored: StoredDelivery): void => {
      if (work.has(stored.delivery.id)) return; // the working view is newer than the store
      work.set(stored.delivery.id, {
        state: toState(stored),
        generation: stored.generation,
        ...(stored.subjectStart ? { subjectStart: stored.subjectStart } : {}),
        dirty: false,
      });
    };
    for (const d of [...result.deliveries, ...result.replans]) {
      if (work.has(d.id)) continue;
      const stored = await store.getDelivery(d.id);
      if (stored) load(stored);
    }
    for (const order of result.cancels) {
      for (const stored of await store.deliveriesByCancelKey(order.key)) load(stored);
    }

    const changes = applyRouteResult(result, {
      get: (id) => work.get(id)?.state,
      *byCancelKey(key) {
        for (const w of work.values()) if (w.state.delivery.cancelKeys.includes(key)) yield w.state;
      },
      put: (state) => {
        const w = work.get(state.delivery.id);
        if (w) {
          w.state = state;
          w.dirty = true;
        } else work.set(state.delivery.id, { state, generation: 0, dirty: true });
      },
    });

    // The queue follows the changes, in order.
    for (const change of changes) {
      const w = work.get(change.delivery.id);
      if (!w || change.change === 'unchanged') continue;
      const delivery = change.delivery;
      switch (change.change) {
        case 'added':
        case 'revived':
          w.generation = await this.#addJob(delivery, w.generation + 1);
          setStart(w, subjectStartOf(trigger, delivery));
          break;
        case 'replanned': {
          const moved = await queue.reschedule(deliveryJobId(delivery.id, w.generation), delivery.dueAt);
          if (!moved) {
            const job = await queue.get(deliveryJobId(delivery.id, w.generation));
            if (job?.state === 'active' || job?.state === 'parked') {
              // Being sent right now, or parked after an ambiguous failure (the message may
              // have gone out): a second timer could send it twice. A retry of that job reads
              // the new plan from the store; a parked one waits for a person.
              log.warn('route.replan_while_sending', { deliveryId: delivery.id, reason: RouterReason.ReplanWhileSending });
            } else {
              // Its job is gone (ran while the delivery was elsewhere, dead-lettered, lost).
              w.generation = await this.#addJob(delivery, w.generation + 1);
            }
          }
          setStart(w, subjectStartOf(trigger, delivery));
          break;
        }
        case 'cancelled':
          await queue.cancel(delivery.id, change.cause === 'expired' ? 'expired' : 'cancelled');
          break;
        default:
          change.change satisfies never;
      }
    }

    return changes;
  }

  /**
   * Adds the delivery's timer at `generation` and returns the generation it ended at. A job
   * with that id may exist already: from an earlier attempt at this same routing (a crash or a
   * failed save in between), in which case a pending or running one is this timer; but one
   * that was cancelled, finished or failed meanwhile is not a timer any more, so the next
   * generation gets a new one.
   */
  async #addJob(delivery: Delivery, generation: number): Promise<number> {
    const { queue } = this.#deps;
    // Bounded: each round either adds a job or steps past a job id already used.
    for (let gen = generation; gen < generation + 100; gen++) {
      const id = deliveryJobId(delivery.id, gen);
      const added = await queue.add({
        id,
        data: { deliveryId: delivery.id, generation: gen },
        runAt: delivery.dueAt,
        cancelKeys: [delivery.id],
        idempotent: this.#deps.idempotentOutput?.(delivery.output) ?? false,
      });
      if (added === 'added') return gen;
      const existing = await queue.get(id);
      if (existing?.state === 'pending' || existing?.state === 'active') {
        if (existing.state === 'pending') await queue.reschedule(id, delivery.dueAt);
        return gen;
      }
    }
    throw new TransientError('queue_ids_exhausted', `no free job id for delivery ${delivery.id}`);
  }
}

function toState(stored: StoredDelivery): DeliveryState {
  const status = stored.status === 'pending' || stored.status === 'cancelled' ? stored.status : 'finished';
  return { status, asOf: stored.asOf, delivery: stored.delivery };
}

/** The start of the appointment / encounter a delivery is about, as this trigger gives it. */
function subjectStartOf(trigger: Trigger, delivery: Delivery): string | undefined {
  if (delivery.subjectKind === 'appointment') return trigger.appointment?.start;
  if (delivery.subjectKind === 'encounter') return trigger.encounter?.start;
  return undefined;
}

function setStart(w: Working, start: string | undefined): void {
  if (start !== undefined) w.subjectStart = start;
  else delete w.subjectStart;
}
