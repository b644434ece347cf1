// The `fhir-appointment` output: writes a patient's answer back to a FHIR R4 server's Appointment
// (https://hl7.org/fhir/R4/appointment.html) through CareRelay's FHIR client (one base URL, no
// redirects, bearer or SMART backend-services auth with system/Appointment.rs and .u).
//
//   confirm  the patient's participant (Appointment.participant.actor = the Patient) gets
//            status `accepted` (participationstatus value set)
//   cancel   Appointment.status `cancelled` with cancelationReason `pat-crs` "Patient: Canceled
//            via automated reminder system" (appointment-cancellation-reason code system)
//
// Each is a read, then a version-aware update: PUT with If-Match: W/"<version>" (FHIR R4
// RESTful API §3.1.0.5 "Managing resource contention": a server whose version differs answers
// 412 Precondition Failed, some 409 Conflict). On 412/409 the appointment is read again and,
// when the operation still applies, written once more; a second conflict is denied
// (`version_conflict`) for staff to look at: two writers racing on one appointment twice in a
// row is not something to settle blindly. That one re-read is part of the optimistic-locking
// protocol, not a retry: transient failures are never retried here (the queue does).
//
//   book     (a freed slot for a waitlist patient, docs/waitlist.md) a create of a `booked`
//            Appointment (POST, R4 §3.1.0.8) for the slot's start/end, service type and
//            practitioner, with the patient participant `accepted`, made conditional with
//            If-None-Exist on an identifier CareRelay derives from the request id (§3.1.0.8.1): a
//            repeat after an ambiguous failure finds the one already made instead of a second.
//            409/412/422 (the server refuses: the slot is taken, the request is invalid for it)
//            is denied `slot_unavailable` / `fhir_unprocessable`.
//   book with `book: $book`: the Argonaut Scheduling IG operation `Appointment/$book`
//            (http://fhir.org/guides/argonaut/scheduling/OperationDefinition-appointment-book.html,
//            also the shape of IHE ITI Scheduling and Medplum): POST [base]/Appointment/$book with a
//            Parameters body — `appt-resource` the Appointment to book (status `proposed`, the same
//            time, service, participants and identifier as the create, participants
//            `needs-action`) and, with `appointments: id`, `patient-id` (`Patient/<id>`). The answer
//            (`return`) is a searchset Bundle holding the Appointment, `booked` when the server
//            accepted it and `cancelled` when it rejected it (denied `slot_unavailable`), maybe with
//            an OperationOutcome; a server answering the Appointment itself or a Parameters with
//            `return` is read the same way. The operation is not idempotent (its definition says
//            so): a repeat (attempt 2 and later, after a timeout, a lost connection or a 5xx whose
//            outcome is unknown) first searches `Appointment?identifier=<the booking's
//            identifier>`, and an appointment found booked there is the booking already made —
//            nothing is booked twice. 409/412 → `slot_unavailable`, 422 → `fhir_unprocessable`,
//            429 → RateLimitedError, 503 → TransientError, other 5xx/timeouts → AmbiguousError
//            (retried by the queue: the output is idempotent through that search).
//
// Already done (participant accepted, appointment cancelled): applied without a write. A status
// the answer cannot change (arrived, checked-in, fulfilled, noshow, entered-in-error; cancelled
// for a confirm) is denied `appointment_<status>`; an appointment without a participant that is
// the patient, `no_patient_participant`; an unknown one, `appointment_not_found`; 422, the
// server refusing the change, `fhir_unprocessable`. 429 → RateLimitedError with Retry-After;
// 408/5xx/timeouts → TransientError (the update is idempotent); other 4xx → PermanentError.
import type { InstanceCheckIssue } from '../../config/load.ts';
import type { JsonSchema } from '../../config/yaml.ts';
import { PermanentError } from '../../errors.ts';
import type { FhirClient } from '../../fhir/client.ts';
import type { FhirResource } from '../../fhir/notification.ts';
import { fhirClientFor, fhirServerSchema, type FhirServerConfig } from '../../fhir/server-config.ts';
import { outputNameSchema } from '../common.ts';
import type { OutboundAdapter, OutputDeps, OutputSpec } from '../spec.ts';
import { WRITE_BACK_ONLY, WriteBackDenial, WriteBackKind, WriteBackOutcome, writeBackOnlyAdapter, type WriteBackContext, type WriteBackOperation, type WriteBackResult } from '../write-back.ts';
import { AppointmentLookup, locate, planFor, versionConflict, writeBackFailure, type Participant } from './appointment.ts';

