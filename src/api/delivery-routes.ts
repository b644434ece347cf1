// Admin API of the delivery engine (docs/reliability.md "Replay", README "Admin API"):
//
//   GET  /api/outputs             (read) every output: its circuit (closed / open / half_open,
//                                 since, failures, open until, last error code), the limits in
//                                 force, calls in flight and waiting, a provider's pause
//   POST /api/deliveries/replay   (operate) failed or review deliveries run once more, by id
//                                 ({ ids }) or by filter ({ status, output, rule, since,
//                                 limit }); each one audited under the token's name
//
// GET /api/deliveries/:id (app.ts) shows a delivery's receipts and its job (attempts, last
// error, when its retry span ends) through the same DeliveryAdmin.
import express, { type Request, type Response } from 'express';
import { AdminScope } from '../config/server-schema.ts';
import type { StoredDelivery } from '../store/store.ts';
import type { OutputGateState } from '../workers/output-gate.ts';
import { REPLAY_MAX_LIMIT, type ReplayRequest, type ReplayResult } from '../workers/replay.ts';
import { callerOf, requireScope } from './app.ts';
import { declaredOverLimit, refuseUnread, sendProblem } from './http.ts';

/** A delivery's queue job as the API shows it. */
export interface DeliveryJobView {
  state: string;
  /** Runs started (deferred and rate-limited ones included) and those that did not count. */
  attempts: number;
  deferrals: number;
  /** When it runs next (pending) or last ran (ISO). */
  runAt: string;
  lastError?: { failureClass: string; code: string };
  /** When its retry span ends (ISO), once it has failed. */
  retryUntil?: string;
}

/** What the delivery engine offers the admin API (workers/runtime.ts DeliveryRuntime). */
export interface DeliveryAdmin {
  outputs(): OutputGateState[];
  job(delivery: StoredDelivery): Promise<DeliveryJobView | undefined>;
  replay(request: ReplayRequest, actor: string): Promise<ReplayResult>;
}

const JSON_LIMIT = 64 * 1024;
const FILTER_KEYS = ['status', 'output', 'rule', 'since', 'limit'] as const;
const ISO_INSTANT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})$/;

class BadRequest extends Error {}

/** The replay request of a body, or a BadRequest saying what is wrong and how to ask. */
export function replayRequestOf(body: unknown): ReplayRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new BadRequest('the body must be a JSON object: { "ids": [...] } or a filter { "status", "output", "rule", "since", "limit" }');
  const b = body as Record<string, unknown>;
  const unknown = Object.keys(b).filter((k) => k !== 'ids' && !(FILTER_KEYS as readonly string[]).includes(k));
  if (unknown.length > 0) throw new BadRequest(`unknown member "${unknown[0]}"; give ids, or a filter of ${FILTER_KEYS.join(', ')}`);
  if (b.ids !== undefined) {
    if (FILTER_KEYS.some((k) => b[k] !== undefined)) throw new BadRequest('give ids or a filter, not both');
    if (!Array.isArray(b.ids) || b.ids.length === 0 || b.ids.length > REPLAY_MAX_LIMIT || b.ids.some((id) => typeof id !== 'string' || id === '')) {
      throw new BadRequest(`ids must be a list of 1 to ${REPLAY_MAX_LIMIT} delivery ids`);
    }
    return { ids: [...new Set(b.ids as string[])] };
  }
  if (FILTER_KEYS.every((k) => b[k] === undefined)) {
    throw new BadRequest('give ids, or a filter: { "status": "failed" } replays every failed delivery (up to limit), narrowed by output, rule and since');
  }
  if (b.status !== undefined && b.status !== 'failed' && b.status !== 'review') throw new BadRequest('status must be failed or review');
  for (const key of ['output', 'rule'] as const) {
    if (b[key] !== undefined && (typeof b[key] !== 'string' || b[key] === '')) throw new BadRequest(`${key} must be a non-empty string`);
  }
  if (b.since !== undefined && (typeof b.since !== 'string' || !ISO_INSTANT.test(b.since) || Number.isNaN(Date.parse(b.since)))) {
    throw new BadRequest('since must be an ISO-8601 date-time with a zone, e.g. 2026-01-31T08:00:00Z');
  }
  if (b.limit !== undefined && !(Number.isInteger(b.limit) && (b.limit as number) >= 1 && (b.limit as number) <= REPLAY_MAX_LIMIT)) {
    throw new BadRequest(`limit must be an integer between 1 and ${REPLAY_MAX_LIMIT}`);
  }
  return {
    ...(b.status !== undefined ? { status: b.status as 'failed' | 'review' } : {}),
    ...(b.output !== undefined ? { output: b.output as string } : {}),
    ...(b.rule !== undefined ? { rule: b.rule as string } : {}),
    ...(b.since !== undefined ? { since: b.since as string } : {}),
    ...(b.limit !== undefined ? { limit: b.limit as number } : {}),
  };
}

/** Mounted under /api, behind the admin authentication and the `read` scope (app.ts). */
export function createDeliveryRouter(admin: DeliveryAdmin): express.Router {
  const router = express.Router();

  router.get('/outputs', (req: Request, res: Response) => {
    if (Object.keys(req.query).length > 0) {
      sendProblem(res, 400, 'Bad query', `unknown filter "${Object.keys(req.query)[0]}"; this endpoint takes none`);
      return;
    }
    res.json({ items: admin.outputs() });
  });

  router.post(
    '/deliveries/replay',
    requireScope(AdminScope.Operate),
    (req, res, next) => {
      if (declaredOverLimit(req, JSON_LIMIT)) return refuseUnread(res, 413, 'Payload too large', `bodies are limited to ${JSON_LIMIT} bytes`);
      express.json({ limit: JSON_LIMIT, strict: false })(req, res, next);
    },
    async (req: Request, res: Response) => {
      if (!req.is('application/json')) {
        sendProblem(res, 415, 'Unsupported media type', 'send the request as application/json');
        return;
      }
      let request: ReplayRequest;
      try {
        request = replayRequestOf(req.body);
      } catch (error) {
        if (!(error instanceof BadRequest)) throw error;
        sendProblem(res, 400, 'Bad request', error.message);
        return;
      }
      res.json(await admin.replay(request, callerOf(res).name));
    },
  );

  return router;
}
