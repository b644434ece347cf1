// The HTTP face of CareRelay (express): ingest endpoints, admin API, health.
//
// Authentication runs before any body is read (docs/reliability.md promise 11): routes that need
// a token check it first, and only then does the size-limited body reader run. A body that
// passes the limit is answered 413 and its connection closed at once, whatever its framing
// (a chunked body announces no length): the rest is never read (http.ts limitedRawBody).
import { timingSafeEqual } from 'node:crypto';
import express, { type NextFunction, type Request, type Response } from 'express';
import { ADMIN_SCOPES, AdminScope } from '../config/server-schema.ts';
import type { Logger } from '../log.ts';
import { subjectOf } from '../pipeline/route.ts';
import { STORED_DELIVERY_STATUSES, type DeliveryQuery, type MessageQuery, type Store, type StoredDelivery, type StoredDeliveryStatus, type StoredMessage, type TriggerQuery } from '../store/store.ts';
import { MessageStatus, type Trigger } from '../types.ts';
import type { Hl7Ingest, Hl7IngestSettings } from '../workers/ingest.ts';
import { sendItems } from './json-slices.ts';
import { createFhirAdminRouter, createFhirRouter, type FhirHttpInput } from './fhir-routes.ts';
import { createHooksRouter, type TwilioStatusHook } from './hooks-routes.ts';
import { bearerMatches, bearerToken, declaredOverLimit, digest, limitedRawBody, refuseUnread, sendProblem } from './http.ts';
import { createOperationsRouter } from './operations.ts';
import { createConsentRouter, type ConsentRoutesDeps } from './consent-routes.ts';
import { createDeliveryRouter, type DeliveryAdmin } from './delivery-routes.ts';
import { createDashboardRouter, type DashboardDeps } from './dashboard/dashboard.ts';
import { createVideoRouter, type VideoRoutesDeps } from './video-routes.ts';
import { createToolHooksRouter, type ToolHooksDeps } from './tool-hooks.ts';
import { createOutcomesRouter, type OutcomesRoutesDeps } from './outcomes-routes.ts';
import { createTaskRouter } from './task-routes.ts';

export interface HttpHl7Input {
  settings: Hl7IngestSettings;
  /**
   * Bearer token the sender must present; undefined = no auth (a loopback listener, or
   * `auth: none`: config/load.ts refuses it otherwise).
   */
  bearerToken?: string;
  /** Largest accepted body, bytes. */
  maxBodyBytes: number;
}

export interface ApiDeps {
  store: Store;
  log: Logger;
  hl7Ingest: Hl7Ingest;
  hl7Inputs: ReadonlyMap<string, HttpHl7Input>;
  /** fhir-rest-hook inputs by name (POST /ingest/fhir/<name>). */
  fhirInputs?: ReadonlyMap<string, FhirHttpInput>;
  /**
   * CARERELAY_ADMIN_TOKEN (or server.admin.tokenEnv): every scope, named "admin". When no
   * token at all is given the server must be bound to loopback only.
   */
  adminToken?: string;
  /** server.admin.tokens, their secrets read: each with its name and scopes. */
  adminTokens?: readonly AdminTokenSecret[];
  /** Every HL7v2 input (MLLP and HTTP) by name, as configured now: reprocess and release use it. */
  hl7Settings?: ReadonlyMap<string, Hl7IngestSettings>;
  /** Clock of audit entries; default the system clock. */
  now?: () => Date;
  /** twilio outputs taking status callbacks (POST /hooks/twilio/status/<name>), by name. */
  twilioStatus?: ReadonlyMap<string, TwilioStatusHook>;
  /** Undefined when ready to take traffic, else a reason code (workers/readiness.ts); default: the store answers. */
  readiness?: () => Promise<string | undefined>;
  /** The consent ways in and patient views (consent-routes.ts); absent: not served. */
  consent?: Omit<ConsentRoutesDeps, 'store' | 'log' | 'authenticate' | 'requireScope'>;
  /** The delivery engine: outputs' circuits, jobs, replay (delivery-routes.ts); absent: not served. */
  deliveries?: DeliveryAdmin;
  /** The operations dashboard at /ui (dashboard/dashboard.ts); absent: not served. */
  dashboard?: Omit<DashboardDeps, 'store' | 'log' | 'identity' | 'operations'>;
  /** The patients' video-visit links, GET/POST /v/<token> (video-routes.ts); absent: not served. */
  video?: Omit<VideoRoutesDeps, 'log'>;
  /** The marketing tools' opt-out and bounce webhooks (tool-hooks.ts); absent: not served. */
  toolHooks?: Omit<ToolHooksDeps, 'log'>;
  /** Outcome reports (outcomes-routes.ts): the linker that brings them up to date first. */
  outcomes?: Omit<OutcomesRoutesDeps, 'store'>;
  /** GET /metrics (workers/metrics.ts): authenticates on its own (its token, or loopback only). */
  metrics?: express.RequestHandler;
}

