// Video-visit links at run time (docs/video.md): minted by the delivery worker when a message that
// shows one is rendered, looked at and followed through the /v/<token> pages (api/video-routes.ts).
//
//   render ─▶ mint: the appointment has a sealed join URL? ─▶ token (128 random bits) ─▶ store its
//             SHA-256 with the appointment and the start ─▶ {{ video.link }}
//   GET  /v/<token> ─▶ status (appointment as it stands, window) ─▶ a page; nothing changes
//   POST /v/<token> ─▶ status open? ─▶ open the seal now ─▶ 303 to the vendor URL
//
// Minting at render, not at planning: routing stays pure and replayable (no random draw, no
// write), no token exists for a message that never goes (cancelled, suppressed, moved), and the
// link is made for the appointment as it stands when the message leaves. A retried send mints
// again; every link of the delivery stays valid for the same visit.
import type { Logger } from '../log.ts';
import type { Store, VideoLink } from '../store/store.ts';
import type { Delivery } from '../types.ts';
import { keptLinkUrl, LinkState, linkStatus, linkUrl, mintToken, tokenHash, type LinkStatus, type LinkWindow } from '../video/link.ts';
import { VaultError, type JoinVault } from '../video/seal.ts';

/** Why a message showing a video link was not sent (a send-time reason code, safe to log). */
export const NO_JOIN_INFO = 'no_join_info';

export interface VideoLinksOptions {
  store: Store;
  vault: JoinVault;
  window: LinkWindow;
  /** Base of the links (policy.publicUrl; a function: the default one is known once the listener is bound). */
  publicUrl: () => string;
  log: Logger;
  /** Epoch ms; injected by tests. Default Date.now. */
  now?: () => number;
  /** Random source of tokens; default crypto.randomBytes. */
  random?: (size: number) => Buffer;
}

/** A link minted for a message: the text shown, and what the kept copy of the message says instead. */
export type MintedLink = { link: string; kept: string } | { unavailable: typeof NO_JOIN_INFO };

/** What a token is worth now, with its link when it is one. */
export interface LinkLookup {
  status: LinkStatus;
  link?: VideoLink;
}

export class VideoLinks {
  readonly #o: VideoLinksOptions;
  readonly #now: () => number;

  constructor(options: VideoLinksOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
  }

  get window(): LinkWindow {
    return this.#o.window;
  }

  /**
   * A new link for a delivery about an appointment that has a join URL kept, durably stored
   * (by its hash) before it is shown; `unavailable` when there is none to join. `page`: the zone
   * and language the link's pages show times and words in.
   */
  async mint(delivery: Delivery, page: { zone?: string; language?: string }): Promise<MintedLink> {
    const { store } = this.#o;
    if (delivery.subjectKind !== 'appointment') return { unavailable: NO_JOIN_INFO };
    const [join, state] = await Promise.all([store.getVideoJoin(delivery.subjectId), store.getSubjectState('appointment', delivery.subjectId)]);
    if (join === undefined || state?.start === undefined) return { unavailable: NO_JOIN_INFO };
    const token = mintToken(this.#o.random);
    await store.putVideoLink({
      tokenHash: tokenHash(token)!,
      appointmentId: delivery.subjectId,
      patientId: delivery.patientId,
      deliveryId: delivery.id,
      start: state.start,
      ...(page.zone !== undefined ? { zone: page.zone } : {}),
      ...(page.language !== undefined ? { language: page.language } : {}),
      mintedAt: new Date(this.#now()).toISOString(),
    });
    const base = this.#o.publicUrl();
    return { link: linkUrl(base, token), kept: keptLinkUrl(base) };
  }

  /** What a token is worth now, against the appointment as it stands. Reads only. */
  async lookup(token: string): Promise<LinkLookup> {
    const { store } = this.#o;
    const hash = tokenHash(token);
    const link = hash === undefined ? undefined : await store.getVideoLink(hash);
    if (link === undefined) return { status: { state: LinkState.Unknown } };
    const [state, join] = await Promise.all([store.getSubjectState('appointment', link.appointmentId), store.getVideoJoin(link.appointmentId)]);
    return { status: linkStatus(link, state, join !== undefined, this.#now(), this.#o.window), link };
  }

  /**
   * The vendor URL to send the patient to, opened from its seal now, when the link is open;
   * else what the link is worth. A seal that cannot be opened (its key is gone, the bytes are
   * not what was sealed) makes the link unavailable, logged with its reason code only.
   */
  async join(token: string): Promise<LinkLookup & { url?: string }> {
    const found = await this.lookup(token);
    if (found.status.state !== LinkState.Open || found.link === undefined) return found;
    const join = await this.#o.store.getVideoJoin(found.link.appointmentId);
    if (join === undefined) return { ...found, status: { state: LinkState.Unavailable } };
    try {
      return { ...found, url: this.#o.vault.open(join.appointmentId, join.join) };
    } catch (error) {
      if (!(error instanceof VaultError)) throw error;
      this.#o.log.error('video.join_unreadable', { deliveryId: found.link.deliveryId, reason: error.code });
      return { ...found, status: { state: LinkState.Unavailable } };
    }
  }
}
