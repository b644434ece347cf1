// A short seeded run of the fuzz harness (fuzz/harness.ts; `npm run fuzz` runs longer ones):
// mutated corpus messages and framing scenarios over many loopback connections against the
// real server in a child process, with a health probe. Its invariants are the run's own
// failures: no crash or hang, every AA/CA stored, identical ACKs for resends, the probe
// answered, RSS not trending upward.
import { describe, expect, it } from 'vitest';
import { formatReport, runFuzz } from '../fuzz/harness.ts';

describe('fuzz harness, short seeded run', () => {
  it('keeps every invariant for 4 s of mutated messages and framing scenarios on 6 connections', async () => {
    const report = await runFuzz({ seed: 20260301, seconds: 4, connections: 6 });
    expect(report.failures, formatReport(report)).toEqual([]);
    // The run did what it is for: messages accepted and checked, refusals, framing oddities, the probe.
    expect(report.acceptedChecked).toBeGreaterThan(50);
    expect(report.acceptedStored).toBe(report.acceptedChecked);
    expect(report.acks.AR ?? 0).toBeGreaterThan(0);
    expect(Object.keys(report.scenarios).length).toBeGreaterThan(8);
    expect(report.probe.sent).toBeGreaterThan(5);
  });
});
