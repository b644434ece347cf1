// Reading a FHIR R4 Appointment for a write-back (https://hl7.org/fhir/R4/appointment.html),
// shared by the generic FHIR output (spec.ts) and the Oracle Health one: finding it, finding the
// patient's participant, and whether an operation still applies to it. Pure besides locate().
import { PermanentError, RateLimitedError, TransientError } from '../../errors.ts';
import { FhirRequestError, FhirUnavailableError, type FhirClient } from '../../fhir/client.ts';
import type { FhirResource } from '../../fhir/notification.ts';
import { WriteBackDenial, WriteBackKind, WriteBackOutcome, type WriteBackOperation, type WriteBackResult } from '../write-back.ts';

/** Appointment.status values an answer may still change (R4 value set appointmentstatus). */
const OPEN_STATUSES = new Set(['proposed', 'pending', 'booked', 'waitlist']);

/** How appointment.id finds the Appointment. */
export const AppointmentLookup = {
  /** appointment.id is the FHIR resource id (a FHIR input read it from this server). */
  Id: 'id',
  /** appointment.id is a business identifier (the filler id of an HL7 feed): a search by identifier. */
  Identifier: 'identifier',
} as const;
export type AppointmentLookup = (typeof AppointmentLookup)[keyof typeof AppointmentLookup];

export interface Participant {
  actor?: { reference?: string; type?: string; identifier?: { system?: string; value?: string } };
  status?: string;
  [key: string]: unknown;
}

/**
 * The index of the patient's participant: the one participant whose actor is a Patient, or —
 * when several are — the one whose reference id or identifier value is the patient's id or one
 * of their identifiers. Undefined when none can be told apart.
 */
export function patientParticipant(appointment: FhirResource, patient: WriteBackOperation['patient']): number | undefined {
  const participants = Array.isArray(appointment.participant) ? (appointment.participant as Participant[]) : [];
  const patients = participants
    .map((p, index) => ({ p, index }))
    .filter(({ p }) => p?.actor?.type === 'Patient' || /(^|\/)Patient\/[^/]+$/.test(p?.actor?.reference ?? ''));
  if (patients.length === 1) return patients[0]!.index;
  const ids = new Set([patient.id, ...patient.identifiers.map((i) => i.value)]);
  const matches = patients.filter(({ p }) => ids.has(p.actor?.reference?.replace(/^.*Patient\//, '') ?? '') || ids.has(p.actor?.identifier?.value ?? ''));
  return matches.length === 1 ? matches[0]!.index : undefined;
}

/** What an operation means for the appointment as it stands now. */
export type Plan =
  | { kind: 'done' }
  | { kind: 'denied'; code: string }
  | { kind: 'write'; participant?: number };

/**
 * Whether the operation applies to the appointment as read: done already, refused (a status the
 * patient's answer cannot change any more: arrived, fulfilled, cancelled, noshow…), or to write.
 */
export function planFor(appointment: FhirResource, op: WriteBackOperation): Plan {
  const status = typeof appointment.status === 'string' ? appointment.status : '';
  if (op.kind === WriteBackKind.Cancel) {
    if (status === 'cancelled') return { kind: 'done' };
    return OPEN_STATUSES.has(status) ? { kind: 'write' } : { kind: 'denied', code: `${WriteBackDenial.statusPrefix}${statusCode(status)}` };
  }
  if (!OPEN_STATUSES.has(status)) return { kind: 'denied', code: `${WriteBackDenial.statusPrefix}${statusCode(status)}` };
  const participant = patientParticipant(appointment, op.patient);
  if (participant === undefined) return { kind: 'denied', code: WriteBackDenial.NoPatientParticipant };
  const current = (appointment.participant as Participant[])[participant]!.status;
  return current === 'accepted' ? { kind: 'done' } : { kind: 'write', participant };
}

function statusCode(status: string): string {
  return /^[a-z-]{1,20}$/.test(status) ? status.replace(/-/g, '_') : 'unknown';
}

/**
 * The Appointment the operation is about, with the version to write against; undefined when the
 * server does not know it. By id: a read. By identifier: a search (one match, else undefined),
 * whose entry carries meta.versionId.
 */
export async function locate(
  client: FhirClient,
  lookup: AppointmentLookup,
  identifierSystem: string | undefined,
  appointment: WriteBackOperation['appointment'],
  signal: AbortSignal,
): Promise<{ resource: FhirResource; etag?: string } | undefined> {
  try {
    if (lookup === AppointmentLookup.Id) return await client.readForUpdate('Appointment', appointment.id, { signal });
    const found = await client.search('Appointment', { identifier: `${identifierSystem !== undefined ? `${identifierSystem}|` : ''}${appointment.id}` }, { maxPages: 1 });
    if (found.resources.length !== 1 || typeof found.resources[0]!.id !== 'string') return undefined;
    // The search gave the resource; a read gives the ETag to write against.
    return await client.readForUpdate('Appointment', found.resources[0]!.id, { signal });
  } catch (error) {
    if (error instanceof FhirRequestError && (error.status === 404 || error.status === 410)) return undefined;
    throw error;
  }
}

/** Whether a write failed on the version (someone changed the appointment since it was read). */
export function versionConflict(error: unknown, statuses: readonly number[]): boolean {
  return error instanceof FhirRequestError && error.status !== undefined && statuses.includes(error.status);
}

/**
 * The FHIR client's failures in write-back terms: 429 keeps its Retry-After as a
 * RateLimitedError, `lockedStatus` (Oracle's 423) is transient, 422 is the EHR refusing the
 * change as asked (denied), the rest keep their class.
 */
export function writeBackFailure(error: unknown, prefix: string, lockedStatus?: number): WriteBackResult {
  if (error instanceof FhirUnavailableError && error.status === 429) {
    throw new RateLimitedError(`${prefix}_rate_limited`, error.message, { retryAfterMs: error.retryAfterMs, cause: error });
  }
  if (error instanceof FhirRequestError && error.status !== undefined && error.status === lockedStatus) {
    throw new TransientError(`${prefix}_locked`, `${error.message}: the appointment is being changed by someone else`, { cause: error });
  }
  if (error instanceof FhirRequestError && error.status === 422) return { outcome: WriteBackOutcome.Denied, code: `${prefix}_unprocessable` };
  if (error instanceof FhirRequestError && (error.status === 404 || error.status === 410)) return { outcome: WriteBackOutcome.Denied, code: WriteBackDenial.NotFound };
  if (error instanceof Error) throw error;
  throw new PermanentError(`${prefix}_failed`, 'the write-back failed', { cause: error });
}
