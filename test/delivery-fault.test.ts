// The delivery engine under faults (docs/reliability.md promises 4, 5 and 7): 2,000
// confirmations to a signed `webhook` output while the receiver answers 500 to every 10th first
// attempt and the server process is killed with a real SIGKILL at random moments — sends in
// flight, retries of the 500s waiting, leases of the dead lives to take over. Afterwards every
// delivery has ended sent, failed (dead-lettered) or in review with a reason; none is lost or
// left pending; the receiver saw a delivery more than once only under the same idempotency key
// (webhook-id = the delivery id, the body naming the same delivery).
//
// The bookings are staged first by a server in this process with its clock held before their
// confirmations' due time (ingest under SIGKILL is test/crash.test.ts). The killed lives run as
// child processes (`carerelay start`) on the real clock, where every confirmation is due; the
// last life runs in this process with its clock moved past the dead lives' leases and the
// retries' times (a bounded loop: the clock moves, the queue is poked, the test waits until
// nothing due is left). The kill delays come from a seeded generator, printed with the result.
import { afterAll, describe, expect, it } from 'vitest';
import { MllpClient } from '../src/hl7v2/mllp-client.ts';
import { silentLogger } from '../src/log.ts';
import { startCarerelay } from '../src/main.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { prng } from './helpers/random.ts';
import { siuMessage, startChildServer, writeYamlConfig, type ChildServer, type TestConfigDir } from './helpers/server.ts';
import { startWebhookSink, webhookOutputLines, writeConfirmRule, type WebhookSink } from './helpers/webhook-sink.ts';

const TOTAL = 2_000;
/** Server lives killed with SIGKILL at a random moment, before the last one finishes the rest. */
const KILLS = 6;
/** When the bookings were made (MSH-7): their confirmations are due an hour later. */
const BOOKED = Date.parse('2020-01-06T08:00:00Z');
const SEED = 1212;
const SECRET = `whsec_${Buffer.alloc(32, 3).toString('base64')}`;

const children: ChildServer[] = [];
const closers: Array<() => Promise<void> | void> = [];

afterAll(async () => {
  // A failed assertion must not leave a server running.
  for (const c of children) c.kill();
  await Promise.all(children.map((c) => c.exited));
  for (const close of closers.reverse()) await close();
});

/** Resolves like `promise`, or rejects naming `what` after `ms` (a bound on a wait, not a sleep). */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

function configFor(sink: WebhookSink): TestConfigDir {
  const config = writeYamlConfig(
    [
      'server:',
      '  http: { host: 127.0.0.1, port: 0 }',
      '  dataDir: {dataDir}',
      '  deliveries:',
      // Short waits, so the retries of a 500 fall inside the killed lives too.
      '    leaseSeconds: 5',
      '    retry: { firstDelaySeconds: 1, maxDelaySeconds: 2, spanHours: 1 }',
      'inputs:',
      '  - { name: ehr-mllp, type: hl7v2-mllp, host: 127.0.0.1, port: 0, plain: true, timezone: UTC }',
      ...webhookOutputLines(sink),
      '',
    ].join('\n'),
  );
  closers.push(() => config.remove());
  writeConfirmRule(config.dir, 'occurredAt + 1h');
  return config;
}

