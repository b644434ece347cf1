// Outcomes (ROI): did the messages change how appointments end? (docs/operations.md "Outcomes",
// docs/consent.md "Measuring outcomes").
//
//   outcome trigger committed ─▶ its appointment noted (store, same commit)
//     ─▶ linker: the appointment's routing done? ─▶ how it ended (its latest status trigger)
//     ─▶ each rule's arm for it (the variant of its deliveries, or its holdout)
//     ─▶ one observation per rule (store.saveOutcomes)
//   GET /api/outcomes ─▶ counts per rule, arm, day ─▶ periods ─▶ rates, Wilson intervals,
//     differences with Newcombe intervals (pipeline/outcome-stats.ts)
//
// The unit is one appointment for one rule. The arm is what routing assigned (intention to
// treat), not whether the message went out: a reminder due 24 h ahead is never sent for an
// appointment cancelled three days ahead, so comparing only the appointments that were sent a
// message with the holdout would leave every early cancellation out of one arm and in the
// other. `sent` says how many of an arm were actually sent something.
//
// How an appointment ended is its latest status trigger (by occurredAt): checked in or
// fulfilled → showed; noshow; cancelled at least ADVANCE_LEAD_MS before its start → an
// advance cancellation (a freed slot), later → a late one. A later booked or rescheduled (the
// appointment was taken up again) or deleted (entered in error) means no outcome (yet): its
// observations are removed until an outcome trigger comes again.
import { DateTime } from 'luxon';
import type { Logger } from '../log.ts';
import { newcombe, suppressedCells, wilson, type Estimate } from '../pipeline/outcome-stats.ts';
import type { PolicySettings } from '../pipeline/policy.ts';
import { patientZone } from '../pipeline/zones.ts';
import { OutcomeKind, type OutcomeCount, type OutcomeLink, type OutcomeObservation, type Store } from '../store/store.ts';
import { TriggerType, type Trigger } from '../types.ts';
import { BACKGROUND_TIMER, repeat, type Timer } from './timer.ts';

/** A cancellation at least this long before the start frees the slot for someone else. */
export const ADVANCE_LEAD_MS = 24 * 3_600_000;

/** Links read per batch; the linker yields to the event loop between batches. */
const LINK_BATCH = 100;
/** How often links left due (their appointment's routing was not done yet) are tried again. */
const RETRY_MS = 60_000;

/** The triggers that say where an appointment stands, in the order they can follow each other. */
const STATUS_TYPES = new Set<string>([
  TriggerType.AppointmentBooked,
  TriggerType.AppointmentRescheduled,
  TriggerType.AppointmentCheckedIn,
  TriggerType.AppointmentFulfilled,
  TriggerType.AppointmentNoshow,
  TriggerType.AppointmentCancelled,
  TriggerType.AppointmentDeleted,
]);

export interface OutcomeLinkerOptions {
  store: Store;
  log: Logger;
  /** Sites and the organisation zone: an appointment's day is counted in its site's zone. */
  policy: Pick<PolicySettings, 'sites' | 'timezone'>;
  timer?: Timer;
}

/** How one appointment ended, from its triggers; undefined when it has no outcome (yet). */
export function outcomeOf(triggers: readonly Trigger[]): { kind: OutcomeKind; start: string; last: Trigger } | undefined {
  // Newest first by event time, then by commit order (listTriggers' order, kept by a stable sort).
  const statuses = triggers.filter((t) => STATUS_TYPES.has(t.type)).sort((a, b) => Date.parse(b.occurredAt) - Date.parse(a.occurredAt));
  const last = statuses[0];
  if (last === undefined) return undefined;
  const start = last.appointment?.start ?? statuses.find((t) => t.appointment?.start !== undefined)?.appointment?.start;
  if (start === undefined) return undefined;
  switch (last.type) {
    case TriggerType.AppointmentCheckedIn:
    case TriggerType.AppointmentFulfilled:
      return { kind: OutcomeKind.Showed, start, last };
    case TriggerType.AppointmentNoshow:
      return { kind: OutcomeKind.NoShow, start, last };
    case TriggerType.AppointmentCancelled: {
      const lead = Date.parse(start) - Date.parse(last.occurredAt);
      return { kind: lead >= ADVANCE_LEAD_MS ? OutcomeKind.CancelledAdvance : OutcomeKind.CancelledLate, start, last };
    }
    default:
      return undefined;
  }
}

