// POST /ingest/fhir/<input>: where FHIR servers deliver subscription notifications.
//
// Order matters (RELIABILITY.md promise 11, "Bad inputs"): the input must exist, the caller
// must authenticate (bearer token or fixed header: checked on the headers alone; HMAC: the
// signature header must be there), the content type must be FHIR JSON and the declared
// length within the limit — all before a byte of the body is read. Then the body is read
// up to the limit (413 past it), an HMAC signature verified over the raw bytes, and only
// then parsed. The 2xx comes from FhirIngest only after the commit.
import { createHmac, timingSafeEqual } from 'node:crypto';
import express, { type Request } from 'express';
import type { Logger } from '../log.ts';
import type { FhirIngestResult } from '../workers/fhir-ingest.ts';
import { bearerMatches, declaredOverLimit, refuseUnread, secretsMatch, sendProblem } from './app.ts';

export type FhirInboundAuth =
  | { kind: 'bearer'; token: string }
  | { kind: 'header'; name: string; value: string }
  /** HMAC-SHA256 of the raw body with `secret`, hex or base64, in header `header` (Medplum: x-signature). */
  | { kind: 'hmac'; secret: string; header: string };

export interface FhirHttpInput {
  /** FhirIngest.handle, or anything with its contract. */
  ingest: { handle(raw: Buffer): Promise<FhirIngestResult> };
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

/** The signature bytes of a header value: `sha256=<hex>`, `<hex>` or `<base64>`. */
function signatureBytes(value: string): Buffer | undefined {
  const text = value.trim().replace(/^sha256=/i, '');
  if (/^[0-9a-f]{64}$/i.test(text)) return Buffer.from(text, 'hex');
  if (/^[A-Za-z0-9+/_-]{43}=?$/.test(text)) return Buffer.from(text, 'base64');
  return undefined;
}

export function hmacMatches(body: Buffer, signature: string, secret: string): boolean {
  const presented = signatureBytes(signature);
  if (presented === undefined) return false;
  const expected = createHmac('sha256', secret).update(body).digest();
  return presented.length === expected.length && timingSafeEqual(presented, expected);
}

function header(req: Request, name: string): string | undefined {
  const value = req.headers[name.toLowerCase()];
  return Array.isArray(value) ? value[0] : value;
}

/** Checks what can be checked on the headers alone; returns a refusal or undefined. */
function headerAuthProblem(req: Request, auth: FhirInboundAuth): string | undefined {
  switch (auth.kind) {
    case 'bearer':
      return bearerMatches(req.headers.authorization, auth.token) ? undefined : 'a valid bearer token is required';
    case 'header': {
      const value = header(req, auth.name);
      return value !== undefined && secretsMatch(value, auth.value) ? undefined : `a valid ${auth.name} header is required`;
    }
    case 'hmac': {
      const value = header(req, auth.header);
      return value !== undefined && signatureBytes(value) !== undefined
        ? undefined
        : `a ${auth.header} header with the HMAC-SHA256 of the body is required`;
    }
    default:
      auth satisfies never;
      return 'unsupported authentication';
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
    const authProblem = headerAuthProblem(req, input.auth);
    if (authProblem !== undefined) {
      if (input.auth.kind === 'bearer') res.setHeader('WWW-Authenticate', 'Bearer');
      deps.log.warn('fhir.unauthorized', { input: req.params.input, reason: 'auth_failed' });
      refuseUnread(res, 401, 'Unauthorized', authProblem);
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
      if (input.auth.kind === 'hmac' && !hmacMatches(body, header(req, input.auth.header) ?? '', input.auth.secret)) {
        deps.log.warn('fhir.unauthorized', { input: req.params.input, reason: 'bad_signature' });
        refuseUnread(res, 401, 'Unauthorized', `the ${input.auth.header} signature does not match the body`);
        return;
      }
      try {
        const result = await input.ingest.handle(body);
        switch (result.kind) {
          case 'accepted':
            res
              .status(200)
              .type(FHIR_JSON)
              .send(
                JSON.stringify({
                  resourceType: 'OperationOutcome',
                  issue: [
                    {
                      severity: 'information',
                      code: 'informational',
                      diagnostics: `accepted: ${result.stored} record(s) stored, ${result.duplicates} already known, ${result.triggers.length} trigger(s)`,
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
