// CareRelay on PostgreSQL (server.store type postgres, docs/scale-out.md), as a user runs it:
// HL7v2 over MLLP acknowledged after the commit in PostgreSQL, routed, its due message kept by
// the outbox; a resend answered from the dedupe key; two processes on one database; and the
// commands that work on the store: validate --connect, migrate, export, import, outbox.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { POSTGRES_STORE_MIGRATIONS } from '../src/store/postgres.ts';
import { createTestDatabase, postgresSkipped, type TestDatabase } from './helpers/postgres.ts';
import { captureLogger, runCli, startChildServer, hl7Field, mllpExchange, siuMessage, writeYamlConfig, type TestConfigDir } from './helpers/server.ts';

const carerelay = runCli;

const RULES = `rules:
  - id: confirm
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: confirm, fields: [appointment.start] }
    at: now
  - id: reminder
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: confirm, fields: [appointment.start] }
    at: appointment.start - 24h
`;

/** A configuration on `store` ('sqlite', or 'postgres' with DATABASE_URL), one MLLP input, an SMS outbox. */
function config(store: 'sqlite' | 'postgres'): TestConfigDir {
  const dir = writeYamlConfig(
    [
      'server:',
      '  http: { host: 127.0.0.1, port: 0 }',
      '  dataDir: {dataDir}',
      '  store:',
      `    type: ${store}`,
      '    url: { env: DATABASE_URL }',
      '    pool: { max: 5 }',
      'policy:',
      '  quietHours: { channels: [] }',
      '  usExemptSms: { perDay: 1000, perWeek: 1000 }',
      'inputs:',
      '  - { name: ehr-mllp, type: hl7v2-mllp, host: 127.0.0.1, port: 0, plain: true, timezone: UTC }',
      'outputs:',
      '  - { name: sms, type: outbox, channel: sms, allowedPurposes: [care.logistics] }',
      '',
    ].join('\n'),
  );
  mkdirSync(path.join(dir.dir, 'mappings', 'templates'), { recursive: true });
  writeFileSync(path.join(dir.dir, 'mappings', 'rules.yaml'), RULES);
  writeFileSync(path.join(dir.dir, 'mappings', 'templates', 'confirm.liquid'), 'Booked for {{ appointment.start | local_time }}\n');
  return dir;
}

/** An SIU with a mobile number, as an EHR sends it. */
function booking(controlId: string, appointmentId: string): string {
  return siuMessage({ controlId, appointmentId, start: new Date('2030-03-16T13:30:00Z') }).replace('|19600101|M', '|19600101|M|||||+15550100^PRN^CP');
}

async function rows(url: string, sql: string): Promise<Array<Record<string, unknown>>> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(sql)).rows;
  } finally {
    await client.end();
  }
}