export const FHIR_APPOINTMENT = 'fhir-appointment';

/** How a `book` asks the server for the appointment. */
export const BookingStyle = {
  /** A conditional create of a `booked` Appointment (FHIR R4 §3.1.0.8.1). */
  Create: 'create',
  /** The Argonaut Scheduling `Appointment/$book` operation, for servers that define it. */
  Operation: '$book',
} as const;
export type BookingStyle = (typeof BookingStyle)[keyof typeof BookingStyle];

export interface FhirAppointmentConfig {
  readonly name: string;
  readonly type: typeof FHIR_APPOINTMENT;
  readonly server: FhirServerConfig;
  readonly appointments: AppointmentLookup;
  readonly identifierSystem?: string;
  readonly book?: BookingStyle;
}

/** The config keys the FHIR appointment outputs share (this one and oracle-health-appointment). */
export const appointmentServerProperties = {
  name: outputNameSchema,
  server: {
    ...fhirServerSchema,
    description: "The EHR's FHIR server holding the appointments (auth: bearer, or SMART backend services with system/Appointment.rs and system/Appointment.u).",
  },
} as const;

export const fhirAppointmentConfigSchema = {
  type: 'object',
  description: "Writes patients' answers back to FHIR R4 Appointments: the patient participant accepted, or the appointment cancelled (pat-crs); version-aware (If-Match).",
  additionalProperties: false,
  required: ['name', 'type', 'server'],
  properties: {
    ...appointmentServerProperties,
    type: { const: FHIR_APPOINTMENT, description: 'Output type: fhir-appointment.' },
    appointments: {
      enum: Object.values(AppointmentLookup),
      default: AppointmentLookup.Id,
      description:
        'How appointment.id finds the Appointment: id (it is the resource id: the appointments came from this FHIR server) or ' +
        'identifier (a search by identifier: they came from an HL7v2 feed, appointment.id being the filler appointment id).',
    },
    identifierSystem: {
      type: 'string',
      format: 'uri',
      description: 'With appointments: identifier, the system of the filler appointment ids (absent: the value alone is searched).',
    },
    book: {
      enum: Object.values(BookingStyle),
      default: BookingStyle.Create,
      description:
        'How a waitlist slot is booked: create (a conditional create of a booked Appointment) or $book (the Argonaut Scheduling Appointment/$book operation, for servers that define it; ' +
        'the server must keep the Appointment identifier CareRelay sends, which is how a repeat finds a booking already made).',
    },
  },
} as const satisfies JsonSchema;

function check(config: FhirAppointmentConfig): InstanceCheckIssue[] {
  const issues: InstanceCheckIssue[] = [];
  if (config.server.auth?.bearer !== undefined && config.server.auth.smart !== undefined) issues.push({ path: ['server', 'auth'], atKey: true, message: 'server.auth: give only one of bearer, smart' });
  if (config.identifierSystem !== undefined && config.appointments !== AppointmentLookup.Identifier) issues.push({ path: ['identifierSystem'], atKey: true, message: 'identifierSystem is used with appointments: identifier only' });
  return issues;
}

/** Confirm, cancel, and booking a waitlist slot. */
const FHIR_APPOINTMENT_KINDS = [...WRITE_BACK_ONLY.writeBackKinds, WriteBackKind.Book] as const;

type BookOperation = Extract<WriteBackOperation, { kind: 'book' }>;

/** The identifier system of the appointments CareRelay books (value: the booking's request id). */
export const BOOKING_IDENTIFIER_SYSTEM = 'urn:carerelay:waitlist-booking';

/**
 * The Appointment a `book` creates. Patient and practitioner are named by reference when the
 * appointments are this server's (`appointments: id`: the ids are resource ids), else by
 * identifier (logical references, R4 Reference.identifier: the ids came from an HL7 feed).
 */
