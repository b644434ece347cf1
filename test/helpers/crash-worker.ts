// A queue worker in a process of its own, for crash tests (src/queue/*.test.ts): runs a
// fixture under test/fixtures/ that reports each job it starts on stdout and never finishes,
// and kills it with a real SIGKILL mid-handler.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';

const repoRoot = join(import.meta.dirname, '..', '..');

export interface CrashWorker {
  /** What the worker printed when it started its first job (`started <id> <attempt>\n`). */
  firstLine: string;
  /** SIGKILL; resolves with [exit code, signal] once the process is gone. */
  kill(): Promise<[number | null, NodeJS.Signals | null]>;
}

/** Starts `test/fixtures/<fixture>` with `args` and waits for its first started job. */
export async function startCrashWorker(fixture: string, args: string[]): Promise<CrashWorker> {
  const child = spawn(process.execPath, ['--import', 'tsx', join('test', 'fixtures', fixture), ...args], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  await new Promise<void>((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
      if (stdout.includes('\n')) resolve();
    });
    child.on('exit', (code) => reject(new Error(`worker exited early (${code}): ${stderr}`)));
  });
  return {
    firstLine: stdout,
    kill() {
      child.kill('SIGKILL');
      return exited;
    },
  };
}
