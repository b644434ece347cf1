// The shared vocabulary of CareRelay. This module imports nothing (docs/architecture.md,
// dependency rule). Field names of Trigger are a contract: docs/trigger.md.

/** Normalized trigger types (docs/trigger.md "Types"). */
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
  // A patient's answer to a reminder that asked for one (pipeline/reply.ts): made by CareRelay
  // from the SMS reply, not by the EHR (docs/trigger.md "Answers").
  AppointmentConfirmed: 'appointment.confirmed',
  AppointmentCancelRequested: 'appointment.cancel_requested',
  AppointmentRescheduleRequested: 'appointment.reschedule_requested',
  // The waitlist (docs/waitlist.md): made by CareRelay when a freed slot is offered to a patient,
  // and from the patient's answer to that offer. Their `appointment` is the offered slot (its id
  // the offer's: one subject per offer), `waitlist` says which slot and which appointment it replaces.
  AppointmentWaitlistOffered: 'appointment.waitlist_offered',
  AppointmentWaitlistAccepted: 'appointment.waitlist_accepted',
  AppointmentWaitlistDeclined: 'appointment.waitlist_declined',
  AppointmentWaitlistTaken: 'appointment.waitlist_taken',
  // Time on a schedule that became free without an appointment to cancel (docs/trigger.md "Slots"):
  // SIU^S24 (notification of opened, "unblocked", schedule time slots) without a patient, a FHIR
  // Slot updated to `free`. About no patient: the waitlist offers it (waitlist.on); no rule plans from it.
  SlotFreed: 'slot.freed',
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

/**
 * A video visit, as far as rules and templates may know it (docs/video.md): the channel and
 * whether the sender gave join information. The vendor's join URL itself never enters a
 * trigger: the normalizers return it apart (VideoJoin) and the ingest stores it sealed.
 */
export interface TriggerVirtual {
  /** VirtualServiceDetail.channelType code (zoom, ms-teams, whatsapp, or the sender's own), or the HL7 input's `channel`. */
  channel?: string;
  /** True when the sender gave an https join URL (CareRelay can send its own link to it). */
  hasJoinInfo: boolean;
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
  /** Present for a video visit (docs/video.md); never holds the join URL. */
  virtual?: TriggerVirtual;
  /**
   * When the patient can come, for an appointment on a waitlist (status `waitlist`, docs/waitlist.md
   * "Sources"): FHIR Appointment.requestedPeriod; HL7 the waitlisted SIU's TQ1-7…TQ1-8 (else SCH-11.4…11.5).
   */
  requestedPeriod?: TimePeriod[];
}

/** A span of time; either end may be open. */
export interface TimePeriod {
  start?: string;
  end?: string;
}

/**
 * The join information of a video visit as an input read it (docs/video.md), returned by the
 * normalizers beside the triggers and never inside them. The ingest seals the URL and commits
 * it with the message; nothing else keeps it in clear.
 */
export interface VideoJoin {
  appointmentId: string;
  patientId: string;
  /** The event time it reflects: the appointment state's asOf (a late, older message never overrides it). */
  asOf: string;
  /** The vendor's https join URL; absent: the appointment has none now (a FHIR update that dropped it). */
  url?: string;
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
  /** `sms`: an answer made from a patient's SMS reply (docs/trigger.md "Answers"); `waitlist`: an offer or notice CareRelay made (docs/waitlist.md). */
  format: 'hl7v2' | 'fhir' | 'sms' | 'waitlist';
  sender: string;
  messageType: string;
  messageId: string;
}

/** The normalized trigger: the contract between inputs and rules (docs/trigger.md "Fields"). */
export interface Trigger {
  id: string;
  type: TriggerType;
  occurredAt: string;
  receivedAt: string;
  source: TriggerSource;
  /** The patient the event is about: every trigger has one but `slot.freed` (time freed on a schedule), which has none. */
  patient?: TriggerPatient;
  appointment?: TriggerAppointment;
  encounter?: TriggerEncounter;
  sensitivity?: string[];
  /** The answer an answer trigger carries (appointment.confirmed, cancel_requested, reschedule_requested, waitlist answers). */
  reply?: TriggerReply;
  /** Waitlist triggers only (appointment.waitlist_*): the offer, its slot and the appointment it would replace. */
  waitlist?: TriggerWaitlist;
  /** `slot.freed` only: the time that became free. */
  slot?: TriggerSlot;
}

