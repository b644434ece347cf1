import { describe, expect, it } from 'vitest';
import { addMinutes, hl7Date, hl7Instant, instantMs, minutesBetween } from './hl7-time.ts';

describe('hl7Instant (docs/trigger.md "Times")', () => {
  it('keeps the sender offset and the precision', () => {
    expect(hl7Instant('20210924093000+0215', 'UTC')).toBe('2021-09-24T09:30:00+02:15');
    expect(hl7Instant('20210817151943.4+0200', 'UTC')).toBe('2021-08-17T15:19:43.4+02:00');
    expect(hl7Instant('20210817151943.1234-0500', 'UTC')).toBe('2021-08-17T15:19:43.1234-05:00');
    expect(hl7Instant('20260101000000+0000', 'Europe/Paris')).toBe('2026-01-01T00:00:00+00:00');
  });

  it('writes minutes-only values with :00 seconds', () => {
    expect(hl7Instant('202109141120+0215', 'UTC')).toBe('2021-09-14T11:20:00+02:15');
    expect(hl7Instant('2021091411-0330', 'UTC')).toBe('2021-09-14T11:00:00-03:30');
  });

  it('reads a value without offset in the sender zone, never the host zone', () => {
    expect(hl7Instant('200803061000', 'UTC')).toBe('2008-03-06T10:00:00+00:00');
    expect(hl7Instant('20260325180000', 'Europe/Paris')).toBe('2026-03-25T18:00:00+01:00');
    expect(hl7Instant('20260330093000', 'Europe/Paris')).toBe('2026-03-30T09:30:00+02:00');
    expect(hl7Instant('20260701093000', 'America/New_York')).toBe('2026-07-01T09:30:00-04:00');
  });

  it('moves a wall-clock time inside a DST gap forward so time and offset agree', () => {
    // 2026-03-29 02:30 does not exist in Paris (clocks jump 02:00 → 03:00).
    expect(hl7Instant('20260329023000', 'Europe/Paris')).toBe('2026-03-29T03:30:00+02:00');
  });

  it('turns a date-only value into midnight in the sender zone (or at its offset)', () => {
    expect(hl7Instant('20260220', 'UTC')).toBe('2026-02-20T00:00:00+00:00');
    expect(hl7Instant('20260720', 'Europe/Paris')).toBe('2026-07-20T00:00:00+02:00');
    expect(hl7Instant('20260720+0530', 'Europe/Paris')).toBe('2026-07-20T00:00:00+05:30');
    expect(hl7Instant('202607', 'UTC')).toBe('2026-07-01T00:00:00+00:00');
    expect(hl7Instant('2026', 'UTC')).toBe('2026-01-01T00:00:00+00:00');
  });

  it('ignores surrounding spaces (vendor SCH-11.4 "200803061000 ")', () => {
    expect(hl7Instant('200803061000 ', 'UTC')).toBe('2008-03-06T10:00:00+00:00');
  });

  it('rejects what is not an HL7 timestamp', () => {
    for (const bad of ['', 'abc', '202113', '20210230', '20210924250000', '202109240960', '2021092409300', '20210924093000+25', '20210924.5', '20210924093000+02x0', '2021-09-24']) {
      expect(hl7Instant(bad, 'UTC'), bad).toBeUndefined();
    }
  });

  it('accepts the +HH:MM and Z offsets some senders use', () => {
    expect(hl7Instant('20210924093000+02:00', 'Europe/Paris')).toBe('2021-09-24T09:30:00+02:00');
    expect(hl7Instant('20210924093000Z', 'Europe/Paris')).toBe('2021-09-24T09:30:00+00:00');
  });
});

describe('hl7Date (birth dates)', () => {
  it('is YYYY-MM-DD, ignoring time and offset; shorter precision is kept', () => {
    expect(hl7Date('198808181126+0215')).toBe('1988-08-18');
    expect(hl7Date('19610615')).toBe('1961-06-15');
    expect(hl7Date('196106')).toBe('1961-06');
    expect(hl7Date('1961')).toBe('1961');
    expect(hl7Date('19611345')).toBeUndefined();
  });
});

describe('arithmetic on instants', () => {
  it('adds minutes at the same offset and precision', () => {
    expect(addMinutes('2026-03-20T14:00:00-05:00', 90)).toBe('2026-03-20T15:30:00-05:00');
    expect(addMinutes('2026-12-31T23:50:00+01:00', 20)).toBe('2027-01-01T00:10:00+01:00');
    expect(addMinutes('2021-08-17T15:19:43.4+02:00', 1)).toBe('2021-08-17T15:20:43.4+02:00');
  });

  it('compares instants across offsets', () => {
    expect(instantMs('2021-09-24T09:30:00+02:15')).toBe(Date.UTC(2021, 8, 24, 7, 15));
    expect(instantMs('2021-08-17T15:19:43.4+02:00')).toBe(Date.UTC(2021, 7, 17, 13, 19, 43, 400));
    expect(instantMs('2021-09-24T07:15:00Z')).toBe(Date.UTC(2021, 8, 24, 7, 15));
    expect(minutesBetween('2021-09-24T09:30:00+02:15', '2021-09-24T09:05:00+01:00')).toBe(50);
  });
});
