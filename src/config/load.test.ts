import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, formatConfigIssue } from '../errors.ts';
import type { Hl7v2MllpConfig } from '../inputs/hl7v2/spec.ts';
import { loadConfig, type CarerelayPlan } from './load.ts';
import { DEFAULT_DELIVERIES } from './server-schema.ts';

const repoRoot = path.resolve(import.meta.dirname, '../..');
const made: string[] = [];

afterAll(async () => {
  for (const dir of made) await rm(dir, { recursive: true, force: true });
});

/** A fresh config dir with the given connectors files (name → YAML text). */
async function configDir(files: Record<string, string>, extra: Record<string, string> = {}): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'carerelay-config-'));
  made.push(dir);
  await mkdir(path.join(dir, 'connectors'));
  for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, 'connectors', name), text);
  for (const [name, text] of Object.entries(extra)) await writeFile(path.join(dir, name), text);
  return dir;
}

/** The formatted issues of a failing load, with the temp dir removed from file names. */
async function issuesOf(dir: string, env: Record<string, string> = {}): Promise<string[]> {
  try {
    await loadConfig({ configDir: dir, env });
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).issues.map((i) => formatConfigIssue(i).split(`${dir}${path.sep}`).join(''));
  }
  throw new Error('expected a ConfigError');
}

const mllp = (name: string, port: number | string, extra = '') =>
  `  - name: ${name}\n    type: hl7v2-mllp\n    port: ${port}\n    plain: true\n${extra}`;

describe('the shipped example (connectors/example.yaml)', () => {
  it('loads with an empty environment, defaults from ${VAR:-default}', async () => {
    const plan = await loadConfig({ configDir: repoRoot, env: {} });
    expect(plan.files).toEqual([
      // All commented out: ready-to-fill adapter blocks.
      path.join(repoRoot, 'connectors', 'adapters.yaml'),
      path.join(repoRoot, 'connectors', 'example.yaml'),
      // Marketing outputs: outboxes standing in for HubSpot, the tools' blocks commented.
      path.join(repoRoot, 'connectors', 'marketing.yaml'),
      path.join(repoRoot, 'connectors', 'operations.yaml'),
      path.join(repoRoot, 'connectors', 'outbox.yaml'),
      path.join(repoRoot, 'connectors', 'policy.yaml'),
      // Commented: the waitlist needs a fhir-appointment output the example does not enable.
      path.join(repoRoot, 'connectors', 'waitlist.yaml'),
    ]);
    expect(plan.waitlist).toBeUndefined();
    expect(plan.server).toEqual({
      http: { host: '127.0.0.1', port: 8080 },
      dataDir: path.join(repoRoot, 'data'),
      rejectedRaw: { totalBytes: 1073741824, perSenderBytes: 67108864, keepBytes: 4096 },
      queue: { type: 'sqlite', url: { env: 'REDIS_URL' }, prefix: 'carerelay', leaseSeconds: 30, durable: true },
      minFreeDiskBytes: 67108864,
      store: { type: 'sqlite', url: { env: 'DATABASE_URL' }, pool: { max: 10, connectionTimeoutSeconds: 10, idleTimeoutSeconds: 30 } },
      metrics: { tokenEnv: 'CARERELAY_METRICS_TOKEN' },
      video: { keyId: 'k1', previousKeys: [], opensMinutesBefore: 60, closesMinutesAfter: 30 },
      admin: { tokens: [] },
      deliveries: DEFAULT_DELIVERIES,
    });
    // The French example: EU defaults, Paris for the organisation and its site.
    expect(plan.policy.settings).toMatchObject({ region: 'eu', timezone: 'Europe/Paris', sites: [{ id: 'NORTHCLINIC', timezone: 'Europe/Paris' }] });
    expect(plan.inputs.map((i) => [i.type, i.name])).toEqual([
      ['hl7v2-mllp', 'ehr-mllp'],
      ['hl7v2-http', 'ehr-http'],
    ]);
    const mllpConfig = plan.inputs[0]!.config as unknown as Hl7v2MllpConfig;
    expect(mllpConfig).toMatchObject({ host: '127.0.0.1', port: 2575, plain: true, maxFrameBytes: 10485760 });
    expect(plan.inputs[0]).toMatchObject({ file: path.join(repoRoot, 'connectors', 'example.yaml'), column: 5 });
    expect(plan.outputs.map((o) => [o.type, o.name])).toEqual([
      ['outbox', 'hubspot-contacts'],
      ['outbox', 'hubspot-events'],
      ['outbox', 'outbox-sms'],
      ['outbox', 'outbox-email'],
    ]);
    // The shipped example mappings (mappings/*.yaml) load with it.
    expect(plan.mappings.length).toBeGreaterThan(0);
  });

  it('takes ports and the data dir from the environment', async () => {
    const plan = await loadConfig({
      configDir: repoRoot,
      env: { MLLP_PORT: '3000', HTTP_PORT: '9090', CARERELAY_DATA: '/var/lib/carerelay' },
    });
    expect((plan.inputs[0]!.config as unknown as Hl7v2MllpConfig).port).toBe(3000);
    expect(plan.server.http.port).toBe(9090);
    expect(plan.server.dataDir).toBe('/var/lib/carerelay');
  });
});

