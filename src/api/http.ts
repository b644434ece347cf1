// HTTP helpers every route of the API shares (the admin API, HL7 and FHIR ingest): problem
// answers (RFC 9457), answers to requests whose body is left unread, a body reader that stops
// at its limit, and constant-time secret comparison. Routes import these; this module
// imports no route.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';

/** RFC 9457 problem details as sent: `extensions` are extension members (e.g. a `reason` code). */
export function problemJson(status: number, title: string, detail?: string, extensions: Record<string, string> = {}): string {
  return JSON.stringify({ type: 'about:blank', title, status, ...(detail ? { detail } : {}), ...extensions });
}

/** RFC 9457 problem details. */
export function sendProblem(res: Response, status: number, title: string, detail?: string, extensions?: Record<string, string>): void {
  res.status(status).type('application/problem+json').send(problemJson(status, title, detail, extensions));
}

/** sha256 of a secret: equal-length buffers to compare in constant time (and a token kept only as this). */
export function digest(value: string): Buffer {
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

/** `Bearer <token>`: the scheme name is case-insensitive (RFC 9110 §11.1), the token is not. */
const BEARER = /^bearer[ \t]+(\S.*)$/i;

/** The token of an `Authorization: Bearer <token>` header, whatever the scheme's case; undefined otherwise. */
export function bearerToken(header: string | undefined): string | undefined {
  const m = header === undefined ? null : BEARER.exec(header);
  return m === null ? undefined : m[1]!.trim();
}

/** Constant-time comparison of a presented bearer token with the expected one. */
export function bearerMatches(header: string | undefined, expected: string): boolean {
  const token = bearerToken(header);
  return token !== undefined && secretsMatch(token, expected);
}

/**
 * Reads a request body of at most `limit` bytes. Past the limit it stops reading at once and
 * resolves 'too_large', so a chunked body of any length costs at most the limit.
 */
function readLimitedBody(req: Request, limit: number): Promise<Buffer | 'too_large'> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (): void => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > limit) {
        done();
        req.pause();
        resolve('too_large');
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      done();
      resolve(Buffer.concat(chunks, size));
    };
    const onError = (error: Error): void => {
      done();
      reject(error);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
  });
}

/**
 * How long a connection refused for its body's size stays open (not read) after the 413 and
 * our FIN, so the client reads the answer before the reset its unread bytes then cause.
 */
const LINGER_MS = 1000;

/**
 * express.raw({ limit }) as it should be for a body that passes the limit: reading stops there
 * (express.raw reads a chunked body to its end before its 413; 3 GB took 4 s), the request
 * goes on with an error of status 413, and whatever answers it, the connection is closed
 * after the answer, never read further. Node closes a `Connection: close` answer's socket
 * once it is written; that close waits LINGER_MS (nothing more is read meanwhile), as HTTP
 * servers do after an early error answer, because a client still sending would otherwise get
 * a reset before it read the 413. The body lands in req.body as a Buffer.
 */
export function limitedRawBody(limit: number) {
  return (req: Request, res: Response, next: NextFunction): void => {
    readLimitedBody(req, limit).then(
      (body) => {
        if (body !== 'too_large') {
          req.body = body;
          next();
          return;
        }
        const socket = req.socket;
        socket.destroySoon = function lingeringClose(this: typeof socket): void {
          this.end();
          setTimeout(() => this.destroy(), LINGER_MS).unref();
        };
        res.setHeader('Connection', 'close');
        next(Object.assign(new Error(`the body exceeds the limit of ${limit} bytes`), { status: 413 }));
      },
      (error: unknown) => next(Object.assign(error instanceof Error ? error : new Error(String(error)), { status: 400 })),
    );
  };
}
