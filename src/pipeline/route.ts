// route(): trigger × compiled rules → what to plan, replan and cancel. Pure: no I/O, the
// clock and the time zone are passed in (docs/architecture.md "Interfaces"). Evaluated once,
// when the trigger is committed (invariant 2 "Route once, deliver many").
//
// Identity. A delivery is about a subject — the appointment, the encounter, or the patient
// for patient.* rules — so its id is `<rule id>@<subjectKey>#<step>`, never the trigger id:
// the same trigger routed twice, or a second `booked` for the same appointment, gives the
// same ids, and the queue replans instead of duplicating.
//
// What each trigger does, per rule:
//   - type in `on` and `where` holds  → a delivery (plan), due at the rule's `at`
//   - type in `replanOn`              → a replan: the rule's `at` re-resolved against this
//                                       (newer) trigger; it only moves an existing delivery.
//                                       `where` is not re-checked: a partial update message
//                                       must not strand a reminder at the old time.
//   - type in `cancelOn`              → a cancel order for key `<type>@<subjectKey>`
//
// Ordering (out-of-order arrival). Every plan, replan and cancel carries `asOf`, the
// trigger's occurredAt. applyToDelivery() below is the one rule a queue or store applies:
// information never rolls back to an older event — an older plan or replan does not move a
// newer one, an older cancel does not cancel a newer plan, and a plan must be strictly
// newer than a cancel to bring the delivery back (a re-booking of the same appointment).
import { hasPatient, type Delivery, type PatientTrigger, type SubjectKind, type Trigger } from '../types.ts';
import type { FieldPath, PathSegment } from './conditions.ts';
import { evaluate, failingPart, resolvePath } from './conditions.ts';
import type { CancelOrder, Rule, RuleVariant, RouteResult, SkippedDelivery } from './rule.ts';
import { subjectKindOf } from './rule.ts';
import type { QuietHours } from './policy.ts';
import { quietHours } from './quiet-hours.ts';
import { formatInstant, isValidZone, resolveInstant } from './schedule.ts';
import { parseInstant } from './values.ts';

export interface RouteOptions {
  /** IANA zone of the patient / site / tenant for this trigger (docs/consent.md quiet hours order). */
  zoneFor(trigger: Trigger): string;
  /**
   * Quiet hours (policy.quietHours): a care.logistics message due in them is planned at the
   * latest allowed minute before its due time when that is still useful (pipeline/quiet-hours.ts).
   * Later moves happen at send time, where they are recorded.
   */
  quietHours?: QuietHours;
}

export interface Subject {
  kind: SubjectKind;
  id: string;
  /** `<kind>/<url-encoded id>`: no ':' (queue ids), no ambiguity with '@' and '#'. */
  key: string;
}

/** The subject a trigger is about. Encounter triggers without encounter.id fall back to the trigger. */
export function subjectOf(trigger: Trigger): Subject {
  const kind = subjectKindOf(trigger.type);
  const id = kind === 'appointment' ? trigger.appointment?.id : kind === 'encounter' ? trigger.encounter?.id : trigger.patient?.id;
  if (id === undefined || id === '') return { kind: 'trigger', id: trigger.id, key: `trigger/${encodeURIComponent(trigger.id)}` };
  return { kind, id, key: `${kind}/${encodeURIComponent(id)}` };
}

export function deliveryId(ruleId: string, subjectKey: string, step: number): string {
  return `${ruleId}@${subjectKey}#${step}`;
}

/**
 * Routes one trigger through every rule. `now` is the routing time (ISO instant, Date or
 * epoch ms). Throws RangeError when zoneFor gives an unknown zone: a configuration error
 * that must not silently shift patients' messages by hours.
 */
