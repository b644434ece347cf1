// The operations dashboard, served by the admin HTTP listener at /ui: server-rendered pages
// over the store (and the admin API's own functions for actions), for the engineer on call.
//
//   GET  /ui/login, POST /ui/login, POST /ui/logout    the session (session.ts)
//   GET  /ui/flows                                     inputs and outputs: state, rates, ACKs, queue
//   GET  /ui/messages, /ui/messages/:id                search; one message laid out, its ACK,
//   POST /ui/messages/:id/reprocess                    triggers, routing and deliveries
//   GET  /ui/patients/:id, /ui/appointments/:id        everything about one patient or appointment, in time order
//   GET  /ui/deliveries, /ui/deliveries/:id            dead letters and review items; one delivery
//   POST /ui/deliveries/replay                         replay one, several, or a filter
//   GET  /ui/rules                                     per rule and variant: sent, suppressed by reason, outcomes
//   GET  /ui/tasks, POST /ui/tasks/:id/done            staff tasks of patients' answers (tasks.ts); close one
//
// The same tokens and scopes as the admin API (app.ts adminIdentity): `read` for every page,
// `phi` to see patient content (masked otherwise), `operate` for actions, each audited with the
// token's name. Every page answers with a strict Content-Security-Policy (no inline script or
// style, nothing from elsewhere, no framing) and `Cache-Control: no-store` (pages may hold PHI).
//
// Reads go through the store's sliced lists and the counts it keeps (store.ts flowActivity,
// deliveryTallies): no page scans, so a page never holds the event loop that MLLP ACKs share.
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Logger } from '../../log.ts';
import type { Rule } from '../../pipeline/rule.ts';
import type { Store } from '../../store/store.ts';
import { AdminScope } from '../../config/server-schema.ts';
import { BadQuery, type AdminCaller } from '../app.ts';
import type { OperationsDeps } from '../operations.ts';
import { deliveriesRoutes, type ReplayService } from './deliveries.ts';
import { flowsRoutes, type FlowsInfo, type QueueReader } from './flows.ts';
import { html, href, type SafeHtml } from './html.ts';
import { page, scopesOf, type Flash, type PageContext } from './layout.ts';
import { messagesRoutes } from './messages.ts';
import { rulesRoutes, type OutcomesService } from './rules.ts';
import { CSRF_FIELD, clearedSessionCookie, cookieValue, csrfMatches, csrfToken, newSession, sameOrigin, servedOverTls, sessionCookie, sessionOf, type UiSession } from './session.ts';
import { serveStatic } from './static.ts';
import { tasksRoutes } from './tasks.ts';
import { timelineRoutes } from './timeline.ts';

export interface DashboardDeps {
  store: Store;
  log: Logger;
  /** Who a token is (app.ts adminIdentity). */
  identity: { identify(token: string | undefined): AdminCaller | undefined; tokensConfigured: boolean };
  /** Reprocess of rejected messages (operations.ts attemptMessage). */
  operations: OperationsDeps;
  /** The organisation's zone (policy.timezone): times are shown in it. */
  zone: string;
  now: () => Date;
  /** What the running process knows of its inputs and outputs. */
  flows?: () => FlowsInfo;
  /** The delivery queue: its backlog, parked and dead jobs. */
  queue?: QueueReader;
  /** The rules in force. */
  rules?: () => readonly Rule[];
  /** Replays dead-lettered (and parked) deliveries; absent: shown as not available. */
  replay?: ReplayService;
  /** Outcomes per rule and variant; absent: shown as not available. */
  outcomes?: OutcomesService;
  /** Each output's circuit state; absent: shown as not available. */
  outputStates?: () => Promise<ReadonlyMap<string, { state: string; detail?: string }>>;
}

/** What the authentication step leaves for the handlers. */
interface UiLocals {
  caller: AdminCaller;
  session: UiSession;
}

/**
 * Content-Security-Policy of every /ui answer: scripts and styles from /ui/static only (no
 * inline ones, no eval), no plug-ins, frames, or connections elsewhere; forms post here only.
 */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
].join('; ');

function securityHeaders(_req: Request, res: Response, next: NextFunction): void {
  res.setHeader('Content-Security-Policy', CONTENT_SECURITY_POLICY);
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('X-Frame-Options', 'DENY');
  res.setHeader('Referrer-Policy', 'same-origin');
  res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
  res.setHeader('Cross-Origin-Resource-Policy', 'same-origin');
  next();
}

/** Sends a page (no-store: pages may hold patient content). */
export function sendPage(res: Response, body: SafeHtml, status = 200): void {
  res.status(status).setHeader('Cache-Control', 'no-store');
  res.type('text/html; charset=utf-8').send(body.toString());
}

/** The page context of an authenticated request. */
export function contextOf(res: Response, deps: Pick<DashboardDeps, 'zone' | 'now' | 'identity'>): PageContext {
  const { caller, session } = res.locals.ui as UiLocals;
  const scopes = scopesOf(caller);
  return { caller, csrf: csrfToken(session), phi: scopes.phi, operate: scopes.operate, zone: deps.zone, now: deps.now(), signOut: deps.identity.tokensConfigured };
}

