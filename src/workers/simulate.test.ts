import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runMappingTests } from './mapping-tests.ts';
import { replayDryRun } from './simulate.ts';

let dir: string;
const env = {};

const CONNECTORS = `outputs:
  - { name: sms, type: outbox, channel: sms, allowedPurposes: [care.logistics] }
`;
const RULES = `rules:
  - id: reminder
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: reminder, fields: [appointment.start] }
    at: appointment.start - 24h
    expires: appointment.start
`;
const S12 = [
  'MSH|^~\\&|EPIC|GHH|CR|GHH|20250601090000+0200||SIU^S12^SIU_S12|M1|P|2.5.1',
  'SCH|P1|A1|||||||30|MIN|^^30^20250610143000+0200^20250610150000+0200||||||||||||||Booked',
  'PID|1||MRN1^^^GHH^MR||Martin^Claire||19800412|F|||||+33612345678^PRN^CP',
].join('\r');
const S15 = S12.replace('SIU^S12^SIU_S12|M1', 'SIU^S15^SIU_S15|M2').replace('20250601090000', '20250602090000').replace(/Booked$/, 'Cancelled');

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'carerelay-simulate-'));
  await mkdir(path.join(dir, 'connectors'));
  await mkdir(path.join(dir, 'mappings', 'templates'), { recursive: true });
  await writeFile(path.join(dir, 'connectors', 'outbox.yaml'), CONNECTORS);
  await writeFile(path.join(dir, 'mappings', 'r.yaml'), RULES);
  await writeFile(path.join(dir, 'mappings', 'templates', 'reminder.liquid'), 'See you at {{ appointment.start | local_time }}\n');
  await writeFile(path.join(dir, 's12.hl7'), S12);
  await writeFile(path.join(dir, 's15.hl7'), S15);
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const test = (body: string) => writeFile(path.join(dir, 'mappings', 'r.test.yaml'), body);

describe('runMappingTests', () => {
  it('passes a test whose expectations hold, sending what falls due as the clock moves', async () => {
    await test(`tests:
  - name: planned then cancelled
    now: 2025-06-01T09:00:00+02:00
    timezone: Europe/Paris
    given:
      - file: ../s12.hl7
      - file: ../s15.hl7
        at: 2025-06-02T09:00:00+02:00
    expect:
      deliveries:
        - { rule: reminder, about: appointment/A1, status: cancelled, due: 2025-06-09T12:30:00Z, to: "+33612345678", text: See you at 2:30 PM }
  - name: sent once its time has come
    now: 2025-06-01T09:00:00+02:00
    timezone: Europe/Paris
    until: 2025-06-09T14:30:00+02:00
    given:
      - file: ../s12.hl7
    expect:
      deliveries:
        - { rule: reminder, status: sent }
`);
    const results = await runMappingTests(path.join(dir, 'mappings'), { env });
    expect(results.failed).toEqual([]);
    expect(results.passed).toBe(2);
  });

  it('reports a readable expected/actual diff, line by line', async () => {
    await test(`tests:
  - name: wrong expectations
    now: 2025-06-01T09:00:00+02:00
    timezone: Europe/Paris
    given:
      - hl7: |
${S12.split('\r').map((l) => `          ${l}`).join('\n')}
    expect:
      deliveries:
        - { rule: reminder, status: cancelled, due: 2025-06-09T14:30:00+02:00, text contains: "15:00" }
        - { rule: welcome }
`);
    const results = await runMappingTests(path.join(dir, 'mappings'), { env });
    expect(results.passed).toBe(0);
    expect(results.failed).toHaveLength(1);
    expect(results.failed[0]!.test).toBe('wrong expectations');
    expect(results.failed[0]!.diff.split('\n')).toEqual([
      '  delivery reminder @ appointment/A1',
      '-   status: cancelled',
      '+   status: pending',
      '    due: 2025-06-09T14:30:00+02:00',
      '-   text contains: "15:00"',
      '+   text: "See you at 2:30 PM"',
      expect.stringMatching(/^- delivery welcome \(expected at .*r\.test\.yaml:13:11; not planned\)$/),
    ]);
  });

  it('lists a delivery nobody expected', async () => {
    await test(`tests:
  - name: expects nothing
    now: 2025-06-01T09:00:00+02:00
    timezone: Europe/Paris
    given:
      - file: ../s12.hl7
    expect:
      deliveries: none
`);
    const { failed } = await runMappingTests(path.join(dir, 'mappings'), { env });
    expect(failed[0]!.diff).toBe(
      [
        '+ delivery reminder @ appointment/A1 (planned, not expected)',
        '+   status: pending',
        '+   due: 2025-06-09T14:30:00+02:00',
        '+   channel: sms',
        '+   to: +33612345678',
        '+   text: "See you at 2:30 PM"',
      ].join('\n'),
    );
  });

  it('refuses a malformed test file with file:line:column, and a broken configuration', async () => {
    await test(`tests:
  - name: typo
    now: 2025-06-01
    timezone: Europe/Paris
    given: [{ file: ../s12.hl7 }]
    expect: { deliveries: none, extra: 1 }
`);
    let results = await runMappingTests(path.join(dir, 'mappings'), { env });
    expect(results.failed).toHaveLength(1);
    expect(results.failed[0]!.test).toBe('(file)');
    expect(results.failed[0]!.diff).toMatch(/r\.test\.yaml:3:10: "now" "2025-06-01" is not valid: an ISO-8601 instant with its offset/);
    expect(results.failed[0]!.diff).toMatch(/r\.test\.yaml:6:33: unknown key "extra"/);

    await writeFile(path.join(dir, 'mappings', 'r.yaml'), RULES.replace('purpose: care.logistics', 'purpose: survey'));
    results = await runMappingTests(path.join(dir, 'mappings'), { env });
    expect(results.failed[0]!.test).toBe('(configuration)');
    expect(results.failed[0]!.diff).toMatch(/r\.yaml:6:21: output "sms" does not allow purpose survey/);
  });

  it('reports an input that is not accepted instead of silently passing', async () => {
    await test(`tests:
  - name: rejected input
    now: 2025-06-01T09:00:00+02:00
    timezone: Europe/Paris
    given:
      - hl7: "MSH|^~\\\\&|EPIC|GHH|CR|GHH|20250601090000+0200||SIU^S12^SIU_S12|M1|P|2.5.1"
    expect:
      deliveries: none
`);
    const { failed } = await runMappingTests(path.join(dir, 'mappings'), { env });
    expect(failed[0]!.diff).toMatch(/^given 1 \(.*r\.test\.yaml:6:9\): rejected: /);
  });
});

describe('replayDryRun', () => {
  it('describes what would be planned, cancelled and sent, keeping state between files', async () => {
    const lines = await replayDryRun([path.join(dir, 's12.hl7'), path.join(dir, 's15.hl7')], {
      mappingsDir: path.join(dir, 'mappings'),
      now: '2025-06-01T09:00:00+02:00',
      timezone: 'Europe/Paris',
      env,
    });
    expect(lines.map((l) => l.replace(/^\S*(s1[25]\.hl7)/, '$1'))).toEqual([
      's12.hl7: SIU^S12 M1 → appointment.booked appointment/A1',
      '  plan    reminder @ appointment/A1 sms via sms to +33612345678 at 2025-06-09T14:30:00+02:00 [en] "See you at 2:30 PM"',
      's15.hl7: SIU^S15 M2 → appointment.cancelled appointment/A1',
      '  cancel  reminder @ appointment/A1 (appointment.cancelled)',
    ]);
  });
});
