// The Deliveries pages: dead letters (failed: a permanent failure, or attempts used up) and
// review items (an ambiguous failure of an output that cannot dedupe: the message may have
// gone out, so a person decides), each with its last error; one delivery with every decision,
// receipt and queue attempt; and replay — of one, of those ticked, or of every dead letter of
// a rule.
import type express from 'express';
import { AdminScope } from '../../config/server-schema.ts';
import { STORED_DELIVERY_STATUSES, type DeliveryQuery, type StoredDelivery } from '../../store/store.ts';
import { deliveryJobId, parseDeliveryJobId } from '../../workers/router.ts';
import { BadQuery, knownQuery, queryString, type AdminCaller } from '../app.ts';
import { action, redirectWithFlash, view, type DashboardDeps } from './dashboard.ts';
import { QUEUE_SCAN, type QueueReader } from './flows.ts';
import { html, href, segment, type SafeHtml } from './html.ts';
import { badge, count, csrfField, empty, facts, needsScope, page, pager, time, type PageContext } from './layout.ts';

/** What to replay: deliveries by id, or every dead letter (or review item) matching a filter. */
export type ReplayRequest =
  | { ids: readonly string[] }
  | { filter: { status: 'failed' | 'review'; rule?: string } };

export interface ReplayResult {
  /** Deliveries queued again. */
  replayed: string[];
  /** Deliveries not replayed, with why (not failed nor waiting for review, unknown…). */
  refused: Array<{ id: string; reason: string }>;
}

/** Replays deliveries for a caller (audited by the service with the caller's name). */
export type ReplayService = (request: ReplayRequest, caller: AdminCaller) => Promise<ReplayResult>;

/** Most deliveries one replay request may name or match. */
export const REPLAY_MAX = 1000;

/** The views of the list: statuses, plus `review` (waiting for a person) and `all`. */
const VIEWS = ['failed', 'review', 'pending', 'sent', 'suppressed', 'cancelled', 'all'] as const;
type ListView = (typeof VIEWS)[number];
const PAGE_SIZE = 50;

/**
 * Deliveries waiting for review: those whose queue job is parked (an ambiguous failure of an
 * output that cannot dedupe), newest parked last as the queue lists them.
 */
export async function reviewItems(deps: Pick<DashboardDeps, 'store'> & { queue?: QueueReader }, limit: number): Promise<StoredDelivery[]> {
  if (deps.queue === undefined) return [];
  const jobs = await deps.queue.list({ state: 'parked', limit });
  const found = await Promise.all(jobs.map((j) => parseDeliveryJobId(j.id)).map((ref) => (ref ? deps.store.getDelivery(ref.deliveryId) : undefined)));
  // `review` where the engine records it (workers/deliver.ts recordDeadDeliveries), else still pending.
  return found.filter((d): d is StoredDelivery => d !== undefined && (d.status === 'review' || d.status === 'pending'));
}

/** The queue job of a delivery's current generation. */
function jobOf(deps: { queue?: QueueReader }, d: StoredDelivery) {
  return deps.queue?.get(deliveryJobId(d.delivery.id, d.generation));
}

export interface DeliveryTableOptions {
  /** Tick boxes for a replay of the ticked ones. */
  select: boolean;
  /** The last error of each, by delivery id (queue job). */
  lastErrors?: ReadonlyMap<string, string>;
}

/** Deliveries as a table: what, for whom, where, and what became of it. */
export function deliveryTable(ctx: PageContext, items: readonly StoredDelivery[], options: DeliveryTableOptions): SafeHtml {
  return html`<div class="table-wrap"><table class="deliveries"><thead><tr>${options.select && html`<th><input type="checkbox" data-select-all="ids" aria-label="select all"></th>`}<th>Updated</th><th>Delivery</th><th>Rule</th><th>Output</th><th>Patient</th><th>Status</th><th>Reason / last error</th><th>Due</th></tr></thead><tbody>${items.map((d) => {
    const x = d.delivery;
    const lastError = options.lastErrors?.get(x.id);
    return html`<tr data-delivery="${x.id}">
${options.select && html`<td><input type="checkbox" name="ids" value="${x.id}" aria-label="select ${x.id}"></td>`}
<td class="nowrap">${time(ctx, d.updatedAt)}</td>
<td><a href="/ui/deliveries/${segment(x.id)}"><code>${x.id}</code></a></td>
<td><code>${x.ruleId}</code>${x.variant !== undefined && html` <span class="muted">/ ${x.variant}</span>`}</td>
<td><code>${x.output}</code> <span class="muted">${x.channel}</span></td>
<td><a href="/ui/patients/${segment(x.patientId)}"><code>${x.patientId}</code></a></td>
<td>${badge(d.status)}</td>
<td>${d.reason !== undefined ? html`<code>${d.reason}</code>` : ''}${lastError !== undefined && (lastError.startsWith('(') ? html` <span class="muted">${lastError}</span>` : html` <span class="muted">last error</span> <code>${lastError}</code>`)}</td>
<td class="nowrap">${time(ctx, x.dueAt)}</td>
</tr>`;
  })}</tbody></table></div>`;
}

