// The frame every dashboard page shares — header, navigation, who is signed in — and the small
// pieces pages are built of: status badges, times, forms with their CSRF token, pagers.
import { AdminScope } from '../../config/server-schema.ts';
import type { AdminCaller } from '../app.ts';
import { html, href, type Renderable, type SafeHtml } from './html.ts';
import { CSRF_FIELD } from './session.ts';
import { STATIC_VERSION } from './static.ts';

/** What every page knows about its request. */
export interface PageContext {
  caller: AdminCaller;
  /** The session's CSRF token, for the page's forms. */
  csrf: string;
  /** The caller may see patient content (scope phi). */
  phi: boolean;
  /** The caller may act (scope operate). */
  operate: boolean;
  /** IANA zone times are shown in (the organisation's). */
  zone: string;
  now: Date;
  /** A sign-in is possible (tokens are configured): the header offers to sign out. */
  signOut: boolean;
  /** The outcome of the action that led here. */
  flash?: Flash;
}

export const NAV = [
  { path: '/ui/flows', label: 'Flows' },
  { path: '/ui/messages', label: 'Messages' },
  { path: '/ui/patients', label: 'Timeline' },
  { path: '/ui/deliveries', label: 'Deliveries' },
  { path: '/ui/rules', label: 'Rules' },
  { path: '/ui/tasks', label: 'Tasks' },
] as const;

export type Flash = { kind: 'notice' | 'error'; text: string };

export interface PageOptions {
  title: string;
  /** Which NAV entry is current. */
  section?: (typeof NAV)[number]['path'];
  /** A line under the title. */
  subtitle?: Renderable;
  flash?: Flash;
  /** Reload the page every N seconds (a meta refresh: works without script). */
  refreshSeconds?: number;
}

const STYLESHEET = `/ui/static/dashboard.css?v=${STATIC_VERSION}`;
const SCRIPT = `/ui/static/dashboard.js?v=${STATIC_VERSION}`;

