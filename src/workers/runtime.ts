// The delivery side of a running CareRelay, wired once by main.ts: the queue (embedded on the
// store's file, or BullMQ on Redis shared by several processes), the outputs of the plan, the
// router (committed triggers → deliveries) and the deliver worker (due deliveries → outputs),
// plus swapping mappings at run time.
//
// Roles (main.ts `--role`): an ingest process only commits (its consent API still cancels
// timers and queues consent pushes); a worker routes and delivers; `all` does both. With
// several processes on Redis, one worker at a time routes (workers/cluster.ts).
//
// Reload. Rules and templates are data (docs/architecture.md invariant 5): a reload loads the
// whole configuration again and, only when it is valid, swaps rules and templates in one
// assignment, so a trigger is routed and a delivery rendered with either the old plan or
// the new one, never a mix. Connectors (inputs, outputs, server) are not swapped — sockets
// and adapters need a restart: a reload that changes them says so, and one whose rules name
// an output that is not running is refused.
import { existsSync, watch, type FSWatcher } from 'node:fs';
import path from 'node:path';
import type { DeliveryAdmin } from '../api/delivery-routes.ts';
import type { CarerelayPlan, InstancePlan } from '../config/load.ts';
import { DEFAULT_DELIVERIES, type DeliveriesConfig } from '../config/server-schema.ts';
import { readSecret, type Env } from '../config/yaml.ts';
import { ConfigError, type ConfigIssue } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { OutboundAdapter, OutputDeps, OutputSpec } from '../outputs/spec.ts';
import type { TemplateSet } from '../pipeline/render.ts';
import type { PolicySettings } from '../pipeline/policy.ts';
import type { Rule } from '../pipeline/rule.ts';
import { displayZone, patientZone } from '../pipeline/zones.ts';
import type { Queue, QueueOptions } from '../queue/queue.ts';
import type { RedisQueues } from '../queue/redis-cluster.ts';
import { SqliteQueue, type SqliteQueueOptions } from '../queue/sqlite.ts';
import { openSqliteDatabase, type Database } from '../store/sqlite-db.ts';
import { SqliteStore } from '../store/sqlite.ts';
import type { OutboxEntry, OutboxQuery, Store } from '../store/store.ts';
import type { Trigger } from '../types.ts';
import { ConsentService } from './consent.ts';
import { openStore, storeFile, type StoreLocation } from './store-setup.ts';
import { CONSENT_MIRROR_QUEUE, ConsentSync, type ConsentTool, type MirrorJob } from './consent-sync.ts';
import { ClusterRouting, type ClusterLink } from './cluster.ts';
import { createDeliverHandler, DeliverReason, logDeadDeliveries, recordDeadDeliveries, storeOutboxSink } from './deliver.ts';
import { OutputGates } from './output-gate.ts';
import { DeliveryReplay } from './replay.ts';
import { ReplyRuntime, WRITE_BACK_QUEUE, type WriteBackJob } from './replies.ts';
import { OFFER_PURPOSE, WAITLIST_QUEUE, WaitlistRuntime, type WaitlistJob } from './waitlist.ts';
import { Router, deliveryJobId, parseDeliveryJobId, type DeliveryJob } from './router.ts';
import type { UnsubscribeLinks } from './unsubscribe.ts';
import type { VideoLinks } from './video.ts';

/** Name of the embedded queue holding delivery timers. */
export const DELIVERY_QUEUE = 'deliveries';

/**
 * Delivery jobs running at once (server.deliveries.concurrency). A job waits for about four
 * group commits (take, the output's write, finish, complete: a few ms each), so confirmations
 * due at once keep up with ingest at thousands per second only with dozens in flight; each
 * waiting job costs a promise, not a thread. Each output has at most
 * server.deliveries.outputConcurrency calls in flight (output-gate.ts).
 */
export const DEFAULT_DELIVERY_CONCURRENCY = DEFAULT_DELIVERIES.concurrency;