/** A page handler: renders or redirects. */
export type View = (req: Request, res: Response, ctx: PageContext) => Promise<SafeHtml | undefined>;

/** Wraps a view: builds its context, sends what it renders (a view that redirected returns undefined). */
export function view(deps: Pick<DashboardDeps, 'zone' | 'now' | 'identity'>, render: View) {
  return async (req: Request, res: Response): Promise<void> => {
    const ctx = contextOf(res, deps);
    ctx.flash = takeFlash(req, res);
    const body = await render(req, res, ctx);
    if (body !== undefined) sendPage(res, body);
  };
}

/** The cookie carrying an action's outcome to the page it redirects to (read once, then cleared). */
const FLASH_COOKIE = 'carerelay_ui_flash';

/**
 * Where to go after an action (post/redirect/get): a page of ours, and the outcome to show
 * there, carried by a short-lived cookie rather than the URL, so no link can make a page of
 * this server say something it did not.
 */
export function redirectWithFlash(req: Request, res: Response, path: string, flash: Flash): void {
  const value = Buffer.from(JSON.stringify(flash), 'utf8').toString('base64url');
  res.append('Set-Cookie', `${FLASH_COOKIE}=${value}; Path=/ui; Max-Age=60; HttpOnly; SameSite=Strict${servedOverTls(req) ? '; Secure' : ''}`);
  res.redirect(303, path);
}

/** The outcome an action left for this page, if any (and clears it). */
function takeFlash(req: Request, res: Response): Flash | undefined {
  const value = cookieValue(req.headers.cookie, FLASH_COOKIE);
  if (value === undefined || value === '') return undefined;
  res.append('Set-Cookie', `${FLASH_COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict${servedOverTls(req) ? '; Secure' : ''}`);
  try {
    const parsed = JSON.parse(Buffer.from(value, 'base64url').toString('utf8')) as Partial<Flash>;
    if ((parsed.kind === 'notice' || parsed.kind === 'error') && typeof parsed.text === 'string') return { kind: parsed.kind, text: parsed.text.slice(0, 1000) };
  } catch {
    // Not ours: ignored.
  }
  return undefined;
}

function errorPage(ctx: PageContext | undefined, title: string, text: string): SafeHtml {
  return page(ctx, { title }, html`<p class="flash error">${text}</p><p><a href="/ui/flows">Back to the dashboard</a></p>`);
}

/** Form bodies of actions: small (a replay of up to 1,000 delivery ids fits). */
const readForm = express.urlencoded({ extended: false, limit: '128kb', parameterLimit: 1100 });

/**
 * Guards an action: the request must come from one of our pages (Origin), carry the session's
 * CSRF token and come from a caller with `scope`. The body is read only once the session is
 * known (authentication before any body, docs/reliability.md promise 11).
 */
export function action(deps: Pick<DashboardDeps, 'zone' | 'now' | 'identity'>, scope: AdminScope) {
  return (req: Request, res: Response, next: NextFunction): void => {
    readOwnForm(req, res, next, 'An action must come from a page of this dashboard (its Origin did not match).', (body) => {
      const { session, caller } = res.locals.ui as UiLocals;
      if (!csrfMatches(session, body[CSRF_FIELD])) {
        sendPage(res, errorPage(contextOf(res, deps), 'Refused', "This form's security token is missing or out of date (a new sign-in changes it). Go back, reload the page and try again."), 403);
        return;
      }
      if (!caller.scopes.has(scope)) {
        sendPage(res, errorPage(contextOf(res, deps), 'Not allowed', `This action needs the "${scope}" scope; token "${caller.name}" has ${[...caller.scopes].join(', ') || 'none'}.`), 403);
        return;
      }
      next();
    });
  };
}

/**
 * A POST's form, read only when the request comes from one of our pages (its Origin): one from
 * elsewhere is refused with `refusal` before a byte of its body is read.
 */
function readOwnForm(req: Request, res: Response, next: NextFunction, refusal: string, then: (body: Record<string, unknown>) => void): void {
  if (!sameOrigin(req)) {
    res.setHeader('Connection', 'close');
    sendPage(res, errorPage(undefined, 'Refused', refusal), 403);
    return;
  }
  readForm(req, res, (err?: unknown) => {
    if (err !== undefined) next(err);
    else then((req.body ?? {}) as Record<string, unknown>);
  });
}

/** A path of ours to come back to after signing in (anything else: the flows page). */
function safeNext(value: unknown): string {
  return typeof value === 'string' && /^\/ui\/[A-Za-z0-9/_%?&=.,:@~+-]*$/.test(value) && !value.startsWith('/ui/login') ? value : '/ui/flows';
}

function loginPage(session: UiSession, next: string, message?: string): SafeHtml {
  return page(
    undefined,
    { title: 'Sign in' },
    html`<form method="post" action="/ui/login" class="login" autocomplete="off">
<p>Sign in with an admin API token (<code>CARERELAY_ADMIN_TOKEN</code> or one of <code>server.admin.tokens</code>). What you can see and do follows its scopes.</p>
${message !== undefined && html`<p class="flash error" role="alert">${message}</p>`}
<input type="hidden" name="${CSRF_FIELD}" value="${csrfToken(session)}">
<input type="hidden" name="next" value="${next}">
<label>Token <input type="password" name="token" required autofocus></label>
<button type="submit">Sign in</button>
</form>`,
  );
}