export interface AdminTokenSecret {
  name: string;
  token: string;
  scopes: readonly AdminScope[];
}

/** Who calls the admin API: the token's name and scopes ("local" with every scope when no token is configured). */
export interface AdminCaller {
  name: string;
  scopes: ReadonlySet<AdminScope>;
}

function requireBearer(expected: string | undefined) {
  return (req: Request, res: Response, next: NextFunction): void => {
    if (expected === undefined || bearerMatches(req.headers.authorization, expected)) {
      next();
      return;
    }
    res.setHeader('WWW-Authenticate', 'Bearer');
    refuseUnread(res, 401, 'Unauthorized', 'a valid bearer token is required');
  };
}

/** Name of the tokenEnv token, and of a caller on loopback when no token is configured. */
const ADMIN_TOKEN_NAME = 'admin';
const LOCAL_CALLER: AdminCaller = { name: 'local', scopes: new Set(ADMIN_SCOPES) };

/**
 * Who presents a token: the configured token it matches with its name and scopes, `local`
 * with every scope when no token is configured at all, undefined otherwise. Tokens are kept
 * as sha256 digests only, and every configured token is compared (in constant time) whichever
 * matches, so the answer time does not tell which. The admin API reads the token from the
 * Authorization header, the dashboard from its session cookie.
 */
export function adminIdentity(deps: Pick<ApiDeps, 'adminToken' | 'adminTokens'>): { identify(token: string | undefined): AdminCaller | undefined; tokensConfigured: boolean } {
  const tokens = [
    ...(deps.adminToken !== undefined ? [{ name: ADMIN_TOKEN_NAME, token: deps.adminToken, scopes: ADMIN_SCOPES }] : []),
    ...(deps.adminTokens ?? []),
  ].map((t) => ({ name: t.name, digest: digest(t.token), scopes: new Set(t.scopes) }));
  return {
    tokensConfigured: tokens.length > 0,
    identify(token) {
      if (tokens.length === 0) return LOCAL_CALLER;
      const presented = token === undefined ? undefined : digest(token);
      let caller: AdminCaller | undefined;
      for (const t of tokens) {
        if (presented !== undefined && timingSafeEqual(presented, t.digest) && caller === undefined) caller = { name: t.name, scopes: t.scopes };
      }
      return caller;
    },
  };
}

/** Authenticates an admin caller (before any body is read) and keeps who it is in res.locals.caller. */
function authenticateAdmin(deps: Pick<ApiDeps, 'adminToken' | 'adminTokens'>) {
  const { identify } = adminIdentity(deps);
  return (req: Request, res: Response, next: NextFunction): void => {
    const caller = identify(bearerToken(req.headers.authorization));
    if (caller === undefined) {
      res.setHeader('WWW-Authenticate', 'Bearer');
      refuseUnread(res, 401, 'Unauthorized', 'a valid bearer token is required');
      return;
    }
    res.locals.caller = caller;
    next();
  };
}

/** The authenticated admin caller of this request. */
export function callerOf(res: Response): AdminCaller {
  return res.locals.caller as AdminCaller;
}

/** Whether the caller holds `scope`. */
export function allowed(res: Response, scope: AdminScope): boolean {
  return callerOf(res).scopes.has(scope);
}

