// The `oracle-health-appointment` output: writes a patient's answer back to an Oracle Health
// (Cerner) Millennium R4 Appointment the way its API documents it — JSON Patch, not a full
// update (Millennium Platform APIs, R4 "Appointment", operation "Patch an appointment",
// PATCH /Appointment/{ID}; fhir.cerner.com/millennium/r4/base/workflow/appointment/#patch):
//
//   confirm  [{ op: replace, path: /patient-status, value: accepted }] — accepted only on an
//            appointment with status `booked` whose Patient participant is `tentative`; any other
//            value or state is 422 Unprocessable Entity
//   cancel   [{ op: replace, path: /status, value: cancelled },
//             { op: add, path: /cancelationReason, value: { coding: [ one coding ] } }] — the
//            reason must come with the status; status changes follow Millennium's sequences
//            (proposed/booked/arrived/checked-in → cancelled)
//
// Headers: Content-Type application/json-patch+json, Accept application/fhir+json, and
// If-Match: W/"<current version>" — required (a PATCH without it is 412 Precondition Failed).
// The version comes from the ETag of a read; the 200 answer has an empty body and the new ETag.
// Documented errors: 409 Conflict for a stale version → read again and patch once more (a
// second 409 is denied `version_conflict` for staff); 423 Locked while someone else modifies
// the appointment → TransientError (the queue retries); 424 Failed Dependency → TransientError;
// 422 → denied `oracle_unprocessable`. Already done (Patient participant accepted, appointment
// cancelled) is applied without a write; a status the answer cannot change is denied
// `appointment_<status>` without one. 429 → RateLimitedError; timeouts/5xx → TransientError.
//
//   book     (a freed waitlist slot, docs/waitlist.md) the documented way to book on Millennium
//            — a Slot, then "Create an appointment" (POST /Appointment,
//            docs.oracle.com/en/industries/health/millennium-platform-apis/mfrap/op-appointment-post.html;
//            fhir.cerner.com/millennium/r4/base/workflow/appointment/#create): first the free Slot
//            of that time, "Search for Slots" (GET /Slot?service-type=<system|code>&start=ge<start>
//            &start=lt<start + 1 min>[&schedule.actor=Practitioner/<id>], service-type being
//            required without _id), the one starting exactly at the slot's start with status
//            `free`; then a create with status `booked`, `slot` exactly one reference to it and
//            `participant` exactly one — the Patient, status `accepted`, no `type` (Millennium's
//            rules for a booked create). 201 with the new id in Location and the version in ETag.
//            No free Slot at that time (someone else took it, or Millennium does not offer it to
//            FHIR: order-role appointment types are not bookable there) is denied
//            `slot_unavailable`, as a 409 on the create is; a slot without a service type,
//            `no_service`; 422, `oracle_unprocessable`. Millennium has no conditional create, so a
//            repeat (attempt 2 and later) first searches the patient's appointments at that
//            time (GET /Appointment?patient=<id>&date=ge…&date=lt…, date being required with
//            patient) and takes a `booked` one there as the booking already made.
import type { InstanceCheckIssue } from '../../config/load.ts';
import type { JsonSchema } from '../../config/yaml.ts';
import { PermanentError, TransientError } from '../../errors.ts';
import { FhirRequestError, type FhirClient } from '../../fhir/client.ts';
import type { FhirResource } from '../../fhir/notification.ts';
import { fhirClientFor, type FhirServerConfig } from '../../fhir/server-config.ts';
import { AppointmentLookup, locate, planFor, versionConflict, writeBackFailure } from '../fhir-appointment/appointment.ts';
import { appointmentServerProperties } from '../fhir-appointment/spec.ts';
import type { OutboundAdapter, OutputDeps, OutputSpec } from '../spec.ts';
import { WRITE_BACK_ONLY, WriteBackDenial, WriteBackKind, WriteBackOutcome, writeBackOnlyAdapter, type WriteBackContext, type WriteBackOperation, type WriteBackResult } from '../write-back.ts';

