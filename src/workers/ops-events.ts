// What a running CareRelay does, as typed events for metrics and alerts (workers/metrics.ts,
// workers/alerts.ts) — observed where it already happens instead of counted all over the code:
//
//   the store (observeStore)      a message committed (or not), triggers, a delivery planned,
//                                 cancelled or ended, a send-time decision
//   the outputs (observeOutputs)  each send's duration and failure class
//   the queue (its subscribe())   retries, parked and dead-lettered jobs
//
// Events carry configured names (inputs, outputs, rules), codes and counts only — never patient
// data; the consumers map every value onto an allow-list before it becomes a label.
import type { InstancePlan } from '../config/load.ts';
import { failureClassOf, RateLimitedError } from '../errors.ts';
import { FHIR_REST_HOOK, type FhirRestHookConfig } from '../inputs/fhir/spec.ts';
import type { OutboundAdapter } from '../outputs/spec.ts';
import type { QueueEvent } from '../queue/queue.ts';
import type { CommitOutcome, DecisionRecord, DeliveryOutcome, DeliveryWrite, InboundRecord, Store } from '../store/store.ts';
import type { TriggerType } from '../types.ts';
import type { SubscriptionState } from './fhir-state.ts';

/** How a send ended, for metrics and the error-rate alert. */
export const SendResult = {
  Ok: 'ok',
  RateLimited: 'rate_limited',
  Transient: 'transient',
  Ambiguous: 'ambiguous',
  Permanent: 'permanent',
} as const;
export type SendResult = (typeof SendResult)[keyof typeof SendResult];
export const SEND_RESULTS: readonly SendResult[] = Object.values(SendResult);

/** What happened to a delivery (deliveries by rule, output and status). */
export const DeliveryEvent = {
  Planned: 'planned',
  Replanned: 'replanned',
  Cancelled: 'cancelled',
  Sent: 'sent',
  Suppressed: 'suppressed',
  Failed: 'failed',
  /** Parked for a person: the output may have it and does not dedupe (StoredDeliveryStatus). */
  Review: 'review',
} as const;
export type DeliveryEvent = (typeof DeliveryEvent)[keyof typeof DeliveryEvent];
export const DELIVERY_EVENTS: readonly DeliveryEvent[] = Object.values(DeliveryEvent);

export type OpsEvent =
  /** An inbound message answered from the store: stored, a resend (`duplicate`) or a conflicting copy (`quarantined`). */
  | { type: 'message'; input: string; messageType: string; ackCode: string; status: string; triggers: readonly TriggerType[]; commitMs?: number }
  /** A commit that failed: the sender got AE / 503. */
  | { type: 'commit_failed'; input: string }
  | { type: 'delivery'; deliveryId: string; rule: string; output?: string; status: DeliveryEvent }
  | { type: 'decision'; rule: string; output: string; result: DecisionRecord['result']; reason?: string }
  | { type: 'send'; output: string; result: SendResult; ms: number }
  | { type: 'job'; queue: string; event: QueueEvent['type']; code?: string }
  /** An output's circuit breaker changed state (the delivery engine's; open: sends are held). */
  | { type: 'circuit'; output: string; state: 'open' | 'half_open' | 'closed' };

/** A small typed event hub: listeners run synchronously, and one that throws never stops the others. */
export class OpsEvents {
  readonly #listeners = new Set<(event: OpsEvent) => void>();

