// Destination fitness checked twice (docs/consent.md rule 4 and "Precise semantics", PHI): when
// mappings load, and again at send time "in case the output's declaration changed". A rule
// sending an appointment time to an output declared baa: true plans a delivery; the output's
// declaration is then withdrawn (baa: false):
//   - by a reload: refused at load — the new configuration would send a care field to an
//     output without a BAA; the running plan stays (and outputs are not swapped by a reload);
//   - by a restart with the rule fixed: the configuration is valid, but the delivery planned
//     under the old declaration still carries the care field — at its due time the send-time
//     check suppresses it `destination_not_covered`, and nothing reaches the output.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { consentConfigDir, http } from './helpers/consent.ts';
import { captureLogger, hl7Field, mllpExchange, siuMessage, type TestConfigDir } from './helpers/server.ts';

const RULE = (fields: string) => `rules:
  - id: visit-sync
    on: appointment.booked
    purpose: service.info
    channel: crm
    send: { output: crm, fields: [${fields}] }
    at: appointment.start - 48h
`;

let config: TestConfigDir | undefined;
let server: RunningCarerelay | undefined;
let clock = Date.parse('2030-03-01T09:15:00Z');

afterEach(async () => {
  await server?.stop();
  config?.remove();
  server = undefined;
});

async function boot(): Promise<string> {
  server = await startCarerelay({ configDir: config!.dir, env: {}, log: captureLogger(), watchMappings: false, now: () => clock });
  return `http://127.0.0.1:${server.httpPort}`;
}

it('an output whose BAA is withdrawn: a reload is refused at load; after a restart the pending delivery is suppressed destination_not_covered at send time', async () => {
  config = consentConfigDir({
    policy: ['  region: us', '  quietHours: { channels: [] }'],
    outputs: ['{ name: crm, type: outbox, channel: crm, baa: true, allowedPurposes: [service.info] }'],
    rules: RULE('patient.name.given, appointment.start'),
    templates: {},
  });
  let base = await boot();
  // Booked for 2030-03-16 13:30: the sync is due 48 h before.
  const ack = await mllpExchange([...server!.mllpPorts.values()][0]!, siuMessage({ controlId: 'PHI-1', appointmentId: 'A1', patientId: 'PHI-0001', sentAt: new Date(clock) }));
  expect(hl7Field(ack!, 'MSA', 1)).toBe('AA');
  await server!.deliveries.idle();
  const id = encodeURIComponent('visit-sync@appointment/A1#0');
  expect((await http(base, 'GET', `/api/deliveries/${id}`)).json).toMatchObject({ status: 'pending', delivery: { payload: { appointment: { start: expect.any(String) } } } });

  // The BAA is withdrawn by a reload: the configuration is refused where the field is named.
  const connectors = path.join(config.dir, 'connectors', 'test.yaml');
  writeFileSync(connectors, readFileSync(connectors, 'utf8').replace('baa: true', 'baa: false'));
  const reload = await server!.reloadMappings();
  expect(reload.ok).toBe(false);
  const issues = reload.ok ? [] : reload.issues;
  expect(issues).toEqual([
    expect.objectContaining({
      file: expect.stringMatching(/rules\.yaml$/),
      line: 6,
      column: expect.any(Number),
      message: expect.stringMatching(/field appointment\.start may not go to output "crm", which is not declared baa: true/),
    }),
  ]);
  expect((await http(base, 'GET', `/api/deliveries/${id}`)).json).toMatchObject({ status: 'pending' });

  // Restarted with the rule fixed (no care field): valid, and the output is declared without a BAA now.
  await server!.stop();
  writeFileSync(path.join(config.dir, 'mappings', 'rules.yaml'), RULE('patient.name.given'));
  clock = Date.parse('2030-03-14T14:00:00Z');
  base = await boot();
  await server!.deliveries.queue.poke();
  await server!.deliveries.idle();
  const after = (await http(base, 'GET', `/api/deliveries/${id}`)).json;
  expect(after).toMatchObject({ status: 'suppressed', reason: 'destination_not_covered' });
  expect(after.decisions[0]).toMatchObject({ result: 'deny', checkRule: 4, reason: 'destination_not_covered', basis: 'output crm is not covered by a BAA and the message is about care' });
  expect((await http(base, 'GET', '/api/outbox')).json.items).toEqual([]);
});
