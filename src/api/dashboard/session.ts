// The dashboard's session: the admin token kept in a cookie, and the defences of every action.
//
// Cookie. After the login form, the token lives in `carerelay_ui` — HttpOnly (no script reads
// it), SameSite=Strict (no other site's page, link or form sends it), Path=/ui, Secure when the
// page was served over TLS (directly, or by a proxy that says X-Forwarded-Proto: https), for at
// most SESSION_SECONDS. The server keeps nothing: every request is authenticated again with the
// token it carries, exactly as the admin API does (same tokens, same scopes), so a token removed
// from the configuration ends its sessions at the next restart, and any process behind a
// balancer accepts the cookie. Beside the token the cookie holds a random session id; a new
// one is made at each login (a session id planted before the login is never kept).
//
// Actions (every POST) need all of:
//   - the cookie, which SameSite=Strict keeps off cross-site requests;
//   - an Origin (or, from browsers that send none, a Referer) naming this server: a form on
//     another site is refused before anything is read;
//   - the form's CSRF token, an HMAC of the session id keyed with the session's token: it
//     changes with every login, cannot be computed without both, and is checked in constant
//     time. Without a configured token (loopback only, caller "local") the key is empty and the
//     session id alone is the secret.
// The login form itself is protected the same way with a session that has no token yet.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Request } from 'express';

export const SESSION_COOKIE = 'carerelay_ui';
/** A session lasts at most 12 hours (one shift), whatever happens. */
export const SESSION_SECONDS = 12 * 60 * 60;
/** The form field holding the CSRF token. */
export const CSRF_FIELD = '_csrf';

export interface UiSession {
  /** Random, base64url; new at every login. */
  sid: string;
  /** The admin token; '' before the login (or when no token is configured). */
  token: string;
}

const FORMAT = 'v1';

export function newSession(token = ''): UiSession {
  return { sid: randomBytes(18).toString('base64url'), token };
}

/** Reads the session from a Cookie header; undefined when absent or not one of ours. */
export function sessionOf(cookieHeader: string | undefined): UiSession | undefined {
  const value = cookieValue(cookieHeader, SESSION_COOKIE);
  if (value === undefined) return undefined;
  const parts = value.split('.');
  if (parts.length !== 3 || parts[0] !== FORMAT || !/^[A-Za-z0-9_-]{16,64}$/.test(parts[1]!) || !/^[A-Za-z0-9_-]*$/.test(parts[2]!)) return undefined;
  return { sid: parts[1]!, token: Buffer.from(parts[2]!, 'base64url').toString('utf8') };
}

/** The Set-Cookie value keeping `session`. */
export function sessionCookie(session: UiSession, secure: boolean): string {
  const value = `${FORMAT}.${session.sid}.${Buffer.from(session.token, 'utf8').toString('base64url')}`;
  return `${SESSION_COOKIE}=${value}; Path=/ui; Max-Age=${SESSION_SECONDS}; HttpOnly; SameSite=Strict${secure ? '; Secure' : ''}`;
}

/** The Set-Cookie value ending the session. */
export function clearedSessionCookie(secure: boolean): string {
  return `${SESSION_COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict${secure ? '; Secure' : ''}`;
}

/** One cookie's value from a Cookie header (RFC 6265 §4.2: `name=value` pairs separated by `; `). */
export function cookieValue(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  for (const pair of header.split(';')) {
    const eq = pair.indexOf('=');
    if (eq > 0 && pair.slice(0, eq).trim() === name) return pair.slice(eq + 1).trim();
  }
  return undefined;
}

/** The CSRF token of a session: HMAC-SHA256 of its id, keyed with its admin token. */
export function csrfToken(session: UiSession): string {
  return createHmac('sha256', session.token).update(`carerelay-ui-csrf:${session.sid}`).digest('base64url');
}

/** Whether a presented CSRF token is the session's (constant time). */
export function csrfMatches(session: UiSession, presented: unknown): boolean {
  if (typeof presented !== 'string' || presented.length > 128) return false;
  const expected = Buffer.from(csrfToken(session));
  const given = Buffer.from(presented);
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/** Whether the page was served over TLS: the socket's own, or a proxy's that says so. */
export function servedOverTls(req: Request): boolean {
  if ((req.socket as { encrypted?: boolean }).encrypted === true) return true;
  const proto = req.headers['x-forwarded-proto'];
  const first = (Array.isArray(proto) ? proto[0] : proto)?.split(',')[0]?.trim().toLowerCase();
  return first === 'https';
}

/**
 * Whether a state-changing request comes from a page of this server: its Origin (else its
 * Referer's origin) has the request's own Host. Neither header: refused (every browser that
 * supports SameSite sends Origin with a POST).
 */
export function sameOrigin(req: Request): boolean {
  const host = req.headers.host;
  if (host === undefined) return false;
  const origin = req.headers.origin ?? refererOrigin(req.headers.referer);
  if (origin === undefined || origin === 'null') return false;
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    return false;
  }
  return (url.protocol === 'http:' || url.protocol === 'https:') && url.host === host.toLowerCase();
}

function refererOrigin(referer: string | undefined): string | undefined {
  if (referer === undefined) return undefined;
  try {
    return new URL(referer).origin;
  } catch {
    return undefined;
  }
}
