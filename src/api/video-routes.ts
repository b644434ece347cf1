// The patient's video-visit link (docs/video.md): public, no admin token, the token in the path
// is the only credential (128 random bits, kept as its SHA-256).
//
//   GET  /v/:token   a page: "join" (a button), "opens at …", or why the link no longer works.
//                    Reads only, so mail and SMS link scanners, previews and repeated opens use
//                    nothing up.
//   POST /v/:token   the button: 303 to the vendor's join URL, opened from its seal now; the page
//                    saying why not otherwise. Nothing is consumed either: a patient who drops
//                    out joins again.
//
// No cookie or session exists here, so a forged cross-site POST has nothing to ride on; still,
// a POST that a browser marks as coming from another site (Sec-Fetch-Site cross-site/same-site,
// or an Origin that is not ours) is refused, so no other page can drive the join. Every answer
// is no-store and noindex; pages may not be framed; the redirect sends no Referer (the vendor
// never sees the token), the page sends one only to its own origin.
import express, { type Request, type Response } from 'express';
import { DateTime } from 'luxon';
import type { Logger } from '../log.ts';
import type { VideoLink } from '../store/store.ts';
import { LinkState } from '../video/link.ts';
import type { LinkLookup } from '../workers/video.ts';
import { declaredOverLimit, refuseUnread } from './http.ts';

export interface VideoRoutesDeps {
  links: { lookup(token: string): Promise<LinkLookup>; join(token: string): Promise<LinkLookup & { url?: string }> };
  log: Logger;
  /** Base URL patients reach CareRelay at (policy.publicUrl): its origin is the only one a join POST may come from. */
  publicUrl: () => string;
}

/** A join POST carries no body worth reading: the button's form is empty. */
const FORM_LIMIT = 1024;

const COMMON_HEADERS: Readonly<Record<string, string>> = {
  'Cache-Control': 'no-store',
  'X-Robots-Tag': 'noindex, nofollow',
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
};

/** The page's own policy: no script, inline style only, the form may post here and be redirected to the vendor (https). */
const PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https:; frame-ancestors 'none'; base-uri 'none'";

/** HTTP status of each state's page. */
const STATUS: Readonly<Record<LinkState, number>> = {
  open: 200,
  early: 200,
  ended: 410,
  cancelled: 410,
  moved: 410,
  unavailable: 410,
  unknown: 404,
};

type Language = 'en' | 'fr';

const TEXT: Readonly<Record<Language, Readonly<Record<string, string>>>> = {
  en: {
    title: 'Your video visit',
    visit: 'Your visit: {time}.',
    open: 'Press the button to join your video visit.',
    join: 'Join the video visit',
    early: 'This link opens on {time}. Come back then.',
    ended: 'This video visit has ended; the link no longer works.',
    cancelled: 'This appointment was cancelled; the link no longer works.',
    moved: 'This appointment was moved; this link no longer works. Use the link in the latest message about it.',
    unavailable: 'This link cannot take you to the visit any more. Please contact the clinic.',
    unknown: 'This link is not valid. Check that it was copied whole, or contact the clinic.',
    refused: 'The visit can only be joined from its own page: open the link from your message again.',
  },
  fr: {
    title: 'Votre téléconsultation',
    visit: 'Votre rendez-vous : {time}.',
    open: 'Appuyez sur le bouton pour rejoindre votre téléconsultation.',
    join: 'Rejoindre la téléconsultation',
    early: 'Ce lien ouvrira le {time}. Revenez à ce moment-là.',
    ended: 'Cette téléconsultation est terminée ; le lien ne fonctionne plus.',
    cancelled: 'Ce rendez-vous a été annulé ; le lien ne fonctionne plus.',
    moved: 'Ce rendez-vous a été déplacé ; ce lien ne fonctionne plus. Utilisez le lien du dernier message à son sujet.',
    unavailable: 'Ce lien ne permet plus de rejoindre la consultation. Veuillez contacter le cabinet.',
    unknown: "Ce lien n'est pas valide. Vérifiez qu'il a été copié en entier, ou contactez le cabinet.",
    refused: "La consultation ne peut être rejointe que depuis sa propre page : rouvrez le lien de votre message.",
  },
};

function languageOf(link: VideoLink | undefined): Language {
  return link?.language === 'fr' ? 'fr' : 'en';
}

function html(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;');
}

/** A time in the link's zone (else the offset its start came with) and language. */
function when(ms: number, link: VideoLink, language: Language): string {
  const zone = link.zone ?? DateTime.fromISO(link.start, { setZone: true }).zone;
  return DateTime.fromMillis(ms, { zone }).setLocale(language).toLocaleString({ ...DateTime.DATE_HUGE, ...DateTime.TIME_SIMPLE });
}

