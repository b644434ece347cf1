// Routing at run time (docs/architecture.md invariant 2 "Route once, deliver many"): every
// committed trigger goes through the current rules once; what it plans, moves and cancels is
// written to the store, and the queue gets a timer per pending delivery.
//
//   trigger ─▶ route() ─▶ apply to stored deliveries (workers/apply.ts, the ordering rule)
//           ─▶ queue: add / reschedule / cancel ─▶ store.saveRouting (deliveries + routed mark)
//
// The store is the source of truth, the queue only a timer: a job carries the delivery id and
// its generation, and the deliver worker sends only when the stored delivery is still pending
// with that generation.
//
// Atomicity. With the embedded queue (Queue.joinTransaction), the queue ops run inside the
// saveRouting transaction: a routing and its timers commit together or not at all, in the
// store's group commit. With a queue on another system (BullMQ), they cannot: the queue ops
// come before saveRouting, so a crash between the two is repaired by routing the trigger
// again (it is still unrouted): an add of an existing job id is a duplicate, a reschedule or a
// cancel a no-op.
//
// Job ids are `<delivery id>~<generation>` (the queue refuses a reused id whatever the
// state of the first job, so a delivery that needs a new timer gets generation + 1). A
// delivery has at most one pending job, its current generation's, cancelled by its id.
//
// Triggers are routed in commit order, never two passes at once — in this process nor, on a
// shared store, in any other (Store.withLock): applying a trigger reads the stored deliveries
// it touches and writes them back, so concurrent passes could lose a change. A trigger another
// process routed meanwhile may be routed again: the ordering rule then finds its plans the
// same (or moves a due-now plan to a new timer), never a second message. Triggers committed while a pass runs wait and are routed together in the next one,
// against one in-memory view of the deliveries they touch, and saved with one saveRouting
// (one transaction) — under load, routing keeps up with ingest instead of paying a commit
// per trigger.
import { PermanentError, TransientError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { QuietHours } from '../pipeline/policy.ts';
import { route, type DeliveryState } from '../pipeline/route.ts';
import type { RouteResult } from '../pipeline/rule.ts';
import type { Rule } from '../pipeline/rule.ts';
import type { Queue, QueueTransaction } from '../queue/queue.ts';
import type { DeliveryCause, DeliveryWrite, RoutingExplanation, RuleOutcome, Store, StoredDelivery } from '../store/store.ts';
import type { Delivery, Trigger } from '../types.ts';
import { applyRouteResult, type AppliedChange } from './apply.ts';

/** What a delivery job carries (the queue stores it as JSON). */
/** The delivery a job is the timer of, and at which generation. */
export interface DeliveryJobRef {
  deliveryId: string;
  generation: number;
}

/**
 * What a delivery job carries (the queue stores it as JSON): nothing, since its id says it
 * all (`<delivery id>~<generation>`); jobs added by earlier versions spell it out.
 */
export type DeliveryJob = DeliveryJobRef | null;

/** The delivery and generation of a delivery job. */
export function deliveryJobOf(job: { id: string; data: DeliveryJob }): DeliveryJobRef {
  const ref = job.data ?? parseDeliveryJobId(job.id);
  if (ref === undefined) throw new PermanentError('not_a_delivery_job', `job ${job.id} is not a delivery job`);
  return ref;
}

/** `<delivery id>~<generation>`. */
export function deliveryJobId(deliveryId: string, generation: number): string {
  return `${deliveryId}~${generation}`;
}

/** The delivery id and generation of a job id; undefined when it is not a delivery job. */
export function parseDeliveryJobId(jobId: string): DeliveryJobRef | undefined {
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
  /** Whether the output sends nothing without an address (outputs/spec.ts needsAddress); default: SMS and email. */
  needsAddress?: (output: string) => boolean | undefined;
  /** First delay before routing failed triggers again, ms (doubles to 60 s). Default 1,000. */
  retryMs?: number;
  /**
   * Several processes (workers/cluster.ts): false while another process holds the routing
   * duty. Checked before each pass is saved; a sweep that finds it false stops quietly.
   */
  mayRoute?: () => boolean;
  /** Called after each routing pass was saved (several processes: announce it). */
  onSaved?: () => void;
}

/** This process lost the routing duty: another one routes now (nothing of the pass was saved). */
class NotRouting extends TransientError {
  constructor() {
    super('not_routing', 'another process holds the routing duty');
  }
}

/** What routing one trigger did. */
export interface RoutedTrigger {
  triggerId: string;
  changes: AppliedChange[];
  /** Delivery states written (changed ones only). */
  written: DeliveryWrite[];
}

/** The store lock routing passes hold (Store.withLock). */
export const ROUTING_LOCK = 'routing';

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
  /** The trigger of this pass that last changed it. */
  cause?: DeliveryCause;
}

