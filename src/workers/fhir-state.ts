// A FHIR subscription's durable position (a store cursor, JSON): the event numbers handled,
// when it was last heard from, its numbering epochs (fhir-ingest.ts "Numbering restarts"),
// and the work it still owes — missed event numbers, a search, events stored before their
// triggers could be made — with the state of the background recovery that does it
// (fhir-recovery.ts). Pure functions over it; FhirIngest reads and writes it, and commits
// it with the records that change it.

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
  /** What the subscription still owes (absent: nothing); done in the background. */
  owed?: OwedWork;
  /** The background recovery while it fails (absent: not failing). */
  recovery?: RecoveryState;
}

/**
 * Work a subscription owes: what a notification could not do at once because the FHIR
 * server did not answer (or cannot give it), kept durably and done by the background
 * recovery, oldest kind first: missed events, then the search, then pending events.
 */
export interface OwedWork {
  /**
   * Event numbers of the current numbering never received, as inclusive ranges; `to` absent:
   * every number from `from` on (heartbeat silence). `after`: the time of the last event
   * before the gap, where a search starts when `$events` cannot give the events.
   */
  gaps?: OwedGap[];
  /**
   * A `_lastUpdated` search for what changed (empty payloads, gaps `$events` could not
   * fill): since `since`, or from each type's search cursor when absent.
   */
  search?: { since?: string };
  /** Control ids of events stored pending (store.ts PENDING_REASON): their triggers are owed. */
  events?: string[];
}

export interface OwedGap {
  from: number;
  to?: number;
  after?: string;
}

/** Failed recovery attempts in a row, and when the next one runs (ISO instants). */
export interface RecoveryState {
  attempts: number;
  nextAt: string;
  /** Reason code of the last failure (safe to log and show). */
  lastError: string;
  failingSince: string;
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

export function owesWork(state: SubscriptionState): boolean {
  const owed = state.owed;
  return owed !== undefined && ((owed.gaps?.length ?? 0) > 0 || owed.search !== undefined || (owed.events?.length ?? 0) > 0);
}

/** Adds missed numbers `from`…`to` (to absent: all from `from` on) unless already owed. */
export function oweGap(state: SubscriptionState, gap: OwedGap): void {
  const gaps = (state.owed ??= {}).gaps ?? [];
  const covered = gaps.some((g) => g.from <= gap.from && (g.to === undefined || (gap.to !== undefined && g.to >= gap.to)));
  if (!covered) gaps.push(gap);
  state.owed.gaps = gaps;
}

/**
 * Numbers that arrived after all (a late event, a resend) are no longer owed: bounded gaps
 * lose them, an open gap ends before the first of them (later ones are checked by their
 * numbering, as for any notification).
 */
export function settleNumbers(state: SubscriptionState, numbers: readonly number[]): void {
  const gaps = state.owed?.gaps;
  if (gaps === undefined || numbers.length === 0) return;
  let out: OwedGap[] = gaps;
  for (const n of [...new Set(numbers)].sort((a, b) => a - b)) {
    out = out.flatMap((g) => {
      if (n < g.from || (g.to !== undefined && n > g.to)) return [g];
      const parts: OwedGap[] = [];
      if (n > g.from) parts.push({ ...g, to: n - 1 });
      if (g.to !== undefined && n < g.to) parts.push({ ...g, from: n + 1 });
      return parts;
    });
  }
  state.owed!.gaps = out;
}

/** A search is owed since `since` (undefined: from each type's cursor); two merge to the earlier. */
export function oweSearch(state: SubscriptionState, since: string | undefined): void {
  const owed = (state.owed ??= {});
  const before = owed.search;
  if (before === undefined) owed.search = since === undefined ? {} : { since };
  else if (since !== undefined && (before.since === undefined || instantMs(since) < instantMs(before.since))) owed.search = { since };
}

export function oweEvent(state: SubscriptionState, controlId: string): void {
  const events = (state.owed ??= {}).events ?? [];
  if (!events.includes(controlId)) events.push(controlId);
  state.owed.events = events;
}

export function settleEvent(state: SubscriptionState, controlId: string): void {
  const events = state.owed?.events;
  if (events !== undefined) state.owed!.events = events.filter((k) => k !== controlId);
}

/** Drops what is done (empty lists; the whole record, and any recovery state, when nothing is left). */
export function tidyOwed(state: SubscriptionState): void {
  const owed = state.owed;
  if (owed?.gaps?.length === 0) delete owed.gaps;
  if (owed?.events?.length === 0) delete owed.events;
  if (!owesWork(state)) {
    delete state.owed;
    delete state.recovery;
  }
}
