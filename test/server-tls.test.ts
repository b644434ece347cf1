// MLLP over mutual TLS through the running server: the connector's client-certificate CN →
// allowed senders map decides which MSH-3^MSH-4 a sender may use (docs/reliability.md "Security
// defaults"), and nothing a patient said reaches a log line (docs/architecture.md invariant 7).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MllpClient } from '../src/hl7v2/mllp-client.ts';
import { parseHl7 } from '../src/hl7v2/parse.ts';
import { makeTestPki, type TestPki } from './helpers/certs.ts';
import { siuMessage, startServer, type InProcessServer } from './helpers/server.ts';

let dir: string;
let pki: TestPki;
let server: InProcessServer;

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'carerelay-tls-'));
  pki = makeTestPki(path.join(dir, 'pki'), { clientCN: 'epic-interface' });
  mkdirSync(path.join(dir, 'connectors'));
  writeFileSync(
    path.join(dir, 'connectors', 'tls.yaml'),
    [
      'server:',
      '  http: { port: 0 }',
      '  dataDir: ./data',
      'inputs:',
      '  - name: ehr-tls',
      '    type: hl7v2-mllp',
      '    port: 0',
      '    tls:',
      `      cert: { file: ${pki.server.certPath} }`,
      `      key: { file: ${pki.server.keyPath} }`,
      `      ca: { file: ${pki.ca.certPath} }`,
      '      requireClientCert: true',
      '      allowedSenders:',
      '        epic-interface: ["EPIC^NORTHCLINIC"]',
      '',
    ].join('\n'),
  );
  server = await startServer(dir);
});

afterAll(async () => {
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function tlsClient(cert: { cert: string; key: string }): MllpClient {
  return new MllpClient({
    host: '127.0.0.1',
    port: server.mllpPort('ehr-tls'),
    tls: { ca: pki.ca.cert, cert: cert.cert, key: cert.key },
  });
}

async function sendOne(client: MllpClient, message: string) {
  await client.connect();
  try {
    return parseHl7(await client.send(message, { timeoutMs: 10_000 }));
  } finally {
    await client.close();
  }
}

describe('MLLP over mutual TLS with allowed senders', () => {
  it('accepts a sender its certificate is allowed to send for', async () => {
    const ack = await sendOne(tlsClient(pki.client), siuMessage({ controlId: 'TLS-1', appointmentId: 'A-TLS-1' }));
    expect(ack.get('MSA-1')).toBe('AA');
    const stored = await server.store.findMessage('EPIC^NORTHCLINIC', 'TLS-1');
    expect(stored?.status).toBe('accepted');
  });

  it('refuses (AR) a sender the certificate is not allowed to send for, and keeps the raw message', async () => {
    const message = siuMessage({ controlId: 'TLS-2', appointmentId: 'A-TLS-2', sendingFacility: 'SOUTHCLINIC' });
    const ack = await sendOne(tlsClient(pki.client), message);
    expect(ack.get('MSA-1')).toBe('AR');
    expect(ack.get('MSA-2')).toBe('TLS-2');
    // Kept for review, but outside the dedupe key: it cannot take the real sender's MSH-10.
    expect(await server.store.findMessage('EPIC^SOUTHCLINIC', 'TLS-2')).toBeUndefined();
    const [stored] = await server.store.listMessages({ sender: 'EPIC^SOUTHCLINIC', status: 'rejected' });
    expect(stored).toMatchObject({ reason: 'sender_not_allowed', controlId: '', triggerIds: [] });
  });

  it('never lets a client with an untrusted certificate deliver a message', async () => {
    const client = tlsClient(pki.untrustedClient);
    const outcome = await client
      .connect()
      .then(() => client.send(siuMessage({ controlId: 'TLS-3', appointmentId: 'A-TLS-3' }), { timeoutMs: 5_000 }))
      .then(
        () => 'acked',
        () => 'refused',
      );
    await client.close();
    expect(outcome).toBe('refused');
    expect(await server.store.findMessage('EPIC^NORTHCLINIC', 'TLS-3')).toBeUndefined();
  });

  it('writes no patient data to the log: a canary name and phone never appear', async () => {
    const canaryName = 'ZZCANARYFAMILY';
    const canaryPhone = '5550199123';
    const message = siuMessage({ controlId: 'TLS-4', appointmentId: 'A-TLS-4' })
      .replace('DOE^Test', `${canaryName}^Canary`)
      .replace(/(PID\|[^\r]*)/, `$1|||||||^PRN^PH^^^555^0199123~${canaryPhone}`);
    // Also through the paths that log: a rejected sender and a quarantined resend.
    await sendOne(tlsClient(pki.client), message);
    await sendOne(tlsClient(pki.client), message.replace('NORTHCLINIC', 'SOUTHCLINIC'));
    await sendOne(tlsClient(pki.client), message.replace('Canary', 'Canary2'));
    const stored = await server.store.findMessage('EPIC^NORTHCLINIC', 'TLS-4');
    expect(stored?.status).toBe('accepted');
    expect(server.logs.length).toBeGreaterThan(0);
    const everything = JSON.stringify(server.logs);
    expect(everything).not.toContain(canaryName);
    expect(everything).not.toContain(canaryPhone);
    expect(everything).not.toContain('0199123');
  });
});
