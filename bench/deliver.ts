// Delivery benchmark: how many due deliveries per second CareRelay takes through the send-time
// checks, rendering and its output, on the embedded store (WAL, synchronous=FULL), in one run:
//   (a) `webhook`: the shipped booking confirmation (its rule, templates and the shipped EU
//       policy: consent checks and all) to a `webhook` output — JSON with the rendered message,
//       Standard Webhooks signature, kept-alive connections — answered 204 by a local sink;
//   (b) `outbox`: the same to an `outbox` output (what `npm start` does: the message kept in the
//       store instead of sent);
//   (c) `echo` (the floor): our HTTP client alone (http/outbound.ts sendOnce, kept-alive
//       connections, the same body size, as many requests in flight as the webhook output may
//       have: server.deliveries.outputConcurrency) against the same sink, nothing else: the
//       most deliveries per second any design calling an HTTP receiver could reach here.
// Deliveries are staged first: bookings (SIU^S12) go in over MLLP with the server's clock held
// before their due time (the rule says `at: occurredAt + 1h`, the shipped confirmation's text),
// so nothing is sent while they are routed; then the clock moves past it and the run measures
// from that moment until every delivery is recorded sent. Routing is reported too (routed/s
// while staging). Per delivery: SQLite commits (every store and queue write goes through the
// group commit). The goal is >= 5,000 deliveries/s for (a).
//
// Run alone with `node --expose-gc --import tsx bench/deliver.ts` (add --cpu-prof to profile),
// or through bench/run.ts. BENCH_DELIVERIES sets how many (default 10,000).
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { MllpClient } from '../src/hl7v2/mllp-client.ts';
import { AddressPolicy, KeepAlive, sendOnce } from '../src/http/outbound.ts';
import { silentLogger } from '../src/log.ts';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { DEFAULT_DELIVERIES } from '../src/config/server-schema.ts';
import { standardWebhooksKey, standardWebhooksSignature } from '../src/webhooks/standard-webhooks.ts';
import { bookingSiu as siu } from './measure.ts';
import { commitsOf } from './measure.ts';

const COUNT = Number(process.env.BENCH_DELIVERIES ?? 10_000);
const CONNECTIONS = 8;
const repoRoot = fileURLToPath(new URL('..', import.meta.url));
const SECRET = `whsec_${Buffer.alloc(32, 9).toString('base64')}`;

