// Composition root: load config → plan → wire store, inputs, api → start. The only module
// that knows every other one (docs/architecture.md, dependency rule).
import type { Server } from 'node:http';
import path from 'node:path';
import { createApp, createProbeApp, type HttpHl7Input } from './api/app.ts';
import { inboundSmsTokens } from './api/consent-routes.ts';
import type { FlowInfo, FlowsInfo } from './api/dashboard/flows.ts';
import { REPLAY_MAX_LIMIT } from './workers/replay.ts';
import { twilioStatusHooks } from './api/hooks-routes.ts';
import { toolHooks as toolWebhooks } from './api/tool-hooks.ts';
import { loadConfig, type CarerelayPlan, type InstancePlan } from './config/load.ts';
import { readSecret, type Env, type SecretRef } from './config/yaml.ts';
import { MLLP_REFUSALS, MllpCloseReason, MllpServer, type MllpServerEvent, type MllpServerStats } from './hl7v2/mllp-server.ts';
import {
  HL7V2_HTTP,
  HL7V2_MLLP,
  NO_AUTH,
  mllpTrustedCertificateCNs,
  type Hl7v2HttpConfig,
  type Hl7v2MllpConfig,
} from './inputs/hl7v2/spec.ts';
import { FHIR_POLL, FHIR_REST_HOOK, type FhirPollConfig, type FhirRestHookConfig } from './inputs/fhir/spec.ts';
import type { FhirHttpInput } from './api/fhir-routes.ts';
import type { FhirIngest } from './workers/fhir-ingest.ts';
import type { FhirPoller } from './workers/fhir-poll.ts';
import { inboundAuthFor, poller as fhirPoller, restHookIngest } from './workers/fhir-setup.ts';
import { createLogger, type Logger } from './log.ts';
import { StoreType } from './config/store-schema.ts';
import { DataDirUse, lockDataDir, openSqliteDatabase } from './store/sqlite-db.ts';
import type { Store } from './store/store.ts';
import { Hl7Ingest, type Hl7IngestSettings } from './workers/ingest.ts';
import { StoreReadiness } from './workers/readiness.ts';
import { outputSpecs } from './outputs/index.ts';
import { metricsHandler } from './api/metrics-route.ts';
import { Metrics } from './workers/metrics.ts';
import { ALERT_QUEUE, Alerts, type AlertJob } from './workers/alerts.ts';
import { OpsEvents, observeOutputs, observeStore, subscriptionStatuses } from './workers/ops-events.ts';
import { SqliteQueue, ownTransactions, type SqliteCommitter } from './queue/sqlite.ts';
import { SqliteStore } from './store/sqlite.ts';
import { OutcomeLinker } from './workers/outcomes.ts';
import { RetentionJob } from './workers/retention.ts';
import { DELIVERY_QUEUE, DeliveryRuntime, Role, type ReloadResult } from './workers/runtime.ts';
import { QueueType } from './config/queue-schema.ts';
import { redactRedisUrl, redisUrlProblem } from './queue/redis.ts';
import { ClusterSignal, RedisLease, RedisQueues, RedisSignals } from './queue/redis-cluster.ts';
import { dataDirUnsubscribeKey, unsubscribeLinks } from './workers/unsubscribe.ts';
import { openStore, storeFile, storeLocation, storeLogFields } from './workers/store-setup.ts';
import { VideoLinks } from './workers/video.ts';
import { dataDirJoinKey, JoinVault, parseJoinKey } from './video/seal.ts';

export interface StartOptions {
  configDir: string;
  env: Env;
  log?: Logger;
  /** Install SIGTERM/SIGINT handlers that stop gracefully, and SIGHUP to reload mappings (the CLI does; tests do not). */
  handleSignals?: boolean;
  /** Reload mappings when a file under mappings/ changes. Default true; tests turn it off. */
  watchMappings?: boolean;
  /** Epoch-ms clock for routing, delivery timers and send-time checks; injected by tests. */
  now?: () => number;
  /**
   * What this process does (`carerelay start --role`): ingest (listeners: commit and ACK),
   * worker (route and deliver; /healthz and /readyz only on HTTP), or all (default). A split
   * needs the queue on Redis (server.queue type bullmq).
   */
  role?: Role;
}

