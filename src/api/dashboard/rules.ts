// The Rules page: for each rule of the mappings and each of its variants, what its deliveries
// became — pending, sent, suppressed by reason, cancelled, failed — and, where the outcomes
// service gives them, the outcomes of the appointments they were sent for.
//
// Counts come from the store's tallies (Store.deliveryTallies): kept as deliveries change, so
// the page costs a few hundred rows whatever the number of deliveries. Rules no longer in the
// mappings but with deliveries stored are listed after the others.
import type express from 'express';
import type { Rule } from '../../pipeline/rule.ts';
import type { DeliveryTally } from '../../store/store.ts';
import { view, type DashboardDeps } from './dashboard.ts';
import { html, href, type SafeHtml } from './html.ts';
import { badge, count, empty, page, type PageContext } from './layout.ts';

/** One figure of the outcomes of a rule's variant (show rate, no-show rate… with its interval). */
export interface OutcomeFigure {
  label: string;
  value: string;
  /** e.g. the 95 % confidence interval, the number of appointments. */
  detail?: string;
}

/** Outcomes per rule and variant (the variant absent: the rule as a whole, or its holdout with `holdout`). */
export interface RuleOutcomes {
  rule: string;
  variant?: string;
  figures: OutcomeFigure[];
}

export type OutcomesService = () => Promise<readonly RuleOutcomes[]>;

const STATUS_ORDER = ['pending', 'sent', 'suppressed', 'cancelled', 'failed', 'review'] as const;

interface VariantCounts {
  byStatus: Map<string, number>;
  /** suppressed, failed, cancelled: by reason. */
  reasons: Map<string, Map<string, number>>;
}

function countsOf(tallies: readonly DeliveryTally[]): Map<string, Map<string, VariantCounts>> {
  const rules = new Map<string, Map<string, VariantCounts>>();
  for (const t of tallies) {
    const variants = rules.get(t.rule) ?? new Map<string, VariantCounts>();
    rules.set(t.rule, variants);
    const key = t.variant ?? '';
    const c = variants.get(key) ?? { byStatus: new Map(), reasons: new Map() };
    variants.set(key, c);
    c.byStatus.set(t.status, (c.byStatus.get(t.status) ?? 0) + t.count);
    if (t.reason !== undefined) {
      const reasons = c.reasons.get(t.status) ?? new Map<string, number>();
      c.reasons.set(t.status, reasons);
      reasons.set(t.reason, (reasons.get(t.reason) ?? 0) + t.count);
    }
  }
  return rules;
}

function reasonList(reasons: Map<string, number> | undefined): SafeHtml {
  if (reasons === undefined || reasons.size === 0) return html``;
  return html`<span class="codes">${[...reasons].sort((a, b) => b[1] - a[1]).map(([r, n]) => html`${badge(r)}${count(n)} `)}</span>`;
}

function outcomeCell(outcomes: readonly RuleOutcomes[] | undefined, rule: string, variant: string): SafeHtml {
  if (outcomes === undefined) return html`<span class="muted" title="outcome measurement is not part of this version">not available</span>`;
  const row = outcomes.find((o) => o.rule === rule && (o.variant ?? '') === variant);
  if (row === undefined || row.figures.length === 0) return html`<span class="muted">no outcome yet</span>`;
  return html`${row.figures.map((f) => html`<div>${f.label} <strong>${f.value}</strong>${f.detail !== undefined && html` <span class="muted">${f.detail}</span>`}</div>`)}`;
}

function ruleSection(ctx: PageContext, id: string, rule: Rule | undefined, variants: Map<string, VariantCounts>, outcomes: readonly RuleOutcomes[] | undefined): SafeHtml {
  // Every configured variant, counted or not; then what is counted without one (before
  // variants were counted, or a rule without variants).
  const keys = [...new Set([...(rule?.variants.map((v) => v.id) ?? []), ...variants.keys()])].sort((a, b) => (a === '' ? 1 : b === '' ? -1 : a.localeCompare(b)));
  if (keys.length === 0) keys.push('');
  const rows = keys.map((key) => {
    const c = variants.get(key) ?? { byStatus: new Map<string, number>(), reasons: new Map<string, Map<string, number>>() };
    const weight = rule?.variants.find((v) => v.id === key)?.weight;
    return html`<tr>
<td>${key === '' ? html`<span class="muted">${rule !== undefined && rule.variants.length > 0 ? '(not recorded)' : '—'}</span>` : html`<code>${key}</code>${weight !== undefined && html` <span class="muted">weight ${weight}</span>`}`}</td>
${STATUS_ORDER.map((s) => html`<td class="num">${(c.byStatus.get(s) ?? 0) === 0 ? html`<span class="muted">0</span>` : html`<a href="${href('/ui/deliveries', { status: s, rule: id })}">${count(c.byStatus.get(s)!)}</a>`}</td>`)}
<td>${reasonList(c.reasons.get('suppressed'))}</td>
<td>${reasonList(c.reasons.get('failed'))}</td>
<td>${outcomeCell(outcomes, id, key)}</td>
</tr>`;
  });
  return html`<section class="panel rule" id="rule-${id}">
<h3><code>${id}</code>${rule === undefined && html` <span class="badge muted">not in the mappings now</span>`}</h3>
${rule !== undefined && html`<p class="hint">on ${rule.on.join(', ')} · ${rule.purpose} by ${rule.channel} through <code>${rule.send.output}</code>${rule.send.template !== undefined && html` · template <code>${rule.send.template}</code>`}${rule.holdout > 0 && html` · holdout ${Math.round(rule.holdout * 100)} % (no message, for measurement)`}</p>`}
<div class="table-wrap"><table><thead><tr><th>Variant</th>${STATUS_ORDER.map((s) => html`<th class="num">${s}</th>`)}<th>Suppressed by reason</th><th>Failed by code</th><th>Outcomes</th></tr></thead><tbody>${rows}</tbody></table></div>
</section>`;
}

export function rulesRoutes(router: express.Router, deps: DashboardDeps): void {
  router.get(
    '/rules',
    view(deps, async (_req, _res, ctx) => {
      const [tallies, outcomes] = await Promise.all([deps.store.deliveryTallies(), deps.outcomes ? deps.outcomes() : undefined]);
      const rules = deps.rules?.() ?? [];
      const counts = countsOf(tallies);
      const ids = [...rules.map((r) => r.id), ...[...counts.keys()].filter((id) => !rules.some((r) => r.id === id)).sort()];
      return page(
        ctx,
        { title: 'Rules', section: '/ui/rules', subtitle: `${rules.length} rules in the mappings · every delivery stored, by what became of it` },
        ids.length === 0 ? empty('No rule is configured and no delivery is stored.') : html`${ids.map((id) => ruleSection(ctx, id, rules.find((r) => r.id === id), counts.get(id) ?? new Map(), outcomes))}`,
      );
    }),
  );
}
