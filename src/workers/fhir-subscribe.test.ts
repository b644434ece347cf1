// fhirSubscribe against the local FHIR test server: the Backport Subscription it writes,
// the status text (no secret in it), re-running (update, not duplicate) and bad --input.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startFhirTestServer, type FhirTestServer } from '../../test/helpers/fhir-server.ts';
import { ConfigError } from '../errors.ts';
import { fhirSubscribe } from './fhir-subscribe.ts';

let dir: string;
let server: FhirTestServer;
const TOKEN = 'hook-token-7f3a9c1e5b';

function writeConfig(auth: string): void {
  fs.mkdirSync(path.join(dir, 'connectors'), { recursive: true });
  fs.writeFileSync(
    path.join(dir, 'connectors', 'fhir.yaml'),
    [
      'server:',
      '  http: { host: 127.0.0.1, port: 0 }',
      `  dataDir: ${JSON.stringify(path.join(dir, 'data'))}`,
      'inputs:',
      '  - name: ehr-fhir',
      '    type: fhir-rest-hook',
      `    server: { baseUrl: ${JSON.stringify(server.baseUrl)} }`,
      `    auth: ${auth}`,
      '    subscriptions:',
      '      - id: feed',
      '        topic: http://hl7.org/fhir/us/core/SubscriptionTopic/patient-data-feed',
      '        filterCriteria: ["Encounter?location=Location/12"]',
      '        heartbeatPeriodSeconds: 120',
      '      - id: appts',
      '        topic: http://example.org/SubscriptionTopic/appointment-changed',
      '        payload: full-resource',
      '        heartbeatPeriodSeconds: 0',
      '  - name: other',
      '    type: fhir-poll',
      `    server: { baseUrl: ${JSON.stringify(server.baseUrl)} }`,
      'outputs: []',
      '',
    ].join('\n'),
  );
}

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carerelay-fhir-subscribe-'));
  server = await startFhirTestServer();
});

