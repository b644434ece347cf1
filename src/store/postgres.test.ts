// What only the PostgreSQL store has to show (the shared behaviour is in conformance.test.ts):
// several processes on one database (two stores stand for two processes: each has its own pool
// and group commit), migrations at start, errors that name the server and the fix, TLS, pool
// limits, and identifiers PostgreSQL's text type cannot hold as they are.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { makeTestPki, type TestPki } from '../../test/helpers/certs.ts';
import { adminQuery, createTestDatabase, endConnections, postgresSkipped, startPostgresCluster, testPostgresServer, truncateAll, withDatabase, type TestDatabase } from '../../test/helpers/postgres.ts';
import { testDelivery, testRecord, testTrigger } from './conformance.ts';
import { migratePostgres, openPostgresPool, parsePostgresUrl, type PostgresSettings } from './postgres-db.ts';
import { POSTGRES_STORE_COMPONENT, POSTGRES_STORE_MIGRATIONS, PostgresStore } from './postgres.ts';

describe.skipIf(postgresSkipped())('PostgresStore', () => {
  let db: TestDatabase;
  const stores: PostgresStore[] = [];
  const open = async (settings: Partial<PostgresSettings> = {}) => {
    const store = await PostgresStore.open({ url: db.url, pool: { max: 4 }, ...settings });
    stores.push(store);
    return store;
  };

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db.drop();
  });
  beforeEach(async () => {
    // The schema exists from the first open on; each test starts from empty tables.
    await (await open()).close();
    await truncateAll(db.url);
  });
  afterEach(async () => {
    await Promise.all(stores.splice(0).map((s) => s.close()));
  });

  it('keeps identifiers holding NUL (which text columns cannot) exactly, and dedupes on them', async () => {
    const store = await open();
    const record = testRecord({ controlId: 'C\u00001\u0001', sender: 'EP\u0000IC^GHH', triggers: [testTrigger({ id: 't-nul' })] });
    const first = await store.commitInbound(record);
    expect(first.outcome).toBe('stored');
    expect(first.message).toMatchObject({ sender: 'EP\u0000IC^GHH', controlId: 'C\u00001\u0001' });
    expect(await store.getMessage(first.message.id)).toMatchObject({ sender: 'EP\u0000IC^GHH', controlId: 'C\u00001\u0001' });
    expect((await store.findMessage('EP\u0000IC^GHH', 'C\u00001\u0001'))?.id).toBe(first.message.id);
    expect((await store.listMessages({ sender: 'EP\u0000IC^GHH' })).map((m) => m.id)).toEqual([first.message.id]);
    expect((await store.commitInbound(record)).outcome).toBe('duplicate');
    // Another control id that differs only where the encoding works.
    expect((await store.commitInbound(testRecord({ controlId: 'C\u00011\u0000', sender: 'EP\u0000IC^GHH' }))).outcome).toBe('stored');
    await store.setCursor('k\u0000', 'v\u0000\u0001');
    expect(await store.getCursor('k\u0000')).toBe('v\u0000\u0001');
  });

  it('keeps a 1 MB control id and message type (no index holds them whole)', async () => {
    const store = await open();
    const controlId = 'X'.repeat(1 << 20);
    const messageType = `SIU^${'Y'.repeat(1 << 20)}`;
    const first = await store.commitInbound(testRecord({ controlId, messageType, status: 'rejected', reason: 'missing_field' }));
    expect(first.outcome).toBe('stored');
    expect((await store.commitInbound(testRecord({ controlId, messageType, status: 'rejected', reason: 'missing_field' }))).outcome).toBe('duplicate');
    expect((await store.listMessages({ messageType })).map((m) => m.id)).toEqual([first.message.id]);
    expect((await store.listMessages({ messageType: 'SIU' })).map((m) => m.id)).toEqual([first.message.id]);
  });

  it('two processes committing the same messages at once store each once; the others are duplicates', async () => {
    const [a, b] = [await open(), await open()];
    const records = Array.from({ length: 40 }, (_, i) => testRecord({ controlId: `R${i}`, triggers: [testTrigger({ id: `t-r${i}` })] }));
    const outcomes = await Promise.all(records.flatMap((r) => [a.commitInbound({ ...r }), b.commitInbound({ ...r })]));
    for (let i = 0; i < records.length; i++) {
      const pair = [outcomes[2 * i]!, outcomes[2 * i + 1]!];
      expect(pair.map((o) => o.outcome).sort()).toEqual(['duplicate', 'stored']);
      expect(pair[0]!.message.id).toBe(pair[1]!.message.id);
    }
    expect(await a.listMessages({ limit: 1000 })).toHaveLength(40);
    expect(await b.listTriggers({ limit: 1000 })).toHaveLength(40);
    expect(await a.countMessages()).toMatchObject({ accepted: 40 });
  });

  it('a process that finds no original, then loses the race for the dedupe key, answers a duplicate', async () => {
    const [a, b] = [await open(), await open()];
    const record = testRecord({ controlId: 'RACE', triggers: [testTrigger({ id: 't-race' })] });
    // Hold A's transaction open after its message row: its cursor write waits for this lock.
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    try {
      await admin.query('BEGIN');
      await admin.query('LOCK TABLE cursors IN EXCLUSIVE MODE');
      const first = a.commitInbound({ ...record, cursors: { race: 'a' } });
      await waitFor(async () => (await waiters(db.url, 'relation')) === 1);
      // B looks up (A's row is not committed: no original), inserts, and waits on A's key.
      const second = b.commitInbound({ ...record });
      await waitFor(async () => (await waiters(db.url, 'transactionid')) === 1);
      await admin.query('COMMIT');
      const [x, y] = await Promise.all([first, second]);
      expect(x.outcome).toBe('stored');
      expect(y).toEqual({ outcome: 'duplicate', message: x.message });
    } finally {
      await admin.end();
    }
    expect(await a.listMessages({})).toHaveLength(1);
    expect(await a.getCursor('race')).toBe('a');
  });

  it('the same conflicting copy sent through two processes at once is quarantined once', async () => {
    const [a, b] = [await open(), await open()];
    await a.commitInbound(testRecord({ controlId: 'Q1' }));
    const copy = testRecord({ controlId: 'Q1', raw: Buffer.from('other bytes') });
    const outcomes = await Promise.all([a.commitInbound({ ...copy }), b.commitInbound({ ...copy }), a.commitInbound({ ...copy }), b.commitInbound({ ...copy })]);
    expect(outcomes.map((o) => o.outcome)).toEqual(['conflict', 'conflict', 'conflict', 'conflict']);
    expect(new Set(outcomes.map((o) => o.message.id)).size).toBe(1);
    expect(await a.listMessages({ status: 'quarantined' })).toHaveLength(1);
  });

  it('withLock lets one holder at a time work, across processes', async () => {
    const [a, b] = [await open(), await open()];
    const order: string[] = [];
    let releaseA!: () => void;
    const held = new Promise<void>((resolve) => {
      releaseA = resolve;
    });
    let aInside!: () => void;
    const aEntered = new Promise<void>((resolve) => {
      aInside = resolve;
    });
    const first = a.withLock('routing', async () => {
      order.push('a:in');
      aInside();
      await held;
      order.push('a:out');
    });
    await aEntered;
    const second = b.withLock('routing', async () => {
      order.push('b:in');
    });
    // B is waiting on the server for A's lock: a statement on another connection sees it.
    await waitFor(async () => (await waiters(db.url, 'advisory')) === 1);
    expect(order).toEqual(['a:in']);
    releaseA();
    await Promise.all([first, second]);
    expect(order).toEqual(['a:in', 'a:out', 'b:in']);
    // Another lock name does not wait.
    await b.withLock('other', async () => order.push('other'));
  });

  it('tryLock works only when no other process holds the lock, without waiting', async () => {
    const [a, b] = [await open(), await open()];
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let entered!: () => void;
    const inside = new Promise<void>((resolve) => (entered = resolve));
    const first = a.withLock('retention', async () => {
      entered();
      await held;
    });
    await inside;
    let ran = false;
    expect(await b.tryLock('retention', async () => (ran = true))).toBeUndefined();
    expect(ran).toBe(false);
    expect(await b.tryLock('other', async () => 'free')).toBe('free');
    release();
    await first;
    expect(await b.tryLock('retention', async () => 'now')).toBe('now');
    // Released after the work: the other process takes it at once.
    expect(await a.tryLock('retention', async () => 'again')).toBe('again');
  });

  it('withLock survives its connection being closed by the server during the work (restart, failover)', async () => {
    const store = await open();
    let held: pg.PoolClient | undefined;
    store.pool.once('acquire', (client: pg.PoolClient) => (held = client));
    const result = await store.withLock('routing', async () => {
      const ended = new Promise((resolve) => held!.once('end', resolve));
      // The server ends the lock's session while the work runs and the connection is idle:
      // its client emits 'error', which must not end the process.
      const admin = new pg.Client({ connectionString: db.url });
      await admin.connect();
      try {
        // This database's only: pg_locks lists every database's, and other test files' stores
        // hold routing locks on theirs.
        await admin.query(
          "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() " +
            'AND database = (SELECT oid FROM pg_database WHERE datname = current_database())',
        );
      } finally {
        await admin.end();
      }
      await ended;
      return 'done';
    });
    expect(result).toBe('done');
    // The server released the lock with the session; the store goes on with new connections.
    expect(await store.withLock('routing', async () => 'again')).toBe('again');
  });

  it('two processes finishing one delivery at once: one of them does, once', async () => {
    const [a, b] = [await open(), await open()];
    const d = testDelivery();
    await a.saveRouting('t1', [{ delivery: d, status: 'pending', asOf: d.asOf, generation: 1, updatedAt: '2024-01-01T09:30:02Z' }], '2024-01-01T09:30:02Z');
    const results = await Promise.all([
      a.finishDelivery(d.id, 1, { status: 'sent', at: '2024-01-01T10:00:00Z' }),
      b.finishDelivery(d.id, 1, { status: 'sent', at: '2024-01-01T10:00:01Z' }),
    ]);
    expect(results.sort()).toEqual([false, true]);
    expect(await b.countDeliveries()).toMatchObject({ pending: 0, sent: 1 });
  });

  it('commits parallel records together: far fewer transactions than records', async () => {
    const store = await open();
    const outcomes = await Promise.all(Array.from({ length: 300 }, (_, i) => store.commitInbound(testRecord({ controlId: `G${i}`, triggers: [testTrigger({ id: `g-${i}` })] }))));
    expect(outcomes.every((o) => o.outcome === 'stored')).toBe(true);
    expect(store.commits).toBeLessThan(20);
    // Every record is listed once, newest id first. Two batches commit concurrently on two
    // connections, so their sequence values may interleave at a batch boundary: the given order
    // is kept within a batch, not promised across batches.
    const listed = await store.listMessages({ limit: 300 });
    expect(listed.map((m) => m.controlId).sort()).toEqual(outcomes.map((o) => o.message.controlId).sort());
    const ids = listed.map((m) => Number(m.id));
    expect(ids).toEqual([...ids].sort((a, b) => b - a));
  });

  it('finds the dedupe original through the unique index, not a scan', async () => {
    const store = await open();
    await store.commitInbound(testRecord({ controlId: 'I1' }));
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      await client.query('SET enable_seqscan = off');
      const plan = await client.query(
        "EXPLAIN SELECT id FROM messages WHERE dedupe_key = '\\x00'::bytea AND control_id <> '' AND status <> 'quarantined' AND keyed",
      );
      expect(plan.rows.map((r: Record<string, string>) => r['QUERY PLAN']).join(' ')).toMatch(/messages_dedupe/);
    } finally {
      await client.end();
    }
  });

  it('a server that refuses writes makes every commit of the batch reject (callers NAK); the resend lands once afterwards', async () => {
    const store = await open();
    await store.commitInbound(testRecord({ controlId: 'before' }));
    const server = await testPostgresServer();
    await adminQuery(server, `ALTER DATABASE ${db.name} SET default_transaction_read_only = on`);
    try {
      // Connections opened before keep their setting: drop them, the pool opens new ones.
      await endConnections(server, db.name);
      const results = await Promise.allSettled([store.commitInbound(testRecord({ controlId: 'RO1' })), store.commitInbound(testRecord({ controlId: 'RO2' }))]);
      expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
      expect(await store.findMessage('EPIC^GHH', 'before')).toBeDefined();
    } finally {
      await adminQuery(server, `ALTER DATABASE ${db.name} RESET default_transaction_read_only`);
      await endConnections(server, db.name);
    }
    // The sender resends; the first resend may still meet a pooled connection the server has
    // just closed (refused: the sender resends again). Then it lands, once.
    let resent: Awaited<ReturnType<typeof store.commitInbound>> | undefined;
    for (let i = 0; resent === undefined; i++) {
      expect(i).toBeLessThan(10);
      resent = await store.commitInbound(testRecord({ controlId: 'RO1' })).catch(() => undefined);
    }
    expect(resent.outcome).toBe('stored');
    expect((await store.commitInbound(testRecord({ controlId: 'RO1' }))).outcome).toBe('duplicate');
  });

  it('opens no more connections than pool.max, whatever the load', async () => {
    const store = await open({ pool: { max: 3 } });
    await Promise.all([
      ...Array.from({ length: 100 }, (_, i) => store.commitInbound(testRecord({ controlId: `P${i}` }))),
      ...Array.from({ length: 100 }, () => store.listMessages({ limit: 5 })),
      store.withLock('routing', () => store.listMessages({ limit: 5 })),
    ]);
    expect(store.pool.totalCount).toBeLessThanOrEqual(3);
    expect(await store.countMessages()).toMatchObject({ accepted: 100 });
  });
});

