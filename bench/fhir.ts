// FHIR rest-hook ingest benchmark (bench/ingest.ts runs it with the shipped mappings beside the
// MLLP targets; alone it runs without mappings): full-resource topic notifications (R4 Backport Bundle
// with the Appointment and its Patient, no fetch-back) POSTed over HTTP to the real server
// (startCarerelay: auth, size limit, parse with prototype-key check, readNotification,
// dedupe look-up, normalize, one SQLite commit with synchronous=FULL, then the 2xx).
//
//   - 1 connection, 1 subscription: a server delivering one subscription in order;
//   - 8 connections, 8 subscriptions: eight subscriptions delivered concurrently (the
//     events of one subscription are handled one at a time, for gap detection).
//
// Every notification is distinct (own event number, appointment id); the next one is sent
// when the 2xx came back. Reported: notifications/s and 2xx latency p50/p99 (ms), for
// DURATION_S seconds or MAX_NOTIFICATIONS notifications, whichever comes first; at the end
// every 2xx is checked to have its trigger in the store.
// Run alone with `node --expose-gc --import tsx bench/fhir.ts`, or through bench/run.ts.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { silentLogger } from '../src/log.ts';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { startFhirTestServer } from '../test/helpers/fhir-server.ts';
import { testAppointment, testPatient, topicBundle } from '../test/helpers/fhir-notifications.ts';
import { writeConfig } from './measure.ts';

const DURATION_S = Number(process.env.BENCH_FHIR_SECONDS ?? 8);
const MAX_NOTIFICATIONS = Number(process.env.BENCH_FHIR_NOTIFICATIONS ?? 20_000);
const WARMUP_PER_CONNECTION = 50;
const TOKEN = 'bench-token';

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

export interface FhirRunResult {
  messages: number;
  msgsPerS: number;
  p50Ms: number;
  p99Ms: number;
}

export interface FhirTarget {
  running: RunningCarerelay;
  /** Sends notifications on `connections` subscriptions at once, one in flight each. */
  run(connections: number): Promise<FhirRunResult>;
  close(): Promise<void>;
}

/**
 * A server with a FHIR rest-hook input of eight subscriptions in `dir`, with or without the
 * shipped mappings, and a FHIR test server it could fetch from (it never needs to: every
 * notification carries its resources). Appointments are in 2030 and patients have an email,
 * so the shipped rules plan their messages.
 */
