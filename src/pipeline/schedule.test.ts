import { describe, expect, it } from 'vitest';
import { DateTime, IANAZone } from 'luxon';
import type { TimeExpr } from './schedule.ts';
import { compileTimeExpr, formatInstant, instantOfWallTime, resolveTime } from './schedule.ts';
import { makeTrigger } from './test-helpers.ts';

const PARIS = 'Europe/Paris';
const NY = 'America/New_York';

function expr(source: string): TimeExpr {
  const { expr: e, issues } = compileTimeExpr(source, ['at']);
  expect(issues).toEqual([]);
  return e!;
}

function at(source: string, start: string, zone: string): string | undefined {
  return resolveTime(expr(source), makeTrigger({ appointment: { start } }), zone);
}

describe('compileTimeExpr', () => {
  it('reads anchors, signed steps with or without spaces, and "at HH:MM"', () => {
    expect(expr('encounter.end + 1d at 10:00')).toEqual({
      source: 'encounter.end + 1d at 10:00',
      anchor: 'encounter.end',
      steps: [{ sign: 1, amount: 1, unit: 'd' }],
      at: { hour: 10, minute: 0 },
    });
    expect(expr('appointment.start -1w +2h -30m').steps).toEqual([
      { sign: -1, amount: 1, unit: 'w' },
      { sign: 1, amount: 2, unit: 'h' },
      { sign: -1, amount: 30, unit: 'm' },
    ]);
    expect(expr('now').steps).toEqual([]);
    expect(expr('occurredAt at 9:05').at).toEqual({ hour: 9, minute: 5 });
  });

  it('gives clear issues with the path', () => {
    const issue = (raw: unknown) => {
      const { expr: e, issues } = compileTimeExpr(raw, [3, 'at']);
      expect(e).toBeUndefined();
      expect(issues).toHaveLength(1);
      expect(issues[0].path).toEqual([3, 'at']);
      return issues[0].message;
    };
    expect(issue('appointment.begin - 1d')).toContain('closest: appointment.end, appointment.start');
    expect(issue('appointment.start - 2 days')).toContain('unknown time unit "days"');
    expect(issue('appointment.start - 1d at 25:00')).toContain('not a time of day');
    expect(issue('appointment.start at 10:00 - 1d')).toContain('not a time expression');
    expect(issue('appointment.start - 5000d')).toContain('out of range');
    expect(issue(24)).toContain('expected a time expression');
  });
});

describe('resolveTime: elapsed hours vs calendar days across DST (Europe/Paris)', () => {
  // Spring forward: 2025-03-30 02:00 → 03:00 (+01:00 → +02:00).
  it('- 1d keeps the wall time across spring forward, - 24h does not', () => {
    expect(at('appointment.start - 1d', '2025-03-31T09:00:00+02:00', PARIS)).toBe('2025-03-30T09:00:00+02:00');
    expect(at('appointment.start - 1d', '2025-03-30T09:00:00+02:00', PARIS)).toBe('2025-03-29T09:00:00+01:00');
    expect(at('appointment.start - 24h', '2025-03-30T09:00:00+02:00', PARIS)).toBe('2025-03-29T08:00:00+01:00');
  });

  // Fall back: 2025-10-26 03:00 → 02:00 (+02:00 → +01:00).
  it('- 1d keeps the wall time across fall back, - 24h does not', () => {
    expect(at('appointment.start - 1d', '2025-10-26T09:00:00+01:00', PARIS)).toBe('2025-10-25T09:00:00+02:00');
    expect(at('appointment.start - 24h', '2025-10-26T09:00:00+01:00', PARIS)).toBe('2025-10-25T10:00:00+02:00');
    expect(at('appointment.start + 1w', '2025-10-20T09:00:00+02:00', PARIS)).toBe('2025-10-27T09:00:00+01:00');
  });

  it('the anchor offset does not matter, the zone does', () => {
    // Same instant written in UTC: the result is in the Paris offset.
    expect(at('appointment.start - 1d', '2025-03-30T07:00:00Z', PARIS)).toBe('2025-03-29T09:00:00+01:00');
  });
});

describe('resolveTime: America/New_York', () => {
  // Spring forward 2025-03-09 02:00 → 03:00; fall back 2025-11-02 02:00 → 01:00.
  it('both transitions', () => {
    expect(at('appointment.start - 1d', '2025-03-10T08:30:00-04:00', NY)).toBe('2025-03-09T08:30:00-04:00');
    expect(at('appointment.start - 1d', '2025-03-09T08:30:00-04:00', NY)).toBe('2025-03-08T08:30:00-05:00');
    expect(at('appointment.start - 24h', '2025-03-09T08:30:00-04:00', NY)).toBe('2025-03-08T07:30:00-05:00');
    expect(at('appointment.start - 1d', '2025-11-02T08:30:00-05:00', NY)).toBe('2025-11-01T08:30:00-04:00');
    expect(at('appointment.start - 24h', '2025-11-02T08:30:00-05:00', NY)).toBe('2025-11-01T09:30:00-04:00');
  });

  it('the same instant gives different local days in different zones', () => {
    // 2025-06-10T03:30Z is June 10 in Paris, June 9 in New York.
    expect(at('appointment.start - 1d at 18:00', '2025-06-10T03:30:00Z', PARIS)).toBe('2025-06-09T18:00:00+02:00');
    expect(at('appointment.start - 1d at 18:00', '2025-06-10T03:30:00Z', NY)).toBe('2025-06-08T18:00:00-04:00');
  });
});