export const ORACLE_HEALTH_APPOINTMENT = 'oracle-health-appointment';

export interface OracleHealthAppointmentConfig {
  readonly name: string;
  readonly type: typeof ORACLE_HEALTH_APPOINTMENT;
  readonly server: FhirServerConfig;
}

export const oracleHealthAppointmentConfigSchema = {
  type: 'object',
  description:
    "Writes patients' answers back to Oracle Health Millennium R4 Appointments with JSON Patch (/patient-status accepted; /status cancelled + /cancelationReason), If-Match required; books waitlist slots (a free Slot, then a booked Appointment in it).",
  additionalProperties: false,
  required: ['name', 'type', 'server'],
  properties: {
    ...appointmentServerProperties,
    type: { const: ORACLE_HEALTH_APPOINTMENT, description: 'Output type: oracle-health-appointment.' },
  },
} as const satisfies JsonSchema;

function check(config: OracleHealthAppointmentConfig): InstanceCheckIssue[] {
  if (config.server.auth?.bearer !== undefined && config.server.auth.smart !== undefined) return [{ path: ['server', 'auth'], atKey: true, message: 'server.auth: give only one of bearer, smart' }];
  return [];
}

export const oracleHealthAppointmentSpec: OutputSpec<OracleHealthAppointmentConfig, OutputDeps> = {
  type: ORACLE_HEALTH_APPOINTMENT,
  summary: "Writes patients' answers to Oracle Health Millennium R4 Appointments (JSON Patch /patient-status, /status + /cancelationReason), If-Match; books waitlist slots (Slot search + create).",
  configSchema: oracleHealthAppointmentConfigSchema,
  check,
  info: () => ({ ...WRITE_BACK_ONLY, writeBackKinds: ORACLE_KINDS }),
  create: (config, deps) => createOracleHealthAppointment(config, deps),
};

/** Confirm, cancel, and booking a waitlist slot (Slot search + create). */
const ORACLE_KINDS = [...WRITE_BACK_ONLY.writeBackKinds, WriteBackKind.Book] as const;

type BookOperation = Extract<WriteBackOperation, { kind: 'book' }>;

/** The search window of a slot's start: [start, start + 1 minute) (Millennium takes ge/lt prefixes). */
function startWindow(start: string): [string, string] {
  const at = Date.parse(start);
  return [`ge${new Date(at).toISOString()}`, `lt${new Date(at + 60_000).toISOString()}`];
}

/** The Slot search of a booking (Millennium "Search for Slots": service-type and start required). */
export function slotSearchFor(op: BookOperation): Record<string, string | string[]> | undefined {
  const service = op.slot.serviceType;
  if (service === undefined) return undefined;
  return {
    'service-type': service.system !== undefined ? `${service.system}|${service.code}` : service.code,
    start: startWindow(op.slot.start),
    ...(op.slot.practitioner !== undefined ? { 'schedule.actor': `Practitioner/${op.slot.practitioner.id}` } : {}),
  };
}

/** The booked Appointment Millennium creates in a Slot (exactly one slot, exactly one Patient participant, accepted, no type). */
export function bookingFor(op: BookOperation, slotId: string): FhirResource {
  return {
    resourceType: 'Appointment',
    status: 'booked',
    slot: [{ reference: `Slot/${slotId}` }],
    participant: [{ actor: { reference: `Patient/${op.patient.id}` }, status: 'accepted' }],
  };
}

/** The JSON Patch of an operation (Millennium's supported paths only). */
export function patchFor(op: Exclude<WriteBackOperation, BookOperation>): Array<Record<string, unknown>> {
  if (op.kind === WriteBackKind.Confirm) return [{ op: 'replace', path: '/patient-status', value: 'accepted' }];
  return [
    { op: 'replace', path: '/status', value: 'cancelled' },
    // Millennium takes one coding; the text, if any, is ignored.
    { op: 'add', path: '/cancelationReason', value: { coding: [{ system: op.reason.system, code: op.reason.code }] } },
  ];
}

