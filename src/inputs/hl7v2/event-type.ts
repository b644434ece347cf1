// MSH-9 trigger event → normalized trigger type (docs/trigger.md "Types", precedence list).
// The type comes from MSH-9.2 only, never from EVN-1: real feeds (and the GHH samples)
// send EVN-1 = A01 whatever the event.
import { TriggerType } from '../../types.ts';
import { AppointmentStatus } from './codes.ts';

/** SIU events whose meaning is fixed by the event itself. */
const SIU_BY_EVENT: Record<string, TriggerType> = {
  S15: TriggerType.AppointmentCancelled,
  S16: TriggerType.AppointmentCancelled,
  S17: TriggerType.AppointmentDeleted,
  S26: TriggerType.AppointmentNoshow,
  S13: TriggerType.AppointmentRescheduled,
  S12: TriggerType.AppointmentBooked,
};

/**
 * SIU events whose meaning the filler status decides: S14 (modification), S18–S22
 * (service/resource add, modify, cancel, discontinue, delete) and S23/S24 (slot
 * block/unblock) when they carry a patient ("or any SIU" in docs/trigger.md).
 */
const SIU_BY_STATUS = new Set(['S14', 'S18', 'S19', 'S20', 'S21', 'S22', 'S23', 'S24']);

/** SIU events that block or open slots: without a PID they are not about a patient. */
export const SIU_SLOT_EVENTS = new Set(['S23', 'S24']);

/**
 * The trigger type of an SIU event, given the FHIR status its filler status maps to
 * (fillerStatusToFhir). `modified` means "no status change": the running server turns it
 * into `rescheduled` when the start differs from the stored one (applyStoredState).
 * Undefined: not an SIU event CareRelay handles.
 */
export function siuTriggerType(event: string, fillerStatus: AppointmentStatus | undefined): TriggerType | undefined {
  const fixed = SIU_BY_EVENT[event];
  if (fixed !== undefined) return fixed;
  if (!SIU_BY_STATUS.has(event)) return undefined;
  switch (fillerStatus) {
    case AppointmentStatus.Arrived:
    case AppointmentStatus.CheckedIn:
      return TriggerType.AppointmentCheckedIn;
    case AppointmentStatus.Fulfilled:
      return TriggerType.AppointmentFulfilled;
    case AppointmentStatus.Cancelled:
      return TriggerType.AppointmentCancelled;
    case AppointmentStatus.EnteredInError:
      return TriggerType.AppointmentDeleted;
    case AppointmentStatus.Noshow:
      return TriggerType.AppointmentNoshow;
    default:
      return TriggerType.AppointmentModified;
  }
}

/**
 * Appointment.status after an SIU event: the event fixes it for cancel, delete and
 * no-show; otherwise the mapped filler status, and `booked` for S12/S13 without one.
 * Undefined when nothing says (S14 with an empty or unmapped filler status).
 */
export function siuAppointmentStatus(event: string, fillerStatus: AppointmentStatus | undefined): AppointmentStatus | undefined {
  switch (event) {
    case 'S15':
    case 'S16':
      return AppointmentStatus.Cancelled;
    case 'S17':
      return AppointmentStatus.EnteredInError;
    case 'S26':
      return AppointmentStatus.Noshow;
    case 'S12':
    case 'S13':
      return fillerStatus ?? AppointmentStatus.Booked;
    default:
      return fillerStatus;
  }
}

/** Marker for ADT^A10 (patient arriving): no trigger of its own, only the stateful check-in. */
export const ARRIVAL_ONLY = 'arrival' as const;

/**
 * The trigger type of an ADT event (docs/trigger.md: "by trigger event only"); A04 is
 * `encounter.planned` when PV1-2 = P. A10 gives no type of its own (ARRIVAL_ONLY).
 * Undefined: not an ADT event CareRelay handles.
 */
export function adtTriggerType(event: string, patientClass: string): TriggerType | typeof ARRIVAL_ONLY | undefined {
  switch (event) {
    case 'A01':
      return TriggerType.EncounterStarted;
    case 'A04':
      return patientClass.toUpperCase() === 'P' ? TriggerType.EncounterPlanned : TriggerType.EncounterStarted;
    case 'A02':
      return TriggerType.EncounterTransferred;
    case 'A03':
      return TriggerType.EncounterFinished;
    case 'A05':
    case 'A14':
      return TriggerType.EncounterPlanned;
    case 'A08':
    case 'A28':
    case 'A31':
      return TriggerType.PatientUpdated;
    case 'A11':
    case 'A27':
      return TriggerType.EncounterCancelled;
    case 'A13':
      return TriggerType.EncounterDischargeCancelled;
    case 'A34':
    case 'A35':
    case 'A36':
    case 'A39':
    case 'A40':
      return TriggerType.PatientMerged;
    case 'A10':
      return ARRIVAL_ONLY;
    default:
      return undefined;
  }
}

/**
 * Encounter.status after an ADT event (v2-to-fhir Event[EncounterStatus] where it agrees
 * with the trigger type: A04 gives in-progress, not planned, unless PV1-2 = P). A valued
 * PV1-45 means finished whatever the event — except for the cancel events, where a
 * discharge time left in PV1 is the one being undone. Undefined: the event says nothing
 * about the encounter (A08/A28/A31 without PV1-45, merges).
 */
export function adtEncounterStatus(event: string, type: TriggerType, dischargeValued: boolean): string | undefined {
  if (event === 'A11' || event === 'A27') return 'cancelled';
  if (event === 'A13') return 'in-progress';
  if (dischargeValued) return 'finished';
  switch (type) {
    case TriggerType.EncounterStarted:
    case TriggerType.EncounterTransferred:
      return 'in-progress';
    case TriggerType.EncounterPlanned:
      return 'planned';
    case TriggerType.EncounterFinished:
      return 'finished';
    default:
      return undefined;
  }
}