/** A receiver answering 204 to every POST after reading it; counts requests and distinct webhook-ids. */
async function startSink(): Promise<{ url: string; requests: () => number; ids: Set<string>; bodies: string[]; close: () => Promise<void> }> {
  let requests = 0;
  const ids = new Set<string>();
  const bodies: string[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      requests++;
      const id = req.headers['webhook-id'];
      if (typeof id === 'string') ids.add(id);
      // A sample, to check the signature after the run (not on the measured path).
      if (bodies.length < 3) bodies.push(JSON.stringify({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.writeHead(204).end();
    });
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/carerelay`,
    requests: () => requests,
    ids,
    bodies,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The shipped confirmation (rule, text, policy) to output `confirmations` (a webhook or an outbox), due an hour after the booking. */
function writeConfig(dir: string, output: string[]): void {
  mkdirSync(join(dir, 'connectors'), { recursive: true });
  mkdirSync(join(dir, 'mappings'), { recursive: true });
  cpSync(join(repoRoot, 'connectors', 'policy.yaml'), join(dir, 'connectors', 'policy.yaml'));
  // The shipped confirmation's text (an email's text part) as the webhook's one body template.
  mkdirSync(join(dir, 'mappings', 'templates'));
  for (const lang of ['', '.fr']) {
    cpSync(join(repoRoot, 'mappings', 'templates', `booking-confirmation${lang}.text.liquid`), join(dir, 'mappings', 'templates', `booking-confirmation${lang}.liquid`));
  }
  writeFileSync(
    join(dir, 'connectors', 'bench.yaml'),
    [
      'server:',
      '  http: { host: 127.0.0.1, port: 0 }',
      `  dataDir: ${JSON.stringify(join(dir, 'data'))}`,
      'inputs:',
      '  - { name: bench-mllp, type: hl7v2-mllp, host: 127.0.0.1, port: 0, plain: true, timezone: UTC }',
      'outputs:',
      ...output,
      '',
    ].join('\n'),
  );
  writeFileSync(
    join(dir, 'mappings', 'bench.yaml'),
    [
      'languages: [fr]',
      'rules:',
      '  - id: booking-confirmation',
      '    on: appointment.booked',
      '    purpose: care.logistics',
      '    channel: webhook',
      '    send:',
      '      output: confirmations',
      '      template: booking-confirmation',
      '      fields: [patient.language, patient.name.given, appointment.start, appointment.serviceType.display, appointment.location.name]',
      '    at: occurredAt + 1h',
      '    expires: appointment.start',
      '',
    ].join('\n'),
  );
}

interface Run {
  deliveries: number;
  perS: number;
  routedPerS: number;
  commitsPerDelivery: number;
  /** Times a delivery went back to the queue to wait for its output (a call slot, the rate). */
  deferralsPerDelivery: number;
}

/** Stages COUNT deliveries with the clock held, then lets them all fall due and times the drain. */
async function run(dir: string, output: string[], received?: () => number): Promise<Run> {
  writeConfig(dir, output);
  // The bookings say 2030-01-01T08:00Z; the server's clock runs from just after it.
  let shift = Date.parse('2030-01-01T08:00:30Z') - Date.now();
  const running: RunningCarerelay = await startCarerelay({ configDir: dir, env: { BENCH_WEBHOOK_SECRET: SECRET }, log: silentLogger, watchMappings: false, now: () => Date.now() + shift });
  try {
    const port = running.mllpPorts.get('bench-mllp')!;
    const clients = Array.from({ length: CONNECTIONS }, () => new MllpClient({ host: '127.0.0.1', port, ackTimeoutMs: 60_000 }));
    await Promise.all(clients.map((c) => c.connect()));
    const staged = performance.now();
    let next = 0;
    await Promise.all(
      clients.map(async (client) => {
        for (let n = next++; n < COUNT; n = next++) {
          // Appointments from a day after the bookings on: none expires before its confirmation is due.
          const ack = await client.send(siu(`D${n}`, n + 100));
          if (ack.indexOf('MSA|AA|') === -1) throw new Error(`booking D${n} was not accepted`);
        }
      }),
    );
    await Promise.all(clients.map((c) => c.close()));
    await running.deliveries.router.idle();
    const routedPerS = COUNT / ((performance.now() - staged) / 1000);
    const pending = (await running.store.countDeliveries()).pending;
    if (pending !== COUNT) throw new Error(`expected ${COUNT} pending deliveries, found ${pending}`);
    (globalThis as { gc?: () => void }).gc?.();

    const commits = commitsOf(running);
    const before = received?.() ?? 0;
    // Done when every job is done: Queue.idle alone would also resolve while jobs wait for
    // their output (a deferral: pending until a later time).
    let deferrals = 0;
    const drained = new Promise<void>((resolve, reject) => {
      let done = 0;
      const unsubscribe = running.deliveries.queue.subscribe((event) => {
        if (event.type === 'deferred') deferrals++;
        if (event.type === 'dead' || event.type === 'parked' || event.type === 'retry') {
          unsubscribe();
          reject(new Error(`a delivery failed: ${event.type} ${event.code}`));
        }
        if (event.type === 'done' && ++done === COUNT) {
          unsubscribe();
          resolve();
        }
      });
    });
    const started = performance.now();
    shift += 2 * 3_600_000;
    await running.deliveries.queue.poke();
    await drained;
    const seconds = (performance.now() - started) / 1000;
    const counts = await running.store.countDeliveries();
    const got = received === undefined ? COUNT : received() - before;
    if (counts.sent !== COUNT || got < COUNT) throw new Error(`not every delivery was sent: ${JSON.stringify(counts)}, receiver got ${got}`);
    return {
      deliveries: COUNT,
      perS: Math.round(COUNT / seconds),
      routedPerS: Math.round(routedPerS),
      commitsPerDelivery: Number(((commitsOf(running) - commits) / COUNT).toFixed(3)),
      deferralsPerDelivery: Number((deferrals / COUNT).toFixed(3)),
    };
  } finally {
    await running.stop();
  }
}

/** The floor: signed POSTs of the same size through sendOnce with kept-alive connections, `inFlight` at once. */
async function echoFloor(url: string, body: Buffer, inFlight: number): Promise<number> {
  const pool = new KeepAlive();
  const key = standardWebhooksKey(SECRET)!;
  const addresses = new AddressPolicy(['127.0.0.1']);
  const target = new URL(url);
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      for (let n = next++; n < COUNT; n = next++) {
        const id = `floor-${n}`;
        const timestamp = String(Math.floor(Date.now() / 1000));
        const response = await sendOnce({
          url: target,
          headers: { 'content-type': 'application/json', 'webhook-id': id, 'webhook-timestamp': timestamp, 'webhook-signature': standardWebhooksSignature([key], id, timestamp, body) },
          body,
          timeoutMs: 10_000,
          addresses,
          codePrefix: 'bench',
          keepAlive: pool,
        });
        if (response.status !== 204) throw new Error(`the sink answered ${response.status}`);
      }
    }),
  );
  pool.close();
  return Math.round(COUNT / ((performance.now() - started) / 1000));
}

export async function benchDeliver(): Promise<Record<string, number>> {
  const root = mkdtempSync(join(process.env.CARERELAY_BENCH_DIR ?? tmpdir(), 'carerelay-bench-deliver-'));
  const sink = await startSink();
  try {
    const webhook = await run(
      join(root, 'webhook'),
      [
        '  - name: confirmations',
        '    type: webhook',
        `    url: ${sink.url}`,
        '    secrets: [{ env: BENCH_WEBHOOK_SECRET }]',
        '    allowPrivateAddresses: [127.0.0.1]',
        '    includeMessage: true',
        '    baa: true',
      ],
      sink.requests,
    );
    // What the receiver got: signed, with the rendered confirmation.
    const sample = JSON.parse(sink.bodies[0]!) as { headers: Record<string, string>; body: string };
    const expected = standardWebhooksSignature([standardWebhooksKey(SECRET)!], sample.headers['webhook-id']!, sample.headers['webhook-timestamp']!, Buffer.from(sample.body));
    if (sample.headers['webhook-signature'] !== expected || !(JSON.parse(sample.body) as { message?: { text?: string } }).message?.text) {
      throw new Error('the sink got a request that is not a signed confirmation');
    }
    if (sink.ids.size !== COUNT) throw new Error(`the sink got ${sink.ids.size} distinct deliveries of ${COUNT}`);
    (globalThis as { gc?: () => void }).gc?.();

    // Kept in the store: run() checks every delivery is recorded sent.
    const outbox = await run(join(root, 'outbox'), ['  - { name: confirmations, type: outbox, channel: webhook, baa: true }']);
    (globalThis as { gc?: () => void }).gc?.();

    const floor = await echoFloor(sink.url, Buffer.from(sample.body), DEFAULT_DELIVERIES.outputConcurrency);

    const figures: Record<string, number> = {
      deliver_deliveries: COUNT,
      deliver_echo_floor_per_s: floor,
      deliver_webhook_per_s: webhook.perS,
      deliver_webhook_vs_floor_pct: Math.round((webhook.perS / floor) * 1000) / 10,
      deliver_webhook_commits_per_delivery: webhook.commitsPerDelivery,
      deliver_webhook_deferrals_per_delivery: webhook.deferralsPerDelivery,
      deliver_outbox_per_s: outbox.perS,
      deliver_outbox_commits_per_delivery: outbox.commitsPerDelivery,
      deliver_routed_per_s: webhook.routedPerS,
      deliver_load_average: Number(loadavg()[0]!.toFixed(1)),
    };
    console.log(`\nDeliveries due at once (${COUNT}), checks + render + output, embedded store`);
    console.log('target    deliveries/s  % of echo  commits/delivery');
    console.log(`echo      ${String(floor).padStart(12)}      100 %                 -`);
    console.log(`webhook   ${String(webhook.perS).padStart(12)}  ${String(figures.deliver_webhook_vs_floor_pct).padStart(7)} %  ${String(webhook.commitsPerDelivery).padStart(16)}`);
    console.log(`outbox    ${String(outbox.perS).padStart(12)}          -  ${String(outbox.commitsPerDelivery).padStart(16)}`);
    console.log(`staging: ${webhook.routedPerS} bookings/s ingested and routed (8 connections); load average ${figures.deliver_load_average}; goal: webhook >= 5,000/s\n`);
    return figures;
  } finally {
    await sink.close();
    rmSync(root, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const figures = await benchDeliver();
  for (const [name, value] of Object.entries(figures)) console.log(`${name.padEnd(40)} ${value}`);
}
