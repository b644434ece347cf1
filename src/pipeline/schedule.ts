// Time expressions of mapping rules (`at:`, `expires:`, variant `at:`):
//
//   <anchor> [(+|-) <n><unit>]… [at HH:MM]
//
//   appointment.start - 24h            24 hours of elapsed time before the start
//   appointment.start - 1d             the day before, same wall-clock time in the zone
//   encounter.end + 1d at 10:00        the next day at 10:00 local time
//   occurredAt + 2d
//   now + 30m
//
// Units (docs/consent.md "Time arithmetic"): `m` and `h` are elapsed time; `d` and `w` are
// calendar steps in the patient's/site's time zone, so `- 1d` keeps the wall-clock time
// across a DST change and `- 24h` does not. Steps apply left to right, then `at`.
//
// Local times that do not exist or exist twice (RFC 5545 §3.3.5, the same rule as
// java.time and Temporal's "compatible" disambiguation):
//   - in a spring-forward gap the wall time moves forward by the length of the gap
//     (Europe/Paris 2025-03-30 02:30 → 03:30+02:00);
//   - in a fall-back overlap the FIRST occurrence is taken (Europe/Paris 2025-10-26
//     02:30 → 02:30+02:00, i.e. 00:30Z), so a message is never later than the user meant.
import { DateTime, IANAZone } from 'luxon';
import type { Trigger } from '../types.ts';
import type { IssuePath, ConditionIssue } from './conditions.ts';
import { closest, describe, parseInstant } from './values.ts';

export const TimeAnchor = {
  Now: 'now',
  OccurredAt: 'occurredAt',
  ReceivedAt: 'receivedAt',
  AppointmentStart: 'appointment.start',
  AppointmentEnd: 'appointment.end',
  EncounterStart: 'encounter.start',
  EncounterEnd: 'encounter.end',
} as const;
export type TimeAnchor = (typeof TimeAnchor)[keyof typeof TimeAnchor];
export const TIME_ANCHORS: readonly TimeAnchor[] = Object.values(TimeAnchor);

export const TimeUnit = {
  /** Elapsed minutes. */
  Minute: 'm',
  /** Elapsed hours. */
  Hour: 'h',
  /** Calendar days in the zone. */
  Day: 'd',
  /** Calendar weeks (7 calendar days) in the zone. */
  Week: 'w',
} as const;
export type TimeUnit = (typeof TimeUnit)[keyof typeof TimeUnit];

export interface TimeStep {
  sign: 1 | -1;
  amount: number;
  unit: TimeUnit;
}

export interface TimeExpr {
  /** As written, for messages and audit. */
  source: string;
  anchor: TimeAnchor;
  steps: TimeStep[];
  /** Local wall time set after the steps. */
  at?: { hour: number; minute: number };
}

/** Bounds that keep a typo (`+ 2000d`) from scheduling years ahead unnoticed. */
const MAX_AMOUNT = 1000;
const MAX_STEPS = 8;
const MS = { m: 60_000, h: 3_600_000 } as const;

/** Compiles a time expression; issues carry `at` (the key in the mapping document). */
export function compileTimeExpr(raw: unknown, at: IssuePath): { expr?: TimeExpr; issues: ConditionIssue[] } {
  const fail = (message: string) => ({ issues: [{ path: at, message }] });
  if (typeof raw !== 'string') {
    return fail(`expected a time expression like "appointment.start - 24h" or "encounter.end + 1d at 10:00", got ${describe(raw)}`);
  }
  const source = raw.trim();
  if (source.length > 200) return fail('a time expression must be at most 200 characters');
  // Tokens: the anchor, signed amounts ("+ 2d", "+2d", "-1w"), then "at HH:MM".
  const m = /^([A-Za-z.]+)\s*((?:[+-]\s*\d+\s*[A-Za-z]+\s*)*)(?:\bat\s+(\d{1,2}):(\d{2}))?$/.exec(source);
  if (!m) {
    return fail(`"${source}" is not a time expression; expected <anchor> [+|- <n><unit>]… [at HH:MM], e.g. "appointment.start - 1d at 18:00"`);
  }
  const anchor = m[1];
  if (!(TIME_ANCHORS as readonly string[]).includes(anchor)) {
    return fail(`unknown time anchor "${anchor}"; known: ${TIME_ANCHORS.join(', ')} (closest: ${closest(anchor, TIME_ANCHORS).join(', ')})`);
  }
  const steps: TimeStep[] = [];
  for (const s of m[2].matchAll(/([+-])\s*(\d+)\s*([A-Za-z]+)/g)) {
    const unit = s[3];
    if (unit !== 'm' && unit !== 'h' && unit !== 'd' && unit !== 'w') {
      return fail(`unknown time unit "${unit}" in "${source}"; use m (minutes), h (hours), d (calendar days) or w (weeks)`);
    }
    const amount = Number(s[2]);
    if (amount > MAX_AMOUNT) return fail(`"${s[0].trim()}" is out of range: at most ${MAX_AMOUNT} per step`);
    steps.push({ sign: s[1] === '-' ? -1 : 1, amount, unit });
  }
  if (steps.length > MAX_STEPS) return fail(`at most ${MAX_STEPS} steps in a time expression`);
  const expr: TimeExpr = { source, anchor: anchor as TimeAnchor, steps };
  if (m[3] !== undefined) {
    const hour = Number(m[3]);
    const minute = Number(m[4]);
    if (hour > 23 || minute > 59) return fail(`"at ${m[3]}:${m[4]}" is not a time of day (00:00–23:59)`);
    expr.at = { hour, minute };
  }
  return { expr, issues: [] };
}

