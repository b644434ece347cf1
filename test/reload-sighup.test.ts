// `carerelay start` reloads its mappings on SIGHUP: a valid plan is swapped in, a broken one
// is reported and the running plan keeps serving (a child process, real signals).
import { cpSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mllpExchange, siuMessage, startChildServer, writeConfigDir, type ChildServer, type LogLine, type TestConfigDir } from './helpers/server.ts';

const repo = path.join(import.meta.dirname, '..');
let config: TestConfigDir;
let server: ChildServer;

/** Resolves with the first log line after index `from` that matches; bounded by `timeoutMs`. */
function nextLog(from: number, match: (line: LogLine) => boolean, timeoutMs = 15_000): Promise<LogLine> {
  return new Promise((resolve, reject) => {
    const check = (): boolean => {
      const found = server.logs.slice(from).find(match);
      if (found === undefined) return false;
      cleanup();
      resolve(found);
      return true;
    };
    const onData = (): void => void check();
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no matching log line within ${timeoutMs} ms`));
    }, timeoutMs);
    const cleanup = (): void => {
      clearTimeout(timer);
      server.child.stderr!.off('data', onData);
    };
    // The helper's own listener (registered first) parses each chunk into server.logs.
    server.child.stderr!.on('data', onData);
    check();
  });
}

beforeAll(async () => {
  config = writeConfigDir();
  cpSync(path.join(repo, 'mappings'), path.join(config.dir, 'mappings'), { recursive: true });
  // The outputs the shipped mappings name.
  for (const file of ['outbox.yaml', 'marketing.yaml']) cpSync(path.join(repo, 'connectors', file), path.join(config.dir, 'connectors', file));
  server = await startChildServer(config);
  // A SIGHUP during start-up is ignored (never fatal); reloads work once it has finished.
  server.child.kill('SIGHUP');
  await nextLog(0, (l) => l.message === 'carerelay.started');
});

afterAll(async () => {
  await server?.stop();
  config?.remove();
});

describe('SIGHUP', () => {
  it('reloads a valid plan', async () => {
    const from = server.logs.length;
    server.child.kill('SIGHUP');
    await nextLog(from, (l) => l.message === 'config.reloading' && l.signal === 'SIGHUP');
    const reloaded = await nextLog(from, (l) => l.message === 'config.reloaded');
    expect(reloaded.count).toBeGreaterThan(0);
  });

  it('keeps the running plan when the new one is broken, and keeps serving', async () => {
    writeFileSync(path.join(config.dir, 'mappings', 'broken.yaml'), 'rules:\n  - id: broken\n    on: appointment.booked\n    colour: blue\n');
    const from = server.logs.length;
    server.child.kill('SIGHUP');
    const reloading = await nextLog(from, (l) => l.message === 'config.reloading' && l.signal === 'SIGHUP');
    const failed = await nextLog(server.logs.indexOf(reloading), (l) => l.message === 'config.reload_failed');
    expect(failed.issues).toBeGreaterThan(0);
    // Each problem is logged with where it is, so an operator can go and fix it.
    const issueLines = () => server.logs.slice(server.logs.indexOf(failed)).filter((l) => l.message === 'config.reload_issue');
    await nextLog(server.logs.indexOf(failed), () => issueLines().length >= Number(failed.issues));
    expect(issueLines()).toHaveLength(Number(failed.issues));
    expect(issueLines()).toContainEqual(expect.objectContaining({ file: expect.stringMatching(/mappings\/broken\.yaml$/), line: 4, column: 5 }));
    for (const line of issueLines()) expect(Object.keys(line).sort()).toEqual(expect.arrayContaining(['file', 'level', 'message', 'reason', 'timestamp']));
    const ack = await mllpExchange(server.mllpPorts.get('ehr-mllp')!, siuMessage({ controlId: 'HUP-1', appointmentId: 'A-HUP' }));
    expect(ack?.toString('latin1')).toMatch(/MSA\|AA\|HUP-1/);
  });
});
