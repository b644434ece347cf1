// The README's "One complete example", run as a newcomer runs it: the shipped configuration
// (connectors/ and mappings/ of the repository, as `npm start` reads them) on real sockets,
// the booking written exactly as the README's printf writes it, sent with `carerelay send`,
// then every admin API call the README shows. The commands and the message are read from
// README.md itself, so the README and this test cannot drift apart.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { CLI_PATH, captureLogger } from './helpers/server.ts';

const run = promisify(execFile);
const REPO = path.join(import.meta.dirname, '..');
const README = readFileSync(path.join(REPO, 'README.md'), 'utf8');

/** The README section "One complete example" and its shell blocks. */
const section = README.slice(README.indexOf('## One complete example'), README.indexOf('\n## ', README.indexOf('## One complete example') + 3));
const blocks = [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
const bookingBlock = blocks.find((b) => b.startsWith("printf '%s\\r'"))!;
const cancelBlock = blocks.find((b) => b.startsWith('sed '))!;
const httpBlock = blocks.find((b) => b.includes('/ingest/hl7v2/'))!;
const offlineBlock = blocks.find((b) => b.includes('carerelay normalize'))!;

/** booking.hl7 as `printf '%s\r' 'seg' 'seg' … > booking.hl7` writes it: each segment, then CR. */
function bookingBytes(): string {
  const segments = [...bookingBlock.split('> booking.hl7')[0]!.matchAll(/^\s+'([^']*)'/gm)].map((m) => m[1]!);
  return segments.map((s) => `${s}\r`).join('');
}

/** The API paths of the README's `curl -s 'http://127.0.0.1:8080/…'` lines, in order. */
function curlPaths(block: string): string[] {
  return [...block.matchAll(/curl -s 'http:\/\/127\.0\.0\.1:8080([^']+)'/g)].map((m) => m[1]!);
}

let work: string;
let server: RunningCarerelay;
let logs: ReturnType<typeof captureLogger>;

async function carerelay(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI_PATH, ...args], { cwd: work });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

async function get<T = any>(apiPath: string): Promise<T> {
  const res = await fetch(`http://127.0.0.1:${server.httpPort}${apiPath}`);
  expect(res.status, apiPath).toBe(200);
  return (await res.json()) as T;
}

/** `npx carerelay send --to 127.0.0.1:2575 FILE` with the port the example listens on here. */
function sendArgs(line: string): string[] {
  const args = line.replace(/^npx carerelay /, '').split(/\s+/);
  return args.map((a) => (a === '127.0.0.1:2575' ? `127.0.0.1:${server.mllpPorts.get('ehr-mllp')}` : a));
}

beforeAll(async () => {
  work = mkdtempSync(path.join(tmpdir(), 'carerelay-readme-'));
  logs = captureLogger();
  // `npm start` in the repository, with free ports and a data dir of its own; the clock is
  // the booking's own time, so the example's 2027 dates stay in the future.
  server = await startCarerelay({
    configDir: REPO,
    env: { MLLP_PORT: '0', HTTP_PORT: '0', CARERELAY_DATA: path.join(work, 'data') },
    log: logs,
    watchMappings: false,
    now: () => Date.parse('2027-06-01T10:15:00+02:00'),
  });
});