export function bookingFor(op: BookOperation, lookup: AppointmentLookup, status: 'booked' | 'proposed' = 'booked'): FhirResource {
  const byId = lookup === AppointmentLookup.Id;
  const actor = (type: 'Patient' | 'Practitioner' | 'Location', id: string, display?: string) => ({
    ...(byId ? { reference: `${type}/${id}` } : { type, identifier: { value: id } }),
    ...(display !== undefined ? { display } : {}),
  });
  const { slot } = op;
  const participation = status === 'booked' ? 'accepted' : 'needs-action';
  const end = slot.end ?? (slot.durationMinutes !== undefined ? new Date(Date.parse(slot.start) + slot.durationMinutes * 60_000).toISOString() : undefined);
  return {
    resourceType: 'Appointment',
    identifier: [
      { system: BOOKING_IDENTIFIER_SYSTEM, value: op.requestId },
    ],
    status,
    ...(slot.serviceType !== undefined ? { serviceType: [{ coding: [{ ...(slot.serviceType.system !== undefined ? { system: slot.serviceType.system } : {}), code: slot.serviceType.code, ...(slot.serviceType.display !== undefined ? { display: slot.serviceType.display } : {}) }] }] } : {}),
    start: slot.start,
    ...(end !== undefined ? { end } : {}),
    ...(slot.durationMinutes !== undefined ? { minutesDuration: slot.durationMinutes } : {}),
    // The Slot that went free, when a FHIR Slot did (R4 Appointment.slot): a server that keeps
    // its schedule in Slots marks that one busy.
    ...(slot.fhirSlot !== undefined ? { slot: [{ reference: `Slot/${slot.fhirSlot}` }] } : {}),
    // A proposed appointment (for $book) waits on every participant; the create books it outright.
    participant: [
      { actor: actor('Patient', op.patient.id), status: participation },
      ...(slot.practitioner !== undefined ? [{ actor: actor('Practitioner', slot.practitioner.id, slot.practitioner.name), status: participation }] : []),
      ...(slot.location !== undefined ? [{ actor: actor('Location', slot.location.id, slot.location.name), status: participation }] : []),
    ],
  };
}

/** The search that finds the appointment a booking made (its identifier: the request id). */
export function bookingIdentifier(requestId: string): string {
  return `${BOOKING_IDENTIFIER_SYSTEM}|${requestId}`;
}

/** The `$book` request (Argonaut Scheduling OperationDefinition appointment-book: appt-resource, patient-id). */
export function bookParametersFor(op: BookOperation, lookup: AppointmentLookup): FhirResource {
  return {
    resourceType: 'Parameters',
    parameter: [
      { name: 'appt-resource', resource: bookingFor(op, lookup, 'proposed') },
      ...(lookup === AppointmentLookup.Id ? [{ name: 'patient-id', valueUri: `Patient/${op.patient.id}` }] : []),
    ],
  };
}

/** The Appointment a `$book` answered: in the `return` Bundle, a Parameters' `return`, or the answer itself. */
export function bookedAppointmentOf(answer: FhirResource): FhirResource | undefined {
  if (answer.resourceType === 'Appointment') return answer;
  if (answer.resourceType === 'Parameters' && Array.isArray(answer.parameter)) {
    const returned = (answer.parameter as Array<{ name?: unknown; resource?: FhirResource }>).find((p) => p?.name === 'return')?.resource;
    return returned !== undefined ? bookedAppointmentOf(returned) : undefined;
  }
  if (answer.resourceType === 'Bundle' && Array.isArray(answer.entry)) {
    const appointments = (answer.entry as Array<{ resource?: FhirResource }>).map((e) => e?.resource).filter((r): r is FhirResource => r?.resourceType === 'Appointment');
    return appointments.length === 1 ? appointments[0] : undefined;
  }
  return undefined;
}

/** Appointment statuses that mean a booking stands (R4 appointmentstatus). */
const BOOKED_STATUSES = new Set(['booked', 'arrived', 'checked-in', 'fulfilled']);

export const fhirAppointmentSpec: OutputSpec<FhirAppointmentConfig, OutputDeps> = {
  type: FHIR_APPOINTMENT,
  summary: "Writes patients' answers to FHIR R4 Appointments (participant accepted; cancelled with pat-crs), with If-Match.",
  configSchema: fhirAppointmentConfigSchema,
  check,
  info: () => ({ ...WRITE_BACK_ONLY, writeBackKinds: FHIR_APPOINTMENT_KINDS }),
  create: (config, deps) => createFhirAppointment(config, deps),
};

/** The appointment as it should be after the operation (a copy). */
export function applied(appointment: FhirResource, op: WriteBackOperation, participant: number | undefined): FhirResource {
  if (op.kind === WriteBackKind.Cancel) {
    return { ...appointment, status: 'cancelled', cancelationReason: { coding: [{ system: op.reason.system, code: op.reason.code, display: op.reason.display }], text: op.reason.display } };
  }
  const participants = (appointment.participant as Participant[]).map((p, i) => (i === participant ? { ...p, status: 'accepted' } : p));
  return { ...appointment, participant: participants };
}

