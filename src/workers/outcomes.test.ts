import { describe, expect, it } from 'vitest';
import { testTrigger } from '../store/conformance.ts';
import type { Trigger } from '../types.ts';
import { outcomeCsv, outcomeOf, outcomeReport, periodOf } from './outcomes.ts';

const START = '2026-03-10T10:00:00Z';
const at = (type: Trigger['type'], occurredAt: string, start = START): Trigger =>
  testTrigger({ id: `${type}-${occurredAt}`, type, occurredAt, appointment: { id: 'A1', start } });

describe('outcomeOf: how an appointment ended', () => {
  it('is its latest status trigger: checked in and fulfilled are one showing, a noshow after all is a noshow', () => {
    expect(outcomeOf([at('appointment.booked', '2026-03-01T08:00:00Z'), at('appointment.checked_in', '2026-03-10T09:50:00Z')])?.kind).toBe('showed');
    expect(outcomeOf([at('appointment.fulfilled', '2026-03-10T11:00:00Z'), at('appointment.checked_in', '2026-03-10T09:50:00Z')])?.kind).toBe('showed');
    expect(outcomeOf([at('appointment.checked_in', '2026-03-10T09:50:00Z'), at('appointment.noshow', '2026-03-10T12:00:00Z')])?.kind).toBe('noshow');
    // A modification says nothing about how it ended.
    expect(outcomeOf([at('appointment.noshow', '2026-03-10T12:00:00Z'), at('appointment.modified', '2026-03-10T13:00:00Z')])?.kind).toBe('noshow');
  });

  it('counts a cancellation 24 h or more ahead as advance, a minute less as late', () => {
    expect(outcomeOf([at('appointment.cancelled', '2026-03-09T10:00:00Z')])?.kind).toBe('cancelled_advance');
    expect(outcomeOf([at('appointment.cancelled', '2026-03-09T10:01:00Z')])?.kind).toBe('cancelled_late');
    // The start the cancellation names; else the latest one known before it.
    const moved = [at('appointment.rescheduled', '2026-03-02T08:00:00Z', '2026-03-20T10:00:00Z'), testTrigger({ id: 'c', type: 'appointment.cancelled', occurredAt: '2026-03-18T10:00:00Z', appointment: { id: 'A1' } })];
    expect(outcomeOf(moved)?.kind).toBe('cancelled_advance');
  });

  it('has none while the appointment is taken up again, deleted, or without a start', () => {
    expect(outcomeOf([at('appointment.cancelled', '2026-03-05T10:00:00Z'), at('appointment.booked', '2026-03-06T10:00:00Z')])).toBeUndefined();
    expect(outcomeOf([at('appointment.fulfilled', '2026-03-10T11:00:00Z'), at('appointment.deleted', '2026-03-11T10:00:00Z')])).toBeUndefined();
    expect(outcomeOf([testTrigger({ id: 'n', type: 'appointment.noshow', appointment: { id: 'A1' } })])).toBeUndefined();
  });
});

describe('periodOf', () => {
  it('gives the first day of the day, ISO week (Monday) or month', () => {
    expect(periodOf('2026-03-15', 'day')).toBe('2026-03-15');
    expect(periodOf('2026-03-15', 'week')).toBe('2026-03-09'); // a Sunday belongs to the week begun on Monday
    expect(periodOf('2026-03-16', 'week')).toBe('2026-03-16');
    expect(periodOf('2027-01-01', 'week')).toBe('2026-12-28');
    expect(periodOf('2026-03-15', 'month')).toBe('2026-03-01');
    expect(periodOf('2026-03-15', undefined)).toBeNull();
  });
});

describe('outcomeReport', () => {
  const count = (variant: string | undefined, holdout: boolean, outcome: 'showed' | 'noshow', n: number) => ({ rule: 'r', ...(variant ? { variant } : {}), holdout, day: '2026-03-10', outcome, count: n, sent: holdout ? 0 : n });

  it('compares every arm with the holdout when there is one; a rule with one arm compares nothing', () => {
    const report = outcomeReport([count('b', false, 'showed', 30), count('a', false, 'showed', 20), count(undefined, true, 'showed', 10), count(undefined, true, 'noshow', 10)], {});
    expect(report.items.map((r) => [r.holdout, r.variant, r.comparedTo])).toEqual([
      [true, null, null],
      [false, 'a', { variant: null, holdout: true }],
      [false, 'b', { variant: null, holdout: true }],
    ]);
    expect(report.items[1]!.difference!.showRate!.value).toBeCloseTo(0.5, 10);
    const single = outcomeReport([{ ...count(undefined, false, 'showed', 5), rule: 'solo' }], {});
    expect(single.items[0]).toMatchObject({ comparedTo: null, difference: null, appointments: 5, showRate: { value: 1 } });
  });

  it('writes RFC 4180 CSV with text fields defused against spreadsheet formulas', () => {
    const csv = outcomeCsv(outcomeReport([{ rule: '=cmd', holdout: false, day: '2026-03-10', outcome: 'showed', count: 40, sent: 40 }], {}));
    const [, line] = csv.split('\r\n');
    expect(line!.startsWith("'=cmd,,false,,40,40,40,0,0,0,1.0000,")).toBe(true);
  });
});
