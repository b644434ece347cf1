// Signed, expiring unsubscribe links (docs/consent.md "Scope of an opt-out"): one per non-care
// email delivery, in its text (`{{ unsubscribe_url }}`) and handed to the output
// (OutboundMessage.unsubscribe), which puts it in List-Unsubscribe with RFC 8058 one-click. The token names the delivery and when it expires,
// and carries an HMAC-SHA256 over both with the policy's unsubscribe key, so a link cannot be
// forged for another delivery or kept working past its expiry; what it stops (the delivery's
// purpose, or every non-care email) is read from the stored delivery when it is used.
//
//   <publicUrl>/unsubscribe/<base64url(JSON {d: delivery id, e: expiry, unix s})>.<base64url(HMAC)>
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { isCare } from '../pipeline/policy.ts';
import { UNSUBSCRIBE_URL } from '../pipeline/render.ts';
import type { Delivery } from '../types.ts';

/** Label mixed into the MAC: a key reused elsewhere cannot sign unsubscribe tokens by accident. */
const CONTEXT = 'carerelay-unsubscribe.v1';

export type TokenCheck = { ok: true; deliveryId: string; expiresAt: number } | { ok: false; reason: 'malformed' | 'forged' | 'expired' };

export interface UnsubscribeLinks {
  /** The link for a delivery, valid `ttlDays` from `now` (epoch ms). */
  url(deliveryId: string, now: number): string;
  /** The URL's path part for a token (`/unsubscribe/<token>`). */
  readonly pathPrefix: string;
  /** Verifies a token: names its delivery, or says why not. */
  verify(token: string, now: number): TokenCheck;
}

/** `publicUrl` may be a function: the default one is known once the listener has its port. */
export function unsubscribeLinks(options: { key: Buffer; publicUrl: string | (() => string); ttlDays: number }): UnsubscribeLinks {
  const base = typeof options.publicUrl === 'string' ? () => options.publicUrl as string : options.publicUrl;
  const mac = (payload: string) => createHmac('sha256', options.key).update(`${CONTEXT}.${payload}`).digest();
  const pathPrefix = '/unsubscribe/';
  return {
    pathPrefix,
    url(deliveryId, now) {
      const payload = Buffer.from(JSON.stringify({ d: deliveryId, e: Math.floor(now / 1000) + options.ttlDays * 86_400 })).toString('base64url');
      return `${base()}${pathPrefix}${payload}.${mac(payload).toString('base64url')}`;
    },
    verify(token, now) {
      const m = /^([A-Za-z0-9_-]{1,2048})\.([A-Za-z0-9_-]{43})$/.exec(token);
      if (!m) return { ok: false, reason: 'malformed' };
      const given = Buffer.from(m[2]!, 'base64url');
      const expected = mac(m[1]!);
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: 'forged' };
      let body: { d?: unknown; e?: unknown };
      try {
        body = JSON.parse(Buffer.from(m[1]!, 'base64url').toString('utf8')) as { d?: unknown; e?: unknown };
      } catch {
        return { ok: false, reason: 'malformed' };
      }
      if (typeof body.d !== 'string' || typeof body.e !== 'number') return { ok: false, reason: 'malformed' };
      if (now >= body.e * 1000) return { ok: false, reason: 'expired' };
      return { ok: true, deliveryId: body.d, expiresAt: body.e * 1000 };
    },
  };
}

/**
 * The key links are signed with when the policy gives none: 32 random bytes kept in
 * `<dataDir>/unsubscribe.key` (created on first use, readable by this user only), so links
 * stay valid across restarts. Several processes must share policy.unsubscribe.secret instead.
 */
export function dataDirUnsubscribeKey(dataDir: string): Buffer {
  const file = path.join(dataDir, 'unsubscribe.key');
  if (!existsSync(file)) {
    mkdirSync(dataDir, { recursive: true });
    try {
      writeFileSync(file, `${randomBytes(32).toString('hex')}\n`, { flag: 'wx', mode: 0o600 });
    } catch (error) {
      // Another process created it first: use theirs.
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    chmodSync(file, 0o600);
  }
  return Buffer.from(readFileSync(file, 'utf8').trim(), 'utf8');
}

/** Whether a delivery carries an unsubscribe link: every non-care email does. */
export function needsUnsubscribe(delivery: Pick<Delivery, 'channel' | 'purpose'>): boolean {
  return delivery.channel === 'email' && !isCare(delivery.purpose);
}

/** The values a template may read besides its payload ({{ unsubscribe_url }} for non-care email). */
export function renderVariables(delivery: Pick<Delivery, 'id' | 'channel' | 'purpose'>, links: UnsubscribeLinks, now: number): Record<string, string> | undefined {
  return needsUnsubscribe(delivery) ? { [UNSUBSCRIBE_URL]: links.url(delivery.id, now) } : undefined;
}