export function createDashboardRouter(deps: DashboardDeps): express.Router {
  const { identity, log } = deps;
  const router = express.Router();
  router.use(securityHeaders);
  router.get('/static/:file', serveStatic);

  // --- the session ------------------------------------------------------------------------
  // The login form is protected like any action, with a session that holds no token yet.
  router.get('/login', (req, res) => {
    if (!identity.tokensConfigured) {
      res.redirect(303, '/ui/flows');
      return;
    }
    const session = sessionOf(req.headers.cookie) ?? newSession();
    res.setHeader('Set-Cookie', sessionCookie({ sid: session.sid, token: '' }, servedOverTls(req)));
    sendPage(res, loginPage({ sid: session.sid, token: '' }, safeNext(req.query.next)));
  });

  router.post('/login', (req, res, next) => {
    readOwnForm(req, res, next, "A sign-in must come from this server's own page.", (body) => {
      const before = sessionOf(req.headers.cookie);
      const target = safeNext(body.next);
      if (before === undefined || !csrfMatches({ sid: before.sid, token: '' }, body[CSRF_FIELD])) {
        const fresh = newSession();
        res.setHeader('Set-Cookie', sessionCookie(fresh, servedOverTls(req)));
        sendPage(res, loginPage(fresh, target, 'The sign-in form was out of date; please try again.'), 403);
        return;
      }
      const token = typeof body.token === 'string' ? body.token.trim() : '';
      const caller = token === '' ? undefined : identity.identify(token);
      if (caller === undefined || !identity.tokensConfigured) {
        log.warn('ui.login_refused', { reason: 'unknown_token' });
        sendPage(res, loginPage({ sid: before.sid, token: '' }, target, 'That token is not one this server knows.'), 401);
        return;
      }
      // A new session id at every sign-in.
      res.setHeader('Set-Cookie', sessionCookie(newSession(token), servedOverTls(req)));
      log.info('ui.login', { actor: caller.name });
      res.redirect(303, target);
    });
  });

  // --- every other page needs a signed-in caller with `read` ---------------------------------
  router.use((req, res, next) => {
    const session = sessionOf(req.headers.cookie);
    if (!identity.tokensConfigured) {
      // Loopback only (main.ts): the caller is "local"; the session only carries the CSRF secret.
      const local = session ?? newSession();
      if (session === undefined) res.setHeader('Set-Cookie', sessionCookie(local, servedOverTls(req)));
      res.locals.ui = { caller: identity.identify(undefined)!, session: { sid: local.sid, token: '' } } satisfies UiLocals;
      next();
      return;
    }
    const caller = session === undefined || session.token === '' ? undefined : identity.identify(session.token);
    if (caller === undefined || session === undefined) {
      if (req.method === 'GET') {
        res.redirect(303, href('/ui/login', { next: req.originalUrl }));
        return;
      }
      res.setHeader('Connection', 'close');
      sendPage(res, errorPage(undefined, 'Signed out', 'Your session has ended; sign in again.'), 401);
      return;
    }
    res.locals.ui = { caller, session } satisfies UiLocals;
    if (!caller.scopes.has(AdminScope.Read)) {
      sendPage(res, errorPage(contextOf(res, deps), 'Not allowed', `The dashboard needs the "read" scope; token "${caller.name}" has ${[...caller.scopes].join(', ') || 'none'}.`), 403);
      return;
    }
    next();
  });

  router.post('/logout', action(deps, AdminScope.Read), (req, res) => {
    res.setHeader('Set-Cookie', clearedSessionCookie(servedOverTls(req)));
    res.redirect(303, '/ui/login');
  });

  router.get('/', (_req, res) => res.redirect(303, '/ui/flows'));
  flowsRoutes(router, deps);
  messagesRoutes(router, deps);
  timelineRoutes(router, deps);
  deliveriesRoutes(router, deps);
  rulesRoutes(router, deps);
  tasksRoutes(router, deps);

  router.use((_req, res) => {
    sendPage(res, errorPage(res.locals.ui ? contextOf(res, deps) : undefined, 'Not found', 'There is no such page.'), 404);
  });
  router.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    const ctx = res.locals.ui ? contextOf(res, deps) : undefined;
    if (err instanceof BadQuery || err instanceof RangeError) {
      sendPage(res, errorPage(ctx, 'Bad search', err.message), 400);
      return;
    }
    const status = typeof err === 'object' && err !== null && 'status' in err ? Number((err as { status: unknown }).status) : 500;
    if (status >= 400 && status < 500) {
      sendPage(res, errorPage(ctx, 'Bad request', status === 413 ? 'The form is too large.' : 'The request could not be read.'), status);
      return;
    }
    log.error('ui.error', { code: err instanceof Error ? err.name : 'unknown' });
    sendPage(res, errorPage(ctx, 'Error', 'Something went wrong on the server; the log has the error code.'), 500);
  });
  return router;
}
