// The HTTP face of CareRelay (express): ingest endpoints, admin API, health.
//
// Authentication runs before any body is read (docs/reliability.md promise 11): routes that need
// a token check it first, and only then does the size-limited body parser run.
import { createHash, timingSafeEqual } from 'node:crypto';
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Logger } from '../log.ts';
import { STORED_DELIVERY_STATUSES, type DeliveryQuery, type MessageQuery, type Store, type StoredDelivery, type StoredDeliveryStatus, type StoredMessage, type TriggerQuery } from '../store/store.ts';
import { MessageStatus } from '../types.ts';
import type { Hl7Ingest, Hl7IngestSettings } from '../workers/ingest.ts';
import { createConsentRouter, type ConsentRoutesDeps } from './consent-routes.ts';
import { createFhirRouter, type FhirHttpInput } from './fhir-routes.ts';

export interface HttpHl7Input {
  settings: Hl7IngestSettings;
  /** Bearer token the sender must present; undefined = no auth (loopback-only deployments). */
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
  /** CARERELAY_ADMIN_TOKEN; when undefined the server must be bound to loopback only. */
  adminToken?: string;
  /** The consent ways in and patient views (consent-routes.ts); absent: not served. */
  consent?: Omit<ConsentRoutesDeps, 'store' | 'log' | 'adminToken'>;
}

/** RFC 9457 problem details. */
export function sendProblem(res: Response, status: number, title: string, detail?: string): void {
  res
    .status(status)
    .type('application/problem+json')
    .send(JSON.stringify({ type: 'about:blank', title, status, ...(detail ? { detail } : {}) }));
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

/** Constant-time comparison of a presented secret with the expected one. */
export function secretsMatch(presented: string, expected: string): boolean {
  // Hashing first gives equal-length buffers, so the comparison leaks neither content nor length.
  return timingSafeEqual(digest(presented), digest(expected));
}

/**
 * A problem answer to a request whose body was not (fully) read: the connection is closed
 * rather than kept with unread bytes of unknown length.
 */
export function refuseUnread(res: Response, status: number, title: string, detail: string): void {
  res.setHeader('Connection', 'close');
  sendProblem(res, status, title, detail);
}

/** True when Content-Length announces more than `limit` bytes (refused before reading). */
export function declaredOverLimit(req: Request, limit: number): boolean {
  const declared = Number(req.headers['content-length']);
  return Number.isFinite(declared) && declared > limit;
}

/** Constant-time comparison of a presented bearer token with the expected one. */
export function bearerMatches(header: string | undefined, expected: string): boolean {
  if (header === undefined || !header.startsWith('Bearer ')) return false;
  return secretsMatch(header.slice('Bearer '.length).trim(), expected);
}

/** Refuses (401, body unread) a request without the expected bearer token; none expected: loopback-only deployments. */
export function requireBearer(expected: string | undefined) {
  return (req: Request, res: Response, next: NextFunction): void => {
    if (expected === undefined || bearerMatches(req.headers.authorization, expected)) {
      next();
      return;
    }
    res.setHeader('WWW-Authenticate', 'Bearer');
    refuseUnread(res, 401, 'Unauthorized', 'a valid bearer token is required');
  };
}

function queryString(req: Request, name: string): string | undefined {
  const v = req.query[name];
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function queryLimit(req: Request): number | undefined {
  const raw = queryString(req, 'limit');
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > 1000) throw new BadQuery('limit must be an integer between 1 and 1000');
  return n;
}

function queryInstant(req: Request, name: string): string | undefined {
  const raw = queryString(req, name);
  if (raw === undefined) return undefined;
  if (!ISO_INSTANT.test(raw) || Number.isNaN(Date.parse(raw))) {
    throw new BadQuery(`${name} must be an ISO-8601 date-time, e.g. 2026-01-31T08:00:00Z (no zone means UTC)`);
  }
  return raw;
}

class BadQuery extends Error {}

const ISO_INSTANT = /^\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?$/;

const MESSAGE_STATUSES = new Set<string>(Object.values(MessageStatus));

function messageSummary(m: StoredMessage) {
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
  };
}

