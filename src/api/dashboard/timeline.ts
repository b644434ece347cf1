// The Timeline pages: everything CareRelay did about one patient (with every id merged with
// theirs) or one appointment, in time order — each trigger, each delivery planned, each
// send-time decision (why it was allowed, why suppressed, which consent record decided),
// each send and each provider receipt, and the consent ledger's entries — so "what was this
// patient sent, and why not that" has one answer.
//
// Scopes follow the admin API: triggers, deliveries and decisions are ids, codes and times
// (`read`, as GET /api/deliveries/:id gives them); the consent ledger of a patient is patient
// content (`phi`, as GET /api/patients/:id/consent), shown only with it.
import type express from 'express';
import type { ConsentEvent, DeliveryReceipt, Trigger } from '../../types.ts';
import type { DecisionRecord, StoredDelivery } from '../../store/store.ts';
import { view, type DashboardDeps } from './dashboard.ts';
import { html, href, segment, type SafeHtml } from './html.ts';
import { badge, empty, facts, needsScope, page, time, timeText, tone, type PageContext } from './layout.ts';

/** How much of each kind a timeline reads (newest first in the store, shown oldest first). */
const TIMELINE_LIMIT = 200;
/** Deliveries whose receipts are read. */
const RECEIPTS_OF = 100;

interface TimelineEvent {
  at: string;
  /** Tone of its dot: ok, warn, bad, info, muted. */
  tone: string;
  what: SafeHtml;
  why?: SafeHtml;
  /** Order among events at the same instant (trigger before planned before decision before end). */
  rank: number;
}

function triggerEvent(ctx: PageContext, t: Trigger): TimelineEvent {
  const source = t.source;
  // Placed when CareRelay received it (what it did next follows); the event's own time is shown.
  return {
    at: t.receivedAt,
    tone: 'info',
    rank: 0,
    what: html`<span class="what">${t.type}</span> <code>${t.id.slice(0, 12)}…</code>`,
    why: html`occurred ${timeText(ctx, t.occurredAt)} · from <a href="${href('/ui/messages', { controlId: source.messageId, sender: source.sender })}"><code>${source.messageType}</code> <code>${source.messageId}</code></a> of <code>${source.sender}</code>${t.appointment?.id !== undefined && html` · appointment <a href="/ui/appointments/${segment(t.appointment.id)}"><code>${t.appointment.id}</code></a>`}`,
  };
}

function deliveryEvents(ctx: PageContext, d: StoredDelivery): TimelineEvent[] {
  const x = d.delivery;
  const link = html`<a href="/ui/deliveries/${segment(x.id)}"><code>${x.id}</code></a>`;
  const events: TimelineEvent[] = [
    {
      at: d.createdAt,
      tone: 'muted',
      rank: 1,
      what: html`<span class="what">planned</span> ${link}`,
      why: html`rule <code>${x.ruleId}</code>${x.variant !== undefined && html` variant <code>${x.variant}</code>`} · ${x.purpose} by ${x.channel} through <code>${x.output}</code> · due ${timeText(ctx, x.dueAt)}`,
    },
  ];
  if (d.status !== 'pending') {
    const cause = d.cause !== undefined && d.cause.triggerId !== x.triggerId ? html` by trigger <code>${d.cause.triggerId}</code>` : '';
    events.push({
      at: d.updatedAt,
      tone: tone(d.status),
      rank: 3,
      what: html`<span class="what">${d.status}</span> ${link}`,
      why: html`${d.reason !== undefined && html`reason <code>${d.reason}</code>`}${d.providerId !== undefined && html` provider id <code>${d.providerId}</code>`}${cause}`,
    });
  }
  return events;
}

function decisionEvent(ctx: PageContext, c: DecisionRecord): TimelineEvent {
  return {
    at: c.at,
    tone: c.result === 'allow' ? 'ok' : c.result === 'deny' ? 'warn' : 'info',
    rank: 2,
    what: html`<span class="what">decision: ${c.result === 'allow' ? 'allowed' : c.result === 'deny' ? 'suppressed' : 'moved'}</span> <a href="/ui/deliveries/${segment(c.deliveryId)}"><code>${c.deliveryId}</code></a>${c.reason !== undefined && html` ${badge(c.reason)}`}`,
    why: html`${c.basis}${c.checkRule !== undefined && html` <span class="muted">(docs/consent.md rule ${c.checkRule})</span>`}${c.records.length > 0 && html` · record${c.records.length > 1 ? 's' : ''} ${c.records.map((r) => html`<code>${r}</code> `)}`}${c.retryAt !== undefined && html` · tried again at ${timeText(ctx, c.retryAt)}`}`,
  };
}

