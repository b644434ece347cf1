// The behaviour every outbound adapter must show (docs/architecture.md invariant 4,
// docs/contributing.md habits 4 and 10): one suite, run by each adapter's test file against a
// local stand-in of its provider that the harness starts on 127.0.0.1.
//
//   - one provider call per send, whatever happens: no retry inside an adapter;
//   - each failure in its class: rate-limited (with the provider's Retry-After), transient,
//     permanent, ambiguous (no answer in time, connection lost after the request left);
//   - the caller's AbortSignal ends a send that hangs;
//   - the idempotency key is the same on every attempt of a delivery, and a second send of a
//     delivery the provider already took leaves the provider with one identity for it.
import { afterEach, describe, expect, it } from 'vitest';
import { AmbiguousError, PermanentError, RateLimitedError, TransientError } from '../errors.ts';
import type { ContactHolding, DeliveryReceipt } from '../types.ts';
import type { ContactHoldingsLedger, OutboundAdapter, OutboundMessage, ReceiptLedger, SendContext } from './spec.ts';

/** What a stand-in can be told to do to the next provider call. */
export const StandInFault = {
  /** Refuse for now and say when to come back (HTTP 429 + Retry-After, SMTP 421 4.7.0). */
  RateLimited: 'rate-limited',
  /** Not processed, try later (HTTP 503, SMTP 451 4.3.0). */
  Unavailable: 'unavailable',
  /** Refused for good (HTTP 400, SMTP 554 at the end of DATA). */
  Rejected: 'rejected',
  /** Take the call in full, never answer. */
  Hang: 'hang',
  /** Take the call in full, close the connection without answering. */
  Reset: 'reset',
} as const;
export type StandInFault = (typeof StandInFault)[keyof typeof StandInFault];

export interface OutputFixture {
  adapter: OutboundAdapter;
  /** A message of the adapter's channel that the stand-in accepts. */
  message: OutboundMessage;
  /** Provider calls the stand-in received so far. */
  requests(): number;
  /** Resolves once `n` calls were received in full (before any answer). */
  waitForRequests(n: number): Promise<void>;
  /** The idempotency key each call carried, in order (webhook-id, Message-ID, identifier, CareRelay's own ledger key). */
  keys(): string[];
  fail(fault: StandInFault): void;
  /** The Retry-After a rate-limited answer carries, ms; undefined when the protocol has none. */
  retryAfterMs?: number;
  close(): Promise<void>;
}

export interface OutputHarness {
  /** Starts a stand-in and an adapter sending to it whose timeout is `timeoutSeconds`. */
  start(options: { timeoutSeconds: number }): Promise<OutputFixture>;
}

/** An in-memory receipts ledger with the Store's semantics (tests and harnesses). */
export function memoryReceiptLedger(): ReceiptLedger & { receipts: DeliveryReceipt[] } {
  const receipts: DeliveryReceipt[] = [];
  const key = (r: DeliveryReceipt) => [r.deliveryId, r.output, r.status, r.providerId ?? '', r.attempt ?? 0].join('\u0000');
  return {
    receipts,
    async addDeliveryReceipt(receipt) {
      if (receipts.some((r) => key(r) === key(receipt))) return false;
      receipts.push({ ...receipt });
      return true;
    },
    async listDeliveryReceipts(query) {
      return receipts.filter((r) => r.deliveryId === query.deliveryId && (query.output === undefined || r.output === query.output)).map((r) => ({ ...r }));
    },
  };
}

/** An in-memory contact holdings ledger with the Store's semantics (one per output, patient and contact; the first kept). */
export function memoryHoldings(): ContactHoldingsLedger & { holdings: ContactHolding[] } {
  const holdings: ContactHolding[] = [];
  return {
    holdings,
    async recordContactHolding(holding) {
      // As the Store does: once per output, patient and contact; a toolId given later is kept.
      const held = holdings.find((h) => h.output === holding.output && h.patientId === holding.patientId && h.contactKey === holding.contactKey);
      if (held === undefined) {
        holdings.push({ ...holding });
        return true;
      }
      if (holding.toolId !== undefined) held.toolId = holding.toolId;
      return false;
    },
  };
}

