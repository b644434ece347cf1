// Stopping (SIGTERM, a Kubernetes pod going away) drains: what a sender already handed over
// gets its answer; nothing new is taken, and /readyz says so at once.
import net from 'node:net';
import { afterEach, expect, it } from 'vitest';
import { siuMessage, startServer, writeConfigDir, type InProcessServer, type TestConfigDir } from './helpers/server.ts';

let config: TestConfigDir | undefined;
let server: InProcessServer | undefined;

afterEach(async () => {
  await server?.stop();
  config?.remove();
  server = undefined;
  config = undefined;
});

/** Resolves with everything the socket receives until the server ends it. */
function collect(socket: net.Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => (text += chunk));
    socket.on('end', () => resolve(text));
    socket.on('error', reject);
  });
}

it('answers an HTTP ingest request that was under way when stopping began, and takes no new ones', async () => {
  config = writeConfigDir();
  server = await startServer(config);
  const body = Buffer.from(siuMessage({ controlId: 'DRAIN-1', appointmentId: 'A-DRAIN-1' }), 'latin1');
  const socket = net.connect(server.httpPort, '127.0.0.1');
  await new Promise<void>((resolve) => socket.once('connect', resolve));
  const answer = collect(socket);
  // Headers and half of the body: the request is under way when stop() begins.
  socket.write(
    `POST /ingest/hl7v2/ehr-http HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: x-application/hl7-v2+er7\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`,
  );
  socket.write(body.subarray(0, 40));
  // The server has read the request line by the time its handler waits for the body: a
  // readiness probe on a fresh connection goes through first, in order.
  expect((await fetch(`http://127.0.0.1:${server.httpPort}/readyz`)).status).toBe(200);

  const stopped = server.stop();
  // New connections are refused from now on.
  await expect(fetch(`http://127.0.0.1:${server.httpPort}/healthz`)).rejects.toThrow();
  socket.write(body.subarray(40));
  const response = await answer;
  await stopped;
  expect(response).toMatch(/^HTTP\/1\.1 200 /);
  expect(response).toMatch(/MSA\|AA\|DRAIN-1/);
});
