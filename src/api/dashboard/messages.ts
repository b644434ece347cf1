// The Messages pages: search what arrived (the filters of GET /api/messages), and one message
// laid out — its bytes as segments and fields, its ACK, the triggers it gave, what routing did
// with each (which rules planned, which were skipped and why), the deliveries they became,
// what operators did to it — with the action an engineer takes after fixing a configuration:
// reprocess a rejected message.
import type express from 'express';
import { AdminScope } from '../../config/server-schema.ts';
import type { MessageQuery } from '../../store/store.ts';
import { MessageStatus, type Trigger } from '../../types.ts';
import { BadQuery, deliveriesOfTrigger, knownQuery, queryInstant, queryLimit, queryString, triggerSummary } from '../app.ts';
import { attemptMessage } from '../operations.ts';
import { action, redirectWithFlash, view, type DashboardDeps } from './dashboard.ts';
import { deliveryTable } from './deliveries.ts';
import { html, href, segment, type SafeHtml } from './html.ts';
import { badge, csrfField, empty, facts, needsScope, page, pager, time, type PageContext } from './layout.ts';
import { fhirJson, hl7Table, rawText } from './message-view.ts';

const FILTERS = ['sender', 'controlId', 'messageType', 'status', 'input', 'patientId', 'triggerType', 'since', 'until', 'q', 'before', 'limit'] as const;
const STATUSES = Object.values(MessageStatus) as string[];

function searchForm(ctx: PageContext, q: Record<string, string | undefined>): SafeHtml {
  const field = (name: string, label: string, placeholder = '', cls = '') =>
    html`<label>${label}<input type="text" name="${name}" value="${q[name] ?? ''}" placeholder="${placeholder}"${cls !== '' && html` class="${cls}"`}></label>`;
  return html`<form method="get" action="/ui/messages" class="filters" role="search">
${field('controlId', 'Control id (MSH-10)', 'e.g. DEMO-0001')}
${field('sender', 'Sender (MSH-3^MSH-4)', 'EPIC^NORTHCLINIC')}
${field('messageType', 'Type', 'SIU^S12 or SIU')}
<label>Status<select name="status"><option value="">any</option>${STATUSES.map((s) => html`<option${s === q.status ? html` selected` : ''}>${s}</option>`)}</select></label>
${field('patientId', 'Patient id')}
${field('input', 'Input')}
${field('since', 'Received from', '2026-01-31T08:00:00Z', 'wide')}
${field('until', 'until', '2026-01-31T18:00:00Z', 'wide')}
${ctx.phi ? field('q', 'Text in the message', 'any text (phi)', 'wide') : ''}
<button type="submit">Search</button> <a href="/ui/messages">Clear</a>
</form>`;
}