function deliverySummary(d: StoredDelivery) {
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

/** HL7 over HTTP answers with the ACK in ER7 (pipe) encoding. */
const HL7_CONTENT_TYPE = 'x-application/hl7-v2+er7; charset=utf-8';

export function createApp(deps: ApiDeps): express.Express {
  const { store, log } = deps;
  const app = express();
  app.disable('x-powered-by');
  app.set('query parser', 'simple');

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });

  app.get('/readyz', async (_req, res) => {
    try {
      await store.ping();
      res.json({ status: 'ready' });
    } catch {
      res.setHeader('Retry-After', '5');
      sendProblem(res, 503, 'Not ready', 'the store is not reachable');
    }
  });

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
      express.raw({ type: () => true, limit: input.maxBodyBytes })(req, res, async (err?: unknown) => {
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
          const result = await deps.hl7Ingest.handle(body, input.settings);
          if (!result.committed) {
            // Nothing durable: tell the sender to retry (never a 2xx).
            res.setHeader('Retry-After', '5');
            res.status(503).type(HL7_CONTENT_TYPE).send(result.ack ?? '');
            return;
          }
          res.status(200).type(HL7_CONTENT_TYPE).send(result.ack ?? '');
        } catch (error) {
          next(error);
        }
      });
    });
  });

  app.use('/ingest/fhir', createFhirRouter({ inputs: deps.fhirInputs ?? new Map(), log }));

  if (deps.consent) app.use(createConsentRouter({ ...deps.consent, store, log, ...(deps.adminToken !== undefined ? { adminToken: deps.adminToken } : {}) }));

  const admin = express.Router();
  admin.use(requireBearer(deps.adminToken));

  admin.get('/messages', async (req, res) => {
    const status = queryString(req, 'status');
    if (status !== undefined && !MESSAGE_STATUSES.has(status)) {
      throw new BadQuery(`status must be one of ${[...MESSAGE_STATUSES].join(', ')}`);
    }
    const query: MessageQuery = {
      sender: queryString(req, 'sender'),
      controlId: queryString(req, 'controlId'),
      status: status as MessageStatus | undefined,
      input: queryString(req, 'input'),
      since: queryInstant(req, 'since'),
      until: queryInstant(req, 'until'),
      limit: queryLimit(req),
      before: queryString(req, 'before'),
    };
    const items = await store.listMessages(query);
    const limit = query.limit ?? 100;
    res.json({
      items: items.map(messageSummary),
      ...(items.length === limit ? { next: items[items.length - 1]!.id } : {}),
    });
  });

  admin.get('/messages/:id', async (req, res) => {
    const m = await store.getMessage(req.params.id);
    if (m === undefined) {
      sendProblem(res, 404, 'Not found', `no message with id ${req.params.id}`);
      return;
    }
    res.json({
      ...messageSummary(m),
      raw: m.raw.toString('utf8'),
      rawBase64: m.raw.toString('base64'),
      ack: m.ack,
      triggers: m.triggers,
    });
  });

  admin.get('/triggers', async (req, res) => {
    const query: TriggerQuery = {
      type: queryString(req, 'type'),
      patientId: queryString(req, 'patientId'),
      appointmentId: queryString(req, 'appointmentId'),
      encounterId: queryString(req, 'encounterId'),
      since: queryInstant(req, 'since'),
      until: queryInstant(req, 'until'),
      limit: queryLimit(req),
    };
    res.json({ items: await store.listTriggers(query) });
  });

  admin.get('/triggers/:id', async (req, res) => {
    const t = await store.getTrigger(req.params.id);
    if (t === undefined) {
      sendProblem(res, 404, 'Not found', `no trigger with id ${req.params.id}`);
      return;
    }
    res.json(t);
  });

  // Deliveries: what routing planned and what became of it (pending, cancelled, finished,
  // suppressed with a reason, failed with a code). Newest planned first.
  admin.get('/deliveries', async (req, res) => {
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
    res.json({
      items: items.map(deliverySummary),
      ...(items.length === limit ? { next: items[items.length - 1]!.delivery.id } : {}),
    });
  });

  // Delivery ids hold '/', '@' and '#': clients percent-encode them (encodeURIComponent).
  admin.get('/deliveries/:id', async (req, res) => {
    const d = await store.getDelivery(req.params.id);
    if (d === undefined) {
      sendProblem(res, 404, 'Not found', `no delivery with id ${req.params.id}`);
      return;
    }
    const [outbox] = await store.listOutbox({ deliveryId: d.delivery.id, limit: 1 });
    res.json({
      ...deliverySummary(d),
      delivery: d.delivery,
      ...(d.message ? { message: d.message } : {}),
      ...(d.providerId ? { providerId: d.providerId } : {}),
      ...(outbox ? { outbox } : {}),
      // Evidence: every run of the send-time checks (docs/consent.md), newest first.
      decisions: await store.listDecisions({ deliveryId: d.delivery.id }),
    });
  });

  // Messages kept by `outbox` outputs instead of being sent. Newest first.
  admin.get('/outbox', async (req, res) => {
    const limit = queryLimit(req);
    const items = await store.listOutbox({
      output: queryString(req, 'output'),
      deliveryId: queryString(req, 'deliveryId'),
      limit,
      before: queryString(req, 'before'),
    });
    res.json({ items, ...(items.length === (limit ?? 100) ? { next: items[items.length - 1]!.id } : {}) });
  });

  app.use('/api', admin);

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
