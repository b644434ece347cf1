import { describe, expect, it } from 'vitest';
import { isAllowedTime, latestAllowedBefore, nextAllowedTime, quietHours } from './quiet-hours.ts';

const window = { start: '08:00', end: '21:00', channels: ['sms' as const] };
const PARIS = 'Europe/Paris';
const t = (iso: string) => Date.parse(iso);
const iso = (ms: number) => new Date(ms).toISOString();

describe('quiet hours [08:00, 21:00) local', () => {
  it('20:59 is the latest allowed minute and 21:00 is quiet; 08:00 is allowed, 07:59 is not', () => {
    expect(isAllowedTime(window, t('2025-06-10T20:59:00+02:00'), PARIS)).toBe(true);
    expect(isAllowedTime(window, t('2025-06-10T21:00:00+02:00'), PARIS)).toBe(false);
    expect(isAllowedTime(window, t('2025-06-10T08:00:00+02:00'), PARIS)).toBe(true);
    expect(isAllowedTime(window, t('2025-06-10T07:59:59+02:00'), PARIS)).toBe(false);
  });

  it('finds the next allowed time and the latest allowed minute before an instant', () => {
    expect(iso(nextAllowedTime(window, t('2025-06-10T22:15:00+02:00'), PARIS))).toBe('2025-06-11T06:00:00.000Z');
    expect(iso(nextAllowedTime(window, t('2025-06-10T06:15:00+02:00'), PARIS))).toBe('2025-06-10T06:00:00.000Z');
    expect(iso(latestAllowedBefore(window, t('2025-06-10T22:15:00+02:00'), PARIS)!)).toBe('2025-06-10T18:59:00.000Z');
    expect(iso(latestAllowedBefore(window, t('2025-06-10T07:00:00+02:00'), PARIS)!)).toBe('2025-06-09T18:59:00.000Z');
  });

  it('keeps 08:00 local across the DST change (Paris, 30 March 2025)', () => {
    expect(iso(nextAllowedTime(window, t('2025-03-29T23:00:00+01:00'), PARIS))).toBe('2025-03-30T06:00:00.000Z'); // 08:00+02:00
    expect(iso(nextAllowedTime(window, t('2025-10-25T23:00:00+02:00'), PARIS))).toBe('2025-10-26T07:00:00.000Z'); // 08:00+01:00
  });

  it('a care.logistics message due at 22:00 moves to 20:59 when planned in time and at least 1 h before the visit', () => {
    const q = { purpose: 'care.logistics' as const, channel: 'sms' as const, zone: PARIS, appointmentStart: t('2025-06-11T22:00:00+02:00') };
    expect(quietHours(window, { ...q, due: t('2025-06-10T22:00:00+02:00'), now: t('2025-06-01T09:00:00+02:00') })).toEqual({ kind: 'move', at: t('2025-06-10T20:59:00+02:00') });
    // At send time (now = due) nothing earlier is left: the next allowed time, before expiry.
    const late = { ...q, due: t('2025-06-10T22:00:00+02:00'), now: t('2025-06-10T22:00:00+02:00') };
    expect(quietHours(window, { ...late, expires: t('2025-06-11T20:00:00+02:00') })).toEqual({ kind: 'move', at: t('2025-06-11T08:00:00+02:00') });
    expect(quietHours(window, { ...late, expires: t('2025-06-11T07:00:00+02:00') })).toEqual({ kind: 'expired' });
  });

  it('does not move a logistics message earlier to less than an hour before the appointment', () => {
    // Appointment at 21:30: 20:59 is 31 minutes before it, too late to be useful; the next allowed time is after it.
    const q = { purpose: 'care.logistics' as const, channel: 'sms' as const, zone: PARIS, due: t('2025-06-10T21:10:00+02:00'), now: t('2025-06-10T09:00:00+02:00') };
    expect(quietHours(window, { ...q, appointmentStart: t('2025-06-10T21:30:00+02:00'), expires: t('2025-06-10T21:30:00+02:00') })).toEqual({ kind: 'expired' });
    expect(quietHours(window, { ...q, appointmentStart: t('2025-06-11T09:30:00+02:00') })).toEqual({ kind: 'move', at: t('2025-06-10T20:59:00+02:00') });
  });

  it('other purposes move to the next allowed time, or expire at or after expires', () => {
    const q = { purpose: 'survey' as const, channel: 'sms' as const, zone: PARIS, due: t('2025-06-10T23:30:00+02:00'), now: t('2025-06-10T23:30:00+02:00') };
    expect(quietHours(window, q)).toEqual({ kind: 'move', at: t('2025-06-11T08:00:00+02:00') });
    expect(quietHours(window, { ...q, expires: t('2025-06-11T08:00:00+02:00') })).toEqual({ kind: 'expired' });
  });

  it('applies only to its channels: email and webhooks go at night unless email is listed', () => {
    const q = { purpose: 'survey' as const, due: t('2025-06-10T23:30:00+02:00'), now: t('2025-06-10T23:30:00+02:00'), zone: PARIS };
    expect(quietHours(window, { ...q, channel: 'email' }).kind).toBe('send');
    expect(quietHours(window, { ...q, channel: 'webhook' }).kind).toBe('send');
    expect(quietHours({ ...window, channels: ['sms', 'email'] }, { ...q, channel: 'email' }).kind).toBe('move');
  });

  it('a message created after its due time is due now (quiet hours still apply)', () => {
    const q = { purpose: 'care.followup' as const, channel: 'sms' as const, zone: PARIS, due: t('2025-06-10T12:00:00+02:00'), now: t('2025-06-10T23:00:00+02:00') };
    expect(quietHours(window, q)).toEqual({ kind: 'move', at: t('2025-06-11T08:00:00+02:00') });
  });
});
