import { describe, expect, it } from 'vitest';
import { CallWindow, DailyQuota, Slots } from './call-limits.ts';

/** At most `burst` of `times` (sorted) in any window [t, t + windowMs). */
function maxInWindow(times: readonly number[], windowMs: number): number {
  let most = 0;
  for (let i = 0, j = 0; i < times.length; i++) {
    while (times[i]! - times[j]! >= windowMs) j++;
    most = Math.max(most, i - j + 1);
  }
  return most;
}

/** A small deterministic generator in [0, 1). */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1_664_525) + 1_013_904_223) >>> 0;
    return s / 2 ** 32;
  };
}

describe('CallWindow', () => {
  it('lets a burst go at once, then reserves times so no window holds more than the burst', () => {
    const w = new CallWindow(5, 5);
    expect(w.windowMs).toBe(1_000);
    const times = Array.from({ length: 12 }, (_, i) => w.take(0, `job-${i}`));
    expect(times).toEqual([0, 0, 0, 0, 0, 1_000, 1_000, 1_000, 1_000, 1_000, 2_000, 2_000]);
    expect(maxInWindow(times, 1_000)).toBe(5);
  });

  it('gives a job that comes back at its reserved time that time, and the next newcomer a later one', () => {
    const w = new CallWindow(5, 5);
    for (let i = 0; i < 5; i++) w.take(0, `now-${i}`);
    expect(w.take(0, 'late')).toBe(1_000);
    expect(w.take(400, 'other')).toBe(1_000);
    expect(w.take(1_000, 'late')).toBe(1_000);
    expect(w.countBetween(1_000, 2_000)).toBe(2);
  });

  it('reads "100 per 10 s" as a sliding window of 10 s, not 100 plus 10 per second', () => {
    const w = new CallWindow(10, 100);
    expect(w.windowMs).toBe(10_000);
    const times = Array.from({ length: 250 }, (_, i) => w.take(i * 10, `j${i}`));
    expect(maxInWindow([...times].sort((a, b) => a - b), 10_000)).toBe(100);
    expect(times.filter((t) => t < 10_000)).toHaveLength(100);
  });

  it('keeps the limit whatever order and lateness the jobs come back in', () => {
    const random = lcg(7);
    const w = new CallWindow(5, 5);
    const made: number[] = [];
    // 300 jobs arrive over 20 s; each comes back at (or after) the time it was given until it goes.
    let pending = Array.from({ length: 300 }, (_, i) => ({ key: `k${i}`, at: Math.floor(random() * 20_000) }));
    for (let round = 0; round < 1_000 && pending.length > 0; round++) {
      pending.sort((a, b) => a.at - b.at);
      const next = pending.shift()!;
      const now = next.at;
      const given = w.take(now, next.key);
      if (given === now) {
        made.push(now);
        // A few calls are suppressed after all: their tokens come back.
        if (random() < 0.1) {
          w.refund(now);
          made.pop();
        }
      } else pending.push({ key: next.key, at: given + (random() < 0.3 ? Math.floor(random() * 700) : 0) });
    }
    expect(pending).toEqual([]);
    expect(made.length).toBeGreaterThan(250);
    expect(maxInWindow(made.sort((a, b) => a - b), 1_000)).toBeLessThanOrEqual(5);
  });

  it('draws callsPerSend tokens per send', () => {
    const w = new CallWindow(5, 5);
    expect([w.take(0, 'a', 2), w.take(0, 'b', 2), w.take(0, 'c', 2)]).toEqual([0, 0, 1_000]);
  });

  it('gives back the tokens of a call that was not made', () => {
    const w = new CallWindow(1, 1);
    expect(w.take(0, 'a')).toBe(0);
    w.refund(0);
    expect(w.take(10, 'b')).toBe(10);
    // A reservation made meanwhile stays: what goes now must not crowd it.
    expect(w.take(20, 'c')).toBe(1_010);
    w.refund(10);
    expect(w.take(30, 'd')).toBe(2_010);
  });

  it("after a provider's 429: nothing before its Retry-After, then half the rate, recovering a minute later", () => {
    const w = new CallWindow(5, 5);
    w.take(0, 'a');
    w.slowDown(100, 5_000);
    expect(w.take(200, 'b')).toBe(5_000);
    expect(w.windowMs).toBe(2_000);
    expect(w.rateFactor).toBe(0.5);
    w.take(70_000, 'c');
    expect(w.rateFactor).toBe(1);
  });
});

describe('DailyQuota', () => {
  it('counts calls per UTC day and gives the next day when full', () => {
    const q = new DailyQuota(3);
    const day = Date.parse('2030-01-07T00:00:00Z');
    expect([q.take(day + 1), q.take(day + 2, 2), q.take(day + 3)]).toEqual([true, true, false]);
    q.refund(day + 4);
    expect(q.take(day + 5)).toBe(true);
    expect(q.used(day + 6)).toBe(3);
    expect(DailyQuota.nextDay(day + 7)).toBe(day + 86_400_000);
    expect(q.take(day + 86_400_000)).toBe(true);
    expect(q.used(day + 86_400_000)).toBe(1);
  });
});

describe('Slots', () => {
  it('hands a freed slot to the delivery waiting for it', async () => {
    const slots = new Slots(2);
    const a = await slots.acquire();
    const b = await slots.acquire();
    expect(slots.inFlight).toBe(2);
    const waiting = slots.acquire();
    expect(slots.waiting).toBe(1);
    a!.release();
    const c = await waiting;
    expect(c).toBeDefined();
    expect(slots.inFlight).toBe(2);
    b!.release();
    c!.release();
    c!.release(); // a second release changes nothing
    expect(slots.inFlight).toBe(0);
  });

  it('answers at once when its caller is stopping, and after the wait limit when no slot frees', async () => {
    const slots = new Slots(1);
    const held = await slots.acquire();
    const stop = new AbortController();
    stop.abort();
    expect(await slots.acquire(stop.signal)).toBeUndefined();
    expect(await slots.acquire()).toBeUndefined();
    expect(slots.waiting).toBe(0);
    held!.release();
    expect(slots.inFlight).toBe(0);
  });
});
