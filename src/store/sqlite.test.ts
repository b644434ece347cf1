import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { testDelivery, testRecord, testTrigger } from './conformance.ts';
import { migrate, openSqliteDatabase, type Database } from './sqlite-db.ts';
import { allowDeliveryReview, compactRowsOnward, SQLITE_STORE_COMPONENT, SQLITE_STORE_MIGRATIONS, SqliteStore } from './sqlite.ts';
import { widenMessageFormats } from './sqlite-replies.ts';
import { DELIVERY_BODIES_WALK } from './sqlite-retention.ts';
import { sqliteDumpSource } from './sqlite-dump.ts';
import { unpackJson } from './packed-json.ts';

const tempDirs: string[] = [];
function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carerelay-store-'));
  tempDirs.push(dir);
  return dir;
}
afterEach(() => {
  for (const dir of tempDirs.splice(0)) {
    fs.chmodSync(dir, 0o700);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// The conformance suite runs over every backend in conformance.test.ts.

describe('openSqliteDatabase', () => {
  it('creates the directory and sets WAL, synchronous=FULL, busy_timeout and foreign keys', () => {
    const file = path.join(tempDir(), 'nested', 'deeper', 'carerelay.db');
    const db = openSqliteDatabase(file);
    try {
      expect(fs.existsSync(file)).toBe(true);
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
      expect(db.pragma('synchronous', { simple: true })).toBe(2); // 2 = FULL
      expect(db.pragma('foreign_keys', { simple: true })).toBe(1);
      expect(db.pragma('busy_timeout', { simple: true })).toBe(5000);
    } finally {
      db.close();
    }
  });

  it('creates a new file with incremental auto-vacuum, and leaves an existing file as it was', () => {
    const file = path.join(tempDir(), 'carerelay.db');
    const db = openSqliteDatabase(file);
    expect(db.pragma('auto_vacuum', { simple: true })).toBe(2); // 2 = INCREMENTAL
    db.close();
    const old = path.join(tempDir(), 'old.db');
    const plain = new BetterSqlite3(old);
    plain.exec('CREATE TABLE t (x)');
    plain.close();
    const reopened = openSqliteDatabase(old);
    expect(reopened.pragma('auto_vacuum', { simple: true })).toBe(0);
    reopened.close();
  });

  it('refuses a data path whose parent is not a directory, naming the path and the fix', () => {
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, 'not-a-dir'), 'x');
    const file = path.join(dir, 'not-a-dir', 'carerelay.db');
    expect(() => openSqliteDatabase(file)).toThrow(/cannot create the data directory .*not-a-dir.*CARERELAY_DATA/);
  });

  // Root ignores permission bits, so this can only be checked as an ordinary user.
  it.skipIf(process.getuid?.() === 0)('refuses a data directory that is not writable', () => {
    const dir = tempDir();
    fs.chmodSync(dir, 0o500);
    expect(() => openSqliteDatabase(path.join(dir, 'carerelay.db'))).toThrow(/data directory .* is not writable/);
  });

  it.skipIf(process.getuid?.() === 0)('refuses a database file that is not writable', () => {
    const file = path.join(tempDir(), 'carerelay.db');
    openSqliteDatabase(file).close();
    fs.chmodSync(file, 0o400);
    expect(() => openSqliteDatabase(file)).toThrow(/database file .*carerelay\.db is not writable/);
  });
});

describe('migrate', () => {
  let db: Database;
  beforeEach(() => {
    db = openSqliteDatabase(path.join(tempDir(), 'm.db'));
  });
  afterEach(() => {
    db.close();
  });
  const tables = (): string[] =>
    (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'x_%' ORDER BY name").all() as Array<{ name: string }>).map(
      (r) => r.name,
    );

  it('applies each step once, per component, and only the new ones later', () => {
    expect(migrate(db, 'alpha', ['CREATE TABLE x_a1 (id INTEGER)'])).toBe(1);
    expect(migrate(db, 'alpha', ['CREATE TABLE x_a1 (id INTEGER)'])).toBe(0);
    expect(migrate(db, 'beta', ['CREATE TABLE x_b1 (id INTEGER)'])).toBe(1);
    expect(migrate(db, 'alpha', ['CREATE TABLE x_a1 (id INTEGER)', 'CREATE TABLE x_a2 (id INTEGER)'])).toBe(1);
    expect(tables()).toEqual(['x_a1', 'x_a2', 'x_b1']);
    const versions = db.prepare('SELECT component, version FROM schema_migrations ORDER BY component, version').all();
    expect(versions).toEqual([
      { component: 'alpha', version: 1 },
      { component: 'alpha', version: 2 },
      { component: 'beta', version: 1 },
    ]);
  });

  it('a failing step applies nothing of the batch and records nothing', () => {
    expect(() => migrate(db, 'alpha', ['CREATE TABLE x_a1 (id INTEGER)', 'CREATE TABLE broken ('])).toThrow();
    expect(tables()).toEqual([]);
    expect(migrate(db, 'alpha', ['CREATE TABLE x_a1 (id INTEGER)'])).toBe(1);
  });

  it('refuses a database written by a newer version', () => {
    migrate(db, 'alpha', ['CREATE TABLE x_a1 (id INTEGER)', 'CREATE TABLE x_a2 (id INTEGER)']);
    expect(() => migrate(db, 'alpha', ['CREATE TABLE x_a1 (id INTEGER)'])).toThrow(/version 2 .* knows only 1/);
  });
});

describe('the store schema', () => {
  it('indexes the child column of every foreign key, so deleting a parent row (retention) reads no whole table', async () => {
    const store = SqliteStore.open(':memory:');
    try {
      const db = store.db;
      const quoted = (name: string) => `"${name.replaceAll('"', '""')}"`;
      const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").pluck().all() as string[];
      const keys: string[] = [];
      const unindexed: string[] = [];
      for (const table of tables) {
        for (const fk of db.pragma(`foreign_key_list(${quoted(table)})`) as Array<{ from: string; table: string }>) {
          keys.push(`${table}.${fk.from}`);
          const indexes = db.pragma(`index_list(${quoted(table)})`) as Array<{ name: string }>;
          const leading = indexes.map((index) => (db.pragma(`index_info(${quoted(index.name)})`) as Array<{ seqno: number; name: string }>).find((c) => c.seqno === 0)?.name);
          if (!leading.includes(fk.from)) unindexed.push(`${table}.${fk.from} → ${fk.table}`);
        }
      }
      expect(keys).toEqual(expect.arrayContaining(['triggers.message_id', 'subject_states.message_id', 'messages.replaces']));
      expect(unindexed).toEqual([]);
    } finally {
      await store.close();
    }
  });
});

describe('retention walks', () => {
  it('walks the deliveries whose bodies are still to clear by their index, in its order (no sort of every final delivery per batch)', async () => {
    const store = SqliteStore.open(':memory:');
    try {
      const plan = (store.db.prepare(`EXPLAIN QUERY PLAN ${DELIVERY_BODIES_WALK}`).all('2024-01-02', '2024-01-01', 0, 500) as Array<{ detail: string }>).map((r) => r.detail).join(' | ');
      expect(plan).toMatch(/USING INDEX deliveries_bodies/);
      expect(plan).not.toMatch(/TEMP B-TREE/);
    } finally {
      await store.close();
    }
  });
});

describe('SqliteStore on a file', () => {
  it('keeps messages, triggers, state and the dedupe key across close and reopen', async () => {
    const file = path.join(tempDir(), 'carerelay.db');
    const record = testRecord({
      controlId: 'R1',
      triggers: [testTrigger({ id: 'r1-t' })],
      subjectStates: [{ kind: 'appointment', id: 'APT-1', patientId: 'MRN-1', asOf: '2024-01-01T09:30:00Z' }],
    });
    const first = SqliteStore.open(file);
    const stored = await first.commitInbound(record);
    await first.close();

    const second = SqliteStore.open(file);
    try {
      const read = await second.getMessage(stored.message.id);
      expect(read!.raw.equals(record.raw)).toBe(true);
      expect(read!.triggers).toEqual(record.triggers);
      expect(await second.getSubjectState('appointment', 'APT-1')).toEqual(record.subjectStates[0]);
      const resend = await second.commitInbound(record);
      expect(resend.outcome).toBe('duplicate');
      expect(resend.message.id).toBe(stored.message.id);
      // The original ACK, answered again to the resend, exactly; kept packed (about half or less).
      expect(resend.message.ack).toBe(record.ack);
      const { bytes } = second.db.prepare('SELECT length(ack) AS bytes FROM messages WHERE id = ?').get(Number(stored.message.id)) as { bytes: number };
      expect(bytes).toBeLessThan(record.ack.length * 0.6);
    } finally {
      await second.close();
    }
  });

  it('a read-only database makes commitInbound reject (the caller NAKs); the resend lands once later', async () => {
    const file = path.join(tempDir(), 'carerelay.db');
    const writable = SqliteStore.open(file);
    await writable.commitInbound(testRecord({ controlId: 'before' }));

    const readonlyDb = openSqliteDatabase(file, { readonly: true });
    const readonly = new SqliteStore(readonlyDb);
    try {
      await expect(readonly.commitInbound(testRecord({ controlId: 'RO1' }))).rejects.toThrow(/readonly/i);
      // Reads still work: the admin API stays useful while ingest NAKs.
      expect(await readonly.findMessage('EPIC^GHH', 'before')).toBeDefined();
      expect(await readonly.findMessage('EPIC^GHH', 'RO1')).toBeUndefined();
    } finally {
      await readonly.close();
      readonlyDb.close();
    }

    const retransmit = await writable.commitInbound(testRecord({ controlId: 'RO1' }));
    expect(retransmit.outcome).toBe('stored');
    expect((await writable.commitInbound(testRecord({ controlId: 'RO1' }))).outcome).toBe('duplicate');
    await writable.close();
  });

  it('a full disk makes commitInbound reject and leaves nothing half-written', async () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    try {
      await store.commitInbound(testRecord({ controlId: 'small' }));
      // max_page_count caps the file at its current size: the same SQLITE_FULL a full disk gives.
      const pages = store.db.pragma('page_count', { simple: true }) as number;
      store.db.pragma(`max_page_count = ${pages}`);
      // Random bytes: the store compresses raw messages, and these must still not fit.
      const big = testRecord({ controlId: 'big', raw: randomBytes(256 * 1024), triggers: [testTrigger({ id: 'big-t' })] });
      const parallel = testRecord({ controlId: 'neighbour' });
      const results = await Promise.allSettled([store.commitInbound(big), store.commitInbound(parallel)]);
      // A store-level fault fails the whole group commit: both callers NAK and resend.
      expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
      expect(String((results[0] as PromiseRejectedResult).reason)).toMatch(/full/i);
      expect(await store.findMessage('EPIC^GHH', 'big')).toBeUndefined();
      expect(await store.getTrigger('big-t')).toBeUndefined();
      expect(await store.findMessage('EPIC^GHH', 'neighbour')).toBeUndefined();

      store.db.pragma('max_page_count = 1073741823');
      expect((await store.commitInbound(big)).outcome).toBe('stored');
      expect((await store.commitInbound(parallel)).outcome).toBe('stored');
    } finally {
      await store.close();
    }
  });

  it('a record that breaks a constraint fails alone: the rest of its group commit is stored', async () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    try {
      const broken = testRecord({
        controlId: 'broken',
        triggers: [testTrigger({ id: 'broken-t' })],
        // The kind CHECK constraint refuses it inside the transaction, after the message row.
        subjectStates: [{ kind: 'visit' as 'appointment', id: 'V1', patientId: 'P1', asOf: '2030-01-01T08:00:00Z' }],
      });
      const results = await Promise.allSettled([
        store.commitInbound(testRecord({ controlId: 'before', triggers: [testTrigger({ id: 'before-t' })] })),
        store.commitInbound(broken),
        store.commitInbound(testRecord({ controlId: 'after', triggers: [testTrigger({ id: 'after-t' })] })),
      ]);
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
      expect(String((results[1] as PromiseRejectedResult).reason)).toMatch(/CHECK constraint/);
      expect(await store.findMessage('EPIC^GHH', 'before')).toBeDefined();
      expect(await store.findMessage('EPIC^GHH', 'after')).toBeDefined();
      // Nothing of the broken record survives, not even the rows written before the fault.
      expect(await store.findMessage('EPIC^GHH', 'broken')).toBeUndefined();
      expect(await store.getTrigger('broken-t')).toBeUndefined();
      expect((await store.listTriggers({ limit: 10 })).map((t) => t.id).sort()).toEqual(['after-t', 'before-t']);
    } finally {
      await store.close();
    }
  });

  it('shares its Database: close() leaves a passed-in connection open for the queue', async () => {
    const db = openSqliteDatabase(path.join(tempDir(), 'carerelay.db'));
    const store = new SqliteStore(db);
    migrate(db, 'queue', ['CREATE TABLE x_jobs (id TEXT PRIMARY KEY)']);
    await store.commitInbound(testRecord({ controlId: 'shared' }));
    await store.close();
    expect(db.open).toBe(true);
    expect(db.prepare('SELECT COUNT(*) AS n FROM messages').get()).toEqual({ n: 1 });
    db.close();
  });

  it('commits what was queued before close() returns', async () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    const pending = store.commitInbound(testRecord({ controlId: 'last' }));
    await store.close();
    expect((await pending).outcome).toBe('stored');
  });

  it('group-commits more parallel records than one batch holds', async () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    try {
      const outcomes = await Promise.all(
        Array.from({ length: 600 }, (_, i) =>
          store.commitInbound(testRecord({ controlId: `B${i % 300}`, triggers: [testTrigger({ id: `bt-${i % 300}` })] })),
        ),
      );
      expect(outcomes.filter((o) => o.outcome === 'stored')).toHaveLength(300);
      expect(outcomes.filter((o) => o.outcome === 'duplicate')).toHaveLength(300);
      expect(await store.listTriggers({ limit: 1000 })).toHaveLength(300);
    } finally {
      await store.close();
    }
  });

  it('records send-time decisions and disclosures in the group commit, not an fsync each', async () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    try {
      const at = '2025-06-02T08:00:00+02:00';
      const ref = { patientId: 'MRN-1', rule: 'r', purpose: 'care.logistics', channel: 'sms', output: 'sms' } as const;
      const before = store.commits;
      await Promise.all(
        Array.from({ length: 10 }, (_, i) => [
          store.recordDecision({ ...ref, deliveryId: `d${i}`, result: 'allow', basis: 'care', records: [], settings: {}, at }),
          store.recordDisclosure({ ...ref, deliveryId: `d${i}`, at }),
        ]).flat(),
      );
      // One transaction for all twenty (autocommits would not count here: 0).
      expect(store.commits - before).toBe(1);
      expect(await store.listDecisions({ patientId: 'MRN-1' })).toHaveLength(10);
      expect(await store.listDisclosures({ patientIds: ['MRN-1'] })).toHaveLength(10);
      // A bad time fails its own call only, not the writes of its group.
      const [bad, good] = await Promise.allSettled([
        store.recordDecision({ ...ref, deliveryId: 'd', result: 'allow', basis: 'care', records: [], settings: {}, at: 'soon' }),
        store.recordDisclosure({ ...ref, deliveryId: 'd10', at }),
      ]);
      expect(bad).toMatchObject({ status: 'rejected', reason: expect.objectContaining({ message: expect.stringMatching(/decision\.at/) }) });
      expect(good.status).toBe('fulfilled');
    } finally {
      await store.close();
    }
  });

  it("keeps a decision's settings and basis packed, and still reads rows written as plain text", async () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    try {
      const settings = { region: 'us', policyVersion: '1', zone: 'UTC', default: 'allow', quietHours: { start: '08:00', end: '21:00', channels: ['sms'] }, caps: [], sensitiveWindowDays: 90 };
      const basis = 'no consent record; the us default allows care.logistics by email';
      const ref = { patientId: 'MRN-1', rule: 'r', purpose: 'care.logistics', channel: 'email', output: 'mail', result: 'allow', at: '2025-06-02T08:00:00+02:00' } as const;
      await store.recordDecision({ ...ref, deliveryId: 'd1', basis, records: [], settings });
      const stored = store.db.prepare("SELECT length(basis) + length(settings) AS bytes FROM decisions WHERE delivery_id = 'd1'").get() as { bytes: number };
      // 64 + 165 bytes as text; the shipped policy's notes pack to a few bytes each.
      expect(stored.bytes).toBeLessThan(30);
      // A row written before the notes were packed (plain text) reads the same.
      store.db
        .prepare(`INSERT INTO decisions (delivery_id, patient_id, rule, purpose, channel, output, result, basis, records, settings, at) VALUES ('d0', 'MRN-1', 'r', 'care.logistics', 'email', 'mail', 'allow', ?, '[]', ?, ?)`)
        .run(basis, JSON.stringify(settings), ref.at);
      const read = await store.listDecisions({ patientId: 'MRN-1' });
      expect(read.map((d) => [d.deliveryId, d.basis, d.settings])).toEqual([
        ['d0', basis, settings],
        ['d1', basis, settings],
      ]);
    } finally {
      await store.close();
    }
  });

  it('keeps a delivery\'s due time and as-of out of its JSON (its columns hold them) and reads it back the same', async () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    try {
      const own = testDelivery({ appointmentId: 'A 1/b' });
      // A write newer than its delivery (a cancel keeps the plan it cancels): its asOf is the row's, not the delivery's.
      const older = testDelivery({ appointmentId: 'A-2', asOf: '2024-01-01T08:00:00Z' });
      const at = '2024-01-01T09:30:02Z';
      await store.saveRouting('t', [
        { delivery: own, status: 'pending', asOf: own.asOf, generation: 1, updatedAt: at },
        { delivery: older, status: 'cancelled', asOf: '2024-01-01T09:30:00Z', generation: 1, updatedAt: at },
      ], at);
      for (const d of [own, older]) {
        const read = (await store.getDelivery(d.id))!.delivery;
        expect(read).toEqual(d);
        // Where routing puts them (and where rows written before hold them): asOf, plannedAt, dueAt.
        const keys = Object.keys(read);
        expect(keys.slice(keys.indexOf('asOf'), keys.indexOf('asOf') + 3)).toEqual(['asOf', 'plannedAt', 'dueAt']);
      }
      // The own one's JSON names neither time; the older one's keeps the asOf its row does not hold.
      const texts = (store.db.prepare('SELECT json FROM deliveries ORDER BY seq').pluck().all() as Buffer[]).map((b) => unpackJson(b));
      expect(texts[0]).not.toMatch(/"asOf"|"dueAt"/);
      // Nor what its id and subject key spell (subject kind, subject id, step).
      expect(texts[0]).not.toMatch(/"subjectKind"|"subjectId"|"step"/);
      // Its due time, as routing writes it, is kept as its offset beside due_ms; an as-of a
      // sender wrote without milliseconds is kept as given.
      expect(store.db.prepare('SELECT as_of, due_at FROM deliveries ORDER BY seq').all()).toEqual([
        { as_of: own.asOf, due_at: '+01:00' },
        { as_of: '2024-01-01T09:30:00Z', due_at: '+01:00' },
      ]);
      expect(texts[1]).toMatch(/"asOf":"2024-01-01T08:00:00Z"/);
      expect(texts[1]).not.toMatch(/"dueAt"/);
    } finally {
      await store.close();
    }
  });

  it("keeps a message's trigger ids made of SHA-256 hex as 32 bytes each, others as JSON, and reads both the same", async () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    try {
      const hex = [randomBytes(32).toString('hex'), randomBytes(32).toString('hex')];
      const packed = await store.commitInbound(testRecord({ controlId: 'H1', triggers: hex.map((id) => testTrigger({ id })) }));
      const plain = await store.commitInbound(testRecord({ controlId: 'H2', triggers: [testTrigger({ id: 'not-hex' })] }));
      const stored = (id: string) => store.db.prepare('SELECT length(trigger_ids) FROM messages WHERE id = ?').pluck().get(Number(id));
      expect(stored(packed.message.id)).toBe(64);
      expect(stored(plain.message.id)).toBe('["not-hex"]'.length);
      expect((await store.getMessage(packed.message.id))!.triggerIds).toEqual(hex);
      expect((await store.getMessage(plain.message.id))!.triggerIds).toEqual(['not-hex']);
      expect((await store.listMessages({})).map((m) => m.triggerIds)).toEqual([['not-hex'], hex]);
    } finally {
      await store.close();
    }
  });

  it('turns a long list page into deliveries slice by slice, letting the event loop run between slices', async () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    try {
      const at = '2024-01-01T09:30:02Z';
      const writes = Array.from({ length: 300 }, (_, i) => {
        const delivery = testDelivery({ appointmentId: `A-${i}` });
        return { delivery, status: 'pending' as const, asOf: delivery.asOf, generation: 1, updatedAt: at };
      });
      await store.saveRouting([], writes, at);
      // What happens, in order: each row turned into a delivery, and each turn of the event loop.
      const events: string[] = [];
      const inner = store as unknown as { deliveryFromRow: (row: unknown) => unknown };
      const convert = inner.deliveryFromRow.bind(store);
      inner.deliveryFromRow = (row) => {
        events.push('row');
        return convert(row);
      };
      let listing = true;
      const tick = (): void => {
        events.push('tick');
        if (listing) setImmediate(tick);
      };
      setImmediate(tick);
      const page = await store.listDeliveries({ limit: 300 });
      listing = false;
      expect(page).toHaveLength(300);
      const rows = events.flatMap((e, i) => (e === 'row' ? [i] : []));
      const ticksAmongRows = events.slice(rows[0], rows.at(-1)).filter((e) => e === 'tick').length;
      expect(ticksAmongRows).toBeGreaterThanOrEqual(300 / 50 - 1);
    } finally {
      await store.close();
    }
  });

  it('marks its compact rows with a schema version, so a CareRelay from before them refuses the file instead of misreading it', async () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    try {
      const before = SQLITE_STORE_MIGRATIONS.slice(0, SQLITE_STORE_MIGRATIONS.indexOf(compactRowsOnward));
      expect(SQLITE_STORE_MIGRATIONS).toContain(compactRowsOnward);
      expect(() => migrate(store.db, SQLITE_STORE_COMPONENT, before)).toThrow(/written by a newer version/);
    } finally {
      await store.close();
    }
  });

  it("keeps a message's receipt time once when its milliseconds say it exactly, and reads every form back as given", async () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    try {
      const times = { R1: '2026-12-06T10:25:50.005Z', R2: '1999-12-31T23:59:59.999Z', R3: '2024-01-01T09:30:01+02:00', R4: '2024-01-01T09:30:01Z' };
      for (const [controlId, receivedAt] of Object.entries(times)) await store.commitInbound(testRecord({ controlId, receivedAt }));
      const stored = store.db.prepare('SELECT control_id, received_at FROM messages ORDER BY id').all();
      expect(stored).toEqual([
        { control_id: 'R1', received_at: '' },
        { control_id: 'R2', received_at: '' },
        { control_id: 'R3', received_at: times.R3 },
        // Not toISOString's form (no milliseconds): kept as given.
        { control_id: 'R4', received_at: times.R4 },
      ]);
      for (const [controlId, receivedAt] of Object.entries(times)) {
        const found = (await store.findMessage('EPIC^GHH', controlId))!;
        expect(found.receivedAt).toBe(receivedAt);
        expect((await store.getMessage(found.id))!.receivedAt).toBe(receivedAt);
      }
      expect(Object.fromEntries((await store.listMessages({})).map((m) => [m.controlId, m.receivedAt]))).toEqual(times);
      // An export carries them as given too.
      const exported: Record<string, string> = {};
      for await (const record of sqliteDumpSource(store.db).records()) if (record.kind === 'message') exported[record.controlId] = record.receivedAt;
      expect(exported).toEqual(times);
    } finally {
      await store.close();
    }
  });

  it("keeps a message's SHA-256 content hash as 32 bytes, and dedupes against rows that hold it as text", async () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    try {
      const first = testRecord({ controlId: 'C1' });
      const { message } = await store.commitInbound(first);
      expect(store.db.prepare('SELECT length(content_hash) FROM messages WHERE id = ?').pluck().get(Number(message.id))).toBe(32);
      expect((await store.getMessage(message.id))!.contentHash).toBe(first.contentHash);
      expect((await store.commitInbound(testRecord({ controlId: 'C1' }))).outcome).toBe('duplicate');
      // A conflicting resend is quarantined once; the same conflicting bytes again find that copy.
      const changed = testRecord({ controlId: 'C1', raw: Buffer.from('MSH|^~\\&|changed') });
      const quarantined = await store.commitInbound(changed);
      expect(quarantined.outcome).toBe('conflict');
      expect(await store.commitInbound(changed)).toMatchObject({ outcome: 'conflict', message: { id: quarantined.message.id } });
      // A quarantined copy written with a text hash (before) is found the same way.
      const older = testRecord({ controlId: 'C1', raw: Buffer.from('MSH|^~\\&|older') });
      store.db
        .prepare(
          `INSERT INTO messages (input, format, sender, control_id, message_type, content_hash, status, ack, ack_code, received_at, received_ms, trigger_ids, raw)
           VALUES ('mllp-main', 'hl7v2', ?, 'C1', 'SIU^S12', ?, 'quarantined', 'A', 'AE', '2024-01-01T00:00:00Z', 0, '[]', x'00')`,
        )
        .run(older.sender, older.contentHash);
      const olderId = String(store.db.prepare('SELECT max(id) FROM messages').pluck().get());
      expect(await store.commitInbound(older)).toMatchObject({ outcome: 'conflict', message: { id: olderId, contentHash: older.contentHash } });
    } finally {
      await store.close();
    }
  });

  it("keeps a trigger's id out of its JSON (the id column holds it), reads it back first, and reads rows written with it the same", async () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    try {
      const trigger = testTrigger({ id: randomBytes(32).toString('hex') });
      await store.commitInbound(testRecord({ controlId: 'T1', triggers: [trigger] }));
      const json = unpackJson(store.db.prepare('SELECT json FROM triggers WHERE id = ?').pluck().get(trigger.id) as Buffer);
      expect(json).not.toContain(trigger.id);
      const read = (await store.getTrigger(trigger.id))!;
      expect(read).toEqual(trigger);
      expect(Object.keys(read)[0]).toBe('id');
      // A row written with its id in the JSON (before, or by a tool) reads the same.
      const older = testTrigger({ id: 'older-1' });
      const { message } = await store.commitInbound(testRecord({ controlId: 'T2', triggers: [] }));
      store.db
        .prepare('INSERT INTO triggers (id, message_id, type, patient_id, appointment_id, occurred_at, occurred_ms, json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
        .run(older.id, Number(message.id), older.type, older.patient.id, older.appointment?.id ?? null, older.occurredAt, Date.parse(older.occurredAt), JSON.stringify(older));
      expect(await store.getTrigger('older-1')).toEqual(older);
      expect((await store.listTriggers({})).map((t) => t.id).sort()).toEqual(['older-1', trigger.id].sort());
    } finally {
      await store.close();
    }
  });

  it("keeps an appointment state's data packed and reads it back the same", async () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    try {
      const data = { serviceType: 'LOCAL|CHK', locationId: 'CARDIO1', practitionerId: 'DR-22' };
      const state = { kind: 'appointment', id: 'APT-1', patientId: 'MRN-1', asOf: '2024-01-01T09:30:00Z', status: 'booked', data } as const;
      await store.commitInbound(testRecord({ controlId: 'S1', subjectStates: [state] }));
      expect(await store.getSubjectState('appointment', 'APT-1')).toEqual(state);
      const bytes = store.db.prepare("SELECT length(data) FROM subject_states WHERE id = 'APT-1'").pluck().get() as number;
      expect(bytes).toBeLessThan(JSON.stringify(data).length / 2);
    } finally {
      await store.close();
    }
  });

  it('finds the dedupe original through the partial unique index, not a table scan', () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    try {
      // The statement commitInbound really uses, planned as SQLite will run it.
      const sql = (store as unknown as { findOriginalStmt: { source: string } }).findOriginalStmt.source;
      const plan = store.db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all('EPIC^GHH', 'C1') as Array<{ detail: string }>;
      expect(plan.map((p) => p.detail).join(' ')).toMatch(/USING INDEX messages_dedupe/);
    } finally {
      void store.close();
    }
  });

  it("reads a patient's appointments through the patient index, not every appointment in id order", () => {
    const store = SqliteStore.open(path.join(tempDir(), 'carerelay.db'));
    try {
      // The statement of listSubjectStates (each send-time check), planned as SQLite will run it.
      const sql = (store as unknown as { statesOfPatientStmt: { source: string } }).statesOfPatientStmt.source;
      const plan = (store.db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all('MRN-1', 'appointment') as Array<{ detail: string }>).map((p) => p.detail).join(' ');
      expect(plan).toMatch(/USING INDEX subject_states_patient \(patient_id=\? AND kind=\?\)/);
      expect(plan).not.toMatch(/TEMP B-TREE/);
    } finally {
      void store.close();
    }
  });

  it('an upgraded store keeps its dedupe key and finds its messages by the patient of their triggers', async () => {
    const db = openSqliteDatabase(path.join(tempDir(), 'carerelay.db'));
    try {
      // A database as the version before search and attempts left it.
      migrate(db, SQLITE_STORE_COMPONENT, SQLITE_STORE_MIGRATIONS.slice(0, SQLITE_STORE_MIGRATIONS.findIndex((m) => typeof m === 'string' && m.includes('ADD COLUMN patient_id'))));
      db.prepare(
        `INSERT INTO messages (input, format, sender, control_id, message_type, content_hash, status, ack, ack_code, received_at, received_ms, trigger_ids, raw)
         VALUES ('ehr', 'hl7v2', 'EPIC^GHH', 'OLD-1', 'SIU^S12', 'h1', 'accepted', 'A', 'AA', '2024-01-01T00:00:00Z', 0, '["t-old"]', x'00')`,
      ).run();
      db.prepare(
        `INSERT INTO triggers (id, message_id, type, patient_id, occurred_at, occurred_ms, json, routed_ms)
         VALUES ('t-old', 1, 'appointment.booked', 'MRN-9', '2024-01-01T00:00:00Z', 0, '{}', 0)`,
      ).run();
      const store = new SqliteStore(db);
      expect((await store.listMessages({ patientId: 'MRN-9' })).map((m) => m.controlId)).toEqual(['OLD-1']);
      expect((await store.findMessage('EPIC^GHH', 'OLD-1'))?.id).toBe('1');
      await store.close();
    } finally {
      db.close();
    }
  });
  it('an upgraded store takes SMS replies: the messages table is widened in place, its rows and links untouched', async () => {
    const file = path.join(tempDir(), 'carerelay.db');
    const db = openSqliteDatabase(file);
    try {
      migrate(db, SQLITE_STORE_COMPONENT, SQLITE_STORE_MIGRATIONS.slice(0, SQLITE_STORE_MIGRATIONS.indexOf(widenMessageFormats)));
      db.prepare(
        `INSERT INTO messages (input, format, sender, control_id, message_type, content_hash, status, ack, ack_code, received_at, received_ms, trigger_ids, raw)
         VALUES ('ehr', 'hl7v2', 'EPIC^GHH', 'OLD-1', 'SIU^S12', 'h1', 'accepted', 'A', 'AA', '2024-01-01T00:00:00Z', 0, '["trg-old"]', x'00')`,
      ).run();
      db.prepare(
        `INSERT INTO triggers (id, message_id, type, patient_id, occurred_at, occurred_ms, json, routed_ms)
         VALUES ('trg-old', 1, 'appointment.booked', 'MRN-9', '2024-01-01T00:00:00Z', 0, ?, 0)`,
      ).run(JSON.stringify(testTrigger({ id: 'trg-old' })));
      expect(() => db.prepare("UPDATE messages SET format = 'sms' WHERE id = 1").run()).toThrow(/CHECK/);
    } finally {
      db.close();
    }
    const store = SqliteStore.open(file);
    try {
      const sms = testRecord({ controlId: 'SM1', format: 'sms', input: 'sms', sender: 'sms', messageType: 'SMS', raw: Buffer.from('Body=1') });
      expect((await store.commitInbound(sms)).outcome).toBe('stored');
      expect((await store.findMessage('sms', 'SM1'))?.format).toBe('sms');
      expect((await store.getMessage('1'))?.triggers.map((t) => t.id)).toEqual(['trg-old']);
      expect(store.db.pragma('integrity_check', { simple: true })).toBe('ok');
      expect(store.db.pragma('foreign_key_check')).toEqual([]);
      // Still a check: an unknown format is refused.
      expect(() => store.db.prepare("UPDATE messages SET format = 'fax' WHERE id = 1").run()).toThrow(/CHECK/);
    } finally {
      await store.close();
    }
  });

  it('keeps every delivery, its counts and indexes when the deliveries table is rebuilt for status review', async () => {
    const db = openSqliteDatabase(path.join(tempDir(), 'carerelay.db'));
    try {
      migrate(db, SQLITE_STORE_COMPONENT, SQLITE_STORE_MIGRATIONS.slice(0, SQLITE_STORE_MIGRATIONS.indexOf(allowDeliveryReview)));
      const insert = db.prepare(
        `INSERT INTO deliveries (id, status, as_of, as_of_ms, due_at, due_ms, rule, patient_id, subject, generation, json, reason, created_at, updated_at, cause)
         VALUES (?, ?, '2024-01-01T00:00:00Z', 0, '2024-01-02T00:00:00Z', 86400000, 'r', 'P1', ?, 1, '{}', ?, '2024-01-01T00:00:00Z', '2024-01-01T00:00:00Z', 'c')`,
      );
      insert.run('r@appointment/A1#0', 'pending', 'appointment/A1', null);
      insert.run('r@appointment/A2#0', 'failed', 'appointment/A2', 'webhook_rejected');
      const dependents = () => db.prepare("SELECT type, name FROM sqlite_master WHERE tbl_name = 'deliveries' AND type IN ('index', 'trigger') ORDER BY name").all();
      const before = dependents();
      new SqliteStore(db);
      // Indexes and triggers made again as they were (counts, the dashboard's tallies, retention's index).
      expect(dependents()).toEqual(before);
      const rows = db.prepare('SELECT id, status, reason, cause FROM deliveries ORDER BY seq').all();
      expect(rows).toEqual([
        { id: 'r@appointment/A1#0', status: 'pending', reason: null, cause: 'c' },
        { id: 'r@appointment/A2#0', status: 'failed', reason: 'webhook_rejected', cause: 'c' },
      ]);
      db.prepare("UPDATE deliveries SET status = 'review' WHERE id = 'r@appointment/A1#0'").run();
      expect(db.prepare('SELECT status, n FROM delivery_counts WHERE n > 0 ORDER BY status').all()).toEqual([
        { status: 'failed', n: 1 },
        { status: 'review', n: 1 },
      ]);
      const indexes = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries' AND name LIKE 'deliveries_%'").all() as { name: string }[]).map((r) => r.name).sort();
      expect(indexes).toEqual(['deliveries_bodies', 'deliveries_patient', 'deliveries_rule', 'deliveries_status', 'deliveries_subject']);
      expect(db.prepare("SELECT status, n FROM delivery_tallies WHERE n > 0 ORDER BY status").all()).toEqual([
        { status: 'failed', n: 1 },
        { status: 'review', n: 1 },
      ]);
    } finally {
      db.close();
    }
  });

  it('an upgraded store starts its dashboard counts from what it holds: the last hour of messages, every delivery', async () => {
    const db = openSqliteDatabase(path.join(tempDir(), 'carerelay.db'));
    try {
      // A database as the version before the dashboard's counts left it.
      migrate(db, SQLITE_STORE_COMPONENT, SQLITE_STORE_MIGRATIONS.slice(0, SQLITE_STORE_MIGRATIONS.findIndex((m) => typeof m === 'string' && m.includes('CREATE TABLE flow_minutes'))));
      const message = db.prepare(
        `INSERT INTO messages (input, format, sender, control_id, message_type, content_hash, status, ack, ack_code, received_at, received_ms, trigger_ids, raw)
         VALUES ('ehr', 'hl7v2', 'EPIC^GHH', ?, 'SIU^S12', ?, 'accepted', 'A', 'AA', ?, ?, '[]', x'00')`,
      );
      const hour = Date.parse('2024-01-01T10:00:00Z');
      for (const [id, ms] of [['E1', hour - 2 * 3_600_000], ['E2', hour - 30 * 60_000], ['E3', hour]] as const) message.run(id, id, new Date(ms).toISOString(), ms);
      db.prepare(
        `INSERT INTO deliveries (id, status, as_of, as_of_ms, due_at, due_ms, rule, patient_id, subject, generation, json, reason, created_at, updated_at)
         VALUES ('r@appointment/A1#0', 'suppressed', 'x', 0, 'x', 0, 'reminder', 'MRN-1', 'appointment/A1', 1, '{}', 'opted_out', 'x', 'x')`,
      ).run();
      const store = new SqliteStore(db);
      const [input] = await store.flowActivity('2024-01-01T08:00:00Z');
      expect(input).toMatchObject({ name: 'ehr', lastAt: '2024-01-01T10:00:00.000Z' });
      // E1 is older than the hour kept.
      expect(input!.minutes.map((m) => m.minute)).toEqual(['2024-01-01T09:30:00.000Z', '2024-01-01T10:00:00.000Z']);
      expect(await store.deliveryTallies()).toEqual([{ rule: 'reminder', status: 'suppressed', reason: 'opted_out', count: 1 }]);
      await store.close();
    } finally {
      db.close();
    }
  });

});
