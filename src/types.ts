// The shared vocabulary of CareRelay. This module imports nothing (ARCHITECTURE.md,
// dependency rule). Field names of Trigger are a contract: ../shared/design/TRIGGER.md.

/** Normalized trigger types (TRIGGER.md "Types"). */
export const TriggerType = {
  AppointmentBooked: 'appointment.booked',
  AppointmentRescheduled: 'appointment.rescheduled',
  AppointmentModified: 'appointment.modified',
  AppointmentCheckedIn: 'appointment.checked_in',
  AppointmentFulfilled: 'appointment.fulfilled',
  AppointmentCancelled: 'appointment.cancelled',
  AppointmentDeleted: 'appointment.deleted',
  AppointmentNoshow: 'appointment.noshow',
  EncounterPlanned: 'encounter.planned',
  EncounterStarted: 'encounter.started',
  EncounterTransferred: 'encounter.transferred',
  EncounterFinished: 'encounter.finished',
  EncounterCancelled: 'encounter.cancelled',
  EncounterDischargeCancelled: 'encounter.discharge_cancelled',
  PatientUpdated: 'patient.updated',
  PatientMerged: 'patient.merged',
} as const;
export type TriggerType = (typeof TriggerType)[keyof typeof TriggerType];
export const TRIGGER_TYPES: readonly TriggerType[] = Object.values(TriggerType);

export interface Identifier {
  value: string;
  system?: string;
  type?: string;
}

export interface ContactPoint {
  system: 'phone' | 'email';
  use: 'mobile' | 'home' | 'work' | 'other';
  value: string;
}

export interface HumanName {
  family?: string;
  given: string[];
}

export interface CodedValue {
  code: string;
  display?: string;
  system?: string;
}

export interface LocationRef {
  id: string;
  name?: string;
  facility?: string;
}

export interface PractitionerRef {
  id: string;
  name?: string;
}

export interface TriggerPatient {
  id: string;
  identifiers: Identifier[];
  name?: HumanName;
  birthDate?: string;
  gender?: 'male' | 'female' | 'other' | 'unknown';
  language?: string;
  deceased: boolean;
  telecom: ContactPoint[];
  mergedFrom?: Identifier[];
}

export interface TriggerAppointment {
  id: string;
  placerId?: string;
  status?: string;
  start?: string;
  end?: string;
  durationMinutes?: number;
  previousStart?: string;
  serviceType?: CodedValue;
  location?: LocationRef;
  practitioner?: PractitionerRef;
}

export interface TriggerEncounter {
  id?: string;
  status?: string;
  class?: string;
  start?: string;
  end?: string;
  location?: LocationRef;
  dischargeDisposition?: string;
}

export interface TriggerSource {
  format: 'hl7v2' | 'fhir';
  sender: string;
  messageType: string;
  messageId: string;
}

/** The normalized trigger: the contract between inputs and rules (TRIGGER.md "Fields"). */
export interface Trigger {
  id: string;
  type: TriggerType;
  occurredAt: string;
  receivedAt: string;
  source: TriggerSource;
  patient: TriggerPatient;
  appointment?: TriggerAppointment;
  encounter?: TriggerEncounter;
  sensitivity?: string[];
}

/** How a stored inbound message ended up (the admin API's `status`). */
export const MessageStatus = {
  /** Committed with its triggers (possibly zero, e.g. an ACK or a heartbeat). */
  Accepted: 'accepted',
  /** Parsed, but not a type CareRelay turns into triggers; acknowledged and kept. */
  Ignored: 'ignored',
  /** Refused with AR: the sender must not resend it as is. Raw bytes kept for review. */
  Rejected: 'rejected',
  /** Same sender + control id as an earlier message but different bytes. */
  Quarantined: 'quarantined',
} as const;
export type MessageStatus = (typeof MessageStatus)[keyof typeof MessageStatus];

/** HL7v2 acknowledgment codes, original (A*) and enhanced commit (C*) mode. */
export type AckCode = 'AA' | 'AE' | 'AR' | 'CA' | 'CE' | 'CR';

/** Consent purposes (CONSENT.md "Purposes"). */
export const Purpose = {
  CareLogistics: 'care.logistics',
  CareFollowup: 'care.followup',
  Survey: 'survey',
  ServiceInfo: 'service.info',
  Marketing: 'marketing',
  Research: 'research',
  Fundraising: 'fundraising',
} as const;
export type Purpose = (typeof Purpose)[keyof typeof Purpose];
export const PURPOSES: readonly Purpose[] = Object.values(Purpose);

export const Channel = {
  Sms: 'sms',
  Email: 'email',
  Webhook: 'webhook',
  Crm: 'crm',
  Fhir: 'fhir',
} as const;
export type Channel = (typeof Channel)[keyof typeof Channel];
export const CHANNELS: readonly Channel[] = Object.values(Channel);

/** The outcome of a consent/safety check (ARCHITECTURE.md "Interfaces"). */
export type Decision =
  | { allow: true; basis: string }
  | { allow: false; reason: string; retryAt?: string };

/** What an outbound adapter returns when the provider accepted a message. */
export interface Receipt {
  providerId?: string;
  acceptedAt: string;
  detail?: Record<string, unknown>;
}