export interface RunningCarerelay {
  plan: CarerelayPlan;
  store: Store;
  httpPort: number;
  /** Bound port of each MLLP input, by input name. */
  mllpPorts: ReadonlyMap<string, number>;
  /** Connection counters and buffered bytes of an MLLP input (MllpServer.stats). */
  mllpStats(input: string): MllpServerStats | undefined;
  /** Each fhir-rest-hook input's ingest, by input name (recoveryIdle() waits for its background recovery). */
  fhirIngests: ReadonlyMap<string, FhirIngest>;
  /** Router, delivery queue and outputs (deliveries.idle() waits for routing and due sends). */
  deliveries: DeliveryRuntime;
  /** Alert conditions and notifications (check() checks now; idle() waits for the notices to go). */
  alerts: Alerts;
  /**
   * Loads the configuration again and swaps rules and templates when it is valid; on
   * errors the running plan stays and the issues are returned. Connector changes need a restart.
   * With the queue on Redis the other processes are told to reload too.
   */
  reloadMappings(): Promise<ReloadResult>;
  /** This process's role. */
  role: Role;
  /**
   * Stops taking traffic (/readyz answers 503 at once; listeners stop accepting), lets
   * in-flight messages finish and their ACKs go out (HTTP requests get `graceMs`, default
   * 10 s), stops the delivery side (running sends finish), then closes the store and Redis.
   */
  stop(): Promise<void>;
  /** Resolves once stop() has completed, whoever called it. */
  stopped: Promise<void>;
}

function ingestSettings(name: string, config: Hl7v2MllpConfig | Hl7v2HttpConfig): Hl7IngestSettings {
  return {
    input: name,
    timezone: config.timezone,
    unknownMessageTypes: config.unknownMessageTypes,
    missingFieldAck: config.missingFieldAck,
    ackMode: config.ackMode,
    ...(config.virtualVisit !== undefined ? { virtualVisit: config.virtualVisit } : {}),
    ...(config.type === HL7V2_MLLP && config.tls?.allowedSenders ? { allowedSenders: config.tls.allowedSenders } : {}),
  };
}

/**
 * Test-only fault injection for the crash tests (docs/reliability.md promises 1 and 4):
 * CARERELAY_FAULT=kill-after-commit:N kills the process with SIGKILL right after the N-th
 * commit, before its ACK is written; kill-after-send:N right after the N-th output accepted
 * a message, before the delivery is recorded finished. Unset in every real deployment.
 */
function faultInjector(env: Env, point: 'commit' | 'send'): (() => void) | undefined {
  const m = /^kill-after-(commit|send):(\d+)$/.exec(env.CARERELAY_FAULT ?? '');
  if (m === null || m[1] !== point) return undefined;
  let remaining = Number(m[2]);
  return () => {
    if (--remaining === 0) process.kill(process.pid, 'SIGKILL');
  };
}

/** Refusals and first-byte timeouts come by the thousand in a flood: one line per reason per interval (ms). */
const REFUSAL_LOG_INTERVAL_MS = 10_000;
const THROTTLED_REASONS = new Set<string>([...MLLP_REFUSALS, MllpCloseReason.FirstByte]);

/**
 * Logs an MLLP input's closes (peer address, ids and reason codes only: never message content).
 * Refusals are counted; in a flood one line per reason per interval carries the running count.
 */
function mllpEventLogger(log: Logger, input: string): (event: MllpServerEvent) => void {
  const counts = new Map<string, number>();
  const lastLogged = new Map<string, number>();
  return (event) => {
    if (event.type !== 'connection_closed' || event.reason === 'peer' || event.reason === 'server_close') return;
    const fields = { input, peer: event.remoteAddress, connectionId: event.connectionId, reason: event.reason, code: event.errorCode };
    if (!THROTTLED_REASONS.has(event.reason)) {
      log.warn('mllp.connection_closed', fields);
      return;
    }
    const count = (counts.get(event.reason) ?? 0) + 1;
    counts.set(event.reason, count);
    const now = Date.now();
    if (now - (lastLogged.get(event.reason) ?? -Infinity) < REFUSAL_LOG_INTERVAL_MS) return;
    lastLogged.set(event.reason, now);
    log.warn('mllp.connection_refused', { ...fields, count });
  };
}

