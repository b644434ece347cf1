// Video visits end to end over real sockets (docs/video.md): join URLs arrive by HL7v2 over MLLP
// (ZVV-1), HL7v2 over HTTP (an NTE prefix) and a FHIR rest-hook (R5 virtualService); the rule
// with send.videoLink sends CareRelay's own link; the link's page is opened as a patient (and a
// link scanner) would, and its button followed to the vendor. Each vendor URL is a canary that
// must appear in no log line, in no admin view, and nowhere in the data directory in clear —
// neither in the files' bytes nor in any stored value once unpacked.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { REDACTED_JOIN_URL } from '../src/normalized-values.ts';
import { http } from './helpers/consent.ts';
import { captureLogger, hl7Field, mllpExchange, siuMessage, writeYamlConfig, type TestConfigDir } from './helpers/server.ts';
import { dataDirBytes, storedValues } from './helpers/stored-text.ts';

const CANARY = {
  mllp: 'https://canary-mllp.example/j/QX7Z-9c1e?pwd=Mz5vNq&role=patient',
  http: 'https://canary-http.example/room/77a1-Kq',
  fhir: 'https://canary-fhir.example/j/5150?pwd=Zx9',
};
const CANARY_HOSTS = ['canary-mllp', 'canary-http', 'canary-fhir'];
const ENV = { VIDEO_KEY: '5f'.repeat(32), READ_TOKEN: 'reader-token-e2e', LEAD_TOKEN: 'lead-token-e2e', FHIR_TOKEN: 'fhir-token-e2e' };

const CONFIG = `server:
  http: { host: 127.0.0.1, port: 0 }
  dataDir: {dataDir}
  admin:
    tokens:
      - { name: reader, token: { env: READ_TOKEN }, scopes: [read] }
      - { name: lead, token: { env: LEAD_TOKEN }, scopes: [read, phi, operate] }
  video: { key: { env: VIDEO_KEY }, keyId: e2e }
policy:
  quietHours: { channels: [] }
  usExemptSms: { perDay: 1000, perWeek: 1000 }
inputs:
  - { name: ehr-mllp, type: hl7v2-mllp, host: 127.0.0.1, port: 0, plain: true, timezone: UTC, virtualVisit: { segment: ZVV, field: 1, channel: zoom } }
  - { name: ehr-http, type: hl7v2-http, timezone: UTC, virtualVisit: { nte: { prefix: "VIDEO:" } } }
  - name: ehr-fhir
    type: fhir-rest-hook
    server: { baseUrl: https://ehr.example.org/fhir }
    auth: { bearer: { token: { env: FHIR_TOKEN } } }
outputs:
  - { name: sms, type: outbox, channel: sms, baa: true, allowedPurposes: [care.logistics] }
`;

const RULES = `rules:
  - id: video-join
    on: appointment.booked
    where: { appointment.virtual: { exists: true } }
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: join, fields: [appointment.start], videoLink: true }
    at: now
`;

let config: TestConfigDir;
let server: RunningCarerelay;
let logs: ReturnType<typeof captureLogger>;
let base: string;

beforeEach(async () => {
  config = writeYamlConfig(CONFIG);
  mkdirSync(path.join(config.dir, 'mappings', 'templates'), { recursive: true });
  writeFileSync(path.join(config.dir, 'mappings', 'rules.yaml'), RULES);
  writeFileSync(path.join(config.dir, 'mappings', 'templates', 'join.liquid'), 'Your video visit at {{ appointment.start | local_time }}: {{ video.link }}\n');
  logs = captureLogger();
  server = await startCarerelay({ configDir: config.dir, env: ENV, log: logs, watchMappings: false });
  base = `http://127.0.0.1:${server.httpPort}`;
});
afterEach(async () => {
  await server?.stop();
  config.remove();
});

const as = (token: string) => (method: string, p: string) => fetch(`${base}${p}`, { method, headers: { authorization: `Bearer ${token}` } });
const lead = as(ENV.LEAD_TOKEN);
const reader = as(ENV.READ_TOKEN);