export function messagesRoutes(router: express.Router, deps: DashboardDeps): void {
  const { store } = deps;

  router.get(
    '/messages',
    view(deps, async (req, res, ctx) => {
      knownQuery(req, FILTERS);
      const q = Object.fromEntries(FILTERS.map((f) => [f, queryString(req, f)])) as Record<(typeof FILTERS)[number], string | undefined>;
      if (q.status !== undefined && !STATUSES.includes(q.status)) throw new BadQuery(`status must be one of ${STATUSES.join(', ')}`);
      if (q.q !== undefined && !ctx.phi) throw new BadQuery('searching the text of messages needs the "phi" scope');
      if (q.q !== undefined && q.q.length > 200) throw new BadQuery('the text searched is at most 200 characters');
      const query: MessageQuery = {
        sender: q.sender,
        controlId: q.controlId,
        messageType: q.messageType,
        status: q.status as MessageStatus | undefined,
        input: q.input,
        patientId: q.patientId,
        triggerType: q.triggerType,
        text: q.q,
        since: queryInstant(req, 'since'),
        until: queryInstant(req, 'until'),
        limit: queryLimit(req) ?? 50,
        before: q.before,
      };
      const items = await store.listMessages(query);
      const next = items.length === query.limit ? href('/ui/messages', { ...q, before: items[items.length - 1]!.id }) : undefined;
      const rows = items.map(
        (m) => html`<tr>
<td class="nowrap">${time(ctx, m.receivedAt)}</td>
<td><code>${m.input}</code></td>
<td><code>${m.sender}</code></td>
<td><code>${m.messageType}</code></td>
<td><a href="/ui/messages/${segment(m.id)}"><code>${m.controlId || '(none)'}</code></a></td>
<td>${badge(m.status)}</td>
<td>${badge(m.ackCode)}</td>
<td>${m.patientId !== undefined ? html`<a href="/ui/patients/${segment(m.patientId)}"><code>${m.patientId}</code></a>` : ''}</td>
<td class="num">${m.triggerIds.length}</td>
<td>${m.reason !== undefined ? html`<code>${m.reason}</code>` : ''}${m.replacedBy !== undefined && html` <span class="muted">→ tried again as</span> <a href="/ui/messages/${segment(m.replacedBy)}">#${m.replacedBy}</a>`}</td>
</tr>`,
      );
      return page(
        ctx,
        { title: 'Messages', section: '/ui/messages', subtitle: `Newest first · times in ${ctx.zone}` },
        html`${searchForm(ctx, q)}
${items.length === 0 ? empty('No message matches.') : html`<div class="table-wrap"><table id="messages"><thead><tr><th>Received</th><th>Input</th><th>Sender</th><th>Type</th><th>Control id</th><th>Status</th><th>ACK</th><th>Patient</th><th class="num">Triggers</th><th>Reason</th></tr></thead><tbody>${rows}</tbody></table></div>`}
${pager(next)}`,
      );
    }),
  );

  router.get(
    '/messages/:id',
    view(deps, async (req, res, ctx) => {
      const m = await store.getMessage(req.params.id as string);
      if (m === undefined) {
        res.status(404);
        return page(ctx, { title: 'Message not found', section: '/ui/messages' }, empty(`No message has id ${req.params.id}.`));
      }
      const [audit, triggers] = await Promise.all([store.listAudit({ target: `message/${m.id}` }), Promise.all(m.triggers.map((t) => triggerSection(deps, ctx, t)))]);
      const canReprocess = m.status === MessageStatus.Rejected && m.replacedBy === undefined && m.format === 'hl7v2';
      return page(
        ctx,
        { title: `Message ${m.controlId || `#${m.id}`}`, section: '/ui/messages', subtitle: html`<code>${m.messageType || 'unknown type'}</code> from <code>${m.sender || 'unknown sender'}</code> · received ${time(ctx, m.receivedAt)}` },
        html`<div class="columns">
<div class="panel">${facts([
          ['Id', html`<code>${m.id}</code>`],
          ['Input', html`<code>${m.input}</code> (${m.format})`],
          ['Control id', html`<code>${m.controlId}</code>`],
          ['Status', html`${badge(m.status)}${m.reason !== undefined && html` <code>${m.reason}</code>`}`],
          ['ACK', badge(m.ackCode)],
          ['Patient', m.patientId !== undefined ? html`<a href="/ui/patients/${segment(m.patientId)}"><code>${m.patientId}</code></a>` : html`<span class="muted">—</span>`],
          ...(m.replaces !== undefined ? ([['Tries again', html`<a href="/ui/messages/${segment(m.replaces)}">message #${m.replaces}</a> (${m.origin ?? 'received'})`]] as const) : []),
          ...(m.replacedBy !== undefined ? ([['Tried again as', html`<a href="/ui/messages/${segment(m.replacedBy)}">message #${m.replacedBy}</a>`]] as const) : []),
          ...(m.rawBytes !== undefined ? ([['Kept', `the first ${m.raw.length} of ${m.rawBytes} bytes (the raw-bytes quota of refused and quarantined messages)`]] as const) : []),
        ])}
${canReprocess && ctx.operate && html`<form method="post" action="/ui/messages/${segment(m.id)}/reprocess" class="actions" data-confirm="Reprocess message ${m.controlId} with today's configuration?">${csrfField(ctx)}<button type="submit">Reprocess</button><span class="hint">tries the stored bytes again with the input's settings as configured now (after a fix); audited</span></form>`}
${canReprocess && !ctx.operate && html`<p class="hint">Reprocessing needs the <code>operate</code> scope.</p>`}
</div>
<div class="panel"><h3>ACK sent</h3><pre class="raw">${m.ack.replace(/\r\n?/g, '\n').trimEnd()}</pre></div>
</div>
<h2>Message</h2>
${!ctx.phi && needsScope('phi', 'The values of this message')}
${m.format === 'hl7v2' ? hl7Table(m.raw, ctx.phi) : fhirJson(m.raw, ctx.phi)}
${ctx.phi && html`<details><summary>As received (text)</summary>${rawText(m.raw.toString('utf8'), true)}</details>`}
<h2>Triggers (${m.triggers.length})</h2>
${m.triggers.length === 0 ? empty(m.status === MessageStatus.Accepted ? 'This message gave no trigger.' : `No trigger: the message is ${m.status}.`) : triggers}
<h2>Audit</h2>
${audit.length === 0 ? empty('Nobody acted on this message.') : html`<table><thead><tr><th>When</th><th>Who</th><th>Action</th><th>Outcome</th><th>Result</th></tr></thead><tbody>${audit.map((a) => html`<tr><td>${time(ctx, a.at)}</td><td>${a.actor}</td><td><code>${a.action}</code></td><td><code>${a.outcome}</code></td><td>${a.result !== undefined ? html`<a href="/ui/messages/${segment(a.result.replace(/^message\//, ''))}">${a.result}</a>` : ''}</td></tr>`)}</tbody></table>`}`,
      );
    }),
  );

  router.post('/messages/:id/reprocess', action(deps, AdminScope.Operate), async (req, res) => {
    const id = req.params.id as string;
    const caller = (res.locals.ui as { caller: Parameters<typeof attemptMessage>[3] }).caller;
    const outcome = await attemptMessage(deps.operations, 'reprocess', id, caller);
    if (outcome.kind === 'stored') {
      const created = outcome.message;
      redirectWithFlash(req, res, `/ui/messages/${segment(created.id)}`, {
        kind: created.status === MessageStatus.Rejected ? 'error' : 'notice',
        text: `Reprocessed message #${id} as message #${created.id}: ${created.status}, ACK ${created.ackCode}${created.reason !== undefined ? ` (${created.reason})` : ''}.`,
      });
      return;
    }
    redirectWithFlash(req, res, `/ui/messages/${segment(id)}`, {
      kind: 'error',
      text: outcome.kind === 'refused' ? `Not reprocessed: ${outcome.detail}` : 'Not reprocessed: the store could not commit the attempt; try again later.',
    });
  });
}