/**
 * What the queue must do for one change, in order: a timer for a delivery added, revived or
 * replanned (`move`: reschedule its current job first), or a cancel of its pending job.
 */
type TimerIntent = { op: 'timer'; delivery: Delivery; move: boolean } | { op: 'cancel'; deliveryId: string; reason: 'expired' | 'cancelled' };

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
    return this.#enqueue(() => this.#sweep('recovery'));
  }

  /**
   * Routes every unrouted trigger in commit order, in passes (several processes: triggers
   * committed by any of them, routed by the one holding the routing duty). Quiet when all
   * goes well; failures are logged and retried like the start-up sweep's.
   */
  routeCommitted(): Promise<number> {
    return this.#enqueue(() => this.#sweep('committed'));
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
    // Across processes sharing a store (PostgreSQL), one router at a time: a pass reads the
    // deliveries it changes before writing them (Store.withLock; at once for the embedded store).
    const run = this.#chain.catch(() => {}).then(() => this.#deps.store.withLock(ROUTING_LOCK, work));
    this.#chain = run.finally(() => {
      this.#pending--;
    });
    // The chain only orders the passes: the outcome is the caller's (`run`). Its own copy of a
    // failure (the lock's connection refused while PostgreSQL restarts) is handled here, or
    // Node reports it unhandled and ends the process when no pass follows in the same turn.
    this.#chain.catch(() => {});
    return run;
  }

  async #sweep(mode: 'recovery' | 'committed'): Promise<number> {
    let routed = 0;
    let stopped = false;
    const skipped = new Set<string>();
    // Commit order matters (a cancel must not be applied before the booking it follows), so
    // the sweep stops at the first trigger it cannot route because of the store or the queue,
    // and tries again later from there. A trigger the rules themselves cannot route (a
    // PermanentError: a bad zone, say) would block every later one forever: it is skipped,
    // logged, and retried on every sweep. Bounded: each pass routes, skips or stops.
    // Triggers go in passes of PASS_BATCH (one saveRouting each); a pass that fails is
    // routed again one trigger at a time, to route what can be and find the one that cannot.
    outer: for (;;) {
      if (this.#deps.mayRoute?.() === false) break;
      const batch = await this.#deps.store.listUnroutedTriggers(SWEEP_BATCH);
      const todo = batch.filter((t) => !skipped.has(t.id));
      if (todo.length === 0) break;
      for (let at = 0; at < todo.length; at += PASS_BATCH) {
        const pass = todo.slice(at, at + PASS_BATCH);
        if (pass.length > 1) {
          try {
            await this.#routeBatch(pass);
            routed += pass.length;
            continue;
          } catch (error) {
            if (error instanceof NotRouting) break outer;
            // One by one below: what failed the pass fails again there, and is logged.
          }
        }
        for (const trigger of pass) {
          try {
            await this.#routeBatch([trigger]);
            routed++;
          } catch (error) {
            if (error instanceof NotRouting) break outer;
            this.#logFailure(trigger.id, error);
            if (error instanceof PermanentError) {
              skipped.add(trigger.id);
              continue;
            }
            stopped = true;
            break outer;
          }
        }
      }
      if (batch.length < SWEEP_BATCH) break;
    }
    if (routed > 0 && mode === 'recovery') this.#deps.log.info('route.recovered', { count: routed });
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
    const { store, queue, log } = this.#deps;
    const nowMs = this.#now();
    const work = new Map<string, Working>();
    const intents: TimerIntent[] = [];
    const results: Array<{ triggerId: string; changes: AppliedChange[] }> = [];
    const explanations: RoutingExplanation[] = [];
    const updatedAt = new Date(nowMs).toISOString();
    for (const trigger of triggers) {
      const { changes, result } = await this.#applyOne(trigger, nowMs, work, intents);
      results.push({ triggerId: trigger.id, changes });
      explanations.push({ triggerId: trigger.id, routedAt: updatedAt, rules: explain(result, changes, this.#deps.needsAddress) });
    }

    const ids = triggers.map((t) => t.id);
    const generations = new Map([...work].map(([id, w]) => [id, w.generation]));
    let written: DeliveryWrite[];
    let warnings: string[] = [];
    if (this.#deps.mayRoute?.() === false) throw new NotRouting();
    try {
      if (queue.joinTransaction) {
        // The timers ride in the saveRouting transaction; they set the generations it saves.
        written = writesOf(work, updatedAt);
        const byId = new Map(written.map((w) => [w.delivery.id, w]));
        const joined = queue.joinTransaction((tx) => {
          // Runs again from the same start when the store retries its transaction.
          const gens = new Map(generations);
          warnings = [];
          followSync(tx, intents, gens, warnings, this.#idempotent);
          for (const [id, gen] of gens) {
            const write = byId.get(id);
            if (write) write.generation = Math.max(gen, 1);
          }
        });
        await store.saveRouting(ids, written, updatedAt, { joined, explanations });
      } else {
        warnings = await followAsync(queue, intents, generations, this.#idempotent);
        for (const [id, gen] of generations) work.get(id)!.generation = gen;
        written = writesOf(work, updatedAt);
        await store.saveRouting(ids, written, updatedAt, { explanations });
      }
    } catch (error) {
      if (error instanceof TransientError && error.code === 'queue_ids_exhausted') throw error;
      if (error instanceof NotRouting) throw error;
      // Unrouted still: the retry routes them again (the queue ops repeat harmlessly when
      // they were not in the same transaction).
      throw new TransientError('store_failed', `routing of ${ids.length} trigger(s) could not be saved`, { cause: error });
    }
    for (const write of written) work.get(write.delivery.id)!.generation = write.generation;
    this.#deps.onSaved?.();
    for (const deliveryId of warnings) log.warn('route.replan_while_sending', { deliveryId, reason: RouterReason.ReplanWhileSending });
    if (written.length > 0) log.debug('route.routed', { count: written.length, triggerId: ids.length === 1 ? ids[0] : undefined });
    return results.map((r) => ({ ...r, written }));
  }

  readonly #idempotent = (delivery: Delivery): boolean => this.#deps.idempotentOutput?.(delivery.output) ?? false;

  /** Routes one trigger into the working view and lists what the queue must do; returns its changes. */
  async #applyOne(trigger: Trigger, nowMs: number, work: Map<string, Working>, intents: TimerIntent[]): Promise<{ changes: AppliedChange[]; result: RouteResult }> {
    const { store } = this.#deps;
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
      w.cause = { triggerId: trigger.id, change: change.change, ...(change.cause === 'expired' ? { reason: 'expired' } : {}) };
      switch (change.change) {
        case 'added':
        case 'revived':
        case 'replanned':
          intents.push({ op: 'timer', delivery, move: change.change === 'replanned' });
          setStart(w, subjectStartOf(trigger, delivery));
          break;
        case 'cancelled':
          intents.push({ op: 'cancel', deliveryId: delivery.id, reason: change.cause === 'expired' ? 'expired' : 'cancelled' });
          break;
        default:
          change.change satisfies never;
      }
    }
    return { changes, result };
  }
}

/**
 * What each rule did for one trigger (store.ts RoutingExplanation): its plans and replans
 * with their outcome, the deliveries its cancels changed, what it skipped and why, and the
 * rules whose condition did not hold. Cancels that found nothing to change are left out (a
 * cancel key reaches every delivery of the subject: listing them all says nothing).
 */
function explain(result: RouteResult, changes: readonly AppliedChange[], needsAddress?: (output: string) => boolean | undefined): RuleOutcome[] {
  const rules: RuleOutcome[] = [];
  for (const c of changes) {
    if (c.op === 'cancel' && c.change === 'unchanged') continue;
    const d = c.delivery;
    const outcome = c.change === 'added' ? 'planned' : c.change;
    const addressNeeded = needsAddress?.(d.output) ?? (d.channel === 'sms' || d.channel === 'email');
    const noAddress = c.change !== 'unchanged' && c.change !== 'cancelled' && addressNeeded && (d.to === undefined || d.to === '');
    const reason = c.change === 'cancelled' && c.cause === 'expired' ? 'expired' : noAddress ? 'no_address' : c.reason;
    rules.push({ rule: d.ruleId, outcome, deliveryId: d.id, ...(reason !== undefined ? { reason } : {}) });
  }
  for (const s of result.skipped) rules.push({ rule: s.ruleId, outcome: 'skipped', deliveryId: s.id, reason: s.reason });
  for (const u of result.unmatched ?? []) rules.push({ rule: u.ruleId, outcome: 'skipped', reason: u.reason, condition: u.condition });
  return rules;
}

/** The delivery states a pass changed, as saveRouting writes them. */
function writesOf(work: Map<string, Working>, updatedAt: string): DeliveryWrite[] {
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
      ...(w.cause ? { cause: w.cause } : {}),
    });
  }
  return written;
}