async function startMllpInput(
  input: InstancePlan<Hl7v2MllpConfig>,
  ingest: Hl7Ingest,
  env: Env,
  configDir: string,
  log: Logger,
  afterCommit: () => void,
): Promise<MllpServer> {
  const config = input.config;
  const settings = ingestSettings(input.name, config);
  const secret = (ref: SecretRef): string => readSecret(ref, env, configDir);
  const certificateCNs = config.tls?.requireClientCert ? mllpTrustedCertificateCNs(config) : [];
  const anyTrusted = config.trustedSenders.addresses.length > 0 || certificateCNs.length > 0;
  const server = new MllpServer({
    host: config.host,
    port: config.port,
    maxFrameBytes: config.maxFrameBytes,
    idleTimeoutMs: config.idleTimeoutSeconds * 1000,
    firstByteTimeoutMs: config.firstByteTimeoutSeconds * 1000,
    tlsHandshakeTimeoutMs: config.tlsHandshakeTimeoutSeconds * 1000,
    maxConnections: config.maxConnections,
    maxConnectionsPerAddress: config.maxConnectionsPerAddress,
    reservedConnections: anyTrusted ? config.reservedConnections : 0,
    trustedSenders: { addresses: config.trustedSenders.addresses, certificateCNs },
    ...(config.tls
      ? {
          tls: {
            cert: secret(config.tls.cert),
            key: secret(config.tls.key),
            ...(config.tls.ca ? { ca: secret(config.tls.ca) } : {}),
            requestClientCert: config.tls.requireClientCert,
          },
        }
      : {}),
    onEvent: mllpEventLogger(log, input.name),
    handler: async (message, peer) => {
      const result = await ingest.handle(message, settings, { certificateCN: peer.certificate?.subjectCN, remoteAddress: peer.remoteAddress });
      if (result.committed) afterCommit();
      // Not committed: the ingest answers AE so the sender keeps the message and resends
      // it. When it has no ACK to give (an unparseable frame that could not be recorded),
      // close without one: answering nothing on an open connection would leave the sender
      // waiting for an ACK that never comes.
      if (result.ack === undefined) return result.committed ? '' : null;
      // Enhanced mode may ask for no accept ACK at all (MSH-15 NE/ER/SU): '' sends nothing.
      // The bytes are the ACK in the message's own character set (MSH-18).
      return result.ackBytes ?? null;
    },
  });
  return server;
}

/** What the dashboard's Flows page shows of each input and output (api/dashboard/flows.ts). */
function flowsInfo(
  plan: CarerelayPlan,
  httpHost: string,
  mllpPorts: ReadonlyMap<string, number>,
  mllpStats: (name: string) => MllpServerStats | undefined,
  deliveries: DeliveryRuntime,
): FlowsInfo {
  const inputs = plan.inputs.map((input): FlowInfo => {
    if (input.type === HL7V2_MLLP) {
      const port = mllpPorts.get(input.name);
      const stats = mllpStats(input.name);
      const host = (input.config as unknown as Hl7v2MllpConfig).host;
      return {
        name: input.name,
        type: input.type,
        listening: port !== undefined,
        detail: port === undefined ? 'not listening' : `${host}:${port} · ${stats?.connections ?? 0} connection${stats?.connections === 1 ? '' : 's'}`,
      };
    }
    if (input.type === HL7V2_HTTP) return { name: input.name, type: input.type, listening: true, detail: `POST /ingest/hl7v2/${input.name} on ${httpHost}` };
    if (input.type === FHIR_REST_HOOK) return { name: input.name, type: input.type, listening: true, detail: `POST /ingest/fhir/${input.name} on ${httpHost}` };
    if (input.type === FHIR_POLL) return { name: input.name, type: input.type, listening: true, detail: `polls every ${(input.config as unknown as FhirPollConfig).intervalSeconds} s` };
    return { name: input.name, type: input.type };
  });
  const outputs = plan.outputs.map((output): FlowInfo => ({ name: output.name, type: output.type, ...(deliveries.outputs.get(output.name) ? { channel: deliveries.outputs.get(output.name)!.channel } : {}) }));
  return { inputs, outputs };
}