/** Links the appointments the store noted to their rules' arms (see the top of this file). */
export class OutcomeLinker {
  readonly #options: OutcomeLinkerOptions;
  readonly #timer: Timer;
  #running: Promise<number> | undefined;
  #repeating: { stop(): void } | undefined;

  constructor(options: OutcomeLinkerOptions) {
    this.#options = options;
    this.#timer = options.timer ?? BACKGROUND_TIMER;
  }

  /**
   * Links what is due now, batch by batch, at most `max` appointments; resolves with how many
   * were linked. One run at a time: a call during a run waits for it and runs again.
   */
  async linkDue(max = Number.POSITIVE_INFINITY): Promise<number> {
    while (this.#running) await this.#running.catch(() => 0);
    this.#running = this.#run(max);
    try {
      return await this.#running;
    } finally {
      this.#running = undefined;
    }
  }

  /** Links in the background now and every minute (what waited for its routing is tried again). */
  start(): void {
    this.#repeating = repeat(this.#timer, 0, RETRY_MS, () => this.linkDue(), (error) =>
      this.#options.log.error('outcomes.link_failed', { code: (error as Error).name }),
    );
  }

  async stop(): Promise<void> {
    this.#repeating?.stop();
    await this.#running?.catch(() => 0);
  }

  async #run(max: number): Promise<number> {
    const { store } = this.#options;
    let linked = 0;
    const waiting = new Set<string>();
    while (linked < max) {
      const due = (await store.outcomeLinksDue(LINK_BATCH + waiting.size)).filter((l) => !waiting.has(l.appointmentId));
      if (due.length === 0) break;
      for (const link of due.slice(0, max - linked)) {
        if (await this.#link(link)) linked++;
        else waiting.add(link.appointmentId);
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
    return linked;
  }

  /** False when the appointment's routing is not done yet (the link stays due). */
  async #link(link: OutcomeLink): Promise<boolean> {
    const { store, policy } = this.#options;
    const id = link.appointmentId;
    // The arm of a rule is what its routing recorded: wait for every trigger to be routed.
    if (await store.hasUnroutedTriggers({ kind: 'appointment', id })) return false;
    const triggers = await store.listTriggers({ appointmentId: id, limit: 1000 });
    const outcome = outcomeOf(triggers);
    if (outcome === undefined) {
      await store.saveOutcomes(link, []);
      return true;
    }
    const day = DateTime.fromISO(outcome.start, { setZone: true }).setZone(patientZone(outcome.last, policy)).toISODate();
    if (day === null) {
      await store.saveOutcomes(link, []);
      return true;
    }
    const arms = new Map<string, { variant?: string; holdout: boolean; sent: boolean }>();
    for (const d of await store.listDeliveries({ subjectKey: `appointment/${encodeURIComponent(id)}`, limit: 1000 })) {
      const arm = arms.get(d.delivery.ruleId) ?? { ...(d.delivery.variant !== undefined ? { variant: d.delivery.variant } : {}), holdout: false, sent: false };
      arm.sent ||= d.status === 'sent';
      arms.set(d.delivery.ruleId, arm);
    }
    for (const t of triggers) {
      const explanation = await store.getRoutingExplanation(t.id);
      for (const r of explanation?.rules ?? []) {
        if (r.outcome === 'skipped' && r.reason === 'holdout' && !arms.has(r.rule)) arms.set(r.rule, { holdout: true, sent: false });
      }
    }
    const observations: OutcomeObservation[] = [...arms].map(([rule, arm]) => ({ rule, ...arm, outcome: outcome.kind, day }));
    await store.saveOutcomes(link, observations);
    return true;
  }
}

// ---------------------------------------------------------------------------------------
// Reports

export const OutcomePeriod = { Day: 'day', Week: 'week', Month: 'month' } as const;
export type OutcomePeriod = (typeof OutcomePeriod)[keyof typeof OutcomePeriod];
export const OUTCOME_PERIODS: readonly OutcomePeriod[] = Object.values(OutcomePeriod);

export interface OutcomeReportQuery {
  rule?: string;
  variant?: string;
  /** Inclusive bounds on the appointment's day (YYYY-MM-DD). */
  from?: string;
  to?: string;
  /** Absent: one row per arm over the whole range. */
  period?: OutcomePeriod;
}

/** An arm of a rule: a variant, the holdout, or the rule's only arm (no variants, no holdout). */
export interface OutcomeArm {
  variant: string | null;
  holdout: boolean;
}

export interface OutcomeRates {
  showRate: Estimate | null;
  noShowRate: Estimate | null;
  advanceCancellationRate: Estimate | null;
}

export interface OutcomeRow extends OutcomeArm, OutcomeRates {
  rule: string;
  /** The first day of the period (YYYY-MM-DD: the day, the Monday of the ISO week, the 1st of the month); null for the whole range. */
  period: string | null;
  /** Appointments of the arm with an outcome (the denominator of every rate). */
  appointments: number;
  /** Of those, how many were sent a message of the rule. */
  sent: number;
  showed: number;
  noShows: number;
  cancelledAdvance: number;
  cancelledLate: number;
  /** The arm each difference is against: the rule's holdout, else its first variant (by id); null for that arm itself. */
  comparedTo: OutcomeArm | null;
  /** This arm's rate minus the compared arm's, with Newcombe's interval; null without a comparison. */
  difference: OutcomeRates | null;
}

export interface OutcomeReport {
  period: OutcomePeriod | null;
  from: string | null;
  to: string | null;
  /** What counts as an advance cancellation, hours before the start. */
  advanceLeadHours: number;
  confidence: 0.95;
  items: OutcomeRow[];
}

/** The first day of the period holding `day`. */
export function periodOf(day: string, period: OutcomePeriod | undefined): string | null {
  if (period === undefined) return null;
  if (period === OutcomePeriod.Day) return day;
  if (period === OutcomePeriod.Month) return `${day.slice(0, 7)}-01`;
  // ISO weeks start on Monday (getUTCDay: Sunday 0).
  const date = new Date(`${day}T00:00:00Z`);
  date.setUTCDate(date.getUTCDate() - ((date.getUTCDay() + 6) % 7));
  return date.toISOString().slice(0, 10);
}

const armKey = (arm: OutcomeArm): string => (arm.holdout ? '\u0000holdout' : (arm.variant ?? ''));

function rates(row: Pick<OutcomeRow, 'appointments' | 'showed' | 'noShows' | 'cancelledAdvance'>): OutcomeRates {
  return {
    showRate: wilson(row.showed, row.appointments) ?? null,
    noShowRate: wilson(row.noShows, row.appointments) ?? null,
    advanceCancellationRate: wilson(row.cancelledAdvance, row.appointments) ?? null,
  };
}

function differences(a: OutcomeRow, b: OutcomeRow): OutcomeRates {
  return {
    showRate: newcombe(a.showed, a.appointments, b.showed, b.appointments) ?? null,
    noShowRate: newcombe(a.noShows, a.appointments, b.noShows, b.appointments) ?? null,
    advanceCancellationRate: newcombe(a.cancelledAdvance, a.appointments, b.cancelledAdvance, b.appointments) ?? null,
  };
}

/** Rows per rule, arm and period from the store's counts (see OutcomeRow). */
export function outcomeReport(counts: readonly OutcomeCount[], query: OutcomeReportQuery): OutcomeReport {
  const rows = new Map<string, OutcomeRow>();
  for (const c of counts) {
    const arm: OutcomeArm = { variant: c.variant ?? null, holdout: c.holdout };
    const period = periodOf(c.day, query.period);
    const key = `${c.rule}\u0001${armKey(arm)}\u0001${period ?? ''}`;
    let row = rows.get(key);
    if (row === undefined) {
      row = { rule: c.rule, ...arm, period, appointments: 0, sent: 0, showed: 0, noShows: 0, cancelledAdvance: 0, cancelledLate: 0 } as OutcomeRow;
      rows.set(key, row);
    }
    row.appointments += c.count;
    row.sent += c.sent;
    if (c.outcome === OutcomeKind.Showed) row.showed += c.count;
    else if (c.outcome === OutcomeKind.NoShow) row.noShows += c.count;
    else if (c.outcome === OutcomeKind.CancelledAdvance) row.cancelledAdvance += c.count;
    else row.cancelledLate += c.count;
  }
  // The reference arm of each rule: its holdout, else its first variant.
  const reference = new Map<string, OutcomeArm>();
  for (const row of rows.values()) {
    const current = reference.get(row.rule);
    const better = current === undefined || (row.holdout && !current.holdout) || (!current.holdout && !row.holdout && (row.variant ?? '') < (current.variant ?? ''));
    if (better) reference.set(row.rule, { variant: row.variant, holdout: row.holdout });
  }
  const distinctArms = new Map<string, Set<string>>();
  for (const row of rows.values()) distinctArms.set(row.rule, (distinctArms.get(row.rule) ?? new Set()).add(armKey(row)));

  const items: OutcomeRow[] = [];
  for (const row of rows.values()) {
    Object.assign(row, rates(row));
    const ref = reference.get(row.rule)!;
    const isReference = armKey(ref) === armKey(row);
    const compared = !isReference && distinctArms.get(row.rule)!.size > 1;
    const against = compared ? rows.get(`${row.rule}\u0001${armKey(ref)}\u0001${row.period ?? ''}`) : undefined;
    row.comparedTo = compared ? ref : null;
    row.difference = against === undefined ? null : differences(row, against);
    if (query.variant !== undefined && row.variant !== query.variant) continue;
    items.push(row);
  }
  items.sort((a, b) => a.rule.localeCompare(b.rule) || (a.period ?? '').localeCompare(b.period ?? '') || Number(b.holdout) - Number(a.holdout) || (a.variant ?? '').localeCompare(b.variant ?? ''));
  return {
    period: query.period ?? null,
    from: query.from ?? null,
    to: query.to ?? null,
    advanceLeadHours: ADVANCE_LEAD_MS / 3_600_000,
    confidence: 0.95,
    items,
  };
}

/** The report for a query, after linking what is due (at most `linkMax` appointments now). */
export async function readOutcomes(store: Store, linker: OutcomeLinker | undefined, query: OutcomeReportQuery, linkMax = 2000): Promise<OutcomeReport> {
  await linker?.linkDue(linkMax);
  const counts = await store.countOutcomes({
    ...(query.rule !== undefined ? { rule: query.rule } : {}),
    ...(query.from !== undefined ? { fromDay: query.from } : {}),
    ...(query.to !== undefined ? { toDay: query.to } : {}),
  });
  return outcomeReport(counts, query);
}

// ---------------------------------------------------------------------------------------
// De-identified export

const CSV_COLUMNS = [
  'rule',
  'variant',
  'holdout',
  'period',
  'appointments',
  'sent',
  'showed',
  'no_shows',
  'cancelled_advance',
  'cancelled_late',
  'show_rate',
  'show_rate_low',
  'show_rate_high',
  'no_show_rate',
  'no_show_rate_low',
  'no_show_rate_high',
  'advance_cancellation_rate',
  'advance_cancellation_rate_low',
  'advance_cancellation_rate_high',
  'compared_to',
  'show_rate_difference',
  'show_rate_difference_low',
  'show_rate_difference_high',
  'no_show_rate_difference',
  'no_show_rate_difference_low',
  'no_show_rate_difference_high',
  'advance_cancellation_rate_difference',
  'advance_cancellation_rate_difference_low',
  'advance_cancellation_rate_difference_high',
  'withheld',
] as const;

/** A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break. */
function csvField(value: string): string {
  return /[",\r\n]/.test(value) ? `"${value.replaceAll('"', '""')}"` : value;
}

/**
 * A text field: a leading = + - @ would be read as a formula by spreadsheets. Rule and variant
 * ids come from the configuration, but they are defused all the same (numbers are not text).
 */
function csvText(value: string): string {
  return /^[=+\-@]/.test(value) ? `'${value}` : value;
}

const number4 = (n: number): string => n.toFixed(4);

/**
 * The report as CSV of de-identified aggregates: no ids of patients or appointments, only
 * rules, arms, periods and counts, with small cells withheld (pipeline/outcome-stats.ts
 * suppressedCells: counts of 1 to 10, and one more count of the row when a single withheld
 * one could be recovered from the total; `sent` is withheld when it or its complement is 1 to
 * 10). A rate, its interval and its differences are withheld with their numerator; a
 * difference also with the compared arm's. `withheld` names what was left out.
 */
export function outcomeCsv(report: OutcomeReport): string {
  const lines = [CSV_COLUMNS.join(',')];
  const shownRates = new Map<OutcomeRow, Set<string>>();
  const suppressedOf = (row: OutcomeRow) => {
    const parts = { showed: row.showed, noShows: row.noShows, cancelledAdvance: row.cancelledAdvance, cancelledLate: row.cancelledLate };
    const withheld = suppressedCells(row.appointments, parts);
    const small = (n: number) => n > 0 && n < 11;
    if (withheld.has('total') || small(row.sent) || small(row.appointments - row.sent)) withheld.add('sent');
    return withheld;
  };
  const byArm = new Map(report.items.map((row) => [`${row.rule}\u0001${armKey(row)}\u0001${row.period ?? ''}`, row]));
  const RATE_PARTS = { showRate: 'showed', noShowRate: 'noShows', advanceCancellationRate: 'cancelledAdvance' } as const;
  const shownOf = (row: OutcomeRow): Set<string> => {
    let shown = shownRates.get(row);
    if (shown === undefined) {
      const withheld = suppressedOf(row);
      shown = new Set(Object.entries(RATE_PARTS).filter(([, part]) => !withheld.has(part) && !withheld.has('total') && row.appointments > 0).map(([rate]) => rate));
      shownRates.set(row, shown);
    }
    return shown;
  };
  for (const row of report.items) {
    const withheld = suppressedOf(row);
    const shown = shownOf(row);
    const against = row.comparedTo === null ? undefined : byArm.get(`${row.rule}\u0001${armKey(row.comparedTo)}\u0001${row.period ?? ''}`);
    const count = (name: string, n: number) => (withheld.has(name) || withheld.has('total') ? '' : String(n));
    const rate = (name: keyof OutcomeRates, e: Estimate | null) => (e === null || !shown.has(name) ? ['', '', ''] : [number4(e.value), number4(e.low), number4(e.high)]);
    const diff = (name: keyof OutcomeRates) => {
      const e = row.difference?.[name] ?? null;
      return e === null || !shown.has(name) || against === undefined || !shownOf(against).has(name) ? ['', '', ''] : [number4(e.value), number4(e.low), number4(e.high)];
    };
    const armName = (arm: OutcomeArm | null) => (arm === null ? '' : arm.holdout ? 'holdout' : (arm.variant ?? ''));
    const fields = [
      csvText(row.rule),
      csvText(row.variant ?? ''),
      row.holdout ? 'true' : 'false',
      row.period ?? '',
      withheld.has('total') ? '' : String(row.appointments),
      count('sent', row.sent),
      count('showed', row.showed),
      count('noShows', row.noShows),
      count('cancelledAdvance', row.cancelledAdvance),
      count('cancelledLate', row.cancelledLate),
      ...rate('showRate', row.showRate),
      ...rate('noShowRate', row.noShowRate),
      ...rate('advanceCancellationRate', row.advanceCancellationRate),
      csvText(armName(row.comparedTo)),
      ...diff('showRate'),
      ...diff('noShowRate'),
      ...diff('advanceCancellationRate'),
      withheld.size > 0 ? 'cells of 1 to 10 withheld' : '',
    ];
    lines.push(fields.map(csvField).join(','));
  }
  return `${lines.join('\r\n')}\r\n`;
}