/** A trigger about a patient: every type but `slot.freed`. */
export type PatientTrigger = Trigger & { patient: TriggerPatient };

/** Whether a trigger is about a patient (all but `slot.freed`). */
export function hasPatient(trigger: Trigger): trigger is PatientTrigger {
  return trigger.patient !== undefined;
}

/** Time on a schedule that became free (docs/trigger.md "Slots"). */
export interface TriggerSlot {
  /** FHIR Slot.id; HL7 SCH-2.1, else SCH-1.1, else the first resource's id (AIP-3, AIL-3). */
  id: string;
  /** FHIR Slot.status after the event: `free`. */
  status: string;
  start: string;
  end?: string;
  durationMinutes?: number;
  serviceType?: CodedValue;
  location?: LocationRef;
  practitioner?: PractitionerRef;
  /** FHIR Slot.schedule (`Schedule/<id>`). */
  schedule?: string;
}

/** What a waitlist trigger is about (docs/waitlist.md). Ids and times only. */
export interface TriggerWaitlist {
  /** The offer (also the trigger's appointment.id). */
  offer: string;
  /** The freed slot: `<appointment or slot id>@<start>`. */
  slot: string;
  /** 1 for the first wave of offers of the slot. */
  wave: number;
  /** ISO instant after which a yes no longer claims the slot. */
  expiresAt: string;
  /** The patient's own later appointment, cancelled (pat-swl) once the slot is booked for them. */
  current?: { id: string; start?: string; placerId?: string };
  /** Days the patient gains (current start − slot start), when both are known. */
  daysGained?: number;
}

/**
 * What an answer to a reminder asks for (pipeline/reply.ts). None of them is ever a direct
 * change by the patient: a confirmation or a cancellation is written back to the EHR through an
 * output (or left to staff), a reschedule is a link or a staff task.
 */
export const ReplyAction = {
  /** The patient will come: `appointment.confirmed`, written back as the patient participant `accepted`. */
  Confirm: 'confirm',
  /** The patient asks to cancel: `appointment.cancel_requested`, written back as `cancelled` (pat-crs). */
  Cancel: 'cancel',
  /** The patient asks for another time: `appointment.reschedule_requested`, a link or a staff task. */
  Reschedule: 'reschedule',
  /** A waitlist offer taken: `appointment.waitlist_accepted` when the yes claims the slot, else `appointment.waitlist_taken`. */
  Accept: 'accept',
  /** A waitlist offer turned down: `appointment.waitlist_declined`; the patient's appointment stands. */
  Decline: 'decline',
} as const;
export type ReplyAction = (typeof ReplyAction)[keyof typeof ReplyAction];
export const REPLY_ACTIONS: readonly ReplyAction[] = Object.values(ReplyAction);