function context(attempt: number, signal: AbortSignal = new AbortController().signal): SendContext {
  return { deliveryId: 'unused', attempt, signal };
}

export function outputConformanceSuite(name: string, harness: OutputHarness): void {
  describe(`${name}: output conformance`, () => {
    let fixture: OutputFixture | undefined;
    const start = async (timeoutSeconds = 10): Promise<OutputFixture> => {
      fixture = await harness.start({ timeoutSeconds });
      return fixture;
    };
    const send = (f: OutputFixture, attempt = 1, signal?: AbortSignal) =>
      f.adapter.send(f.message, { ...context(attempt, signal), deliveryId: f.message.deliveryId });
    afterEach(async () => {
      await fixture?.adapter.close?.();
      await fixture?.close();
      fixture = undefined;
    });

    it('sends with one provider call and returns a receipt', async () => {
      const f = await start();
      const receipt = await send(f);
      expect(Number.isNaN(Date.parse(receipt.acceptedAt))).toBe(false);
      expect(f.requests()).toBe(1);
      expect(f.keys()).toHaveLength(1);
    });

    it('rate limited: RateLimitedError with the provider\'s Retry-After, after one call', async () => {
      const f = await start();
      f.fail(StandInFault.RateLimited);
      const error = await send(f).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(RateLimitedError);
      expect(error).toBeInstanceOf(TransientError);
      expect((error as RateLimitedError).retryAfterMs).toBe(f.retryAfterMs);
      expect(f.requests()).toBe(1);
    });

    it('unavailable: TransientError after one call', async () => {
      const f = await start();
      f.fail(StandInFault.Unavailable);
      const error = await send(f).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TransientError);
      expect(f.requests()).toBe(1);
    });

    it('refused for good: PermanentError after one call', async () => {
      const f = await start();
      f.fail(StandInFault.Rejected);
      await expect(send(f)).rejects.toBeInstanceOf(PermanentError);
      expect(f.requests()).toBe(1);
    });

    it('no answer within the timeout: AmbiguousError after one call', async () => {
      const f = await start(1);
      f.fail(StandInFault.Hang);
      await expect(send(f)).rejects.toBeInstanceOf(AmbiguousError);
      expect(f.requests()).toBe(1);
    });

    it('connection lost after the call left: AmbiguousError after one call', async () => {
      const f = await start();
      f.fail(StandInFault.Reset);
      await expect(send(f)).rejects.toBeInstanceOf(AmbiguousError);
      expect(f.requests()).toBe(1);
    });

    it('the caller\'s signal ends a hanging send with a classified error', async () => {
      const f = await start(60);
      f.fail(StandInFault.Hang);
      const controller = new AbortController();
      const pending = send(f, 1, controller.signal).catch((e: unknown) => e);
      await f.waitForRequests(1);
      controller.abort();
      const error = await pending;
      // The call had left: the provider may have acted on it.
      expect(error).toBeInstanceOf(AmbiguousError);
      expect(f.requests()).toBe(1);
    });

    it('an aborted signal before the send: nothing is called', async () => {
      const f = await start();
      const controller = new AbortController();
      controller.abort();
      const error = await send(f, 1, controller.signal).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TransientError);
      expect(f.requests()).toBe(0);
    });

    it('the idempotency key is the same on every attempt of a delivery', async () => {
      const f = await start();
      f.fail(StandInFault.Unavailable);
      await expect(send(f, 1)).rejects.toBeInstanceOf(TransientError);
      await send(f, 2);
      const keys = f.keys();
      expect(keys).toHaveLength(2);
      expect(keys[1]).toBe(keys[0]);
    });

    it('a second send of a delivery already taken gives the same identity', async () => {
      const f = await start();
      const first = await send(f, 1);
      const second = await send(f, 2);
      expect(second.providerId).toBe(first.providerId);
      expect(new Set(f.keys()).size).toBe(1);
    });
  });
}