  subscribe(listener: (event: OpsEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  emit(event: OpsEvent): void {
    for (const listener of this.#listeners) {
      try {
        listener(event);
      } catch {
        // An observer's fault must never turn a commit or a send into a failure.
      }
    }
  }

  /** A resend the HL7 ingest answered with its stored ACK before any commit (Hl7IngestDeps.onResend). */
  readonly resend = (r: { input: string; messageType: string; ackCode: string }): void => {
    this.emit({ type: 'message', ...r, status: 'duplicate', triggers: [] });
  };

  /** Forwards a queue's events (job events are ids and codes only). */
  watchQueue(queue: { subscribe(listener: (event: QueueEvent) => void): () => void }, name: string): () => void {
    return queue.subscribe((event) => this.emit({ type: 'job', queue: name, event: event.type, ...('code' in event ? { code: event.code } : {}) }));
  }
}

/** The rule of a delivery id (`<rule>@<subject>#<step>`: rule ids hold no '@'). */
export function ruleOfDelivery(deliveryId: string): string {
  const at = deliveryId.indexOf('@');
  return at > 0 ? deliveryId.slice(0, at) : deliveryId;
}

const ROUTING_EVENT: Record<NonNullable<DeliveryWrite['cause']>['change'], DeliveryEvent> = {
  added: DeliveryEvent.Planned,
  revived: DeliveryEvent.Planned,
  replanned: DeliveryEvent.Replanned,
  cancelled: DeliveryEvent.Cancelled,
};

/**
 * The store every component uses, with what it writes reported to `events` once the write
 * resolved (a write that fails reports nothing, except a failed commit of a message). Reads and
 * everything else pass through untouched, so `instanceof` and the store's own fields (the
 * embedded queue's database) still see the store underneath.
 */
export function observeStore<S extends Store>(store: S, events: OpsEvents): S {
  const observers: Record<string, (args: unknown[], result: unknown, ms: number) => void> = {
    commitInbound: ([record], result, ms) => {
      const r = record as InboundRecord;
      const outcome = result as CommitOutcome;
      const status = outcome.outcome === 'stored' ? outcome.message.status : outcome.outcome === 'duplicate' ? 'duplicate' : 'quarantined';
      events.emit({
        type: 'message',
        input: r.input,
        messageType: r.messageType,
        ackCode: outcome.message.ackCode,
        status,
        triggers: outcome.outcome === 'stored' ? r.triggers.map((t) => t.type) : [],
        commitMs: ms,
      });
    },
    saveRouting: ([, writes]) => {
      for (const w of writes as readonly DeliveryWrite[]) {
        const status = w.cause ? ROUTING_EVENT[w.cause.change] : w.status === 'pending' ? DeliveryEvent.Planned : DeliveryEvent.Cancelled;
        events.emit({ type: 'delivery', deliveryId: w.delivery.id, rule: w.delivery.ruleId, output: w.delivery.output, status });
      }
    },
    finishDelivery: ([id, , outcome], written) => {
      if (written !== true) return;
      events.emit({ type: 'delivery', deliveryId: id as string, rule: ruleOfDelivery(id as string), status: (outcome as DeliveryOutcome).status });
    },
    recordDecision: ([decision]) => {
      const d = decision as DecisionRecord;
      events.emit({ type: 'decision', rule: d.rule, output: d.output, result: d.result, ...(d.reason !== undefined ? { reason: d.reason } : {}) });
    },
  };
  return new Proxy(store, {
    get(target, property) {
      const value = Reflect.get(target, property, target) as unknown;
      if (typeof value !== 'function') return value;
      // The embedded queue marks a dead-lettered delivery failed inside its own write (runtime.ts).
      if (property === 'finishDeliveryInWrite') {
        return (...args: unknown[]) => {
          const written = (value as (...a: unknown[]) => unknown).apply(target, args);
          if (written === true) events.emit({ type: 'delivery', deliveryId: args[0] as string, rule: ruleOfDelivery(args[0] as string), status: DeliveryEvent.Failed });
          return written;
        };
      }
      const observe = typeof property === 'string' ? observers[property] : undefined;
      if (observe === undefined) return value.bind(target);
      return async (...args: unknown[]) => {
        const started = performance.now();
        let result: unknown;
        try {
          result = await (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        } catch (error) {
          if (property === 'commitInbound') events.emit({ type: 'commit_failed', input: (args[0] as InboundRecord).input });
          throw error;
        }
        observe(args, result, performance.now() - started);
        return result;
      };
    },
  });
}

/** Times each output's sends and reports how they ended (the adapters are wrapped in place). */
export function observeOutputs(outputs: ReadonlyMap<string, OutboundAdapter>, events: OpsEvents): void {
  for (const [name, adapter] of outputs) {
    const send = adapter.send.bind(adapter);
    adapter.send = async (message, context) => {
      const started = performance.now();
      try {
        const receipt = await send(message, context);
        events.emit({ type: 'send', output: name, result: SendResult.Ok, ms: performance.now() - started });
        return receipt;
      } catch (error) {
        const result = error instanceof RateLimitedError ? SendResult.RateLimited : failureClassOf(error);
        events.emit({ type: 'send', output: name, result, ms: performance.now() - started });
        throw error;
      }
    };
  }
}

/** Where a FHIR subscription stands, for metrics and alerts (GET /api/fhir/subscriptions has it all). */
export interface SubscriptionStatus {
  input: string;
  subscription: string;
  /** Ranges of missed event numbers still owed. */
  owedGaps: number;
  /** When it was last heard from (ISO); absent: never. */
  lastHeardAt?: string;
  /** Its configured heartbeat period, seconds (0: none expected). */
  heartbeatPeriodSeconds: number;
}

/** Reads every subscription of the fhir-rest-hook inputs (their ingest, by input name). */
export function subscriptionStatuses(
  ingests: ReadonlyMap<string, { subscriptionStates(): Promise<Array<{ id: string; state: SubscriptionState }>> }>,
  inputs: readonly InstancePlan[],
): () => Promise<SubscriptionStatus[]> {
  const period = (input: string, id: string): number => {
    const config = inputs.find((i) => i.name === input && i.type === FHIR_REST_HOOK)?.config as unknown as FhirRestHookConfig | undefined;
    return config?.subscriptions.find((s) => s.id === id)?.heartbeatPeriodSeconds ?? 0;
  };
  return async () =>
    (
      await Promise.all(
        [...ingests].map(async ([input, ingest]) =>
          (await ingest.subscriptionStates()).map(({ id, state }) => ({
            input,
            subscription: id,
            owedGaps: state.owed?.gaps?.length ?? 0,
            ...(state.seen !== undefined ? { lastHeardAt: state.seen } : {}),
            heartbeatPeriodSeconds: period(input, id),
          })),
        ),
      )
    ).flat();
}
