import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
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
