// POST /ingest/fhir/<input>: where FHIR servers deliver subscription notifications.
//
// Order matters (docs/reliability.md promise 11, "Bad inputs"): the input must exist, the caller
// must authenticate (bearer token or fixed header: checked on the headers alone; HMAC: the
// signature header must be there; Standard Webhooks: the three webhook-* headers must be
// there and the timestamp within the tolerance, so a request replayed later than that is
// refused unread — one replayed sooner is deduplicated by its events), the
// content type must be FHIR JSON and the declared length within the limit — all before a
// byte of the body is read. Then the body is read up to the limit (413 past it), a signature
// verified over the raw bytes, and only then parsed. The 2xx comes from FhirIngest only
// after the commit.
//
// Every refusal of a configured input (400, 401, 413, 415, 404 unknown subscription, 422,
// 503) is recorded like an HL7 reject — status `rejected`, the HTTP status as ACK code, the
// problem body sent as ACK, the reason code — and listed by GET /api/messages; the body is
// kept only when it was read and authenticated (an authentication failure is recorded
// without it). The problem body names the reason (`reason`), so the sender need not read
// our logs. Refused records have no control id: a refused resend is recorded again and is
// never a duplicate of anything.
import express, { type Request, type Response } from 'express';
import { hmacMatches, signatureBytes, standardWebhooksSignatureMatches } from '../inputs/fhir/signatures.ts';
import type { Logger } from '../log.ts';
import type { FhirIngestResult, FhirRefusalRecord } from '../workers/fhir-ingest.ts';
import type { SubscriptionState } from '../workers/fhir-state.ts';
import { bearerMatches, declaredOverLimit, limitedRawBody, problemJson, refuseUnread, secretsMatch } from './http.ts';

export type FhirInboundAuth =
  | { kind: 'bearer'; token: string }
  | { kind: 'header'; name: string; value: string }
  /** HMAC-SHA256 of the raw body with `secret`, hex or base64, in header `header` (Medplum: x-signature). */
  | { kind: 'hmac'; secret: string; header: string }
  /**
   * Standard Webhooks v1 (symmetric): HMAC-SHA256 with `key` (the secret's decoded bytes) over
   * "webhook-id.webhook-timestamp.body", base64 in webhook-signature ("v1,<sig>", space-separated
   * for key rotation); webhook-timestamp within `toleranceSeconds` of now.
   */
  | { kind: 'standardWebhooks'; key: Buffer; toleranceSeconds: number };

export interface FhirHttpInput {
  /** FhirIngest, or anything with its contract. */
  ingest: {
    handle(raw: Buffer): Promise<FhirIngestResult>;
    /** Stores a refused request (never throws; resolves once stored, or once the store failed). */
    recordRefusal(refusal: FhirRefusalRecord): Promise<void>;
    /** Each subscription's position, owed work and recovery state (GET /api/fhir/subscriptions). */
    subscriptionStates(): Promise<Array<{ id: string; state: SubscriptionState }>>;
  };
  auth: FhirInboundAuth;
  /** Largest accepted body, bytes. */
  maxBodyBytes: number;
}

export interface FhirRouterDeps {
  inputs: ReadonlyMap<string, FhirHttpInput>;
  log: Logger;
}

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const ACCEPTED_TYPES = new Set(['application/fhir+json', 'application/json']);

const WEBHOOK_TIMESTAMP = /^[0-9]{1,12}$/;

/** The Standard Webhooks headers' problem (missing, malformed, stale), or undefined. */
function standardWebhooksProblem(req: Request, toleranceSeconds: number, nowMs: number): { reason: string; detail: string } | undefined {
  const id = header(req, 'webhook-id');
  const timestamp = header(req, 'webhook-timestamp');
  const signature = header(req, 'webhook-signature');
  if (!id || timestamp === undefined || !signature || !signature.split(' ').some((e) => e.startsWith('v1,'))) {
    return { reason: 'auth_failed', detail: 'the webhook-id, webhook-timestamp and webhook-signature (v1) headers are required' };
  }
  if (!WEBHOOK_TIMESTAMP.test(timestamp)) {
    return { reason: 'auth_failed', detail: 'webhook-timestamp must be an integer Unix time in seconds' };
  }
  const skew = Math.round(Number(timestamp) - nowMs / 1000);
  if (Math.abs(skew) > toleranceSeconds) {
    return {
      reason: 'stale_signature',
      detail:
        `webhook-timestamp is ${Math.abs(skew)} s ${skew < 0 ? 'in the past' : 'in the future'} (tolerance ${toleranceSeconds} s): ` +
        'a request is signed for the moment it is sent; check the sender\'s clock',
    };
  }
  return undefined;
}

