// Several CareRelay processes on one queue (queue type bullmq: `carerelay start --role …`,
// `--processes N`, several hosts): ingest processes commit triggers, and exactly one process
// at a time routes them (docs/architecture.md invariant 2: routed once, in commit order, one
// pass at a time — two routers could each read a delivery, change it and write it back, and
// one change would be lost).
//
//   ingest: commit ─▶ announce "committed" ─┐
//   worker holding the routing lease ◀──────┘─▶ sweep the unrouted triggers in commit order
//        (Router.routeCommitted: passes of up to 256, one saveRouting each) ─▶ announce "routed"
//   every worker: due jobs ─▶ deliver (a job newer than its stored delivery waits for "routed")
//
// The lease is a Redis key with an expiry (queue/redis-cluster.ts RedisLease): its holder
// renews it every third of its time to live; when the holder dies, another worker takes it
// over within ttl + one try. A holder that cannot renew (Redis unreachable, its process
// stalled) stops routing before its lease can have lapsed, and checks before each pass is
// saved; the window left (a process frozen between that check and its save, longer than the
// lease) is the one a lease without fencing leaves, and the deliver worker's send-time
// checks (still current, same generation) stand behind it.
//
// Announcements only make things sooner: the holder also sweeps every `sweepEveryMs`.
import type { Logger } from '../log.ts';
import type { Router } from './router.ts';

/** What the cluster needs of Redis (queue/redis-cluster.ts RedisLease and RedisSignals). */
export interface ClusterLink {
  lease: {
    readonly ttlMs: number;
    acquire(): Promise<boolean>;
    renew(): Promise<boolean>;
    release(): Promise<void>;
  };
  signals: {
    publish(signal: 'committed' | 'routed' | 'reload'): void;
    on(signal: 'committed' | 'routed' | 'reload', listener: () => void): () => void;
  };
}

export interface ClusterRoutingOptions {
  router: Router;
  link: ClusterLink;
  log: Logger;
  /** The holder sweeps this often even without announcements, ms. Default 5,000. */
  sweepEveryMs?: number;
}

/** Reason codes of the routing duty's log lines. */
export const ClusterReason = {
  /** This process took the routing lease. */
  Acquired: 'lease_acquired',
  /** This process could not renew it in time (another may hold it now). */
  Lost: 'lease_lost',
} as const;

export class ClusterRouting {
  readonly #o: ClusterRoutingOptions;
  #leader = false;
  /** Leadership is counted from the last successful acquire/renew, to stop before it lapses. */
  #heldSince = 0;
  #timer: NodeJS.Timeout | undefined;
  #sweepTimer: NodeJS.Timeout | undefined;
  #sweeping: Promise<void> | undefined;
  #again = false;
  #stopped = false;
  #started = false;
  #leaseWork: Promise<void> = Promise.resolve();
  readonly #unsubscribe: Array<() => void> = [];
  #routedWaiters: Array<() => void> = [];
  #tickWaiters: Array<() => void> = [];

  constructor(options: ClusterRoutingOptions) {
    this.#o = options;
    this.#unsubscribe.push(options.link.signals.on('routed', () => this.#routed()));
  }

  /** True while this process holds the routing duty. */
  get leader(): boolean {
    // A lease renewed last longer ago than two thirds of its life may have lapsed by now.
    return this.#leader && Date.now() - this.#heldSince < (this.#o.link.lease.ttlMs * 2) / 3;
  }

  /** The router's `mayRoute`. */
  readonly mayRoute = (): boolean => this.leader;

  /** The router's `onSaved`: tells the other processes. */
  readonly onSaved = (): void => {
    this.#o.link.signals.publish('routed');
  };

  /** Competes for the routing lease (worker processes). */
  start(): void {
    this.#started = true;
    this.#unsubscribe.push(this.#o.link.signals.on('committed', () => this.kick()));
    const tick = (): void => {
      this.#leaseWork = this.#leaseTick().finally(() => {
        const waiters = this.#tickWaiters;
        this.#tickWaiters = [];
        for (const resolve of waiters) resolve();
        if (!this.#stopped) this.#timer = setTimeout(tick, Math.max(50, Math.floor(this.#o.link.lease.ttlMs / 3)));
      });
    };
    tick();
    const every = this.#o.sweepEveryMs ?? 5_000;
    this.#sweepTimer = setInterval(() => this.kick(), every);
    this.#sweepTimer.unref();
  }

  async #leaseTick(): Promise<void> {
    const { lease } = this.#o.link;
    let held: boolean;
    try {
      held = this.#leader ? await lease.renew() : await lease.acquire();
    } catch {
      held = false;
    }
    if (this.#stopped) return;
    if (held) {
      this.#heldSince = Date.now();
      if (!this.#leader) {
        this.#leader = true;
        this.#o.log.info('route.leader', { reason: ClusterReason.Acquired });
        this.kick();
      }
    } else if (this.#leader) {
      this.#leader = false;
      this.#o.log.warn('route.leader', { reason: ClusterReason.Lost });
    }
  }

  /** Triggers were committed (here or elsewhere): the holder sweeps them soon. */
  kick(): void {
    if (this.#stopped || !this.leader) return;
    if (this.#sweeping) {
      this.#again = true;
      return;
    }
    this.#sweeping = (async () => {
      do {
        this.#again = false;
        await this.#o.router.routeCommitted().catch(() => undefined);
      } while (this.#again && !this.#stopped && this.leader);
    })().finally(() => {
      this.#sweeping = undefined;
    });
  }

  /** An ingest hook: announce the commit, and sweep now when this process holds the duty. */
  committed(): void {
    this.#o.link.signals.publish('committed');
    this.kick();
  }

  /**
   * Resolves at the next "routed" announcement from another process, or after `ms` (a job can
   * start before the routing that added it is saved: the router adds jobs first).
   */
  routedOrAfter(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      timer.unref();
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.#routedWaiters.push(done);
    });
  }

  #routed(): void {
    const waiters = this.#routedWaiters;
    this.#routedWaiters = [];
    for (const resolve of waiters) resolve();
  }

  /** Resolves once the lease try and the sweep under way (if any) are done. */
  async idle(): Promise<void> {
    await this.#leaseWork;
    for (let i = 0; i < 100 && this.#sweeping; i++) await this.#sweeping;
  }

  /**
   * Routes everything committed so far when this process holds the duty or gets it within
   * `maxTicks` lease tries, a third of the lease's life apart (default: the time a lease held
   * by a vanished process takes to lapse, twice); resolves once that sweep is done, or then
   * when another process holds the duty (tests, idle()).
   */
  async settle(maxTicks = 8): Promise<void> {
    for (let i = 0; i < maxTicks && !this.leader && !this.#stopped && this.#started; i++) {
      await new Promise<void>((resolve) => this.#tickWaiters.push(resolve));
    }
    await this.idle();
    this.kick();
    await this.idle();
  }

  /** Stops competing, lets the sweep under way finish, and gives the lease back. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#sweepTimer) clearInterval(this.#sweepTimer);
    for (const off of this.#unsubscribe) off();
    this.#routed();
    for (const resolve of this.#tickWaiters.splice(0)) resolve();
    await this.#leaseWork;
    await this.#sweeping;
    if (this.#leader) await this.#o.link.lease.release().catch(() => undefined);
    this.#leader = false;
  }
}