export function route(trigger: Trigger, rules: readonly Rule[], now: string | Date | number, options: RouteOptions): RouteResult {
  const nowMs = typeof now === 'number' ? now : typeof now === 'string' ? Date.parse(now) : now.getTime();
  if (Number.isNaN(nowMs)) throw new RangeError(`route: "now" is not a valid instant: ${String(now)}`);
  // About no patient (slot.freed): nothing can be planned, replanned or cancelled from it (no rule is on it: config/mappings.ts).
  if (!hasPatient(trigger)) return { triggerId: trigger.id, deliveries: [], replans: [], cancels: [], skipped: [] };
  const zone = options.zoneFor(trigger);
  if (!isValidZone(zone)) throw new RangeError(`route: unknown time zone "${zone}" for trigger ${trigger.id} (expected an IANA name like Europe/Paris)`);

  const subject = subjectOf(trigger);
  const result: RouteResult = { triggerId: trigger.id, deliveries: [], replans: [], cancels: [], skipped: [] };
  const cancelKey = `${trigger.type}@${subject.key}`;
  if (rules.some((r) => r.cancelOn.includes(trigger.type))) {
    result.cancels.push({ key: cancelKey, reason: 'trigger', triggerId: trigger.id, triggerType: trigger.type, asOf: trigger.occurredAt });
  }

  for (const rule of rules) {
    let mode: 'plan' | 'replan';
    if (rule.on.includes(trigger.type)) {
      if (rule.where && !evaluate(rule.where, trigger, zone)) {
        (result.unmatched ??= []).push({ ruleId: rule.id, reason: 'condition_false', condition: failingPart(rule.where, trigger, zone) ?? '' });
        continue;
      }
      mode = 'plan';
    } else if (rule.replanOn.includes(trigger.type)) mode = 'replan';
    else continue;

    const { holdout, variant } = assignVariant(rule, trigger.patient.id);
    const steps = variant?.at ?? rule.at;
    steps.forEach((expr, step) => {
      const id = deliveryId(rule.id, subject.key, step);
      const skip = (reason: SkippedDelivery['reason'], extra: Partial<SkippedDelivery> = {}): void => {
        result.skipped.push({ id, ruleId: rule.id, subjectKey: subject.key, step, triggerId: trigger.id, reason, ...(variant ? { variant: variant.id } : {}), ...extra });
      };
      const planned = resolveInstant(expr, trigger, zone, nowMs);
      const expires = rule.expires ? resolveInstant(rule.expires, trigger, zone, nowMs) : undefined;
      if (planned === undefined || (rule.expires && expires === undefined)) {
        skip('no_anchor');
        return;
      }
      // Already past at routing time: goes now, unless that is at or after expiry.
      let due = Math.max(planned, nowMs);
      if (expires !== undefined && due >= expires) {
        skip('expired', { plannedAt: formatInstant(planned, zone), expiresAt: formatInstant(expires, zone) });
        // A pending delivery from an earlier plan must not go at its old time either.
        result.cancels.push({ key: id, reason: 'expired', triggerId: trigger.id, triggerType: trigger.type, asOf: trigger.occurredAt });
        return;
      }
      if (holdout) {
        // Recorded so outcomes can be compared with the patients who got the message: only
        // where the message would have been planned (anchored, not expired), so that the
        // holdout and the patients messaged are the same kind of appointments — a holdout
        // that also counted same-day bookings, which get no reminder, would compare unlike
        // with like (workers/outcomes.ts).
        if (mode === 'plan') skip('holdout');
        return;
      }
      // Quiet hours can only move a message earlier while there is time to: now, at planning.
      let quietHoursFrom: number | undefined;
      if (options.quietHours) {
        const start = trigger.appointment?.start === undefined ? undefined : parseInstant(trigger.appointment.start);
        const answer = quietHours(options.quietHours, {
          purpose: rule.purpose,
          channel: rule.channel,
          due,
          now: nowMs,
          zone,
          ...(start !== undefined && subject.kind === 'appointment' ? { appointmentStart: start } : {}),
          ...(expires !== undefined ? { expires } : {}),
        });
        if (answer.kind === 'move' && answer.at < due) {
          quietHoursFrom = due;
          due = answer.at;
        }
      }
      const delivery = buildDelivery(rule, variant, trigger, subject, step, id, planned, due, expires, zone);
      if (quietHoursFrom !== undefined) delivery.quietHoursFrom = formatInstant(quietHoursFrom, zone);
      (mode === 'plan' ? result.deliveries : result.replans).push(delivery);
    });
  }
  return result;
}

