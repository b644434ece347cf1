// Admin API benchmark: with 1,000,000 deliveries stored (and 100,000 messages), how long
// does each admin request — and each dashboard page (/ui) — hold the event loop? The store is synchronous SQLite on the event
// loop, so a request that scans holds every connection's ACKs for as long as it scans; the
// goal is at most 10 ms for every request an admin can make: lists with each filter and
// their combinations, deep pages, totals, one delivery, one message.
//
// The fill writes through the store (saveRouting, 10,000 per call; statuses set in bulk
// through its committer), then each request is made over HTTP to the real express app
// (createApp) several times; reported per request: the longest event-loop stall
// (monitorEventLoopDelay, 1 ms resolution: a stall under it reads as ~1 ms) and the wall time.
// The measured requests are made from a thread of their own (reading and parsing a
// 1,000-item answer is the client's work, not the server's stall).
// CARERELAY_BENCH_DELIVERIES shrinks the fill for a quick check of the benchmark itself.
// Run alone with `node --expose-gc --import tsx bench/admin.ts`, or through bench/run.ts.
import { mkdtempSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { createApp } from '../src/api/app.ts';
import { newSession, sessionCookie } from '../src/api/dashboard/session.ts';
import { silentLogger } from '../src/log.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { DeliveryWrite } from '../src/store/store.ts';
import { testDelivery, testRecord, testTrigger } from '../src/store/conformance.ts';
import { threadCalls, type ThreadReply } from './thread-calls.ts';

const DELIVERIES = Number(process.env.CARERELAY_BENCH_DELIVERIES ?? 1_000_000);
const MESSAGES = Math.min(100_000, DELIVERIES);
const BATCH = 10_000;
const RULES = ['booking-confirmation', 'sms-reminder-24h', 'email-reminder-7d', 'first-visit-welcome'];
const REPEAT = 5;
const TOKEN = 'bench-admin-token';

/** The client thread's code: GETs what it is sent, reads the whole answer, replies with its status and size. */
const CLIENT_THREAD = `
const { parentPort } = require('node:worker_threads');
parentPort.on('message', async ({ id, url, headers }) => {
  try {
    const res = await fetch(url, { headers });
    const body = await res.text();
    if (res.headers.get('content-type')?.includes('json')) JSON.parse(body);
    parentPort.postMessage({ id, status: res.status, bytes: body.length });
  } catch (error) {
    parentPort.postMessage({ id, error: String(error) });
  }
});`;

/** GETs made on another thread; resolves with the answer's status once it is read. */
function clientThread(): { get(url: string, headers: Record<string, string>): Promise<number>; close(): Promise<number> } {
  const worker = new Worker(CLIENT_THREAD, { eval: true });
  const call = threadCalls<{ url: string; headers: Record<string, string> }, ThreadReply & { status: number }>(worker);
  return {
    get: async (url, headers) => (await call({ url, headers })).status,
    close: () => worker.terminate(),
  };
}

export async function benchAdmin(): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(process.env.CARERELAY_BENCH_DIR ?? tmpdir(), 'carerelay-bench-admin-'));
  const store = SqliteStore.open(join(dir, 'carerelay.db'));
  let server: Server | undefined;
  const client = clientThread();
  try {
    const fillStarted = performance.now();
    for (let first = 0; first < DELIVERIES; first += BATCH) {
      const writes: DeliveryWrite[] = [];
      for (let i = first; i < Math.min(first + BATCH, DELIVERIES); i++) {
        const delivery = testDelivery({ appointmentId: `A${Math.floor(i / RULES.length)}`, ruleId: RULES[i % RULES.length]!, patientId: `P${i % 100_000}` });
        writes.push({ delivery, status: 'pending', asOf: delivery.asOf, generation: 1, updatedAt: '2024-01-01T09:30:02Z' });
      }
      await store.saveRouting([], writes, '2024-01-01T09:30:02Z');
    }
    // Most delivered, some cancelled or suppressed, ten failed (a rare status: the hard case).
    await store.write(() => {
      store.db.prepare("UPDATE deliveries SET status = 'finished' WHERE seq % 100 < 70").run();
      store.db.prepare("UPDATE deliveries SET status = 'cancelled' WHERE seq % 100 BETWEEN 70 AND 73").run();
      store.db.prepare("UPDATE deliveries SET status = 'suppressed', reason = 'stale' WHERE seq % 100 = 74").run();
      store.db.prepare(`UPDATE deliveries SET status = 'failed', reason = 'render_failed' WHERE seq % ${Math.max(1, Math.floor(DELIVERIES / 10))} = 5`).run();
    });
    const commits: Promise<unknown>[] = [];
    for (let i = 0; i < MESSAGES; i++) {
      const status = i % 50 === 0 ? 'rejected' : 'accepted';
      // Each received at its own millisecond, as traffic is.
      const receivedAt = new Date(Date.UTC(2024, 0, 1, 9) + i).toISOString();
      commits.push(store.commitInbound(testRecord({ controlId: `M${i}`, receivedAt, status, ...(status === 'rejected' ? { ackCode: 'AR', reason: 'missing_field' } : { triggers: [testTrigger({ id: `T${i}`, occurredAt: receivedAt, patient: { ...testTrigger({ id: 'x' }).patient, id: `P${i % 100_000}` } })] }) })));
      if (commits.length === 5_000) await Promise.all(commits.splice(0));
    }
    await Promise.all(commits);
    const fillS = (performance.now() - fillStarted) / 1000;

    const app = createApp({ store, log: silentLogger, hl7Ingest: undefined as never, hl7Inputs: new Map(), adminToken: TOKEN, dashboard: { zone: 'Europe/Paris', now: () => new Date() } });
    server = await new Promise<Server>((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    const port = (server.address() as { port: number }).port;
    // The dashboard (/ui) reads the same token from its session cookie (api/dashboard/session.ts).
    const cookie = sessionCookie(newSession(TOKEN), false).split(';')[0]!;
    const headersOf = (path: string): Record<string, string> => (path.startsWith('/ui/') ? { cookie } : { authorization: `Bearer ${TOKEN}` });
    const get = async (path: string): Promise<unknown> => {
      const res = await fetch(`http://127.0.0.1:${port}${path}`, { headers: headersOf(path) });
      if (res.status !== 200) throw new Error(`${path} answered ${res.status}`);
      return path.startsWith('/ui/') ? res.text() : res.json();
    };
    const measured = async (path: string): Promise<void> => {
      const status = await client.get(`http://127.0.0.1:${port}${path}`, headersOf(path));
      if (status !== 200) throw new Error(`${path} answered ${status}`);
    };
    const lastDelivery = (await get('/api/deliveries?limit=1')) as { items: Array<{ id: string }> };
    const deep = (await store.listDeliveries({ limit: 1000, status: 'sent' })).at(-1)!.delivery.id;
    const requests = [
      '/api/deliveries',
      '/api/deliveries?status=pending',
      '/api/deliveries?status=failed',
      '/api/deliveries?rule=email-reminder-7d',
      '/api/deliveries?rule=email-reminder-7d&status=failed',
      '/api/deliveries?rule=first-visit-welcome&status=suppressed',
      '/api/deliveries?patientId=P4242',
      '/api/deliveries?patientId=P4242&status=failed',
      '/api/deliveries?appointmentId=A31337',
      `/api/deliveries?status=sent&before=${encodeURIComponent(deep)}`,
      '/api/deliveries?limit=1000',
      `/api/deliveries/${encodeURIComponent(lastDelivery.items[0]!.id)}`,
      '/api/messages',
      '/api/messages?status=rejected',
      '/api/messages?status=quarantined',
      '/api/messages/1',
      '/api/triggers?patientId=P4242',
      '/api/triggers?type=appointment.noshow',
      '/api/outbox',
      '/ui/flows',
      '/ui/rules',
      '/ui/messages',
      '/ui/messages/1',
      '/ui/deliveries',
      '/ui/deliveries?status=all',
      `/ui/deliveries/${encodeURIComponent(lastDelivery.items[0]!.id)}`,
      '/ui/patients/P4242',
      '/ui/appointments/A31337',
    ];
    const histogram = monitorEventLoopDelay({ resolution: 1 });
    histogram.enable();
    const figures: Record<string, number> = { 'admin deliveries stored': DELIVERIES, 'admin messages stored': MESSAGES, 'admin fill s': Math.round(fillS) };
    let worst = 0;
    console.log(`\nAdmin API with ${DELIVERIES} deliveries and ${MESSAGES} messages stored (${REPEAT} runs each; goal: no stall over 10 ms)`);
    console.log('request'.padEnd(70) + 'max stall ms   max wall ms');
    for (const path of requests) {
      let stall = 0;
      let wall = 0;
      // Not measured: the first call prepares its statement; garbage of earlier requests is
      // collected first so it is not charged to this one.
      await measured(path);
      for (let r = 0; r < REPEAT; r++) {
        (globalThis as { gc?: () => void }).gc?.();
        histogram.reset();
        const t = performance.now();
        await measured(path);
        wall = Math.max(wall, performance.now() - t);
        stall = Math.max(stall, histogram.max / 1e6);
      }
      worst = Math.max(worst, stall);
      figures[`admin ${path} max stall ms`] = Number(stall.toFixed(1));
      console.log(`${path.padEnd(70)}${stall.toFixed(1).padStart(11)}${wall.toFixed(1).padStart(14)}`);
    }
    histogram.disable();
    figures['admin worst stall ms'] = Number(worst.toFixed(1));
    // A stall is wall time: on a machine shared with other work, being descheduled counts too.
    console.log(`worst stall: ${worst.toFixed(1)} ms (goal <= 10 ms); load average ${loadavg()[0]!.toFixed(1)} on this machine\n`);
    figures['admin load average'] = Number(loadavg()[0]!.toFixed(1));
    return figures;
  } finally {
    await client.close();
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const figures = await benchAdmin();
  for (const [name, value] of Object.entries(figures)) console.log(`${name.padEnd(60)} ${value}`);
}