function timerJob(delivery: Delivery, generation: number, idempotent: boolean) {
  return {
    id: deliveryJobId(delivery.id, generation),
    data: null,
    runAt: delivery.dueAt,
    // No cancel key: a job is cancelled by its own id (the delivery's current generation).
    idempotent,
  };
}

/** Most job ids stepped over for one delivery before giving up (bounds the loops below). */
const MAX_GENERATION_STEPS = 100;

/**
 * The queue follows the intents inside the store's transaction (embedded queue). `gens` holds
 * each delivery's current generation and is updated; replans that found their job running or
 * parked are listed in `warnings`.
 *
 * A timer: a replan moves the current job when it is still pending. When it is running, or
 * parked after an ambiguous failure (the message may have gone out), a second timer could
 * send it twice: a retry of that job reads the new plan from the store, a parked one waits
 * for a person. Otherwise (new, revived, or its job is gone: ran while the delivery was
 * elsewhere, dead-lettered) the delivery gets a job at its next generation. That id may be
 * taken already (a routing repeated after a crash with a queue outside the transaction): a
 * pending or running job with it is this timer; a cancelled, finished or failed one is not,
 * so the next generation is tried.
 */
function followSync(tx: QueueTransaction<DeliveryJob>, intents: readonly TimerIntent[], gens: Map<string, number>, warnings: string[], idempotent: (d: Delivery) => boolean): void {
  for (const intent of intents) {
    if (intent.op === 'cancel') {
      tx.cancel(deliveryJobId(intent.deliveryId, gens.get(intent.deliveryId) ?? 0), intent.reason);
      // Jobs added before the job id was their key carry the delivery id as one.
      tx.cancel(intent.deliveryId, intent.reason);
      continue;
    }
    const d = intent.delivery;
    const current = gens.get(d.id) ?? 0;
    if (intent.move && current > 0) {
      const id = deliveryJobId(d.id, current);
      if (tx.reschedule(id, d.dueAt)) continue;
      const state = tx.state(id);
      if (state === 'active' || state === 'parked') {
        warnings.push(d.id);
        continue;
      }
    }
    gens.set(d.id, addTimerSync(tx, d, current + 1, idempotent(d)));
  }
}