describe('non-existent and ambiguous local times (RFC 5545 rule)', () => {
  it('a wall time in the spring-forward gap moves forward by the gap', () => {
    expect(at('appointment.start - 1d at 02:30', '2025-03-31T10:00:00+02:00', PARIS)).toBe('2025-03-30T03:30:00+02:00');
    expect(at('appointment.start - 1d', '2025-03-31T02:30:00+02:00', PARIS)).toBe('2025-03-30T03:30:00+02:00');
    expect(at('appointment.start - 1d at 02:15', '2025-03-10T10:00:00-04:00', NY)).toBe('2025-03-09T03:15:00-04:00');
  });

  it('an ambiguous wall time takes its first occurrence', () => {
    expect(at('appointment.start - 1d at 02:30', '2025-10-27T10:00:00+01:00', PARIS)).toBe('2025-10-26T02:30:00+02:00');
    // Coming from the day after (winter offset) or the day before (summer offset): same answer.
    expect(at('appointment.start - 1d', '2025-10-27T02:30:00+01:00', PARIS)).toBe('2025-10-26T02:30:00+02:00');
    expect(at('appointment.start + 1d', '2025-10-25T02:30:00+02:00', PARIS)).toBe('2025-10-26T02:30:00+02:00');
    expect(at('appointment.start + 1d at 01:30', '2025-11-01T12:00:00-04:00', NY)).toBe('2025-11-02T01:30:00-04:00');
    expect(instantOfWallTime(NY, 2025, 11, 2, 1, 30)).toBe(Date.parse('2025-11-02T05:30:00Z'));
  });

  it('elapsed steps are exact across transitions', () => {
    expect(at('appointment.start + 2h', '2025-03-30T01:30:00+01:00', PARIS)).toBe('2025-03-30T04:30:00+02:00');
    expect(at('appointment.start + 60m', '2025-10-26T02:30:00+02:00', PARIS)).toBe('2025-10-26T02:30:00+01:00');
  });
});

describe('anchors', () => {
  const trigger = makeTrigger({
    occurredAt: '2025-06-01T09:00:00+02:00',
    receivedAt: '2025-06-01T09:00:07+02:00',
    encounter: { id: 'V1', start: '2025-06-01T08:00:00+02:00', end: '2025-06-03T16:20:00+02:00' },
  });

  it('encounter.end + 1d at 10:00 in the patient zone', () => {
    expect(resolveTime(expr('encounter.end + 1d at 10:00'), trigger, PARIS)).toBe('2025-06-04T10:00:00+02:00');
  });

  it('occurredAt, receivedAt, appointment.end, encounter.start, now', () => {
    expect(resolveTime(expr('occurredAt + 2d'), trigger, PARIS)).toBe('2025-06-03T09:00:00+02:00');
    expect(resolveTime(expr('receivedAt'), trigger, 'UTC')).toBe('2025-06-01T07:00:07+00:00');
    expect(resolveTime(expr('appointment.end - 15m'), trigger, PARIS)).toBe('2025-06-10T14:45:00+02:00');
    expect(resolveTime(expr('encounter.start + 1h'), trigger, PARIS)).toBe('2025-06-01T09:00:00+02:00');
    expect(resolveTime(expr('now + 30m'), trigger, PARIS, '2025-06-01T10:00:00Z')).toBe('2025-06-01T12:30:00+02:00');
  });

  it('undefined when the anchor is absent', () => {
    expect(resolveTime(expr('encounter.end + 1d'), makeTrigger(), PARIS)).toBeUndefined();
    expect(resolveTime(expr('appointment.start - 1d'), makeTrigger({ appointment: null }), PARIS)).toBeUndefined();
  });

  it('an unknown zone is a RangeError', () => {
    expect(() => resolveTime(expr('occurredAt'), trigger, 'Europe/Pariss')).toThrow(RangeError);
  });
});

describe('formatInstant without luxon on the hot path', () => {
  it('writes what luxon writes, across zones, DST transitions and odd offsets', () => {
    const zones = ['UTC', 'Europe/Paris', 'America/New_York', 'Asia/Kathmandu', 'Australia/Lord_Howe', 'America/St_Johns', 'Pacific/Chatham', 'Europe/Dublin'];
    // Compared with luxon as routing used it (an IANA zone: UTC is +00:00, not Z). Every 37 minutes and 13.5 seconds across two years: lands on both sides of every transition.
    const step = 37 * 60_000 + 13_500;
    for (const zone of zones) {
      for (let t = Date.parse('2024-01-01T00:00:00Z'); t < Date.parse('2026-01-01T00:00:00Z'); t += step) {
        const expected = DateTime.fromMillis(t, { zone: IANAZone.create(zone) }).toISO({ suppressMilliseconds: true });
        if (formatInstant(t, zone) !== expected) expect(formatInstant(t, zone)).toBe(expected);
      }
    }
    // Before 1970 (local mean time, offsets in seconds): luxon's own answer.
    expect(formatInstant(Date.parse('1890-06-01T12:00:00Z'), 'Europe/Paris')).toBe(DateTime.fromMillis(Date.parse('1890-06-01T12:00:00Z'), { zone: IANAZone.create('Europe/Paris') }).toISO({ suppressMilliseconds: true }));
  });
});
