// The delivery engine around every adapter (docs/reliability.md promises 5 and 6), over real
// sockets with the server in this process and its clock in the test's hands: per-output rate
// limits (a burst of 1,000 to the ActiveCampaign stand-in never over 5 requests/s), a hanging
// output that holds only its own call slots, the circuit breaker, a provider's 429 slowing the
// whole output without using up attempts, review and dead-letter with replay by id and by
// filter (audited, the same idempotency key), receipts and the job on GET /api/deliveries/:id,
// and a marketing tool without the address it keys contacts by: suppressed `no_address`.
//
// The clock only moves when a test moves it; after each move the queue is poked and the test
// waits until nothing due is left (Queue.idle): no sleeps, no timed assertions.
import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { MllpClient } from '../src/hl7v2/mllp-client.ts';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { startActiveCampaignStandIn, type ActiveCampaignStandIn } from './helpers/activecampaign-standin.ts';
import { CLI_PATH, captureLogger, hl7Time, writeYamlConfig, type LogLine, type TestConfigDir } from './helpers/server.ts';
import { startWebhookSink, type WebhookSink } from './helpers/webhook-sink.ts';

const run = promisify(execFile);
const T0 = Date.parse('2030-03-01T09:20:00Z');
const SECRET = `whsec_${Buffer.alloc(32, 7).toString('base64')}`;
const TOKENS = { ONCALL_TOKEN: 'oncall-token-0123456789abcdef', VIEWER_TOKEN: 'viewer-token-0123456789abcdef' };

let clock = T0;
const closers: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

/** A booking (SIU^S12) for patient i, with an email address unless `email` is false. */
function booking(i: number, email = true): string {
  return (
    [
      `MSH|^~\\&|EPIC|NORTHCLINIC|CARERELAY|CR|${hl7Time(new Date(T0 - 60_000))}||SIU^S12^SIU_S12|ENG-${i}|P|2.5.1`,
      `SCH|PL-${i}|AP-${i}||||NEW|CHK^Check-up^LOCAL||30|MIN|||||||||||||||Booked`,
      `TQ1|1||||||${hl7Time(new Date(T0 + 7 * 86_400_000))}|${hl7Time(new Date(T0 + 7 * 86_400_000 + 1_800_000))}`,
      `PID|1||P${i}^^^NORTHCLINIC^MR||DOE^Alex||19800101|F|||||${email ? `^NET^Internet^p${i}@patients.example.org` : ''}`,
      'AIL|1||CARDIO1^^^NORTHCLINIC',
    ].join('\r') + '\r'
  );
}

interface EngineOptions {
  /** Secrets the outputs read (besides the admin tokens and WEBHOOK_SECRET). */
  env?: Record<string, string>;
  /** server.deliveries lines (indented four spaces). */
  deliveries?: string[];
  /** outputs lines (indented two spaces). */
  outputs: string[];
  /** rules lines (indented two spaces). */
  rules: string[];
  /** The server.deliveries.retry line (indented four spaces); default: 1 s, at most 4 s, for an hour. */
  retry?: string;
}

interface Engine {
  running: RunningCarerelay;
  logs: LogLine[];
  config: TestConfigDir;
  api(route: string, init?: { method?: string; body?: unknown; token?: keyof typeof TOKENS }): Promise<{ status: number; json: any }>;
  /** Sends bookings over MLLP and waits until they are routed. */
  book(ids: number[], email?: boolean): Promise<void>;
  /** Moves the clock by `stepMs` and runs what is due, until `done` or `maxSteps`. */
  drive(done: () => boolean, stepMs: number, maxSteps: number): Promise<void>;
  /** Runs what is due now. */
  settle(): Promise<void>;
}

