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
import express, { type Request } from 'express';
import { hmacMatches, signatureBytes, standardWebhooksSignatureMatches } from '../inputs/fhir/signatures.ts';
import type { Logger } from '../log.ts';
import type { FhirIngestResult } from '../workers/fhir-ingest.ts';
import type { SubscriptionState } from '../workers/fhir-state.ts';
import { bearerMatches, declaredOverLimit, refuseUnread, secretsMatch, sendProblem } from './http.ts';

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

export function createFhirRouter(deps: FhirRouterDeps): express.Router {
  const router = express.Router();

  router.post('/:input', (req, res, next) => {
    const input = deps.inputs.get(req.params.input);
    if (input === undefined) {
      refuseUnread(res, 404, 'Unknown input', `no fhir-rest-hook input named "${req.params.input}" is configured`);
      return;
    }
    const authProblem = headerAuthProblem(req, input.auth, Date.now());
    if (authProblem !== undefined) {
      if (input.auth.kind === 'bearer') res.setHeader('WWW-Authenticate', 'Bearer');
      deps.log.warn('fhir.unauthorized', { input: req.params.input, reason: authProblem.reason });
      refuseUnread(res, 401, 'Unauthorized', authProblem.detail);
      return;
    }
    const empty = hasNoBody(req);
    if (!empty) {
      const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
      if (!ACCEPTED_TYPES.has(type)) {
        refuseUnread(res, 415, 'Unsupported media type', 'send application/fhir+json (or application/json)');
        return;
      }
      if (declaredOverLimit(req, input.maxBodyBytes)) {
        refuseUnread(res, 413, 'Payload too large', `the body exceeds this input's limit of ${input.maxBodyBytes} bytes`);
        return;
      }
    }
    express.raw({ type: () => true, limit: input.maxBodyBytes })(req, res, async (err?: unknown) => {
      if (err !== undefined) {
        const status = typeof err === 'object' && err !== null && 'status' in err ? Number((err as { status: unknown }).status) : 400;
        if (status === 413) refuseUnread(res, 413, 'Payload too large', `the body exceeds this input's limit of ${input.maxBodyBytes} bytes`);
        else refuseUnread(res, 400, 'Bad request', 'the body could not be read');
        return;
      }
      const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      const signatureProblem = bodySignatureProblem(req, input.auth, body);
      if (signatureProblem !== undefined) {
        deps.log.warn('fhir.unauthorized', { input: req.params.input, reason: 'bad_signature' });
        refuseUnread(res, 401, 'Unauthorized', signatureProblem);
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
            sendProblem(res, result.status, result.title, result.detail);
            return;
          case 'unavailable':
            // Nothing durable: the server must resend (never a 2xx).
            res.setHeader('Retry-After', String(result.retryAfterSeconds));
            sendProblem(res, 503, 'Service unavailable', 'the notification could not be committed now; resend it later');
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