/** An SIU for the canary patient with a mobile phone, starting `minutes` from now. */
function siu(controlId: string, o: { event?: string; minutes?: number; extra?: string }): string {
  return siuMessage({
    controlId,
    appointmentId: `A-${controlId.split('-')[0]}`,
    event: o.event ?? 'S12',
    start: new Date(Date.now() + (o.minutes ?? 20) * 60_000),
    sentAt: new Date(),
    ...(o.extra !== undefined ? { extra: o.extra } : {}),
  }).replace('|19600101|M', '|19600101|M|||||+33612345678^PRN^CP');
}

function fhirAppointment(id: string, status: string, minutes: number, version: string): string {
  const start = new Date(Date.now() + minutes * 60_000);
  return JSON.stringify({
    resourceType: 'Appointment',
    id,
    meta: { versionId: version, lastUpdated: new Date().toISOString() },
    contained: [{ resourceType: 'Patient', id: 'p', identifier: [{ value: 'F-1' }], telecom: [{ system: 'phone', use: 'mobile', value: '+33698765432' }] }],
    status,
    virtualService: [{ channelType: { code: 'ms-teams' }, addressUrl: CANARY.fhir, sessionKey: '4411' }],
    start: start.toISOString(),
    end: new Date(start.getTime() + 30 * 60_000).toISOString(),
    participant: [{ actor: { reference: '#p' }, status: 'accepted' }],
  });
}

async function viaMllp(text: string): Promise<void> {
  expect(hl7Field((await mllpExchange(server.mllpPorts.get('ehr-mllp')!, text))!, 'MSA', 1)).toBe('AA');
  await server.deliveries.idle();
}

async function viaHttp(text: string): Promise<void> {
  const res = await fetch(`${base}/ingest/hl7v2/ehr-http`, { method: 'POST', body: text, headers: { 'content-type': 'x-application/hl7-v2+er7' } });
  expect(res.status).toBe(200);
  await server.deliveries.idle();
}

async function viaFhir(body: string): Promise<void> {
  const res = await fetch(`${base}/ingest/fhir/ehr-fhir`, { method: 'POST', body, headers: { 'content-type': 'application/fhir+json', authorization: `Bearer ${ENV.FHIR_TOKEN}` } });
  expect(res.status).toBe(200);
  await server.deliveries.idle();
}

/** The link the outbox kept for an appointment's message (the output's copy, as the patient got it). */
async function linkOf(appointmentId: string): Promise<string> {
  const outbox = (await (await lead('GET', '/api/outbox')).json()) as { items: Array<{ deliveryId: string; text: string }> };
  const entry = outbox.items.find((e) => e.deliveryId === `video-join@appointment/${appointmentId}#0`);
  const link = /(http:\/\/127\.0\.0\.1:\d+\/v\/[A-Za-z0-9_-]+)/.exec(entry?.text ?? '')?.[1];
  if (link === undefined) throw new Error(`no link sent for ${appointmentId}: ${JSON.stringify(outbox.items)}`);
  return link;
}

const post = (link: string, headers: Record<string, string> = {}) => fetch(link, { method: 'POST', redirect: 'manual', headers });

function expectNoCanary(where: string, text: string): void {
  for (const host of CANARY_HOSTS) expect(text, `${where} holds ${host}`).not.toContain(host);
}