async function startEngine(options: EngineOptions): Promise<Engine> {
  clock = T0;
  const config = writeYamlConfig(
    [
      'server:',
      '  http: { host: 127.0.0.1, port: 0 }',
      '  dataDir: {dataDir}',
      '  admin:',
      '    tokens:',
      '      - { name: oncall, token: { env: ONCALL_TOKEN }, scopes: [read, operate, phi] }',
      '      - { name: viewer, token: { env: VIEWER_TOKEN }, scopes: [read] }',
      '  deliveries:',
      ...(options.deliveries ?? []),
      options.retry ?? '    retry: { firstDelaySeconds: 1, maxDelaySeconds: 4, spanHours: 1 }',
      'policy:',
      '  region: us',
      '  quietHours: { channels: [] }',
      '  usExemptSms: { perDay: 1000, perWeek: 1000 }',
      'inputs:',
      '  - { name: ehr-mllp, type: hl7v2-mllp, host: 127.0.0.1, port: 0, plain: true, timezone: UTC }',
      'outputs:',
      ...options.outputs,
      '',
    ].join('\n'),
  );
  closers.push(() => config.remove());
  mkdirSync(path.join(config.dir, 'mappings'));
  writeFileSync(path.join(config.dir, 'mappings', 'rules.yaml'), ['rules:', ...options.rules, ''].join('\n'));
  const log = captureLogger();
  const env = { ...TOKENS, WEBHOOK_SECRET: SECRET, ...options.env };
  const running = await startCarerelay({ configDir: config.dir, env, log, watchMappings: false, now: () => clock });
  closers.push(() => running.stop());
  const queue = running.deliveries.queue;
  const settle = async (): Promise<void> => {
    await running.deliveries.router.idle();
    await queue.poke();
    await queue.idle();
  };
  return {
    running,
    logs: log.lines,
    config,
    async api(route, init = {}) {
      const res = await fetch(`http://127.0.0.1:${running.httpPort}${route}`, {
        method: init.method ?? 'GET',
        headers: {
          authorization: `Bearer ${TOKENS[init.token ?? 'ONCALL_TOKEN']}`,
          ...(init.body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
      });
      const text = await res.text();
      return { status: res.status, json: text === '' ? undefined : JSON.parse(text) };
    },
    async book(ids, email = true) {
      const clients = Array.from({ length: Math.min(4, ids.length) }, () => new MllpClient({ host: '127.0.0.1', port: running.mllpPorts.get('ehr-mllp')!, ackTimeoutMs: 30_000 }));
      await Promise.all(clients.map((c) => c.connect()));
      try {
        await Promise.all(
          clients.map(async (client, c) => {
            for (let k = c; k < ids.length; k += clients.length) {
              const ack = await client.send(booking(ids[k]!, email));
              expect(ack.toString('latin1')).toContain('MSA|AA|');
            }
          }),
        );
      } finally {
        await Promise.all(clients.map((c) => c.close()));
      }
      await running.deliveries.router.idle();
    },
    async drive(done, stepMs, maxSteps) {
      for (let step = 0; step < maxSteps && !done(); step++) {
        clock += stepMs;
        await settle();
      }
    },
    settle,
  };
}

/** Resolves like `promise`, or rejects naming `what` after `ms` (a bound on a wait, not a sleep). */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

async function sink(answer?: Parameters<typeof startWebhookSink>[0]['answer']): Promise<WebhookSink> {
  const s = await startWebhookSink({ secrets: [SECRET], now: () => clock, ...(answer ? { answer } : {}) });
  closers.push(() => s.close());
  return s;
}

/** A webhook output block to `url` (two-space indent). */
function webhook(name: string, url: string, extra: string[] = []): string[] {
  return [
    `  - name: ${name}`,
    '    type: webhook',
    `    url: ${url}`,
    '    secrets: [{ env: WEBHOOK_SECRET }]',
    '    allowPrivateAddresses: [127.0.0.1]',
    '    baa: true',
    ...extra,
  ];
}

/** A rule sending each booking's confirmation to `output` at once. */
function confirm(id: string, output: string, extra: string[] = []): string[] {
  return [`  - id: ${id}`, '    on: appointment.booked', '    purpose: care.logistics', '    channel: webhook', `    send: { output: ${output}, fields: [appointment.start] }`, '    at: now', ...extra];
}

const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

/** At most `limit` of `times` in any window [t, t + windowMs). */
function mostInWindow(times: readonly number[], windowMs: number): number {
  const sorted = [...times].sort((a, b) => a - b);
  let most = 0;
  for (let i = 0, j = 0; i < sorted.length; i++) {
    while (sorted[i]! - sorted[j]! >= windowMs) j++;
    most = Math.max(most, i - j + 1);
  }
  return most;
}

describe('delivery engine', () => {
  it('keeps a burst of 1,000 to ActiveCampaign within 5 requests in any second (its account limit)', { timeout: 120_000 }, async () => {
    const standIn: ActiveCampaignStandIn = await startActiveCampaignStandIn({ now: () => clock });
    closers.push(() => standIn.close());
    const engine = await startEngine({
      env: { AC_TOKEN: standIn.apiToken },
      outputs: [
        '  - name: ac',
        '    type: activecampaign',
        `    apiUrl: ${standIn.baseUrl}`,
        '    apiToken: { env: AC_TOKEN }',
        '    action: upsert',
        '    properties: { patient.name.given: firstName }',
      ],
      rules: [
        '  - id: newsletter-contact',
        '    on: appointment.booked',
        '    purpose: service.info',
        '    channel: crm',
        '    send:',
        '      output: ac',
        '      to: patient.telecom[system=email].value',
        '      fields: [patient.name.given]',
        '    at: now',
      ],
    });
    await engine.book(range(0, 1_000));
    await engine.settle();
    // The first second's five went; the others wait for their reserved times, off the workers.
    expect(standIn.admitted).toHaveLength(5);
    await engine.drive(() => standIn.contacts.length === 1_000, 1_000, 400);

    expect(standIn.contacts).toHaveLength(1_000);
    expect(standIn.requests.filter((r) => r.status === 429)).toEqual([]);
    expect(mostInWindow(standIn.admitted, 1_000)).toBe(5);
    const { json } = await engine.api('/api/deliveries?status=sent&limit=1');
    expect(json.totals).toMatchObject({ sent: 1_000, failed: 0, pending: 0 });
    // Waiting for the rate used up no attempt: each job ran once as a counted attempt.
    const last = (await engine.api(`/api/deliveries/${encodeURIComponent(json.items[0].id)}`)).json;
    expect(last.job.attempts - last.job.deferrals).toBe(1);
  });

  it('one always-failing delivery among 300 blocks none: the others go at once, it is dead-lettered with its code at the end of its span', { timeout: 120_000 }, async () => {
    const BAD = 'confirm@appointment/AP-150#0';
    const receiver = await sink((id) => (id === BAD ? { kind: 'status', status: 503 } : undefined));
    const engine = await startEngine({
      outputs: webhook('hook', receiver.url),
      rules: confirm('confirm', 'hook'),
      retry: '    retry: { firstDelaySeconds: 1, maxDelaySeconds: 4, spanHours: 0.01 }',
    });
    await engine.book(range(0, 300));
    await engine.settle();
    // Without the clock moving: every other delivery went, the bad one waits for its retry.
    expect(receiver.accepted().size).toBe(299);
    expect(receiver.accepted().has(BAD)).toBe(false);
    const bad = async () => (await engine.api(`/api/deliveries/${encodeURIComponent(BAD)}`)).json;
    expect((await bad()).status).toBe('pending');
    await engine.drive(() => false, 2_000, 30);
    const failed = await bad();
    // Its last error, or the circuit its own failures opened once it was alone (both codes).
    expect(failed).toMatchObject({ status: 'failed', job: { state: 'dead' } });
    expect(['webhook_unavailable', 'circuit_open']).toContain(failed.reason);
    expect(receiver.requests.filter((r) => r.id === BAD).length).toBeGreaterThan(1);
    expect((await engine.api('/api/deliveries?status=sent&limit=1')).json.totals).toMatchObject({ sent: 299, failed: 1, pending: 0 });
  });

  it('a hanging output holds only its own call slots: the other output\'s deliveries all go', { timeout: 60_000 }, async () => {
    const hanging = await sink();
    const healthy = await sink();
    hanging.failNext({ kind: 'hang' }, 1_000);
    const engine = await startEngine({
      deliveries: ['    concurrency: 4', '    outputConcurrency: 2'],
      outputs: [...webhook('slow', hanging.url, ['    timeoutSeconds: 120']), ...webhook('fast', healthy.url)],
      rules: [...confirm('to-slow', 'slow'), ...confirm('to-fast', 'fast')],
    });
    await engine.book(range(0, 10));
    await engine.running.deliveries.queue.poke();
    await within(healthy.waitFor(10), 30_000, 'the healthy output\'s 10 deliveries');
    expect(hanging.requests).toHaveLength(2);
    const outputs = (await engine.api('/api/outputs')).json.items;
    expect(outputs.find((o: { name: string }) => o.name === 'slow')).toMatchObject({ inFlight: 2, limits: { concurrency: 2 }, circuit: { state: 'closed' } });
    // The hanging calls end when their receiver goes away (before the server stops).
    await hanging.close();
  });

  it('opens the circuit of a failing output, shows and logs it, probes after the open period and closes on success', { timeout: 60_000 }, async () => {
    const flaky = await sink();
    flaky.failNext({ kind: 'status', status: 503 }, 3);
    const engine = await startEngine({
      deliveries: ['    concurrency: 2', '    outputConcurrency: 1', '    circuit: { failures: 3, openSeconds: 30 }'],
      outputs: webhook('flaky', flaky.url),
      rules: confirm('to-flaky', 'flaky'),
    });
    await engine.book(range(0, 10));
    await engine.settle();
    expect(flaky.requests).toHaveLength(3);
    const open = (await engine.api('/api/outputs')).json.items[0];
    expect(open).toMatchObject({ name: 'flaky', type: 'webhook', circuit: { state: 'open', lastError: 'webhook_unavailable', openUntil: new Date(T0 + 30_000).toISOString() } });
    expect(engine.logs).toContainEqual(expect.objectContaining({ message: 'output.circuit_opened', output: 'flaky', reason: 'webhook_unavailable', count: 3 }));
    // The metric and the alert condition follow the circuit (docs/operations.md).
    const metric = async () => (await (await fetch(`http://127.0.0.1:${engine.running.httpPort}/metrics`)).text()).match(/^carerelay_output_circuit_open\{output="flaky"\} (\d)$/m)?.[1];
    expect(await metric()).toBe('1');
    // While it is open nothing calls it, whatever is due (retries included).
    await engine.drive(() => false, 1_000, 25);
    expect(flaky.requests).toHaveLength(3);
    await engine.drive(() => flaky.accepted().size === 10, 1_000, 120);
    expect(flaky.accepted().size).toBe(10);
    expect(flaky.requests).toHaveLength(13);
    expect((await engine.api('/api/outputs')).json.items[0].circuit.state).toBe('closed');
    expect(await metric()).toBe('0');
    const changes = engine.logs.filter((l) => l.message.startsWith('output.circuit_')).map((l) => l.message);
    expect(changes).toEqual(['output.circuit_opened', 'output.circuit_half_open', 'output.circuit_closed']);
    // A delivery that waited for the circuit used up no attempt doing so.
    const waited = (await engine.api(`/api/deliveries/${encodeURIComponent('to-flaky@appointment/AP-9#0')}`)).json;
    expect(waited).toMatchObject({ status: 'sent', job: { state: 'done' } });
    expect(waited.job.deferrals).toBeGreaterThanOrEqual(1);
    expect(waited.job.attempts - waited.job.deferrals).toBe(1);
  });

  it("a provider's 429 holds the whole output until its Retry-After, without using up an attempt", { timeout: 60_000 }, async () => {
    const limited = await sink();
    limited.failNext({ kind: 'status', status: 429, retryAfter: '30' });
    const engine = await startEngine({
      deliveries: ['    outputConcurrency: 1'],
      outputs: webhook('paced', limited.url),
      rules: confirm('to-paced', 'paced'),
    });
    await engine.book(range(0, 5));
    await engine.settle();
    expect(limited.requests.map((r) => r.status)).toEqual([429]);
    await engine.drive(() => false, 1_000, 29);
    expect(limited.requests).toHaveLength(1);
    await engine.drive(() => limited.accepted().size === 5, 1_000, 60);
    expect(limited.accepted().size).toBe(5);
    expect(engine.logs).toContainEqual(expect.objectContaining({ message: 'output.rate_limited', output: 'paced', code: 'webhook_rate_limited', durationMs: 30_000 }));
    const first = (await engine.api(`/api/deliveries/${encodeURIComponent(`to-paced@appointment/AP-${JSON.parse(limited.requests[0]!.body).deliveryId.split('AP-')[1].split('#')[0]}#0`)}`)).json;
    expect(first).toMatchObject({ status: 'sent', job: { lastError: { code: 'webhook_rate_limited' } } });
    expect(first.job.attempts - first.job.deferrals).toBe(1);
  });

  it('puts an ambiguous failure of an output that does not dedupe in review; a replay by id sends it once, audited', { timeout: 60_000 }, async () => {
    const receiver = await sink();
    receiver.failNext({ kind: 'status', status: 500 });
    const engine = await startEngine({
      outputs: webhook('nodedupe', receiver.url, ['    receiverDedupes: false']),
      rules: confirm('to-nodedupe', 'nodedupe'),
    });
    await engine.book([1]);
    await engine.settle();
    const id = 'to-nodedupe@appointment/AP-1#0';
    const path = `/api/deliveries/${encodeURIComponent(id)}`;
    const review = (await engine.api(path)).json;
    expect(review).toMatchObject({ status: 'review', reason: 'webhook_server_error', job: { state: 'parked', lastError: { failureClass: 'ambiguous', code: 'webhook_server_error' } }, links: { replay: '/api/deliveries/replay' } });
    expect(review.receipts.map((r: { status: string }) => r.status)).toEqual(['sending', 'unknown']);
    expect((await engine.api('/api/deliveries?status=review')).json.items.map((d: { id: string }) => d.id)).toEqual([id]);
    expect(engine.logs).toContainEqual(expect.objectContaining({ message: 'deliver.review', deliveryId: id, reason: 'webhook_server_error' }));
    // Nothing more happens on its own.
    await engine.drive(() => false, 60_000, 5);
    expect(receiver.requests).toHaveLength(1);

    expect((await engine.api('/api/deliveries/replay', { method: 'POST', body: { ids: [id] }, token: 'VIEWER_TOKEN' })).status).toBe(403);
    const replayed = await engine.api('/api/deliveries/replay', { method: 'POST', body: { ids: [id, 'no-such-delivery'] } });
    expect(replayed).toEqual({ status: 200, json: { replayed: [{ id, status: 'review', reason: 'webhook_server_error' }], refused: [{ id: 'no-such-delivery', reason: 'unknown_delivery' }] } });
    await engine.settle();
    const sent = (await engine.api(path)).json;
    expect(sent).toMatchObject({ status: 'sent', providerId: id });
    expect(sent.receipts.map((r: { status: string }) => r.status)).toEqual(['sending', 'unknown', 'sending', 'accepted']);
    expect(receiver.requests.map((r) => [r.id, r.status])).toEqual([
      [id, 500],
      [id, 204],
    ]);
    // At most once more: a second replay finds nothing to replay.
    expect((await engine.api('/api/deliveries/replay', { method: 'POST', body: { ids: [id] } })).json).toEqual({ replayed: [], refused: [{ id, reason: 'not_replayable' }] });
    const audit = (await engine.api(`/api/audit?target=${encodeURIComponent(`delivery/${id}`)}`)).json.items;
    expect(audit.map((a: { actor: string; action: string; outcome: string }) => [a.actor, a.action, a.outcome])).toEqual([
      ['oncall', 'delivery.replay', 'refused:not_replayable'],
      ['oncall', 'delivery.replay', 'stored'],
    ]);
  });

  it('dead-letters a refusal with its code; a replay by filter sends each once more with the same idempotency key', { timeout: 60_000 }, async () => {
    const strict = await sink();
    const other = await sink();
    strict.failNext({ kind: 'status', status: 400 }, 3);
    other.failNext({ kind: 'status', status: 400 }, 3);
    const engine = await startEngine({
      outputs: [...webhook('strict', strict.url), ...webhook('other', other.url)],
      rules: [...confirm('to-strict', 'strict'), ...confirm('to-other', 'other')],
    });
    await engine.book([1, 2, 3]);
    await engine.settle();
    const failed = (await engine.api('/api/deliveries?status=failed')).json;
    expect(failed.items).toHaveLength(6);
    expect(failed.items.every((d: { reason: string }) => d.reason === 'webhook_rejected')).toBe(true);
    const one = (await engine.api(`/api/deliveries/${encodeURIComponent('to-strict@appointment/AP-1#0')}`)).json;
    expect(one).toMatchObject({ status: 'failed', reason: 'webhook_rejected', job: { state: 'dead', attempts: 1, lastError: { failureClass: 'permanent', code: 'webhook_rejected' } } });

    const bad = await engine.api('/api/deliveries/replay', { method: 'POST', body: { status: 'sent' } });
    expect(bad.status).toBe(400);
    expect(bad.json.detail).toMatch(/status must be failed or review/);
    expect((await engine.api('/api/deliveries/replay', { method: 'POST', body: {} })).json.detail).toMatch(/give ids, or a filter/);

    clock += 60_000;
    const replayed = await engine.api('/api/deliveries/replay', { method: 'POST', body: { status: 'failed', output: 'strict', limit: 2 } });
    expect(replayed.json.replayed).toHaveLength(2);
    expect(replayed.json.more).toBe(true);
    const rest = await engine.api('/api/deliveries/replay', { method: 'POST', body: { status: 'failed', output: 'strict', since: new Date(T0).toISOString() } });
    expect(rest.json.replayed).toHaveLength(1);
    await engine.settle();
    expect([...strict.accepted().keys()].sort()).toEqual(['to-strict@appointment/AP-1#0', 'to-strict@appointment/AP-2#0', 'to-strict@appointment/AP-3#0']);
    // Each key twice at the receiver: the refused first attempt and the replay, nothing else.
    expect(strict.requests.map((r) => r.id).sort()).toEqual([...strict.accepted().keys(), ...strict.accepted().keys()].sort());
    expect(other.accepted().size).toBe(0);
    expect((await engine.api('/api/deliveries?status=failed')).json.items.map((d: { id: string }) => d.id).every((id: string) => id.startsWith('to-other'))).toBe(true);

    // The same from a terminal: carerelay deliveries replay, through the running server.
    const url = `http://127.0.0.1:${engine.running.httpPort}`;
    const cli = (args: string[]) =>
      run(process.execPath, [CLI_PATH, 'deliveries', 'replay', '--url', url, '--token-env', 'ONCALL_TOKEN', ...args], { env: { PATH: process.env.PATH, ONCALL_TOKEN: TOKENS.ONCALL_TOKEN } }).then(
        (r) => ({ code: 0, ...r }),
        (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
      );
    expect(await cli(['to-other@appointment/AP-1#0', '--status', 'failed'])).toMatchObject({ code: 2, stderr: expect.stringContaining('not both') });
    const done = await cli(['--status', 'failed', '--output', 'other']);
    expect(done.code).toBe(0);
    expect(done.stdout.trim().split('\n').sort()).toEqual([1, 2, 3].map((i) => `delivery to-other@appointment/AP-${i}#0 replayed (was failed: webhook_rejected)`));
    await engine.settle();
    expect(other.accepted().size).toBe(3);
    expect(await cli(['to-other@appointment/AP-1#0'])).toMatchObject({ code: 1, stderr: 'delivery to-other@appointment/AP-1#0: not replayed (not_replayable)\n' });
  });

  it('suppresses a delivery to a marketing tool without the address it keys contacts by: no_address, not a failure', { timeout: 60_000 }, async () => {
    const standIn = await startActiveCampaignStandIn({ now: () => clock });
    closers.push(() => standIn.close());
    const engine = await startEngine({
      env: { AC_TOKEN: standIn.apiToken },
      outputs: ['  - name: ac', '    type: activecampaign', `    apiUrl: ${standIn.baseUrl}`, '    apiToken: { env: AC_TOKEN }', '    action: upsert'],
      rules: ['  - id: newsletter-contact', '    on: appointment.booked', '    purpose: service.info', '    channel: crm', '    send:', '      output: ac', '      to: patient.telecom[system=email].value', '    at: now'],
    });
    await engine.book([5], false);
    await engine.settle();
    const d = (await engine.api(`/api/deliveries/${encodeURIComponent('newsletter-contact@appointment/AP-5#0')}`)).json;
    expect(d).toMatchObject({ status: 'suppressed', reason: 'no_address' });
    expect(d.decisions[0]).toMatchObject({ result: 'deny', checkRule: 8, reason: 'no_address' });
    expect(standIn.requests).toEqual([]);
    const routed = (await engine.api(`/api/triggers/${encodeURIComponent(d.triggerId)}`)).json;
    expect(routed.routing.matched[0].delivery.id).toBe('newsletter-contact@appointment/AP-5#0');
  });
});
