// End to end over the running server: HL7v2 over MLLP in → routed once → deliveries in the
// store with queue timers → due ones rendered into the outbox; the deliveries and outbox
// API; mappings reloaded at run time (and a broken reload keeping the old plan).
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { listOutbox } from '../src/workers/runtime.ts';
import { captureLogger, hl7Field, mllpExchange, siuMessage, writeConfigDir, type SiuOptions, type TestConfigDir } from './helpers/server.ts';

const RULES = `rules:
  - id: reminder
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: reminder, fields: [appointment.start] }
    at: appointment.start - 24h
    expires: appointment.start
  - id: confirm
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: confirm, fields: [appointment.start] }
    at: now
`;

let config: TestConfigDir;
let server: RunningCarerelay | undefined;
let logs: ReturnType<typeof captureLogger>;

function mappingsDir(): string {
  return path.join(config.dir, 'mappings');
}

beforeEach(() => {
  config = writeConfigDir();
  const connectors = path.join(config.dir, 'connectors', 'test.yaml');
  const text = readFileSync(connectors, 'utf8');
  expect(text).toContain('outputs: []');
  writeFileSync(connectors, text.replace('outputs: []', 'outputs:\n  - { name: sms, type: outbox, channel: sms, allowedPurposes: [care.logistics] }'));
  mkdirSync(path.join(mappingsDir(), 'templates'), { recursive: true });
  writeFileSync(path.join(mappingsDir(), 'rules.yaml'), RULES);
  writeFileSync(path.join(mappingsDir(), 'templates', 'reminder.liquid'), 'Reminder: see you {{ appointment.start | local_date }} at {{ appointment.start | local_time }}\n');
  writeFileSync(path.join(mappingsDir(), 'templates', 'confirm.liquid'), 'Booked for {{ appointment.start | local_time }}\n');
  logs = captureLogger();
});
afterEach(async () => {
  await server?.stop();
  server = undefined;
  config.remove();
});

async function start(watchMappings = false): Promise<RunningCarerelay> {
  server = await startCarerelay({ configDir: config.dir, env: {}, log: logs, watchMappings });
  return server;
}

/** An SIU with a mobile number in PID-13, sent over MLLP; resolves after routing and due sends. */
async function send(o: SiuOptions): Promise<void> {
  const text = siuMessage(o).replace('|19600101|M', '|19600101|M|||||+15550100^PRN^CP');
  const ack = await mllpExchange([...server!.mllpPorts.values()][0]!, text);
  expect(hl7Field(ack!, 'MSA', 1)).toBe('AA');
  await server!.deliveries.idle();
}

async function api<T = any>(pathAndQuery: string, status = 200): Promise<T> {
  const res = await fetch(`http://127.0.0.1:${server!.httpPort}${pathAndQuery}`);
  expect(res.status).toBe(status);
  return (await res.json()) as T;
}

const START = new Date('2030-03-16T13:30:00+00:00');
const LATER = new Date('2030-03-20T08:00:00Z');
const at = (iso: string) => new Date(iso);
// Luxon's time format may put a narrow no-break space before PM (ICU data).
const BOOKED = expect.stringMatching(/^Booked for 1:30\sPM$/);

