// Turning a RouteResult into changes of stored deliveries, through the ordering rule of
// pipeline/route.ts (applyToDelivery). One implementation for the running server (the store,
// through a prefetched repository: workers/router.ts) and for mapping tests and dry-run
// replays (Maps: workers/simulate.ts), so both plan, move and cancel the same way.
//
// The repository is synchronous on purpose: the Simulator works in memory, and the router
// loads what one trigger can touch (ids of its plans and replans, deliveries holding its
// cancel keys) before applying, then writes the changed states in one transaction.
import {
  applyToDelivery,
  type DeliveryChange,
  type DeliveryOp,
  type DeliveryState,
  type UnchangedReason,
} from '../pipeline/route.ts';
import type { RouteResult } from '../pipeline/rule.ts';
import type { Delivery } from '../types.ts';

/** Where delivery states live while one route result is applied. */
export interface DeliveryRepository {
  get(id: string): DeliveryState | undefined;
  /** Every delivery carrying the cancel key (whatever its status). */
  byCancelKey(key: string): Iterable<DeliveryState>;
  /** Records a new state; called only when something changed. */
  put(state: DeliveryState, change: Exclude<DeliveryChange, 'unchanged'>, previous: DeliveryState | undefined): void;
}

/** What applying one op did to one delivery. */
export interface AppliedChange {
  op: DeliveryOp['kind'];
  change: DeliveryChange;
  /** Why nothing changed (codes only). */
  reason?: UnchangedReason;
  /** The delivery as it is now (or as the op proposed it, when none is stored). */
  delivery: Delivery;
  /** The state before the op; absent for a new delivery. */
  previous?: DeliveryState;
  /** The state after the op; absent when none exists (a replan of an unknown delivery). */
  state?: DeliveryState;
  /** For cancels: the cancelling trigger type, or "expired". */
  cause?: string;
}

/** Plans first, then replans, then cancels: the order route() lists them in. */
export function routeOps(result: RouteResult): DeliveryOp[] {
  return [
    ...result.deliveries.map((delivery) => ({ kind: 'plan' as const, delivery })),
    ...result.replans.map((delivery) => ({ kind: 'replan' as const, delivery })),
    ...result.cancels.map((order) => ({ kind: 'cancel' as const, order })),
  ];
}

/**
 * Applies every op of `result` to the repository and lists what happened, op by op (a
 * cancel gives one entry per delivery holding its key). A replan of a delivery that was
 * never planned is listed with reason `not_found`; callers that only report news skip it.
 */
export function applyRouteResult(result: RouteResult, repo: DeliveryRepository): AppliedChange[] {
  const changes: AppliedChange[] = [];
  for (const op of routeOps(result)) {
    if (op.kind === 'cancel') {
      const cause = op.order.reason === 'expired' ? 'expired' : op.order.triggerType;
      // Copied first: put() may change what the key reaches.
      for (const previous of [...repo.byCancelKey(op.order.key)]) {
        const { state, change, reason } = applyToDelivery(previous, op);
        if (state && change !== 'unchanged') repo.put(state, change, previous);
        changes.push({ op: 'cancel', change, delivery: (state ?? previous).delivery, previous, ...(state ? { state } : {}), ...(reason ? { reason } : {}), cause });
      }
      continue;
    }
    const previous = repo.get(op.delivery.id);
    const { state, change, reason } = applyToDelivery(previous, op);
    if (state && change !== 'unchanged') repo.put(state, change, previous);
    changes.push({
      op: op.kind,
      change,
      delivery: state?.delivery ?? op.delivery,
      ...(previous ? { previous } : {}),
      ...(state ? { state } : {}),
      ...(reason ? { reason } : {}),
    });
  }
  return changes;
}
