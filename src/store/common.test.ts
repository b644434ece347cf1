import { describe, expect, it } from 'vitest';
import { MessageStatus } from '../types.ts';
import { DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, compactDelivery, compactDeliveryUnspelled, counterValue, expandDeliveryJson, instantMs, listLimit, rawQuotaPlan } from './common.ts';
import { testDelivery } from './conformance.ts';
import { RAW_QUOTA_CURSOR } from './store.ts';

describe('instantMs', () => {
  it('compares instants across offsets', () => {
    expect(instantMs('2024-01-01T10:00:00+02:00', 'x')).toBe(Date.UTC(2024, 0, 1, 8));
    expect(instantMs('2024-01-01T09:30:00Z', 'x')).toBe(Date.UTC(2024, 0, 1, 9, 30));
    expect(instantMs('2024-01-01T09:30:00-01:00', 'x')).toBe(Date.UTC(2024, 0, 1, 10, 30));
  });

  it('keeps milliseconds, drops finer digits, and accepts minutes-only and compact offsets', () => {
    expect(instantMs('2024-01-01T10:00:00.123456+02:00', 'x')).toBe(Date.UTC(2024, 0, 1, 8, 0, 0, 123));
    expect(instantMs('2024-01-01T10:00+02:00', 'x')).toBe(Date.UTC(2024, 0, 1, 8));
    expect(instantMs('2024-01-01T10:00:00+0200', 'x')).toBe(Date.UTC(2024, 0, 1, 8));
  });

  it('reads a value without a zone, or a bare date, as UTC (never the host zone)', () => {
    expect(instantMs('2024-01-01T10:00:00', 'x')).toBe(Date.UTC(2024, 0, 1, 10));
    expect(instantMs('2024-01-01', 'x')).toBe(Date.UTC(2024, 0, 1));
  });

  it('refuses impossible dates and non-ISO text, naming the field', () => {
    expect(() => instantMs('2024-02-30T10:00:00Z', 'asOf')).toThrow(/asOf must be an ISO 8601 instant/);
    expect(() => instantMs('2024-02-30T23:30:00-05:00', 'asOf')).toThrow(/asOf/);
    expect(() => instantMs('yesterday', 'since')).toThrow(/since .*"yesterday"/);
    expect(() => instantMs('', 'until')).toThrow(/until/);
  });

  it('accepts the last day of a month in a negative offset (the UTC date is the next day)', () => {
    expect(instantMs('2024-02-29T23:30:00-05:00', 'x')).toBe(Date.UTC(2024, 2, 1, 4, 30));
  });
});

describe('listLimit', () => {
  it('defaults, caps and refuses nonsense', () => {
    expect(listLimit(undefined)).toBe(DEFAULT_LIST_LIMIT);
    expect(listLimit(5)).toBe(5);
    expect(listLimit(MAX_LIST_LIMIT + 1)).toBe(MAX_LIST_LIMIT);
    expect(() => listLimit(0)).toThrow(/limit/);
    expect(() => listLimit(2.5)).toThrow(/limit/);
    expect(() => listLimit(Number.NaN)).toThrow(/limit/);
  });
});

describe('rawQuotaPlan', () => {
  const quota = { account: 'sender:EPIC^A', totalBytes: 250, perSenderBytes: 150, keepBytes: 10 };

  it('applies to rows stored rejected or quarantined only', () => {
    expect(rawQuotaPlan(quota, MessageStatus.Accepted)).toBeUndefined();
    expect(rawQuotaPlan(quota, MessageStatus.Ignored)).toBeUndefined();
    expect(rawQuotaPlan(undefined, MessageStatus.Rejected)).toBeUndefined();
    expect(rawQuotaPlan(quota, MessageStatus.Quarantined)?.counters).toEqual([RAW_QUOTA_CURSOR, `${RAW_QUOTA_CURSOR}:sender:EPIC^A`]);
  });

  it('keeps whole within both limits, counting; past either, the first keepBytes; small rows always whole', () => {
    const { decide } = rawQuotaPlan(quota, MessageStatus.Rejected)!;
    expect(decide([0, 0], 100)).toEqual({ whole: true, counters: ['100', '100'] });
    expect(decide([100, 100], 100)).toEqual({ whole: false, keep: 10 }); // per sender: 200 > 150
    expect(decide([200, 0], 100)).toEqual({ whole: false, keep: 10 }); // total: 300 > 250
    expect(decide([200, 100], 10)).toEqual({ whole: true, counters: ['210', '110'] });
    expect(decide([150, 50], 100)).toEqual({ whole: true, counters: ['250', '150'] }); // exactly at both limits
  });

  it('reads an absent or foreign counter as 0', () => {
    expect(counterValue(undefined)).toBe(0);
    expect(counterValue('x')).toBe(0);
    expect(counterValue('-5')).toBe(0);
    expect(counterValue('42')).toBe(42);
  });
});

describe('compactDeliveryUnspelled / expandDeliveryJson', () => {
  const columnsOf = (d: ReturnType<typeof testDelivery>) => ({ id: d.id, rule: d.ruleId, subject: d.subjectKey, patient_id: d.patientId });

  it('leaves out the subject kind, subject id and step its id spells, and puts them back in their place', () => {
    const d = testDelivery({ appointmentId: 'A 1/#2@x' });
    const json = JSON.stringify(compactDeliveryUnspelled(d));
    expect(json).not.toMatch(/"subjectKind"|"subjectId"|"step"/);
    const read = expandDeliveryJson(json, columnsOf(d));
    expect(read).toEqual(d);
    expect(Object.keys(read).slice(0, 7)).toEqual(['id', 'ruleId', 'subjectKey', 'patientId', 'subjectKind', 'subjectId', 'step']);
  });

  it('keeps them when the id does not spell them, and reads JSON written with them the same', () => {
    const odd = { ...testDelivery(), id: 'imported-1' };
    const json = JSON.stringify(compactDeliveryUnspelled(odd));
    expect(json).toMatch(/"subjectKind":"appointment","subjectId":"APT-1","step":0/);
    expect(expandDeliveryJson(json, columnsOf(odd))).toEqual(odd);
    const stepped = { ...testDelivery(), step: 2 };
    expect(expandDeliveryJson(JSON.stringify(compactDeliveryUnspelled(stepped)), columnsOf(stepped))).toEqual(stepped);
  });

  it('compactDelivery (what PostgreSQL keeps, read by versions before) still holds them', () => {
    const d = testDelivery();
    const json = JSON.stringify(compactDelivery(d));
    expect(json).toMatch(/"subjectKind":"appointment","subjectId":"APT-1","step":0/);
    expect(expandDeliveryJson(json, columnsOf(d))).toEqual(d);
  });
});
