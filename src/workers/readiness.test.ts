import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { adminQuery, createTestDatabase, endConnections, postgresSkipped, withDatabase } from '../../test/helpers/postgres.ts';
import { PostgresStore } from '../store/postgres.ts';
import { SqliteStore } from '../store/sqlite.ts';
import { NotReady, StoreReadiness } from './readiness.ts';

const dir = mkdtempSync(path.join(tmpdir(), 'carerelay-readiness-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('StoreReadiness', () => {
  it('is ready while writes succeed; a storage failure makes it not ready until a probe write passes', async () => {
    const store = SqliteStore.open(path.join(dir, 'a.db'));
    const readiness = new StoreReadiness(store, { dataDir: dir, minFreeDiskBytes: 0 });
    const watched = readiness.watch();
    try {
      expect(await readiness.check()).toBeUndefined();
      store.db.pragma('query_only = ON');
      await expect(watched.setCursor('k', 'v')).rejects.toMatchObject({ code: expect.stringMatching(/^SQLITE_READONLY/) });
      expect(readiness.lastWriteFailure).toMatch(/^SQLITE_READONLY/);
      expect(await readiness.check()).toBe(NotReady.StoreCannotWrite);
      store.db.pragma('query_only = OFF');
      expect(await readiness.check()).toBeUndefined();
      expect(readiness.lastWriteFailure).toBeUndefined();
    } finally {
      await store.close();
    }
  });

  it('does not count a record fault (a bad instant) as a store that cannot write', async () => {
    const store = SqliteStore.open(path.join(dir, 'b.db'));
    const readiness = new StoreReadiness(store, { minFreeDiskBytes: 0 });
    const watched = readiness.watch();
    try {
      await expect(watched.saveRouting('t', [], 'not a time')).rejects.toThrow();
      expect(readiness.lastWriteFailure).toBeUndefined();
      expect(await readiness.check()).toBeUndefined();
      // Reads and other properties pass through unchanged.
      expect(await watched.getCursor('none')).toBeUndefined();
      expect((watched as SqliteStore).db).toBe(store.db);
    } finally {
      await store.close();
    }
  });

  it('reports a full disk and a data directory it cannot write', async () => {
    const store = SqliteStore.open(path.join(dir, 'c.db'));
    try {
      expect(await new StoreReadiness(store, { dataDir: dir, minFreeDiskBytes: Number.MAX_SAFE_INTEGER }).check()).toBe(NotReady.DiskFull);
      expect(await new StoreReadiness(store, { dataDir: path.join(dir, 'missing'), minFreeDiskBytes: 0 }).check()).toBe(NotReady.ReadOnly);
    } finally {
      await store.close();
    }
  });
});

describe.skipIf(postgresSkipped())('StoreReadiness on PostgreSQL', () => {
  it('a server that refuses writes (read-only, SQLSTATE 25006) makes it not ready until a probe write passes', async () => {
    const db = await createTestDatabase();
    const store = await PostgresStore.open({ url: db.url, pool: { max: 3 } });
    const readiness = new StoreReadiness(store, { minFreeDiskBytes: 0 });
    const watched = readiness.watch();
    // New connections of the database are read-only; the open ones are closed by the server.
    const readOnly = async (on: boolean) => {
      await adminQuery(withDatabase(db.url, 'postgres'), `ALTER DATABASE ${db.name} SET default_transaction_read_only = ${on ? 'on' : 'off'}`);
      await endConnections(withDatabase(db.url, 'postgres'), db.name);
    };
    try {
      expect(await readiness.check()).toBeUndefined();
      await readOnly(true);
      // The first write may meet a connection the server just closed — told by the server
      // (57P01) or found by the socket (EPIPE, ECONNRESET): a fault too.
      for (let i = 0; readiness.lastWriteFailure !== '25006'; i++) {
        await expect(watched.setCursor('k', 'v')).rejects.toMatchObject({ code: expect.stringMatching(/^(25006|57P01|EPIPE|ECONNRESET)$/) });
        expect(i).toBeLessThan(5);
      }
      expect(await readiness.check()).toBe(NotReady.StoreCannotWrite);
      await readOnly(false);
      // The probe write may meet a closed connection once more; then it passes.
      let ready = await readiness.check();
      if (ready !== undefined) ready = await readiness.check();
      expect(ready).toBeUndefined();
      expect(readiness.lastWriteFailure).toBeUndefined();
    } finally {
      await store.close();
      await db.drop();
    }
  });
});
