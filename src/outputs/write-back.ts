// Writing to the EHR's schedule (docs/hl7-fhir.md "Write-back"): what an output that changes
// appointments is asked to do, and what it answers. Outputs with write-back implement
// OutboundAdapter.writeBack and declare the operations they perform (OutputInstanceInfo.writeBackKinds);
// a rule's `reply.writeBack` names one (pipeline/reply.ts), and the replies worker calls it
// from its own queue (workers/replies.ts), so retries, backoff and dead letters are the queue's.
//
//   operation ─▶ adapter.writeBack ─▶ applied (done, or already so)
//                                   ─▶ denied  (the EHR refused it as asked: a staff task)
//                                   ─▶ throws  (errors.ts classes: the queue retries or dead-letters;
//                                               a dead letter is a staff task too)
//
// One style per EHR interface: FHIR R4 update with If-Match (fhir-appointment), Oracle Health
// Millennium JSON Patch (oracle-health-appointment), HL7v2 SRM over MLLP (hl7v2-srm), a signed
// webhook to a scheduling system (webhook with writeBack: true).
//
// Operations are idempotent by nature (confirming twice leaves one confirmation, cancelling a
// cancelled appointment changes nothing) and carry a request id that is the same on every
// attempt (webhook-id, MSH-10), so an attempt whose outcome is unknown is retried.
//
// The kinds form a closed list that grows by one member per operation: `book` (a freed slot for
// a waitlist patient: FHIR create or $book, Millennium Slot + create, SRM^S01, a webhook) carries
// what it needs (the slot, the service, the patient) and returns the appointment it made in
// `appointmentId`; outputs declare it in `writeBackKinds` when they can (config/load.ts accepts
// only those as `waitlist.book`).
import { PermanentError } from '../errors.ts';
import type { Identifier } from '../types.ts';
import type { OutboundAdapter } from './spec.ts';

export const WriteBackKind = {
  /** The patient will come: FHIR patient participant `accepted`, SRM^S03, `carerelay.appointment.confirm`. */
  Confirm: 'confirm',
  /** The patient cancels: FHIR status `cancelled` + cancelationReason, SRM^S04, `carerelay.appointment.cancel`. */
  Cancel: 'cancel',
  /**
   * Book a freed slot for a waitlist patient (docs/waitlist.md "Booking styles"): FHIR create with
   * If-None-Exist or $book, Millennium Slot + create, SRM^S01, `carerelay.appointment.book`;
   * returns the appointment it made in `appointmentId`.
   */
  Book: 'book',
} as const;
export type WriteBackKind = (typeof WriteBackKind)[keyof typeof WriteBackKind];
export const WRITE_BACK_KINDS: readonly WriteBackKind[] = Object.values(WriteBackKind);

/** The appointment as CareRelay knows it (from the trigger the reminder was planned from). */
export interface WriteBackAppointment {
  /** appointment.id: the FHIR Appointment id, or the filler appointment id (SCH-2) of an HL7 feed. */
  readonly id: string;
  /** appointment.placerId (SCH-1): ARQ-1 of an SRM. */
  readonly placerId?: string;
  /** appointment.start as the reminder knew it. */
  readonly start?: string;
}

export interface WriteBackPatient {
  /** patient.id (the MRN, else the first identifier, else the FHIR resource id). */
  readonly id: string;
  readonly identifiers: readonly Identifier[];
}

/**
 * The reason a cancellation is written with: FHIR R4 appointment-cancellation-reason `pat-crs`,
 * "Patient: Canceled via automated reminder system"
 * (http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason).
 */
export const CANCELLED_BY_REMINDER = {
  system: 'http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason',
  code: 'pat-crs',
  display: 'Patient: Canceled via automated reminder system',
} as const;

/**
 * The reason the patient's later appointment is cancelled with once a waitlist slot is booked for
 * them: FHIR R4 appointment-cancellation-reason `pat-swl`, "Patient: Scheduled from Wait List".
 */
export const SCHEDULED_FROM_WAITLIST = {
  system: 'http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason',
  code: 'pat-swl',
  display: 'Patient: Scheduled from Wait List',
} as const;