/** A route middleware refusing callers without `scope` (403 naming what is missing). */
export function requireScope(scope: AdminScope) {
  return (_req: Request, res: Response, next: NextFunction): void => {
    if (allowed(res, scope)) {
      next();
      return;
    }
    forbidden(res, scope, 'this request');
  };
}

export function forbidden(res: Response, scope: AdminScope, what: string): void {
  const caller = callerOf(res);
  sendProblem(res, 403, 'Forbidden', `${what} needs the "${scope}" scope; token "${caller.name}" has ${[...caller.scopes].join(', ') || 'none'}`);
}

/** Refuses a query parameter the endpoint does not know (a typo must not silently widen a search). */
export function knownQuery(req: Request, known: readonly string[]): void {
  for (const name of Object.keys(req.query)) {
    if (!known.includes(name)) throw new BadQuery(`unknown filter "${name}"; this endpoint takes ${known.join(', ')}`);
  }
}

export function queryString(req: Request, name: string): string | undefined {
  const v = req.query[name];
  // `status=a&status=b` arrives as a list: refused rather than silently dropping the filter.
  if (Array.isArray(v)) throw new BadQuery(`${name} may be given once (got ${v.length} values)`);
  return typeof v === 'string' && v !== '' ? v : undefined;
}

export function queryLimit(req: Request): number | undefined {
  const raw = queryString(req, 'limit');
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > 1000) throw new BadQuery('limit must be an integer between 1 and 1000');
  return n;
}

export function queryInstant(req: Request, name: string): string | undefined {
  const raw = queryString(req, name);
  if (raw === undefined) return undefined;
  if (!ISO_INSTANT.test(raw) || Number.isNaN(Date.parse(raw))) {
    throw new BadQuery(`${name} must be an ISO-8601 date-time, e.g. 2026-01-31T08:00:00Z (no zone means UTC)`);
  }
  return raw;
}

/** A query the API cannot use: answered 400 with its message. */
export class BadQuery extends Error {}

const ISO_INSTANT = /^\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?$/;

const MESSAGE_STATUSES = new Set<string>(Object.values(MessageStatus));

/** /readyz detail per reason code (workers/readiness.ts NotReady, main.ts per role). */
const READINESS_TEXT: Record<string, string> = {
  store_unreachable: 'the store is not reachable',
  disk_full: "the data directory's disk is full",
  read_only: 'the data directory is not writable',
  store_cannot_write: 'the store cannot write',
  queue_unreachable: "the queue's Redis is not reachable",
  not_listening: 'the listeners are not bound yet',
  stopping: 'shutting down: finishing what is in flight',
};

/** GET /healthz (the process answers) and GET /readyz (it can take traffic: `readiness`). */
function probeRoutes(app: express.Express, readiness: () => Promise<string | undefined>): void {
  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  app.get('/readyz', async (_req, res) => {
    const reason = await readiness();
    if (reason === undefined) {
      res.json({ status: 'ready' });
      return;
    }
    res.setHeader('Retry-After', '5');
    sendProblem(res, 503, 'Not ready', `${READINESS_TEXT[reason] ?? 'the store is not usable'} (${reason})`);
  });
}

/**
 * The HTTP listener of a worker process (`--role worker`): probes and its own /metrics only.
 * The ingest endpoints, provider callbacks, admin API and dashboard are the ingest processes'.
 */
export function createProbeApp(readiness: () => Promise<string | undefined>, metrics?: express.RequestHandler): express.Express {
  const app = express();
  app.disable('x-powered-by');
  probeRoutes(app, readiness);
  if (metrics) app.get('/metrics', metrics);
  app.use((_req, res) => sendProblem(res, 404, 'Not found', 'a worker process answers /healthz, /readyz and /metrics only; the API is on the ingest processes'));
  return app;
}

export function messageSummary(m: StoredMessage) {
  return {
    id: m.id,
    input: m.input,
    format: m.format,
    controlId: m.controlId,
    sender: m.sender,
    messageType: m.messageType,
    status: m.status,
    ackCode: m.ackCode,
    reason: m.reason,
    receivedAt: m.receivedAt,
    triggerIds: m.triggerIds,
    ...(m.patientId !== undefined ? { patientId: m.patientId } : {}),
    ...(m.origin !== undefined ? { origin: m.origin } : {}),
    ...(m.replaces !== undefined ? { replaces: m.replaces } : {}),
    ...(m.replacedBy !== undefined ? { replacedBy: m.replacedBy } : {}),
  };
}