describe('loadConfig', () => {
  it('returns a deeply frozen plan with defaults, dataDir relative to the config dir', async () => {
    const dir = await configDir({ 'a.yaml': `inputs:\n${mllp('lab', 2600)}` });
    const plan: CarerelayPlan = await loadConfig({ configDir: dir, env: {} });
    expect(plan.server).toEqual({
      http: { host: '127.0.0.1', port: 8080 },
      dataDir: path.join(dir, 'data'),
      rejectedRaw: { totalBytes: 1073741824, perSenderBytes: 67108864, keepBytes: 4096 },
      queue: { type: 'sqlite', prefix: 'carerelay', leaseSeconds: 30, durable: true },
      minFreeDiskBytes: 67108864,
      store: { type: 'sqlite', pool: { max: 10, connectionTimeoutSeconds: 10, idleTimeoutSeconds: 30 } },
      metrics: { tokenEnv: 'CARERELAY_METRICS_TOKEN' },
      video: { keyId: 'k1', previousKeys: [], opensMinutesBefore: 60, closesMinutesAfter: 30 },
      admin: { tokens: [] },
      deliveries: DEFAULT_DELIVERIES,
    });
    // No policy block: every default, the organisation in UTC.
    expect(plan.policy.settings).toMatchObject({ region: 'us', timezone: 'UTC', sites: [], quietHours: { start: '08:00', end: '21:00', channels: ['sms'] } });
    expect(plan.policy.publicUrl).toBe('http://127.0.0.1:8080');
    expect(plan.inputs[0]).toEqual({
      type: 'hl7v2-mllp',
      name: 'lab',
      file: path.join(dir, 'connectors', 'a.yaml'),
      line: 2,
      column: 5,
      config: {
        name: 'lab',
        type: 'hl7v2-mllp',
        port: 2600,
        plain: true,
        host: '127.0.0.1',
        timezone: 'UTC',
        unknownMessageTypes: 'accept',
        missingFieldAck: 'AR',
        ackMode: 'standard',
        maxFrameBytes: 10485760,
        idleTimeoutSeconds: 300,
        firstByteTimeoutSeconds: 10,
        tlsHandshakeTimeoutSeconds: 10,
        maxConnections: 200,
        maxConnectionsPerAddress: 20,
        reservedConnections: 20,
        trustedSenders: { addresses: [], certificateCNs: [] },
      },
    });
    expect(Object.isFrozen(plan)).toBe(true);
    expect(Object.isFrozen(plan.inputs)).toBe(true);
    expect(Object.isFrozen(plan.inputs[0]!.config)).toBe(true);
    expect(Object.isFrozen(plan.server.http)).toBe(true);
    expect(() => {
      (plan.inputs[0]!.config as Record<string, unknown>).port = 1;
    }).toThrow(TypeError);
  });

  it('reads server.deliveries with its defaults, fractions of seconds and hours allowed, and refuses nonsense where it is', async () => {
    const dir = await configDir({ 'a.yaml': 'server:\n  deliveries:\n    outputConcurrency: 4\n    retry: { spanHours: 0.5, firstDelaySeconds: 0.25 }\n    circuit: { failures: 3 }\n' });
    const plan = await loadConfig({ configDir: dir, env: {} });
    expect(plan.server.deliveries).toEqual({
      ...DEFAULT_DELIVERIES,
      outputConcurrency: 4,
      retry: { ...DEFAULT_DELIVERIES.retry, spanHours: 0.5, firstDelaySeconds: 0.25 },
      circuit: { ...DEFAULT_DELIVERIES.circuit, failures: 3 },
    });
    const bad = await configDir({ 'a.yaml': 'server:\n  deliveries:\n    retry: { spanHours: 0 }\n    circuit: { failureRate: 2 }\n    workers: 8\n' });
    const issues = await issuesOf(bad);
    expect(issues).toHaveLength(3);
    expect(issues.join('\n')).toMatch(/a\.yaml:3:\d+: .*spanHours/);
    expect(issues.join('\n')).toMatch(/a\.yaml:4:\d+: .*failureRate/);
    expect(issues.join('\n')).toMatch(/workers/);
  });

  it('reads files in name order and merges their inputs', async () => {
    const dir = await configDir({
      'b.yaml': `inputs:\n${mllp('second', 2601)}`,
      'a.yaml': `server:\n  http: { port: 9000 }\ninputs:\n${mllp('first', 2600)}`,
      'notes.txt': 'not config',
    });
    const plan = await loadConfig({ configDir: dir, env: {} });
    expect(plan.inputs.map((i) => i.name)).toEqual(['first', 'second']);
    expect(plan.server.http.port).toBe(9000);
  });

  it('reports every problem of two files at once, in file and line order', async () => {
    const dir = await configDir({
      'a.yaml': [
        'server:', // 1
        '  http:', // 2
        '    port: 8080', // 3
        'inputs:', // 4
        '  - name: ehr', // 5
        '    type: hl7v2-mllp', // 6
        '    port: 2575', // 7
        '    plain: true', // 8
        '    maxFrame: 10', // 9
        '  - name: Lab_1', // 10
        '    type: hl7v2-mllp', // 11
        '    port: 99999', // 12
        '    plain: yes', // 13
        '',
      ].join('\n'),
      'b.yaml': [
        'server:', // 1
        '  timezone: Europe/Paris', // 2
        'inputs:', // 3
        '  - name: ehr', // 4
        '    type: hl7v2-http', // 5
        '  - name: ftp', // 6
        '    type: ftp-drop', // 7
        '  - name: other', // 8
        '    type: hl7v2-mllp', // 9
        '    port: 8080', // 10
        '    plain: true', // 11
        '    unknownMessageTypes: drop', // 12
        '  - name: again', // 13
        '    type: hl7v2-mllp', // 14
        '    port: 2575', // 15
        '    plain: true', // 16
        'extras: 1', // 17
        '',
      ].join('\n'),
    });
    expect(await issuesOf(dir)).toEqual([
      'connectors/a.yaml:9:5: unknown key "maxFrame" (allowed: name, timezone, unknownMessageTypes, missingFieldAck, ackMode, virtualVisit, type, host, port, tls, plain, maxFrameBytes, idleTimeoutSeconds, firstByteTimeoutSeconds, tlsHandshakeTimeoutSeconds, maxConnections, maxConnectionsPerAddress, reservedConnections, trustedSenders)',
      'connectors/a.yaml:10:11: "name" "Lab_1" is not valid: lower-case letters, digits and "-", starting with a letter',
      'connectors/a.yaml:12:11: "port" must be <= 65535 (got 99999)',
      'connectors/a.yaml:13:12: "plain" must be true or false, got a string',
      'connectors/b.yaml:1:1: server is already configured at connectors/a.yaml:1:1; keep a single server block',
      'connectors/b.yaml:4:11: input name "ehr" is already used at connectors/a.yaml:5:11; names must be unique',
      'connectors/b.yaml:7:11: unknown input type "ftp-drop" (known: hl7v2-mllp, hl7v2-http, fhir-rest-hook, fhir-poll)',
      'connectors/b.yaml:10:11: port 8080 is already used by server.http at connectors/a.yaml:3:11; give each listener its own port',
      'connectors/b.yaml:12:26: "unknownMessageTypes" must be one of "accept", "reject" (got "drop")',
      'connectors/b.yaml:15:11: port 2575 is already used by input "ehr" at connectors/a.yaml:7:11; give each listener its own port',
      'connectors/b.yaml:17:1: unknown key "extras" (allowed: server, policy, alerts, retention, waitlist, inputs, outputs)',
    ]);
  });

  it('checks ports against the default HTTP port too', async () => {
    const dir = await configDir({ 'a.yaml': `inputs:\n${mllp('ehr', 8080)}` });
    expect(await issuesOf(dir)).toEqual([
      'connectors/a.yaml:4:11: port 8080 is already used by server.http (its default); give each listener its own port',
    ]);
  });

  it('interpolates the environment and reports a missing variable where it is used', async () => {
    const text = `server:\n  http:\n    port: \${HTTP_PORT}\ninputs:\n${mllp('ehr', '${MLLP_PORT:-2575}')}`;
    const dir = await configDir({ 'a.yaml': text });
    expect(await issuesOf(dir)).toEqual([
      // Only the cause: not also "port must be an integer" for the uninterpolated text.
      'connectors/a.yaml:3:11: environment variable HTTP_PORT is not set (or write ${HTTP_PORT:-default})',
    ]);
    const plan = await loadConfig({ configDir: dir, env: { HTTP_PORT: '8181', MLLP_PORT: '3000' } });
    expect(plan.server.http.port).toBe(8181);
    expect((plan.inputs[0]!.config as unknown as Hl7v2MllpConfig).port).toBe(3000);
  });

  it('refuses duplicate keys, YAML errors and alias bombs, per file', async () => {
    const bomb = ['a: &a [1,1,1,1,1,1,1,1,1,1]', 'b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]', 'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]'];
    const dir = await configDir({
      'a.yaml': `inputs:\n  - name: ehr\n    type: hl7v2-mllp\n    port: 2575\n    port: 2576\n    plain: true\n`,
      'b.yaml': 'inputs: [\n',
      'c.yaml': `${bomb.join('\n')}\n`,
    });
    const issues = await issuesOf(dir);
    expect(issues).toHaveLength(3);
    expect(issues[0]).toBe('connectors/a.yaml:5:5: duplicate key "port" (first at line 4); a key may appear once per mapping');
    expect(issues[1]).toMatch(/^connectors\/b\.yaml:2:1: YAML syntax: /);
    expect(issues[2]).toMatch(/^connectors\/c\.yaml:2:8: YAML aliases expand beyond the limit/);
  });

  it('requires tls or an explicit plain: true for MLLP, and coherent tls settings', async () => {
    const dir = await configDir(
      {
        'a.yaml': [
          'inputs:', // 1
          '  - name: nothing', // 2
          '    type: hl7v2-mllp', // 3
          '    port: 2575', // 4
          '  - name: both', // 5
          '    type: hl7v2-mllp', // 6
          '    port: 2576', // 7
          '    plain: true', // 8
          '    tls:', // 9
          '      cert: { file: cert.pem }', // 10
          '      key: { file: cert.pem }', // 11
          '  - name: senders', // 12
          '    type: hl7v2-mllp', // 13
          '    port: 2577', // 14
          '    tls:', // 15
          '      cert: { file: cert.pem }', // 16
          '      key: { file: cert.pem }', // 17
          '      allowedSenders:', // 18
          '        ehr.example.org: ["EPIC^GHH", "EPIC"]', // 19
          '  - name: no-client-cert', // 20
          '    type: hl7v2-mllp', // 21
          '    port: 2578', // 22
          '    tls:', // 23
          '      cert: { file: cert.pem }', // 24
          '      key: { file: cert.pem }', // 25
          '      allowedSenders:', // 26
          '        ehr.example.org: ["EPIC^*"]', // 27
          '  - name: no-client-ca', // 28
          '    type: hl7v2-mllp', // 29
          '    port: 2579', // 30
          '    tls:', // 31
          '      cert: { file: cert.pem }', // 32
          '      key: { file: cert.pem }', // 33
          '      requireClientCert: true', // 34
          '',
          ].join('\n'),
      },
      { 'cert.pem': 'dummy' },
    );
    expect(await issuesOf(dir)).toEqual([
      'connectors/a.yaml:2:5: MLLP input "nothing" has neither a tls block nor plain: true. HL7 carries patient data, so add tls: { cert: { file: … }, key: { file: … } }, or set plain: true to accept unencrypted MLLP on a trusted network',
      'connectors/a.yaml:8:12: plain: true contradicts the tls block; remove one of them',
      'connectors/a.yaml:19:39: item 2 of "ehr.example.org" "EPIC" is not valid: write "APPLICATION^FACILITY", either part may be "*"',
      'connectors/a.yaml:26:7: allowedSenders maps client certificates to senders, so it needs requireClientCert: true',
      "connectors/a.yaml:34:7: requireClientCert: true needs tls.ca, the CA that signs the senders' client certificates (trusting every public CA would admit anyone holding a publicly issued certificate)",
    ]);
  });

  it('checks the MLLP admission settings: trusted addresses, certificate CNs only with mutual TLS, a reserve below the limit', async () => {
    const dir = await configDir({
      'a.yaml': [
        'inputs:', // 1
        '  - name: crowd', // 2
        '    type: hl7v2-mllp', // 3
        '    port: 2575', // 4
        '    plain: true', // 5
        '    maxConnections: 10', // 6
        '    reservedConnections: 10', // 7
        '    trustedSenders:', // 8
        '      addresses: ["10.0.0.1", "10.1.0.0/16", "fd00::/8", "ehr.example.org", "10.0.0.0/33"]', // 9
        '      certificateCNs: [epic]', // 10
        '',
      ].join('\n'),
    });
    expect(await issuesOf(dir)).toEqual([
      'connectors/a.yaml:7:5: reservedConnections (10) must be below maxConnections (10), or nobody but the trusted senders could connect; lower it',
      'connectors/a.yaml:9:58: "ehr.example.org" is not an IP address or CIDR subnet; write e.g. "10.20.0.5" or "10.21.0.0/24"',
      'connectors/a.yaml:9:77: "10.0.0.0/33" is not an IP address or CIDR subnet; write e.g. "10.20.0.5" or "10.21.0.0/24"',
      'connectors/a.yaml:10:7: a client certificate is only known with mutual TLS: certificateCNs needs tls.requireClientCert: true',
    ]);
  });

  it('refuses an HTTP ingest input without auth when server.http.host is not loopback, unless it says auth: none', async () => {
    const http = (name: string, auth = '') => `  - name: ${name}\n    type: hl7v2-http\n${auth ? `    auth: ${auth}\n` : ''}`;
    const exposed = await configDir({
      'a.yaml': `server:\n  http: { host: 0.0.0.0 }\ninputs:\n${http('open')}${http('said', 'none')}${http('token', '{ bearerToken: { env: T } }')}${http('bad', 'nothing')}`,
    });
    const issues = await issuesOf(exposed, { T: 'x' });
    expect(issues).toHaveLength(2);
    expect(issues[0]).toMatch(/^connectors\/a\.yaml:4:11: HTTP ingest input "open" has no auth, but server\.http\.host is 0\.0\.0\.0/);
    expect(issues[1]).toBe('connectors/a.yaml:14:11: "auth" is not valid (write auth: { bearerToken: { env: NAME } } or auth: none)');
    for (const host of ['127.0.0.1', 'localhost', '::1', '127.0.1.1']) {
      const loopback = await configDir({ 'a.yaml': `server:\n  http: { host: "${host}" }\ninputs:\n${http('open')}` });
      await expect(loadConfig({ configDir: loopback, env: {} }), host).resolves.toBeDefined();
    }
  });

  it('accepts a complete TLS block and stores secret files as absolute paths', async () => {
    const dir = await configDir(
      {
        'a.yaml': [
          'inputs:',
          '  - name: ehr',
          '    type: hl7v2-mllp',
          '    host: 0.0.0.0',
          '    port: 2575',
          '    timezone: America/New_York',
          '    tls:',
          '      cert: { file: certs/server.pem }',
          '      key: { env: MLLP_KEY }',
          '      ca: { file: certs/ca.pem }',
          '      requireClientCert: true',
          '      allowedSenders:',
          '        ehr.example.org: ["EPIC^GHH", "EPIC^*"]',
          '',
        ].join('\n'),
      },
      {},
    );
    await mkdir(path.join(dir, 'certs'));
    await writeFile(path.join(dir, 'certs', 'server.pem'), 'pem');
    await writeFile(path.join(dir, 'certs', 'ca.pem'), 'pem');
    const plan = await loadConfig({ configDir: dir, env: { MLLP_KEY: 'k' } });
    const config = plan.inputs[0]!.config as unknown as Hl7v2MllpConfig;
    expect(config.tls).toEqual({
      cert: { file: path.join(dir, 'certs', 'server.pem') },
      key: { env: 'MLLP_KEY' },
      ca: { file: path.join(dir, 'certs', 'ca.pem') },
      requireClientCert: true,
      allowedSenders: { 'ehr.example.org': ['EPIC^GHH', 'EPIC^*'] },
    });
    expect(config.plain).toBe(false);
    expect(config.timezone).toBe('America/New_York');

    // Unresolvable secrets are reported; checkSecrets: false validates the shape only.
    expect(await issuesOf(dir)).toEqual(['connectors/a.yaml:9:12: secret environment variable MLLP_KEY is not set']);
    await rm(path.join(dir, 'certs', 'ca.pem'));
    expect(await issuesOf(dir, { MLLP_KEY: 'k' })).toEqual([
      // (issuesOf strips the temp dir: the message names the absolute path)
      'connectors/a.yaml:10:11: secret file certs/ca.pem cannot be read (ENOENT)',
    ]);
    await expect(loadConfig({ configDir: dir, env: {}, checkSecrets: false })).resolves.toBeDefined();
  });

  it('refuses an inline secret and says how to reference one', async () => {
    const dir = await configDir({
      'a.yaml': [
        'inputs:',
        '  - name: web',
        '    type: hl7v2-http',
        '    auth:',
        '      bearerToken: s3cr3t-token',
        '  - name: web2',
        '    type: hl7v2-http',
        '    auth:',
        '      bearerToken: ${TOKEN}',
        '',
      ].join('\n'),
    });
    const issues = await issuesOf(dir, { TOKEN: 'from-env' });
    const hint =
      '"bearerToken": secrets are never written inline: use { env: NAME } (an environment variable) or { file: PATH } (a file)';
    expect(issues).toEqual([`connectors/a.yaml:5:20: ${hint}`, `connectors/a.yaml:9:20: ${hint}`]);
    expect(issues.join('\n')).not.toMatch(/s3cr3t|from-env/);
  });

  it('names the missing type and lists the known types', async () => {
    const dir = await configDir({
      'a.yaml': 'inputs:\n  - name: x\n    port: 1\noutputs:\n  - name: sms\n    type: pager\n',
    });
    expect(await issuesOf(dir)).toEqual([
      'connectors/a.yaml:2:5: input needs a "type" (known: hl7v2-mllp, hl7v2-http, fhir-rest-hook, fhir-poll)',
      'connectors/a.yaml:6:11: unknown output type "pager" (known: outbox, webhook, smtp, twilio, fhir-communication, sfmc, salesforce-crm, adobe-aep, hubspot, mailchimp, brevo, activecampaign, fhir-appointment, oracle-health-appointment, hl7v2-srm)',
    ]);
  });

  it('validates the server block and its admin token variable', async () => {
    const dir = await configDir({
      'a.yaml': [
        'server:',
        '  http: { host: 0.0.0.0, port: 8080, tls: true }',
        '  timezone: CEST',
        '  admin:',
        '    tokenEnv: ADMIN_TOKEN',
        '',
      ].join('\n'),
    });
    expect(await issuesOf(dir)).toEqual([
      'connectors/a.yaml:2:38: unknown key "tls" (allowed: host, port)',
      'connectors/a.yaml:3:13: "timezone" "CEST" is not an IANA time zone name (e.g. "UTC", "Europe/Paris", "America/New_York")',
      'connectors/a.yaml:5:15: environment variable ADMIN_TOKEN (the admin token) is not set',
    ]);
  });

  it('reads the store block: postgres needs its URL, read as a secret only when the store is postgres', async () => {
    const store = (lines: string[]) => configDir({ 'a.yaml': ['server:', '  store:', ...lines.map((l) => `    ${l}`), ''].join('\n') });
    expect(await issuesOf(await store(['type: postgres']))).toEqual([
      'connectors/a.yaml:3:5: store type postgres needs the database URL: add url: { env: DATABASE_URL } (or { file: PATH })',
    ]);
    expect(await issuesOf(await store(['type: postgres', 'url: postgres://u:pw@db/carerelay']))).toEqual([
      expect.stringMatching(/^connectors\/a\.yaml:4:\d+: .*url.* (env|file)/),
    ]);
    expect(await issuesOf(await store(['type: postgres', 'url: { env: DATABASE_URL }', 'tls: { cert: { file: c.pem } }', 'pool: { max: 2 }']), { DATABASE_URL: 'postgres://db/x' })).toEqual([
      expect.stringMatching(/^connectors\/a\.yaml:5:\d+: a client certificate needs its key: give both tls\.cert and tls\.key, or neither$/),
      expect.stringMatching(/^connectors\/a\.yaml:5:\d+: .*c\.pem/),
      expect.stringMatching(/^connectors\/a\.yaml:6:\d+: .*max.* 3/),
    ]);
    expect(await issuesOf(await store(['type: postgres', 'url: { env: DATABASE_URL }']))).toEqual(['connectors/a.yaml:4:10: secret environment variable DATABASE_URL is not set']);
    // sqlite: the same block loads without the variable (a configuration switched by environment).
    const embedded = await loadConfig({ configDir: await store(['type: sqlite', 'url: { env: DATABASE_URL }']), env: {} });
    expect(embedded.server.store.type).toBe('sqlite');
    const pg = await loadConfig({ configDir: await store(['type: postgres', 'url: { env: DATABASE_URL }', 'pool: { max: 4 }']), env: { DATABASE_URL: 'postgres://db/x' } });
    expect(pg.server.store).toEqual({ type: 'postgres', url: { env: 'DATABASE_URL' }, pool: { max: 4, connectionTimeoutSeconds: 10, idleTimeoutSeconds: 30 } });
  });

  it('reads the policy block: region defaults, zones, overrides; one block only, one organisation zone', async () => {
    const dir = await configDir({
      'a.yaml': [
        'server:',
        '  timezone: Europe/Paris',
        'policy:',
        '  region: eu',
        '  sites:',
        '    - { id: NORTH, timezone: Europe/Paris, locations: [CARDIO1] }',
        '  defaults:',
        '    survey: { email: allow }',
        '  caps:',
        '    - { purpose: survey, channel: email, perWeek: 1 }',
        '',
      ].join('\n'),
    });
    const plan = await loadConfig({ configDir: dir, env: {} });
    const settings = plan.policy.settings;
    // server.timezone is still read when policy.timezone is not set.
    expect(settings.timezone).toBe('Europe/Paris');
    expect(settings.sites).toEqual([{ id: 'NORTH', timezone: 'Europe/Paris', locations: ['CARDIO1'] }]);
    expect(settings.defaults.survey).toEqual({ sms: 'deny', email: 'allow' });
    expect(settings.defaults.marketing).toEqual({ sms: 'deny', email: 'deny' });
    expect(settings.defaults['care.logistics']).toEqual({ sms: 'allow', email: 'allow' });
    expect(settings.caps).toEqual([{ purpose: 'survey', channel: 'email', perWeek: 1 }]);
    expect(settings.sensitive.windowDays).toBe(90);

    const bad = await configDir({
      'a.yaml': [
        'server:',
        '  timezone: Europe/Paris',
        'policy:',
        '  timezone: America/New_York',
        '  region: mars',
        '  caps: [{ purpose: survey, channel: email }]',
        '  smsWebhooks: [{ output: nowhere, authToken: { env: TWILIO_TOKEN } }]',
        '',
      ].join('\n'),
      'b.yaml': ['policy:', '  quietHours: { start: "8:00" }', '  smsWebhooks: [{ output: nowhere, authToken: { env: TWILIO_TOKEN } }]', ''].join('\n'),
    });
    expect(await issuesOf(bad)).toEqual([
      'connectors/a.yaml:2:13: server.timezone (Europe/Paris) disagrees with policy.timezone (America/New_York): the organisation zone is set once, in policy.timezone; remove server.timezone',
      'connectors/a.yaml:5:11: "region" must be one of "us", "eu" (got "mars")',
      'connectors/a.yaml:6:10: a cap needs perDay, perWeek or both',
      'connectors/a.yaml:7:27: no output named "nowhere": an SMS webhook belongs to a configured SMS output',
      'connectors/a.yaml:7:47: secret environment variable TWILIO_TOKEN is not set',
      'connectors/b.yaml:1:1: policy is already configured at connectors/a.yaml:3:1; keep a single policy block',
      'connectors/b.yaml:2:24: "start" "8:00" is not valid: a time of day as HH:MM, e.g. 08:00',
    ]);
  });

  it('checks named admin tokens: their secrets, unique and unreserved names, known scopes', async () => {
    const dir = await configDir({
      'a.yaml': [
        'server:',
        '  admin:',
        '    tokens:',
        '      - { name: oncall, token: { env: ONCALL_TOKEN }, scopes: [read, operate] }',
        '      - { name: oncall, token: { env: OTHER_TOKEN }, scopes: [read] }',
        '      - { name: admin, token: { env: OTHER_TOKEN }, scopes: [read] }',
        '      - { name: lead, token: { env: OTHER_TOKEN }, scopes: [read, everything] }',
        '',
      ].join('\n'),
    });
    expect(await issuesOf(dir, { OTHER_TOKEN: 'other-token-0123456789' })).toEqual([
      'connectors/a.yaml:4:32: secret environment variable ONCALL_TOKEN is not set',
      'connectors/a.yaml:5:17: token name "oncall" is used twice; each token needs its own name for the audit log',
      'connectors/a.yaml:6:17: token name "admin" is reserved ("admin" is the tokenEnv token, "local" a caller on loopback without a token); choose another',
      expect.stringMatching(/^connectors\/a\.yaml:7:\d+: .*everything/),
    ]);
  });

  it('reads the queue block: bullmq with its Redis URL by reference, checked like every secret', async () => {
    const ok = await configDir({
      'a.yaml': ['server:', '  queue:', '    type: bullmq', '    url: { env: REDIS_URL }', '    prefix: north', ''].join('\n'),
    });
    const plan = await loadConfig({ configDir: ok, env: { REDIS_URL: 'redis://127.0.0.1:6379' } });
    expect(plan.server.queue).toEqual({ type: 'bullmq', url: { env: 'REDIS_URL' }, prefix: 'north', leaseSeconds: 30, durable: true });
    const embedded = await configDir({ 'a.yaml': 'server: {}\n' });
    expect((await loadConfig({ configDir: embedded, env: {} })).server.queue).toEqual({ type: 'sqlite', prefix: 'carerelay', leaseSeconds: 30, durable: true });

    const bad = await configDir({
      'a.yaml': [
        'server:',
        '  queue:',
        '    type: bullmq',
        '    url: redis://:hunter2@redis:6379',
        '    prefix: "a:b"',
        '',
      ].join('\n'),
      'b.yaml': '',
    });
    const issues = await issuesOf(bad);
    expect(issues).toEqual([
      expect.stringMatching(/^connectors\/a\.yaml:4:10: .*secrets are never written inline/),
      expect.stringMatching(/^connectors\/a\.yaml:5:13: .*no ":"/),
    ]);
    expect(issues.join('\n')).not.toContain('hunter2');

    const missing = await configDir({ 'a.yaml': ['server:', '  queue: { type: bullmq }', ''].join('\n') });
    expect(await issuesOf(missing)).toEqual([
      'connectors/a.yaml:2:12: queue type bullmq needs the Redis URL: add url: { env: REDIS_URL } (or { file: PATH })',
    ]);
    // One configuration switches its queue by environment: embedded, the URL is not needed.
    const switchable = await configDir({
      'a.yaml': ['server:', '  queue:', '    type: ${CARERELAY_QUEUE:-sqlite}', '    url: { env: REDIS_URL }', ''].join('\n'),
    });
    expect((await loadConfig({ configDir: switchable, env: {} })).server.queue.type).toBe('sqlite');
    expect(await issuesOf(switchable, { CARERELAY_QUEUE: 'bullmq' })).toEqual(['connectors/a.yaml:4:10: secret environment variable REDIS_URL is not set']);
    const unset = await configDir({ 'a.yaml': ['server:', '  queue:', '    type: bullmq', '    url: { env: REDIS_URL }', ''].join('\n') });
    expect(await issuesOf(unset)).toEqual(['connectors/a.yaml:4:10: secret environment variable REDIS_URL is not set']);
  });

  it('checks the video keys (docs/video.md): each reads to 32 bytes, ids unique, without repeating a value', async () => {
    const dir = await configDir({
      'a.yaml': [
        'server:',
        '  video:',
        '    key: { env: VIDEO_KEY }',
        '    keyId: k2',
        '    previousKeys:',
        '      - { id: k1, key: { env: OLD_KEY } }',
        '      - { id: k2, key: { env: MISSING_KEY } }',
        '',
      ].join('\n'),
    });
    const issues = await issuesOf(dir, { VIDEO_KEY: 'not-a-key-at-all', OLD_KEY: 'ab'.repeat(32) });
    expect(issues).toEqual([
      'connectors/a.yaml:3:10: server.video.key must be 32 random bytes written as 64 hex digits or 44 base64 characters (got 16 characters); make one with: openssl rand -hex 32',
      'connectors/a.yaml:7:15: key id "k2" is used twice; every key needs its own id (the current key is "k2")',
      'connectors/a.yaml:7:24: secret environment variable MISSING_KEY is not set',
    ]);
    expect(issues.join('\n')).not.toContain('not-a-key-at-all');
    const plan = await loadConfig({ configDir: await configDir({ 'a.yaml': 'server:\n  video: { key: { env: VIDEO_KEY }, opensMinutesBefore: 15 }\n' }), env: { VIDEO_KEY: 'ab'.repeat(32) } });
    expect(plan.server.video).toEqual({ key: { env: 'VIDEO_KEY' }, keyId: 'k1', previousKeys: [], opensMinutesBefore: 15, closesMinutesAfter: 30 });
  });

  it('reports a missing connectors directory and .yml files', async () => {
    const empty = await mkdtemp(path.join(os.tmpdir(), 'carerelay-config-'));
    made.push(empty);
    expect(await issuesOf(empty)).toEqual([
      'connectors: directory not found: create connectors/ with at least one .yaml file (see connectors/example.yaml)',
    ]);
    const dir = await configDir({ 'a.yml': 'inputs: []\n' });
    expect(await issuesOf(dir)).toEqual(['connectors/a.yml: not loaded: configuration files end in .yaml; rename it to a.yaml']);
  });

  it('refuses a file that is not a mapping, and inputs that are not a list of mappings', async () => {
    const dir = await configDir({ 'a.yaml': '- just\n- a list\n', 'b.yaml': 'inputs:\n  - 42\n', 'c.yaml': 'inputs: {}\n' });
    expect(await issuesOf(dir)).toEqual([
      'connectors/a.yaml:1:1: the document must be a mapping, got a list',
      'connectors/b.yaml:2:5: item 1 of "inputs" must be a mapping, got an integer',
      'connectors/c.yaml:1:9: "inputs" must be a list, got a mapping',
    ]);
  });
});