/** A whole page. */
export function page(ctx: PageContext | undefined, options: PageOptions, body: Renderable): SafeHtml {
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
${options.refreshSeconds !== undefined && html`<meta http-equiv="refresh" content="${options.refreshSeconds}">`}
<title>${options.title} · CareRelay</title>
<link rel="stylesheet" href="${STYLESHEET}">
<script src="${SCRIPT}" defer></script>
</head>
<body>
<header class="top">
  <a class="brand" href="/ui/flows">CareRelay</a>
  ${ctx !== undefined && html`<nav>${NAV.map((n) => html`<a href="${n.path}"${n.path === options.section ? html` class="current" aria-current="page"` : ''}>${n.label}</a>`)}</nav>
  <div class="who"><span title="the admin token this session uses">${ctx.caller.name}</span> <span class="scopes">${[...ctx.caller.scopes].join(' · ')}</span>
  ${ctx.signOut && html`<form method="post" action="/ui/logout" class="inline">${csrfField(ctx)}<button type="submit" class="link">Sign out</button></form>`}</div>`}
</header>
<main>
<div class="title"><h1>${options.title}</h1>${options.subtitle !== undefined && html`<p class="sub">${options.subtitle}</p>`}</div>
${flashOf(options.flash ?? ctx?.flash)}
${body}
</main>
</body>
</html>`;
}

function flashOf(flash: Flash | undefined): SafeHtml | undefined {
  return flash && html`<p class="flash ${flash.kind}" role="${flash.kind === 'error' ? 'alert' : 'status'}">${flash.text}</p>`;
}

export function csrfField(ctx: PageContext): SafeHtml {
  return html`<input type="hidden" name="${CSRF_FIELD}" value="${ctx.csrf}">`;
}

/** The scopes of a caller, as the pages test them. */
export function scopesOf(caller: AdminCaller): { phi: boolean; operate: boolean; read: boolean } {
  return { phi: caller.scopes.has(AdminScope.Phi), operate: caller.scopes.has(AdminScope.Operate), read: caller.scopes.has(AdminScope.Read) };
}

/** Tone of a status or code: what colour its badge has. */
const TONES: Record<string, 'ok' | 'warn' | 'bad' | 'muted' | 'info'> = {
  accepted: 'ok',
  sent: 'ok',
  delivered: 'ok',
  AA: 'ok',
  CA: 'ok',
  allow: 'ok',
  closed: 'ok',
  listening: 'ok',
  ignored: 'muted',
  cancelled: 'muted',
  pending: 'info',
  move: 'info',
  review: 'warn',
  parked: 'warn',
  suppressed: 'warn',
  deny: 'warn',
  quarantined: 'warn',
  'half-open': 'warn',
  half_open: 'warn',
  AE: 'bad',
  CE: 'bad',
  AR: 'bad',
  CR: 'bad',
  rejected: 'bad',
  failed: 'bad',
  dead: 'bad',
  open: 'bad',
  bounced: 'bad',
  undelivered: 'bad',
  refused: 'bad',
};

export function tone(code: string): string {
  const known = TONES[code];
  if (known !== undefined) return known;
  // FHIR requests are answered with an HTTP status.
  if (/^[45]\d\d$/.test(code)) return 'bad';
  if (/^2\d\d$/.test(code)) return 'ok';
  return 'muted';
}

export function badge(code: string, title?: string): SafeHtml {
  return html`<span class="badge ${tone(code)}"${title !== undefined && html` title="${title}"`}>${code}</span>`;
}

/** Whether an acknowledgment code says the message was not taken (HL7 AE/AR/CE/CR, HTTP 4xx/5xx). */
export function isErrorAck(code: string): boolean {
  return tone(code) === 'bad';
}

/**
 * "2026-01-31 09:30:05" in a zone. Intl's formatter, made once per zone: a page shows hundreds
 * of times, and luxon's formatting costs about a hundred times more per call.
 */
const FORMATTERS = new Map<string, Intl.DateTimeFormat>();
function formatIn(zone: string, ms: number): string {
  let f = FORMATTERS.get(zone);
  if (f === undefined) {
    // sv-SE writes the ISO order, with a space between date and time.
    f = new Intl.DateTimeFormat('sv-SE', { timeZone: zone, year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
    FORMATTERS.set(zone, f);
  }
  return f.format(ms);
}

/** An instant in the page's zone, with the ISO value as its machine-readable form. */
export function time(ctx: PageContext, iso: string | undefined): SafeHtml {
  if (iso === undefined || iso === '') return html`<span class="muted">—</span>`;
  const ms = Date.parse(iso);
  if (Number.isNaN(ms)) return html`${iso}`;
  return html`<time datetime="${new Date(ms).toISOString()}" title="${iso}">${formatIn(ctx.zone, ms)}</time>`;
}

/** An instant as text in the page's zone (for running text: no markup). */
export function timeText(ctx: PageContext, iso: string): string {
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? iso : formatIn(ctx.zone, ms);
}

/** How long ago an instant was, roughly ("4 min", "2 h 5 min", "3 d"). */
export function duration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return m % 60 === 0 ? `${h} h` : `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d`;
}

export function ago(ctx: PageContext, iso: string | undefined): string {
  if (iso === undefined) return '';
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? '' : `${duration(ctx.now.getTime() - ms)} ago`;
}

export function count(n: number): string {
  return n.toLocaleString('en-US');
}

/** An id in monospace, linked when a path is given. */
export function idLink(id: string, path?: string): SafeHtml {
  return path === undefined ? html`<code>${id}</code>` : html`<a href="${path}"><code>${id}</code></a>`;
}

/** "Older" link of a list read newest first. */
export function pager(next: string | undefined): SafeHtml {
  return html`<p class="pager">${next !== undefined ? html`<a href="${next}">Older →</a>` : html`<span class="muted">End of list</span>`}</p>`;
}

export function empty(text: string): SafeHtml {
  return html`<p class="empty">${text}</p>`;
}

/** A "needs scope" note where a part of the page is left out. */
export function needsScope(scope: string, what: string): SafeHtml {
  return html`<p class="masked-note">${what} needs the <code>${scope}</code> scope; this session's token does not have it.</p>`;
}

/** Label/value pairs. */
export function facts(pairs: ReadonlyArray<readonly [string, Renderable]>): SafeHtml {
  return html`<dl class="facts">${pairs.map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>`)}</dl>`;
}

/** A small link to the same page with another query. */
export function url(path: string, query: Record<string, string | number | undefined>): string {
  return href(path, query);
}