/** Log reason codes of reloads. */
export const ReloadReason = {
  /** The new configuration has errors: the old plan stays. */
  Invalid: 'invalid',
  /** A rule names an output that is not running (outputs start only at start-up). */
  OutputNotRunning: 'output_not_running',
  /** Inputs, outputs or server settings differ from the running ones: restart to apply them. */
  ConnectorsChanged: 'connectors_changed',
} as const;

export type ReloadResult =
  | { ok: true; rules: number; templates: number; restartNeeded: boolean }
  | { ok: false; issues: ConfigIssue[] };

/** What a process does: take messages in, route and deliver, or both (one process). */
export const Role = {
  Ingest: 'ingest',
  Worker: 'worker',
  All: 'all',
} as const;
export type Role = (typeof Role)[keyof typeof Role];
export const ROLES: readonly Role[] = Object.values(Role);

/** How long a worker waits for another process's routing of a job it took, ms. */
const ROUTED_WAIT_MS = 2_000;

export interface DeliveryRuntimeOptions {
  /** The embedded store's database: the embedded queue lives there. Not needed with `redis`. */
  db?: Database;
  /** BullMQ on Redis instead of the embedded queue, and the link to the other processes. */
  redis?: { queues: RedisQueues; cluster: ClusterLink };
  store: Store;
  plan: CarerelayPlan;
  log: Logger;
  outputSpecs: readonly OutputSpec[];
  /** Epoch ms for routing, the queue and send-time checks; injected by tests. Default Date.now. */
  now?: () => number;
  /** Delivery jobs running at once. Default server.deliveries.concurrency of the plan. */
  concurrency?: number;
  queue?: Omit<QueueOptions, 'now'>;
  /** Signed unsubscribe links of non-care emails (workers/unsubscribe.ts). */
  links: UnsubscribeLinks;
  /** Video-visit links, for rules with send.videoLink (workers/video.ts); without it such messages are suppressed no_join_info. */
  video?: VideoLinks;
  /** Searches the EHR's waitlist before a wave (waitlist sources.searchFhir; main.ts binds it to that input's FhirIngest). */
  waitlistSearch?: () => Promise<void>;
  /** Where outputs' secret references ({ env: NAME }) are read. Default: process.env. */
  env?: Env;
  /** How often tools' consent changes are read (workers/consent-sync.ts). Default 60 s. */
  consentPollEveryMs?: number;
  /** Test-only fault hook (main.ts CARERELAY_FAULT): called after each accepted send. */
  afterSend?: () => void;
}

/**
 * Builds the running adapter of every output of the plan. Every adapter gets the same deps
 * (OutputDeps: secrets, the receipts ledger, the contact holdings, the clock; an outbox also takes `sink`).
 */
export function createOutputs(outputs: readonly InstancePlan[], specs: readonly OutputSpec[], deps: object): Map<string, OutboundAdapter> {
  const adapters = new Map<string, OutboundAdapter>();
  for (const output of outputs) {
    const spec = specs.find((s) => s.type === output.type);
    // The loader refused unknown types; a type without create() cannot send yet.
    if (!spec?.create) continue;
    adapters.set(output.name, spec.create(output.config, deps));
  }
  return adapters;
}

function sharesCommit(store: Store, db: Database): store is SqliteStore {
  return store instanceof SqliteStore && store.db === db;
}

/**
 * The embedded delivery queue on the store's file. With the SQLite store on the same
 * database, every queue write rides in the store's group commit, and a dead-lettered job's
 * delivery is marked `failed` in the same transaction as the job (a crash between the two
 * cannot leave a pending delivery without a timer).
 */
export function createDeliveryQueue(db: Database, store: Store, options: Omit<SqliteQueueOptions, 'name' | 'committer' | 'onDeadLetter' | 'onParked'> = {}): SqliteQueue<DeliveryJob> {
  if (!sharesCommit(store, db)) {
    // Its writes cannot commit in the store's transactions (another database, PostgreSQL): the
    // router drives it through its plain methods, queue ops before saveRouting (workers/router.ts).
    const queue = new SqliteQueue<DeliveryJob>(db, { ...options, name: DELIVERY_QUEUE });
    Object.defineProperty(queue, 'joinTransaction', { value: undefined });
    return queue;
  }
  const now = options.now ?? Date.now;
  const mark = (status: 'failed' | 'review') => ({ id, code }: { id: string; code: string }) => {
    const job = parseDeliveryJobId(id);
    if (job) store.finishDeliveryInWrite(job.deliveryId, job.generation, { status, reason: code, at: new Date(now()).toISOString() });
  };
  return new SqliteQueue<DeliveryJob>(db, {
    ...options,
    name: DELIVERY_QUEUE,
    committer: store,
    onDeadLetter: mark('failed'),
    onParked: mark('review'),
  });
}