/** One trigger: what it is about, what routing did with it rule by rule, and its deliveries. */
async function triggerSection(deps: DashboardDeps, ctx: PageContext, t: Trigger): Promise<SafeHtml> {
  const [explanation, deliveries] = await Promise.all([deps.store.getRoutingExplanation(t.id), deliveriesOfTrigger(deps.store, t)]);
  const summary = triggerSummary(t);
  return html`<div class="panel" data-trigger="${t.id}">
<h3>${badge(t.type)} <code>${t.id}</code></h3>
${facts([
    ['Occurred', time(ctx, t.occurredAt)],
    // slot.freed is about no patient (time freed on a schedule).
    ['Patient', summary.patientId !== undefined ? html`<a href="/ui/patients/${segment(summary.patientId)}"><code>${summary.patientId}</code></a>` : '—'],
    ...(summary.appointmentId !== undefined ? ([['Appointment', html`<a href="/ui/appointments/${segment(summary.appointmentId)}"><code>${summary.appointmentId}</code></a>`]] as const) : []),
    ...(summary.encounterId !== undefined ? ([['Encounter', html`<code>${summary.encounterId}</code>`]] as const) : []),
  ])}
${ctx.phi ? html`<details><summary>The whole trigger (patient content)</summary><pre class="raw">${JSON.stringify(t, null, 2)}</pre></details>` : ''}
<h3>Routing</h3>
${
  explanation === undefined
    ? empty('Not routed yet, or routed before routing explanations were kept.')
    : explanation.rules.length === 0
      ? empty(`Routed ${time(ctx, explanation.routedAt)}: no rule names ${t.type}.`)
      : html`<table class="routing"><thead><tr><th>Rule</th><th>Outcome</th><th>Why</th><th>Delivery</th></tr></thead><tbody>${explanation.rules.map(
          (r) => html`<tr><td><code>${r.rule}</code></td><td>${badge(r.outcome)}</td><td>${r.reason !== undefined ? html`<code>${r.reason}</code>` : html`<span class="muted">matched</span>`}${r.condition !== undefined && html` — <code>${r.condition}</code> did not hold`}</td><td>${r.deliveryId !== undefined ? html`<a href="/ui/deliveries/${segment(r.deliveryId)}"><code>${r.deliveryId}</code></a>` : ''}</td></tr>`,
        )}</tbody></table>`
}
<h3>Deliveries it planned or last moved</h3>
${deliveries.length === 0 ? empty('None.') : deliveryTable(ctx, deliveries, { select: false })}
</div>`;
}

