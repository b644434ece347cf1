// Composition root: load config → plan → wire store, inputs, api → start. The only module
// that knows every other one (docs/architecture.md, dependency rule).
import type { Server } from 'node:http';
import path from 'node:path';
import { createApp, type HttpHl7Input } from './api/app.ts';
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
import { openSqliteDatabase } from './store/sqlite-db.ts';
import { SqliteStore } from './store/sqlite.ts';
import type { Store } from './store/store.ts';
import { Hl7Ingest, type Hl7IngestSettings } from './workers/ingest.ts';
import { StoreReadiness } from './workers/readiness.ts';
import { outputSpecs } from './outputs/index.ts';
import { metricsHandler } from './api/metrics-route.ts';
import { Metrics } from './workers/metrics.ts';
import { ALERT_QUEUE, Alerts, type AlertJob } from './workers/alerts.ts';
import { OpsEvents, observeOutputs, observeStore, subscriptionStatuses } from './workers/ops-events.ts';
import { SqliteQueue } from './queue/sqlite.ts';
import { OutcomeLinker } from './workers/outcomes.ts';
import { RetentionJob } from './workers/retention.ts';
import { DELIVERY_QUEUE, DeliveryRuntime, type ReloadResult } from './workers/runtime.ts';
import { dataDirUnsubscribeKey, unsubscribeLinks } from './workers/unsubscribe.ts';
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
   */
  reloadMappings(): Promise<ReloadResult>;
  /** Stops listeners (in-flight messages finish and are ACKed), then closes the store. */
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

  const adminToken = env[plan.server.admin.tokenEnv ?? 'CARERELAY_ADMIN_TOKEN'] || undefined;
  const adminTokens = (plan.server.admin.tokens ?? []).map((t) => ({ name: t.name, token: readSecret(t.token, env, plan.configDir), scopes: t.scopes }));
  let httpHost = plan.server.http.host;
  if (adminToken === undefined && adminTokens.length === 0 && httpHost !== '127.0.0.1' && httpHost !== 'localhost' && httpHost !== '::1') {
    // Without a token the admin API must not be reachable from the network.
    log.warn('api.loopback_only', { host: httpHost, reason: 'admin_token_unset' });
    httpHost = '127.0.0.1';
  }

  const dbFile = path.join(plan.server.dataDir, 'carerelay.db');
  const db = openSqliteDatabase(dbFile);
  const sqliteStore = new SqliteStore(db, { closeDatabase: true });
  // Every component writes through the watched store: a failed write makes /readyz say so.
  const readiness = new StoreReadiness(sqliteStore, {
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
    deliveries = new DeliveryRuntime({ db, store, plan, log, outputSpecs, env, links, video: videoLinks, ...(options.now ? { now: options.now } : {}), ...(afterSend ? { afterSend } : {}) });
    twilioStatus = twilioStatusHooks(plan.outputs, (ref) => readSecret(ref, env, plan.configDir));
    smsWebhooks = inboundSmsTokens(plan, (ref) => readSecret(ref, env, plan.configDir));
    toolHooks = toolWebhooks(plan.outputs, (ref) => readSecret(ref, env, plan.configDir), deliveries.outputs);
  } catch (error) {
    await store.close();
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
  for (const input of plan.inputs) {
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
  // Outcome triggers linked to the arms routing assigned (workers/outcomes.ts).
  const outcomes = new OutcomeLinker({ store, log, policy: policy.settings });
  // Metrics and alerts (docs/operations.md) on the operations events.
  const fhir = subscriptionStatuses(fhirIngests, plan.inputs);
  const inputNames = plan.inputs.map((i) => i.name);
  const metrics = new Metrics({ events, store, inputs: inputNames, outputs: plan.outputs.map((o) => o.name), rules: () => deliveries.rules, deliveryQueue: deliveries.queue, fhir, now });
  const retention = new RetentionJob({ store, config: plan.retention, sqlite: { db, write: (work) => sqliteStore.write(work), file: dbFile }, log, now });
  const alerts = new Alerts({
    config: plan.alerts,
    events,
    inputs: inputNames,
    outputs: deliveries.outputs,
    queue: new SqliteQueue<AlertJob>(db, { name: ALERT_QUEUE, now }),
    oldestDue: async () => (await deliveries.queue.list({ state: 'pending', limit: 1 }))[0]?.runAt,
    fhir,
    log,
    now,
  });
  const app = createApp({
    store,
    log,
    hl7Ingest: ingest,
    hl7Inputs: httpInputs,
    fhirInputs,
    adminToken,
    adminTokens,
    hl7Settings,
    twilioStatus,
    readiness: () => readiness.check(),
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
    outcomes: { linker: outcomes },
    metrics: metricsHandler(metrics, env[plan.server.metrics.tokenEnv] || undefined),
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
    await store.close();
    throw error;
  }
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
  deliveries.start();
  outcomes.start();
  alerts.start();
  retention.start();
  const reloadMappings = async (): Promise<ReloadResult> =>
    deliveries.reload(() => loadConfig({ configDir: options.configDir, env }));
  if (options.watchMappings ?? true) deliveries.watchMappings(path.join(plan.configDir, 'mappings'), reloadMappings);

  let resolveStopped!: () => void;
  const stopped = new Promise<void>((resolve) => {
    resolveStopped = resolve;
  });
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      await Promise.allSettled(mllpServers.map(({ server }) => server.close()));
      await Promise.allSettled(fhirPollers.map((p) => p.stop()));
      await new Promise<void>((resolve) => {
        http!.close(() => resolve());
        http!.closeAllConnections();
      });
      await Promise.allSettled([...fhirIngests.values()].map((i) => i.stop()));
      // Queue before store: running sends finish and record their outcome first.
      await deliveries.stop();
      await outcomes.stop();
      await alerts.stop();
      await retention.stop();
      metrics.close();
      await store.close();
      log.info('carerelay.stopped');
      resolveStopped();
    })();
    return stopping;
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
      void reloadMappings().catch((error: unknown) => log.error('config.reload_failed', { code: (error as Error).name }));
    };
  }

  log.info('carerelay.started', { dataDir: plan.server.dataDir, count: plan.inputs.length });
  const mllpStats = (name: string): MllpServerStats | undefined => mllpServers.find((m) => m.name === name)?.server.stats();
  return { plan, store, httpPort, mllpPorts, mllpStats, fhirIngests, deliveries, alerts, reloadMappings, stop, stopped };
}