describe('video visits end to end', () => {
  it('the join URL from MLLP, HTTP and FHIR reaches the patient only through CareRelay’s link: many GETs, then the button joins', async () => {
    await viaMllp(siu('M1-1', { extra: `ZVV|${CANARY.mllp.replace('&', '\\T\\')}\r` }));
    await viaHttp(siu('H1-1', { extra: `NTE|1||VIDEO: ${CANARY.http}\r` }));
    await viaFhir(fhirAppointment('F1', 'booked', 25, '1'));

    for (const [appointment, vendor] of [['A-M1', CANARY.mllp], ['A-H1', CANARY.http], ['F1', CANARY.fhir]] as const) {
      const link = await linkOf(appointment);
      // A link scanner, a preview and the patient opening it several times: nothing is used up.
      for (let i = 0; i < 5; i++) {
        const page = await fetch(link);
        expect(page.status).toBe(200);
        expect(page.headers.get('cache-control')).toBe('no-store');
        expect(page.headers.get('referrer-policy')).toBe('same-origin');
        const html = await page.text();
        expect(html).toContain('<form method="post">');
        expectNoCanary('the page', html);
      }
      // Driven from another site: refused, with no redirect.
      const forged = await post(link, { 'sec-fetch-site': 'cross-site' });
      expect(forged.status).toBe(403);
      expect(forged.headers.get('location')).toBeNull();
      expect((await post(link, { origin: 'https://evil.example' })).status).toBe(403);
      // The button: to the vendor, with no Referer; and again (a patient who dropped out).
      for (const headers of [{ 'sec-fetch-site': 'same-origin' }, {}] as Array<Record<string, string>>) {
        const join = await post(link, headers);
        expect(join.status).toBe(303);
        expect(join.headers.get('location')).toBe(vendor);
        expect(join.headers.get('referrer-policy')).toBe('no-referrer');
      }
    }

    // The kept copy of each sent message shows the link without its token.
    const sent = (await (await lead('GET', `/api/deliveries/${encodeURIComponent('video-join@appointment/A-M1#0')}`)).json()) as { message: { text: string } };
    expect(sent.message.text).toMatch(/\/v\/\[link\]$/);

    // Admin views: the trigger says a video visit; raw messages only for phi, and redacted.
    const triggers = await (await lead('GET', '/api/triggers')).text();
    expect(triggers).toContain('"virtual":{"channel":"zoom","hasJoinInfo":true}');
    const messages = (await (await lead('GET', '/api/messages')).json()) as { items: Array<{ id: string }> };
    for (const { id } of messages.items) {
      const withPhi = await (await lead('GET', `/api/messages/${id}`)).text();
      expect(withPhi).toContain(REDACTED_JOIN_URL);
      expectNoCanary(`message ${id}`, withPhi);
      const readOnly = (await (await reader('GET', `/api/messages/${id}`)).json()) as Record<string, unknown>;
      expect(readOnly.raw).toBeUndefined();
    }
    const views = await Promise.all(['/api/triggers', '/api/deliveries', '/api/outbox', '/api/messages'].map(async (p) => (await lead('GET', p)).text()));
    expectNoCanary('admin views', views.join('\n'));

    await server.stop();
    expectNoCanary('the data directory files', dataDirBytes(config.dataDir).toString('latin1'));
    expectNoCanary('the stored values', storedValues(path.join(config.dataDir, 'carerelay.db')).join('\n'));
    expectNoCanary('the log lines', JSON.stringify(logs.lines));
  });

  it('a reschedule and a cancel kill the links sent before them: pages say why, the button no longer joins', async () => {
    await viaMllp(siu('M2-1', { extra: `ZVV|${CANARY.mllp.replace('&', '\\T\\')}\r` }));
    await viaFhir(fhirAppointment('F2', 'booked', 25, '1'));
    const moved = await linkOf('A-M2');
    const cancelled = await linkOf('F2');
    expect((await post(moved)).status).toBe(303);

    await viaMllp(siu('M2-2', { event: 'S13', minutes: 45, extra: `ZVV|${CANARY.mllp.replace('&', '\\T\\')}\r` }));
    await viaFhir(fhirAppointment('F2', 'cancelled', 25, '2'));

    for (const [link, words] of [[moved, 'moved'], [cancelled, 'cancelled']] as const) {
      const page = await fetch(link);
      expect(page.status).toBe(410);
      expect(await page.text()).toContain(words);
      const join = await post(link);
      expect(join.status).toBe(410);
      expect(join.headers.get('location')).toBeNull();
    }
    // A video visit without join information gets no link message: suppressed no_join_info.
    const noJoin = JSON.parse(fhirAppointment('F3', 'booked', 25, '1')) as Record<string, unknown>;
    noJoin.virtualService = [{ channelType: { code: 'whatsapp' }, addressString: '+33612345678' }];
    await viaFhir(JSON.stringify(noJoin));
    expect(await (await lead('GET', `/api/deliveries/${encodeURIComponent('video-join@appointment/F3#0')}`)).json()).toMatchObject({ status: 'suppressed', reason: 'no_join_info' });
    // The cancel dropped the FHIR appointment's join URL from the store.
    expect(await server.store.getVideoJoin('F2')).toBeUndefined();
    expect((await fetch(`${base}/v/${'A'.repeat(22)}`)).status).toBe(404);
    expectNoCanary('the log lines', JSON.stringify(logs.lines));
  });
});
