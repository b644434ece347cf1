// `carerelay start --processes N`: N processes of one role on this host, sharing its listening
// sockets (node:cluster). The primary process only supervises: it starts the N processes,
// starts a process again when one dies (after 1 s, doubling to 30 s while they keep dying
// within a minute of starting), passes SIGHUP on to the processes that are running (each
// reloads; with Redis the reload is also announced to the other hosts), and on SIGTERM/SIGINT stops them all gracefully and waits.
//
// Sharing sockets: each process listens on the configured MLLP and HTTP ports as if alone;
// node's cluster module makes the primary hold the listening socket and hand each new
// connection to one process in turn (round-robin: the default on every platform but Windows).
// A connection stays with its process, so an HL7 sender's messages on one connection are
// handled in order by one process; senders on several connections are spread over all.
// SO_REUSEPORT is not used: Node's net module does not offer it for TCP on every platform,
// and the kernel's hashing would pin a sender's reconnections to one process anyway.
import cluster, { type Worker } from 'node:cluster';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from './log.ts';

const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'carerelay.mjs');

export interface ProcessesOptions {
  /** How many processes. */
  count: number;
  /** The arguments each process gets after `carerelay` (start …, without --processes). */
  args: string[];
  log: Logger;
}

const RESTART_MIN_MS = 1_000;
const RESTART_MAX_MS = 30_000;
/** A process that lived this long resets the restart delay. */
const STABLE_MS = 60_000;

/** Runs the supervisor until every process has stopped after SIGTERM/SIGINT; exit code. */
export function runProcesses(options: ProcessesOptions): Promise<number> {
  const { count, args, log } = options;
  cluster.setupPrimary({ exec: CLI, args, silent: false });
  let stopping = false;
  let restartMs = RESTART_MIN_MS;
  const started = new Map<Worker, number>();
  /** Restarts waiting for their delay; cleared on stop. */
  const restarts = new Set<NodeJS.Timeout>();
  // Processes that are listening: their SIGHUP handler is in place (a process still loading
  // its modules would be ended by a SIGHUP, whose default action is to exit; it reads the
  // configuration as it starts anyway).
  const listening = new Set<Worker>();
  const fork = (): void => {
    const worker = cluster.fork();
    started.set(worker, Date.now());
    worker.once('listening', () => listening.add(worker));
  };
  return new Promise<number>((resolve) => {
    cluster.on('exit', (worker, code, signal) => {
      const lived = Date.now() - (started.get(worker) ?? Date.now());
      started.delete(worker);
      listening.delete(worker);
      if (stopping) {
        if (started.size === 0) {
          log.info('processes.stopped', { count });
          resolve(0);
        }
        return;
      }
      log.error('processes.exited', { pid: worker.process.pid, code: code ?? undefined, signal: signal ?? undefined, durationMs: lived });
      restartMs = lived >= STABLE_MS ? RESTART_MIN_MS : Math.min(restartMs * 2, RESTART_MAX_MS);
      const delay = lived >= STABLE_MS ? RESTART_MIN_MS : restartMs;
      // A referenced timer: when every process died at once (a store or Redis outage ending
      // them all, kill -9), the pending restart is the only thing left to keep the supervisor
      // alive — unreferenced, it exited (code 13, its promise unsettled) instead of restarting.
      const timer = setTimeout(() => {
        restarts.delete(timer);
        if (!stopping) fork();
      }, delay);
      restarts.add(timer);
    });
    const stop = (signal: NodeJS.Signals): void => {
      if (stopping) return;
      stopping = true;
      for (const timer of restarts) clearTimeout(timer);
      restarts.clear();
      log.info('processes.stopping', { signal, count: started.size });
      if (started.size === 0) resolve(0);
      for (const worker of started.keys()) worker.process.kill('SIGTERM');
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    process.on('SIGHUP', () => {
      log.info('config.reloading', { signal: 'SIGHUP', count: listening.size });
      for (const worker of listening) worker.process.kill('SIGHUP');
    });
    for (let i = 0; i < count; i++) fork();
    log.info('processes.started', { count });
  });
}