afterEach(async () => {
  await server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('fhirSubscribe', () => {
  it('writes Backport rest-hook Subscriptions with our endpoint, auth header, payload and heartbeat', async () => {
    writeConfig('{ bearer: { token: { env: HOOK_TOKEN } } }');
    const outcomes = await fhirSubscribe({ configDir: dir, env: { HOOK_TOKEN: TOKEN }, input: 'ehr-fhir', endpointBaseUrl: 'https://carerelay.example.org/' });
    expect(outcomes.map((o) => [o.id, o.ok])).toEqual([['feed', true], ['appts', true]]);
    const text = outcomes.map((o) => o.text).join('\n');
    const feed = server.get('Subscription', 'feed')!;
    expect(feed).toMatchObject({
      meta: { profile: ['http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription'] },
      status: 'requested',
      criteria: 'http://hl7.org/fhir/us/core/SubscriptionTopic/patient-data-feed',
      _criteria: {
        extension: [
          { url: 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria', valueString: 'Encounter?location=Location/12' },
        ],
      },
      channel: {
        type: 'rest-hook',
        endpoint: 'https://carerelay.example.org/ingest/fhir/ehr-fhir',
        payload: 'application/fhir+json',
        header: [`Authorization: Bearer ${TOKEN}`],
        _payload: { extension: [{ url: 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content', valueCode: 'id-only' }] },
      },
    });
    const channel = feed.channel as { extension: Array<{ url: string; valueUnsignedInt?: number }> };
    expect(channel.extension.find((e) => e.url.endsWith('backport-heartbeat-period'))?.valueUnsignedInt).toBe(120);
    const appts = server.get('Subscription', 'appts')!;
    expect((appts.channel as { _payload: unknown })._payload).toMatchObject({ extension: [{ valueCode: 'full-resource' }] });
    expect(JSON.stringify(appts.channel)).not.toContain('backport-heartbeat-period');

    expect(text).toContain(`Subscription/feed on ${server.baseUrl}: status requested`);
    expect(text).toContain('endpoint: https://carerelay.example.org/ingest/fhir/ehr-fhir (rest-hook, id-only)');
    expect(text).toContain('heartbeat: every 120 s');
    expect(text).toContain('heartbeat: none');
    expect(text).not.toContain(TOKEN);

    // Again: the same ids are updated (version 2), not duplicated.
    await fhirSubscribe({ configDir: dir, env: { HOOK_TOKEN: TOKEN }, input: 'ehr-fhir', endpointBaseUrl: 'https://carerelay.example.org' });
    expect(server.get('Subscription', 'feed')!.meta!.versionId).toBe('2');
    expect(server.requests.filter((r) => r.method === 'POST')).toEqual([]);
  });

  it('puts an HMAC secret in the subscription-secret extension (Medplum) and a fixed header in channel.header', async () => {
    writeConfig('{ hmac: { secret: { env: HOOK_SECRET } } }');
    await fhirSubscribe({ configDir: dir, env: { HOOK_SECRET: 's3cret-value' }, input: 'ehr-fhir', endpointBaseUrl: 'https://c.example.org' });
    expect(server.get('Subscription', 'feed')!.extension).toEqual([
      { url: 'https://www.medplum.com/fhir/StructureDefinition/subscription-secret', valueString: 's3cret-value' },
    ]);
    writeConfig('{ header: { name: X-Api-Key, value: { env: HOOK_KEY } } }');
    await fhirSubscribe({ configDir: dir, env: { HOOK_KEY: 'k-1' }, input: 'ehr-fhir', endpointBaseUrl: 'https://c.example.org' });
    expect((server.get('Subscription', 'feed')!.channel as { header: string[] }).header).toEqual(['x-api-key: k-1']);
  });

  it('creates a Subscription the server does not hold (PUT, keeping the id); one that exists is updated', async () => {
    writeConfig('{ bearer: { token: { env: HOOK_TOKEN } } }');
    const env = { HOOK_TOKEN: TOKEN };
    const first = await fhirSubscribe({ configDir: dir, env, input: 'ehr-fhir', endpointBaseUrl: 'https://c.example.org' });
    expect(first.map((o) => o.text.endsWith('\n  created'))).toEqual([true, true]);
    expect(server.requests.filter((r) => r.path === '/fhir/Subscription/feed').map((r) => r.method)).toEqual(['GET', 'PUT', 'GET']);
    const again = await fhirSubscribe({ configDir: dir, env, input: 'ehr-fhir', endpointBaseUrl: 'https://c.example.org' });
    expect(again.map((o) => [o.ok, o.text.includes('created')])).toEqual([[true, false], [true, false]]);
  });

  it('a server that does not let clients assign ids gets a POST, and the id it assigned is reported', async () => {
    await server.close();
    server = await startFhirTestServer({ clientAssignedIds: false });
    writeConfig('{ bearer: { token: { env: HOOK_TOKEN } } }');
    const [feed] = await fhirSubscribe({ configDir: dir, env: { HOOK_TOKEN: TOKEN }, input: 'ehr-fhir', endpointBaseUrl: 'https://c.example.org' });
    const created = server.requests.find((r) => r.method === 'POST');
    expect(created?.path).toBe('/fhir/Subscription');
    expect(feed!.ok).toBe(true);
    const assigned = /created as Subscription\/(\S+):/.exec(feed!.text)?.[1];
    expect(server.get('Subscription', assigned!)).toMatchObject({ criteria: 'http://hl7.org/fhir/us/core/SubscriptionTopic/patient-data-feed' });
    expect(feed!.text).toContain(`set \`id: ${assigned}\` for this subscription in the input`);
    // Run again before the id is set: the same Subscription is found and updated, not created twice.
    const [again] = await fhirSubscribe({ configDir: dir, env: { HOOK_TOKEN: TOKEN }, input: 'ehr-fhir', endpointBaseUrl: 'https://c.example.org' });
    expect(again!.text).toContain(`updated as Subscription/${assigned}:`);
    expect(server.requests.filter((r) => r.method === 'POST')).toHaveLength(2); // feed and appts, once each
    expect(server.get('Subscription', assigned!)!.meta!.versionId).toBe('2');
  });

  it('goes on past a subscription the server refuses, reporting each', async () => {
    writeConfig('{ bearer: { token: { env: HOOK_TOKEN } } }');
    server.failNext(403, 1); // the first subscription's first request
    const outcomes = await fhirSubscribe({ configDir: dir, env: { HOOK_TOKEN: TOKEN }, input: 'ehr-fhir', endpointBaseUrl: 'https://c.example.org' });
    expect(outcomes.map((o) => [o.id, o.ok])).toEqual([['feed', false], ['appts', true]]);
    expect(outcomes[0]!.text).toBe(
      `Subscription/feed on ${server.baseUrl}: failed: read Subscription/feed: HTTP 403 (transient); check the SMART scopes granted to the client (fhir_forbidden)`,
    );
    expect(outcomes[0]!.text).not.toContain(TOKEN);
    expect(server.get('Subscription', 'feed')).toBeUndefined();
    expect(server.get('Subscription', 'appts')).toBeDefined();
  });

  it('refuses an input that does not exist or is not a fhir-rest-hook, naming the ones that are', async () => {
    writeConfig('{ bearer: { token: { env: HOOK_TOKEN } } }');
    const env = { HOOK_TOKEN: TOKEN };
    await expect(fhirSubscribe({ configDir: dir, env, input: 'nope', endpointBaseUrl: 'https://c.example.org' })).rejects.toThrow(ConfigError);
    await expect(fhirSubscribe({ configDir: dir, env, input: 'other', endpointBaseUrl: 'https://c.example.org' })).rejects.toThrow(
      /is a fhir-poll, not a fhir-rest-hook; fhir-rest-hook inputs: ehr-fhir/,
    );
    expect(server.requests).toEqual([]);
  });
});