function tabs(current: ListView, query: Record<string, string | undefined>): SafeHtml {
  const label: Record<ListView, string> = { failed: 'Dead letters', review: 'Review', pending: 'Pending', sent: 'Sent', suppressed: 'Suppressed', cancelled: 'Cancelled', all: 'All' };
  return html`<p class="actions">${VIEWS.map((v) => (v === current ? html`<strong>${label[v]}</strong>` : html`<a href="${href('/ui/deliveries', { ...query, status: v, before: undefined })}">${label[v]}</a>`))}</p>`;
}

export function deliveriesRoutes(router: express.Router, deps: DashboardDeps): void {
  const { store } = deps;

  router.get(
    '/deliveries',
    view(deps, async (req, _res, ctx) => {
      knownQuery(req, ['status', 'rule', 'patientId', 'before']);
      const status = (queryString(req, 'status') ?? 'failed') as ListView;
      if (!VIEWS.includes(status)) throw new BadQuery(`status must be one of ${VIEWS.join(', ')}`);
      const rule = queryString(req, 'rule');
      const patientId = queryString(req, 'patientId');
      const before = queryString(req, 'before');
      let items: StoredDelivery[];
      let next: string | undefined;
      if (status === 'review' && !(STORED_DELIVERY_STATUSES as readonly string[]).includes('review')) {
        items = (await reviewItems(deps, QUEUE_SCAN)).filter((d) => (rule === undefined || d.delivery.ruleId === rule) && (patientId === undefined || d.delivery.patientId === patientId));
      } else {
        const query: DeliveryQuery = { ...(status !== 'all' ? { status: status as DeliveryQuery['status'] } : {}), ruleId: rule, patientId, limit: PAGE_SIZE, before };
        items = await store.listDeliveries(query);
        if (items.length === PAGE_SIZE) next = href('/ui/deliveries', { status, rule, patientId, before: items[items.length - 1]!.delivery.id });
      }
      const lastErrors = new Map<string, string>();
      if (status === 'failed' || status === 'review') {
        const jobs = await Promise.all(items.map((d) => jobOf(deps, d)));
        jobs.forEach((job, i) => job?.lastError && lastErrors.set(items[i]!.delivery.id, job.lastError.code === items[i]!.reason ? `(${job.lastError.failureClass})` : `${job.lastError.failureClass} ${job.lastError.code}`));
      }
      const replayable = (status === 'failed' || status === 'review') && items.length > 0;
      const canReplay = replayable && ctx.operate && deps.replay !== undefined;
      const totals = await store.countDeliveries();
      const filterForm = html`<form method="get" action="/ui/deliveries" class="filters">
<input type="hidden" name="status" value="${status}">
<label>Rule<input type="text" name="rule" value="${rule ?? ''}"></label>
<label>Patient id<input type="text" name="patientId" value="${patientId ?? ''}"></label>
<button type="submit">Filter</button> <a href="${href('/ui/deliveries', { status })}">Clear</a>
</form>`;
      const table = items.length === 0 ? empty(status === 'failed' ? 'No dead letters.' : status === 'review' ? 'Nothing waits for review.' : 'No delivery matches.') : deliveryTable(ctx, items, { select: canReplay, lastErrors });
      const body = canReplay
        ? html`<form method="post" action="/ui/deliveries/replay" data-confirm="Replay the ticked deliveries? Each goes through the send-time checks again.">
${csrfField(ctx)}<input type="hidden" name="back" value="${href('/ui/deliveries', { status, rule, patientId })}">
<p class="actions"><button type="submit" name="mode" value="ids">Replay ticked</button>
<button type="submit" name="mode" value="filter" class="secondary">Replay every ${status === 'failed' ? 'dead letter' : 'review item'}${rule !== undefined ? ` of rule ${rule}` : ''} (up to ${count(REPLAY_MAX)})</button>
<input type="hidden" name="status" value="${status}">${rule !== undefined && html`<input type="hidden" name="rule" value="${rule}">`}
<span class="hint">a replayed delivery is checked again (still current, consent, caps) before it is sent</span></p>
${table}</form>`
        : html`${replayable && !ctx.operate && html`<p class="hint">Replaying needs the <code>operate</code> scope.</p>`}${replayable && ctx.operate && deps.replay === undefined && html`<p class="masked-note">Replay is not available in this version.</p>`}${table}`;
      return page(
        ctx,
        {
          title: 'Deliveries',
          section: '/ui/deliveries',
          subtitle: html`${count(totals.failed)} dead letters · ${count(totals.pending)} pending · ${count(totals.sent)} sent · ${count(totals.suppressed)} suppressed · ${count(totals.cancelled)} cancelled`,
        },
        html`${tabs(status, { rule, patientId })}${filterForm}${body}${status !== 'review' && pager(next)}`,
      );
    }),
  );

  router.get(
    '/deliveries/:id',
    view(deps, async (req, res, ctx) => {
      const d = await store.getDelivery(req.params.id as string);
      if (d === undefined) {
        res.status(404);
        return page(ctx, { title: 'Delivery not found', section: '/ui/deliveries' }, empty(`No delivery has id ${req.params.id}.`));
      }
      const x = d.delivery;
      const [decisions, receipts, job, messageId, outbox] = await Promise.all([
        store.listDecisions({ deliveryId: x.id }),
        store.listDeliveryReceipts({ deliveryId: x.id }),
        jobOf(deps, d),
        store.messageOfTrigger(x.triggerId),
        ctx.phi ? store.listOutbox({ deliveryId: x.id, limit: 1 }) : Promise.resolve([]),
      ]);
      const replayable = d.status === 'failed' || job?.state === 'parked' || (d.status as string) === 'review';
      const subject = x.subjectKind === 'appointment' ? html`<a href="/ui/appointments/${segment(x.subjectId)}"><code>${x.subjectKey}</code></a>` : html`<code>${x.subjectKey}</code>`;
      const sent = d.message ?? outbox[0];
      return page(
        ctx,
        { title: `Delivery ${x.id}`, section: '/ui/deliveries', subtitle: html`${badge(d.status)}${d.reason !== undefined && html` <code>${d.reason}</code>`} · rule <code>${x.ruleId}</code> through <code>${x.output}</code>` },
        html`${replayable && ctx.operate && deps.replay !== undefined && html`<form method="post" action="/ui/deliveries/replay" class="actions" data-confirm="Replay this delivery? It goes through the send-time checks again.">${csrfField(ctx)}<input type="hidden" name="mode" value="ids"><input type="hidden" name="ids" value="${x.id}"><input type="hidden" name="back" value="/ui/deliveries/${segment(x.id)}"><button type="submit">Replay</button><span class="hint">${job?.state === 'parked' ? 'the output may have taken it already: check with the provider before replaying' : 'queued again now, checked again before it is sent'}</span></form>`}
<div class="columns">
<div class="panel">${facts([
          ['Rule', html`<a href="${href('/ui/rules', {})}#rule-${x.ruleId}"><code>${x.ruleId}</code></a>${x.variant !== undefined && html` variant <code>${x.variant}</code>`} · step ${x.step}`],
          ['Purpose · channel', `${x.purpose} · ${x.channel}`],
          ['Output', html`<code>${x.output}</code>`],
          ['Patient', html`<a href="/ui/patients/${segment(x.patientId)}"><code>${x.patientId}</code></a>`],
          ['About', subject],
          ['Trigger', html`<code>${x.triggerType}</code> <code>${x.triggerId}</code>${messageId !== undefined && html` · <a href="/ui/messages/${segment(messageId)}">message #${messageId}</a>`}`],
          ['Planned for', time(ctx, x.plannedAt)],
          ['Due', time(ctx, x.dueAt)],
          ...(x.expiresAt !== undefined ? ([['Expires', time(ctx, x.expiresAt)]] as const) : []),
          ['Planned · last change', html`${time(ctx, d.createdAt)} · ${time(ctx, d.updatedAt)}${d.cause !== undefined && html` (${d.cause.change}${d.cause.reason !== undefined ? `: ${d.cause.reason}` : ''} by <code>${d.cause.triggerId}</code>)`}`],
          ['Generation', String(d.generation)],
          ...(d.providerId !== undefined ? ([['Provider id', html`<code>${d.providerId}</code>`]] as const) : []),
        ])}</div>
<div class="panel"><h3>Queue job</h3>${
          job === undefined
            ? empty('No job of its current generation in the queue.')
            : facts([
                ['Job', html`<code>${job.id}</code>`],
                ['State', badge(job.state)],
                ['Attempts', `${job.attempts} of ${job.maxAttempts}${job.idempotent ? ' (the output dedupes: retried after an ambiguous failure)' : ''}`],
                ['Runs at', time(ctx, job.runAt)],
                ['Last error', job.lastError ? html`<code>${job.lastError.failureClass}</code> <code>${job.lastError.code}</code>` : html`<span class="muted">none</span>`],
                ...(job.cancelReason !== undefined ? ([['Cancelled', html`<code>${job.cancelReason}</code>`]] as const) : []),
              ])
        }</div>
</div>
<h2>Send-time decisions (${decisions.length})</h2>
${decisions.length === 0 ? empty('No check has run yet.') : decisionTable(ctx, decisions)}
<h2>Receipts (${receipts.length})</h2>
${receipts.length === 0 ? empty('No receipt: the provider has said nothing about it (or the output keeps none).') : html`<table><thead><tr><th>When</th><th>Status</th><th>Provider id</th><th>Code</th><th>Attempt</th></tr></thead><tbody>${receipts.map((r) => html`<tr><td>${time(ctx, r.at)}</td><td>${badge(r.status)}</td><td><code>${r.providerId ?? ''}</code></td><td><code>${r.code ?? ''}</code></td><td>${r.attempt ?? ''}</td></tr>`)}</tbody></table>`}
<h2>What was sent</h2>
${!ctx.phi ? needsScope('phi', 'The address, fields and text') : sent === undefined ? empty('Nothing was sent.') : html`<div class="panel">${facts([['To', sent.to ?? '—'], ['Language', sent.language], ...(sent.subject !== undefined ? ([['Subject', sent.subject]] as const) : [])])}<pre class="raw">${sent.text}</pre></div>`}
${ctx.phi && html`<details><summary>Fields the rule sends (payload) and address</summary><pre class="raw">${JSON.stringify({ to: x.to, payload: x.payload }, null, 2)}</pre></details>`}`,
      );
    }),
  );

  router.post('/deliveries/replay', action(deps, AdminScope.Operate), async (req, res) => {
    const body = req.body as Record<string, unknown>;
    const back = typeof body.back === 'string' && body.back.startsWith('/ui/') ? body.back : '/ui/deliveries';
    if (deps.replay === undefined) {
      redirectWithFlash(req, res, back, { kind: 'error', text: 'Replay is not available in this version.' });
      return;
    }
    let request: ReplayRequest;
    if (body.mode === 'filter') {
      const status = body.status === 'review' ? 'review' : body.status === 'failed' ? 'failed' : undefined;
      if (status === undefined) {
        redirectWithFlash(req, res, back, { kind: 'error', text: 'A replay by filter is of dead letters or review items.' });
        return;
      }
      request = { filter: { status, ...(typeof body.rule === 'string' && body.rule !== '' ? { rule: body.rule } : {}) } };
    } else {
      const ids = (Array.isArray(body.ids) ? body.ids : body.ids === undefined ? [] : [body.ids]).filter((v): v is string => typeof v === 'string' && v !== '');
      if (ids.length === 0) {
        redirectWithFlash(req, res, back, { kind: 'error', text: 'Tick the deliveries to replay first.' });
        return;
      }
      if (ids.length > REPLAY_MAX) {
        redirectWithFlash(req, res, back, { kind: 'error', text: `At most ${REPLAY_MAX} deliveries at once.` });
        return;
      }
      request = { ids };
    }
    const caller = (res.locals.ui as { caller: AdminCaller }).caller;
    const result = await deps.replay(request, caller);
    const refused = result.refused.length === 0 ? '' : ` Not replayed: ${result.refused.slice(0, 5).map((r) => `${r.id} (${r.reason})`).join(', ')}${result.refused.length > 5 ? ` and ${result.refused.length - 5} more` : ''}.`;
    redirectWithFlash(req, res, back, {
      kind: result.replayed.length === 0 ? 'error' : 'notice',
      text: `Replayed ${result.replayed.length} deliver${result.replayed.length === 1 ? 'y' : 'ies'}.${refused}`,
    });
  });
}

/** Send-time decisions: result, the rule of docs/consent.md that decided, why, and the records used. */
export function decisionTable(ctx: PageContext, decisions: ReadonlyArray<import('../../store/store.ts').DecisionRecord>, showDelivery = false): SafeHtml {
  return html`<table class="decisions"><thead><tr><th>When</th>${showDelivery && html`<th>Delivery</th>`}<th>Result</th><th>Reason</th><th>Basis</th><th>Records used</th></tr></thead><tbody>${decisions.map(
    (c) => html`<tr><td class="nowrap">${time(ctx, c.at)}</td>${showDelivery && html`<td><a href="/ui/deliveries/${segment(c.deliveryId)}"><code>${c.deliveryId}</code></a></td>`}<td>${badge(c.result)}</td><td>${c.reason !== undefined ? html`<code>${c.reason}</code>` : ''}${c.checkRule !== undefined && html` <span class="muted">rule ${c.checkRule}</span>`}${c.retryAt !== undefined && html` <span class="muted">until</span> ${time(ctx, c.retryAt)}`}</td><td>${c.basis}</td><td>${c.records.length === 0 ? html`<span class="muted">none</span>` : c.records.map((r) => html`<code>${r}</code> `)}</td></tr>`,
  )}</tbody></table>`;
}