function page(res: Response, status: number, language: Language, body: string): void {
  const t = TEXT[language];
  res
    .status(status)
    .set(COMMON_HEADERS)
    .set({ 'Content-Security-Policy': PAGE_CSP, 'Referrer-Policy': 'same-origin' })
    .type('html')
    .send(
      `<!doctype html><html lang="${language}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">` +
        `<meta name="robots" content="noindex,nofollow"><title>${html(t.title!)}</title>` +
        '<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;line-height:1.5}' +
        'button{font-size:1.2rem;padding:.8rem 1.6rem;border-radius:.5rem;border:0;background:#0b5fff;color:#fff}</style>' +
        `</head><body><h1>${html(t.title!)}</h1>${body}</body></html>`,
    );
}

/** The page of a link in a given state (no button unless it is open). */
function statusPage(res: Response, found: LinkLookup): void {
  const { status, link } = found;
  const language = languageOf(link);
  const t = TEXT[language];
  const visit = link === undefined ? '' : `<p>${html(t.visit!.replace('{time}', when(Date.parse(link.start), link, language)))}</p>`;
  let body: string;
  switch (status.state) {
    case LinkState.Open:
      // An empty form posting to this same URL: the only way from the page to the vendor.
      body = `${visit}<p>${html(t.open!)}</p><form method="post"><button type="submit">${html(t.join!)}</button></form>`;
      break;
    case LinkState.Early:
      body = `${visit}<p>${html(t.early!.replace('{time}', when(status.opensAt!, link!, language)))}</p>`;
      break;
    case LinkState.Ended:
    case LinkState.Cancelled:
    case LinkState.Moved:
    case LinkState.Unavailable:
      body = `<p>${html(t[status.state]!)}</p>`;
      break;
    case LinkState.Unknown:
      body = `<p>${html(t.unknown!)}</p>`;
      break;
    default:
      status.state satisfies never;
      body = '';
  }
  page(res, STATUS[status.state], language, body);
}

/**
 * Whether a browser says this POST came from another site: Fetch Metadata first (every current
 * browser sends Sec-Fetch-Site), else an Origin that is neither ours nor "null" (a page with a
 * no-referrer policy, or a privacy setting, sends "null"). A client that sends neither (curl,
 * an old browser) is not a browser driven by another page.
 */
function crossSite(req: Request, ownOrigin: string | undefined): boolean {
  const site = req.headers['sec-fetch-site'];
  if (typeof site === 'string') return site !== 'same-origin' && site !== 'none';
  const origin = req.headers.origin;
  if (origin === undefined || origin === 'null') return false;
  const hostOrigin = `${req.protocol}://${req.get('host') ?? ''}`;
  return origin !== ownOrigin && origin !== hostOrigin;
}

function originOf(url: string): string | undefined {
  try {
    return new URL(url).origin;
  } catch {
    return undefined;
  }
}

export function createVideoRouter(deps: VideoRoutesDeps): express.Router {
  const router = express.Router();

  router.get('/v/:token', async (req, res, next) => {
    try {
      const found = await deps.links.lookup(String(req.params.token));
      deps.log.debug('video.link_viewed', { ...(found.link ? { deliveryId: found.link.deliveryId } : {}), reason: found.status.state });
      statusPage(res, found);
    } catch (error) {
      next(error);
    }
  });

  router.post('/v/:token', async (req, res, next) => {
    if (declaredOverLimit(req, FORM_LIMIT)) return refuseUnread(res, 413, 'Payload too large', `bodies are limited to ${FORM_LIMIT} bytes`);
    try {
      if (crossSite(req, originOf(deps.publicUrl()))) {
        deps.log.warn('video.join_refused', { reason: 'cross_site' });
        const found = await deps.links.lookup(String(req.params.token));
        page(res, 403, languageOf(found.link), `<p>${html(TEXT[languageOf(found.link)].refused!)}</p>`);
        return;
      }
      const found = await deps.links.join(String(req.params.token));
      deps.log.debug('video.join', { ...(found.link ? { deliveryId: found.link.deliveryId } : {}), reason: found.status.state });
      if (found.url === undefined) return statusPage(res, found);
      // 303: the browser follows with a GET. No Referer to the vendor: the token stays ours.
      res.status(303).set(COMMON_HEADERS).set({ 'Referrer-Policy': 'no-referrer', Location: found.url }).type('text').send('');
    } catch (error) {
      next(error);
    }
  });

  return router;
}