export async function startCarerelay(options: StartOptions): Promise<RunningCarerelay> {
  const log = options.log ?? createLogger();
  const env = options.env;
  // SIGHUP's default action ends the process: take it over before start-up begins, and
  // reload only once there is a running plan to replace.
  let onReloadSignal: (() => void) | undefined;
  if (options.handleSignals) {
    process.on('SIGHUP', () => {
      if (onReloadSignal === undefined) log.warn('config.reload_ignored', { signal: 'SIGHUP', reason: 'starting' });
      else onReloadSignal();
    });
  }
  const plan = await loadConfig({ configDir: options.configDir, env });
  const role = options.role ?? Role.All;
  const redis = await openRedisQueue(plan, env, log, role);

  const adminToken = env[plan.server.admin.tokenEnv ?? 'CARERELAY_ADMIN_TOKEN'] || undefined;
  const adminTokens = (plan.server.admin.tokens ?? []).map((t) => ({ name: t.name, token: readSecret(t.token, env, plan.configDir), scopes: t.scopes }));
  let httpHost = plan.server.http.host;
  if (adminToken === undefined && adminTokens.length === 0 && httpHost !== '127.0.0.1' && httpHost !== 'localhost' && httpHost !== '::1') {
    // Without a token the admin API must not be reachable from the network.
    log.warn('api.loopback_only', { host: httpHost, reason: 'admin_token_unset' });
    httpHost = '127.0.0.1';
  }

  // One process per data directory with the embedded queue; several with the queue on Redis.
  // The data dir's SQLite file holds the embedded queue, and the store unless server.store
  // names PostgreSQL (workers/store-setup.ts).
  const location = storeLocation(plan, env);
  let dataDirLock: { release(): void };
  let db: ReturnType<typeof openSqliteDatabase>;
  let opened: Store;
  try {
    dataDirLock = lockDataDir(plan.server.dataDir, redis ? DataDirUse.Shared : DataDirUse.Alone);
    try {
      db = openSqliteDatabase(storeFile(plan.server.dataDir));
    } catch (error) {
      dataDirLock.release();
      throw error;
    }
    try {
      opened = await openStore(location, location.type === StoreType.Sqlite ? db : undefined);
    } catch (error) {
      db.close();
      dataDirLock.release();
      throw error;
    }
  } catch (error) {
    await redis?.close();
    throw error;
  }
  const closeStore = async (): Promise<void> => {
    await opened.close();
    if (location.type !== StoreType.Sqlite) db.close();
    dataDirLock.release();
    await redis?.close();
  };
  if (location.type === StoreType.Postgres) log.info('store.opened', storeLogFields(location));
  // Every component writes through the watched store: a failed write makes /readyz say so.
  // The retention job prunes the embedded queue's finished jobs in the store's group commit when
  // the store is the same file, else in transactions of their own.
  const sqliteWrites: SqliteCommitter = opened instanceof SqliteStore ? { db, write: (work) => opened.write(work) } : ownTransactions(db);
  const readiness = new StoreReadiness(opened, {
    dataDir: plan.server.dataDir,
    minFreeDiskBytes: plan.server.minFreeDiskBytes,
  });
  // What the components write is observed for metrics and alerts (workers/ops-events.ts).
  const events = new OpsEvents();
  const store = observeStore(readiness.watch(), events);
  const afterSend = faultInjector(env, 'send');
  const policy = plan.policy;
  // The default public URL names the listener's port, known once it is bound (port 0 in tests).
  let publicUrl = policy.publicUrl;
  let deliveries: DeliveryRuntime;
  let twilioStatus: ReturnType<typeof twilioStatusHooks>;
  let smsWebhooks: Map<string, string>;
  let vault: JoinVault;
  let videoLinks: VideoLinks;
  let toolHooks: ReturnType<typeof toolWebhooks>;
  try {
    // Video visits (docs/video.md): join URLs are sealed with server.video.key, else with a key
    // kept in the data directory (which protects a copy of the database alone).
    const video = plan.server.video;
    const keyOf = (ref: Parameters<typeof readSecret>[0], what: string) => parseJoinKey(readSecret(ref, env, plan.configDir), what);
    vault = new JoinVault(
      video.key ? { id: video.keyId, key: keyOf(video.key, 'server.video.key') } : dataDirJoinKey(plan.server.dataDir),
      video.previousKeys.map((k, i) => ({ id: k.id, key: keyOf(k.key, `server.video.previousKeys[${i}].key`) })),
    );
    if (!video.key) log.warn('video.key_in_data_dir', { reason: 'key_not_configured' });
    videoLinks = new VideoLinks({ store, vault, window: video, publicUrl: () => publicUrl, log, ...(options.now ? { now: options.now } : {}) });
    const links = unsubscribeLinks({
      key: policy.unsubscribe.secret ? Buffer.from(readSecret(policy.unsubscribe.secret, env, plan.configDir), 'utf8') : dataDirUnsubscribeKey(plan.server.dataDir),
      publicUrl: () => publicUrl,
      ttlDays: policy.unsubscribe.ttlDays,
    });
    // Outputs start here: a secret that cannot be read, or is not what its output needs, stops the start.
    deliveries = new DeliveryRuntime({
      db,
      ...(redis ? { redis: { queues: redis.queues, cluster: { lease: redis.lease, signals: redis.signals } }, queue: { leaseMs: plan.server.queue.leaseSeconds * 1000 } } : {}),
      store, plan, log, outputSpecs, env, links, video: videoLinks, ...(options.now ? { now: options.now } : {}), ...(afterSend ? { afterSend } : {}),
      // The waitlist searches its FHIR input's server before a wave, where that input runs (not on a worker).
      ...(plan.waitlist?.sources.searchFhir !== undefined ? { waitlistSearch: async () => fhirIngests.get(plan.waitlist!.sources.searchFhir!)?.searchWaitlist() } : {}) });
    twilioStatus = twilioStatusHooks(plan.outputs, (ref) => readSecret(ref, env, plan.configDir));
    smsWebhooks = inboundSmsTokens(plan, (ref) => readSecret(ref, env, plan.configDir));
    toolHooks = toolWebhooks(plan.outputs, (ref) => readSecret(ref, env, plan.configDir), deliveries.outputs);
  } catch (error) {
    await closeStore();
    throw error;
  }
  observeOutputs(deliveries.outputs, events);
  deliveries.gates.onCircuitChange((output, state) => events.emit({ type: 'circuit', output, state }));
  events.watchQueue(deliveries.queue, DELIVERY_QUEUE);
  const consent = deliveries.consent;
  const rejectedRaw = plan.server.rejectedRaw;
  const ingest = new Hl7Ingest({ store, log, onCommitted: deliveries.onCommitted, rejectedRaw, onResend: events.resend, video: vault });
  const afterCommit = faultInjector(env, 'commit') ?? (() => {});

  const mllpServers: Array<{ name: string; server: MllpServer }> = [];
  const httpInputs = new Map<string, HttpHl7Input>();
  const fhirInputs = new Map<string, FhirHttpInput>();
  const fhirIngests = new Map<string, FhirIngest>();
  const fhirPollers: FhirPoller[] = [];
  const hl7Settings = new Map<string, Hl7IngestSettings>();
  // A Consent received on a FHIR input: kept and enforced before its record commits; one that
  // cannot be used is recorded as rejected with the reason.
  const onConsent = async (resource: Record<string, unknown>): Promise<{ rejected?: string }> => {
    const outcome = await consent.fhirConsent(resource, 'fhir', false);
    return outcome.kind === 'stored' ? {} : { rejected: outcome.kind === 'invalid' ? 'consent_invalid' : 'consent_unknown_patient' };
  };
  const fhirDeps = { store, log, env, configDir: plan.configDir, onCommitted: deliveries.onCommitted, onConsent, rejectedRaw, video: vault };
  // A worker takes no messages in: its listeners are the ingest processes'.
  for (const input of role === Role.Worker ? [] : plan.inputs) {
    if (input.type === HL7V2_MLLP) {
      const typed = input as unknown as InstancePlan<Hl7v2MllpConfig>;
      hl7Settings.set(input.name, ingestSettings(input.name, typed.config));
      mllpServers.push({ name: input.name, server: await startMllpInput(typed, ingest, env, plan.configDir, log, afterCommit) });
    } else if (input.type === HL7V2_HTTP) {
      const config = input.config as unknown as Hl7v2HttpConfig;
      if (config.auth === NO_AUTH) {
        // Deliberate (config/load.ts refuses a missing auth beyond loopback), and said at every start.
        log.warn('ingest.unauthenticated', { input: input.name, host: httpHost, reason: 'auth_none' });
      }
      hl7Settings.set(input.name, ingestSettings(input.name, config));
      httpInputs.set(input.name, {
        settings: ingestSettings(input.name, config),
        ...(typeof config.auth === 'object' ? { bearerToken: readSecret(config.auth.bearerToken, env, plan.configDir) } : {}),
        maxBodyBytes: config.maxBodyBytes,
      });
    } else if (input.type === FHIR_REST_HOOK) {
      const config = input.config as unknown as FhirRestHookConfig;
      const fhirIngest = restHookIngest(config, fhirDeps);
      fhirIngests.set(input.name, fhirIngest);
      fhirInputs.set(input.name, { ingest: fhirIngest, auth: inboundAuthFor(config.auth, env, plan.configDir), maxBodyBytes: config.maxBodyBytes });
    } else if (input.type === FHIR_POLL) {
      fhirPollers.push(fhirPoller(input.config as unknown as FhirPollConfig, fhirDeps));
    }
  }

  const now = options.now ?? Date.now;
  let stopping = false;
  let listening = false;
  // /readyz per role: an ingest process needs its listeners and the store (it commits and ACKs
  // without Redis); a worker the store and the queue; all both.
  const ready = async (): Promise<string | undefined> => {
    if (stopping) return 'stopping';
    if (role !== Role.Worker && !listening) return 'not_listening';
    const store = await readiness.check();
    if (store !== undefined) return store;
    if (redis && role !== Role.Ingest) {
      try {
        await redis.queues.ping();
      } catch {
        return 'queue_unreachable';
      }
    }
    return undefined;
  };
  // Outcome triggers linked to the arms routing assigned (workers/outcomes.ts).
  const outcomes = new OutcomeLinker({ store, log, policy: policy.settings });
  // Metrics and alerts (docs/operations.md) on the operations events.
  const fhir = subscriptionStatuses(fhirIngests, plan.inputs);
  const inputNames = plan.inputs.map((i) => i.name);
  const metrics = new Metrics({ events, store, inputs: inputNames, outputs: plan.outputs.map((o) => o.name), rules: () => deliveries.rules, deliveryQueue: deliveries.queue, fhir, now });
  // The data dir's file size is the store's only when the store is in it (else: the queue's).
  const retentionFile = location.type === StoreType.Sqlite ? { file: storeFile(plan.server.dataDir) } : {};
  const retention = new RetentionJob({ store, config: plan.retention, sqlite: { ...sqliteWrites, ...retentionFile }, log, now });
  const alerts = new Alerts({
    config: plan.alerts,
    events,
    inputs: inputNames,
    outputs: deliveries.outputs,
    // Several processes: notices wait on Redis with the deliveries, sent once by whichever process takes them.
    queue: redis ? redis.queues.open<AlertJob>(ALERT_QUEUE, { now }) : new SqliteQueue<AlertJob>(db, { name: ALERT_QUEUE, now }),
    oldestDue: async () => (await deliveries.queue.list({ state: 'pending', limit: 1 }))[0]?.runAt,
    fhir,
    log,
    now,
  });
  const metricsRoute = metricsHandler(metrics, env[plan.server.metrics.tokenEnv] || undefined);
  const app = role === Role.Worker ? createProbeApp(ready, metricsRoute) : createApp({
    store,
    log,
    hl7Ingest: ingest,
    hl7Inputs: httpInputs,
    fhirInputs,
    adminToken,
    adminTokens,
    hl7Settings,
    twilioStatus,
    readiness: ready,
    consent: { consent, links: deliveries.links, smsWebhooks, publicUrl: () => publicUrl, now, inboundSms: (message) => deliveries.replies.service.inboundSms(message) },
    deliveries: deliveries.admin,
    dashboard: {
      zone: policy.settings.timezone,
      now: () => new Date(now()),
      flows: () => flowsInfo(plan, httpHost, mllpPorts, (name) => mllpServers.find((m) => m.name === name)?.server.stats(), deliveries),
      queue: deliveries.queue,
      rules: () => deliveries.rules,
      // The engine's replay (the same idempotency key, audited) and its outputs' circuits.
      replay: (request, caller) =>
        deliveries.admin
          .replay('ids' in request ? request : { status: request.filter.status, ...(request.filter.rule !== undefined ? { rule: request.filter.rule } : {}), limit: REPLAY_MAX_LIMIT }, caller.name)
          .then((r) => ({ replayed: r.replayed.map((x) => x.id), refused: r.refused })),
      outputStates: async () => new Map(deliveries.admin.outputs().map((o) => [o.name, { state: o.circuit.state, ...(o.circuit.lastError !== undefined ? { detail: o.circuit.lastError } : {}) }])),
    },
    video: { links: videoLinks, publicUrl: () => publicUrl },
    toolHooks: { hooks: toolHooks, consent, publicUrl: () => publicUrl, now },
    outcomes: { linker: outcomes, waitlist: plan.waitlist !== undefined },
    metrics: metricsRoute,
  });
  const mllpPorts = new Map<string, number>();
  let http: Server | undefined;
  try {
    for (const { name, server } of mllpServers) {
      const { port } = await server.listen();
      mllpPorts.set(name, port);
      log.info('mllp.listening', { input: name, port });
    }
    http = await new Promise<Server>((resolve, reject) => {
      const s = app.listen(plan.server.http.port, httpHost, () => resolve(s));
      s.once('error', reject);
    });
  } catch (error) {
    await Promise.allSettled(mllpServers.map(({ server }) => server.close()));
    await deliveries.stop();
    await closeStore();
    throw error;
  }
  listening = true;
  // Slow or silent HTTP clients must not hold sockets (docs/reliability.md promise 10).
  http.headersTimeout = 20_000;
  http.requestTimeout = 60_000;
  http.keepAliveTimeout = 5_000;
  const address = http.address();
  const httpPort = typeof address === 'object' && address !== null ? address.port : plan.server.http.port;
  if (!policy.publicUrlConfigured) publicUrl = `http://${httpHost.includes(':') ? `[${httpHost}]` : httpHost}:${httpPort}`;
  log.info('http.listening', { host: httpHost, port: httpPort });
  // FHIR: heartbeat-silence monitors and pollers start once the endpoint can receive.
  for (const fhirIngest of fhirIngests.values()) fhirIngest.start();
  for (const p of fhirPollers) p.start();
  deliveries.start(role);
  let lastReload = 0;
  const reloadMappings = async (): Promise<ReloadResult> => {
    lastReload = Date.now();
    return deliveries.reload(() => loadConfig({ configDir: options.configDir, env }));
  };
  // Several processes: a reload here (SIGHUP, a mapping change) is announced, and each process
  // reloads its own files; one that reloaded within the last second skips the announcement.
  const reloadEverywhere = async (): Promise<ReloadResult> => {
    const result = await reloadMappings();
    redis?.signals.publish(ClusterSignal.Reload);
    return result;
  };
  redis?.signals.on(ClusterSignal.Reload, () => {
    if (Date.now() - lastReload < 1_000) return;
    log.info('config.reloading', { reason: 'cluster_signal', pid: process.pid });
    void reloadMappings().catch((error: unknown) => log.error('config.reload_failed', { code: (error as Error).name }));
  });
  if (options.watchMappings ?? true) deliveries.watchMappings(path.join(plan.configDir, 'mappings'), reloadEverywhere);
  alerts.start();
  // Linking outcomes and retention work on the shared store: the processes that route do them.
  if (role !== Role.Ingest) {
    outcomes.start();
    retention.start();
  }

  let resolveStopped!: () => void;
  const stopped = new Promise<void>((resolve) => {
    resolveStopped = resolve;
  });
  let stopRun: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopRun ??= (async () => {
      // Not ready from now on: a load balancer stops sending while in-flight work finishes.
      stopping = true;
      // Every listener stops accepting at once; then in-flight messages finish and get their
      // ACK (MLLP: the frame in flight; HTTP: requests under way, idle keep-alives closed now).
      const httpClosed = closeHttpGracefully(http!, HTTP_DRAIN_MS);
      await Promise.allSettled([...mllpServers.map(({ server }) => server.close()), ...fhirPollers.map((p) => p.stop()), httpClosed]);
      await Promise.allSettled([...fhirIngests.values()].map((i) => i.stop()));
      // Queue before store: running sends finish and record their outcome first.
      await deliveries.stop();
      await outcomes.stop();
      await alerts.stop();
      await retention.stop();
      metrics.close();
      await closeStore();
      log.info('carerelay.stopped');
      resolveStopped();
    })();
    return stopRun;
  };

  if (options.handleSignals) {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      process.once(signal, () => {
        log.info('carerelay.stopping', { signal });
        void stop();
      });
    }
    onReloadSignal = () => {
      log.info('config.reloading', { signal: 'SIGHUP' });
      void reloadEverywhere().catch((error: unknown) => log.error('config.reload_failed', { code: (error as Error).name }));
    };
  }

  log.info('carerelay.started', { dataDir: plan.server.dataDir, count: plan.inputs.length, role, pid: process.pid });
  const mllpStats = (name: string): MllpServerStats | undefined => mllpServers.find((m) => m.name === name)?.server.stats();
  return { plan, store, httpPort, mllpPorts, mllpStats, fhirIngests, deliveries, alerts, role, reloadMappings: reloadEverywhere, stop, stopped };
}