/** A freed slot to book (the trigger that freed it: its time, service, practitioner, location). */
export interface WriteBackSlot {
  readonly start: string;
  /** The FHIR Slot that went free, when one did (a FHIR booking names it in Appointment.slot). */
  readonly fhirSlot?: string;
  readonly end?: string;
  readonly durationMinutes?: number;
  readonly serviceType?: { readonly code: string; readonly display?: string; readonly system?: string };
  readonly practitioner?: { readonly id: string; readonly name?: string };
  readonly location?: { readonly id: string; readonly name?: string };
}

interface OperationBase {
  /** The same on every attempt of this operation (the idempotency key: webhook-id, MSH-10…). */
  readonly requestId: string;
  readonly appointment: WriteBackAppointment;
  readonly patient: WriteBackPatient;
}

export type WriteBackOperation =
  | (OperationBase & { readonly kind: typeof WriteBackKind.Confirm })
  | (OperationBase & { readonly kind: typeof WriteBackKind.Cancel; readonly reason: { readonly system: string; readonly code: string; readonly display: string } })
  // `appointment` is the one that freed the slot (kept for the sender's records); `slot` is what to book.
  | (OperationBase & { readonly kind: typeof WriteBackKind.Book; readonly slot: WriteBackSlot });

export const WriteBackOutcome = {
  /** The EHR now holds what was asked (or already did: `unchanged`). */
  Applied: 'applied',
  /** The EHR refused it as asked (the appointment is no longer in a state that allows it, SRR AE/AR, 422…). */
  Denied: 'denied',
} as const;
export type WriteBackOutcome = (typeof WriteBackOutcome)[keyof typeof WriteBackOutcome];

export type WriteBackResult =
  | {
      readonly outcome: typeof WriteBackOutcome.Applied;
      /** True when the EHR already held it and nothing was written. */
      readonly unchanged?: boolean;
      /** The appointment written (a `book` returns the one it made). */
      readonly appointmentId?: string;
      /** The version the EHR gave the appointment (FHIR versionId / ETag), when it said. */
      readonly version?: string;
    }
  | {
      readonly outcome: typeof WriteBackOutcome.Denied;
      /** Why, as a code safe to log and to show staff (`appointment_fulfilled`, `hl7_ae`, `http_422`…). */
      readonly code: string;
    };

/**
 * What a write-back-only output declares (fhir-appointment, oracle-health-appointment,
 * hl7v2-srm): it sends no messages — no purposes, so pipeline/rule.ts refuses it in send.output
 * — and performs confirm and cancel, idempotently.
 */
export const WRITE_BACK_ONLY = { channel: 'fhir', baa: false, allowedPurposes: [], idempotent: true, writeBackKinds: [WriteBackKind.Confirm, WriteBackKind.Cancel] } as const;

export interface WriteBackContext {
  readonly signal: AbortSignal;
  /** 1 for the first attempt. */
  readonly attempt: number;
}

/** Reason codes write-back outputs deny with (safe to log; staff see them on the task). */
export const WriteBackDenial = {
  /** The appointment is in a status the operation cannot apply to (fulfilled, cancelled…): `appointment_<status>`. */
  statusPrefix: 'appointment_',
  /** The appointment names no patient participant CareRelay can tell is this patient. */
  NoPatientParticipant: 'no_patient_participant',
  /** Someone else changed the appointment twice while it was written: staff look at it. */
  VersionConflict: 'version_conflict',
  /** The EHR does not know the appointment. */
  NotFound: 'appointment_not_found',
} as const;

/**
 * The adapter of a write-back-only output: `writeBack` with failures passed through `failure`
 * (the output's own classification), and a send() that refuses (the rule compiler already keeps
 * rules from naming it in send.output).
 */
export function writeBackOnlyAdapter(
  name: string,
  writeBack: (op: WriteBackOperation, context: WriteBackContext) => Promise<WriteBackResult>,
  failure: (error: unknown) => WriteBackResult = (error) => {
    throw error;
  },
  close?: () => Promise<void>,
): OutboundAdapter {
  return {
    name,
    ...WRITE_BACK_ONLY,
    async send() {
      throw new PermanentError('not_a_message_output', `output "${name}" writes answers back and sends no messages`);
    },
    async writeBack(op, context) {
      try {
        return await writeBack(op, context);
      } catch (error) {
        return failure(error);
      }
    },
    ...(close ? { close } : {}),
  };
}
