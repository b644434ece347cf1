// CareRelay's own video-visit links (docs/video.md), the pure part: tokens and what a link is
// worth at a given instant. A patient never gets the vendor's join URL in a message; they get
//
//   <publicUrl>/v/<token>      token: 16 random bytes (128 bits), base64url, 22 characters
//
// whose GET shows a page (nothing changes: link scanners and previews cannot use it up) and whose
// button POSTs back to be redirected to the vendor URL, opened from its seal at that moment. The
// store keeps only the SHA-256 of a token, with the appointment and the start it was minted for.
import { createHash, randomBytes } from 'node:crypto';
import type { SubjectState, VideoLink } from '../store/store.ts';

/** Random bytes in a token: 128 bits, far beyond guessing (docs/video.md "Links"). */
export const TOKEN_BYTES = 16;

/** The URL path a token is served under. */
export const LINK_PATH = '/v/';

/** A token as minted (base64url of TOKEN_BYTES bytes); longer ones are accepted for later versions. */
const TOKEN = /^[A-Za-z0-9_-]{22,86}$/;

/** A new token: TOKEN_BYTES from `random` (crypto.randomBytes; tests inject their own). */
export function mintToken(random: (size: number) => Buffer = randomBytes): string {
  const bytes = random(TOKEN_BYTES);
  if (bytes.length !== TOKEN_BYTES) throw new RangeError(`a token needs ${TOKEN_BYTES} random bytes, got ${bytes.length}`);
  return bytes.toString('base64url');
}

/** What the store keeps of a token: its SHA-256, lower-case hex. Undefined for text that cannot be a token. */
export function tokenHash(token: string): string | undefined {
  return TOKEN.test(token) ? createHash('sha256').update(token, 'utf8').digest('hex') : undefined;
}

/** The link text shown in a message for a token. */
export function linkUrl(publicUrl: string, token: string): string {
  return `${publicUrl}${LINK_PATH}${token}`;
}

/** What a link's URL is kept as in the stored copy of a sent message: the token left out. */
export function keptLinkUrl(publicUrl: string): string {
  return `${publicUrl}${LINK_PATH}[link]`;
}

/** What a link is worth now (the pages say it in words; safe to log: codes only). */
export const LinkState = {
  /** Within its window: the page shows the button, the POST redirects. */
  Open: 'open',
  /** Before its window: the page says when it opens. */
  Early: 'early',
  /** After its window, or the visit took place. */
  Ended: 'ended',
  /** The appointment was cancelled, deleted or marked no-show. */
  Cancelled: 'cancelled',
  /** The appointment moved since the link was minted: the newer message carries a newer link. */
  Moved: 'moved',
  /** No join information is kept for the appointment any more (it went in person, or was erased). */
  Unavailable: 'unavailable',
  /** Not a token CareRelay minted. */
  Unknown: 'unknown',
} as const;
export type LinkState = (typeof LinkState)[keyof typeof LinkState];

/** When links open and close around a visit (server.video). */
export interface LinkWindow {
  opensMinutesBefore: number;
  closesMinutesAfter: number;
}

export interface LinkStatus {
  state: LinkState;
  /** Epoch ms the link opens (early) or closes (open). */
  opensAt?: number;
  closesAt?: number;
}

const CANCELLED = new Set(['cancelled', 'entered-in-error', 'noshow']);

function ms(instant: string | undefined): number | undefined {
  if (instant === undefined) return undefined;
  const t = Date.parse(instant);
  return Number.isNaN(t) ? undefined : t;
}

/**
 * What `link` is worth at `now`, against the appointment as it stands (`subject`) and whether a
 * join URL is kept for it. The appointment's state is read at every request, so a cancel or a
 * reschedule kills the link as soon as it is committed. A link works only for the start it was
 * minted for: a visit moved back to that very time makes it work again (the same visit at the
 * same time); the message about the move carries a new link either way.
 */
export function linkStatus(link: VideoLink | undefined, subject: SubjectState | undefined, hasJoin: boolean, now: number, window: LinkWindow): LinkStatus {
  if (link === undefined) return { state: LinkState.Unknown };
  if (subject === undefined) return { state: LinkState.Unavailable };
  if (subject.status !== undefined && CANCELLED.has(subject.status)) return { state: LinkState.Cancelled };
  const start = ms(subject.start);
  const minted = ms(link.start);
  if (start === undefined || minted === undefined || start !== minted) return { state: LinkState.Moved };
  if (subject.status === 'fulfilled') return { state: LinkState.Ended };
  if (!hasJoin) return { state: LinkState.Unavailable };
  const opensAt = start - window.opensMinutesBefore * 60_000;
  const closesAt = (ms(subject.end) ?? start) + window.closesMinutesAfter * 60_000;
  if (now < opensAt) return { state: LinkState.Early, opensAt };
  if (now >= closesAt) return { state: LinkState.Ended };
  return { state: LinkState.Open, closesAt };
}