/** What a patient answered, on the trigger made from the answer (docs/trigger.md "Answers"). */
export interface TriggerReply {
  action: ReplyAction;
  /** The offered answer it matched, as the rule lists it (e.g. "1", "YES"): never the patient's own text. */
  answer: string;
  /** The delivery that asked (its id): the reminder the patient answered. */
  prompt: string;
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

/** Consent purposes (docs/consent.md "Purposes"). */
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

/** The outcome of a consent/safety check (docs/architecture.md "Interfaces"). */
export type Decision =
  | { allow: true; basis: string }
  | { allow: false; reason: string; retryAt?: string };

/**
 * A marketing or CRM tool holds a contact of a patient (Store.recordContactHolding). The output
 * writes it before its first call naming the contact, so a crash after the tool took the contact
 * cannot leave it unrecorded; an opt-out recorded later is pushed to every output holding the
 * patient and to no other (docs/consent.md "Opt-outs").
 */
export interface ContactHolding {
  /** Output instance name. */
  output: string;
  patientId: string;
  /** What the tool knows the contact by, and its optOut needs: a lower-cased email address or a phone number. */
  contactKey: string;
  /** ISO instant of the first call naming the contact; recording it again keeps the first. */
  firstSentAt: string;
  /**
   * The tool's own id of the contact, once its API answered with one (HubSpot's contact id):
   * the tool's webhooks name the contact by it. Recording the holding again with a toolId sets it.
   */
  toolId?: string;
}

/** What an outbound adapter returns when the provider accepted a message. */
export interface Receipt {
  providerId?: string;
  acceptedAt: string;
  detail?: Record<string, unknown>;
}

/**
 * What a provider said about one delivery, recorded beside it (Store.addDeliveryReceipt): the
 * provider's id when it took the message, then what it reported later (status callbacks,
 * bounces). Statuses are an allow-list; provider codes are numbers or short codes, never text.
 */
export const ReceiptStatus = {
  /** Written by an adapter just before a non-idempotent create call (Twilio): if a crash
   * leaves it as the last word, the next attempt knows the call may have gone through. */
  Sending: 'sending',
  /** The call's outcome stayed unknown (timeout, reset, abort after the request left). */
  Unknown: 'unknown',
  /** The call was answered with a refusal: nothing was created. */
  Refused: 'refused',
  /** The provider took the message (`providerId` is its id). */
  Accepted: 'accepted',
  /** Provider callbacks (Twilio MessageStatus): handed to the carrier, delivered, not delivered, failed. */
  Sent: 'sent',
  Delivered: 'delivered',
  Undelivered: 'undelivered',
  Failed: 'failed',
  /** The recipient's mail server refused the address for good (SMTP 5xx to RCPT TO). */
  Bounced: 'bounced',
} as const;
export type ReceiptStatus = (typeof ReceiptStatus)[keyof typeof ReceiptStatus];
export const RECEIPT_STATUSES: readonly ReceiptStatus[] = Object.values(ReceiptStatus);

export interface DeliveryReceipt {
  deliveryId: string;
  /** Output instance name. */
  output: string;
  status: ReceiptStatus;
  /** The provider's message id (Twilio SM…, Communication/<id>…). */
  providerId?: string;
  /** The provider's error or answer code (Twilio ErrorCode, SMTP reply code); safe to log. */
  code?: string;
  /** The attempt that wrote it (adapter records); absent for provider callbacks. */
  attempt?: number;
  /** ISO instant. */
  at: string;
}

/** What a delivery is about; its identity is rule + subject (+ step). */
export const SubjectKind = {
  Appointment: 'appointment',
  Encounter: 'encounter',
  Patient: 'patient',
  /** An encounter trigger without encounter.id: only the trigger identifies it. */
  Trigger: 'trigger',
} as const;
export type SubjectKind = (typeof SubjectKind)[keyof typeof SubjectKind];

/**
 * One planned outbound message: one match of a mapping rule for a subject, made once when
 * the trigger is committed (docs/architecture.md invariant 2). Built by pipeline/route.ts; the
 * queue holds it until `dueAt`; consent and safety are checked again at send time.
 * Stored as JSON: every field survives a round trip.
 */
export interface Delivery {
  /**
   * Deterministic: `<rule id>@<subjectKey>#<step>`, e.g. `reminder-24h@appointment/A123#0`.
   * Never the trigger id, so a second `booked` for the same appointment gives the same id.
   * Contains no ':' (BullMQ job ids may not).
   */
  id: string;
  ruleId: string;
  /** `<kind>/<url-encoded id>`, e.g. `appointment/A123`, `encounter/V42`, `patient/MRN7`. */
  subjectKey: string;
  subjectKind: SubjectKind;
  subjectId: string;
  /** Index in the rule's cadence (`at:` list), 0 for a single-time rule. */
  step: number;
  patientId: string;
  triggerId: string;
  triggerType: TriggerType;
  /** The trigger's occurredAt: the event time this plan reflects (newer plans win). */
  asOf: string;
  /** The time the rule's `at` resolved to (ISO-8601 with the zone's offset). */
  plannedAt: string;
  /** When to send: plannedAt, or the routing time when plannedAt had already passed. */
  dueAt: string;
  /** Never send at or after this instant (reason `expired`). */
  expiresAt?: string;
  /** Variant id when the rule splits traffic. */
  variant?: string;
  purpose: Purpose;
  channel: Channel;
  /** Output connector instance name. */
  output: string;
  template?: string;
  /** Recipient address picked by the rule's `send.to` (absent: the send-time check says `no_address`). */
  to?: string;
  /**
   * The rule's template variant that names no one, used when the address is shared by several
   * patients (docs/consent.md rule 8); without one such a delivery is suppressed `shared_address`.
   */
  noNameTemplate?: string;
  /** The due time before a quiet-hours move made it earlier (pipeline/quiet-hours.ts). */
  quietHoursFrom?: string;
  /** Queue cancel keys: the delivery id, `<subjectKey>`, `patient/<id>`, and `<trigger type>@<subjectKey>` per cancelling type. */
  cancelKeys: string[];
  /** Only the trigger fields the rule's `send.fields` allow-list names (invariant 6). */
  payload: Record<string, unknown>;
}

/**
 * Why a delivery did not go (docs/consent.md reason codes, in rule order), plus the two codes
 * from a delivery's life (`expired`, `erased`). Safe to log: codes only.
 */
export const ConsentReason = {
  /** Rule 1: the appointment/encounter is no longer what the rule was for. */
  Stale: 'stale',
  /** Rule 2: the patient died (PID-29/30, Patient.deceased). */
  Deceased: 'deceased',
  /** Rule 2: an opt-out covers the channel (SMS keyword, unsubscribe link, admin, FHIR OPTOUT). */
  OptedOut: 'opted_out',
  /** Rule 2: the organisation's no-contact flag. */
  NoContact: 'no_contact',
  /** Rule 3: no consent record, and the default matrix denies. */
  NoConsent: 'no_consent',
  /** Rule 3: an active deny (a revocation, a Consent deny provision). */
  ConsentDenied: 'consent_denied',
  /** Rule 4: the output may not carry this purpose or this PHI. */
  DestinationNotCovered: 'destination_not_covered',
  /** Rule 5: within the window after sensitive care. */
  SensitiveWindow: 'sensitive_window',
  /** Rule 6: a tenant cap or the US exempt-SMS limit is reached. */
  FrequencyCap: 'frequency_cap',
  /** Rule 7: in quiet hours; moved to `retryAt`. */
  QuietHours: 'quiet_hours',
  /** Rule 8: no address for the channel. */
  NoAddress: 'no_address',
  /** Rule 8: the address is shared by several patients and the rule has no no-name variant. */
  SharedAddress: 'shared_address',
  /** It can no longer go out before its `expires`. */
  Expired: 'expired',
  /** The patient's data was erased. */
  Erased: 'erased',
} as const;
export type ConsentReason = (typeof ConsentReason)[keyof typeof ConsentReason];

/** What a consent ledger entry does (docs/consent.md rules 2–3). */
export const ConsentAction = {
  /** Permits a purpose on a channel. */
  Grant: 'grant',
  /** Denies a purpose on a channel (`consent_denied`). */
  Revoke: 'revoke',
  /** Stops a channel, or some purposes on it (`opted_out`). */
  OptOut: 'opt_out',
  /** START / UNSTOP: lifts what a keyword opt-out stopped for the number, nothing more. */
  OptIn: 'opt_in',
  /** The organisation's no-contact flag set (`no_contact`). */
  NoContact: 'no_contact',
  /** The no-contact flag cleared. */
  ContactAllowed: 'contact_allowed',
} as const;
export type ConsentAction = (typeof ConsentAction)[keyof typeof ConsentAction];

/** Where a consent ledger entry came from. */
export const ConsentSource = {
  Fhir: 'fhir',
  Admin: 'admin',
  Sms: 'sms',
  EmailLink: 'email-link',
  Import: 'import',
  /** What a provider reported about an address (opted out at the provider, a hard bounce). */
  Provider: 'provider',
} as const;
export type ConsentSource = (typeof ConsentSource)[keyof typeof ConsentSource];

/**
 * One entry of the consent ledger: a grant or revocation, an opt-out or its lifting, a
 * no-contact flag. Scoped to a patient (admin, FHIR, email link) or to an address (an SMS
 * keyword belongs to the number: docs/consent.md "Scope of an opt-out").
 */
export interface ConsentEvent {
  /** Store-assigned. */
  id: string;
  /** The patient it belongs to; absent for an SMS keyword (it belongs to the number). */
  patientId?: string;
  /** One address it is limited to (the number of a keyword; optional for grants). */
  address?: string;
  /**
   * For SMS keywords: the output (the sender's number) the keyword was sent to. For a tool's
   * report (source `provider`): the output it came through, never pushed back there.
   */
  output?: string;
  action: ConsentAction;
  /** The purposes it covers; empty = every purpose. */
  purposes: Purpose[];
  /** The channel it covers; absent = every channel. */
  channel?: Channel;
  source: ConsentSource;
  /** How it was given: `keyword:STOP`, `api`, `one-click`, `link`, `fhir`… (no patient data). */
  method: string;
  /** When it takes effect (ISO-8601 with offset): the latest applicable entry wins. */
  at: string;
  /** The policy version in force when it was recorded (policy.version). */
  policyVersion: string;
  /** What it refers to: a delivery id (email link), a message id (SMS), a Consent id. */
  reference?: string;
  /** When it was stored. */
  recordedAt: string;
}
