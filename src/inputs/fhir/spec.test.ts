// The FHIR input schemas through the real config loader: defaults, and the rules the
// schema cannot say (exactly one inbound auth, one server auth, unique subscription ids).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../config/load.ts';
import { ConfigError } from '../../errors.ts';
import type { FhirPollConfig, FhirRestHookConfig } from './spec.ts';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function configDir(inputs: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carerelay-fhir-spec-'));
  dirs.push(dir);
  fs.mkdirSync(path.join(dir, 'connectors'));
  fs.writeFileSync(path.join(dir, 'connectors', 'fhir.yaml'), `inputs:\n${inputs}\noutputs: []\n`);
  return dir;
}

async function issues(inputs: string): Promise<string[]> {
  try {
    await loadConfig({ configDir: configDir(inputs), env: { T: 'x' } });
    return [];
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    return error.issues.map((i) => i.message);
  }
}

describe('fhir-rest-hook and fhir-poll configs', () => {
  it('fill the documented defaults', async () => {
    const plan = await loadConfig({
      configDir: configDir(
        [
          '  - { name: hook, type: fhir-rest-hook, server: { baseUrl: "https://ehr.example.org/fhir" }, auth: { bearer: { token: { env: T } } },',
          '      subscriptions: [{ id: feed, topic: "http://hl7.org/fhir/us/core/SubscriptionTopic/patient-data-feed" }] }',
          '  - { name: poll, type: fhir-poll, server: { baseUrl: "https://ehr.example.org/fhir" } }',
        ].join('\n'),
      ),
      env: { T: 'x' },
    });
    const hook = plan.inputs[0]!.config as unknown as FhirRestHookConfig;
    expect(hook).toMatchObject({
      maxBodyBytes: 1048576,
      searchResources: ['Appointment', 'Encounter'],
      searchLookbackSeconds: 3600,
      server: { timeoutSeconds: 15, allowInsecureHttp: false },
      subscriptions: [{ id: 'feed', heartbeatPeriodSeconds: 60, payload: 'id-only', filterCriteria: [] }],
    });
    const poll = plan.inputs[1]!.config as unknown as FhirPollConfig;
    expect(poll).toMatchObject({ resources: ['Appointment', 'Encounter'], intervalSeconds: 60, pageSize: 100, since: '' });
  });

  it('need exactly one inbound auth, at most one server auth, unique subscription ids', async () => {
    const base = 'name: hook, type: fhir-rest-hook, server: { baseUrl: "https://ehr.example.org/fhir" }';
    expect(await issues(`  - { ${base} }`)).toEqual([expect.stringContaining('"auth"')]);
    expect(await issues(`  - { ${base}, auth: {} }`)).toEqual([expect.stringMatching(/auth: give one of bearer, header, hmac, standardWebhooks/)]);
    expect(await issues(`  - { ${base}, auth: { standardWebhooks: { secret: { env: T }, toleranceSeconds: 0 } } }`)).toEqual([
      expect.stringMatching(/toleranceSeconds/),
    ]);
    expect(await issues(`  - { ${base}, auth: { bearer: { token: { env: T } }, hmac: { secret: { env: T } } } }`)).toEqual([
      expect.stringMatching(/give only one of bearer, hmac/),
    ]);
    const subs = 'subscriptions: [{ id: a, topic: "http://x.org/t" }, { id: a, topic: "http://x.org/t" }]';
    expect(await issues(`  - { ${base}, auth: { bearer: { token: { env: T } } }, ${subs} }`)).toEqual([
      expect.stringMatching(/subscription id "a" is already listed/),
    ]);
    expect(await issues(`  - { ${base}, auth: { bearer: { token: { env: T } } }, subscriptions: [{ id: "..", topic: "http://x.org/t" }] }`)).toEqual([
      expect.stringMatching(/"id" "\.\." is not valid: .*not "\." or "\.\."/),
    ]);
    const bothServerAuth =
      'name: poll, type: fhir-poll, server: { baseUrl: "https://ehr.example.org/fhir", auth: { bearer: { token: { env: T } }, ' +
      'smart: { tokenUrl: "https://ehr.example.org/token", clientId: c, privateKey: { env: T }, scope: "system/Appointment.rs" } } }';
    expect(await issues(`  - { ${bothServerAuth} }`)).toEqual([expect.stringMatching(/server.auth: give only one of bearer, smart/)]);
    expect(await issues('  - { name: poll, type: fhir-poll, server: { baseUrl: "ftp://x" }, since: "yesterday" }')).toHaveLength(2);
  });
});