/** A trigger without patient content (ids, type, times, source): what `read` alone sees. */
export function triggerSummary(t: Trigger) {
  return {
    id: t.id,
    type: t.type,
    occurredAt: t.occurredAt,
    receivedAt: t.receivedAt,
    source: t.source,
    ...(t.patient !== undefined ? { patientId: t.patient.id } : {}),
    ...(t.appointment?.id !== undefined ? { appointmentId: t.appointment.id } : {}),
    ...(t.encounter?.id !== undefined ? { encounterId: t.encounter.id } : {}),
  };
}

/** The whole trigger for callers allowed patient content, its summary otherwise. */
function triggerFor(res: Response, t: Trigger) {
  return allowed(res, AdminScope.Phi) ? t : triggerSummary(t);
}

/**
 * The deliveries a trigger planned or last moved (their delivery.triggerId is the trigger):
 * read through the subject's index, newest first.
 */
export async function deliveriesOfTrigger(store: Store, t: Trigger): Promise<StoredDelivery[]> {
  const all = await store.listDeliveries({ subjectKey: subjectOf(t).key, limit: 1000 });
  return all.filter((d) => d.delivery.triggerId === t.id);
}

export function deliverySummary(d: StoredDelivery) {
  const x = d.delivery;
  return {
    id: x.id,
    status: d.status,
    ...(d.reason !== undefined ? { reason: d.reason } : {}),
    ruleId: x.ruleId,
    subjectKey: x.subjectKey,
    step: x.step,
    patientId: x.patientId,
    triggerId: x.triggerId,
    purpose: x.purpose,
    channel: x.channel,
    output: x.output,
    plannedAt: x.plannedAt,
    dueAt: x.dueAt,
    ...(x.expiresAt !== undefined ? { expiresAt: x.expiresAt } : {}),
    ...(x.variant !== undefined ? { variant: x.variant } : {}),
    generation: d.generation,
    asOf: d.asOf,
    createdAt: d.createdAt,
    updatedAt: d.updatedAt,
  };
}

/** HL7 over HTTP answers with the ACK in ER7 (pipe) encoding, in the message's character set. */
function hl7ContentType(charset: string): string {
  return `x-application/hl7-v2+er7; charset=${charset}`;
}