function header(req: Request, name: string): string | undefined {
  const value = req.headers[name.toLowerCase()];
  return Array.isArray(value) ? value[0] : value;
}

/** Checks what can be checked on the headers alone; returns a refusal (log reason, text) or undefined. */
function headerAuthProblem(req: Request, auth: FhirInboundAuth, nowMs: number): { reason: string; detail: string } | undefined {
  const refused = (detail: string) => ({ reason: 'auth_failed', detail });
  switch (auth.kind) {
    case 'bearer':
      return bearerMatches(req.headers.authorization, auth.token) ? undefined : refused('a valid bearer token is required');
    case 'header': {
      const value = header(req, auth.name);
      return value !== undefined && secretsMatch(value, auth.value) ? undefined : refused(`a valid ${auth.name} header is required`);
    }
    case 'hmac': {
      const value = header(req, auth.header);
      return value !== undefined && signatureBytes(value) !== undefined
        ? undefined
        : refused(`a ${auth.header} header with the HMAC-SHA256 of the body is required`);
    }
    case 'standardWebhooks':
      return standardWebhooksProblem(req, auth.toleranceSeconds, nowMs);
    default:
      auth satisfies never;
      return refused('unsupported authentication');
  }
}

/** Verifies a body signature once the body is read; returns the refusal text or undefined. */
function bodySignatureProblem(req: Request, auth: FhirInboundAuth, body: Buffer): string | undefined {
  switch (auth.kind) {
    case 'hmac':
      return hmacMatches(body, header(req, auth.header) ?? '', auth.secret) ? undefined : `the ${auth.header} signature does not match the body`;
    case 'standardWebhooks':
      return standardWebhooksSignatureMatches(
        body,
        header(req, 'webhook-id') ?? '',
        header(req, 'webhook-timestamp') ?? '',
        header(req, 'webhook-signature') ?? '',
        auth.key,
      )
        ? undefined
        : 'no webhook-signature v1 entry matches webhook-id, webhook-timestamp and the body';
    default:
      return undefined;
  }
}

/** True when the request announces no body at all (an R4 criteria rest-hook without payload). */
function hasNoBody(req: Request): boolean {
  const length = req.headers['content-length'];
  return (length === undefined || length === '0') && req.headers['transfer-encoding'] === undefined;
}

interface RefusalAnswer {
  status: number;
  title: string;
  detail: string;
  reason: string;
  /** The body as read (authenticated requests only). */
  raw?: Buffer;
  messageType?: string;
  /** The body was not (fully) read: close the connection after answering. */
  unread?: boolean;
  retryAfterSeconds?: number;
}

