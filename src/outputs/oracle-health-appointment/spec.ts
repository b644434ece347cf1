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
import type { InstanceCheckIssue } from '../../config/load.ts';
import type { JsonSchema } from '../../config/yaml.ts';
import { PermanentError, TransientError } from '../../errors.ts';
import { FhirRequestError, type FhirClient } from '../../fhir/client.ts';
import { fhirClientFor, type FhirServerConfig } from '../../fhir/server-config.ts';
import { AppointmentLookup, locate, planFor, versionConflict, writeBackFailure } from '../fhir-appointment/appointment.ts';
import { appointmentServerProperties } from '../fhir-appointment/spec.ts';
import type { OutboundAdapter, OutputDeps, OutputSpec } from '../spec.ts';
import { WRITE_BACK_ONLY, WriteBackDenial, WriteBackKind, WriteBackOutcome, writeBackOnlyAdapter, type WriteBackOperation, type WriteBackResult } from '../write-back.ts';

export const ORACLE_HEALTH_APPOINTMENT = 'oracle-health-appointment';

export interface OracleHealthAppointmentConfig {
  readonly name: string;
  readonly type: typeof ORACLE_HEALTH_APPOINTMENT;
  readonly server: FhirServerConfig;
}

export const oracleHealthAppointmentConfigSchema = {
  type: 'object',
  description:
    "Writes patients' answers back to Oracle Health Millennium R4 Appointments with JSON Patch (/patient-status accepted; /status cancelled + /cancelationReason), If-Match required.",
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
  summary: "Writes patients' answers to Oracle Health Millennium R4 Appointments (JSON Patch /patient-status, /status + /cancelationReason), If-Match.",
  configSchema: oracleHealthAppointmentConfigSchema,
  check,
  info: () => WRITE_BACK_ONLY,
  create: (config, deps) => createOracleHealthAppointment(config, deps),
};

/** The JSON Patch of an operation (Millennium's supported paths only). */
export function patchFor(op: WriteBackOperation): Array<Record<string, unknown>> {
  if (op.kind === WriteBackKind.Book) throw new PermanentError('book_not_supported', 'this output does not book slots');
  if (op.kind === WriteBackKind.Confirm) return [{ op: 'replace', path: '/patient-status', value: 'accepted' }];
  return [
    { op: 'replace', path: '/status', value: 'cancelled' },
    // Millennium takes one coding; the text, if any, is ignored.
    { op: 'add', path: '/cancelationReason', value: { coding: [{ system: op.reason.system, code: op.reason.code }] } },
  ];
}

export function createOracleHealthAppointment(config: OracleHealthAppointmentConfig, deps: OutputDeps): OutboundAdapter {
  const client: FhirClient = fhirClientFor(config.server, deps.secret, { maxRetries: 0 });

  const round = async (op: WriteBackOperation, signal: AbortSignal, again: boolean): Promise<WriteBackResult> => {
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

  return writeBackOnlyAdapter(config.name, (op, context) => round(op, context.signal, false), (error) => writeBackFailure(error, 'oracle', 423));
}
