import { describe, expect, it } from 'vitest';
import { formatInstant } from '../pipeline/schedule.ts';
import { PackedKind, packInstant, packJson, packJsonText, packRaw, unpackInstant, unpackJson, unpackRaw } from './packed-json.ts';
import { instantMs } from './common.ts';

describe('packInstant / unpackInstant', () => {
  it('keeps only the offset of what routing writes (formatInstant), and spells it back exactly', () => {
    const zones = ['UTC', 'Europe/Paris', 'America/New_York', 'Asia/Kolkata', 'Australia/Eucla', 'Pacific/Chatham'];
    const instants = [Date.UTC(2024, 0, 1, 9, 30), Date.UTC(2026, 11, 6, 10, 25, 49, 331), Date.UTC(2030, 2, 31, 1, 0, 0, 5), Date.UTC(1970, 0, 1), Date.UTC(1969, 11, 31, 23, 59, 59, 999)];
    for (const zone of zones) {
      for (const ms of instants) {
        const text = formatInstant(ms, zone);
        const packed = packInstant(text, ms);
        expect(packed).toMatch(/^[+-]\d\d:\d\d$/);
        expect(unpackInstant(packed, ms)).toBe(text);
      }
    }
  });

  it("keeps toISOString's form as Z", () => {
    const ms = Date.UTC(2026, 11, 6, 10, 25, 50, 505);
    expect(packInstant(new Date(ms).toISOString(), ms)).toBe('Z');
    expect(unpackInstant('Z', ms)).toBe('2026-12-06T10:25:50.505Z');
  });

  it('keeps every other form as given: what a sender wrote, other precision, other instants', () => {
    const texts = ['2024-01-01T09:30:00Z', '2024-01-01T09:30:00.000+01:00', '2024-01-01T09:30:00.123456+01:00', '2024-01-01T09:30+01:00', '2024-01-01T09:30:00-00:00', '2024-01-01', '2024-01-01T09:30:00+0100'];
    for (const text of texts) {
      const ms = instantMs(text, 'x');
      expect(packInstant(text, ms)).toBe(text);
      expect(unpackInstant(text, ms)).toBe(text);
    }
    // The same text beside other milliseconds (a row written by hand): kept.
    expect(packInstant('2024-01-01T10:00:00+01:00', Date.UTC(2024, 0, 1, 9, 0, 1))).toBe('2024-01-01T10:00:00+01:00');
    // Outside the years it spells: kept.
    const far = Date.UTC(9999, 11, 31, 12);
    expect(packInstant(new Date(far).toISOString(), far)).toBe(new Date(far).toISOString());
  });
});

describe('packJson / packRaw', () => {
  it('gives back exactly what it packed, also when the packed form spans several output chunks', () => {
    const random = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7919 + (i >> 3) * 104729) % 251));
    for (const size of [0, 100, 2047, 2048, 5000, 100_000]) {
      const raw = random(size);
      expect(unpackRaw(packRaw(raw)).equals(raw)).toBe(true);
      const value = { text: raw.toString('base64') };
      expect(JSON.parse(unpackJson(packJson(PackedKind.Trigger, value)))).toEqual(value);
    }
  });

  it('deflates a recurring state, explanation or decision note once, and hands the same bytes out again', () => {
    const data = { serviceType: 'LOCAL|CHK', locationId: 'CARDIO1', practitionerId: 'DR-22' };
    const first = packJson(PackedKind.State, data);
    expect(packJson(PackedKind.State, { ...data })).toBe(first);
    expect(packJsonText(PackedKind.State, JSON.stringify(data))).toBe(first);
    expect(JSON.parse(unpackJson(first))).toEqual(data);
    expect(packJson(PackedKind.Explanation, [])).toBe(packJson(PackedKind.Explanation, []));
    // Kinds that seldom repeat (a trigger, a delivery) and long values are packed every time.
    expect(packJson(PackedKind.Trigger, data)).not.toBe(packJson(PackedKind.Trigger, data));
    const long = { note: 'x'.repeat(600) };
    expect(packJson(PackedKind.Decision, long)).not.toBe(packJson(PackedKind.Decision, long));
    expect(packJson(PackedKind.Decision, long).equals(packJson(PackedKind.Decision, long))).toBe(true);
  });
});