describe.skipIf(postgresSkipped())('PostgreSQL migrations and connection errors', () => {
  let db: TestDatabase;
  beforeEach(async () => {
    db = await createTestDatabase();
  });
  afterEach(async () => {
    await db.drop();
  });

  it('processes starting at once apply each step once', async () => {
    const stores = await Promise.all(Array.from({ length: 4 }, () => PostgresStore.open({ url: db.url })));
    await Promise.all(stores.map((s) => s.close()));
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      const rows = await client.query('SELECT component, version FROM schema_migrations ORDER BY version');
      expect(rows.rows).toEqual(POSTGRES_STORE_MIGRATIONS.map((_, i) => ({ component: POSTGRES_STORE_COMPONENT, version: i + 1 })));
    } finally {
      await client.end();
    }
  });

  it('a failing step applies nothing and records nothing; a database of a newer version is refused', async () => {
    const { pool } = openPostgresPool({ url: db.url });
    try {
      await expect(migratePostgres(pool, 'alpha', ['CREATE TABLE x_a1 (id INTEGER)', 'CREATE TABLE broken ('])).rejects.toThrow();
      expect((await pool.query("SELECT to_regclass('x_a1') AS t")).rows[0].t).toBeNull();
      expect(await migratePostgres(pool, 'alpha', ['CREATE TABLE x_a1 (id INTEGER)', 'CREATE TABLE x_a2 (id INTEGER)'])).toBe(2);
      expect(await migratePostgres(pool, 'alpha', ['CREATE TABLE x_a1 (id INTEGER)', 'CREATE TABLE x_a2 (id INTEGER)'])).toBe(0);
      await expect(migratePostgres(pool, 'alpha', ['CREATE TABLE x_a1 (id INTEGER)'])).rejects.toThrow(/version 2 .* knows only 1/);
    } finally {
      await pool.end();
    }
  });

  it('names the server and the fix when nothing listens, or the database does not exist', async () => {
    const closed = 'postgres://carerelay@127.0.0.1:1/carerelay';
    await expect(PostgresStore.open({ url: closed, pool: { connectionTimeoutMs: 5000 } })).rejects.toThrow(
      /cannot use PostgreSQL at 127\.0\.0\.1:1, database "carerelay" as user "carerelay": nothing accepts connections at 127\.0\.0\.1:1: start PostgreSQL there/,
    );
    const missing = withDatabase(await testPostgresServer(), 'carerelay_no_such_db');
    await expect(PostgresStore.open({ url: missing })).rejects.toThrow(/database "carerelay_no_such_db" does not exist: create it \(createdb/);
  });

  it('reads a URL without echoing it, and refuses TLS settings in it', () => {
    expect(parsePostgresUrl('postgresql://care%40relay:s3cret@db.internal:6543/care?application_name=cr-ingest')).toEqual({
      host: 'db.internal',
      port: 6543,
      database: 'care',
      user: 'care@relay',
      password: 's3cret',
      applicationName: 'cr-ingest',
    });
    for (const [url, message] of [
      ['postgres://u:s3cret@h/db?sslmode=require', /configure TLS in server\.store\.tls/],
      ['postgres://u:s3cret@h/', /names no database/],
      ['mysql://u:s3cret@h/db', /must start with postgres:\/\//],
      ['postgres://u:s3cret@h/db?search_path=x', /does not read/],
    ] as const) {
      expect(() => parsePostgresUrl(url)).toThrow(message);
      try {
        parsePostgresUrl(url);
      } catch (error) {
        expect(String(error)).not.toContain('s3cret');
      }
    }
  });
});

describe.skipIf(postgresSkipped())('TLS to the server', () => {
  let cluster: Awaited<ReturnType<typeof startPostgresCluster>>;
  let pki: TestPki;
  let dir: string;
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carerelay-pg-tls-'));
    pki = makeTestPki(dir);
    // Only TLS connections over TCP are let in.
    cluster = await startPostgresCluster({ tls: { cert: pki.server.cert, key: pki.server.key }, hba: ['local all all trust', 'hostssl all all 127.0.0.1/32 trust'] });
  });
  afterAll(() => {
    cluster?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('connects with the CA from a file and verifies the server', async () => {
    const store = await PostgresStore.open({ url: cluster.url, tls: { mode: 'verify-full', ca: pki.ca.cert } });
    try {
      expect((await store.commitInbound(testRecord({ controlId: 'TLS1' }))).outcome).toBe('stored');
      const [row] = (await store.pool.query('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')).rows;
      expect(row.ssl).toBe(true);
    } finally {
      await store.close();
    }
  });

  it('explains a missing CA, and a server that wants TLS from a plain connection', async () => {
    await expect(PostgresStore.open({ url: cluster.url, tls: { mode: 'verify-full' } })).rejects.toThrow(/not signed by a CA this process trusts: give the CA's certificate in server\.store\.tls\.ca/);
    await expect(PostgresStore.open({ url: cluster.url })).rejects.toThrow(/only over TLS|pg_hba\.conf/);
  });
});

/** Sessions of the server waiting for a lock of this type (advisory, relation, transactionid). */
async function waiters(url: string, locktype: string): Promise<number> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query('SELECT COUNT(*)::int AS n FROM pg_locks WHERE locktype = $1 AND NOT granted', [locktype]);
    return rows[0].n as number;
  } finally {
    await client.end();
  }
}

/** Polls `condition` (a server-side state, no event to wait on) for up to 10 s. */
async function waitFor(condition: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error('condition not reached within 10 s');
}
