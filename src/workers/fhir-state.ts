// A FHIR subscription's durable position (a store cursor, JSON): the event numbers handled,
// when it was last heard from, and its numbering epochs (fhir-ingest.ts "Numbering
// restarts"). Pure functions over it; FhirIngest reads and writes it.

/** Durable per-subscription position (cursor value, JSON). */
export interface SubscriptionState {
  /** Highest event number handled (every number up to it handled or recovered). */
  n?: number;
  /** Time of the last event (notification timestamp, else when received): recovery searches start here. */
  at?: string;
  /** When CareRelay last heard from the subscription (any notification), ISO instant. */
  seen?: string;
  /** Last SubscriptionStatus.status. */
  status?: string;
  /** When the last silence recovery ran (silence is measured from here too). */
  recoveredAt?: string;
  /**
   * How many times the server restarted this subscription's event numbering (absent: never).
   * Events are stored under topicEventKey(subscription, number, epoch).
   */
  epoch?: number;
  /**
   * When each numbering after the first began: `epochStarts[k - 1]` is epoch k's restart
   * handshake Bundle.timestamp (the server's clock), null when it had none.
   */
  epochStarts?: Array<string | null>;
}


export function instantMs(value: string | undefined): number {
  const ms = value === undefined ? Number.NaN : Date.parse(value);
  return Number.isFinite(ms) ? ms : Number.NEGATIVE_INFINITY;
}

export function laterInstant(a: string | undefined, b: string | undefined): string | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return instantMs(b) > instantMs(a) ? b : a;
}

export function currentEpoch(state: SubscriptionState): number {
  return state.epoch ?? 0;
}

/**
 * The numbering a notification stamped `at` belongs to: the latest one that began at or
 * before the stamp. Without a stamp, or past a numbering whose start is unknown, the latest
 * one that can be told apart.
 */
export function epochOf(state: SubscriptionState, at: string | undefined): number {
  const epoch = currentEpoch(state);
  const stamped = at === undefined ? Number.NaN : Date.parse(at);
  if (epoch === 0 || !Number.isFinite(stamped)) return epoch;
  for (let k = epoch; k >= 1; k--) {
    const start = state.epochStarts?.[k - 1];
    if (start === undefined || start === null || stamped >= instantMs(start)) return k;
  }
  return 0;
}

/** Cursor keys in the store. */
export const cursorKeys = {
  subscription: (input: string, id: string) => `fhir:${input}:subscription:${id}`,
  search: (input: string, type: string) => `fhir:${input}:search:${type}`,
  poll: (input: string, type: string) => `fhir:${input}:poll:${type}`,
};