export function createOracleHealthAppointment(config: OracleHealthAppointmentConfig, deps: OutputDeps): OutboundAdapter {
  const client: FhirClient = fhirClientFor(config.server, deps.secret, { maxRetries: 0 });

  const book = async (op: BookOperation, context: WriteBackContext): Promise<WriteBackResult> => {
    const { signal } = context;
    const search = slotSearchFor(op);
    if (search === undefined) return { outcome: WriteBackOutcome.Denied, code: 'no_service' };
    const at = Date.parse(op.slot.start);
    const startsAt = (r: FhirResource) => typeof r.start === 'string' && Date.parse(r.start) === at;
    try {
      if (context.attempt > 1) {
        const mine = await client.search('Appointment', { patient: op.patient.id, date: startWindow(op.slot.start) }, { maxPages: 1 });
        const made = mine.resources.find((a) => a.status === 'booked' && startsAt(a));
        if (made !== undefined) return { outcome: WriteBackOutcome.Applied, unchanged: true, ...(typeof made.id === 'string' ? { appointmentId: made.id } : {}) };
      }
      const slots = await client.search('Slot', search, { maxPages: 1 });
      const free = slots.resources.find((r) => r.status === 'free' && startsAt(r) && typeof r.id === 'string');
      if (free === undefined) return { outcome: WriteBackOutcome.Denied, code: 'slot_unavailable' };
      const made = await client.create(bookingFor(op, String(free.id)), { signal });
      return { outcome: WriteBackOutcome.Applied, ...(typeof made.id === 'string' ? { appointmentId: made.id } : {}), ...(typeof made.meta?.versionId === 'string' ? { version: made.meta.versionId } : {}) };
    } catch (error) {
      // Taken between the search and the create.
      if (versionConflict(error, [409])) return { outcome: WriteBackOutcome.Denied, code: 'slot_unavailable' };
      return writeBackFailure(error, 'oracle', 423);
    }
  };

  const round = async (op: Exclude<WriteBackOperation, BookOperation>, signal: AbortSignal, again: boolean): Promise<WriteBackResult> => {
    const found = await locate(client, AppointmentLookup.Id, undefined, op.appointment, signal);
    if (!found) return { outcome: WriteBackOutcome.Denied, code: WriteBackDenial.NotFound };
    const plan = planFor(found.resource, op);
    if (plan.kind === 'done') return { outcome: WriteBackOutcome.Applied, unchanged: true, appointmentId: op.appointment.id };
    if (plan.kind === 'denied') return { outcome: WriteBackOutcome.Denied, code: plan.code };
    if (found.etag === undefined) throw new PermanentError('oracle_no_version', `read Appointment/${op.appointment.id}: the server gave no ETag or versionId to patch against`);
    try {
      const { etag } = await client.patch('Appointment', op.appointment.id, patchFor(op), { ifMatch: found.etag, signal });
      const version = /^(?:W\/)?"([^"]+)"$/.exec(etag ?? '')?.[1];
      return { outcome: WriteBackOutcome.Applied, appointmentId: op.appointment.id, ...(version !== undefined ? { version } : {}) };
    } catch (error) {
      // 409: the version read is stale (someone wrote since).
      if (versionConflict(error, [409])) return again ? { outcome: WriteBackOutcome.Denied, code: WriteBackDenial.VersionConflict } : round(op, signal, true);
      if (error instanceof FhirRequestError && error.status === 424) throw new TransientError('oracle_failed_dependency', `${error.message}: an operation the update needs failed on the server`, { cause: error });
      return writeBackFailure(error, 'oracle', 423);
    }
  };

  const adapter = writeBackOnlyAdapter(
    config.name,
    (op, context) => (op.kind === WriteBackKind.Book ? book(op, context) : round(op, context.signal, false)),
    (error) => writeBackFailure(error, 'oracle', 423),
  );
  return { ...adapter, writeBackKinds: ORACLE_KINDS };
}
