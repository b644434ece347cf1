// The behaviour every write-back output must show (outputs/write-back.ts; docs/contributing.md
// habits 4 and 10): one suite, run by each write-back output's test file against a local
// stand-in of its EHR interface that enforces that interface's documented behaviour.
//
//   - confirm and cancel are applied, and applying one again changes nothing (idempotent);
//   - the EHR's refusal of an operation is a `denied` result with a code, never an exception;
//   - failures keep their class: rate limited (when the protocol has it), unavailable
//     (transient), no answer in time (transient or ambiguous: both retried, the operation being
//     idempotent), and the caller's signal ends a hanging call;
//   - the request id is the same on every attempt of one operation.
import { afterEach, describe, expect, it } from 'vitest';
import { AmbiguousError, RateLimitedError, TransientError } from '../errors.ts';
import type { OutboundAdapter } from './spec.ts';
import { CANCELLED_BY_REMINDER, WriteBackKind, type WriteBackOperation } from './write-back.ts';

/** What a stand-in can be told to do to the next call it takes. */
export const WriteBackFault = {
  /** HTTP 429 + Retry-After (not every protocol has it: `retryAfterMs` undefined then). */
  RateLimited: 'rate-limited',
  /** Not processed, try later (HTTP 503, 423 locked; MLLP: connection refused). */
  Unavailable: 'unavailable',
  /** Take the call, never answer. */
  Hang: 'hang',
} as const;
export type WriteBackFault = (typeof WriteBackFault)[keyof typeof WriteBackFault];

export interface WriteBackFixture {
  adapter: OutboundAdapter;
  /** An appointment the stand-in holds as booked, its patient not yet confirmed. */
  appointment: WriteBackOperation['appointment'];
  patient: WriteBackOperation['patient'];
  /** What the EHR holds now for that appointment. */
  state(): Promise<{ confirmed: boolean; cancelled: boolean; cancelReason?: string }>;
  /** The EHR will refuse operations on the appointment from now on (it was fulfilled meanwhile, the filler says AE…). */
  refuse(): void;
  fail(fault: WriteBackFault): void | Promise<void>;
  /** After an Unavailable fault, brings the EHR back when the fault does not end by itself (an MLLP listener that stopped). */
  restore?(): Promise<void>;
  /** The Retry-After of a rate-limited answer, ms; undefined when the protocol has none. */
  retryAfterMs?: number;
  /** The request id each call carried (webhook-id, MSH-10…), in order; empty for a style without one. */
  keys(): string[];
  close(): Promise<void>;
}

export interface WriteBackHarness {
  start(options: { timeoutSeconds: number }): Promise<WriteBackFixture>;
}

export function writeBackConformanceSuite(name: string, harness: WriteBackHarness): void {
  describe(`${name}: write-back conformance`, () => {
    let fixture: WriteBackFixture | undefined;
    const start = async (timeoutSeconds = 10): Promise<WriteBackFixture> => {
      fixture = await harness.start({ timeoutSeconds });
      return fixture;
    };
    afterEach(async () => {
      await fixture?.adapter.close?.();
      await fixture?.close();
      fixture = undefined;
    });
    const op = (f: WriteBackFixture, kind: typeof WriteBackKind.Confirm | typeof WriteBackKind.Cancel, requestId = `${kind}-1`): WriteBackOperation =>
      kind === WriteBackKind.Cancel
        ? { kind, requestId, appointment: f.appointment, patient: f.patient, reason: CANCELLED_BY_REMINDER }
        : { kind, requestId, appointment: f.appointment, patient: f.patient };
    const run = (f: WriteBackFixture, operation: WriteBackOperation, signal = new AbortController().signal) => f.adapter.writeBack!(operation, { signal, attempt: 1 });

    it('declares the operations it performs and sends no messages', async () => {
      const f = await start();
      expect(f.adapter.writeBackKinds).toEqual(expect.arrayContaining([WriteBackKind.Confirm, WriteBackKind.Cancel]));
      expect(typeof f.adapter.writeBack).toBe('function');
    });

    it('confirm is applied, and confirming again changes nothing', async () => {
      const f = await start();
      expect(await run(f, op(f, 'confirm'))).toMatchObject({ outcome: 'applied' });
      expect(await f.state()).toMatchObject({ confirmed: true, cancelled: false });
      expect(await run(f, op(f, 'confirm'))).toMatchObject({ outcome: 'applied' });
      expect(await f.state()).toMatchObject({ confirmed: true, cancelled: false });
    });

    it('cancel is applied with the reason pat-crs, and cancelling again changes nothing', async () => {
      const f = await start();
      expect(await run(f, op(f, 'cancel'))).toMatchObject({ outcome: 'applied' });
      expect(await f.state()).toEqual({ confirmed: false, cancelled: true, cancelReason: 'pat-crs' });
      expect(await run(f, op(f, 'cancel'))).toMatchObject({ outcome: 'applied' });
    });

    it("the EHR's refusal is a denied result with a code", async () => {
      const f = await start();
      f.refuse();
      const result = await run(f, op(f, 'confirm'));
      expect(result.outcome).toBe('denied');
      expect(result.outcome === 'denied' && /^[a-z0-9_]+$/.test(result.code)).toBe(true);
      expect(await f.state()).toMatchObject({ confirmed: false });
    });

    it('rate limited: RateLimitedError with the Retry-After (when the protocol has one)', async () => {
      const f = await start();
      if (f.retryAfterMs === undefined) return;
      f.fail(WriteBackFault.RateLimited);
      const error = await run(f, op(f, 'confirm')).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(RateLimitedError);
      expect((error as RateLimitedError).retryAfterMs).toBe(f.retryAfterMs);
    });

    it('unavailable: TransientError', async () => {
      const f = await start();
      await f.fail(WriteBackFault.Unavailable);
      await expect(run(f, op(f, 'confirm'))).rejects.toBeInstanceOf(TransientError);
      await f.restore?.();
      // Nothing was written: the next attempt applies it.
      expect(await run(f, op(f, 'confirm'))).toMatchObject({ outcome: 'applied' });
    });

    it('no answer within the timeout: a retryable error (transient or ambiguous)', async () => {
      const f = await start(1);
      f.fail(WriteBackFault.Hang);
      const error = await run(f, op(f, 'confirm')).catch((e: unknown) => e);
      expect(error instanceof TransientError || error instanceof AmbiguousError).toBe(true);
    });

    it("the caller's signal ends a hanging call with a classified error", async () => {
      const f = await start(60);
      f.fail(WriteBackFault.Hang);
      const controller = new AbortController();
      const pending = run(f, op(f, 'confirm'), controller.signal).catch((e: unknown) => e);
      controller.abort();
      const error = await pending;
      expect(error instanceof TransientError || error instanceof AmbiguousError).toBe(true);
    });

    it('one operation carries the same request id on every attempt', async () => {
      const f = await start(1);
      await f.fail(WriteBackFault.Hang);
      await run(f, op(f, 'confirm', 'req-7')).catch(() => undefined);
      await run(f, op(f, 'confirm', 'req-7'));
      const keys = f.keys();
      if (keys.length === 0) return;
      expect(new Set(keys).size).toBe(1);
    });
  });
}
