// The Flows page: every input and output, what it is doing now and in the last hour, and the
// delivery queue's backlog — the first page an engineer opens when a feed goes quiet.
//
// Rates and codes come from the store's per-minute counts (Store.flowActivity: inputs by ACK
// code, outputs by delivery end), totals per output from its tallies (Store.deliveryTallies),
// the queue's backlog from its due-time index (at most QUEUE_SCAN jobs read per state).
import type express from 'express';
import type { JobInfo, JobState, ListFilter } from '../../queue/queue.ts';
import { FLOW_ACTIVITY_MINUTES, type DeliveryTally, type FlowActivity } from '../../store/store.ts';
import type { DashboardDeps } from './dashboard.ts';
import { view } from './dashboard.ts';
import { html, href, segment, trusted, type SafeHtml } from './html.ts';
import { parseDeliveryJobId } from '../../workers/router.ts';
import { ago, badge, count, duration, empty, isErrorAck, page, time, type PageContext } from './layout.ts';

/** An input or output as the running process knows it. */
export interface FlowInfo {
  name: string;
  type: string;
  /** Inputs: whether it takes traffic now (an MLLP listener bound, an HTTP endpoint served, a poller running). */
  listening?: boolean;
  /** A short state line: "127.0.0.1:2575 · 3 connections", "POST /ingest/hl7v2/ehr-http", "polls every 60 s". */
  detail?: string;
  /** Outputs: the channel it carries. */
  channel?: string;
}

export interface FlowsInfo {
  inputs: readonly FlowInfo[];
  outputs: readonly FlowInfo[];
}

/** The queue operations the dashboard reads (Queue.list, Queue.get). */
export interface QueueReader {
  list(filter?: ListFilter): Promise<JobInfo<unknown>[]>;
  get(id: string): Promise<JobInfo<unknown> | undefined>;
}

/** Jobs read per state to count a backlog: past it the page says "1,000+". */
export const QUEUE_SCAN = 1000;

/** The delivery queue's backlog and what waits for a person. */
export interface QueueView {
  /** Pending jobs whose time has come (counted up to QUEUE_SCAN). */
  due: number;
  /** The oldest of them. */
  oldestDue?: JobInfo<unknown>;
  /** The next job not due yet. */
  next?: JobInfo<unknown>;
  /** Parked (an ambiguous failure waiting for a person) and dead jobs (counted up to QUEUE_SCAN). */
  parked: number;
  dead: number;
}

/** The queue's backlog, read through its due-time index. */
export async function queueView(queue: QueueReader, now: Date): Promise<QueueView> {
  const states = async (state: JobState) => (await queue.list({ state, limit: QUEUE_SCAN })).length;
  const [first] = await queue.list({ state: 'pending', limit: 1 });
  const dueNow = first !== undefined && Date.parse(first.runAt) <= now.getTime();
  const pending = dueNow ? await queue.list({ state: 'pending', limit: QUEUE_SCAN }) : [];
  const due = pending.filter((j) => Date.parse(j.runAt) <= now.getTime());
  return {
    due: due.length,
    ...(dueNow ? { oldestDue: first } : {}),
    ...(!dueNow && first !== undefined ? { next: first } : due.length < pending.length ? { next: pending[due.length] } : {}),
    parked: await states('parked'),
    dead: await states('dead'),
  };
}

function capped(n: number): string {
  return n >= QUEUE_SCAN ? `${count(QUEUE_SCAN)}+` : count(n);
}

/** Per minute of the window, oldest first: all events and the failed ones. */
interface Series {
  total: number[];
  errors: number[];
  codes: Map<string, number>;
}

function seriesOf(flow: FlowActivity | undefined, sinceMs: number, isError: (code: string) => boolean): Series {
  const total = new Array<number>(FLOW_ACTIVITY_MINUTES).fill(0);
  const errors = new Array<number>(FLOW_ACTIVITY_MINUTES).fill(0);
  const codes = new Map<string, number>();
  for (const m of flow?.minutes ?? []) {
    const i = Math.floor((Date.parse(m.minute) - sinceMs) / 60_000);
    if (i < 0 || i >= FLOW_ACTIVITY_MINUTES) continue;
    total[i]! += m.count;
    if (isError(m.code)) errors[i]! += m.count;
    codes.set(m.code, (codes.get(m.code) ?? 0) + m.count);
  }
  return { total, errors, codes };
}