function addTimerSync(tx: QueueTransaction<DeliveryJob>, delivery: Delivery, from: number, idempotent: boolean): number {
  for (let gen = from; gen < from + MAX_GENERATION_STEPS; gen++) {
    const job = timerJob(delivery, gen, idempotent);
    if (tx.add(job) === 'added') return gen;
    const state = tx.state(job.id);
    if (state === 'pending') tx.reschedule(job.id, delivery.dueAt);
    if (state === 'pending' || state === 'active') return gen;
  }
  throw new TransientError('queue_ids_exhausted', `no free job id for delivery ${delivery.id}`);
}

/** followSync for a queue outside the store's transaction (the same decisions, awaited). */
async function followAsync(queue: Queue<DeliveryJob>, intents: readonly TimerIntent[], gens: Map<string, number>, idempotent: (d: Delivery) => boolean): Promise<string[]> {
  const warnings: string[] = [];
  for (const intent of intents) {
    if (intent.op === 'cancel') {
      await queue.cancel(deliveryJobId(intent.deliveryId, gens.get(intent.deliveryId) ?? 0), intent.reason);
      await queue.cancel(intent.deliveryId, intent.reason);
      continue;
    }
    const d = intent.delivery;
    const current = gens.get(d.id) ?? 0;
    if (intent.move && current > 0) {
      const id = deliveryJobId(d.id, current);
      if (await queue.reschedule(id, d.dueAt)) continue;
      const state = (await queue.get(id))?.state;
      if (state === 'active' || state === 'parked') {
        warnings.push(d.id);
        continue;
      }
    }
    gens.set(d.id, await addTimerAsync(queue, d, current + 1, idempotent(d)));
  }
  return warnings;
}

async function addTimerAsync(queue: Queue<DeliveryJob>, delivery: Delivery, from: number, idempotent: boolean): Promise<number> {
  for (let gen = from; gen < from + MAX_GENERATION_STEPS; gen++) {
    const job = timerJob(delivery, gen, idempotent);
    if ((await queue.add(job)) === 'added') return gen;
    const state = (await queue.get(job.id))?.state;
    if (state === 'pending') await queue.reschedule(job.id, delivery.dueAt);
    if (state === 'pending' || state === 'active') return gen;
  }
  throw new TransientError('queue_ids_exhausted', `no free job id for delivery ${delivery.id}`);
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