afterAll(async () => {
  await server?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe("README: One complete example", () => {
  it('the booking is sent with carerelay send and answered as the README says', async () => {
    writeFileSync(path.join(work, 'booking.hl7'), bookingBytes());
    const sendLine = bookingBlock.split('\n').find((l) => l.startsWith('npx carerelay send'))!;
    const expected = bookingBlock.split('\n').find((l) => l.startsWith('# booking.hl7'))!.slice(2);
    const { code, stdout } = await carerelay(sendArgs(sendLine));
    expect(stdout.trim()).toBe(expected);
    expect(code).toBe(0);
    await server.deliveries.idle();
  });

  it('the admin API shows what arrived, the trigger, the planned deliveries and the rendered confirmation', async () => {
    const [messages, triggers, deliveries, outbox] = curlPaths(bookingBlock);
    expect([messages, triggers, deliveries, outbox]).toEqual(['/api/messages?limit=5', '/api/triggers?type=appointment.booked', '/api/deliveries', '/api/outbox']);

    const arrived = await get(messages!);
    expect(arrived.items).toEqual([expect.objectContaining({ controlId: 'DEMO-0001', messageType: 'SIU^S12', status: 'accepted', ackCode: 'AA', patientId: 'E1001' })]);

    const booked = await get(triggers!);
    expect(booked.items).toEqual([
      expect.objectContaining({
        type: 'appointment.booked',
        patient: expect.objectContaining({ id: 'E1001', language: 'fr' }),
        appointment: expect.objectContaining({ id: 'AP-1001', start: '2027-06-15T14:30:00+02:00' }),
      }),
    ]);

    // "confirmation, 7-day email, 24 h SMS": the confirmation went at once, the reminders wait.
    const planned = await get(deliveries!);
    const byRule = Object.fromEntries(planned.items.map((d: { ruleId: string }) => [d.ruleId, d]));
    expect(byRule['booking-confirmation']).toMatchObject({ status: 'sent', channel: 'email' });
    expect(byRule['email-reminder-7d']).toMatchObject({ status: 'pending', channel: 'email' });
    expect(byRule['sms-reminder-24h']).toMatchObject({ status: 'pending', channel: 'sms', dueAt: '2027-06-14T14:30:00+02:00' });   // the day before, same wall-clock time in Paris

    // "the confirmation, rendered in French": at the appointment's own time, 14:30 in Paris.
    const kept = await get(outbox!);
    const confirmation = kept.items.find((e: { deliveryId: string }) => e.deliveryId.startsWith('booking-confirmation@'));
    expect(confirmation).toMatchObject({ channel: 'email', to: 'claire@example.org', language: 'fr' });
    expect(confirmation.text).toContain('Bonjour Claire');
    expect(confirmation.text).toContain('15 juin 2027 à ');
  });

  it('the French confirmation gives the time of the appointment where it takes place: 14:30 (Paris), as booked', async () => {
    const kept = await get(curlPaths(bookingBlock)[3]!);
    const confirmation = kept.items.find((e: { deliveryId: string }) => e.deliveryId.startsWith('booking-confirmation@'));
    expect(confirmation.text).toContain('15 juin 2027 à 14:30');
  });

  it('the message links its trigger and the deliveries it planned', async () => {
    const [arrived] = (await get('/api/messages?controlId=DEMO-0001')).items;
    const message = await get(`/api/messages/${arrived.id}`);
    expect(message.triggers).toHaveLength(1);
    expect(message.triggers[0].deliveries.map((d: { ruleId: string }) => d.ruleId)).toEqual(
      expect.arrayContaining(['booking-confirmation', 'email-reminder-7d', 'sms-reminder-24h']),
    );
    const explained = await get(message.links.triggers[0]);
    expect(explained).toMatchObject({ messageId: arrived.id, routing: { routed: true } });
    expect(explained.routing.matched.map((m: { ruleId: string }) => m.ruleId)).toEqual(expect.arrayContaining(['booking-confirmation', 'sms-reminder-24h']));
  });

  it('the cancellation made with the README\'s sed cancels the pending reminders', async () => {
    const edits = [...cancelBlock.matchAll(/-e 's\/([^/]+)\/([^/]+)\/'/g)].map((m) => [m[1]!, m[2]!] as const);
    expect(edits).toEqual([['SIU^S12', 'SIU^S15'], ['DEMO-0001', 'DEMO-0002']]);
    const cancel = edits.reduce((text, [from, to]) => text.replaceAll(from, to), bookingBytes());
    writeFileSync(path.join(work, 'cancel.hl7'), cancel);
    const sendLine = cancelBlock.split('\n').find((l) => l.startsWith('npx carerelay send'))!;
    const { code, stdout } = await carerelay(sendArgs(sendLine));
    expect(stdout.trim()).toBe('cancel.hl7 DEMO-0002 AA');
    expect(code).toBe(0);
    await server.deliveries.idle();

    const [cancelled] = curlPaths(cancelBlock);
    const items = (await get(cancelled!)).items as Array<{ ruleId: string; status: string }>;
    expect(items.map((d) => d.ruleId)).toEqual(expect.arrayContaining(['email-reminder-7d', 'sms-reminder-24h']));
    expect(items.every((d) => d.status === 'cancelled')).toBe(true);
  });

  it('the same message over HTTP returns its ACK as the response body', async () => {
    const input = /\/ingest\/hl7v2\/([a-z-]+)/.exec(httpBlock)![1]!;
    const file = /@(\S+)/.exec(httpBlock)![1]!;
    const contentType = /-H 'Content-Type: ([^']+)'/.exec(httpBlock)![1]!;
    const res = await fetch(`http://127.0.0.1:${server.httpPort}/ingest/hl7v2/${input}`, {
      method: 'POST',
      headers: { 'content-type': contentType },
      body: readFileSync(path.join(REPO, file)),
    });
    expect(res.status).toBe(200);
    expect(await res.text()).toMatch(/\rMSA\|AA\|/);
  });

  it('without a server: normalize, replay --dry-run and the mapping tests run and exit 0', async () => {
    const commands = offlineBlock
      .replace(/\\\n\s*/g, '')
      .split('\n')
      .filter((l) => l.startsWith('npx carerelay '))
      .map((l) => l.replace(/^npx carerelay /, '').split(/\s+/).filter((a) => a !== ''));
    expect(commands.map((c) => c[0])).toEqual(['normalize', 'replay', 'test']);
    for (const args of commands) {
      const { code, stdout, stderr } = await run(process.execPath, [CLI_PATH, ...args], { cwd: REPO }).then(
        (r) => ({ code: 0, ...r }),
        (e: { code: number; stdout: string; stderr: string }) => e,
      );
      expect(code, `carerelay ${args.join(' ')}\n${stderr}`).toBe(0);
      expect(stdout).not.toBe('');
    }
  });
});