function buildDelivery(
  rule: Rule,
  variant: RuleVariant | undefined,
  trigger: PatientTrigger,
  subject: Subject,
  step: number,
  id: string,
  planned: number,
  due: number,
  expires: number | undefined,
  zone: string,
): Delivery {
  const patientKey = `patient/${encodeURIComponent(trigger.patient.id)}`;
  const cancelKeys = [id, subject.key, patientKey, `rule/${rule.id}`];
  for (const type of rule.cancelOn) {
    if (subjectKindOf(type) === subject.kind) cancelKeys.push(`${type}@${subject.key}`);
  }
  const template = variant?.template ?? rule.send.template;
  const to = rule.send.to ? recipient(trigger, rule.send.to) : undefined;
  return {
    id,
    ruleId: rule.id,
    subjectKey: subject.key,
    subjectKind: subject.kind,
    subjectId: subject.id,
    step,
    patientId: trigger.patient.id,
    triggerId: trigger.id,
    triggerType: trigger.type,
    asOf: trigger.occurredAt,
    plannedAt: formatInstant(planned, zone),
    dueAt: formatInstant(due, zone),
    ...(expires !== undefined ? { expiresAt: formatInstant(expires, zone) } : {}),
    ...(variant ? { variant: variant.id } : {}),
    purpose: rule.purpose,
    channel: rule.channel,
    output: rule.send.output,
    ...(template !== undefined ? { template } : {}),
    ...(rule.send.noNameTemplate !== undefined ? { noNameTemplate: rule.send.noNameTemplate } : {}),
    ...(to !== undefined ? { to } : {}),
    cancelKeys: [...new Set(cancelKeys)],
    payload: pickFields(trigger, rule.send.fields),
  };
}

/** The first text value the selector reaches (an element with a `value` gives its value). */
function recipient(trigger: Trigger, path: FieldPath): string | undefined {
  for (const value of resolvePath(trigger, path)) {
    if (typeof value === 'string') return value;
    if (value !== null && typeof value === 'object' && typeof (value as { value?: unknown }).value === 'string') {
      return (value as { value: string }).value;
    }
  }
  return undefined;
}

/**
 * A copy of the trigger holding only the allow-listed paths, in the trigger's own shape
 * (`{ patient: { name: { given: [...] } }, appointment: { start } }`) so templates read
 * naturally. Arrays keep their positions so two paths into one array stay aligned.
 */
export function pickFields(trigger: Trigger, fields: readonly FieldPath[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const field of fields) {
    const picked = pick(trigger, field.segments);
    if (picked !== undefined) merge(out, picked as Record<string, unknown>);
  }
  return out;
}

function pick(value: unknown, segments: readonly PathSegment[]): unknown {
  if (value === undefined || value === null || value === '') return undefined;
  if (segments.length === 0) return JSON.parse(JSON.stringify(value)) as unknown;
  if (Array.isArray(value)) {
    const items = value.map((item) => pick(item, segments) ?? null);
    return items.some((i) => i !== null) ? items : undefined;
  }
  if (typeof value !== 'object') return undefined;
  const [head, ...rest] = segments;
  const inner = pick((value as Record<string, unknown>)[head.name], rest);
  return inner === undefined ? undefined : { [head.name]: inner };
}

