// The Tasks page: what the replies worker left for a person (workers/replies.ts) — SMS that are
// no keyword and no offered answer (the staff inbox), answers from a number several patients
// share, answers about an appointment changed since, cancellations and reschedules to do by
// hand, write-backs the EHR refused or that failed for good. The same list as GET /api/tasks.
//
// A task holds ids and codes only; each links to the patient's and the appointment's timeline,
// the reminder answered and the stored SMS (whose text needs `phi` on the message page).
// Closing one (`operate`) records who closed it, like POST /api/tasks/:id/done.
import type express from 'express';
import { AdminScope } from '../../config/server-schema.ts';
import { StaffTaskStatus, type StaffTask } from '../../store/store.ts';
import { BadQuery, knownQuery, queryString, type AdminCaller } from '../app.ts';
import { action, redirectWithFlash, view, type DashboardDeps } from './dashboard.ts';
import { html, href, segment, type SafeHtml } from './html.ts';
import { badge, csrfField, empty, idLink, page, pager, time, type PageContext } from './layout.ts';

const PAGE_SIZE = 50;
const STATUSES: readonly StaffTaskStatus[] = Object.values(StaffTaskStatus);

/** What each kind asks of a person (no patient data: the kinds are fixed). */
const WHAT: Readonly<Record<StaffTask['kind'], string>> = {
  sms_unmatched: 'An SMS that is neither a keyword nor an offered answer: read it, answer by hand if needed.',
  shared_number: 'An answer from a number several waiting patients share: whose answer is it?',
  stale_answer: 'An answer about an appointment cancelled or moved since the reminder: nothing was written.',
  cancel_requested: 'The patient asked to cancel: no write-back output is configured, cancel it in the EHR.',
  reschedule_requested: 'The patient asked for another time: call them back.',
  write_back_denied: 'The EHR refused the answer as written back: do it by hand.',
  write_back_failed: 'Writing the answer back failed for good: do it by hand.',
  waitlist_booking_failed: 'A patient took a freed slot and booking it failed: the slot was offered on; book it by hand if still wanted.',
  waitlist_cancel_failed: 'A freed slot was booked for a patient, and cancelling their later appointment failed: cancel it in the EHR.',
};

function taskRow(ctx: PageContext, t: StaffTask): SafeHtml {
  const done = t.status === StaffTaskStatus.Done;
  return html`<tr>
<td class="nowrap">${time(ctx, t.createdAt)}</td>
<td>${badge(t.kind)}<div class="muted">${WHAT[t.kind]}</div></td>
<td>${t.code !== undefined ? html`<code>${t.code}</code>` : ''}${t.output !== undefined && html` <span class="muted">via</span> <code>${t.output}</code>`}</td>
<td>${t.patientId !== undefined && html`<div>patient ${idLink(t.patientId, `/ui/patients/${segment(t.patientId)}`)}</div>`}${t.appointmentId !== undefined && html`<div>appointment ${idLink(t.appointmentId, `/ui/appointments/${segment(t.appointmentId)}`)}</div>`}${t.promptId !== undefined && html`<div>reminder ${idLink(t.promptId, `/ui/deliveries/${segment(t.promptId)}`)}</div>`}${t.messageId !== undefined && html`<div>SMS ${idLink(t.messageId, `/ui/messages/${segment(t.messageId)}`)}</div>`}</td>
<td>${done
    ? html`${badge('done')} <span class="muted">${t.doneBy ?? ''}</span> ${time(ctx, t.doneAt)}`
    : ctx.operate
      ? html`<form method="post" action="/ui/tasks/${segment(t.id)}/done">${csrfField(ctx)}<button type="submit">Done</button></form>`
      : html`${badge('open')}`}</td>
</tr>`;
}

export function tasksRoutes(router: express.Router, deps: DashboardDeps): void {
  const { store } = deps;

  router.get(
    '/tasks',
    view(deps, async (req, _res, ctx) => {
      knownQuery(req, ['status', 'before']);
      const status = (queryString(req, 'status') ?? StaffTaskStatus.Open) as StaffTaskStatus;
      if (!STATUSES.includes(status)) throw new BadQuery(`status must be one of ${STATUSES.join(', ')}`);
      const before = queryString(req, 'before');
      const items = await store.listStaffTasks({ status, limit: PAGE_SIZE, ...(before !== undefined ? { before } : {}) });
      const next = items.length === PAGE_SIZE ? href('/ui/tasks', { status, before: items[items.length - 1]!.id }) : undefined;
      const tabs = html`<p class="tabs">${STATUSES.map((s) => (s === status ? html`<strong>${s}</strong> ` : html`<a href="${href('/ui/tasks', { status: s })}">${s}</a> `))}</p>`;
      const table =
        items.length === 0
          ? empty(status === StaffTaskStatus.Open ? 'Nothing waits for staff.' : 'No task was closed yet.')
          : html`<table class="tasks"><thead><tr><th>Opened</th><th>What</th><th>Code</th><th>About</th><th>${status === StaffTaskStatus.Open ? '' : 'Closed'}</th></tr></thead><tbody>${items.map((t) => taskRow(ctx, t))}</tbody></table>`;
      return page(
        ctx,
        { title: 'Tasks', section: '/ui/tasks', subtitle: 'Patients’ SMS answers and write-backs that need a person' },
        html`${tabs}${status === StaffTaskStatus.Open && !ctx.operate && html`<p class="hint">Closing a task needs the <code>operate</code> scope.</p>`}${table}${pager(next)}`,
      );
    }),
  );

  router.post('/tasks/:id/done', action(deps, AdminScope.Operate), async (req, res) => {
    const caller = (res.locals.ui as { caller: AdminCaller }).caller;
    const task = await store.finishStaffTask(String(req.params.id), { at: deps.now().toISOString(), by: caller.name });
    redirectWithFlash(req, res, '/ui/tasks', task === undefined ? { kind: 'error', text: `No staff task ${String(req.params.id)}.` } : { kind: 'notice', text: `Task ${task.id} closed.` });
  });
}