describe.skipIf(postgresSkipped())('CareRelay on PostgreSQL', () => {
  let db: TestDatabase;
  let dir: TestConfigDir;
  const running: RunningCarerelay[] = [];
  const start = async (config: TestConfigDir, url: string) => {
    const server = await startCarerelay({ configDir: config.dir, env: { DATABASE_URL: url }, log: captureLogger(), watchMappings: false });
    running.push(server);
    return server;
  };

  beforeEach(async () => {
    db = await createTestDatabase();
    dir = config('postgres');
  });
  afterEach(async () => {
    await Promise.all(running.splice(0).map((s) => s.stop()));
    dir.remove();
    await db.drop();
  });

  it('acknowledges AA after the commit in PostgreSQL, routes, keeps the due message; a resend gets the same ACK', async () => {
    const server = await start(dir, db.url);
    const port = [...server.mllpPorts.values()][0]!;
    const ack = await mllpExchange(port, booking('C1', 'A1'));
    expect(hl7Field(ack!, 'MSA', 1)).toBe('AA');
    // Committed before the ACK: another connection to the database sees it at once.
    expect(await rows(db.url, "SELECT control_id, status FROM messages WHERE control_id = 'C1'")).toEqual([{ control_id: 'C1', status: 'accepted' }]);
    await server.deliveries.idle();
    const outbox = await server.store.listOutbox({});
    expect(outbox.map((e) => e.deliveryId)).toEqual(['confirm@appointment/A1#0']);
    expect((await server.store.getDelivery('reminder@appointment/A1#0'))?.status).toBe('pending');
    const again = await mllpExchange(port, booking('C1', 'A1'));
    expect(again!.toString('latin1')).toBe(ack!.toString('latin1'));
    expect(await rows(db.url, 'SELECT COUNT(*)::int AS n FROM messages')).toEqual([{ n: 1 }]);
  });

  it('two processes on one database: each message stored once whichever one a resend reaches', async () => {
    const other = config('postgres');
    try {
      const [a, b] = [await start(dir, db.url), await start(other, db.url)];
      const [pa, pb] = [[...a.mllpPorts.values()][0]!, [...b.mllpPorts.values()][0]!];
      const acks = await Promise.all(Array.from({ length: 20 }, (_, i) => [mllpExchange(pa, booking(`M${i}`, `A${i}`)), mllpExchange(pb, booking(`M${i}`, `A${i}`))]).flat());
      for (let i = 0; i < 20; i++) expect(acks[2 * i]!.toString('latin1')).toBe(acks[2 * i + 1]!.toString('latin1'));
      await Promise.all([a.deliveries.idle(), b.deliveries.idle()]);
      expect(await rows(db.url, 'SELECT COUNT(*)::int AS n FROM messages')).toEqual([{ n: 20 }]);
      // Each booking's confirmation sent once, whichever process routed and ran it.
      expect(await rows(db.url, "SELECT COUNT(*)::int AS n FROM deliveries WHERE rule = 'confirm' AND status = 'sent'")).toEqual([{ n: 20 }]);
      expect(await rows(db.url, 'SELECT COUNT(*)::int AS n FROM outbox')).toEqual([{ n: 20 }]);
    } finally {
      other.remove();
    }
  });

  it('two carerelay processes on one database, one killed (SIGKILL) mid-stream: every message acknowledged AA is stored once', async () => {
    const other = config('postgres');
    const env = { DATABASE_URL: db.url };
    const [a, b] = await Promise.all([startChildServer(dir, { env }), startChildServer(other, { env })]);
    try {
      const [pa, pb] = [[...a.mllpPorts.values()][0]!, [...b.mllpPorts.values()][0]!];
      const acked = new Map<string, string>();
      let killed = false;
      // A sender that resends to the other process what was not acknowledged (as a sender
      // behind a load balancer does when its connection drops).
      const send = async (i: number) => {
        const id = `K${i}`;
        for (const port of i % 2 === 0 ? [pa, pb] : [pb]) {
          const ack = await mllpExchange(port, booking(id, `KA${i}`), 15_000).catch(() => null);
          if (ack !== null) {
            acked.set(id, hl7Field(ack, 'MSA', 1));
            // Process a dies once a third of the messages are in, others to it still on the way.
            if (acked.size === 10 && !killed) {
              killed = true;
              a.kill();
            }
            return;
          }
        }
      };
      await Promise.all(Array.from({ length: 30 }, (_, i) => send(i)));
      expect(killed).toBe(true);
      await a.exited;
      expect([...acked.values()].every((code) => code === 'AA')).toBe(true);
      expect(acked.size).toBe(30);
      const stored = await rows(db.url, "SELECT control_id, COUNT(*)::int AS n FROM messages WHERE control_id LIKE 'K%' GROUP BY control_id ORDER BY control_id");
      expect(stored.map((r) => r.control_id).sort()).toEqual([...acked.keys()].sort());
      expect(stored.every((r) => r.n === 1)).toBe(true);
    } finally {
      a.kill();
      await b.stop();
      other.remove();
    }
  });

  it('validate --connect names the server it reached, or the one it could not reach and the fix', async () => {
    const ok = await carerelay(['validate', '--config-dir', dir.dir, '--connect'], { DATABASE_URL: db.url });
    expect(ok.stderr).toBe('');
    expect(ok.stdout).toMatch(/configuration OK/);
    expect(ok.stdout).toMatch(new RegExp(`store: PostgreSQL at 127\\.0\\.0\\.1:\\d+, database "${db.name}" as user "\\w+": connected \\(PostgreSQL \\d+`));
    const down = await carerelay(['validate', '--config-dir', dir.dir, '--connect'], { DATABASE_URL: 'postgres://carerelay@127.0.0.1:1/carerelay' });
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/store: cannot use PostgreSQL at 127\.0\.0\.1:1, database "carerelay" as user "carerelay": nothing accepts connections at 127\.0\.0\.1:1: start PostgreSQL there, or correct the host and port of the store URL/);
    // The URL is a secret: checked when the store is postgres, never shown.
    const unset = await carerelay(['validate', '--config-dir', dir.dir], { DATABASE_URL: '' });
    expect(unset.code).toBe(1);
    expect(unset.stderr).toMatch(/test\.yaml:6:\d+: secret environment variable DATABASE_URL is not set/);
    const embedded = config('sqlite');
    try {
      expect((await carerelay(['validate', '--config-dir', embedded.dir], { DATABASE_URL: '' })).code).toBe(0);
    } finally {
      embedded.remove();
    }
  });

  it('migrate creates the tables once; export of an embedded store imports into PostgreSQL, once', async () => {
    const env = { DATABASE_URL: db.url };
    const first = await carerelay(['migrate', '--config-dir', dir.dir], env);
    const steps = POSTGRES_STORE_MIGRATIONS.length;
    expect(first.stdout).toMatch(new RegExp(`database ".*": schema version ${steps} \\(${steps} step\\(s\\) applied now\\)`));
    expect((await carerelay(['migrate', '--config-dir', dir.dir], env)).stdout).toMatch(new RegExp(`schema version ${steps} \\(up to date\\)`));

    // An embedded site with a few messages, moved.
    const embedded = config('sqlite');
    try {
      const server = await start(embedded, '');
      const port = [...server.mllpPorts.values()][0]!;
      for (let i = 0; i < 3; i++) expect(hl7Field((await mllpExchange(port, booking(`E${i}`, `EA${i}`)))!, 'MSA', 1)).toBe('AA');
      await server.deliveries.idle();
      await server.stop();
      running.splice(running.indexOf(server), 1);
      const file = path.join(embedded.dir, 'store.ndjson');
      const exported = await carerelay(['export', '--config-dir', embedded.dir, '--out', file]);
      expect(exported.stderr).toMatch(/exported \d+ record\(s\) from the SQLite file .*carerelay\.db to .*store\.ndjson/);
      expect((await carerelay(['export', '--config-dir', embedded.dir, '--out', file])).stderr).toMatch(/exists already/);
      const imported = await carerelay(['import', '--config-dir', dir.dir, file], env);
      expect(imported.stdout).toMatch(/imported \d+ record\(s\) into PostgreSQL at .*: 3 message, 3 trigger/);
      // Import goes into PostgreSQL only.
      expect((await carerelay(['import', '--config-dir', embedded.dir, file])).stderr).toMatch(/import writes into a PostgreSQL store/);
      // Prune walks the PostgreSQL store too: the imported records are within their retention.
      const dry = await carerelay(['prune', '--config-dir', dir.dir, '--dry-run', '--json'], env);
      expect(dry.code).toBe(0);
      const run = JSON.parse(dry.stdout) as { dryRun: boolean; kinds: Array<{ kind: string; removed: number }> };
      expect(run.dryRun).toBe(true);
      expect(run.kinds.map((k) => k.kind)).toEqual(expect.arrayContaining(['rawMessages', 'triggers', 'deliveries', 'audit']));
      expect(run.kinds.every((k) => k.removed === 0)).toBe(true);
      const prune = await carerelay(['prune', '--config-dir', dir.dir], env);
      expect(prune.code).toBe(0);
      expect(prune.stdout).toMatch(/removed \(older than its retention, never what is still needed\):\n {2}deliveryBodies +0 /);
      expect((await carerelay(['prune', '--config-dir', dir.dir, '--vacuum'], env)).stderr).toMatch(/--vacuum compacts the embedded SQLite file.*nothing was pruned/);
      const twice = await carerelay(['import', '--config-dir', dir.dir, file], env);
      expect(twice.code).toBe(1);
      expect(twice.stderr).toMatch(/already holds data .*nothing was imported/);
      // The outbox command reads the configured store.
      const outbox = await carerelay(['outbox', '--config-dir', dir.dir, '--json'], env);
      expect(outbox.stdout.trim().split('\n').map((l) => (JSON.parse(l) as { deliveryId: string }).deliveryId).sort()).toEqual([0, 1, 2].map((i) => `confirm@appointment/EA${i}#0`));
      // Started on PostgreSQL, the moved store goes on: a resend is answered as before.
      const server2 = await start(dir, db.url);
      const resend = await mllpExchange([...server2.mllpPorts.values()][0]!, booking('E1', 'EA1'));
      expect(hl7Field(resend!, 'MSA', 1)).toBe('AA');
      expect(await rows(db.url, 'SELECT COUNT(*)::int AS n FROM messages')).toEqual([{ n: 3 }]);
      expect(readFileSync(file, 'utf8')).toMatch(/^\{"format":"carerelay-store","version":1\}\n/);
    } finally {
      embedded.remove();
    }
  });
});