export async function startFhirTarget(dir: string, options: { shipped: boolean }): Promise<FhirTarget> {
  const fhir = await startFhirTestServer();
  const subscriptions = Array.from({ length: 8 }, (_, i) => `bench-${i}`);
  writeConfig(
    dir,
    [
      'server:',
      '  http: { host: 127.0.0.1, port: 0 }',
      `  dataDir: ${JSON.stringify(join(dir, 'data'))}`,
      'inputs:',
      '  - name: ehr-fhir',
      '    type: fhir-rest-hook',
      `    server: { baseUrl: ${JSON.stringify(fhir.baseUrl)} }`,
      '    auth: { bearer: { token: { env: BENCH_FHIR_TOKEN } } }',
      '    subscriptions:',
      ...subscriptions.flatMap((id) => [`      - id: ${id}`, '        topic: http://example.org/SubscriptionTopic/appointment-changed', '        heartbeatPeriodSeconds: 0']),
    ],
    options.shipped,
  );
  const running = await startCarerelay({ configDir: dir, env: { BENCH_FHIR_TOKEN: TOKEN }, log: silentLogger, watchMappings: false });
  const url = `http://127.0.0.1:${running.httpPort}/ingest/fhir/ehr-fhir`;
  const nextEvent = new Map<string, number>(subscriptions.map((s) => [s, 0]));

  const notification = (subscription: string): string => {
    const n = nextEvent.get(subscription)! + 1;
    nextEvent.set(subscription, n);
    const id = `${subscription}-${n}`;
    const patientId = `p${n % 500}`;
    const start = new Date(Date.UTC(2030, 0, 1, 8) + (n % 100_000) * 900_000).toISOString();
    const appointment = { ...testAppointment(id, `Patient/${patientId}`, { start, end: start }), meta: { versionId: '1' } };
    const patient = testPatient(patientId, { telecom: [{ system: 'phone', use: 'mobile', value: '+15550100' }, { system: 'email', value: `${patientId}@example.org` }] });
    return JSON.stringify(
      topicBundle({
        subscription: `${fhir.baseUrl}/Subscription/${subscription}`,
        type: 'event-notification',
        events: [{ number: n, focus: `${fhir.baseUrl}/Appointment/${id}`, resource: appointment }],
        extraEntries: [{ fullUrl: `${fhir.baseUrl}/Patient/${patientId}`, resource: patient }],
      }),
    );
  };

  const send = async (subscription: string): Promise<number> => {
    const body = notification(subscription);
    const started = performance.now();
    const res = await fetch(url, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/fhir+json' }, body });
    await res.arrayBuffer();
    if (res.status !== 200) throw new Error(`notification answered ${res.status}`);
    return performance.now() - started;
  };

  const run = async (connections: number): Promise<FhirRunResult> => {
    const subs = subscriptions.slice(0, connections);
    await Promise.all(subs.map(async (s) => {
      for (let i = 0; i < WARMUP_PER_CONNECTION; i++) await send(s);
    }));
    (globalThis as { gc?: () => void }).gc?.();
    const latencies: number[] = [];
    const deadline = performance.now() + DURATION_S * 1000;
    const started = performance.now();
    await Promise.all(
      subs.map(async (s) => {
        while (performance.now() < deadline && latencies.length < MAX_NOTIFICATIONS) latencies.push(await send(s));
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    const sorted = Float64Array.from(latencies).sort();
    return {
      // Warm-up included: the per-message figures count every notification sent.
      messages: latencies.length + subs.length * WARMUP_PER_CONNECTION,
      msgsPerS: Math.round(latencies.length / seconds),
      p50Ms: Number(percentile(sorted, 0.5).toFixed(2)),
      p99Ms: Number(percentile(sorted, 0.99).toFixed(2)),
    };
  };

  return {
    running,
    run,
    close: async () => {
      await running.stop();
      await fhir.close();
    },
  };
}

export async function benchFhir(): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(process.env.CARERELAY_BENCH_DIR ?? tmpdir(), 'carerelay-bench-fhir-'));
  const target = await startFhirTarget(dir, { shipped: false });
  try {
    const one = await target.run(1);
    (globalThis as { gc?: () => void }).gc?.();
    const eight = await target.run(8);
    // Every 2xx was committed with its trigger.
    const accepted = one.messages + eight.messages;
    const stored = (await target.running.store.listMessages({ input: 'ehr-fhir', limit: 1000 })).length;
    const triggers = (await target.running.store.listTriggers({ limit: 1000 })).length;
    if (stored < Math.min(1000, accepted) || triggers < Math.min(1000, accepted)) {
      throw new Error(`only ${stored} records / ${triggers} triggers for ${accepted} accepted notifications`);
    }
    return {
      'fhir full-resource 1 conn notifications/s': one.msgsPerS,
      'fhir full-resource 1 conn p50 ms': one.p50Ms,
      'fhir full-resource 1 conn p99 ms': one.p99Ms,
      'fhir full-resource 8 conn notifications/s': eight.msgsPerS,
      'fhir full-resource 8 conn p50 ms': eight.p50Ms,
      'fhir full-resource 8 conn p99 ms': eight.p99Ms,
      'fhir notifications measured': accepted,
    };
  } finally {
    await target.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const figures = await benchFhir();
  for (const [name, value] of Object.entries(figures)) console.log(`${name.padEnd(44)} ${value}`);
}
