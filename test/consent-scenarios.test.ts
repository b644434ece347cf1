// The consent scenario suite: every test/consent-scenarios/mappings/*.test.yaml is a table of
// scenarios for docs/consent.md (each a sequence of HL7/FHIR inputs and consent events on a
// clock → what is sent, when, what is suppressed and why), run as mapping tests through the
// same checks as the server.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { runMappingTests } from '../src/workers/mapping-tests.ts';
import { CLI_PATH } from './helpers/server.ts';

const DIR = path.resolve(import.meta.dirname, 'consent-scenarios', 'mappings');

describe('consent scenarios (mapping tests)', () => {
  it('every scenario passes, and there are at least 60 of them', async () => {
    const results = await runMappingTests(DIR, { env: {} });
    expect(results.failed.map((f) => `${f.file} — ${f.test}\n${f.diff}`).join('\n\n')).toBe('');
    expect(results.passed).toBeGreaterThanOrEqual(60);
    // Each file covers its part of docs/consent.md.
    const files = new Set(results.results.map((r) => path.basename(r.file)));
    expect([...files].sort()).toEqual([
      'rule-order.test.yaml',
      'rule2-hard-suppressions.test.yaml',
      'rule3-consent-records.test.yaml',
      'rule5-sensitive-care.test.yaml',
      'rule6-caps.test.yaml',
      'rule7-quiet-hours-and-zones.test.yaml',
      'rule8-merges-erasure-fail-closed.test.yaml',
    ]);
  });

  it('carerelay test --json prints every delivery of every test, with status, reason, due and sent times, and the replies', async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [CLI_PATH, 'test', DIR, '--json'], { env: { ...process.env, NO_COLOR: '1' } });
    const lines = stdout.trim().split('\n').map((l) => JSON.parse(l) as { test: string; ok: boolean; deliveries: Array<Record<string, string>>; replies: Array<{ to: string; text: string }> });
    expect(lines.length).toBeGreaterThanOrEqual(60);
    expect(lines.every((l) => l.ok)).toBe(true);
    const stop = lines.find((l) => l.test === 'a signed STOP from the number cancels the pending SMS and is confirmed once')!;
    expect(stop.deliveries).toEqual([
      { rule: 'reminder', subject: 'appointment/A1', patient: 'P1', channel: 'sms', to: '+33600000001', status: 'suppressed', reason: 'opted_out', due: '2025-06-09T14:30:00+02:00' },
    ]);
    expect(stop.replies).toEqual([{ to: '+33600000001', text: expect.stringContaining('unsubscribed') }]);
    const moved = lines.find((l) => l.test.startsWith('a care.followup SMS due at 23:00'))!;
    expect(moved.deliveries[0]).toMatchObject({ status: 'sent', due: '2025-06-01T23:00:00+02:00', sent: '2025-06-02T06:00:00.000Z' });
  });
});
