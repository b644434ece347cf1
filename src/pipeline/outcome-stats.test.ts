import { describe, expect, it } from 'vitest';
import { MIN_CELL, newcombe, suppressedCells, wilson } from './outcome-stats.ts';

describe('wilson', () => {
  it("gives Newcombe's worked example (Stat. Med. 1998, 17:857): 81/263 → 0.2553 to 0.3662", () => {
    const e = wilson(81, 263)!;
    expect(e.value).toBeCloseTo(0.308, 3);
    expect(e.low).toBeCloseTo(0.2553, 4);
    expect(e.high).toBeCloseTo(0.3662, 4);
  });

  it('stays inside [0, 1] and is not zero-width at 0/n and n/n', () => {
    const none = wilson(0, 10)!;
    expect(none.low).toBe(0);
    expect(none.high).toBeCloseTo(0.2775, 4);
    const all = wilson(10, 10)!;
    expect(all.high).toBe(1);
    expect(all.low).toBeCloseTo(0.7225, 4);
  });

  it('has no proportion without observations, and refuses more events than observations', () => {
    expect(wilson(0, 0)).toBeUndefined();
    expect(() => wilson(5, 4)).toThrow(RangeError);
  });
});

describe('newcombe', () => {
  it("gives Newcombe's worked example (Stat. Med. 1998, 17:873, method 10): 56/70 − 48/80 → 0.0524 to 0.3339", () => {
    const d = newcombe(56, 70, 48, 80)!;
    expect(d.value).toBeCloseTo(0.2, 10);
    expect(d.low).toBeCloseTo(0.0524, 4);
    expect(d.high).toBeCloseTo(0.3339, 4);
  });

  it('is asymmetric around the difference and has none when a sample is empty', () => {
    const d = newcombe(9, 10, 3, 10)!;
    expect(d.high - d.value).not.toBeCloseTo(d.value - d.low, 3);
    expect(newcombe(1, 0, 1, 2)).toBeUndefined();
  });
});

describe('suppressedCells', () => {
  it('withholds counts of 1 to 10, shows 0 and 11', () => {
    expect([...suppressedCells(100, { a: 0, b: 11, c: 10, d: 79 })].sort()).toEqual(['b', 'c']);
    expect(MIN_CELL).toBe(11);
  });

  it('withholds a second part when one alone could be recovered from the total (a non-zero one when there is one)', () => {
    // c = 100 − 60 − 0 − 35 would give it away: b (the smallest shown, non-zero) goes too.
    expect([...suppressedCells(100, { a: 60, b: 35, c: 5, d: 0 })].sort()).toEqual(['b', 'c']);
    // Only zeros left: a zero is withheld.
    expect([...suppressedCells(105, { a: 100, c: 5, d: 0 })].sort()).toEqual(['a', 'c']);
    // Two small parts hide each other.
    expect([...suppressedCells(100, { a: 90, b: 5, c: 5 })].sort()).toEqual(['b', 'c']);
  });

  it('withholds the whole row when its total is below 11', () => {
    expect([...suppressedCells(10, { a: 10, b: 0 })].sort()).toEqual(['a', 'b', 'total']);
    expect(suppressedCells(0, { a: 0 }).size).toBe(0);
  });
});