describe('deliveries end to end', () => {
  it('S12 plans, S15 cancels, S13 moves; a due delivery reaches the outbox with its text', async () => {
    await start();
    await send({ controlId: 'C1', appointmentId: 'A1', start: START, sentAt: at('2030-03-01T09:00:00Z') });

    const planned = await api(`/api/deliveries?appointmentId=A1&rule=reminder`);
    expect(planned.items).toEqual([
      expect.objectContaining({ id: 'reminder@appointment/A1#0', status: 'pending', patientId: 'E200001', generation: 1, dueAt: '2030-03-15T13:30:00+00:00' }),
    ]);
    // "confirm" was due at once: rendered and kept by the outbox output.
    const outbox = await api('/api/outbox');
    expect(outbox.items).toEqual([
      expect.objectContaining({ deliveryId: 'confirm@appointment/A1#0', output: 'sms', channel: 'sms', to: '+15550100', text: BOOKED }),
    ]);
    const confirm = await api(`/api/deliveries/${encodeURIComponent('confirm@appointment/A1#0')}`);
    expect(confirm).toMatchObject({ status: 'sent', message: { text: BOOKED }, outbox: { text: BOOKED } });

    await send({ controlId: 'C2', appointmentId: 'A1', event: 'S15', start: START, sentAt: at('2030-03-02T09:00:00Z') });
    expect((await api(`/api/deliveries?appointmentId=A1&rule=reminder`)).items[0]).toMatchObject({ status: 'cancelled' });

    await send({ controlId: 'C3', appointmentId: 'A2', start: START, sentAt: at('2030-03-02T10:00:00Z') });
    const before = (await api(`/api/deliveries?appointmentId=A2&rule=reminder`)).items[0];
    expect(before).toMatchObject({ status: 'pending', dueAt: '2030-03-15T13:30:00+00:00' });
    await send({ controlId: 'C4', appointmentId: 'A2', event: 'S13', start: LATER, sentAt: at('2030-03-03T10:00:00Z') });
    const after = (await api(`/api/deliveries?appointmentId=A2&rule=reminder`)).items[0];
    expect(after).toMatchObject({ id: before.id, status: 'pending', generation: 1, dueAt: '2030-03-19T08:00:00+00:00' });

    const pending = await api('/api/deliveries?status=pending');
    expect(pending.items.map((d: { id: string }) => d.id)).toEqual(['reminder@appointment/A2#0']);
    // Totals per status come with any page, whatever its filter.
    expect(pending.totals).toEqual({ pending: 1, cancelled: 1, sent: 2, suppressed: 0, failed: 0, review: 0 });
    expect((await api('/api/messages?limit=1')).totals).toMatchObject({ accepted: 4 });
    expect((await api('/api/outbox')).items).toHaveLength(2);
    // One vocabulary (README, API, CLI, mapping tests): pending, cancelled, sent, suppressed, failed.
    expect((await api('/api/deliveries?status=sent')).items.map((d: { id: string }) => d.id).sort()).toEqual(['confirm@appointment/A1#0', 'confirm@appointment/A2#0']);
    await api('/api/deliveries?status=finished', 400);
    await api(`/api/deliveries/${encodeURIComponent('nope@appointment/X#0')}`, 404);

    // The CLI's reader sees the same entries in the store file.
    const entries = await listOutbox({ dataDir: config.dataDir, limit: 10 });
    expect(entries.map((e) => e.deliveryId).sort()).toEqual(['confirm@appointment/A1#0', 'confirm@appointment/A2#0']);
    // Logs carry ids and codes only: never the rendered text or the phone number.
    expect(JSON.stringify(logs.lines)).not.toMatch(/Booked for|\+15550100|DOE/);
  });

  it('reloadMappings: a changed rule is used for the next trigger; a broken mapping keeps the old plan', async () => {
    await start();
    writeFileSync(path.join(mappingsDir(), 'rules.yaml'), RULES.replace('id: reminder', 'id: early').replace('start - 24h', 'start - 48h'));
    expect(await server!.reloadMappings()).toMatchObject({ ok: true, rules: 2, restartNeeded: false });
    await send({ controlId: 'R1', appointmentId: 'A3', start: START });
    const a3 = (await api('/api/deliveries?appointmentId=A3')).items.map((d: { id: string; dueAt: string }) => [d.id, d.dueAt]);
    expect(a3).toContainEqual(['early@appointment/A3#0', '2030-03-14T13:30:00+00:00']);
    expect(a3.map(([id]: string[]) => id)).not.toContain('reminder@appointment/A3#0');

    writeFileSync(path.join(mappingsDir(), 'rules.yaml'), RULES.replace('at: now', 'at: now\n    sendd: typo'));
    const failed = await server!.reloadMappings();
    expect(failed.ok).toBe(false);
    expect(failed.ok === false && failed.issues.map((i) => i.message).join('\n')).toMatch(/unknown key "sendd"/);
    expect(logs.lines.find((l) => l.message === 'config.reload_failed')).toMatchObject({ reason: 'invalid', issues: 1 });
    await send({ controlId: 'R2', appointmentId: 'A4', start: START });
    expect((await api('/api/deliveries?appointmentId=A4')).items.map((d: { id: string }) => d.id)).toContain('early@appointment/A4#0');
  });

  it('a rule naming an output that is not running is refused at reload (outputs need a restart)', async () => {
    await start();
    writeFileSync(path.join(config.dir, 'connectors', 'more.yaml'), 'outputs:\n  - { name: sms2, type: outbox, channel: sms }\n');
    writeFileSync(path.join(mappingsDir(), 'rules.yaml'), RULES.replace('output: sms, template: confirm', 'output: sms2, template: confirm'));
    const result = await server!.reloadMappings();
    expect(result.ok).toBe(false);
    expect(logs.lines.find((l) => l.message === 'config.reload_failed')).toMatchObject({ reason: 'output_not_running' });
  });

  it('watches mappings/: saving a file reloads the rules', async () => {
    const reloaded = new Promise<void>((resolve) => {
      const info = logs.info;
      logs.info = (message, fields) => {
        info(message, fields);
        if (message === 'config.reloaded') resolve();
      };
    });
    await start(true);
    writeFileSync(path.join(mappingsDir(), 'rules.yaml'), RULES.replace('id: confirm', 'id: confirm-now'));
    await reloaded;
    await send({ controlId: 'W1', appointmentId: 'A5', start: START });
    expect((await api('/api/deliveries?appointmentId=A5')).items.map((d: { id: string }) => d.id)).toContain('confirm-now@appointment/A5#0');
  });

  it('a trigger committed but not routed before a stop is routed at the next start', async () => {
    await start();
    // Commit through the store only (as if the process died before routing).
    const { testRecord } = await import('../src/store/conformance.ts');
    const { makeTrigger } = await import('../src/pipeline/test-helpers.ts');
    const trigger = makeTrigger({ id: 'crash-1', occurredAt: '2030-03-01T09:00:00Z', appointment: { id: 'A9', start: '2030-03-16T13:30:00+00:00' } });
    await server!.store.commitInbound(testRecord({ controlId: 'X1', triggers: [trigger] }));
    await server!.stop();
    await start();
    await server!.deliveries.idle();
    expect((await api('/api/deliveries?appointmentId=A9&rule=reminder')).items).toEqual([expect.objectContaining({ status: 'pending' })]);
  });
});