export function createFhirRouter(deps: FhirRouterDeps): express.Router {
  const router = express.Router();

  /** Records the refusal, then answers it with a problem body naming the reason. */
  async function refuse(res: Response, name: string, input: FhirHttpInput, answer: RefusalAnswer): Promise<void> {
    const body = problemJson(answer.status, answer.title, answer.detail, { reason: answer.reason });
    if (answer.status === 401 || answer.status === 413 || answer.status === 415) {
      deps.log.warn(answer.status === 401 ? 'fhir.unauthorized' : 'fhir.refused', { input: name, reason: answer.reason, status: answer.status });
    }
    await input.ingest.recordRefusal({
      status: answer.status,
      reason: answer.reason,
      ack: body,
      ...(answer.raw !== undefined ? { raw: answer.raw } : {}),
      ...(answer.messageType !== undefined ? { messageType: answer.messageType } : {}),
    });
    if (answer.unread) res.setHeader('Connection', 'close');
    if (answer.retryAfterSeconds !== undefined) res.setHeader('Retry-After', String(answer.retryAfterSeconds));
    res.status(answer.status).type('application/problem+json').send(body);
  }

  router.post('/:input', (req, res, next) => {
    const name = req.params.input;
    const input = deps.inputs.get(name);
    if (input === undefined) {
      // Not one of ours: nothing to record it against.
      refuseUnread(res, 404, 'Unknown input', `no fhir-rest-hook input named "${name}" is configured`);
      return;
    }
    const unread = (status: number, title: string, detail: string, reason: string): void => {
      refuse(res, name, input, { status, title, detail, reason, unread: true }).catch(next);
    };
    const authProblem = headerAuthProblem(req, input.auth, Date.now());
    if (authProblem !== undefined) {
      if (input.auth.kind === 'bearer') res.setHeader('WWW-Authenticate', 'Bearer');
      unread(401, 'Unauthorized', authProblem.detail, authProblem.reason);
      return;
    }
    const empty = hasNoBody(req);
    if (!empty) {
      const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
      if (!ACCEPTED_TYPES.has(type)) {
        unread(415, 'Unsupported media type', 'send application/fhir+json (or application/json)', 'unsupported_media_type');
        return;
      }
      if (declaredOverLimit(req, input.maxBodyBytes)) {
        unread(413, 'Payload too large', `the body exceeds this input's limit of ${input.maxBodyBytes} bytes`, 'body_too_large');
        return;
      }
    }
    limitedRawBody(input.maxBodyBytes)(req, res, async (err?: unknown) => {
      if (err !== undefined) {
        const status = typeof err === 'object' && err !== null && 'status' in err ? Number((err as { status: unknown }).status) : 400;
        if (status === 413) unread(413, 'Payload too large', `the body exceeds this input's limit of ${input.maxBodyBytes} bytes`, 'body_too_large');
        else unread(400, 'Bad request', 'the body could not be read', 'unreadable_body');
        return;
      }
      const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      const signatureProblem = bodySignatureProblem(req, input.auth, body);
      if (signatureProblem !== undefined) {
        // Not authenticated: recorded without the body.
        unread(401, 'Unauthorized', signatureProblem, 'bad_signature');
        return;
      }
      try {
        const result = await input.ingest.handle(body);
        switch (result.kind) {
          case 'accepted':
            // 202: accepted, but some events' triggers are still to be made (their resources
            // could not be fetched yet); CareRelay makes them, nothing is to be resent.
            res
              .status(result.pending > 0 ? 202 : 200)
              .type(FHIR_JSON)
              .send(
                JSON.stringify({
                  resourceType: 'OperationOutcome',
                  issue: [
                    {
                      severity: 'information',
                      code: 'informational',
                      diagnostics:
                        `accepted: ${result.stored} record(s) stored, ${result.duplicates} already known, ${result.triggers.length} trigger(s)` +
                        (result.pending > 0 ? `, ${result.pending} event(s) pending until the FHIR server gives their resources` : ''),
                    },
                  ],
                }),
              );
            return;
          case 'refused':
            await refuse(res, name, input, { ...result, raw: body });
            return;
          case 'unavailable':
            // Nothing durable: the server must resend (never a 2xx).
            await refuse(res, name, input, { ...result, status: 503, title: 'Service unavailable', raw: body });
            return;
          default:
            result satisfies never;
        }
      } catch (error) {
        next(error);
      }
    });
  });

  return router;
}

/**
 * GET /api/fhir/subscriptions (behind the admin token): for every subscription of every
 * fhir-rest-hook input, where its event numbering stands, what it still owes (missed
 * events, a search, events whose triggers are pending) and its background recovery —
 * attempts, the next one, the last reason code — so a stuck recovery is visible.
 */
export function createFhirAdminRouter(inputs: ReadonlyMap<string, FhirHttpInput>): express.Router {
  const router = express.Router();
  router.get('/subscriptions', async (_req, res) => {
    const items: unknown[] = [];
    for (const [input, { ingest }] of inputs) {
      for (const { id, state } of await ingest.subscriptionStates()) {
        items.push({
          input,
          subscription: id,
          lastEventNumber: state.n ?? null,
          numbering: state.epoch ?? 0,
          lastEventAt: state.at ?? null,
          lastHeardAt: state.seen ?? null,
          status: state.status ?? null,
          owed: state.owed ?? null,
          recovery: state.recovery ?? null,
        });
      }
    }
    res.json({ items });
  });
  return router;
}