/** True for IANA zone names luxon can use ("Europe/Paris", "America/New_York", "UTC"). */
// Zone names already checked. luxon's check builds an Intl.DateTimeFormat each time (tens of
// µs), and routing checks the zone of every trigger; the set of zones in use is small.
const knownZones = new Map<string, boolean>();

export function isValidZone(zone: string): boolean {
  let valid = knownZones.get(zone);
  if (valid === undefined) {
    valid = IANAZone.isValidZone(zone);
    if (knownZones.size < 1000) knownZones.set(zone, valid);
  }
  return valid;
}

/** Epoch ms of the anchor in the trigger; undefined when absent or not an instant with offset. */
export function anchorInstant(anchor: TimeAnchor, trigger: Trigger, now: number): number | undefined {
  let text: string | undefined;
  switch (anchor) {
    case 'now':
      return now;
    case 'occurredAt':
      text = trigger.occurredAt;
      break;
    case 'receivedAt':
      text = trigger.receivedAt;
      break;
    case 'appointment.start':
      text = trigger.appointment?.start;
      break;
    case 'appointment.end':
      text = trigger.appointment?.end;
      break;
    case 'encounter.start':
      text = trigger.encounter?.start;
      break;
    case 'encounter.end':
      text = trigger.encounter?.end;
      break;
    default:
      anchor satisfies never;
  }
  return typeof text === 'string' ? parseInstant(text) : undefined;
}

/**
 * Resolves a time expression against a trigger in an IANA zone. Returns ISO-8601 with the
 * zone's offset (seconds kept, milliseconds only when non-zero), or undefined when the
 * anchor is absent from the trigger. `now` (ISO instant or epoch ms) is only read for the
 * `now` anchor. Throws RangeError for an unknown zone: that is a configuration error.
 */
export function resolveTime(expr: TimeExpr, trigger: Trigger, zone: string, now: string | number = Date.now()): string | undefined {
  const ms = resolveInstant(expr, trigger, zone, typeof now === 'number' ? now : Date.parse(now));
  return ms === undefined ? undefined : formatInstant(ms, zone);
}

/** As resolveTime, in epoch ms. */
export function resolveInstant(expr: TimeExpr, trigger: Trigger, zone: string, now: number): number | undefined {
  const tz = zoneOf(zone);
  let t = anchorInstant(expr.anchor, trigger, now);
  if (t === undefined) return undefined;
  for (const step of expr.steps) {
    if (step.unit === 'm' || step.unit === 'h') {
      t += step.sign * step.amount * MS[step.unit];
    } else {
      const days = step.sign * step.amount * (step.unit === 'w' ? 7 : 1);
      const wall = wallTime(tz, t);
      // Date.UTC rolls the day over months and years: a calendar step on the wall date.
      const date = new Date(Date.UTC(wall.getUTCFullYear(), wall.getUTCMonth(), wall.getUTCDate() + days));
      t = instantOfWallTime(tz, date.getUTCFullYear(), date.getUTCMonth() + 1, date.getUTCDate(), wall.getUTCHours(), wall.getUTCMinutes(), wall.getUTCSeconds(), wall.getUTCMilliseconds());
    }
  }
  if (expr.at) {
    const wall = wallTime(tz, t);
    t = instantOfWallTime(tz, wall.getUTCFullYear(), wall.getUTCMonth() + 1, wall.getUTCDate(), expr.at.hour, expr.at.minute, 0, 0);
  }
  return t;
}

