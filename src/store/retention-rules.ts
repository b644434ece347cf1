// What both stores' retention walks share (sqlite-retention.ts, postgres-retention.ts): the
// rules that keep a record whatever its age, and the positions a batch returns, the same on
// either store (store.ts RetentionKind, PruneBatch.next).
import { subjectKindOf } from '../pipeline/rule.ts';
import type { TriggerType } from '../types.ts';
import { PENDING_REASON } from './store.ts';

/** A message row as the walks read it. */
export interface RetainedMessage {
  id: number;
  received_ms: number;
  status: string;
  reason: string | null;
  replaced_by: number | null;
  /** Length of the bytes it still holds. */
  stored: number;
}

/** A trigger row as the `triggers` walk reads it. */
export interface RetainedTrigger {
  id: string;
  type: TriggerType;
  patient_id: string;
  appointment_id: string | null;
  encounter_id: string | null;
  routed_ms: number | null;
}

/** A message kept for a person, or not complete yet: never pruned by age. */
export function awaitsSomeone(m: Pick<RetainedMessage, 'status' | 'reason' | 'replaced_by'>): boolean {
  return (m.status === 'quarantined' && m.replaced_by === null) || (m.status === 'accepted' && m.reason === PENDING_REASON);
}

/** The subject key route.ts gives a trigger's deliveries (pipeline/route.ts subjectOf). */
export function subjectKeyOf(t: RetainedTrigger): string {
  const kind = subjectKindOf(t.type);
  const id = kind === 'appointment' ? t.appointment_id : kind === 'encounter' ? t.encounter_id : t.patient_id;
  return id === null || id === '' ? `trigger/${encodeURIComponent(t.id)}` : `${kind}/${encodeURIComponent(id)}`;
}

/** The parts of a position a kind returned (PruneOptions.after); a RangeError for any other. */
export function parsePosition(after: string | undefined, parts: number): string[] | undefined {
  if (after === undefined) return undefined;
  const values = after.split('\u0000');
  if (values.length !== parts) throw new RangeError(`prune: "${after}" is not a position this kind returned`);
  return values;
}

/** A position (PruneBatch.next) of its parts. */
export const position = (...values: Array<string | number>): string => values.join('\u0000');

/** When a staff task (its JSON) was created and done, for `staffTasks`. */
export function staffTaskTimes(json: string): { createdMs: number; doneMs?: number } {
  const task = JSON.parse(json) as { createdAt: string; doneAt?: string };
  return { createdMs: Date.parse(task.createdAt), ...(task.doneAt !== undefined ? { doneMs: Date.parse(task.doneAt) } : {}) };
}

/** A visit whose start is unknown (its state gone), or before the cutoff: over, its join may go (`videoJoins`). */
export function visitOver(start: string | null | undefined, beforeMs: number): boolean {
  return start == null || Date.parse(start) < beforeMs;
}

/**
 * The `waitlist` walk (store.ts RetentionKind): first the freed slots by (opened_ms, id) — a slot
 * opens before it starts, so every slot that started before the cutoff is found among those
 * opened before it —, then the later-appointments index by id (a batch that ends the slots goes
 * on into the index with what is left of its limit). Its position names the table.
 */
export const WaitlistWalk = { Slots: 'slots', Appointments: 'appointments' } as const;
export type WaitlistWalk = (typeof WaitlistWalk)[keyof typeof WaitlistWalk];

/** Where a `waitlist` batch starts: the table, and the last key seen in it. */
export function waitlistPosition(after: string | undefined): { walk: WaitlistWalk; ms: number; id: string } {
  const parts = parsePosition(after, 3);
  if (parts === undefined) return { walk: WaitlistWalk.Slots, ms: Number.MIN_SAFE_INTEGER, id: '' };
  const [walk, ms, id] = parts as [string, string, string];
  if ((walk !== WaitlistWalk.Slots && walk !== WaitlistWalk.Appointments) || !Number.isFinite(Number(ms))) throw new RangeError(`prune: "${after}" is not a position this kind returned`);
  return { walk, ms: Number(ms), id };
}
