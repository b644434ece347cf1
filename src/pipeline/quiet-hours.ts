// Quiet hours (docs/consent.md rule 7 and "Precise semantics"): when a message may go, in the
// patient's zone. Pure: instants in epoch ms, the zone and the window passed in.
//
//   allowed window   [start, end) local, e.g. [08:00, 21:00): 20:59 is the latest minute
//   care.logistics   due in quiet hours → the latest allowed minute after now and before the
//                    due time, if that is at least one hour before the appointment; else the
//                    next allowed time if it is before `expires`; else `expired`
//   other purposes   the next allowed time, unless that is at or after `expires` (`expired`)
//
// Moving *earlier* needs a timer that fires before the due time, so routing applies it when it
// plans the delivery (pipeline/route.ts, `now` = routing time); at send time (`now` ≈ due) only
// the later moves remain, and they are recorded as `quiet_hours` decisions with their retryAt.
// Local times go through schedule.ts's wall-time rule (a DST gap moves forward, an overlap
// takes the first occurrence), so 08:00 is 08:00 on both sides of a DST change.
import { DateTime } from 'luxon';
import type { Channel, Purpose } from '../types.ts';
import { minutesOfDay, type QuietHours } from './policy.ts';
import { instantOfWallTime } from './schedule.ts';

const MINUTE = 60_000;
const HOUR = 3_600_000;

export interface QuietHoursQuestion {
  purpose: Purpose;
  channel: Channel;
  /** When the message is due (epoch ms). */
  due: number;
  /** The current time: routing time at planning, the send attempt's time at send time. */
  now: number;
  /** The appointment the message is about, if any: a logistics move stays an hour before it. */
  appointmentStart?: number;
  /** Never send at or after this. */
  expires?: number;
  /** The patient's zone. */
  zone: string;
}

export type QuietHoursAnswer =
  /** Outside quiet hours (or not a channel they apply to): send at `at` (= max(now, due)). */
  | { kind: 'send'; at: number }
  /** In quiet hours: send at `at` instead (earlier for logistics, else later). */
  | { kind: 'move'; at: number }
  /** No allowed time before it stops being useful. */
  | { kind: 'expired' };

/** Whether quiet hours apply to a channel (webhook and CRM never, whatever the settings say). */
export function quietHoursApply(window: QuietHours, channel: Channel): boolean {
  return (channel === 'sms' || channel === 'email') && window.channels.includes(channel);
}

/** Whether the instant falls inside the allowed window, in the zone. */
export function isAllowedTime(window: QuietHours, at: number, zone: string): boolean {
  const start = minutesOfDay(window.start)!;
  const end = minutesOfDay(window.end)!;
  const local = DateTime.fromMillis(at, { zone });
  const minute = local.hour * 60 + local.minute;
  // A window that wraps midnight (start after end, e.g. 22:00–06:00 night shifts) is allowed too.
  return start <= end ? minute >= start && minute < end : minute >= start || minute < end;
}

/** The first allowed minute at or after `from`. */
export function nextAllowedTime(window: QuietHours, from: number, zone: string): number {
  if (isAllowedTime(window, from, zone)) return from;
  const start = minutesOfDay(window.start)!;
  // Today's start, else tomorrow's (two candidates are enough: a day has one window start).
  for (let days = 0; days <= 2; days++) {
    const day = DateTime.fromMillis(from, { zone }).plus({ days });
    const t = instantOfWallTime(zone, day.year, day.month, day.day, Math.floor(start / 60), start % 60);
    if (t >= from) return t;
  }
  return from; // unreachable with a valid window
}

/** The latest allowed minute strictly before `before` (its window's last minute), if any in two days. */
export function latestAllowedBefore(window: QuietHours, before: number, zone: string): number | undefined {
  const end = minutesOfDay(window.end)!;
  for (let days = 0; days >= -2; days--) {
    const day = DateTime.fromMillis(before, { zone }).plus({ days });
    // The window's last minute: one minute before its end, as a wall time.
    const last = instantOfWallTime(zone, day.year, day.month, day.day, Math.floor(end / 60), end % 60) - MINUTE;
    if (last < before && isAllowedTime(window, last, zone)) return last;
  }
  return undefined;
}

/** When a message due at `due` may go under quiet hours (see the top of this file). */
export function quietHours(window: QuietHours, q: QuietHoursQuestion): QuietHoursAnswer {
  const from = Math.max(q.now, q.due);
  if (!quietHoursApply(window, q.channel) || isAllowedTime(window, from, q.zone)) {
    return q.expires !== undefined && from >= q.expires ? { kind: 'expired' } : { kind: 'send', at: from };
  }
  if (q.purpose === 'care.logistics') {
    const earlier = latestAllowedBefore(window, q.due, q.zone);
    const useful = q.appointmentStart === undefined || (earlier !== undefined && earlier <= q.appointmentStart - HOUR);
    if (earlier !== undefined && earlier > q.now && useful) return { kind: 'move', at: earlier };
  }
  const next = nextAllowedTime(window, from, q.zone);
  if (q.expires !== undefined && next >= q.expires) return { kind: 'expired' };
  return { kind: 'move', at: next };
}
