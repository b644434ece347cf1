// Requests to a worker thread, each answered by one reply carrying the request's id (the
// benchmarks' client thread, bench/admin.ts, and writer thread, bench/writer-thread.ts).
import type { Worker } from 'node:worker_threads';

/** What the thread answers a request: `error` when it failed. */
export interface ThreadReply {
  id: number;
  error?: string;
}

/** A function that posts `request` to `worker` with an id and resolves with the reply of that id (rejects on its error). */
export function threadCalls<Request, Reply extends ThreadReply>(worker: Worker): (request: Request) => Promise<Reply> {
  const waiting = new Map<number, { resolve: (reply: Reply) => void; reject: (error: Error) => void }>();
  let next = 0;
  worker.on('message', (reply: Reply) => {
    const w = waiting.get(reply.id)!;
    waiting.delete(reply.id);
    if (reply.error !== undefined) w.reject(new Error(reply.error));
    else w.resolve(reply);
  });
  return (request) =>
    new Promise((resolve, reject) => {
      const id = next++;
      waiting.set(id, { resolve, reject });
      worker.postMessage({ ...request, id });
    });
}