function receiptEvent(r: DeliveryReceipt): TimelineEvent {
  return {
    at: r.at,
    tone: tone(r.status),
    rank: 4,
    what: html`<span class="what">receipt: ${r.status}</span> <a href="/ui/deliveries/${segment(r.deliveryId)}"><code>${r.deliveryId}</code></a>`,
    why: html`<code>${r.output}</code>${r.providerId !== undefined && html` provider id <code>${r.providerId}</code>`}${r.code !== undefined && html` code <code>${r.code}</code>`}`,
  };
}

function consentEvent(e: ConsentEvent): TimelineEvent {
  return {
    at: e.at,
    tone: e.action === 'grant' || e.action === 'opt_in' || e.action === 'contact_allowed' ? 'ok' : 'warn',
    rank: 0,
    what: html`<span class="what">consent: ${e.action}</span> record <code>${e.id}</code>`,
    why: html`${e.purposes.length === 0 ? 'every purpose' : e.purposes.join(', ')} · ${e.channel ?? 'every channel'} · from ${e.source} (${e.method})${e.address !== undefined && html` · address ${e.address}`}`,
  };
}

/** Events in time order; at the same instant, in the order they happen (rank). The sort is stable. */
function timeline(ctx: PageContext, events: TimelineEvent[]): SafeHtml {
  if (events.length === 0) return empty('Nothing recorded.');
  events.sort((a, b) => Date.parse(a.at) - Date.parse(b.at) || a.rank - b.rank);
  return html`<ol class="timeline">${events.map((e) => html`<li class="${e.tone}"><span class="when">${time(ctx, e.at)}</span>${e.what}${e.why !== undefined && html`<span class="why">${e.why}</span>`}</li>`)}</ol>`;
}

async function receiptsOf(deps: DashboardDeps, deliveries: readonly StoredDelivery[]): Promise<TimelineEvent[]> {
  const sent = deliveries.filter((d) => d.status !== 'pending' && d.status !== 'cancelled').slice(0, RECEIPTS_OF);
  return (await Promise.all(sent.map((d) => deps.store.listDeliveryReceipts({ deliveryId: d.delivery.id })))).flat().map(receiptEvent);
}

function lookupForm(action: string, label: string, value = ''): SafeHtml {
  return html`<form method="get" action="${action}" class="filters"><label>${label}<input type="text" name="id" value="${value}" required></label><button type="submit">Show timeline</button></form>`;
}