const sum = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);

/** 60 bars, one a minute (newest right), the failed share in red. Numbers only: trusted markup. */
function sparkline(s: Series, label: string): SafeHtml {
  const width = 2;
  const gap = 1;
  const height = 22;
  const max = Math.max(1, ...s.total);
  let bars = '';
  s.total.forEach((n, i) => {
    if (n === 0) return;
    const h = Math.max(1, Math.round((n / max) * height));
    const e = s.errors[i]! === 0 ? 0 : Math.max(1, Math.round((s.errors[i]! / max) * height));
    const x = i * (width + gap);
    bars += `<rect class="bar" x="${x}" y="${height - h}" width="${width}" height="${h}"/>`;
    if (e > 0) bars += `<rect class="bar err" x="${x}" y="${height - e}" width="${width}" height="${e}"/>`;
  });
  const w = FLOW_ACTIVITY_MINUTES * (width + gap);
  return html`<svg class="spark" width="${w}" height="${height + 1}" viewBox="0 0 ${w} ${height + 1}" role="img" aria-label="${label}">${trusted(`<line class="base" x1="0" y1="${height + 0.5}" x2="${w}" y2="${height + 0.5}"/>${bars}`)}</svg>`;
}

/** Events per minute over the last five minutes. */
function perMinute(s: Series): string {
  const last5 = sum(s.total.slice(-5));
  const rate = last5 / 5;
  return rate === 0 ? '0' : rate < 10 ? rate.toFixed(1) : count(Math.round(rate));
}

function rate(errors: number, total: number): SafeHtml {
  if (total === 0) return html`<span class="muted">—</span>`;
  const pct = (100 * errors) / total;
  const text = pct === 0 ? '0 %' : pct < 0.1 ? '< 0.1 %' : `${pct.toFixed(pct < 10 ? 1 : 0)} %`;
  return pct >= 5 ? html`<span class="alert-text">${text}</span>` : pct > 0 ? html`<span class="warn-text">${text}</span>` : html`${text}`;
}

function codeBadges(codes: Map<string, number>): SafeHtml {
  if (codes.size === 0) return html`<span class="muted">none</span>`;
  return html`<span class="codes">${[...codes].sort((a, b) => b[1] - a[1]).map(([code, n]) => html`${badge(code)}${count(n)} `)}</span>`;
}

/** An input is "silent" on this page after an hour without a message. */
const SILENT_MS = 60 * 60_000;

function lastSeen(ctx: PageContext, lastAt: string | undefined, what: string): SafeHtml {
  if (lastAt === undefined) return html`<span class="muted">no ${what}</span>`;
  const silentFor = ctx.now.getTime() - Date.parse(lastAt);
  return html`${time(ctx, lastAt)}<br><span class="${silentFor >= SILENT_MS ? 'warn-text' : 'muted'}">${silentFor >= SILENT_MS ? `silent for ${duration(silentFor)}` : ago(ctx, lastAt)}</span>`;
}

const OUTPUT_FAILED = (code: string) => code === 'failed';

function talliesByOutput(tallies: readonly DeliveryTally[]): Map<string, Map<string, number>> {
  const byOutput = new Map<string, Map<string, number>>();
  for (const t of tallies) {
    if (t.output === undefined) continue;
    const statuses = byOutput.get(t.output) ?? new Map<string, number>();
    statuses.set(t.status, (statuses.get(t.status) ?? 0) + t.count);
    byOutput.set(t.output, statuses);
  }
  return byOutput;
}

