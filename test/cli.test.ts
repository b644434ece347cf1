// The `carerelay` command as a user runs it: a child process of bin/carerelay.mjs, exit
// codes, stdout and stderr.
import { execFile } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFhirTestServer, type FhirTestServer, type TestFhirResource } from './helpers/fhir-server.ts';
import { CLI_PATH, siuMessage, startServer, writeConfigDir, type InProcessServer, type TestConfigDir } from './helpers/server.ts';

const run = promisify(execFile);
const fixtures = path.join(import.meta.dirname, '..', 'fixtures');

async function carerelay(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI_PATH, ...args], {
      cwd: path.dirname(CLI_PATH) + '/..',
      env: { ...process.env, ...env },
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** Triggers without receivedAt (the CLI stamps the current time). */
function withoutReceivedAt(ndjson: string): unknown[] {
  return ndjson
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      const { receivedAt: _r, ...rest } = JSON.parse(l) as Record<string, unknown>;
      return rest;
    });
}

describe('carerelay normalize', () => {
  it('prints the golden triggers of HL7v2 files as NDJSON and exits 0', async () => {
    const files = ['SIU-S12-01', 'ADT-A03-01'].map((n) => path.join(fixtures, 'hl7v2', `${n}.hl7`));
    const { code, stdout, stderr } = await carerelay(['normalize', ...files]);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    const expected = ['SIU-S12-01', 'ADT-A03-01'].flatMap((n) =>
      withoutReceivedAt(readFileSync(path.join(fixtures, 'hl7v2', `${n}.triggers.ndjson`), 'utf8')),
    );
    expect(withoutReceivedAt(stdout)).toEqual(expected);
  });

  it('reads times without offset in --timezone', async () => {
    const { code, stdout } = await carerelay(['normalize', '--timezone', 'Europe/Paris', path.join(fixtures, 'hl7v2', 'cr-siu-s12-paris.hl7')]);
    expect(code).toBe(0);
    expect(withoutReceivedAt(stdout)).toEqual(
      withoutReceivedAt(readFileSync(path.join(fixtures, 'hl7v2', 'cr-siu-s12-paris.triggers.ndjson'), 'utf8')),
    );
  });

  it('exits 1 naming each rejected file and its reason; non-trigger messages give nothing', async () => {
    const rejected = path.join(fixtures, 'hl7v2', 'cr-siu-s12-no-appointment-id.hl7');
    const ack = path.join(fixtures, 'hl7v2', 'cr-ack.hl7');
    const booked = path.join(fixtures, 'hl7v2', 'SIU-S12-01.hl7');
    const { code, stdout, stderr } = await carerelay(['normalize', ack, rejected, booked]);
    expect(code).toBe(1);
    expect(stderr.trim().split('\n')).toEqual([expect.stringMatching(new RegExp(`^${rejected}: .*SCH-2`))]);
    expect(withoutReceivedAt(stdout)).toHaveLength(1); // the booking still printed

    const onlyAck = await carerelay(['normalize', ack]);
    expect(onlyAck).toEqual({ code: 0, stdout: '', stderr: '' });
  });

  it('normalizes a full-resource FHIR notification and refuses an id-only one it cannot resolve offline', async () => {
    const full = await carerelay(['normalize', path.join(fixtures, 'fhir', 'r5-appointment-booked.json')]);
    expect(full.code).toBe(0);
    expect((withoutReceivedAt(full.stdout)[0] as { type: string }).type).toBe('appointment.booked');
    const idOnly = path.join(fixtures, 'fhir', 'backport-r4-id-only.json');
    const refused = await carerelay(['normalize', idOnly]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`${idOnly}: needs `);
  });

  describe('the official FHIR R4 examples (fixtures/corpus/fhir/r4-spec)', () => {
    const spec = (name: string) => path.join(fixtures, 'corpus', 'fhir', 'r4-spec', `${name}.json`);
    let fhir: FhirTestServer;
    let dir: string;
    beforeAll(async () => {
      fhir = await startFhirTestServer();
      fhir.put(JSON.parse(readFileSync(spec('Patient-example'), 'utf8')) as TestFhirResource);
      dir = mkdtempSync(path.join(tmpdir(), 'carerelay-normalize-'));
    });
    afterAll(async () => {
      await fhir.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it('appointment-example alone: a hint that is true (its Patient is not in the file)', async () => {
      const { code, stdout, stderr } = await carerelay(['normalize', spec('Appointment-example')]);
      expect([code, stdout]).toEqual([1, '']);
      expect(stderr.trim()).toBe(
        `${spec('Appointment-example')}: needs Patient/example, which the file does not include: add it as a contained resource, ` +
          'or give a collection or transaction Bundle holding both, or give --fhir-base URL to fetch it from the FHIR server that has it',
      );
    });

    it('appointment-example and encounter-example with --fhir-base: the Patient is fetched from there, and the base is the sender', async () => {
      const before = fhir.requests.length;
      const { code, stdout, stderr } = await carerelay(['normalize', '--fhir-base', fhir.baseUrl, spec('Appointment-example'), spec('Encounter-example')]);
      expect([code, stderr]).toEqual([0, '']);
      const triggers = withoutReceivedAt(stdout) as Array<Record<string, any>>;
      expect(triggers.map((t) => [t.type, t.source.sender, t.source.messageId, t.patient.id])).toEqual([
        ['appointment.booked', fhir.baseUrl, 'Appointment/example', '12345'],
        ['encounter.started', fhir.baseUrl, 'Encounter/example', '12345'],
      ]);
      expect(triggers[0]!.appointment).toMatchObject({ id: 'example', status: 'booked', start: '2013-12-10T09:00:00Z', end: '2013-12-10T11:00:00Z' });
      expect(triggers[1]!.encounter).toMatchObject({ id: 'example', status: 'in-progress', class: 'IMP' });
      expect(fhir.requests.slice(before).map((r) => `${r.method} ${r.path}`)).toEqual(['GET /fhir/Patient/example', 'GET /fhir/Patient/example']);
    });

    it('a collection Bundle of the three examples: one trigger per Appointment and Encounter, offline', async () => {
      const entries = ['Appointment-example', 'Encounter-example', 'Patient-example'].map((name) => {
        const resource = JSON.parse(readFileSync(spec(name), 'utf8')) as TestFhirResource;
        return { fullUrl: `http://hl7.org/fhir/${resource.resourceType}/${resource.id}`, resource };
      });
      const file = path.join(dir, 'collection.json');
      writeFileSync(file, JSON.stringify({ resourceType: 'Bundle', type: 'collection', entry: entries }));
      const { code, stdout, stderr } = await carerelay(['normalize', file]);
      expect([code, stderr]).toEqual([0, '']);
      expect(withoutReceivedAt(stdout).map((t) => (t as { type: string }).type)).toEqual(['appointment.booked', 'encounter.started']);
    });

    it('the full-resource notification of the corpus: the hint says what is missing and how to give it', async () => {
      const file = path.join(fixtures, 'corpus', 'fhir', 'backport-r4', 'r4-notification-full-resource.json');
      const { code, stderr } = await carerelay(['normalize', file]);
      expect(code).toBe(1);
      expect(stderr).toContain('add it to the notification Bundle as an entry whose fullUrl is that reference, or give --fhir-base URL');
      expect(stderr).not.toContain('give a full-resource notification');
      // --fhir-base on another server: the reference is outside it, and nothing is fetched.
      const before = fhir.requests.length;
      const other = await carerelay(['normalize', '--fhir-base', fhir.baseUrl, file]);
      expect(other.code).toBe(1);
      expect(other.stderr).toMatch(/outside the configured FHIR base .* \(fhir_reference_outside_base\)/);
      expect(fhir.requests.length).toBe(before);
    });
  });
  it('refuses an unknown time zone', async () => {
    const { code, stderr } = await carerelay(['normalize', '--timezone', 'Mars/Olympus', path.join(fixtures, 'hl7v2', 'SIU-S12-01.hl7')]);
    expect(code).toBe(2);
    expect(stderr).toContain('Mars/Olympus is not an IANA time zone');
  });
});

describe('carerelay validate', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'carerelay-validate-'));
    mkdirSync(path.join(dir, 'connectors'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('lists every problem with file:line:column and exits 1', async () => {
    writeFileSync(
      path.join(dir, 'connectors', 'bad.yaml'),
      ['inputs:', '  - name: ehr', '    type: hl7v2-mllp', '    port: 99999', '    colour: blue', ''].join('\n'),
    );
    const { code, stderr } = await carerelay(['validate', '--config-dir', dir]);
    expect(code).toBe(1);
    expect(stderr).toMatch(/connectors\/bad\.yaml:4:11: .*port/);
    expect(stderr).toMatch(/connectors\/bad\.yaml:5:5: unknown key "colour"/);
    expect(stderr).toContain('nothing was started');
  });

  it('also checks the mapping tests (*.test.yaml) beside the mappings, without running them', async () => {
    const repo = path.join(fixtures, '..');
    const copy = mkdtempSync(path.join(tmpdir(), 'carerelay-validate-tests-'));
    try {
      for (const dir of ['connectors', 'mappings', 'fixtures/hl7v2']) cpSync(path.join(repo, dir), path.join(copy, dir), { recursive: true });
      writeFileSync(
        path.join(copy, 'mappings', 'broken.test.yaml'),
        [
          'tests:',
          '  - name: a test with a typo and a missing input file',
          '    now: 2025-06-01T09:00:00+02:00',
          '    timezone: Europe/Paris',
          '    given:',
          '      - file: no-such-file.hl7',
          '    expect:',
          '      deliveries: none',
          '      skiped: []',
          '',
        ].join('\n'),
      );
      const { code, stderr } = await carerelay(['validate', '--config-dir', copy]);
      expect(code).toBe(1);
      expect(stderr).toMatch(/mappings\/broken\.test\.yaml:9:7: unknown key "skiped"/);
      // The shape is checked first; once it is right, the input file is.
      writeFileSync(path.join(copy, 'mappings', 'broken.test.yaml'), readFileSync(path.join(copy, 'mappings', 'broken.test.yaml'), 'utf8').replace('      skiped: []\n', ''));
      const second = await carerelay(['validate', '--config-dir', copy]);
      expect(second.code).toBe(1);
      expect(second.stderr.split('\n').filter((l) => l.includes('.test.yaml'))).toEqual([
        expect.stringMatching(/mappings\/broken\.test\.yaml:6:9: input file no-such-file\.hl7 does not exist/),
      ]);
    } finally {
      rmSync(copy, { recursive: true, force: true });
    }
  });

  it('accepts the shipped example', async () => {
    const { code, stdout } = await carerelay(['validate']);
    expect(code).toBe(0);
    expect(stdout).toContain('configuration OK');
  });

  it('checks the commented adapter blocks of the shipped example once they are uncommented', async () => {
    const repo = path.join(path.dirname(CLI_PATH), '..');
    const copy = mkdtempSync(path.join(tmpdir(), 'carerelay-adapters-'));
    try {
      cpSync(path.join(repo, 'connectors'), path.join(copy, 'connectors'), { recursive: true });
      cpSync(path.join(repo, 'mappings'), path.join(copy, 'mappings'), { recursive: true });
      // The mapping tests (validate checks them too) read their inputs from ../fixtures.
      cpSync(path.join(repo, 'fixtures', 'hl7v2'), path.join(copy, 'fixtures', 'hl7v2'), { recursive: true });
      const file = path.join(copy, 'connectors', 'adapters.yaml');
      const lines = readFileSync(file, 'utf8').split('\n');
      const from = lines.indexOf('# outputs:');
      expect(from).toBeGreaterThan(0);
      // What a user does: remove one "# " from each line of the blocks.
      const uncommented = lines.map((l, i) => (i < from ? l : l.replace(/^# ?/, ''))).join('\n');
      writeFileSync(file, uncommented);
      const secrets = {
        TWILIO_AUTH_TOKEN: 't',
        SMTP_PASSWORD: 'p',
        SCHEDULING_WEBHOOK_SECRET: 'whsec_AAAA',
        EHR_FHIR_TOKEN: 'e',
        MILLENNIUM_TOKEN: 'm',
        SFMC_CLIENT_SECRET: 's',
        SFMC_CONTACT_KEY_SECRET: 'k',
        SALESFORCE_CLIENT_SECRET: 'c',
        AEP_CLIENT_SECRET: 'a',
      };
      const ok = await carerelay(['validate', '--config-dir', copy], secrets);
      expect(ok.stderr).toBe('');
      // The ten of adapters.yaml, the two outboxes of outbox.yaml and the two of marketing.yaml.
      expect(ok.stdout).toContain('configuration OK: 2 input(s), 14 output(s)');
      // A mistake in a block is reported at its place.
      writeFileSync(file, uncommented.replace('accountSid: AC00000000000000000000000000000000', 'accountSid: AC123'));
      const bad = await carerelay(['validate', '--config-dir', copy], secrets);
      expect(bad.code).toBe(1);
      expect(bad.stderr).toMatch(/connectors\/adapters\.yaml:\d+:17: .*accountSid/);
    } finally {
      rmSync(copy, { recursive: true, force: true });
    }
  });
});

describe('carerelay test', () => {
  it('runs one *.test.yaml file against the mappings of its directory', async () => {
    const file = path.join(fixtures, '..', 'mappings', 'discharge.test.yaml');
    const { code, stdout } = await carerelay(['test', file]);
    expect(code).toBe(0);
    const lines = stdout.trim().split('\n');
    expect(lines.filter((l) => l.startsWith('ok ')).every((l) => l.includes('discharge.test.yaml'))).toBe(true);
    expect(lines.at(-1)).toMatch(/^[1-9]\d* passed, 0 failed$/);
  });

  it('says clearly that a path does not exist, or is not a mapping test, instead of a stack trace', async () => {
    const missing = await carerelay(['test', 'mappings/nope.test.yaml']);
    expect(missing).toEqual({
      code: 2,
      stdout: '',
      stderr: 'carerelay: test: mappings/nope.test.yaml does not exist: give a mappings directory or one of its *.test.yaml files\n',
    });
    const notATest = await carerelay(['test', 'mappings/appointments.yaml']);
    expect(notATest.code).toBe(2);
    expect(notATest.stderr).toContain('is not a mapping test');
  });
});

describe('carerelay send', () => {
  let config: TestConfigDir;
  let server: InProcessServer;
  beforeAll(async () => {
    config = writeConfigDir();
    server = await startServer(config);
  });
  afterAll(async () => {
    await server.stop();
    config.remove();
  });

  it('sends each file over MLLP, prints its ACK code, and exits 0 when all are AA', async () => {
    const file = path.join(config.dir, 'booking.hl7');
    writeFileSync(file, siuMessage({ controlId: 'CLI-1', appointmentId: 'A-CLI-1' }));
    const { code, stdout } = await carerelay(['send', '--to', `127.0.0.1:${server.mllpPort()}`, file]);
    expect(stdout.trim()).toBe('booking.hl7 CLI-1 AA');
    expect(code).toBe(0);
    expect((await server.store.findMessage('EPIC^NORTHCLINIC', 'CLI-1'))?.status).toBe('accepted');
  });

  it('sends a message whose MSH-15 is NE without waiting for an ACK, and exits 0', async () => {
    const file = path.join(config.dir, 'quiet.hl7');
    writeFileSync(file, siuMessage({ controlId: 'CLI-NE', appointmentId: 'A-CLI-NE', acceptAck: 'NE', applicationAck: 'NE' }));
    const { code, stdout } = await carerelay(['send', '--to', `127.0.0.1:${server.mllpPort()}`, file]);
    expect(stdout.trim()).toBe('quiet.hl7 CLI-NE - no ACK expected (MSH-15 NE)');
    expect(code).toBe(0);
    // The client's graceful close waited for the server to finish the frame and close its side.
    expect((await server.store.findMessage('EPIC^NORTHCLINIC', 'CLI-NE'))?.status).toBe('accepted');
  });

  it('counts silence until the timeout as accepted for MSH-15 ER (only errors are acknowledged)', async () => {
    const file = path.join(config.dir, 'errors-only.hl7');
    writeFileSync(file, siuMessage({ controlId: 'CLI-ER', appointmentId: 'A-CLI-ER', acceptAck: 'ER', applicationAck: 'NE' }));
    const { code, stdout } = await carerelay(['send', '--to', `127.0.0.1:${server.mllpPort()}`, '--timeout', '0.5', file]);
    expect(stdout.trim()).toBe('errors-only.hl7 CLI-ER - no error ACK within 0.5 s: accepted (MSH-15 ER)');
    expect(code).toBe(0);
  });

  it('exits 1 when a message is refused, printing the code and reason', async () => {
    const file = path.join(fixtures, 'hl7v2', 'cr-siu-s12-no-appointment-id.hl7');
    const { code, stdout } = await carerelay(['send', '--to', `127.0.0.1:${server.mllpPort()}`, file]);
    expect(stdout).toMatch(/^cr-siu-s12-no-appointment-id\.hl7 \S+ AR .*SCH-2/);
    expect(code).toBe(1);
  });

  it('outbox reads the running server\'s store (empty: no mappings in this config)', async () => {
    const { code, stdout } = await carerelay(['outbox', '--config-dir', config.dir]);
    expect(code).toBe(0);
    expect(stdout).toBe('the outbox is empty\n');
  });

  it('explains a missing --to', async () => {
    const { code, stderr } = await carerelay(['send', 'x.hl7']);
    expect(code).toBe(2);
    expect(stderr).toContain('--to HOST:PORT');
  });
});

describe('carerelay fhir subscribe', () => {
  let dir: string;
  let fhir: FhirTestServer;
  beforeAll(async () => {
    fhir = await startFhirTestServer();
    dir = mkdtempSync(path.join(tmpdir(), 'carerelay-subscribe-'));
    mkdirSync(path.join(dir, 'connectors'));
    writeFileSync(
      path.join(dir, 'connectors', 'fhir.yaml'),
      [
        'inputs:',
        '  - name: ehr-fhir',
        '    type: fhir-rest-hook',
        `    server: { baseUrl: ${JSON.stringify(fhir.baseUrl)} }`,
        '    auth: { bearer: { token: { env: HOOK_TOKEN } } }',
        '    subscriptions:',
        '      - id: appointments',
        '        topic: http://example.org/SubscriptionTopic/appointment-changed',
        '        payload: full-resource',
        '',
      ].join('\n'),
    );
  });
  afterAll(async () => {
    await fhir.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('creates the Subscription on the configured server and prints its status without the secret', async () => {
    const token = 'cli-hook-token-93e1';
    const { code, stdout, stderr } = await carerelay(
      ['fhir', 'subscribe', '--config-dir', dir, '--input', 'ehr-fhir', '--endpoint', 'https://carerelay.example.org'],
      { HOOK_TOKEN: token },
    );
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(stdout).toContain('appointments');
    expect(stdout).not.toContain(token);
    const subscription = fhir.get('Subscription', 'appointments') as unknown as { channel: { endpoint: string; header: string[] } };
    expect(subscription.channel.endpoint).toBe('https://carerelay.example.org/ingest/fhir/ehr-fhir');
    expect(subscription.channel.header).toEqual([`Authorization: Bearer ${token}`]);
  });

  it('reports a subscription the server refuses on stderr and exits 1', async () => {
    fhir.failNext(403, 1);
    const { code, stdout, stderr } = await carerelay(
      ['fhir', 'subscribe', '--config-dir', dir, '--input', 'ehr-fhir', '--endpoint', 'https://carerelay.example.org'],
      { HOOK_TOKEN: 't' },
    );
    expect([code, stdout]).toEqual([1, '']);
    expect(stderr).toMatch(/^Subscription\/appointments on http:\/\/127\.0\.0\.1:\d+\/fhir: failed: read Subscription\/appointments: HTTP 403 .*\(fhir_forbidden\)\n$/);
  });

  it('names the fhir-rest-hook inputs when --input is wrong', async () => {
    const { code, stderr } = await carerelay(['fhir', 'subscribe', '--config-dir', dir, '--input', 'nope', '--endpoint', 'https://x.example.org'], {
      HOOK_TOKEN: 't',
    });
    expect(code).toBe(1);
    expect(stderr).toContain('fhir-rest-hook inputs: ehr-fhir');
  });
});