/** How long in-flight HTTP requests may take to finish when stopping, ms. */
const HTTP_DRAIN_MS = 10_000;

/**
 * Stops accepting, closes idle keep-alive connections at once, lets requests under way finish
 * (an HTTP ingest's 2xx after its commit) for up to `graceMs`, then closes what is left.
 */
function closeHttpGracefully(server: Server, graceMs: number): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => server.closeAllConnections(), graceMs);
    timer.unref();
    server.close(() => {
      clearTimeout(timer);
      resolve();
    });
    server.closeIdleConnections();
  });
}

/** The Redis side of server.queue type bullmq, opened for one process. */
interface RedisQueue {
  queues: RedisQueues;
  signals: RedisSignals;
  lease: RedisLease;
  close(): Promise<void>;
}

/**
 * Opens the queue's Redis when server.queue says bullmq, and checks it keeps what it is given
 * (queue/redis.ts). A process that routes or delivers needs Redis now; an ingest process starts
 * without it (it commits and ACKs through the store), and says so. Undefined: embedded queue.
 */
async function openRedisQueue(plan: CarerelayPlan, env: Env, log: Logger, role: Role): Promise<RedisQueue | undefined> {
  const config = plan.server.queue;
  if (config.type !== QueueType.BullMq) {
    if (role !== Role.All) {
      throw new Error(`--role ${role} needs the queue on Redis: set server.queue type: bullmq (the embedded queue serves one process, --role all)`);
    }
    return undefined;
  }
  const url = readSecret(config.url!, env, plan.configDir);
  const problem = redisUrlProblem(url);
  if (problem !== undefined) throw new Error(`server.queue.url ${problem}`);
  const settings = { url, ...(config.password ? { password: readSecret(config.password, env, plan.configDir) } : {}) };
  const queues = new RedisQueues(settings, { prefix: config.prefix, name: `carerelay-${role}` });
  const where = redactRedisUrl(url);
  let reachable = true;
  try {
    await queues.ping();
  } catch (error) {
    reachable = false;
    if (role !== Role.Ingest) {
      await queues.close();
      throw new Error(`the queue's Redis at ${where} is not reachable (${(error as Error).message}); start Redis or fix server.queue.url`, { cause: error });
    }
    log.warn('queue.unreachable', { url: where, role, reason: 'redis_unreachable' });
  }
  if (!config.durable) log.warn('queue.not_durable', { url: where, reason: 'durable_false' });
  else if (reachable) {
    try {
      await queues.assertDurable();
    } catch (error) {
      await queues.close();
      throw error;
    }
  }
  const signals = new RedisSignals(queues.connection, config.prefix);
  // Subscribed before anything starts, so no announcement made after the start is missed.
  if (reachable) await signals.ready();
  const lease = new RedisLease(queues.connection, `${config.prefix}:routing-lease`, config.leaseSeconds * 1000);
  log.info('queue.redis', { url: where, prefix: config.prefix, role });
  return {
    queues,
    signals,
    lease,
    async close() {
      signals.close();
      await queues.close();
    },
  };
}