describe('alerts and retention blocks', () => {
  const outputs = [
    'outputs:',
    '  - { name: box, type: outbox, channel: sms }',
    '  - { name: hook, type: webhook, url: "http://127.0.0.1:9/h", secrets: [{ env: HOOK_SECRET }], allowPrivateAddresses: [127.0.0.1] }',
    '  - { name: mail, type: smtp, host: 127.0.0.1, port: 25, security: none, from: "ops@example.org" }',
    '',
  ].join('\n');

  it('defaults every setting when the blocks are left out', async () => {
    const plan = await loadConfig({ configDir: await configDir({ 'a.yaml': `inputs:\n${mllp('lab', 2601)}` }), env: {} });
    expect(plan.alerts).toMatchObject({ notify: [], checkEverySeconds: 30, silentInput: { afterMinutes: 60 }, errorRate: { threshold: 0.2 } });
    expect(plan.retention.days).toEqual({ rawMessages: 30, triggers: 90, deliveryBodies: 7, outbox: 7, deliveries: 365, doneJobs: 7, decisions: 2190, audit: 2190, outcomes: 730, videoJoins: 30, videoLinks: 30, replyPrompts: 30, staffTasks: 2190, waitlist: 730 });
  });

  it('sends alerts only through configured webhook or smtp outputs, an smtp one with an address; names known inputs', async () => {
    const dir = await configDir({
      'a.yaml': `inputs:\n${mllp('lab', 2601)}${outputs}`,
      'ops.yaml': [
        'alerts:',
        '  notify:',
        '    - { output: nowhere }',
        '    - { output: box }',
        '    - { output: mail }',
        '    - { output: hook }',
        '    - { output: mail, to: oncall@example.org }',
        '  silentInput: { inputs: { labb: 10 } }',
        '',
      ].join('\n'),
    });
    expect(await issuesOf(dir, { HOOK_SECRET: 'whsec_dGVzdA==' })).toEqual([
      'connectors/ops.yaml:3:17: no output named "nowhere": alerts go to a configured webhook or smtp output',
      'connectors/ops.yaml:4:17: output "box" is of type outbox; alerts go through webhook or smtp outputs',
      'connectors/ops.yaml:5:7: output "mail" sends email: give the address alerts are written to (to: oncall@example.org)',
      'connectors/ops.yaml:8:34: no input named "labb"',
    ]);
  });

  it('checks the waitlist block (docs/waitlist.md): a booking output that books, a rule that sends the offers, valid waves', async () => {
    const outputs = 'outputs:\n  - { name: sms, type: twilio, accountSid: AC0123456789abcdef0123456789abcdef, authToken: { env: TOKEN }, from: "+15005550006", baa: true }\n';
    const dir = await configDir({
      'a.yaml': `${outputs}waitlist:\n  book: sms\n  waves: { size: 0, everyMinutes: 15 }\n  sources: { laterAppointments: { optIn: some } }\n`,
    });
    expect(await issuesOf(dir, { TOKEN: 't' })).toEqual([
      'connectors/a.yaml:3:1: no rule sends the offers: add an sms rule on appointment.waitlist_offered with a reply offering accept (and decline) answers (docs/waitlist.md)',
      'connectors/a.yaml:4:9: output "sms" (twilio) cannot book a slot; use a fhir-appointment, hl7v2-srm or oracle-health-appointment output, or a webhook output with writeBack: true',
      'connectors/a.yaml:5:18: "size" must be >= 1 (got 0)',
      'connectors/a.yaml:6:42: "optIn" must be one of "all", "listed" (got "some")',
    ]);
    const unknown = await configDir({ 'a.yaml': `${outputs}waitlist:\n  book: ehr\n  sources: { laterAppointments: { optIn: listed } }\n` });
    expect(await issuesOf(unknown, { TOKEN: 't' })).toEqual([
      'connectors/a.yaml:3:1: no rule sends the offers: add an sms rule on appointment.waitlist_offered with a reply offering accept (and decline) answers (docs/waitlist.md)',
      'connectors/a.yaml:4:9: no output named "ehr"; known: sms: the waitlist books accepted slots through a fhir-appointment, hl7v2-srm or oracle-health-appointment output, or a webhook output with writeBack: true',
      'connectors/a.yaml:5:42: optIn: listed offers slots to the patients in `patients` only, and the list is empty: list the patient ids that opted in, or use optIn: all',
    ]);
  });

  it('accepts every output that declares book as the waitlist booking output (SRM^S01, Millennium, FHIR $book); refuses one that does not', async () => {
    const sms = '  - { name: sms, type: twilio, accountSid: AC0123456789abcdef0123456789abcdef, authToken: { env: TOKEN }, from: "+15005550006", baa: true }\n';
    const server = 'server: { baseUrl: "https://ehr.example.org/fhir/R4", auth: { bearer: { token: { env: TOKEN } } } }';
    const candidates = {
      srm: '{ name: srm, type: hl7v2-srm, host: sched.example.org, port: 2575, receivingApplication: SCHED, receivingFacility: HOSP }',
      millennium: `{ name: millennium, type: oracle-health-appointment, ${server} }`,
      book: `{ name: book, type: fhir-appointment, book: $book, ${server} }`,
      outbox: '{ name: outbox, type: outbox, channel: sms }',
    };
    const rule = 'rules:\n  - { id: offer, on: appointment.waitlist_offered, purpose: care.logistics, channel: sms, send: { output: sms, template: t }, at: now, reply: { answers: [{ action: accept, words: ["1"] }] } }\n';
    for (const name of Object.keys(candidates)) {
      const dir = await configDir({ 'a.yaml': `outputs:\n${sms}${Object.values(candidates).map((c) => `  - ${c}\n`).join('')}waitlist:\n  book: ${name}\n` });
      await mkdir(path.join(dir, 'mappings', 'templates'), { recursive: true });
      await writeFile(path.join(dir, 'mappings', 'offer.yaml'), rule);
      await writeFile(path.join(dir, 'mappings', 'templates', 't.liquid'), 'A slot is free. Reply 1 to take it.\n');
      if (name !== 'outbox') expect((await loadConfig({ configDir: dir, env: { TOKEN: 't' } })).waitlist?.book).toBe(name);
      else expect(await issuesOf(dir, { TOKEN: 't' })).toEqual(['connectors/a.yaml:8:9: output "outbox" (outbox) cannot book a slot; use a fhir-appointment, hl7v2-srm or oracle-health-appointment output, or a webhook output with writeBack: true']);
    }
  });

  it('loads the shipped waitlist example once uncommented, with the output it names and mappings/waitlist.yaml', async () => {
    const { readFile, cp } = await import('node:fs/promises');
    const shipped = await readFile(path.join(repoRoot, 'connectors', 'waitlist.yaml'), 'utf8');
    const block = shipped.slice(shipped.indexOf('# waitlist:')).replace(/^# ?/gm, '');
    const outputs =
      'outputs:\n  - { name: outbox-sms, type: outbox, channel: sms }\n' +
      '  - { name: ehr-appointments, type: fhir-appointment, appointments: identifier, server: { baseUrl: "https://ehr.example.org/fhir/R4", auth: { bearer: { token: { env: EHR_FHIR_TOKEN } } } } }\n';
    const dir = await configDir({ 'a.yaml': outputs, 'waitlist.yaml': block });
    await mkdir(path.join(dir, 'mappings', 'templates'), { recursive: true });
    await cp(path.join(repoRoot, 'mappings', 'waitlist.yaml'), path.join(dir, 'mappings', 'waitlist.yaml'));
    for (const name of ['waitlist-offer', 'waitlist-taken', 'waitlist-booked']) {
      for (const file of [`${name}.liquid`, `${name}.fr.liquid`]) await cp(path.join(repoRoot, 'mappings', 'templates', file), path.join(dir, 'mappings', 'templates', file));
    }
    const plan = await loadConfig({ configDir: dir, env: { EHR_FHIR_TOKEN: 't' } });
    expect(plan.waitlist).toMatchObject({ book: 'ehr-appointments', minNoticeMinutes: 120, waves: { size: 3, everyMinutes: 15, expiresMinutes: 30, stopMinutesBefore: 120 }, sources: { laterAppointments: { optIn: 'all' } } });
  });

  it('keeps triggers at least as long as the sensitive-care window', async () => {
    const dir = await configDir({ 'a.yaml': `inputs:\n${mllp('lab', 2601)}policy:\n  sensitive: { windowDays: 120 }\nretention:\n  days: { triggers: 90, deliveryBodies: 0 }\n` });
    expect(await issuesOf(dir)).toEqual([
      'connectors/a.yaml:9:21: triggers are kept 90 days, fewer than policy.sensitive.windowDays (120): the appointment and encounter states that hold a sensitive episode must outlive its window; keep them at least 120 days',
      'connectors/a.yaml:9:41: "deliveryBodies" must be >= 1 (got 0)',
    ]);
  });
});
