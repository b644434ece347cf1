// Ingest benchmark target `writer` (bench/ingest.ts): what a writer thread would give. The
// store's inbound commit (SqliteStore.commitInbound: the same statements, packing and group
// commit with its fsync) runs on a thread of its own with its own connection; the event loop
// keeps the listener, parse, normalize and ACK (bench/ingest.ts startPipeline) and waits for
// the thread's commit before it ACKs. Not a mode CareRelay offers: routing, the queue and the
// consent ledger write through the same connection inside the same transactions, and would all
// have to move with it (README "Benchmarks"). A record's conflictAck (a function, called only
// when a resend conflicts, which the benchmark never sends) does not cross to the thread.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { InboundRecord } from '../src/store/store.ts';
import type { CommitStrategy } from './ingest.ts';
import { threadCalls, type ThreadReply } from './thread-calls.ts';

interface Request {
  record: Omit<InboundRecord, 'conflictAck'>;
}

/**
 * Starts the writer thread on the SQLite file `file`; `commit` resolves once the thread's commit
 * is durable. `busyMs` is the thread's event-loop busy time so far (its statements, packing,
 * COMMIT and the fsync it waits for): the thread's own capacity, which no other thread shares.
 */
export function startWriterThread(file: string): { commit: CommitStrategy; busyMs: () => number; close: () => Promise<void> } {
  // tsx's loader is registered in the thread before this module loads there (a worker does
  // not inherit `--import tsx` hooks on Node 20).
  const bootstrap = `(async () => { const { register } = await import('tsx/esm/api'); register(); await import(${JSON.stringify(import.meta.url)}); })()`;
  const worker = new Worker(bootstrap, { eval: true, workerData: { file } });
  const call = threadCalls<Request, ThreadReply>(worker);
  return {
    commit: async (record, stored) => {
      const { conflictAck: _notSent, ...plain } = record;
      await call({ record: plain });
      return stored();
    },
    busyMs: () => worker.performance.eventLoopUtilization().active,
    close: async () => {
      await worker.terminate();
    },
  };
}

if (!isMainThread && parentPort !== null && (workerData as { file?: string } | null)?.file !== undefined) {
  const port = parentPort;
  const store = SqliteStore.open((workerData as { file: string }).file);
  port.on('message', ({ id, record }: Request & { id: number }) => {
    // A Buffer arrives as a Uint8Array.
    const inbound: InboundRecord = { ...record, raw: Buffer.from(record.raw.buffer, record.raw.byteOffset, record.raw.byteLength) };
    store.commitInbound(inbound).then(
      () => port.postMessage({ id } satisfies ThreadReply),
      (error: unknown) => port.postMessage({ id, error: String(error) } satisfies ThreadReply),
    );
  });
}