function merge(target: Record<string, unknown> | unknown[], source: Record<string, unknown> | unknown[]): void {
  for (const [key, value] of Object.entries(source)) {
    const existing = (target as Record<string, unknown>)[key];
    if (value !== null && typeof value === 'object' && existing !== null && typeof existing === 'object') {
      merge(existing as Record<string, unknown>, value as Record<string, unknown>);
    } else if (existing === undefined || existing === null) {
      (target as Record<string, unknown>)[key] = value;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Variants and holdout

/**
 * Deterministic by patient: hash(rule id, patient id) → a point u in [0, 1). u below the
 * holdout share means holdout; the rest of the interval is split by variant weight. The
 * same patient always lands in the same place for a rule, across processes and restarts.
 */
export function assignVariant(rule: Pick<Rule, 'id' | 'holdout' | 'variants'>, patientId: string): { holdout: boolean; variant?: RuleVariant } {
  const u = unitHash(`${rule.id}\u0000${patientId}`);
  if (u < rule.holdout) return { holdout: true };
  if (rule.variants.length === 0) return { holdout: false };
  const total = rule.variants.reduce((sum, v) => sum + v.weight, 0);
  let point = ((u - rule.holdout) / (1 - rule.holdout)) * total;
  for (const variant of rule.variants) {
    if (point < variant.weight) return { holdout: false, variant };
    point -= variant.weight;
  }
  return { holdout: false, variant: rule.variants[rule.variants.length - 1] };
}

/** FNV-1a over UTF-16 code units, then the murmur3 finalizer for avalanche; → [0, 1). */
export function unitHash(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) / 0x1_0000_0000;
}

// ---------------------------------------------------------------------------------------
// Applying route results to stored deliveries (the ordering rule, for the queue/store)

export const DeliveryStatus = {
  Pending: 'pending',
  Cancelled: 'cancelled',
  /** Sent, suppressed, dead: nothing may move or revive it (no second message). */
  Finished: 'finished',
} as const;
export type DeliveryStatus = (typeof DeliveryStatus)[keyof typeof DeliveryStatus];

export interface DeliveryState {
  status: DeliveryStatus;
  /** occurredAt of the newest event applied (plan, replan or cancel). */
  asOf: string;
  delivery: Delivery;
}

export type DeliveryOp = { kind: 'plan' | 'replan'; delivery: Delivery } | { kind: 'cancel'; order: CancelOrder };

export const DeliveryChange = {
  Added: 'added',
  Replanned: 'replanned',
  /** A cancelled delivery planned again by a strictly newer event (re-booked). */
  Revived: 'revived',
  Cancelled: 'cancelled',
  Unchanged: 'unchanged',
} as const;
export type DeliveryChange = (typeof DeliveryChange)[keyof typeof DeliveryChange];

/** Why an op changed nothing (safe to log: codes only). */
export const UnchangedReason = {
  /** Same plan as stored (the same trigger routed again). */
  Same: 'same',
  /** The op's event is older than what the delivery already reflects. */
  Stale: 'stale',
  NotFound: 'not_found',
  Finished: 'finished',
  Cancelled: 'cancelled',
  /** The cancel key is not one of the delivery's keys. */
  OtherKey: 'other_key',
} as const;
export type UnchangedReason = (typeof UnchangedReason)[keyof typeof UnchangedReason];

/**
 * The ordering rule for one delivery (see the top of this file). Pure: returns the new
 * state (undefined when there is none) and what changed. `op.delivery.id` (or the cancel
 * key) must concern `state.delivery`; the caller looks the state up by id / key.
 */
export function applyToDelivery(
  state: DeliveryState | undefined,
  op: DeliveryOp,
): { state?: DeliveryState; change: DeliveryChange; reason?: UnchangedReason } {
  const unchanged = (reason: UnchangedReason) => ({ ...(state ? { state } : {}), change: 'unchanged' as const, reason });
  if (op.kind === 'cancel') {
    if (!state) return unchanged('not_found');
    if (state.status === 'finished') return unchanged('finished');
    if (state.status === 'cancelled') return unchanged('cancelled');
    if (!state.delivery.cancelKeys.includes(op.order.key)) return unchanged('other_key');
    // A cancel at the same instant as the plan wins: not sending is the safe side.
    if (compareInstants(op.order.asOf, state.asOf) < 0) return unchanged('stale');
    return { state: { status: 'cancelled', asOf: op.order.asOf, delivery: state.delivery }, change: 'cancelled' };
  }
  const incoming = op.delivery;
  if (!state) {
    if (op.kind === 'replan') return { change: 'unchanged', reason: 'not_found' };
    return { state: { status: 'pending', asOf: incoming.asOf, delivery: incoming }, change: 'added' };
  }
  if (state.status === 'finished') return unchanged('finished');
  const order = compareInstants(incoming.asOf, state.asOf);
  if (state.status === 'cancelled') {
    if (op.kind === 'replan') return unchanged('cancelled');
    if (order <= 0) return unchanged('stale');
    return { state: { status: 'pending', asOf: incoming.asOf, delivery: incoming }, change: 'revived' };
  }
  if (order < 0) return unchanged('stale');
  if (samePlan(state.delivery, incoming)) return unchanged('same');
  return { state: { status: 'pending', asOf: incoming.asOf, delivery: incoming }, change: 'replanned' };
}

/** Same message at the same time. dueAt is left out: it depends on when routing ran. */
function samePlan(a: Delivery, b: Delivery): boolean {
  const key = (d: Delivery) =>
    JSON.stringify([d.plannedAt, d.expiresAt, d.variant, d.template, d.noNameTemplate, d.to, d.output, d.cancelKeys, d.payload]);
  return key(a) === key(b);
}

function compareInstants(a: string, b: string): number {
  const x = parseInstant(a);
  const y = parseInstant(b);
  if (x === undefined || y === undefined) return a < b ? -1 : a > b ? 1 : 0;
  return x - y;
}