export function timelineRoutes(router: express.Router, deps: DashboardDeps): void {
  const { store } = deps;

  router.get(
    '/patients',
    view(deps, async (req, res, ctx) => {
      const id = typeof req.query.id === 'string' ? req.query.id.trim() : '';
      if (id !== '') {
        res.redirect(303, `/ui/patients/${segment(id)}`);
        return undefined;
      }
      const appointment = typeof req.query.appointment === 'string' ? req.query.appointment.trim() : '';
      if (appointment !== '') {
        res.redirect(303, `/ui/appointments/${segment(appointment)}`);
        return undefined;
      }
      return page(
        ctx,
        { title: 'Timeline', section: '/ui/patients' },
        html`${lookupForm('/ui/patients', 'Patient id')}<form method="get" action="/ui/patients" class="filters"><label>Appointment id<input type="text" name="appointment" required></label><button type="submit">Show timeline</button></form>`,
      );
    }),
  );

  router.get(
    '/patients/:id',
    view(deps, async (req, _res, ctx) => {
      const id = req.params.id as string;
      const group = await store.mergedGroup(id);
      const [triggers, deliveries, decisions, facts_, records, erasures] = await Promise.all([
        Promise.all(group.map((p) => store.listTriggers({ patientId: p, limit: TIMELINE_LIMIT }))).then((l) => l.flat()),
        Promise.all(group.map((p) => store.listDeliveries({ patientId: p, limit: TIMELINE_LIMIT }))).then((l) => l.flat()),
        Promise.all(group.map((p) => store.listDecisions({ patientId: p, limit: TIMELINE_LIMIT }))).then((l) => l.flat()),
        store.patientFacts(group),
        ctx.phi ? store.consentRecords({ patientIds: group }) : undefined,
        store.listErasures(id),
      ]);
      // The store lists newest first; reversed, events at the same instant keep the order they happened in.
      const events = [
        ...triggers.reverse().map((t) => triggerEvent(ctx, t)),
        ...deliveries.reverse().flatMap((d) => deliveryEvents(ctx, d)),
        ...decisions.reverse().map((c) => decisionEvent(ctx, c)),
        ...(await receiptsOf(deps, deliveries)),
        ...(records?.events ?? []).map(consentEvent),
        ...erasures.map((e) => ({ at: e.at, tone: 'bad', rank: 5, what: html`<span class="what">erased</span>`, why: html`${e.cancelled.length} pending deliveries suppressed <code>erased</code>` })),
      ];
      const deceased = facts_.some((f) => f.deceased);
      const capped = [triggers, deliveries, decisions].some((l) => l.length >= TIMELINE_LIMIT * group.length);
      return page(
        ctx,
        {
          title: `Patient ${id}`,
          section: '/ui/patients',
          subtitle: html`Oldest first · times in ${ctx.zone}${group.length > 1 && html` · with merged ids ${group.slice(1).map((g) => html`<code>${g}</code> `)}`}`,
        },
        html`${lookupForm('/ui/patients', 'Patient id', id)}
<div class="panel">${facts([
          ['Known', facts_.length > 0 ? 'yes' : html`<span class="muted">no trigger named this patient</span>`],
          ['Deceased', deceased ? html`<span class="alert-text">yes</span>` : 'no'],
          ['Triggers · deliveries · decisions', `${triggers.length} · ${deliveries.length} · ${decisions.length}${capped ? ` (the newest ${TIMELINE_LIMIT} of each)` : ''}`],
          ['Messages', html`<a href="${href('/ui/messages', { patientId: id })}">messages about this patient</a>`],
        ])}</div>
${!ctx.phi && needsScope('phi', "The patient's consent ledger (opt-outs, grants, revocations)")}
${timeline(ctx, events)}`,
      );
    }),
  );

  router.get(
    '/appointments/:id',
    view(deps, async (req, _res, ctx) => {
      const id = req.params.id as string;
      // The subject key as route.ts subjectOf builds it (as GET /api/deliveries?appointmentId= does).
      const subjectKey = `appointment/${encodeURIComponent(id)}`;
      const [triggers, deliveries, state] = await Promise.all([
        store.listTriggers({ appointmentId: id, limit: TIMELINE_LIMIT }),
        store.listDeliveries({ subjectKey, limit: TIMELINE_LIMIT }),
        store.getSubjectState('appointment', id),
      ]);
      const decisions = (await Promise.all(deliveries.map((d) => store.listDecisions({ deliveryId: d.delivery.id })))).flat();
      const events = [...triggers.reverse().map((t) => triggerEvent(ctx, t)), ...deliveries.reverse().flatMap((d) => deliveryEvents(ctx, d)), ...decisions.reverse().map((c) => decisionEvent(ctx, c)), ...(await receiptsOf(deps, deliveries))];
      const patientId = state?.patientId ?? triggers[0]?.patient?.id;
      return page(
        ctx,
        { title: `Appointment ${id}`, section: '/ui/patients', subtitle: `Oldest first · times in ${ctx.zone}` },
        html`<div class="panel">${facts([
          ['Patient', patientId !== undefined ? html`<a href="/ui/patients/${segment(patientId)}"><code>${patientId}</code></a>` : html`<span class="muted">unknown</span>`],
          ['Status', state?.status !== undefined ? badge(state.status) : html`<span class="muted">unknown</span>`],
          ['Start', time(ctx, state?.start)],
          ['State as of', time(ctx, state?.asOf)],
        ])}</div>
${timeline(ctx, events)}`,
      );
    }),
  );
}
