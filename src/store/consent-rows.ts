// Consent ledger rows as both backends keep them (store.ts ConsentLedger): the row shapes read
// back, what triggers say about their patients, and the erasure of a trigger's personal fields.
// sqlite-consent.ts and postgres-consent.ts write them with their own SQL.
import { normalizeAddress } from '../pipeline/consent.ts';
import { hasPatient, type Channel, type ConsentAction, type ConsentEvent, type ConsentSource, type Purpose, type Trigger } from '../types.ts';
import type { DecisionRecord } from './store.ts';
import { unpackJson } from './packed-json.ts';

/** Most ids a merge group is followed to (a chain of A40s is short; this bounds a bad feed). */
export const MAX_GROUP = 64;

export interface EventRow {
  seq: number;
  patient_id: string | null;
  address: string | null;
  output: string | null;
  action: ConsentAction;
  purposes: string;
  channel: Channel | null;
  source: ConsentSource;
  method: string;
  at: string;
  policy_version: string;
  reference: string | null;
  recorded_at: string;
}

export function eventFromRow(r: EventRow): ConsentEvent {
  return {
    id: `ce-${r.seq}`,
    ...(r.patient_id !== null ? { patientId: r.patient_id } : {}),
    ...(r.address !== null ? { address: r.address } : {}),
    ...(r.output !== null ? { output: r.output } : {}),
    action: r.action,
    purposes: JSON.parse(r.purposes) as Purpose[],
    ...(r.channel !== null ? { channel: r.channel } : {}),
    source: r.source,
    method: r.method,
    at: r.at,
    policyVersion: r.policy_version,
    ...(r.reference !== null ? { reference: r.reference } : {}),
    recordedAt: r.recorded_at,
  };
}

/** The sequence number of a consent entry id (`ce-<seq>`); RangeError when it is not one. */
export function consentEventSeq(eventId: string): number {
  const seq = /^ce-(\d+)$/.exec(eventId)?.[1];
  if (seq === undefined) throw new RangeError(`"${eventId}" is not a consent entry id`);
  return Number(seq);
}

export interface DecisionRow {
  seq: number;
  delivery_id: string;
  patient_id: string;
  rule: string;
  purpose: Purpose;
  channel: Channel;
  output: string;
  result: DecisionRecord['result'];
  check_rule: number | null;
  reason: string | null;
  retry_at: string | null;
  /** Plain text, or packed (the embedded store: packed-json.ts PackedKind.Decision, a JSON string). */
  basis: string | Buffer;
  records: string;
  /** JSON text, or packed (the embedded store). */
  settings: string | Buffer;
  at: string;
}

export function decisionFromRow(r: DecisionRow): DecisionRecord {
  return {
    id: `dc-${r.seq}`,
    deliveryId: r.delivery_id,
    patientId: r.patient_id,
    rule: r.rule,
    purpose: r.purpose,
    channel: r.channel,
    output: r.output,
    result: r.result,
    ...(r.check_rule !== null ? { checkRule: r.check_rule } : {}),
    ...(r.reason !== null ? { reason: r.reason } : {}),
    ...(r.retry_at !== null ? { retryAt: r.retry_at } : {}),
    basis: typeof r.basis === 'string' ? r.basis : (JSON.parse(unpackJson(r.basis)) as string),
    records: JSON.parse(r.records) as string[],
    settings: JSON.parse(unpackJson(r.settings)) as Record<string, unknown>,
    at: r.at,
  };
}

/** What a set of triggers says about their patients (docs/consent.md rule 2). */
export interface PatientFactRows {
  /** Patient id → deceased (sticky: true once any trigger said so). */
  patients: Map<string, boolean>;
  /** Normalized address → patient ids. */
  contacts: Array<{ address: string; patientId: string }>;
  /** A40: merged-away id → surviving id. */
  links: Array<{ from: string; to: string }>;
}

/** The facts of `triggers`, each once. */
export function factsOf(triggers: readonly Trigger[]): PatientFactRows {
  const patients = new Map<string, boolean>();
  const contacts = new Map<string, { address: string; patientId: string }>();
  const links = new Map<string, { from: string; to: string }>();
  for (const t of triggers) {
    if (!hasPatient(t) || t.patient.id === '') continue;
    const id = t.patient.id;
    patients.set(id, (patients.get(id) ?? false) || t.patient.deceased === true);
    for (const point of t.patient.telecom ?? []) {
      if (typeof point?.value !== 'string' || point.value === '') continue;
      const address = normalizeAddress(point.value);
      if (address !== '' && address !== '+') contacts.set(JSON.stringify([address, id]), { address, patientId: id });
    }
    if (t.type === 'patient.merged') {
      for (const from of t.patient.mergedFrom ?? []) if (from.value && from.value !== id) links.set(JSON.stringify([from.value, id]), { from: from.value, to: id });
    }
  }
  return { patients, contacts: [...contacts.values()], links: [...links.values()] };
}

/** A trigger without the patient's personal fields (erasure): ids, types, times and status stay. */
export function withoutPersonalFields(t: Trigger): Trigger {
  if (!hasPatient(t)) return t;
  return {
    ...t,
    patient: { id: t.patient.id, identifiers: [{ value: t.patient.id }], deceased: t.patient.deceased, telecom: [] },
  };
}

/** A stored delivery JSON without the recipient and the payload (erasure). */
export function withoutRecipient(json: Record<string, unknown>): Record<string, unknown> {
  const { to: _to, ...rest } = json;
  return { ...rest, payload: {} };
}
