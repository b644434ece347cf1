// MLLP over mutual TLS against a crowd (docs/reliability.md "Bad inputs"): peers that connect
// and close must not hold slots in CLOSE-WAIT, a handshake has its own short deadline, and the
// EHR with a trusted certificate can connect when untrusted peers hold every other slot.
// Certificates are made for the test (test/helpers/certs.ts, openssl).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MllpClient } from '../src/hl7v2/mllp-client.ts';
import { parseHl7 } from '../src/hl7v2/parse.ts';
import { issueClientCert, makeTestPki, type PemFiles, type TestPki } from './helpers/certs.ts';
import { siuMessage, startServer, type InProcessServer } from './helpers/server.ts';

let dir: string;
let pki: TestPki;
let other: PemFiles;
let server: InProcessServer;

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'carerelay-tls-crowd-'));
  pki = makeTestPki(path.join(dir, 'pki'), { clientCN: 'epic-interface' });
  // Signed by the trusted CA, so its handshake succeeds, but not a configured sender.
  other = issueClientCert(pki, 'other', 'other-sender');
  const tlsBlock = (indent: string): string[] => [
    `${indent}tls:`,
    `${indent}  cert: { file: ${pki.server.certPath} }`,
    `${indent}  key: { file: ${pki.server.keyPath} }`,
    `${indent}  ca: { file: ${pki.ca.certPath} }`,
    `${indent}  requireClientCert: true`,
  ];
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
      ...tlsBlock('    '),
      // Long handshake and idle deadlines: only closing on the peer's FIN frees these slots.
      '    tlsHandshakeTimeoutSeconds: 300',
      '    maxConnections: 6',
      '    reservedConnections: 2',
      '    maxConnectionsPerAddress: 100',
      '    trustedSenders: { certificateCNs: [epic-interface] }',
      '  - name: ehr-tls-fast',
      '    type: hl7v2-mllp',
      '    port: 0',
      ...tlsBlock('    '),
      '    tlsHandshakeTimeoutSeconds: 1',
      '',
    ].join('\n'),
  );
  server = await startServer(dir);
});

afterAll(async () => {
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function ehrClient(input = 'ehr-tls'): MllpClient {
  return new MllpClient({
    host: '127.0.0.1',
    port: server.mllpPort(input),
    tls: { ca: pki.ca.cert, cert: pki.client.cert, key: pki.client.key },
  });
}

async function sendAsEhr(controlId: string): Promise<string> {
  const client = ehrClient();
  await client.connect();
  try {
    return parseHl7(await client.send(siuMessage({ controlId, appointmentId: `AP-${controlId}` }), { timeoutMs: 10_000 })).get('MSA-1');
  } finally {
    await client.close();
  }
}

/** A TCP connection to `port` that ends at once; resolves when the server has closed its side too. */
function connectAndClose(port: number): Promise<void> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => socket.end());
    socket.on('error', () => {});
    socket.once('close', () => resolve());
  });
}

/** A TLS connection with `cert` that completes its handshake and then stays silent. */
function silentTls(port: number, cert: PemFiles): Promise<tls.TLSSocket> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca: pki.ca.cert, cert: cert.cert, key: cert.key, servername: 'localhost' });
    socket.on('error', () => {});
    socket.once('secureConnect', () => resolve(socket));
    socket.once('close', () => resolve(socket));
  });
}

describe('3. peers that connect and close free their slot at once (no CLOSE-WAIT until a timeout)', () => {
  it('20 connect-and-close clients on a 6-slot TLS listener, then the EHR sends and gets AA', async () => {
    const port = server.mllpPort('ehr-tls');
    for (let i = 0; i < 20; i++) await connectAndClose(port);
    // Also in parallel, as a port scanner or a crowd of health checks would.
    await Promise.all(Array.from({ length: 20 }, () => connectAndClose(port)));
    expect(server.mllpStats('ehr-tls')!.sockets).toBe(0);
    expect(await sendAsEhr('CW-1')).toBe('AA');
    // The slots were never full: nothing was refused.
    expect(server.mllpStats('ehr-tls')!.refused.max_connections).toBe(0);
  });

  it('a client that closes after its handshake is closed at once as well', async () => {
    const port = server.mllpPort('ehr-tls');
    for (let i = 0; i < 8; i++) {
      const socket = await silentTls(port, pki.client);
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.end();
      await closed;
    }
    expect(await sendAsEhr('CW-2')).toBe('AA');
  });
});

describe('4. TLS: a short handshake deadline, and slots kept for the trusted certificate', () => {
  it('closes a connection that never starts its TLS handshake after tlsHandshakeTimeoutSeconds', async () => {
    const socket = net.connect({ host: '127.0.0.1', port: server.mllpPort('ehr-tls-fast') });
    socket.on('error', () => {});
    // Idle timeout is 300 s: only the handshake deadline (1 s) closes it.
    await new Promise<void>((resolve) => socket.once('close', () => resolve()));
    expect(server.logs.some((l) => l.message === 'mllp.connection_closed' && l.input === 'ehr-tls-fast' && l.code === 'ERR_TLS_HANDSHAKE_TIMEOUT')).toBe(true);
  });

  it('untrusted certificates fill the 4 unreserved slots; a fifth is refused after its handshake; the EHR still connects', async () => {
    const port = server.mllpPort('ehr-tls');
    const crowd: tls.TLSSocket[] = [];
    try {
      for (let i = 0; i < 4; i++) crowd.push(await silentTls(port, other));
      expect(crowd.every((s) => !s.destroyed)).toBe(true);
      const fifth = await silentTls(port, other);
      crowd.push(fifth);
      if (!fifth.closed) await new Promise<void>((resolve) => fifth.once('close', () => resolve()));
      expect(server.mllpStats('ehr-tls')!.refused.reserved_for_trusted).toBe(1);
      expect(await sendAsEhr('RSV-1')).toBe('AA');
      expect(server.logs.some((l) => l.message === 'mllp.connection_refused' && l.reason === 'reserved_for_trusted')).toBe(true);
    } finally {
      for (const s of crowd) s.destroy();
    }
  });
});