/** The wall-clock time of instant `ms` in the zone, as a Date whose UTC fields are it. */
function wallTime(tz: IANAZone, ms: number): Date {
  return new Date(ms + zoneOffsetMinutes(tz, ms) * 60_000);
}

/** ISO-8601 in the zone's offset: 2025-03-30T09:00:00+02:00 (milliseconds only when not zero). */
export function formatInstant(ms: number, zone: string): string {
  const tz = zoneOf(zone);
  const offset = zoneOffsetMinutes(tz, ms);
  const year = new Date(ms + offset * 60_000).getUTCFullYear();
  // Offsets in seconds (local mean time before ~1900) and years outside 0–9999: luxon's form.
  if (!Number.isInteger(offset) || year < 0 || year > 9999) return DateTime.fromMillis(ms, { zone: tz }).toISO({ suppressMilliseconds: true })!;
  return formatAtOffset(ms, offset);
}

/**
 * formatInstant's form at a fixed offset in whole minutes (years 0–9999):
 * `YYYY-MM-DDTHH:mm:ss[.sss]±HH:MM`, the milliseconds only when not zero.
 */
export function formatAtOffset(ms: number, offset: number): string {
  const wall = new Date(ms + offset * 60_000);
  const millis = wall.getUTCMilliseconds();
  const abs = Math.abs(offset);
  return (
    `${String(wall.getUTCFullYear()).padStart(4, '0')}-${pad2(wall.getUTCMonth() + 1)}-${pad2(wall.getUTCDate())}` +
    `T${pad2(wall.getUTCHours())}:${pad2(wall.getUTCMinutes())}:${pad2(wall.getUTCSeconds())}` +
    `${millis === 0 ? '' : `.${String(millis).padStart(3, '0')}`}${offset < 0 ? '-' : '+'}${pad2(Math.floor(abs / 60))}:${pad2(abs % 60)}`
  );
}

function pad2(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

/**
 * The zone's offset from UTC at instant `ms`, in minutes. luxon asks Intl for it (about
 * 10 µs); routing asks for it several times per rule, so offsets are kept by zone and
 * 15-minute slot: a slot whose two ends have the same offset has it throughout (no zone
 * changes its offset twice within 15 minutes). Slots with a transition inside, and instants
 * before 1970 (local mean times with odd seconds), are not kept.
 */
export function zoneOffsetMinutes(tz: IANAZone, ms: number): number {
  if (tz.name === 'UTC' || tz.name === 'Etc/UTC') return 0;
  if (!(ms >= 0)) return tz.offset(ms);
  const slot = Math.floor(ms / SLOT_MS);
  const key = `${tz.name}|${slot}`;
  const cached = slotOffsets.get(key);
  if (cached !== undefined) return cached;
  const start = tz.offset(slot * SLOT_MS);
  if (tz.offset(slot * SLOT_MS + SLOT_MS - 1) !== start) return tz.offset(ms);
  if (slotOffsets.size >= MAX_SLOTS) slotOffsets.clear();
  slotOffsets.set(key, start);
  return start;
}

const SLOT_MS = 15 * 60_000;
/** About 100 days of slots for one zone, or a few days each for dozens. */
const MAX_SLOTS = 10_000;
const slotOffsets = new Map<string, number>();

/**
 * The instant a local wall time denotes in the zone, with the gap/overlap rule described at
 * the top of this file. DST transitions are months apart, so the offsets in effect a day
 * before and a day after are the only candidates.
 */
export function instantOfWallTime(zone: IANAZone | string, year: number, month: number, day: number, hour: number, minute: number, second = 0, millisecond = 0): number {
  const tz = typeof zone === 'string' ? zoneOf(zone) : zone;
  const asUtc = Date.UTC(year, month - 1, day, hour, minute, second, millisecond);
  const DAY = 86_400_000;
  const offsetBefore = zoneOffsetMinutes(tz, asUtc - DAY); // minutes
  const offsetAfter = zoneOffsetMinutes(tz, asUtc + DAY);
  const candidates = [...new Set([offsetBefore, offsetAfter])]
    .map((offset) => asUtc - offset * 60_000)
    .filter((t) => zoneOffsetMinutes(tz, t) * 60_000 === asUtc - t);
  // Overlap: two candidates, the first occurrence wins. Gap: none; read the wall time with
  // the offset in effect before the gap, which lands after it by the gap's length.
  return candidates.length > 0 ? Math.min(...candidates) : asUtc - offsetBefore * 60_000;
}

function zoneOf(zone: string): IANAZone {
  if (!isValidZone(zone)) throw new RangeError(`unknown time zone "${zone}" (expected an IANA name like Europe/Paris)`);
  return IANAZone.create(zone);
}
