import { describe, expect, it } from 'vitest';
import { PermanentError, RateLimitedError, TransientError } from '../errors.ts';
import { silentLogger } from '../log.ts';
import type { OutputLimits } from '../outputs/spec.ts';
import { Deferral } from '../queue/queue.ts';
import { GateReason, mergeLimits, OutputGates, type GatedOutput } from './output-gate.ts';

const T0 = Date.parse('2030-01-07T09:00:00Z');
const CIRCUIT = { failures: 2, failureRate: 0.5, window: 10, openMs: 30_000, maxOpenMs: 600_000 };

function output(name: string, limits?: OutputLimits): GatedOutput {
  return { name, type: 'webhook', info: { channel: 'webhook', idempotent: true, ...(limits ? { limits } : {}) } };
}

function gates(outputs: GatedOutput[], outputConcurrency = 16) {
  let now = T0;
  const g = new OutputGates(outputs, { outputConcurrency, circuit: CIRCUIT, now: () => now, log: silentLogger, random: () => 0 });
  return { g, set: (t: number) => (now = t) };
}

/** The Deferral admit throws, or undefined when it let the delivery through (and ends it as `called`). */
async function deferral(g: OutputGates, out: string, key: string, error?: unknown): Promise<Deferral | undefined> {
  try {
    const admission = await g.admit(out, key);
    admission.end({ called: true, ...(error !== undefined ? { error } : {}) });
    return undefined;
  } catch (e) {
    if (e instanceof Deferral) return e;
    throw e;
  }
}

describe('OutputGates', () => {
  it('merges the declarations of one account into the strictest figures, capped by the engine', () => {
    expect(mergeLimits([{ ratePerSecond: 10, burst: 100, perDay: 250_000, account: 'hubspot:1' }, { ratePerSecond: 5, concurrency: 4, account: 'hubspot:1' }], 16)).toEqual({
      ratePerSecond: 5,
      burst: 5,
      windowSeconds: 1,
      concurrency: 4,
      perDay: 250_000,
      account: 'hubspot:1',
    });
    expect(mergeLimits([undefined], 16)).toEqual({ concurrency: 16 });
    expect(mergeLimits([{ concurrency: 100 }], 16).concurrency).toBe(16);
  });

  it('shares one window between the outputs of an account, and draws callsPerSend per send', async () => {
    const { g } = gates([output('contacts', { ratePerSecond: 5, account: 'ac:x' }), output('tags', { ratePerSecond: 5, account: 'ac:x', callsPerSend: 2 })]);
    expect(await deferral(g, 'tags', 't1')).toBeUndefined();
    expect(await deferral(g, 'tags', 't2')).toBeUndefined();
    expect(await deferral(g, 'contacts', 'c1')).toBeUndefined();
    const later = await deferral(g, 'contacts', 'c2');
    expect(later).toMatchObject({ code: GateReason.RateLimit, runAtMs: T0 + 1_000, inSpan: false });
    expect(g.state('tags')).toMatchObject({ limits: { ratePerSecond: 5, burst: 5, callsPerSend: 2, account: 'ac:x' } });
  });

  it('gives back the token and the daily count of a delivery that did not call', async () => {
    const { g } = gates([output('daily', { ratePerSecond: 1, perDay: 1 })]);
    const admission = await g.admit('daily', 'a');
    admission.end({ called: false });
    admission.end({ called: true }); // ended once only
    expect(g.state('daily')?.usedToday).toBe(0);
    expect(await deferral(g, 'daily', 'b')).toBeUndefined();
    expect(g.state('daily')?.usedToday).toBe(1);
  });

  it('holds deliveries over the daily quota until the next UTC day, outside their retry span', async () => {
    const { g, set } = gates([output('daily', { perDay: 2 })]);
    expect(await deferral(g, 'daily', 'a')).toBeUndefined();
    expect(await deferral(g, 'daily', 'b')).toBeUndefined();
    expect(await deferral(g, 'daily', 'c')).toMatchObject({ code: GateReason.DailyQuota, runAtMs: Date.parse('2030-01-08T00:00:00Z'), inSpan: false });
    set(Date.parse('2030-01-08T00:00:00Z'));
    expect(await deferral(g, 'daily', 'c')).toBeUndefined();
  });

  it('opens the circuit on transient and ambiguous failures only: a refusal of one message or a 429 is an answer', async () => {
    const { g, set } = gates([output('crm')]);
    expect(await deferral(g, 'crm', 'a', new PermanentError('webhook_rejected', '400'))).toBeUndefined();
    expect(await deferral(g, 'crm', 'b', new RateLimitedError('webhook_rate_limited', '429', { retryAfterMs: 1_000 }))).toBeUndefined();
    set(T0 + 2_000);
    expect(await deferral(g, 'crm', 'c', new TransientError('webhook_unavailable', '503'))).toBeUndefined();
    expect(g.state('crm')?.circuit.state).toBe('closed');
    expect(await deferral(g, 'crm', 'd', new Error('bug'))).toBeUndefined();
    expect(g.state('crm')?.circuit).toMatchObject({ state: 'open', lastError: 'unclassified' });
    expect(await deferral(g, 'crm', 'e')).toMatchObject({ code: GateReason.CircuitOpen, inSpan: true, runAtMs: T0 + 32_000 });
  });

  it("pauses the whole output for a provider's Retry-After and slows its rate", async () => {
    const { g, set } = gates([output('api', { ratePerSecond: 4 })]);
    expect(await deferral(g, 'api', 'a', new RateLimitedError('api_rate_limited', '429', { retryAfterMs: 10_000 }))).toBeUndefined();
    expect(await deferral(g, 'api', 'b')).toMatchObject({ code: GateReason.ProviderRateLimit, runAtMs: T0 + 10_000 });
    expect(g.state('api')).toMatchObject({ pausedUntil: new Date(T0 + 10_000).toISOString(), rateFactor: 0.5 });
    set(T0 + 10_000);
    expect(await deferral(g, 'api', 'b')).toBeUndefined();
  });
});
