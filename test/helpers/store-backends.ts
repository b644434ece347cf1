// The Store backends a test can run against, each as a factory of fresh, empty stores
// (store/conformance.ts StoreHandle): the embedded SQLite file and PostgreSQL (a database of
// this test file on the test server, test/helpers/postgres.ts, emptied before each store).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';
import type { StoreHandle } from '../../src/store/conformance.ts';
import { PostgresStore } from '../../src/store/postgres.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';
import { createTestDatabase, postgresSkipped, truncateAll, type TestDatabase } from './postgres.ts';

export interface StoreBackend {
  name: 'sqlite' | 'postgres';
  /** True when this run opted out of the backend (CARERELAY_TEST_PG=skip). */
  skipped: boolean;
  /** A fresh, empty store; cleanup closes it. */
  open(): Promise<StoreHandle>;
}

export const sqliteBackend: StoreBackend = {
  name: 'sqlite',
  skipped: false,
  async open() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carerelay-store-'));
    const store = SqliteStore.open(path.join(dir, 'data', 'carerelay.db'));
    return {
      store,
      cleanup: async () => {
        await store.close();
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};

let database: Promise<TestDatabase> | undefined;

/** This test file's PostgreSQL database (created on first use, dropped after the file). */
export function testDatabase(): Promise<TestDatabase> {
  if (database === undefined) {
    database = createTestDatabase();
    afterAll(async () => {
      await (await database!).drop();
    });
  }
  return database;
}

export const postgresBackend: StoreBackend = {
  name: 'postgres',
  skipped: postgresSkipped(),
  async open() {
    const db = await testDatabase();
    await truncateAll(db.url);
    // Small batches in flight at once, as in production (writeConcurrency 2).
    const store = await PostgresStore.open({ url: db.url, pool: { max: 6 } });
    return { store, cleanup: () => store.close() };
  },
};

export const storeBackends: readonly StoreBackend[] = [sqliteBackend, postgresBackend];