export function flowsRoutes(router: express.Router, deps: DashboardDeps): void {
  router.get(
    '/flows',
    view(deps, async (_req, _res, ctx) => {
      const sinceMs = Math.floor(ctx.now.getTime() / 60_000) * 60_000 - (FLOW_ACTIVITY_MINUTES - 1) * 60_000;
      const [activity, tallies, messageTotals, deliveryTotals, queue, circuits] = await Promise.all([
        deps.store.flowActivity(new Date(sinceMs).toISOString()),
        deps.store.deliveryTallies(),
        deps.store.countMessages(),
        deps.store.countDeliveries(),
        deps.queue ? queueView(deps.queue, ctx.now) : undefined,
        deps.outputStates ? deps.outputStates() : undefined,
      ]);
      const info = deps.flows?.() ?? { inputs: [], outputs: [] };
      const find = (kind: 'input' | 'output', name: string) => activity.find((a) => a.kind === kind && a.name === name);
      const names = (kind: 'input' | 'output', configured: readonly FlowInfo[]): FlowInfo[] => [
        ...configured,
        ...activity.filter((a) => a.kind === kind && !configured.some((c) => c.name === a.name)).map((a) => ({ name: a.name, type: '', detail: 'not configured now' })),
      ];

      let inputTotal = 0;
      let inputErrors = 0;
      const inputRows = names('input', info.inputs).map((input) => {
        const flow = find('input', input.name);
        const s = seriesOf(flow, sinceMs, isErrorAck);
        const total = sum(s.total);
        const errors = sum(s.errors);
        inputTotal += total;
        inputErrors += errors;
        const state = input.listening === undefined ? badge('unknown') : input.listening ? badge('listening') : badge('stopped');
        return html`<tr data-input="${input.name}">
<td><a href="${href('/ui/messages', { input: input.name })}"><code>${input.name}</code></a></td>
<td>${input.type}</td>
<td>${state}${input.detail !== undefined && html`<br><span class="muted">${input.detail}</span>`}</td>
<td class="nowrap">${lastSeen(ctx, flow?.lastAt, 'message yet')}</td>
<td class="num">${perMinute(s)}</td>
<td>${sparkline(s, `messages per minute, last ${FLOW_ACTIVITY_MINUTES} minutes`)}</td>
<td>${codeBadges(s.codes)}</td>
<td class="num">${rate(errors, total)}</td>
</tr>`;
      });

      const outputTotals = talliesByOutput(tallies);
      const outputRows = names('output', info.outputs).map((output) => {
        const flow = find('output', output.name);
        const s = seriesOf(flow, sinceMs, OUTPUT_FAILED);
        const totals = outputTotals.get(output.name) ?? new Map<string, number>();
        const circuit = circuits?.get(output.name);
        return html`<tr data-output="${output.name}">
<td><code>${output.name}</code></td>
<td>${output.type}${output.channel !== undefined && output.channel !== output.type && html` · ${output.channel}`}</td>
<td>${circuits === undefined ? html`<span class="muted nowrap" title="this version has no circuit breakers">not available</span>` : circuit === undefined ? html`<span class="muted">—</span>` : html`${badge(circuit.state)}${circuit.detail !== undefined && html`<br><span class="muted">${circuit.detail}</span>`}`}</td>
<td class="num">${count(totals.get('pending') ?? 0)}</td>
<td class="nowrap">${lastSeen(ctx, flow?.lastAt, 'delivery yet')}</td>
<td class="num">${perMinute(s)}</td>
<td>${sparkline(s, `deliveries ended per minute, last ${FLOW_ACTIVITY_MINUTES} minutes`)}</td>
<td>${codeBadges(s.codes)}</td>
<td class="num">${rate(sum(s.errors), sum(s.total))}</td>
<td class="num">${(totals.get('failed') ?? 0) > 0 ? html`<a class="alert-text" href="/ui/deliveries?status=failed">${count(totals.get('failed')!)}</a>` : '0'}${(totals.get('review') ?? 0) > 0 && html` · <a href="/ui/deliveries?status=review">${count(totals.get('review')!)} review</a>`}</td>
</tr>`;
      });

      const cards = html`<div class="cards">
<div class="card"><div class="k">Messages (hour)</div><div class="v">${count(inputTotal)}</div><div class="d">${count(Object.values(messageTotals).reduce((a, b) => a + b, 0))} stored</div></div>
<div class="card"><div class="k">Not accepted (hour)</div><div class="v${inputErrors > 0 ? ' bad' : ''}">${count(inputErrors)}</div><div class="d">${count(messageTotals.rejected)} rejected · ${count(messageTotals.quarantined)} quarantined stored</div></div>
<div class="card"><div class="k">Due now</div><div class="v${queue !== undefined && queue.due > 0 ? ' warn' : ''}">${queue === undefined ? '—' : capped(queue.due)}</div><div class="d">${queue?.oldestDue !== undefined ? `oldest waits ${duration(ctx.now.getTime() - Date.parse(queue.oldestDue.runAt))}` : queue?.next !== undefined ? `next in ${duration(Date.parse(queue.next.runAt) - ctx.now.getTime())}` : 'nothing scheduled'}</div></div>
<div class="card"><div class="k">Pending deliveries</div><div class="v">${count(deliveryTotals.pending)}</div><div class="d">${count(deliveryTotals.sent)} sent · ${count(deliveryTotals.suppressed)} suppressed</div></div>
<div class="card"><div class="k">Dead letters</div><div class="v${deliveryTotals.failed > 0 ? ' bad' : ''}"><a href="/ui/deliveries?status=failed">${count(deliveryTotals.failed)}</a></div><div class="d">failed deliveries</div></div>
<div class="card"><div class="k">Review</div><div class="v${(queue?.parked ?? 0) > 0 ? ' warn' : ''}"><a href="/ui/deliveries?status=review">${queue === undefined ? '—' : capped(queue.parked)}</a></div><div class="d">may have gone out: a person decides</div></div>
</div>`;

      const queuePanel =
        queue === undefined
          ? html``
          : html`<h2>Delivery queue</h2>
<div class="panel">${
              queue.oldestDue !== undefined
                ? html`Oldest due item: ${oldestLink(queue.oldestDue)} due ${time(ctx, queue.oldestDue.runAt)} (${ago(ctx, queue.oldestDue.runAt)}), attempt ${queue.oldestDue.attempts + 1}${queue.oldestDue.lastError && html`, last error ${badge(queue.oldestDue.lastError.code)}`}.`
                : html`Nothing is due: the queue keeps up.`
            } ${queue.next !== undefined && html`Next: ${oldestLink(queue.next)} at ${time(ctx, queue.next.runAt)}.`} Dead jobs: ${capped(queue.dead)}; parked for review: ${capped(queue.parked)}.</div>`;

      return page(
        ctx,
        {
          title: 'Flows',
          section: '/ui/flows',
          subtitle: html`Last ${FLOW_ACTIVITY_MINUTES} minutes · times in ${ctx.zone} · as of ${time(ctx, ctx.now.toISOString())} · reloads every 30 s`,
          refreshSeconds: 30,
        },
        html`${cards}
<h2>Inputs</h2>
${inputRows.length === 0 ? empty('No inputs are configured and none has received a message.') : html`<div class="table-wrap"><table id="inputs"><thead><tr><th>Input</th><th>Type</th><th>State</th><th>Last message</th><th class="num">Msgs/min (5 min)</th><th>Per minute, last hour</th><th>ACK codes (hour)</th><th class="num">Not accepted</th></tr></thead><tbody>${inputRows}</tbody></table></div>`}
<h2>Outputs</h2>
${outputRows.length === 0 ? empty('No outputs are configured.') : html`<div class="table-wrap"><table id="outputs"><thead><tr><th>Output</th><th>Type</th><th>Circuit</th><th class="num">Pending</th><th>Last delivery ended</th><th class="num">Ends/min (5 min)</th><th>Per minute, last hour</th><th>Ends (hour)</th><th class="num">Failed (hour)</th><th class="num">Dead letters</th></tr></thead><tbody>${outputRows}</tbody></table></div>`}
${queuePanel}`,
      );
    }),
  );
}

function oldestLink(job: JobInfo<unknown>): SafeHtml {
  const deliveryId = parseDeliveryJobId(job.id)?.deliveryId ?? job.id;
  return html`<a href="/ui/deliveries/${segment(deliveryId)}"><code>${deliveryId}</code></a>`;
}

