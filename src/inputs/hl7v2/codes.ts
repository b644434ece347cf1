// Code tables the HL7v2 normalizer needs (docs/trigger.md, docs/hl7-fhir.md, v2-to-fhir concept maps).
import type { ContactPoint, TriggerPatient } from '../../types.ts';

/** PID-15.1 → lower-case ISO 639-1: the mapping every input shares. */
export { languageCode as language } from '../../normalized-values.ts';

/** FHIR Appointment.status codes CareRelay emits. */
export const AppointmentStatus = {
  Pending: 'pending',
  Waitlist: 'waitlist',
  Booked: 'booked',
  Arrived: 'arrived',
  CheckedIn: 'checked-in',
  Fulfilled: 'fulfilled',
  Cancelled: 'cancelled',
  EnteredInError: 'entered-in-error',
  Noshow: 'noshow',
} as const;
export type AppointmentStatus = (typeof AppointmentStatus)[keyof typeof AppointmentStatus];

/**
 * Filler status (HL7 table 0278 plus vendor values) → FHIR Appointment.status. Keys are
 * lower-case with spaces, dashes and underscores removed, so "Checked In", "CHECKED-IN"
 * and "checked_in" all match. Table 0278 per the v2-to-fhir FillerStatusCodes map;
 * Started → checked-in; vendor ARRIVED → arrived; Blocked/Overbook keep booked (docs/trigger.md).
 * Discontinued has no FHIR target in v2-to-fhir; the appointment will not take place, so
 * it reads as cancelled (docs/trigger.md: "Cancelled / Discontinued → cancelled").
 */
const FILLER_STATUS: Record<string, AppointmentStatus> = {
  pending: AppointmentStatus.Pending,
  waitlist: AppointmentStatus.Waitlist,
  booked: AppointmentStatus.Booked,
  blocked: AppointmentStatus.Booked,
  overbook: AppointmentStatus.Booked,
  started: AppointmentStatus.CheckedIn,
  checkedin: AppointmentStatus.CheckedIn,
  arrived: AppointmentStatus.Arrived,
  complete: AppointmentStatus.Fulfilled,
  completed: AppointmentStatus.Fulfilled,
  cancelled: AppointmentStatus.Cancelled,
  canceled: AppointmentStatus.Cancelled,
  discontinued: AppointmentStatus.Cancelled,
  deleted: AppointmentStatus.EnteredInError,
  noshow: AppointmentStatus.Noshow,
};

/** FHIR status for a filler status code, case-insensitively; undefined when unmapped ("Dc"). */
export function fillerStatusToFhir(code: string): AppointmentStatus | undefined {
  if (code === '') return undefined;
  let key = '';
  for (let i = 0; i < code.length; i++) {
    const c = code.charCodeAt(i);
    if (c === 32 || c === 45 || c === 95) continue; // space - _
    key += c >= 65 && c <= 90 ? String.fromCharCode(c + 32) : code.charAt(i);
  }
  return FILLER_STATUS[key];
}

/** PV1-2 patient class → FHIR Encounter.class code (v3 ActCode); other codes pass through. */
export function encounterClass(code: string): string {
  switch (code.toUpperCase()) {
    case 'E':
      return 'EMER';
    case 'I':
      return 'IMP';
    case 'O':
      return 'AMB';
    case 'P':
      return 'PRENC';
    default:
      return code;
  }
}

/** PID-8 → FHIR administrative gender: M, F; O/A/N → other; U, empty or unknown codes → unknown. */
export function gender(code: string): NonNullable<TriggerPatient['gender']> {
  switch (code.toUpperCase()) {
    case 'M':
      return 'male';
    case 'F':
      return 'female';
    case 'O':
    case 'A':
    case 'N':
      return 'other';
    default:
      return 'unknown';
  }
}


/**
 * XTN.2 telecommunication use (HL7 table 0201) → ContactPoint.use. PRN → home,
 * WPN → work, ORN → other (docs/trigger.md); VHN (vacation home) → home; PRS (personal,
 * typically a cell) → mobile; ASN, BPN, EMR → other. NET and unknown codes say nothing
 * about the use: undefined, so the field default (PID-13 home, PID-14 work) applies.
 */
export function telecomUse(code: string): ContactPoint['use'] | undefined {
  switch (code.toUpperCase()) {
    case 'PRN':
    case 'VHN':
      return 'home';
    case 'WPN':
      return 'work';
    case 'PRS':
      return 'mobile';
    case 'ORN':
    case 'ASN':
    case 'BPN':
    case 'EMR':
      return 'other';
    default:
      return undefined;
  }
}

/**
 * HL7 table 0396 coding-system names → the FHIR system URI, so a service coded in an SIU
 * and in a FHIR Appointment compare equal. Names not listed are kept as sent.
 */
const CODING_SYSTEMS: Record<string, string> = {
  SCT: 'http://snomed.info/sct',
  SNM: 'http://snomed.info/sct',
  LN: 'http://loinc.org',
  I10: 'http://hl7.org/fhir/sid/icd-10',
  I9: 'http://hl7.org/fhir/sid/icd-9-cm',
  I9C: 'http://hl7.org/fhir/sid/icd-9-cm',
  C4: 'http://www.ama-assn.org/go/cpt',
  CPT: 'http://www.ama-assn.org/go/cpt',
};

export function codingSystem(name: string): string {
  const mapped = CODING_SYSTEMS[name.toUpperCase()];
  if (mapped !== undefined) return mapped;
  // HL7nnnn → the v2 code system of table nnnn.
  if (name.length === 7 && name.startsWith('HL7') && /^\d{4}$/.test(name.slice(3))) {
    return `http://terminology.hl7.org/CodeSystem/v2-${name.slice(3)}`;
  }
  return name;
}
