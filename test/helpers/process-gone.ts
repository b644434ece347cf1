// Servers a test process starts for itself (PostgreSQL, Redis) must not outlive it. 'exit'
// handlers do not run when the test runner ends a worker with a signal, and a server left
// running holds its port and directory through every run after it.
import { spawn } from 'node:child_process';

const quote = (word: string): string => `'${word.replaceAll("'", `'\\''`)}'`;

/**
 * Runs `commands` (each an argv, in order, errors ignored) from a detached watchdog once this
 * process is gone, however it ends. Commands that already did their work (a server stopped by
 * the test itself) find nothing left to do.
 */
export function afterProcessGone(commands: ReadonlyArray<readonly string[]>): void {
  const script = `while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done; ${commands.map((argv) => `${argv.map(quote).join(' ')} >/dev/null 2>&1`).join('; ')}`;
  spawn('sh', ['-c', script], { detached: true, stdio: 'ignore' }).unref();
}