export function createFhirAppointment(config: FhirAppointmentConfig, deps: OutputDeps): OutboundAdapter {
  // No retries inside: the queue retries (invariant 4).
  const client: FhirClient = fhirClientFor(config.server, deps.secret, { maxRetries: 0 });
  const lookup = config.appointments ?? AppointmentLookup.Id;

  /** One read-decide-write round; `again` after a version conflict. */
  const round = async (op: WriteBackOperation, signal: AbortSignal, again: boolean): Promise<WriteBackResult> => {
    const found = await locate(client, lookup, config.identifierSystem, op.appointment, signal);
    if (!found) return { outcome: WriteBackOutcome.Denied, code: WriteBackDenial.NotFound };
    const plan = planFor(found.resource, op);
    if (plan.kind === 'done') return { outcome: WriteBackOutcome.Applied, unchanged: true, appointmentId: String(found.resource.id) };
    if (plan.kind === 'denied') return { outcome: WriteBackOutcome.Denied, code: plan.code };
    try {
      const written = await client.update(applied(found.resource, op, plan.participant), { ...(found.etag !== undefined ? { ifMatch: found.etag } : {}), signal });
      return { outcome: WriteBackOutcome.Applied, appointmentId: String(found.resource.id), ...(typeof written.meta?.versionId === 'string' ? { version: written.meta.versionId } : {}) };
    } catch (error) {
      if (versionConflict(error, [409, 412])) {
        if (again) return { outcome: WriteBackOutcome.Denied, code: WriteBackDenial.VersionConflict };
        return round(op, signal, true);
      }
      return writeBackFailure(error, 'fhir');
    }
  };

  const bookedResult = (made: FhirResource, unchanged = false): WriteBackResult => ({
    outcome: WriteBackOutcome.Applied,
    ...(unchanged ? { unchanged } : {}),
    ...(typeof made.id === 'string' ? { appointmentId: made.id } : {}),
    ...(typeof made.meta?.versionId === 'string' ? { version: made.meta.versionId } : {}),
  });

  /** `$book`: a repeat first looks for the booking an earlier attempt may have made. */
  const bookByOperation = async (op: BookOperation, context: WriteBackContext): Promise<WriteBackResult> => {
    const { signal } = context;
    try {
      if (context.attempt > 1) {
        const found = await client.search('Appointment', { identifier: bookingIdentifier(op.requestId) }, { maxPages: 1 });
        const made = found.resources.find((a) => BOOKED_STATUSES.has(String(a.status)));
        if (made !== undefined) return bookedResult(made, true);
      }
      const answer = await client.operate('Appointment', '$book', bookParametersFor(op, lookup), { signal });
      const booked = bookedAppointmentOf(answer);
      if (booked?.status === 'cancelled') return { outcome: WriteBackOutcome.Denied, code: 'slot_unavailable' };
      if (booked === undefined || !BOOKED_STATUSES.has(String(booked.status))) {
        throw new PermanentError('fhir_invalid_response', `Appointment/$book: the answer holds no booked or cancelled Appointment (got ${answer.resourceType.slice(0, 40)})`);
      }
      return bookedResult(booked);
    } catch (error) {
      if (versionConflict(error, [409, 412])) return { outcome: WriteBackOutcome.Denied, code: 'slot_unavailable' };
      return writeBackFailure(error, 'fhir');
    }
  };

  const book = async (op: BookOperation, signal: AbortSignal): Promise<WriteBackResult> => {
    try {
      const made = await client.create(bookingFor(op, lookup), { ifNoneExist: `identifier=${encodeURIComponent(bookingIdentifier(op.requestId))}`, signal });
      return bookedResult(made);
    } catch (error) {
      // The server refuses the booking as asked: the slot is no longer free (409/412), or not bookable so (422).
      if (versionConflict(error, [409, 412])) return { outcome: WriteBackOutcome.Denied, code: 'slot_unavailable' };
      return writeBackFailure(error, 'fhir');
    }
  };

  const adapter = writeBackOnlyAdapter(
    config.name,
    (op, context) => {
      if (op.kind !== WriteBackKind.Book) return round(op, context.signal, false);
      return config.book === BookingStyle.Operation ? bookByOperation(op, context) : book(op, context.signal);
    },
    (error) => writeBackFailure(error, 'fhir'),
  );
  return { ...adapter, writeBackKinds: FHIR_APPOINTMENT_KINDS };
}
