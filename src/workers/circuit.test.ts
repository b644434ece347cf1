import { describe, expect, it } from 'vitest';
import { CircuitBreaker, type CircuitSnapshot, type CircuitState } from './circuit.ts';

const SETTINGS = { failures: 3, failureRate: 0.5, window: 10, openMs: 30_000, maxOpenMs: 100_000 };

function breaker(random = () => 0.5) {
  const changes: Array<{ state: CircuitState; snapshot: CircuitSnapshot }> = [];
  const b = new CircuitBreaker(SETTINGS, 0, (state, snapshot) => changes.push({ state, snapshot }), random);
  return { b, changes };
}

describe('CircuitBreaker', () => {
  it('opens after N failures in a row; waiting deliveries are spread over the next period', () => {
    const { b, changes } = breaker();
    b.record(1, 'a', true, 'webhook_timeout');
    b.record(2, 'b', false);
    b.record(3, 'c', true, 'webhook_timeout');
    b.record(4, 'd', true, 'webhook_timeout');
    expect(b.state).toBe('closed');
    b.record(5, 'e', true, 'webhook_unavailable');
    expect(b.state).toBe('open');
    expect(changes).toEqual([{ state: 'open', snapshot: expect.objectContaining({ failuresInARow: 3, lastError: 'webhook_unavailable', openUntil: new Date(30_005).toISOString() }) }]);
    expect(b.admit(10, 'f')).toEqual({ go: false, retryAt: 30_005 + 15_000 });
  });

  it('opens on the failure rate over the last calls, once the window is full', () => {
    const { b } = breaker();
    for (let i = 0; i < 9; i++) b.record(i, `k${i}`, i % 2 === 0, 'x');
    expect(b.state).toBe('closed');
    b.record(9, 'k9', false);
    expect(b.state).toBe('open');
  });

  it('lets one probe through after the open period: its success closes, its failure reopens for twice as long', () => {
    const { b, changes } = breaker();
    for (let i = 0; i < 3; i++) b.record(0, `k${i}`, true, 'x');
    expect(b.admit(30_000, 'probe')).toEqual({ go: true, probe: true });
    expect(b.state).toBe('half_open');
    expect(b.admit(30_001, 'other').go).toBe(false);
    expect(b.admit(30_002, 'probe')).toEqual({ go: true, probe: true });
    b.record(30_100, 'probe', true, 'x');
    expect(b.state).toBe('open');
    expect(b.snapshot().openUntil).toBe(new Date(30_100 + 60_000).toISOString());
    expect(b.admit(90_100, 'probe2')).toEqual({ go: true, probe: true });
    b.record(90_200, 'probe2', false);
    expect(b.state).toBe('closed');
    expect(changes.map((c) => c.state)).toEqual(['open', 'half_open', 'open', 'half_open', 'closed']);
    expect(b.admit(90_300, 'x')).toEqual({ go: true, probe: false });
  });

  it('frees the probe when the admitted delivery did not call', () => {
    const { b } = breaker();
    for (let i = 0; i < 3; i++) b.record(0, `k${i}`, true, 'x');
    expect(b.admit(30_000, 'p1').go).toBe(true);
    expect(b.admit(30_001, 'p2').go).toBe(false);
    b.release('p1');
    expect(b.admit(30_002, 'p2')).toEqual({ go: true, probe: true });
  });

  it('doubles the open period up to its maximum', () => {
    const { b } = breaker();
    for (let i = 0; i < 3; i++) b.record(0, `k${i}`, true, 'x');
    let t = 30_000;
    for (const expected of [60_000, 100_000, 100_000]) {
      expect(b.admit(t, 'p').go).toBe(true);
      b.record(t, 'p', true, 'x');
      expect(Date.parse(b.snapshot().openUntil!) - t).toBe(expected);
      t += expected;
    }
  });
});