describe('fault test: a flaky receiver and SIGKILLs at random during 2,000 deliveries', () => {
  it(`ends each of ${TOTAL} deliveries sent, failed or in review with a reason; none lost; repeats only under the same key`, { timeout: 240_000 }, async () => {
    const started = Date.now();
    let firsts = 0;
    // Every 10th first attempt (in arrival order) is answered 500: ambiguous, retried (the
    // receiver dedupes on webhook-id), so it must come again under the same id.
    const sink = await startWebhookSink({ secrets: [SECRET], answer: (_id, earlier) => (earlier === 0 && ++firsts % 10 === 0 ? { kind: 'status', status: 500 } : undefined) });
    closers.push(() => sink.close());
    const config = configFor(sink);
    const env = { WEBHOOK_SECRET: SECRET };
    const random = prng(SEED);
    const messages = Array.from({ length: TOTAL }, (_, i) =>
      siuMessage({ controlId: `FLT-${i}`, appointmentId: `AP-FLT-${i}`, patientId: `P-${i % 97}`, sentAt: new Date(BOOKED), start: new Date(Date.UTC(2030, 0, 1, 8) + i * 900_000) }),
    );

    // Staging: the bookings go in through a server in this process whose clock is held before
    // their confirmations' due time, so nothing is sent yet; on the real clock all are due.
    const staging = await startCarerelay({ configDir: config.dir, env, log: silentLogger, watchMappings: false, now: () => BOOKED + 30_000 });
    try {
      const clients = Array.from({ length: 4 }, () => new MllpClient({ host: '127.0.0.1', port: staging.mllpPorts.get('ehr-mllp')!, ackTimeoutMs: 30_000 }));
      let handed = 0;
      await Promise.all(
        clients.map(async (client) => {
          await client.connect();
          for (let n = handed++; n < TOTAL; n = handed++) expect((await client.send(messages[n]!)).toString('latin1')).toContain('MSA|AA|');
          await client.close();
        }),
      );
      await staging.deliveries.router.idle();
      expect((await staging.store.countDeliveries()).pending).toBe(TOTAL);
    } finally {
      await staging.stop();
    }
    const phases: string[] = [`staged ${Date.now() - started} ms`];

    // Lives on the real clock, each killed at a random moment while sends (and, after the
    // 500s, retries and lease take-overs) are under way.
    const killDelays: number[] = [];
    for (let life = 0; life < KILLS; life++) {
      const child = await startChildServer(config, { env, startTimeoutMs: 20_000 });
      children.push(child);
      const delay = Math.floor(300 + random() * 2_700);
      killDelays.push(delay);
      const timer = setTimeout(() => child.kill(), delay);
      const exit = await within(child.exited, 30_000, `life ${life} exit`);
      clearTimeout(timer);
      if (exit.signal !== 'SIGKILL') throw new Error(`life ${life} ended with ${JSON.stringify(exit)}, not SIGKILL`);
      phases.push(`life ${life}: ${sink.requests.length} requests at ${Date.now() - started} ms`);
    }

    // The last life, in this process, with its clock past the dead lives' leases; then moved on
    // until no delivery is pending (each step past the longest retry wait).
    let shift = 60_000;
    const running = await startCarerelay({ configDir: config.dir, env, log: silentLogger, watchMappings: false, now: () => Date.now() + shift });
    try {
      await running.deliveries.router.idle();
      for (let step = 0; step < 40 && (await running.store.countDeliveries()).pending > 0; step++) {
        await running.deliveries.queue.poke();
        await running.deliveries.idle();
        shift += 5_000;
      }
      phases.push(`last life ${Date.now() - started} ms`);
    } finally {
      await running.stop();
    }

    const store = SqliteStore.open(config.dbFile);
    let counts;
    try {
      counts = await store.countDeliveries();
      // None lost: one delivery per booking, none left pending or cancelled.
      expect(counts.pending).toBe(0);
      expect(counts.cancelled).toBe(0);
      // Here every one is sent: a 500 is retried within the span (the receiver dedupes), and a
      // send cut short by a kill is sent again under the same key.
      expect(counts.sent).toBe(TOTAL);
      const all = [];
      for (let page = await store.listDeliveries({ limit: 1000 }); page.length > 0; page = await store.listDeliveries({ limit: 1000, before: page[page.length - 1]!.delivery.id })) {
        all.push(...page);
      }
      expect(all).toHaveLength(TOTAL);
      expect(new Set(all.map((d) => d.delivery.subjectId))).toEqual(new Set(messages.map((_, i) => `AP-FLT-${i}`)));
      for (const d of all) {
        // Each ended sent, failed (dead-lettered) or in review; a failure or review says why.
        expect(['sent', 'failed', 'review'], d.delivery.id).toContain(d.status);
        if (d.status !== 'sent') expect(d.reason, d.delivery.id).toMatch(/^[a-z_]+$/);
        // A sent delivery reached the receiver, which accepted its key.
        if (d.status === 'sent') expect(sink.accepted().has(d.delivery.id), d.delivery.id).toBe(true);
      }
      // The receiver saw only planned deliveries, each request naming in its body the delivery
      // of its key: a repeat is always the same delivery under the same key.
      const ids = new Set(all.map((d) => d.delivery.id));
      for (const request of sink.requests) {
        expect(request.signed).toBe(true);
        expect(ids.has(request.id!), request.id).toBe(true);
        expect((JSON.parse(request.body) as { deliveryId: string }).deliveryId).toBe(request.id);
      }
      // Every 500 was followed by another attempt under its key, which the receiver accepted
      // (or its delivery ended failed / in review with a reason, checked above).
      const refused = new Set(sink.requests.filter((r) => r.status === 500).map((r) => r.id!));
      expect(refused.size).toBeGreaterThanOrEqual(TOTAL / 10 - 1);
      for (const id of refused) {
        const d = all.find((x) => x.delivery.id === id)!;
        if (d.status === 'sent') expect(sink.accepted().has(id)).toBe(true);
      }
    } finally {
      await store.close();
    }
    const repeats = sink.requests.length - new Set(sink.requests.map((r) => r.id)).size;
    expect(killDelays).toHaveLength(KILLS);
    console.info(
      `delivery fault test (seed ${SEED}): ${TOTAL} deliveries, ${KILLS} SIGKILLs after ${killDelays.join('/')} ms, ` +
        `${sink.requests.length} requests (${repeats} repeats under the same key, ${sink.requests.filter((r) => r.status === 500).length} answered 500), ` +
        `ended ${JSON.stringify(counts)}, ${Date.now() - started} ms (${phases.join(', ')})`,
    );
  });
});
