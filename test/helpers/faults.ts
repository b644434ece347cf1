// The faults a provider stand-in can be told to show on its next calls: the two that do not
// answer (hang: take the request in full and never answer; reset: drop the connection after it)
// handled here, any other kind handed back to the stand-in to answer in its provider's own way.
import type http from 'node:http';
import type { AddressInfo } from 'node:net';

export type NoAnswerFault = { kind: 'hang' } | { kind: 'reset' };

export class FaultQueue<F extends { kind: string }> {
  readonly #queue: Array<F | NoAnswerFault> = [];
  readonly #hanging = new Set<http.ServerResponse>();

  push(fault: F | NoAnswerFault, count = 1): void {
    for (let i = 0; i < count; i++) this.#queue.push(fault);
  }

  /**
   * Takes the next fault for this request: 'handled' when it was a hang or a reset (nothing more
   * to do), else the fault to answer (or undefined: none pending).
   */
  take(req: http.IncomingMessage, res: http.ServerResponse): Exclude<F, NoAnswerFault> | 'handled' | undefined {
    const fault = this.#queue.shift();
    if (fault?.kind === 'hang') {
      this.#hanging.add(res);
      return 'handled';
    }
    if (fault?.kind === 'reset') {
      req.socket.destroy();
      return 'handled';
    }
    return fault as Exclude<F, NoAnswerFault> | undefined;
  }

  /** Ends the requests left hanging (before the server closes). */
  releaseHanging(): void {
    for (const res of this.#hanging) res.destroy();
  }
}

/** Listens on 127.0.0.1 with an ephemeral port; `close` drops open connections first. */
export async function listenOnLoopback(server: http.Server): Promise<{ baseUrl: string; close(): Promise<void> }> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
