// HTTP helpers every route of the API shares (the admin API, HL7 and FHIR ingest): problem
// answers (RFC 9457), answers to requests whose body is left unread, and constant-time
// secret comparison. Routes import these; this module imports no route.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Request, Response } from 'express';

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

/** Constant-time comparison of a presented bearer token with the expected one. */
export function bearerMatches(header: string | undefined, expected: string): boolean {
  if (header === undefined || !header.startsWith('Bearer ')) return false;
  return secretsMatch(header.slice('Bearer '.length).trim(), expected);
}
