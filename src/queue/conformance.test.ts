// One conformance suite (conformance.ts), every backend: the embedded SQLite queue alone and
// riding in the store's group commit (as the server runs it), and BullMQ on a real Redis
// (test/helpers/redis.ts: CARERELAY_TEST_REDIS_URL, or a redis-server started for this file).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { describe } from 'vitest';
import { dropPrefix, redisPrefix, redisSkipped, testRedisUrl } from '../../test/helpers/redis.ts';
import { openSqliteDatabase, type Database } from '../store/sqlite-db.ts';
import { SqliteStore } from '../store/sqlite.ts';
import { BullMqQueue } from './bullmq.ts';
import { queueConformanceSuite, type ConformanceJobData, type QueueTestBackend } from './conformance.ts';
import { createSqliteQueue } from './sqlite.ts';

async function sqlite(): Promise<QueueTestBackend> {
  const dir = mkdtempSync(join(tmpdir(), 'carerelay-queue-'));
  const file = join(dir, 'carerelay.db');
  const dbs: Database[] = [];
  return {
    async open(options) {
      // One connection per instance, as two processes on one data dir would have.
      const db = openSqliteDatabase(file);
      dbs.push(db);
      return createSqliteQueue<ConformanceJobData>(db, { ...options, name: 'deliveries' });
    },
    async destroy() {
      for (const db of dbs) db.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// Every queue write riding in the store's group commit (as the server runs it): the queue's
// promises must keep their meaning when commits are batched.
async function sqliteGroupCommit(): Promise<QueueTestBackend> {
  const dir = mkdtempSync(join(tmpdir(), 'carerelay-queue-'));
  const file = join(dir, 'carerelay.db');
  const stores: SqliteStore[] = [];
  return {
    async open(options) {
      const store = new SqliteStore(openSqliteDatabase(file), { closeDatabase: true });
      stores.push(store);
      return createSqliteQueue<ConformanceJobData>(store.db, { ...options, name: 'deliveries', committer: store });
    },
    async destroy() {
      for (const store of stores) await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// A fresh key prefix per test; one connection per queue instance, as separate processes have.
async function bullmq(): Promise<QueueTestBackend> {
  const url = await testRedisUrl();
  const prefix = redisPrefix('conformance');
  const connections: Redis[] = [];
  const connect = (maxRetriesPerRequest: number | null): Redis => {
    const client = new Redis(url, { maxRetriesPerRequest });
    client.on('error', () => {});
    connections.push(client);
    return client;
  };
  return {
    async open(options) {
      return new BullMqQueue<ConformanceJobData>({ ...options, name: 'deliveries', prefix, connection: connect(1) });
    },
    // Short enough to wait for (the stalled check runs every leaseMs), long enough that a
    // busy machine still renews it in time.
    realTimeLeases: { leaseMs: 1_500, freeze: (queue) => (queue as BullMqQueue<ConformanceJobData>).freeze() },
    async destroy() {
      const admin = connect(null);
      await dropPrefix(admin, prefix);
      for (const client of connections) client.disconnect();
    },
  };
}

const backends: Array<{ name: string; make: () => Promise<QueueTestBackend> }> = [
  { name: 'sqlite', make: sqlite },
  { name: 'sqlite in the store group commit', make: sqliteGroupCommit },
  ...(redisSkipped ? [] : [{ name: 'bullmq on redis', make: bullmq }]),
];

describe.each(backends)('$name', ({ make }) => {
  queueConformanceSuite(make);
});