/** The queue's timing from server.deliveries (seconds and hours → ms). */
export function deliveryQueueOptions(config: DeliveriesConfig): Pick<SqliteQueueOptions, 'leaseMs' | 'retry'> {
  return {
    leaseMs: Math.round(config.leaseSeconds * 1000),
    retry: {
      baseMs: Math.round(config.retry.firstDelaySeconds * 1000),
      capMs: Math.round(config.retry.maxDelaySeconds * 1000),
      spanMs: Math.round(config.retry.spanHours * 3_600_000),
    },
  };
}

function connectorsOf(plan: CarerelayPlan): string {
  const instances = (list: readonly InstancePlan[]) => list.map((i) => ({ type: i.type, name: i.name, config: i.config }));
  return JSON.stringify({ server: plan.server, policy: plan.policy, waitlist: plan.waitlist, inputs: instances(plan.inputs), outputs: instances(plan.outputs) });
}

export class DeliveryRuntime {
  readonly queue: Queue<DeliveryJob>;
  readonly router: Router;
  /** Several processes: who routes (undefined with the embedded queue). */
  readonly cluster: ClusterRouting | undefined;
  readonly outputs: ReadonlyMap<string, OutboundAdapter>;
  /** What stands in front of each output: circuit, limits, call slots (GET /api/outputs). */
  readonly gates: OutputGates;
  /** The admin API's view of the engine: outputs, a delivery's job, replay (api/delivery-routes.ts). */
  readonly admin: DeliveryAdmin;
  /** Consent checks, evidence and ways in (workers/consent.ts). */
  readonly consent: ConsentService;
  /** The signed unsubscribe links of non-care email (the API verifies them). */
  readonly links: UnsubscribeLinks;
  /** Consent kept in step with the tools holding the contact (workers/consent-sync.ts). */
  readonly consentSync: ConsentSync;
  /** Patients' answers to reminders and their write-backs (workers/replies.ts). */
  readonly replies: ReplyRuntime;
  /** Freed slots offered to the waitlist (workers/waitlist.ts); absent without a `waitlist` block. */
  readonly waitlist?: WaitlistRuntime;
  readonly #log: Logger;
  readonly #concurrency: number;
  readonly #connectors: string;
  #mappings: { rules: readonly Rule[]; templates: TemplateSet };
  readonly #policy: PolicySettings;
  readonly #handler: ReturnType<typeof createDeliverHandler>;
  #unsubscribe: (() => void) | undefined;
  #watcher: FSWatcher | undefined;
  #debounce: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(options: DeliveryRuntimeOptions) {
    const { store, plan, log } = options;
    const now = options.now ?? Date.now;
    this.#log = log;
    const settings = plan.server.deliveries ?? DEFAULT_DELIVERIES;
    this.#concurrency = options.concurrency ?? settings.concurrency;
    this.#connectors = connectorsOf(plan);
    this.#mappings = { rules: plan.mappings, templates: plan.templates };
    this.#policy = plan.policy.settings;
    const inputZones = new Map(plan.inputs.map((i) => [i.name, typeof i.config.timezone === 'string' ? i.config.timezone : undefined]));
    const redis = options.redis;
    if (!redis && !options.db) throw new Error('DeliveryRuntime needs the embedded database (db) or Redis (redis)');
    this.queue = redis
      ? redis.queues.open<DeliveryJob>(DELIVERY_QUEUE, {
          ...deliveryQueueOptions(settings),
          ...options.queue,
          now,
          // Kept in Redis until the store has it: a crash between the two loses no failure.
          onDeadLetter: async ({ id, code }) => {
            const job = parseDeliveryJobId(id);
            if (job) await store.finishDelivery(job.deliveryId, job.generation, { status: 'failed', reason: code, at: new Date(now()).toISOString() });
          },
          // An ambiguous failure of an output that does not dedupe: the delivery waits for review.
          onParked: async ({ id, code }) => {
            const job = parseDeliveryJobId(id);
            if (job) await store.finishDelivery(job.deliveryId, job.generation, { status: 'review', reason: code, at: new Date(now()).toISOString() });
          },
        })
      : createDeliveryQueue(options.db!, store, { ...deliveryQueueOptions(settings), ...options.queue, now });
    const outputDeps: OutputDeps & { sink: ReturnType<typeof storeOutboxSink> } = {
      sink: storeOutboxSink(store),
      now: () => new Date(now()),
      secret: (ref) => readSecret(ref, options.env ?? process.env, plan.configDir),
      receipts: store,
      holdings: store,
    };
    this.outputs = createOutputs(plan.outputs, options.outputSpecs, outputDeps);
    const afterSend = options.afterSend;
    if (afterSend) {
      for (const adapter of this.outputs.values()) {
        const send = adapter.send.bind(adapter);
        adapter.send = async (message, context) => {
          const receipt = await send(message, context);
          afterSend();
          return receipt;
        };
      }
    }
    this.gates = new OutputGates(
      plan.outputs.flatMap((o) => {
        const adapter = this.outputs.get(o.name);
        return adapter ? [{ name: o.name, type: o.type, info: adapter }] : [];
      }),
      {
        outputConcurrency: settings.outputConcurrency,
        circuit: {
          failures: settings.circuit.failures,
          failureRate: settings.circuit.failureRate,
          window: settings.circuit.window,
          openMs: Math.round(settings.circuit.openSeconds * 1000),
          maxOpenMs: Math.round(settings.circuit.maxOpenSeconds * 1000),
        },
        now,
        log,
      },
    );
    this.links = options.links;
    // Outputs that keep consent (workers/consent-sync.ts): a tool with a consent model when its
    // configuration has a `consent` block (salesforce-crm), a marketing tool taking optOut.
    const tools = new Map<string, ConsentTool>();
    for (const output of plan.outputs) {
      const adapter = this.outputs.get(output.name) as (OutboundAdapter & ConsentTool) | undefined;
      if (!adapter) continue;
      const consentModel = output.config.consent !== undefined && (adapter.mirrorConsent || adapter.pollConsent);
      if (consentModel) tools.set(output.name, adapter);
      else if (adapter.optOut) tools.set(output.name, { optOut: adapter.optOut.bind(adapter), ...(adapter.optOutChannels ? { optOutChannels: adapter.optOutChannels } : {}) });
    }
    let consentSync: ConsentSync | undefined;
    this.consent = new ConsentService({
      store,
      policy: this.#policy,
      output: (name) => this.outputs.get(name),
      // A delivery's one pending job is its current generation's, cancelled by its id; jobs
      // added by earlier versions carry the delivery id as a cancel key.
      cancelTimer: async (deliveryId, reason) => {
        const stored = await store.getDelivery(deliveryId);
        if (stored) await this.queue.cancel(deliveryJobId(deliveryId, stored.generation), reason);
        await this.queue.cancel(deliveryId, reason);
      },
      log,
      now,
      links: options.links,
      mirrors: { targets: (entry) => consentSync!.targets(entry), queue: (event, outputs) => consentSync!.queue(event, outputs) },
    });
    consentSync = new ConsentSync({
      store,
      consent: this.consent,
      queue: redis ? redis.queues.open<MirrorJob>(CONSENT_MIRROR_QUEUE, { now }) : new SqliteQueue<MirrorJob>(options.db!, { name: CONSENT_MIRROR_QUEUE, now }),
      tools,
      log,
      now,
      ...(options.consentPollEveryMs !== undefined ? { pollEveryMs: options.consentPollEveryMs } : {}),
    });
    this.consentSync = consentSync;
    let cluster: ClusterRouting | undefined;
    this.router = new Router({
      store,
      queue: this.queue,
      ...(redis ? { mayRoute: () => cluster!.mayRoute(), onSaved: () => cluster!.onSaved() } : {}),
      rules: () => this.#mappings.rules,
      // The patient's zone: site → organisation (pipeline/zones.ts; addresses are not mapped to zones yet).
      zoneFor: (trigger) => patientZone(trigger, this.#policy),
      quietHours: this.#policy.quietHours,
      log,
      now,
      idempotentOutput: (name) => this.outputs.get(name)?.idempotent ?? false,
      needsAddress: (name) => this.outputs.get(name)?.needsAddress,
    });
    this.cluster = cluster = redis ? new ClusterRouting({ router: this.router, link: redis.cluster, log }) : undefined;
    if (options.plan.waitlist !== undefined) {
      this.waitlist = new WaitlistRuntime(
        redis ? redis.queues.open<WaitlistJob>(WAITLIST_QUEUE, { now }) : new SqliteQueue<WaitlistJob>(options.db!, { name: WAITLIST_QUEUE, now }),
        {
          store,
          config: options.plan.waitlist,
          policy: this.#policy,
          output: (name) => this.outputs.get(name),
          // Through onCommitted: with several processes the routing lease holder routes them.
          onTriggers: (triggers) => this.onCommitted(triggers),
          // A patient whose ledger says no to care texts is not offered a slot (the send-time check would stop it anyway).
          ...(options.waitlistSearch !== undefined ? { searchEhr: options.waitlistSearch } : {}),
          smsAllowed: async (patientId) => {
            const consent = await this.consent.effectiveConsent(patientId);
            return !consent.deceased && (consent.states.find((c) => c.purpose === OFFER_PURPOSE && c.channel === 'sms')?.allowed ?? true);
          },
          log,
          now,
        },
      );
    }
    this.replies = new ReplyRuntime(
      redis ? redis.queues.open<WriteBackJob>(WRITE_BACK_QUEUE, { now }) : new SqliteQueue<WriteBackJob>(options.db!, { name: WRITE_BACK_QUEUE, now }),
      {
        store,
        keywords: this.consent,
        policy: this.#policy,
        rules: () => this.#mappings.rules,
        // Through onCommitted: with several processes the routing lease holder routes them.
        onAnswer: (triggers) => this.onCommitted(triggers),
        output: (name) => this.outputs.get(name),
        ...(this.waitlist !== undefined ? { waitlist: this.waitlist.service } : {}),
        log,
        now,
      },
    );
    const handler = createDeliverHandler({
      store,
      gate: this.replies.gate(this.consent),
      admission: this.gates,
      output: (name) => this.outputs.get(name),
      templates: () => this.#mappings.templates,
      // The place of the appointment: the site's zone, else the receiving input's, else each time's own offset.
      displayZone: async (delivery) => {
        const [trigger, input] = await Promise.all([store.getTrigger(delivery.triggerId), store.triggerInput(delivery.triggerId)]);
        return trigger ? displayZone(trigger, this.#policy, input === undefined ? undefined : inputZones.get(input)) : undefined;
      },
      log,
      now,
      // Another process may be routing (several processes): its announcement, or a short wait.
      routingSettled: async () => {
        await this.router.settled();
        if (this.cluster && !this.cluster.leader) await this.cluster.routedOrAfter(ROUTED_WAIT_MS);
      },
      unsubscribeLinks: (delivery) => this.consent.unsubscribeLinks(delivery),
      // The rule as the current plan says it (templates come from the same plan).
      videoLink: async (delivery, page) => {
        if (!this.#mappings.rules.find((r) => r.id === delivery.ruleId)?.send.videoLink) return undefined;
        return options.video === undefined ? { unavailable: DeliverReason.NoJoinInfo } : options.video.mint(delivery, page);
      },
      ...(this.waitlist !== undefined ? { offerClosed: (offerId: string) => this.waitlist!.service.offerClosed(offerId) } : {}),
    });
    // The embedded store marks a dead-lettered delivery failed in the dead-letter's own write
    // (createDeliveryQueue), BullMQ through onDeadLetter (above); any other pair is told after the fact.
    this.#unsubscribe =
      redis || (options.db && sharesCommit(store, options.db)) ? logDeadDeliveries(this.queue, log) : recordDeadDeliveries(this.queue, store, log, now);
    this.queue.subscribe((event) => {
      if (event.type === 'error') log.error('queue.error', { code: event.code });
      // Ambiguous failure of a non-idempotent output: the delivery is in `review`, a person decides (replay).
      if (event.type === 'parked') log.warn('deliver.review', { deliveryId: parseDeliveryJobId(event.id)?.deliveryId ?? event.id, reason: event.code, attempt: event.attempt });
    });
    this.#handler = handler;
    const replay = new DeliveryReplay({ store, queue: this.queue, idempotentOutput: (name) => this.outputs.get(name)?.idempotent ?? false, log, now });
    this.admin = {
      outputs: () => this.gates.states(),
      job: async (d) => {
        const job = await this.queue.get(deliveryJobId(d.delivery.id, d.generation));
        if (job === undefined) return undefined;
        return {
          state: job.state,
          attempts: job.attempts,
          deferrals: job.deferrals,
          runAt: job.runAt,
          ...(job.lastError !== undefined ? { lastError: job.lastError } : {}),
          ...(job.retryUntil !== undefined ? { retryUntil: job.retryUntil } : {}),
        };
      },
      replay: (request, actor) => replay.replay(request, actor),
    };
  }

  /**
   * Routes what a crash left unrouted, then starts running due deliveries. With several
   * processes, routing is the lease holder's (workers/cluster.ts). An ingest process only
   * commits: it starts nothing here.
   */
  start(role: Role = Role.All): void {
    if (role === Role.Ingest) return;
    if (this.cluster) this.cluster.start();
    // Recovery is queued before any new trigger; timers run meanwhile.
    else void this.router.routeUnrouted().catch((error: unknown) => this.#log.error('route.failed', { code: (error as Error).name }));
    this.queue.process(this.#handler, { concurrency: this.#concurrency });
    void this.consentSync.start().catch((error: unknown) => this.#log.error('consent.sync_failed', { code: (error as Error).name }));
    this.replies.start();
    this.waitlist?.start();
  }

  /** The ingest hook (Hl7Ingest / FhirIngest onCommitted). */
  readonly onCommitted = (triggers: Trigger[]): void => {
    // Several processes: the holder of the routing lease sweeps what was committed.
    if (this.cluster) this.cluster.committed();
    else this.router.onCommitted(triggers);
    // Its failures are logged by the service; the triggers are committed and routed regardless.
    void this.waitlist?.service.onCommitted(triggers).catch(() => undefined);
  };

  /** The rules in force now. */
  get rules(): readonly Rule[] {
    return this.#mappings.rules;
  }

  /** Resolves once routing is done and no delivery is due or running (tests, shutdown). */
  async idle(): Promise<void> {
    // A waitlist step (a wave, a booking) routes new triggers, and an answer queues a booking: a
    // few passes until all of them are quiet.
    for (let pass = 0; pass < (this.waitlist !== undefined ? 3 : 1); pass++) {
      await this.waitlist?.idle();
      // Several processes: route what any of them committed, when this one holds the duty.
      await this.cluster?.settle();
      await this.router.idle();
      await this.queue.idle();
      await this.replies.idle();
    }
  }

  /**
   * Loads the configuration again with `load` and swaps rules and templates when it is
   * valid; otherwise keeps the running plan and logs each problem's place (the issues are
   * returned for the CLI to print).
   */
  async reload(load: () => Promise<CarerelayPlan>): Promise<ReloadResult> {
    let next: CarerelayPlan;
    try {
      next = await load();
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      return this.#refuseReload(ReloadReason.Invalid, error.issues);
    }
    const missing = next.mappings.filter((r) => !this.outputs.has(r.send.output));
    if (missing.length > 0) {
      const issues = missing.map((r) => ({
        file: 'mappings',
        message: `rule "${r.id}" sends through output "${r.send.output}", which is not running; restart CareRelay to start new outputs`,
      }));
      return this.#refuseReload(ReloadReason.OutputNotRunning, issues);
    }
    const restartNeeded = connectorsOf(next) !== this.#connectors;
    if (restartNeeded) this.#log.warn('config.restart_needed', { reason: ReloadReason.ConnectorsChanged });
    // One assignment: routing and rendering see the old plan or the new one, never half.
    this.#mappings = { rules: next.mappings, templates: next.templates };
    this.#log.info('config.reloaded', { count: next.mappings.length });
    return { ok: true, rules: next.mappings.length, templates: next.templates.size, restartNeeded };
  }

  /**
   * Keeps the running plan and logs why: one `config.reload_failed` with the count, then one
   * `config.reload_issue` per problem with where it is (file, line, column, path in the
   * document). The words of each problem stay out of the log (free text); `carerelay
   * validate` prints them.
   */
  #refuseReload(reason: string, issues: ConfigIssue[]): ReloadResult {
    this.#log.error('config.reload_failed', { reason, issues: issues.length });
    for (const issue of issues) {
      this.#log.error('config.reload_issue', { reason, file: issue.file, line: issue.line, column: issue.column, path: issue.path });
    }
    return { ok: false, issues };
  }

  /**
   * Reloads when a file under `dir` (mappings/) changes, after `debounceMs` of quiet (an
   * editor's save is several events). A missing directory is not watched.
   */
  watchMappings(dir: string, reload: () => Promise<unknown>, debounceMs = 300): void {
    if (this.#watcher || this.#stopped) return;
    try {
      this.#watcher = watch(path.resolve(dir), { recursive: true, persistent: false }, () => {
        if (this.#debounce) clearTimeout(this.#debounce);
        this.#debounce = setTimeout(() => {
          this.#debounce = undefined;
          if (!this.#stopped) void reload().catch((error: unknown) => this.#log.error('config.reload_failed', { code: (error as Error).name }));
        }, debounceMs);
        this.#debounce.unref();
      });
      this.#watcher.on('error', () => this.#log.warn('config.watch_failed', { reason: 'watch_error' }));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') this.#log.warn('config.watch_failed', { code: code ?? 'error' });
    }
  }

  /** Stops the watcher and the router, then the queue (running sends finish first). */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#watcher?.close();
    if (this.#debounce) clearTimeout(this.#debounce);
    await this.cluster?.stop();
    await this.router.close();
    await this.queue.close();
    await this.consentSync.stop();
    await this.replies.stop();
    await this.waitlist?.stop();
    this.#unsubscribe?.();
    await Promise.allSettled([...this.outputs.values()].map((o) => o.close?.()));
  }
}

/**
 * Outbox entries of the configured store, newest first (for `carerelay outbox`): the
 * PostgreSQL store named by `location`, else the embedded store in `dataDir`, opened read-only
 * so it works beside a running server. Throws a clear error when there is no store there yet.
 */
export async function listOutbox(
  options: { dataDir: string; location?: StoreLocation } & Omit<OutboxQuery, 'deliveryId'> & { deliveryId?: string },
): Promise<OutboxEntry[]> {
  const { dataDir: _dir, location, ...query } = options;
  if (location !== undefined && location.type !== 'sqlite') {
    // The configured PostgreSQL store (workers/store-setup.ts).
    const store = await openStore(location);
    try {
      return await store.listOutbox(query);
    } finally {
      await store.close();
    }
  }
  const file = storeFile(options.dataDir);
  if (!existsSync(file)) {
    throw new Error(`no CareRelay store at ${file}: check --data / CARERELAY_DATA, or start CareRelay once to create it`);
  }
  const db = openSqliteDatabase(file, { readonly: true });
  try {
    let store: SqliteStore;
    try {
      store = new SqliteStore(db);
    } catch (error) {
      // Read-only: a store written by an older CareRelay cannot be migrated from here.
      throw new Error(`cannot read the store at ${file} (${(error as Error).message}): start this CareRelay version once to update it`, { cause: error });
    }
    return await store.listOutbox(query);
  } finally {
    db.close();
  }
}