export function createApp(deps: ApiDeps): express.Express {
  const { store, log } = deps;
  const app = express();
  app.disable('x-powered-by');
  app.set('query parser', 'simple');

  probeRoutes(
    app,
    deps.readiness ??
      (async (): Promise<string | undefined> => {
        try {
          await store.ping();
          return undefined;
        } catch {
          return 'store_unreachable';
        }
      }),
  );

  // HL7v2 over HTTP: POST the message (ER7) as the body, get the ACK back.
  app.post('/ingest/hl7v2/:input', (req, res, next) => {
    const input = deps.hl7Inputs.get(req.params.input);
    if (input === undefined) {
      refuseUnread(res, 404, 'Unknown input', `no hl7v2-http input named "${req.params.input}" is configured`);
      return;
    }
    requireBearer(input.bearerToken)(req, res, () => {
      // A declared length over the limit is refused before a byte of the body is read.
      if (declaredOverLimit(req, input.maxBodyBytes)) {
        refuseUnread(res, 413, 'Payload too large', "the body exceeds the input's size limit");
        return;
      }
      limitedRawBody(input.maxBodyBytes)(req, res, async (err?: unknown) => {
        if (err !== undefined) {
          next(err);
          return;
        }
        const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
        if (body.length === 0) {
          sendProblem(res, 400, 'Empty body', 'POST the HL7v2 message (ER7 encoding) as the request body');
          return;
        }
        try {
          const result = await deps.hl7Ingest.handle(body, input.settings, { remoteAddress: req.socket.remoteAddress ?? '' });
          const answer = result.ackBytes ?? Buffer.alloc(0);
          if (!result.committed) {
            // Nothing durable: tell the sender to retry (never a 2xx).
            res.setHeader('Retry-After', '5');
            res.status(503).type(hl7ContentType(result.ackCharset)).send(answer);
            return;
          }
          res.status(200).type(hl7ContentType(result.ackCharset)).send(answer);
        } catch (error) {
          next(error);
        }
      });
    });
  });

  app.use('/ingest/fhir', createFhirRouter({ inputs: deps.fhirInputs ?? new Map(), log }));
  // Provider callbacks about sent messages; each authenticates its own way (hooks-routes.ts).
  app.use('/hooks', createHooksRouter({ twilioStatus: deps.twilioStatus ?? new Map(), store, log }));
  if (deps.toolHooks) app.use('/hooks', createToolHooksRouter({ ...deps.toolHooks, log }));

  // Consent: ways in and patient views (consent-routes.ts), admin routes behind the same tokens.
  if (deps.consent) app.use(createConsentRouter({ ...deps.consent, store, log, authenticate: authenticateAdmin(deps), requireScope }));
  if (deps.video) app.use(createVideoRouter({ ...deps.video, log }));

  const admin = express.Router();
  admin.use(authenticateAdmin(deps));
  admin.use(requireScope(AdminScope.Read));

  admin.get('/messages', async (req, res) => {
    knownQuery(req, ['sender', 'controlId', 'status', 'input', 'patientId', 'messageType', 'triggerType', 'q', 'since', 'until', 'limit', 'before']);
    const status = queryString(req, 'status');
    if (status !== undefined && !MESSAGE_STATUSES.has(status)) {
      throw new BadQuery(`status must be one of ${[...MESSAGE_STATUSES].join(', ')}`);
    }
    const text = queryString(req, 'q');
    if (text !== undefined && !allowed(res, AdminScope.Phi)) {
      forbidden(res, AdminScope.Phi, 'searching the raw messages (q)');
      return;
    }
    if (text !== undefined && text.length > 200) throw new BadQuery('q is at most 200 characters');
    const query: MessageQuery = {
      sender: queryString(req, 'sender'),
      controlId: queryString(req, 'controlId'),
      status: status as MessageStatus | undefined,
      input: queryString(req, 'input'),
      patientId: queryString(req, 'patientId'),
      messageType: queryString(req, 'messageType'),
      triggerType: queryString(req, 'triggerType'),
      text,
      since: queryInstant(req, 'since'),
      until: queryInstant(req, 'until'),
      limit: queryLimit(req),
      before: queryString(req, 'before'),
    };
    const items = await store.listMessages(query);
    const limit = query.limit ?? 100;
    await sendItems(res, items, messageSummary, {
      ...(items.length === limit ? { next: items[items.length - 1]!.id } : {}),
      // Every message stored, per status (kept as they are stored: no scan, no paging).
      totals: await store.countMessages(),
    });
  });

  admin.get('/messages/:id', async (req, res) => {
    const m = await store.getMessage(req.params.id);
    if (m === undefined) {
      sendProblem(res, 404, 'Not found', `no message with id ${req.params.id}`);
      return;
    }
    const phi = allowed(res, AdminScope.Phi);
    // Each trigger with the deliveries it planned or last moved: the way from a message to
    // what it caused, without a search.
    const deliveries = await Promise.all(m.triggers.map(async (t) => (await deliveriesOfTrigger(store, t)).map(deliverySummary)));
    res.json({
      ...messageSummary(m),
      ...(phi ? { raw: m.raw.toString('utf8'), rawBase64: m.raw.toString('base64') } : {}),
      // Set when raw holds only the first bytes (a rejected message past the raw-bytes quota).
      ...(m.rawBytes !== undefined ? { rawBytes: m.rawBytes } : {}),
      ack: m.ack,
      triggers: m.triggers.map((t, i) => ({ ...triggerFor(res, t), deliveries: deliveries[i]! })),
      audit: await store.listAudit({ target: `message/${m.id}` }),
      links: {
        triggers: m.triggerIds.map((id) => `/api/triggers/${encodeURIComponent(id)}`),
        ...(m.replaces !== undefined ? { replaces: `/api/messages/${m.replaces}` } : {}),
        ...(m.replacedBy !== undefined ? { replacedBy: `/api/messages/${m.replacedBy}` } : {}),
      },
    });
  });

  admin.get('/triggers', async (req, res) => {
    knownQuery(req, ['type', 'patientId', 'appointmentId', 'encounterId', 'messageId', 'since', 'until', 'limit']);
    const query: TriggerQuery = {
      type: queryString(req, 'type'),
      patientId: queryString(req, 'patientId'),
      appointmentId: queryString(req, 'appointmentId'),
      encounterId: queryString(req, 'encounterId'),
      messageId: queryString(req, 'messageId'),
      since: queryInstant(req, 'since'),
      until: queryInstant(req, 'until'),
      limit: queryLimit(req),
    };
    await sendItems(res, await store.listTriggers(query), (t) => triggerFor(res, t), {});
  });

  // One trigger and why it planned what it did: the rules that matched (the deliveries it
  // planned or last moved) and the rules that matched its type but planned nothing, with
  // the reason the store recorded (null when this store records none).
  admin.get('/triggers/:id', async (req, res) => {
    const t = await store.getTrigger(req.params.id);
    if (t === undefined) {
      sendProblem(res, 404, 'Not found', `no trigger with id ${req.params.id}`);
      return;
    }
    const [messageId, routing, deliveries] = await Promise.all([store.messageOfTrigger(t.id), store.getTriggerRouting(t.id), deliveriesOfTrigger(store, t)]);
    res.json({
      trigger: triggerFor(res, t),
      ...(messageId !== undefined ? { messageId } : {}),
      routing: {
        routed: routing?.routed ?? false,
        ...(routing?.routedAt !== undefined ? { routedAt: routing.routedAt } : {}),
        matched: deliveries.map((d) => ({ ruleId: d.delivery.ruleId, step: d.delivery.step, delivery: deliverySummary(d) })),
        skipped: routing?.skipped ?? null,
      },
      links: {
        ...(messageId !== undefined ? { message: `/api/messages/${messageId}` } : {}),
        deliveries: deliveries.map((d) => `/api/deliveries/${encodeURIComponent(d.delivery.id)}`),
      },
    });
  });

  // Deliveries: what routing planned and what became of it (pending, cancelled, sent,
  // suppressed with a reason, failed with a code). Newest planned first.
  admin.get('/deliveries', async (req, res) => {
    knownQuery(req, ['status', 'rule', 'patientId', 'appointmentId', 'encounterId', 'limit', 'before']);
    const status = queryString(req, 'status');
    if (status !== undefined && !(STORED_DELIVERY_STATUSES as readonly string[]).includes(status)) {
      throw new BadQuery(`status must be one of ${STORED_DELIVERY_STATUSES.join(', ')}`);
    }
    const appointmentId = queryString(req, 'appointmentId');
    const encounterId = queryString(req, 'encounterId');
    if (appointmentId !== undefined && encounterId !== undefined) throw new BadQuery('give appointmentId or encounterId, not both');
    const query: DeliveryQuery = {
      status: status as StoredDeliveryStatus | undefined,
      ruleId: queryString(req, 'rule'),
      patientId: queryString(req, 'patientId'),
      // The subject key as route.ts builds it (subjectOf).
      subjectKey:
        appointmentId !== undefined ? `appointment/${encodeURIComponent(appointmentId)}` : encounterId !== undefined ? `encounter/${encodeURIComponent(encounterId)}` : undefined,
      limit: queryLimit(req),
      before: queryString(req, 'before'),
    };
    const items = await store.listDeliveries(query);
    const limit = query.limit ?? 100;
    await sendItems(res, items, deliverySummary, {
      ...(items.length === limit ? { next: items[items.length - 1]!.delivery.id } : {}),
      // Every delivery stored, per status (kept as they change: no scan, no paging).
      totals: await store.countDeliveries(),
    });
  });

  // Delivery ids hold '/', '@' and '#': clients percent-encode them (encodeURIComponent).
  admin.get('/deliveries/:id', async (req, res) => {
    const d = await store.getDelivery(req.params.id);
    if (d === undefined) {
      sendProblem(res, 404, 'Not found', `no delivery with id ${req.params.id}`);
      return;
    }
    // The delivery itself holds the address and the payload, the message what was sent:
    // patient content, for callers with the phi scope.
    const phi = allowed(res, AdminScope.Phi);
    const [[outbox], decisions, receipts, job] = await Promise.all([
      phi ? store.listOutbox({ deliveryId: d.delivery.id, limit: 1 }) : Promise.resolve([]),
      store.listDecisions({ deliveryId: d.delivery.id }),
      store.listDeliveryReceipts({ deliveryId: d.delivery.id }),
      deps.deliveries?.job(d),
    ]);
    res.json({
      ...deliverySummary(d),
      ...(phi ? { delivery: d.delivery } : {}),
      ...(phi && d.message ? { message: d.message } : {}),
      ...(d.providerId ? { providerId: d.providerId } : {}),
      ...(outbox ? { outbox } : {}),
      // Its queue job: attempts, the last error, when its retry span ends.
      ...(job ? { job } : {}),
      links: {
        trigger: `/api/triggers/${encodeURIComponent(d.delivery.triggerId)}`,
        ...(d.status === 'failed' || d.status === 'review' ? { replay: '/api/deliveries/replay' } : {}),
      },
      // Evidence: every run of the send-time checks (docs/consent.md), newest first.
      decisions,
      // What the provider said (its id, status callbacks, bounces), oldest first; codes only.
      receipts,
    });
  });

  // Messages kept by `outbox` outputs instead of being sent. Newest first.
  admin.get('/outbox', requireScope(AdminScope.Phi), async (req, res) => {
    knownQuery(req, ['output', 'deliveryId', 'limit', 'before']);
    const limit = queryLimit(req);
    const items = await store.listOutbox({
      output: queryString(req, 'output'),
      deliveryId: queryString(req, 'deliveryId'),
      limit,
      before: queryString(req, 'before'),
    });
    await sendItems(res, items, (item) => item, items.length === (limit ?? 100) ? { next: items[items.length - 1]!.id } : {});
  });

  if (deps.deliveries) admin.use(createDeliveryRouter(deps.deliveries));
  const operations = { store, log, hl7Ingest: deps.hl7Ingest, hl7Settings: deps.hl7Settings ?? new Map<string, Hl7IngestSettings>(), now: deps.now ?? (() => new Date()) };
  admin.use('/fhir', createFhirAdminRouter(deps.fhirInputs ?? new Map()));
  // Staff tasks: answers for a person, write-backs the EHR refused (task-routes.ts).
  admin.use(createTaskRouter({ store, requireScope, callerName: (res) => callerOf(res).name, now: () => (deps.now?.() ?? new Date()).getTime() }));
  admin.use(createOutcomesRouter({ store, ...deps.outcomes }));
  admin.use(createOperationsRouter(operations));

  app.use('/api', admin);
  if (deps.metrics) app.get('/metrics', deps.metrics);
  // The dashboard: the same tokens and scopes, kept in a session cookie (dashboard/session.ts).
  if (deps.dashboard) app.use('/ui', createDashboardRouter({ ...deps.dashboard, store, log, identity: adminIdentity(deps), operations }));

  app.use((_req: Request, res: Response) => {
    sendProblem(res, 404, 'Not found');
  });

  // Express 5 forwards rejected promises from handlers here.
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    // The store signals an unusable filter (unknown cursor, unreadable time) with RangeError.
    if (err instanceof BadQuery || err instanceof RangeError) {
      sendProblem(res, 400, 'Bad query', err.message);
      return;
    }
    const status = typeof err === 'object' && err !== null && 'status' in err ? Number((err as { status: unknown }).status) : 500;
    if (status === 413) {
      sendProblem(res, 413, 'Payload too large', 'the body exceeds the input\'s size limit');
      return;
    }
    if (status >= 400 && status < 500) {
      sendProblem(res, status, 'Bad request');
      return;
    }
    log.error('api.error', { code: err instanceof Error ? err.name : 'unknown' });
    sendProblem(res, 500, 'Internal error');
  });

  return app;
}
