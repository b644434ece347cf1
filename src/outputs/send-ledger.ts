// CareRelay's own idempotency key, for providers whose create call has none (Twilio messages,
// SFMC journey entry events): the receipts ledger, keyed by delivery id (docs/architecture.md
// invariant 4: an ambiguous failure is retried only through an idempotent provider).
//
// Before the call a `sending` receipt, after it `accepted` with the provider's id, `refused` or
// `unknown`. An attempt that finds an `accepted` id sends nothing and answers with it; one that
// finds `sending` as the last word knows an earlier attempt died in the middle of its call (a
// crash) and reports AmbiguousError without calling: the queue parks it (such an output is not
// idempotent). A person who replays a parked delivery finds `unknown` last and sends once more,
// knowingly.
import { AmbiguousError, TransientError } from '../errors.ts';
import type { DeliveryReceipt, Receipt } from '../types.ts';
import type { OutboundMessage, OutputDeps, SendContext } from './spec.ts';

export const LEDGER_UNAVAILABLE = 'receipts_unavailable';

/** What a recorded call returns when the provider took the message. */
export interface RecordedCall {
  readonly providerId: string;
  readonly detail?: Record<string, unknown>;
}

export interface RecordedSendOptions {
  /** The output's name (receipts are per output). */
  readonly output: string;
  /** Error code of "an earlier attempt stopped during its call", e.g. twilio_outcome_unknown. */
  readonly outcomeUnknownCode: string;
  /** What the provider may have created, for messages: "the SMS", "the journey entry". */
  readonly what: string;
  /** The provider's name, for messages. */
  readonly provider: string;
}

/**
 * Makes `call` at most once per delivery as far as the ledger can tell (see the top of this file).
 * `call` throws the classified errors of its answer; an error's `providerCode` is recorded.
 */
export async function sendRecorded(
  deps: Pick<OutputDeps, 'receipts' | 'now'>,
  options: RecordedSendOptions,
  message: OutboundMessage,
  context: SendContext,
  call: () => Promise<RecordedCall>,
): Promise<Receipt> {
  const { output } = options;
  const record = (fields: Omit<DeliveryReceipt, 'deliveryId' | 'output' | 'attempt' | 'at'>) =>
    deps.receipts.addDeliveryReceipt({ deliveryId: message.deliveryId, output, attempt: context.attempt, at: deps.now().toISOString(), ...fields });

  let earlier: DeliveryReceipt[];
  try {
    earlier = await deps.receipts.listDeliveryReceipts({ deliveryId: message.deliveryId, output });
  } catch (error) {
    throw new TransientError(LEDGER_UNAVAILABLE, `receipts of ${message.deliveryId} cannot be read; nothing sent`, { cause: error });
  }
  const accepted = earlier.find((r) => r.status === 'accepted' && r.providerId !== undefined);
  if (accepted) return { providerId: accepted.providerId, acceptedAt: accepted.at, detail: { resent: false } };
  const last = earlier.filter((r) => r.attempt !== undefined).at(-1);
  if (last?.status === 'sending') {
    await record({ status: 'unknown' }).catch(() => undefined);
    throw new AmbiguousError(options.outcomeUnknownCode, `an earlier attempt of ${message.deliveryId} stopped during its call to ${options.provider}; ${options.what} may exist`);
  }
  try {
    await record({ status: 'sending' });
  } catch (error) {
    throw new TransientError(LEDGER_UNAVAILABLE, `the send of ${message.deliveryId} cannot be recorded; nothing sent`, { cause: error });
  }
  let result: RecordedCall;
  try {
    result = await call();
  } catch (error) {
    const providerCode = (error as { providerCode?: unknown }).providerCode;
    await record({ status: error instanceof AmbiguousError ? 'unknown' : 'refused', ...(typeof providerCode === 'string' ? { code: providerCode } : {}) }).catch(() => undefined);
    throw error;
  }
  await record({ status: 'accepted', providerId: result.providerId }).catch(() => undefined);
  return { providerId: result.providerId, acceptedAt: deps.now().toISOString(), ...(result.detail ? { detail: result.detail } : {}) };
}
