// The embedded queue serves one process per data directory: a second CareRelay on the same
// directory is refused with what to do — in another process or in this one — and the claim
// ends with the process, however it ends (a SIGKILL leaves nothing stale behind).
import { afterEach, expect, it } from 'vitest';
import { silentLogger } from '../src/log.ts';
import { startCarerelay } from '../src/main.ts';
import { startChildServer, startServer, writeConfigDir, type ChildServer, type InProcessServer, type TestConfigDir } from './helpers/server.ts';

const dirs: TestConfigDir[] = [];
const servers: InProcessServer[] = [];
const children: ChildServer[] = [];

afterEach(async () => {
  for (const c of children.splice(0)) c.kill();
  await Promise.allSettled(servers.splice(0).map((s) => s.stop()));
  for (const d of dirs.splice(0)) d.remove();
});

const REFUSED = /another CareRelay process is using the data directory .*carerelay\.lock is locked.*server\.queue type: bullmq/s;

it('refuses a second process on a data directory whose first uses the embedded queue, until the first has stopped', async () => {
  const dir = writeConfigDir();
  dirs.push(dir);
  const first = await startServer(dir);
  servers.push(first);

  // Another process (its own ports: the config binds port 0) exits with the reason.
  await expect(startChildServer(dir)).rejects.toThrow(REFUSED);
  // A second start in this process is refused the same way.
  await expect(startCarerelay({ configDir: dir.dir, env: {}, log: silentLogger, watchMappings: false })).rejects.toThrow(REFUSED);
  // The first one kept running.
  expect((await fetch(`http://127.0.0.1:${first.httpPort}/readyz`)).status).toBe(200);

  await servers.pop()!.stop();
  const next = await startServer(dir);
  servers.push(next);
  expect((await fetch(`http://127.0.0.1:${next.httpPort}/readyz`)).status).toBe(200);
});

it('frees the data directory when its process is killed', { timeout: 60_000 }, async () => {
  const dir = writeConfigDir();
  dirs.push(dir);
  const child = await startChildServer(dir);
  children.push(child);
  await expect(startCarerelay({ configDir: dir.dir, env: {}, log: silentLogger, watchMappings: false })).rejects.toThrow(REFUSED);
  child.kill();
  await child.exited;
  const after = await startServer(dir);
  servers.push(after);
  expect((await fetch(`http://127.0.0.1:${after.httpPort}/readyz`)).status).toBe(200);
});
