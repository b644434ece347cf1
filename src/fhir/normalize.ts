// FHIR Appointment / Encounter / Patient → normalized triggers (docs/trigger.md, "FHIR source"
// column). Pure: no I/O, no clock. What the resource does not say (the status or start
// before this change) comes from the stored SubjectState the caller passes in; the states
// returned are what the caller stores for the next comparison.
//
// The same real-world event must give the same `type`, `appointment.*` and `patient.*` as
// the HL7v2 path, so the field rules below follow docs/trigger.md to the letter.
import { createHash } from 'node:crypto';
import { DateTime } from 'luxon';
import { PermanentError } from '../errors.ts';
import { languageCode, phoneValue, withoutControlCharacters } from '../normalized-values.ts';
import type { SubjectState } from '../store/store.ts';
import {
  TriggerType,
  type CodedValue,
  type ContactPoint,
  type HumanName,
  type Identifier,
  type LocationRef,
  type PractitionerRef,
  type TimePeriod,
  type Trigger,
  type TriggerSlot,
  type TriggerAppointment,
  type TriggerEncounter,
  type TriggerPatient,
  type VideoJoin,
} from '../types.ts';
import {
  referenceParts,
  resolveReference,
  topicEventKey,
  topicMessageId,
  NotificationType,
  type FhirCoding,
  type FhirResource,
  type Notification,
} from './notification.ts';
import { virtualServiceOf } from './virtual-service.ts';

export interface NormalizeContext {
  /** ISO-8601 instant with offset: when CareRelay received the message. */
  receivedAt: string;
  /** source.sender: the server base URL or the subscription id. */
  sender: string;
  /**
   * source.messageId: `<subscription id>#<event-number>` for topic notifications
   * (notification.ts topicMessageId), else `<Type>/<id>/_history/<versionId>` (resourceMessageId).
   */
  messageId: string;
  /**
   * What the trigger ids derive from when it is not messageId: a topic event's key after the
   * server restarted its event numbering (notification.ts topicEventKey), where messageId
   * (docs/trigger.md: subscription + event number) no longer tells the events apart.
   */
  eventKey?: string;
  /** The notification-event timestamp, when there is one. */
  occurredAt?: string;
  /** Bundle.timestamp: used for occurredAt after meta.lastUpdated (docs/trigger.md). */
  bundleTimestamp?: string;
  /** Stored state of this appointment/encounter (store.getSubjectState), if any. */
  previous?: SubjectState;
  /**
   * The Patient the resource refers to (from the Bundle or fetched). For a Patient with a
   * `replaced-by` link: the surviving Patient.
   */
  patient?: FhirResource;
  /** The Schedule a Slot belongs to (from the Bundle or fetched): its actors are the slot's practitioner and location. */
  schedule?: FhirResource;
  /** US Core Patient Data Feed `trigger` codings of the notification event. */
  triggerCodes?: FhirCoding[];
  /**
   * IANA zone of the sender (input setting, default UTC): a date-only Encounter period
   * becomes midnight there (docs/trigger.md "Precision").
   */
  timezone?: string;
}

export interface NormalizeResult {
  triggers: Trigger[];
  states: SubjectState[];
  /**
   * The video-visit join information of each Appointment read (docs/video.md), apart from the
   * triggers: the caller seals and stores it. A FHIR Appointment is whole, so one without a join
   * URL (or closed: cancelled, finished…) clears what was kept. Absent when none was read.
   */
  joins?: VideoJoin[];
}

/** A resource that parses but cannot give the trigger it should (docs/trigger.md "What is not a trigger"). */
export class FhirNormalizeError extends PermanentError {
  /** `Type/id` of the resource, for logs (no patient data). */
  readonly resource: string;

  constructor(resource: string, reason: string) {
    super('fhir_not_normalizable', `${resource}: ${reason}`);
    this.resource = resource;
  }
}

/** Resource types that can give triggers; other types give none (not an error). */
export const FhirTriggerResource = {
  Appointment: 'Appointment',
  Encounter: 'Encounter',
  Patient: 'Patient',
  /** Time on a schedule: a Slot updated to `free` is slot.freed (docs/trigger.md "Slots"). */
  Slot: 'Slot',
} as const;
export type FhirTriggerResource = (typeof FhirTriggerResource)[keyof typeof FhirTriggerResource];
export const TRIGGER_SOURCE_TYPES: readonly string[] = Object.values(FhirTriggerResource);

const V2_0203 = 'http://terminology.hl7.org/CodeSystem/v2-0203';
const V2_0003 = 'http://terminology.hl7.org/CodeSystem/v2-0003';
const BCP_47 = 'urn:ietf:bcp:47';

/**
 * Turns one Appointment, Encounter or Patient into zero or one trigger plus the subject
 * state to store. Zero triggers: an update that changes nothing relevant, or a resource
 * type that is not a trigger source. Throws FhirNormalizeError when a trigger is due but
 * cannot be built (no patient, no id, no status).
 */
export function normalizeFhir(resource: FhirResource, context: NormalizeContext): NormalizeResult {
  // No control characters in any string (normalized-values.ts), as from HL7.
  return withoutControlCharacters(normalizeResource(resource, context));
}

function normalizeResource(resource: FhirResource, context: NormalizeContext): NormalizeResult {
  switch (resource.resourceType) {
    case 'Appointment':
      return normalizeAppointment(resource as Appointment, context);
    case 'Encounter':
      return normalizeEncounter(resource as Encounter, context);
    case 'Patient':
      return normalizePatient(resource as Patient, context);
    case 'Slot':
      return normalizeSlot(resource as Slot, context);
    default:
      return { triggers: [], states: [] };
  }
}

/**
 * A deleted resource (history entry with method DELETE): an Appointment gives
 * appointment.deleted (docs/trigger.md "resource deleted"), carrying the stored start/end.
 * The Patient must be passed in context.patient (the stored state's data.patientReference
 * says which one). Other types give no trigger.
 */
export function normalizeFhirDeletion(reference: string, context: NormalizeContext): NormalizeResult {
  const parts = referenceParts(reference);
  if (!parts || parts.type !== 'Appointment') return { triggers: [], states: [] };
  const label = `Appointment/${parts.id}`;
  const previous = checkPrevious(context.previous, 'appointment', parts.id, label);
  if (previous?.status === AppointmentStatus.EnteredInError) return { triggers: [], states: [] };
  if (!context.patient) {
    throw new FhirNormalizeError(
      label,
      'deleted, but no patient in context: pass the Patient of the stored appointment as context.patient',
    );
  }
  const patient = patientFrom(context.patient, label);
  const occurredAt = context.occurredAt ?? context.bundleTimestamp ?? context.receivedAt;
  const appointment: TriggerAppointment = { id: parts.id, status: AppointmentStatus.EnteredInError };
  if (previous?.start !== undefined) appointment.start = previous.start;
  if (previous?.end !== undefined) appointment.end = previous.end;
  const trigger = buildTrigger(TriggerType.AppointmentDeleted, 'Appointment', occurredAt, context, patient);
  trigger.appointment = appointment;
  addSensitivity(trigger, securityCodes(context.patient));
  const state: SubjectState = {
    kind: 'appointment',
    id: parts.id,
    patientId: patient.id,
    status: AppointmentStatus.EnteredInError,
    asOf: occurredAt,
  };
  if (appointment.start !== undefined) state.start = appointment.start;
  if (appointment.end !== undefined) state.end = appointment.end;
  if (previous?.data) state.data = previous.data;
  const joins: VideoJoin[] = [{ appointmentId: parts.id, patientId: patient.id, asOf: occurredAt }];
  return withoutControlCharacters({ triggers: [trigger], states: [state], joins });
}

export interface NotificationNormalizeOptions {
  receivedAt: string;
  /** source.sender: the configured server base URL or the subscription id. */
  sender: string;
  /** Stored state of an appointment/encounter (prefetched: this function stays synchronous). */
  previous?: (kind: SubjectState['kind'], id: string) => SubjectState | undefined;
  /** Resources fetched from the configured server (id-only focus, patients not in the Bundle). */
  fetched?: Map<string, FhirResource>;
  /** The sender's IANA zone, for date-only times (NormalizeContext.timezone). */
  timezone?: string;
  /** Numbering epoch of the subscription's event numbers (notification.ts topicEventKey); default 0. */
  epoch?: number;
}

export interface NotificationNormalizeResult extends NormalizeResult {
  /**
   * References that must be fetched before this notification can give its triggers (the
   * focus of an id-only event, a Patient the Bundle does not include). When non-empty,
   * triggers and states are empty: fetch these, then call again with `fetched`.
   */
  missing: string[];
}

/**
 * Everything a notification body gives, in event order: one trigger per event focus (a
 * Patient only present as additional context gives none, docs/trigger.md). Handshakes,
 * heartbeats, status queries and empty payloads give nothing. States produced by an
 * earlier event feed the comparison of a later event about the same subject.
 */
export function normalizeNotification(
  notification: Notification,
  options: NotificationNormalizeOptions,
): NotificationNormalizeResult {
  const fetched = options.fetched ?? new Map<string, FhirResource>();
  const bundled = notification.kind === 'empty' ? new Map<string, FhirResource>() : notification.resources;
  const find = (ref: string) => resolveReference(bundled, ref) ?? resolveReference(fetched, ref);
  const states = new Map<string, SubjectState>();
  const previousOf = (kind: SubjectState['kind'], id: string) => states.get(`${kind}/${id}`) ?? options.previous?.(kind, id);
  const out: NotificationNormalizeResult = { triggers: [], states: [], missing: [] };
  const joins: VideoJoin[] = [];

  const run = (resource: FhirResource, base: Omit<NormalizeContext, 'previous' | 'patient'>): void => {
    // A contained (#id) reference resolves inside the resource (FHIR R4 §2.36.0.7.4); any
    // other inside the Bundle (fullUrl, urn:uuid: included) or among what was fetched.
    const lookup = (ref: string) => (ref.startsWith('#') ? containedResource(resource, ref) : find(ref));
    // A Slot's practitioner and location are its Schedule's actors: the Schedule is needed first.
    const scheduleRef = resource.resourceType === 'Slot' ? scheduleReferenceOf(resource) : undefined;
    const schedule = scheduleRef !== undefined ? lookup(scheduleRef) : undefined;
    if (scheduleRef !== undefined && schedule === undefined) {
      out.missing.push(scheduleRef);
      return;
    }
    const patientRef = patientReferenceOf(resource, (ref) => lookup(ref)?.resourceType);
    if (patientRef === undefined && resource.resourceType === 'Appointment') {
      // A participant that may be the patient but says neither its type nor resolves here
      // (a #contained or urn: reference the document does not define): that is what is missing.
      const unknown = untypedActors(resource).filter((ref) => /^(#|urn:)/i.test(ref) && lookup(ref) === undefined);
      if (unknown.length > 0) {
        out.missing.push(...unknown);
        return;
      }
    }
    const patient = patientRef !== undefined ? lookup(patientRef) : undefined;
    if (patientRef !== undefined && !patient) {
      out.missing.push(patientRef);
      return;
    }
    const kind = resource.resourceType === 'Appointment' ? 'appointment' : 'encounter';
    const context: NormalizeContext = { ...base };
    const previous = typeof resource.id === 'string' ? previousOf(kind, resource.id) : undefined;
    if (previous && resource.resourceType !== 'Patient') context.previous = previous;
    if (patient) context.patient = patient;
    if (schedule) context.schedule = schedule;
    const result = normalizeFhir(resource, context);
    collect(result);
  };
  const collect = (result: NormalizeResult): void => {
    out.triggers.push(...result.triggers);
    if (result.joins) joins.push(...result.joins);
    for (const state of result.states) {
      states.set(`${state.kind}/${state.id}`, state);
      out.states.push(state);
    }
  };

  if (notification.kind === 'resource') {
    run(notification.resource, {
      receivedAt: options.receivedAt,
      sender: options.sender,
      messageId: resourceMessageId(notification.resource),
      ...(options.timezone !== undefined ? { timezone: options.timezone } : {}),
    });
  } else if (
    notification.kind === 'topic' &&
    (notification.type === NotificationType.EventNotification || notification.type === NotificationType.QueryEvent)
  ) {
    for (const event of notification.events) {
      if (event.focus === undefined) continue; // empty payload: nothing to say yet
      const base: Omit<NormalizeContext, 'previous' | 'patient'> = {
        receivedAt: options.receivedAt,
        sender: options.sender,
        messageId: topicMessageId(notification.subscription, event.eventNumber),
        ...(options.timezone !== undefined ? { timezone: options.timezone } : {}),
      };
      if (options.epoch) base.eventKey = topicEventKey(notification.subscription, event.eventNumber, options.epoch);
      if (event.timestamp !== undefined) base.occurredAt = event.timestamp;
      if (notification.timestamp !== undefined) base.bundleTimestamp = notification.timestamp;
      if (event.triggers !== undefined) base.triggerCodes = event.triggers;
      const resource = find(event.focus);
      if (resource) {
        run(resource, base);
        continue;
      }
      if (notification.deleted.some((d) => sameReference(d, event.focus!))) {
        const parts = referenceParts(event.focus);
        const previous = parts ? previousOf('appointment', parts.id) : undefined;
        // Never seen: nothing was planned for it, and its patient is unknown.
        if (!previous) continue;
        const patientRef = typeof previous?.data?.patientReference === 'string' ? previous.data.patientReference : undefined;
        const patient = patientRef !== undefined ? find(patientRef) : undefined;
        if (patientRef !== undefined && !patient) {
          out.missing.push(patientRef);
          continue;
        }
        const context: NormalizeContext = { ...base, previous };
        if (patient) context.patient = patient;
        collect(normalizeFhirDeletion(event.focus, context));
        continue;
      }
      out.missing.push(event.focus);
    }
  }
  if (out.missing.length > 0) return { triggers: [], states: [], missing: [...new Set(out.missing)] };
  return joins.length > 0 ? { ...out, joins } : out;
}

function sameReference(a: string, b: string): boolean {
  if (a === b) return true;
  const x = referenceParts(a);
  const y = referenceParts(b);
  return x !== undefined && y !== undefined && x.type === y.type && x.id === y.id;
}

/** `<Type>/<id>/_history/<versionId>`; without versionId `<Type>/<id>@<lastUpdated>`, else `<Type>/<id>`. */
export function resourceMessageId(resource: FhirResource): string {
  const base = `${resource.resourceType}/${resource.id ?? ''}`;
  if (resource.meta?.versionId) return `${base}/_history/${resource.meta.versionId}`;
  if (resource.meta?.lastUpdated) return `${base}@${resource.meta.lastUpdated}`;
  return base;
}

/**
 * The Patient reference a caller must resolve (from the Bundle, or by fetching it) before
 * normalizing: Appointment Patient participant, Encounter.subject, or the surviving
 * patient of a Patient `replaced-by` link. Undefined when none is needed or none exists.
 */
export function patientReferenceOf(resource: FhirResource, typeOf?: (reference: string) => string | undefined): string | undefined {
  switch (resource.resourceType) {
    case 'Appointment':
      return patientParticipant(resource as Appointment, typeOf)?.reference;
    case 'Encounter': {
      const subject = (resource as Encounter).subject ?? (resource as Encounter).patient;
      return isObject(subject) && typeof subject.reference === 'string' ? subject.reference : undefined;
    }
    case 'Patient':
      return replacedBy(resource as Patient)?.reference;
    default:
      return undefined;
  }
}

/** Deterministic trigger id: the same (sender, messageId, type) always gives the same id. */
export function triggerId(sender: string, messageId: string, type: TriggerType): string {
  return createHash('sha256').update(JSON.stringify([sender, messageId, type])).digest('hex');
}

// --- FHIR R4 shapes read here (only the elements used; every one checked at run time) ----

interface Reference {
  reference?: string;
  type?: string;
  display?: string;
  identifier?: FhirIdentifier;
}
interface CodeableConcept {
  coding?: FhirCoding[];
  text?: string;
}
interface FhirIdentifier {
  use?: string;
  type?: CodeableConcept;
  system?: string;
  value?: string;
}
interface Period {
  start?: string;
  end?: string;
}
interface Appointment extends FhirResource {
  status?: string;
  serviceType?: Array<CodeableConcept & { concept?: CodeableConcept }>;
  appointmentType?: CodeableConcept;
  start?: string;
  end?: string;
  minutesDuration?: number;
  participant?: Array<{ actor?: Reference; status?: string }>;
  requestedPeriod?: Period[];
}
interface Encounter extends FhirResource {
  status?: string;
  class?: FhirCoding | CodeableConcept[];
  subject?: Reference;
  /** DSTU2 name of subject; tolerated. */
  patient?: Reference;
  period?: Period;
  /** R5 name of period; tolerated. */
  actualPeriod?: Period;
  hospitalization?: { dischargeDisposition?: CodeableConcept };
  admission?: { dischargeDisposition?: CodeableConcept };
  location?: Array<{ location?: Reference; status?: string }>;
}
interface Patient extends FhirResource {
  identifier?: FhirIdentifier[];
  name?: Array<{ use?: string; family?: string; given?: string[] }>;
  telecom?: Array<{ system?: string; value?: string; use?: string }>;
  gender?: string;
  birthDate?: string;
  deceasedBoolean?: boolean;
  deceasedDateTime?: string;
  communication?: Array<{ language?: CodeableConcept; preferred?: boolean }>;
  link?: Array<{ other?: Reference; type?: string }>;
}

const AppointmentStatus = {
  Proposed: 'proposed',
  Pending: 'pending',
  Booked: 'booked',
  Arrived: 'arrived',
  Fulfilled: 'fulfilled',
  Cancelled: 'cancelled',
  Noshow: 'noshow',
  EnteredInError: 'entered-in-error',
  CheckedIn: 'checked-in',
  Waitlist: 'waitlist',
} as const;

// --- Slot ----------------------------------------------------------------------------------

interface Slot extends FhirResource {
  status?: string;
  start?: string;
  end?: string;
  schedule?: Reference;
  serviceType?: Array<CodeableConcept & { concept?: CodeableConcept }>;
  appointmentType?: CodeableConcept;
}

/** Slot.schedule's reference, when it has one. */
function scheduleReferenceOf(resource: FhirResource): string | undefined {
  const schedule = (resource as Slot).schedule;
  return isObject(schedule) && typeof schedule.reference === 'string' && schedule.reference !== '' ? schedule.reference : undefined;
}

/**
 * A Slot updated to `free` (R4 Slot.status): time that became free with no appointment to cancel
 * — slot.freed, about no patient. A Slot first created free (meta.versionId 1) is availability
 * being published, not time freed: no trigger; nor is any other status. Without versionId the
 * update cannot be told from a creation, and counts as freed (the waitlist opens a slot once).
 * Practitioner and location come from the Schedule's actors (context.schedule).
 */
function normalizeSlot(res: Slot, context: NormalizeContext): NormalizeResult {
  const id = requireId(res);
  const label = `Slot/${id}`;
  const status = requireCode(res.status, label, 'status');
  if (status !== 'free' || res.meta?.versionId === '1') return { triggers: [], states: [] };
  const start = optionalString(res.start);
  if (start === undefined) throw new FhirNormalizeError(label, 'free, but without a start (Slot.start is required)');
  const end = optionalString(res.end);
  const slot: TriggerSlot = { id, status, start };
  if (end !== undefined) slot.end = end;
  const duration = durationMinutes(undefined, start, end);
  if (duration !== undefined) slot.durationMinutes = duration;
  const service = appointmentService(res as Appointment);
  if (service) slot.serviceType = service;
  const actors = isObject(context.schedule) && Array.isArray(context.schedule.actor) ? (context.schedule.actor as Reference[]) : [];
  const asParticipants = { participant: actors.map((actor) => ({ actor })) } as Appointment;
  const practitioner = participantOf(asParticipants, ['Practitioner', 'PractitionerRole']);
  if (practitioner) slot.practitioner = practitioner;
  const location = participantOf(asParticipants, ['Location']);
  if (location) slot.location = location;
  const schedule = scheduleReferenceOf(res);
  if (schedule !== undefined) slot.schedule = schedule;
  const trigger: Trigger = {
    id: triggerId(context.sender, context.eventKey ?? context.messageId, TriggerType.SlotFreed),
    type: TriggerType.SlotFreed,
    occurredAt: occurredAtOf(res, context),
    receivedAt: context.receivedAt,
    source: { format: 'fhir', sender: context.sender, messageType: 'Slot', messageId: context.messageId },
    slot,
  };
  return { triggers: [trigger], states: [] };
}

// --- Appointment -----------------------------------------------------------------------

/** Status → type when the status is new (docs/trigger.md FHIR column). */
const APPOINTMENT_STATUS_TYPE: Record<string, TriggerType | undefined> = {
  [AppointmentStatus.Booked]: TriggerType.AppointmentBooked,
  [AppointmentStatus.Pending]: TriggerType.AppointmentBooked,
  [AppointmentStatus.Arrived]: TriggerType.AppointmentCheckedIn,
  [AppointmentStatus.CheckedIn]: TriggerType.AppointmentCheckedIn,
  [AppointmentStatus.Fulfilled]: TriggerType.AppointmentFulfilled,
  [AppointmentStatus.Cancelled]: TriggerType.AppointmentCancelled,
  [AppointmentStatus.EnteredInError]: TriggerType.AppointmentDeleted,
  [AppointmentStatus.Noshow]: TriggerType.AppointmentNoshow,
};

/** Statuses after which changes to time, place or people are not news for the patient. */
const APPOINTMENT_CLOSED = new Set<string>([
  AppointmentStatus.Fulfilled,
  AppointmentStatus.Cancelled,
  AppointmentStatus.EnteredInError,
  AppointmentStatus.Noshow,
]);

function normalizeAppointment(res: Appointment, context: NormalizeContext): NormalizeResult {
  const id = requireId(res);
  const label = `Appointment/${id}`;
  const status = requireCode(res.status, label, 'status');
  const previous = checkPrevious(context.previous, 'appointment', id, label);
  const patientRef = patientParticipant(res);
  const patient = resolvePatient(patientRef, context, label, 'Patient participant');
  const occurredAt = occurredAtOf(res, context);

  const appointment: TriggerAppointment = { id, status };
  const start = optionalString(res.start);
  const end = optionalString(res.end);
  if (start !== undefined) appointment.start = start;
  if (end !== undefined) appointment.end = end;
  const duration = durationMinutes(res.minutesDuration, start, end);
  if (duration !== undefined) appointment.durationMinutes = duration;
  const serviceType = appointmentService(res);
  const location = participantOf(res, ['Location']);
  const practitioner = participantOf(res, ['Practitioner', 'PractitionerRole']);
  const video = virtualServiceOf(res);

  const compared: AppointmentCompare = {
    serviceType: serviceType ? codeKey(serviceType) : null,
    locationId: location?.id ?? null,
    practitionerId: practitioner?.id ?? null,
    virtual: video ? `${video.virtual.channel ?? ''}|${video.virtual.hasJoinInfo}` : null,
  };
  const startChanged =
    previous?.start !== undefined && start !== undefined && !sameInstant(previous.start, start);
  const type = appointmentType(status, previous, startChanged, compared);

  const data: Record<string, unknown> = { ...compared };
  if (patientRef?.reference) data.patientReference = patientRef.reference;
  const state: SubjectState = { kind: 'appointment', id, patientId: patient.id, status, asOf: occurredAt, data };
  if (start !== undefined) state.start = start;
  if (end !== undefined) state.end = end;
  // The join URL is kept while the appointment is open; the resource is whole, so an update
  // without one (or a closed appointment) clears it.
  const url = APPOINTMENT_CLOSED.has(status) ? undefined : video?.url;
  const joins: VideoJoin[] = [{ appointmentId: id, patientId: patient.id, asOf: occurredAt, ...(url !== undefined ? { url } : {}) }];
  if (type === undefined) return { triggers: [], states: [state], joins };

  if (type === TriggerType.AppointmentRescheduled) appointment.previousStart = previous!.start;
  if (serviceType) appointment.serviceType = serviceType;
  if (location) appointment.location = location;
  if (practitioner) appointment.practitioner = practitioner;
  if (video) appointment.virtual = video.virtual;
  const requested = requestedPeriods(res.requestedPeriod, context.timezone);
  if (requested.length > 0) appointment.requestedPeriod = requested;

  const trigger = buildTrigger(type, 'Appointment', occurredAt, context, patient);
  trigger.appointment = appointment;
  addSensitivity(trigger, [...securityCodes(res), ...securityCodes(context.patient)]);
  return { triggers: [trigger], states: [state], joins };
}

interface AppointmentCompare {
  /** `system|code` of the service, null when none. */
  serviceType: string | null;
  locationId: string | null;
  practitionerId: string | null;
  /** `<channel>|<hasJoinInfo>` of a video visit, null in person: a visit going online (or back) is news. */
  virtual: string | null;
}
const COMPARE_KEYS = ['serviceType', 'locationId', 'practitionerId', 'virtual'] as const;

function appointmentType(
  status: string,
  previous: SubjectState | undefined,
  startChanged: boolean,
  now: AppointmentCompare,
): TriggerType | undefined {
  // First sight of an appointment = created: booked, unless it is already in a state that
  // has its own type (an appointment first seen as cancelled is a cancellation).
  if (!previous) return APPOINTMENT_STATUS_TYPE[status] ?? TriggerType.AppointmentBooked;

  const before = previous.status;
  const checkIn = (s: string | undefined) => s === AppointmentStatus.Arrived || s === AppointmentStatus.CheckedIn;
  const statusChanged = before !== status && !(checkIn(before) && checkIn(status));
  if (statusChanged) {
    const byStatus = APPOINTMENT_STATUS_TYPE[status];
    // Same precedence as SIU: a status with its own meaning wins over a time change;
    // then a new start (rescheduled, with previousStart); then → booked/pending.
    if (byStatus !== undefined && byStatus !== TriggerType.AppointmentBooked) return byStatus;
    if (startChanged) return TriggerType.AppointmentRescheduled;
    return byStatus ?? TriggerType.AppointmentModified;
  }
  if (APPOINTMENT_CLOSED.has(status)) return undefined;
  if (startChanged) return TriggerType.AppointmentRescheduled;
  return relevantChange(previous.data, now) ? TriggerType.AppointmentModified : undefined;
}

/**
 * Service, location or practitioner changed against the stored state. A stored state
 * without these keys (written by another input) cannot be compared: the update counts as
 * a modification, as a stateless SIU^S14 does.
 */
function relevantChange(data: Record<string, unknown> | undefined, now: AppointmentCompare): boolean {
  const known = COMPARE_KEYS.filter((key) => data !== undefined && key in data);
  if (known.length === 0) return true;
  return known.some((key) => (data![key] ?? null) !== now[key]);
}

/**
 * The participant whose actor is a Patient. A reference that does not say its type
 * (`#contained`, `urn:uuid:` in a transaction Bundle) is typed by what it resolves to, when
 * the caller can resolve it (`typeOf`).
 */
function patientParticipant(res: Appointment, typeOf?: (reference: string) => string | undefined): Reference | undefined {
  if (!Array.isArray(res.participant)) return undefined;
  for (const p of res.participant) {
    if (!isObject(p) || !isObject(p.actor)) continue;
    const type = referenceType(p.actor) ?? (typeof p.actor.reference === 'string' ? typeOf?.(p.actor.reference) : undefined);
    if (type === 'Patient') return p.actor;
  }
  return undefined;
}

/** References of Appointment participants that do not say their type. */
function untypedActors(resource: FhirResource): string[] {
  const participants = Array.isArray(resource.participant) ? (resource.participant as unknown[]) : [];
  return participants
    .map((p) => (isObject(p) && isObject(p.actor) ? (p.actor as Reference) : undefined))
    .filter((actor): actor is Reference => actor !== undefined && referenceType(actor) === undefined && typeof actor.reference === 'string')
    .map((actor) => actor.reference!);
}

/** The resource a `#id` reference names among `resource.contained`. */
function containedResource(resource: FhirResource, reference: string): FhirResource | undefined {
  if (!Array.isArray(resource.contained)) return undefined;
  const id = reference.slice(1);
  return (resource.contained as unknown[]).find(
    (c): c is FhirResource => isObject(c) && typeof c.resourceType === 'string' && c.id === id,
  );
}

/** The first participant whose actor is of the first type found (types in preference order). */
function participantOf(res: Appointment, types: readonly string[]): (LocationRef & PractitionerRef) | undefined {
  if (!Array.isArray(res.participant)) return undefined;
  for (const type of types) {
    for (const p of res.participant) {
      if (!isObject(p) || !isObject(p.actor) || referenceType(p.actor) !== type) continue;
      const id = referenceId(p.actor);
      if (id === undefined) continue;
      const out: LocationRef & PractitionerRef = { id };
      if (typeof p.actor.display === 'string' && p.actor.display !== '') out.name = p.actor.display;
      return out;
    }
  }
  return undefined;
}

/** serviceType, else appointmentType (docs/trigger.md). R5 serviceType is a CodeableReference. */
function appointmentService(res: Appointment): CodedValue | undefined {
  if (Array.isArray(res.serviceType)) {
    for (const st of res.serviceType) {
      if (!isObject(st)) continue;
      const coded = codedValue(isObject(st.concept) ? st.concept : st);
      if (coded) return coded;
    }
  }
  return codedValue(res.appointmentType);
}

function codedValue(concept: unknown): CodedValue | undefined {
  const coding = codingsIn(concept)[0];
  if (!coding || !isObject(concept)) return undefined;
  const out: CodedValue = { code: coding.code! };
  const display = coding.display ?? (typeof concept.text === 'string' ? concept.text : undefined);
  if (display) out.display = display;
  if (coding.system) out.system = coding.system;
  return out;
}

function codeKey(c: CodedValue): string {
  return `${c.system ?? ''}|${c.code}`;
}

/**
 * FHIR dateTime of an encounter period. With a time it carries its offset (FHIR requires
 * one) and is kept as given; a date (YYYY, YYYY-MM or YYYY-MM-DD) becomes midnight of its
 * first day in the sender's zone, like HL7 date-only times.
 */
function encounterTime(value: string | undefined, zone = 'UTC'): string | undefined {
  if (value === undefined || value.includes('T')) return value;
  const m = /^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?$/.exec(value);
  if (m === null) return undefined;
  const local = DateTime.fromObject({ year: Number(m[1]), month: Number(m[2] ?? 1), day: Number(m[3] ?? 1) }, { zone });
  return local.isValid ? local.toISO({ suppressMilliseconds: true, includeOffset: true })!.replace(/Z$/, '+00:00') : undefined;
}

/**
 * Appointment.requestedPeriod (R4: "a set of date ranges … that the appointment is preferred to be
 * scheduled within", what a waitlist entry waits for): each Period with a start or an end; a
 * date-only end means the whole day (the next midnight in the sender's zone).
 */
function requestedPeriods(periods: unknown, zone?: string): TimePeriod[] {
  if (!Array.isArray(periods)) return [];
  const out: TimePeriod[] = [];
  for (const p of periods as Period[]) {
    if (!isObject(p)) continue;
    const start = encounterTime(optionalString(p.start), zone);
    const endValue = optionalString(p.end);
    let end = encounterTime(endValue, zone);
    if (end !== undefined && endValue !== undefined && !endValue.includes('T')) end = DateTime.fromISO(end, { setZone: true }).plus({ days: 1 }).toISO({ suppressMilliseconds: true })!.replace(/Z$/, '+00:00');
    if (start !== undefined || end !== undefined) out.push({ ...(start !== undefined ? { start } : {}), ...(end !== undefined ? { end } : {}) });
  }
  return out;
}

/** minutesDuration, else end − start rounded to the minute (only for times, not dates). */
function durationMinutes(minutes: unknown, start?: string, end?: string): number | undefined {
  if (typeof minutes === 'number' && Number.isFinite(minutes) && minutes >= 0) return Math.round(minutes);
  if (!start || !end || !start.includes('T') || !end.includes('T')) return undefined;
  const ms = Date.parse(end) - Date.parse(start);
  return Number.isFinite(ms) && ms >= 0 ? Math.round(ms / 60_000) : undefined;
}

// --- Encounter -------------------------------------------------------------------------

/** R4 statuses in which the patient is there (R5 on-hold tolerated). */
const ENCOUNTER_ACTIVE = new Set(['arrived', 'triaged', 'in-progress', 'onleave', 'on-hold']);
/** R4 finished; R5 completed/discharged tolerated. */
const ENCOUNTER_FINISHED = new Set(['finished', 'completed', 'discharged']);
const ENCOUNTER_CANCELLED = new Set(['cancelled', 'entered-in-error']);

function normalizeEncounter(res: Encounter, context: NormalizeContext): NormalizeResult {
  const id = requireId(res);
  const label = `Encounter/${id}`;
  const status = requireCode(res.status, label, 'status');
  const previous = checkPrevious(context.previous, 'encounter', id, label);
  const subject = isObject(res.subject) ? res.subject : isObject(res.patient) ? res.patient : undefined;
  if (subject && referenceType(subject) !== undefined && referenceType(subject) !== 'Patient') {
    throw new FhirNormalizeError(label, `subject is a ${referenceType(subject)}, not a Patient`);
  }
  const patient = resolvePatient(subject, context, label, 'subject');
  const occurredAt = occurredAtOf(res, context);

  const encounter: TriggerEncounter = { id, status };
  const klass = encounterClass(res.class);
  if (klass !== undefined) encounter.class = klass;
  const period = isObject(res.period) ? res.period : isObject(res.actualPeriod) ? res.actualPeriod : undefined;
  const start = encounterTime(optionalString(period?.start), context.timezone);
  const end = encounterTime(optionalString(period?.end), context.timezone);
  if (start !== undefined) encounter.start = start;
  if (end !== undefined) encounter.end = end;
  const location = currentLocation(res);
  if (location) encounter.location = location;
  const hospitalization = isObject(res.hospitalization) ? res.hospitalization : isObject(res.admission) ? res.admission : undefined;
  const disposition = codedValue(hospitalization?.dischargeDisposition);
  if (disposition) encounter.dischargeDisposition = disposition.code;

  const type = encounterType(status, previous, location?.id, context.triggerCodes);

  // Sensitivity sticks to the encounter even when later messages omit it (docs/consent.md).
  const stuck = Array.isArray(previous?.data?.sensitivity) ? (previous.data.sensitivity as unknown[]) : [];
  const sensitivity = dedupe([
    ...stuck.filter((s): s is string => typeof s === 'string'),
    ...securityCodes(res),
    ...securityCodes(context.patient),
  ]);

  const data: Record<string, unknown> = { locationId: location?.id ?? null };
  if (subject?.reference) data.patientReference = subject.reference;
  if (sensitivity.length > 0) data.sensitivity = sensitivity;
  const state: SubjectState = { kind: 'encounter', id, patientId: patient.id, status, asOf: occurredAt, data };
  if (start !== undefined) state.start = start;
  if (end !== undefined) state.end = end;
  if (type === undefined) return { triggers: [], states: [state] };

  const trigger = buildTrigger(type, 'Encounter', occurredAt, context, patient);
  trigger.encounter = encounter;
  addSensitivity(trigger, sensitivity);
  return { triggers: [trigger], states: [state] };
}

function encounterType(
  status: string,
  previous: SubjectState | undefined,
  locationId: string | undefined,
  triggerCodes: FhirCoding[] | undefined,
): TriggerType | undefined {
  const before = previous?.status;
  if (status === 'planned') return before === 'planned' ? undefined : TriggerType.EncounterPlanned;
  if (ENCOUNTER_FINISHED.has(status)) {
    return before !== undefined && ENCOUNTER_FINISHED.has(before) ? undefined : TriggerType.EncounterFinished;
  }
  if (ENCOUNTER_CANCELLED.has(status)) {
    return before !== undefined && ENCOUNTER_CANCELLED.has(before) ? undefined : TriggerType.EncounterCancelled;
  }
  if (!ENCOUNTER_ACTIVE.has(status)) return undefined; // unknown: says nothing

  if (before !== undefined && ENCOUNTER_FINISHED.has(before)) return TriggerType.EncounterDischargeCancelled;
  // Without a stored state a US Core `trigger` coding with the v2 event settles what the
  // status alone cannot: A02 transfer, A13 cancel discharge (same types as the HL7v2 path).
  const v2 = v2Event(triggerCodes);
  if (before === undefined) {
    if (v2 === 'A13') return TriggerType.EncounterDischargeCancelled;
    if (v2 === 'A02') return TriggerType.EncounterTransferred;
    return TriggerType.EncounterStarted;
  }
  if (!ENCOUNTER_ACTIVE.has(before)) return TriggerType.EncounterStarted;
  const data = previous!.data;
  if (data !== undefined && 'locationId' in data) {
    const was = data.locationId;
    if (typeof was === 'string' && locationId !== undefined && was !== locationId) {
      return TriggerType.EncounterTransferred;
    }
    return undefined;
  }
  return v2 === 'A02' ? TriggerType.EncounterTransferred : undefined;
}

function v2Event(codes: FhirCoding[] | undefined): string | undefined {
  return codes?.find((c) => c.system === V2_0003 && typeof c.code === 'string')?.code?.toUpperCase();
}

function encounterClass(value: unknown): string | undefined {
  if (Array.isArray(value)) {
    for (const concept of value) {
      const coded = codedValue(concept);
      if (coded) return coded.code;
    }
    return undefined;
  }
  return isObject(value) && typeof value.code === 'string' && value.code !== '' ? value.code : undefined;
}

/** The active location (last one if several), else the last one not merely planned/reserved. */
function currentLocation(res: Encounter): LocationRef | undefined {
  if (!Array.isArray(res.location)) return undefined;
  const entries = res.location.filter((l) => isObject(l) && isObject(l.location) && referenceId(l.location) !== undefined);
  const pick =
    entries.filter((l) => l.status === 'active').at(-1) ??
    entries.filter((l) => l.status !== 'planned' && l.status !== 'reserved').at(-1);
  if (!pick?.location) return undefined;
  const out: LocationRef = { id: referenceId(pick.location)! };
  if (typeof pick.location.display === 'string' && pick.location.display !== '') out.name = pick.location.display;
  return out;
}

// --- Patient ---------------------------------------------------------------------------

function normalizePatient(res: Patient, context: NormalizeContext): NormalizeResult {
  const id = requireId(res);
  const label = `Patient/${id}`;
  const occurredAt = occurredAtOf(res, context);
  const survivorRef = replacedBy(res);
  if (!survivorRef) {
    const trigger = buildTrigger(TriggerType.PatientUpdated, 'Patient', occurredAt, context, patientFrom(res, label));
    addSensitivity(trigger, securityCodes(res));
    return { triggers: [trigger], states: [] };
  }
  // This resource is the replaced record; the trigger is about the survivor, with this
  // record's identifiers as mergedFrom (as MRG-1 of an A40).
  const survivorId = referenceId(survivorRef);
  const survivor = context.patient;
  if (!survivor) {
    throw new FhirNormalizeError(
      label,
      `replaced-by ${survivorRef.reference ?? 'another Patient'}: pass the surviving Patient as context.patient`,
    );
  }
  if (survivor.resourceType !== 'Patient') {
    throw new FhirNormalizeError(label, `context.patient is a ${survivor.resourceType}, not a Patient`);
  }
  if (survivorId !== undefined && survivor.id !== undefined && survivor.id !== survivorId) {
    throw new FhirNormalizeError(label, `context.patient is Patient/${survivor.id}, but the replaced-by link points to Patient/${survivorId}`);
  }
  const patient = patientFrom(survivor, label);
  const mergedFrom = identifiersOf(res);
  patient.mergedFrom = mergedFrom.length > 0 ? mergedFrom : [{ value: id }];
  const trigger = buildTrigger(TriggerType.PatientMerged, 'Patient', occurredAt, context, patient);
  addSensitivity(trigger, [...securityCodes(survivor), ...securityCodes(res)]);
  return { triggers: [trigger], states: [] };
}

function replacedBy(res: Patient): Reference | undefined {
  if (!Array.isArray(res.link)) return undefined;
  const link = res.link.find((l) => isObject(l) && l.type === 'replaced-by' && isObject(l.other));
  return link?.other;
}

/** The referenced Patient, from context.patient; a trigger without its patient is refused. */
function resolvePatient(
  ref: Reference | undefined,
  context: NormalizeContext,
  label: string,
  where: string,
): TriggerPatient {
  const given = context.patient;
  if (!given) {
    throw new FhirNormalizeError(
      label,
      ref?.reference
        ? `the ${where} ${ref.reference} is needed: pass the Patient resource as context.patient (from the Bundle or fetched)`
        : `no ${where} and no patient in context: cannot tell whose ${label.split('/')[0]!.toLowerCase()} this is`,
    );
  }
  if (given.resourceType !== 'Patient') {
    throw new FhirNormalizeError(label, `context.patient is a ${given.resourceType}, not a Patient`);
  }
  const wanted = ref ? referenceId(ref) : undefined;
  if (wanted !== undefined && given.id !== undefined && given.id !== wanted && ref?.reference) {
    // A mismatch means the wrong person would be contacted: refuse.
    throw new FhirNormalizeError(label, `context.patient is Patient/${given.id}, but the ${where} is ${ref.reference}`);
  }
  return patientFrom(given, label);
}

/** docs/trigger.md patient.* from a FHIR Patient. */
function patientFrom(resource: FhirResource, label: string): TriggerPatient {
  const res = resource as Patient;
  const identifiers = identifiersOf(res);
  const mr = identifiers.find((i) => i.type === 'MR' && mrTyped(res, i.value));
  const id = mr?.value ?? identifiers[0]?.value ?? res.id;
  if (!id) throw new FhirNormalizeError(label, 'the Patient has no identifier and no id');

  // Built in docs/trigger.md field order so that serialized triggers read the same everywhere.
  const patient = { id, identifiers } as TriggerPatient;
  const name = nameOf(res);
  if (name) patient.name = name;
  if (typeof res.birthDate === 'string' && res.birthDate !== '') patient.birthDate = res.birthDate;
  // Absent gender reads as unknown, like an empty PID-8.
  patient.gender = ['male', 'female', 'other', 'unknown'].includes(res.gender as string)
    ? (res.gender as TriggerPatient['gender'])
    : 'unknown';
  const language = languageOf(res);
  if (language) patient.language = language;
  patient.deceased = res.deceasedBoolean === true || (typeof res.deceasedDateTime === 'string' && res.deceasedDateTime !== '');
  patient.telecom = telecomOf(res);
  return patient;
}

/** MR = identifier.type coded v2-0203 MR (a coding without system counts too). */
function mrTyped(res: Patient, value: string): boolean {
  return (res.identifier ?? []).some(
    (i) =>
      isObject(i) &&
      i.value === value &&
      codingsIn(i.type).some((c) => c.code === 'MR' && (c.system === undefined || c.system === V2_0203)),
  );
}

function identifiersOf(res: Patient): Identifier[] {
  if (!Array.isArray(res.identifier)) return [];
  const out: Identifier[] = [];
  for (const i of res.identifier) {
    if (!isObject(i) || typeof i.value !== 'string' || i.value === '') continue;
    const identifier: Identifier = { value: i.value };
    if (typeof i.system === 'string' && i.system !== '') identifier.system = i.system;
    const codings = codingsIn(i.type);
    const type = (codings.find((c) => c.system === V2_0203) ?? codings[0])?.code;
    if (type) identifier.type = type;
    out.push(identifier);
  }
  return out;
}

/** The first name (skipping ones marked old), as { family, given[] }. */
function nameOf(res: Patient): HumanName | undefined {
  if (!Array.isArray(res.name)) return undefined;
  const names = res.name.filter(isObject);
  const n = names.find((x) => x.use !== 'old') ?? names[0];
  if (!n) return undefined;
  const given = Array.isArray(n.given) ? n.given.filter((g): g is string => typeof g === 'string' && g !== '') : [];
  const family = typeof n.family === 'string' && n.family !== '' ? n.family : undefined;
  if (family === undefined && given.length === 0) return undefined;
  return family === undefined ? { given } : { family, given };
}


/**
 * Patient.communication: the preferred one first, else the first. Lower-case ISO 639-1
 * language part; the region is dropped; three-letter codes mapped (docs/trigger.md).
 */
function languageOf(res: Patient): string | undefined {
  if (!Array.isArray(res.communication)) return undefined;
  const comms = res.communication.filter(isObject);
  const ordered = [...comms.filter((c) => c.preferred === true), ...comms.filter((c) => c.preferred !== true)];
  for (const c of ordered) {
    const codings = codingsIn(c.language);
    const code = (codings.find((x) => x.system === BCP_47) ?? codings[0])?.code;
    const normalized = code ? normalizeLanguage(code) : undefined;
    if (normalized) return normalized;
  }
  return undefined;
}

/** Lower-case ISO 639-1 code (docs/trigger.md), the same mapping as the HL7v2 path. */
export const normalizeLanguage = languageCode;

/**
 * phone (sms counts as phone) and email only; use mobile|home|work|other (temp and old →
 * other; sms without a use → mobile; no use → other). Phones keep digits and a leading '+'.
 */
function telecomOf(res: Patient): ContactPoint[] {
  if (!Array.isArray(res.telecom)) return [];
  const out: ContactPoint[] = [];
  for (const t of res.telecom) {
    if (!isObject(t) || typeof t.value !== 'string') continue;
    const system = t.system === 'phone' || t.system === 'sms' ? 'phone' : t.system === 'email' ? 'email' : undefined;
    if (!system) continue;
    const use: ContactPoint['use'] =
      t.use === 'mobile' || t.use === 'home' || t.use === 'work'
        ? t.use
        : t.use === undefined && t.system === 'sms'
          ? 'mobile'
          : 'other';
    const value = system === 'phone' ? phoneValue(t.value) : t.value.trim().replace(/^mailto:/i, '');
    if (value === '') continue;
    out.push({ system, use, value });
  }
  return out;
}

// --- shared ----------------------------------------------------------------------------

function buildTrigger(
  type: TriggerType,
  messageType: string,
  occurredAt: string,
  context: NormalizeContext,
  patient: TriggerPatient,
): Trigger {
  return {
    id: triggerId(context.sender, context.eventKey ?? context.messageId, type),
    type,
    occurredAt,
    receivedAt: context.receivedAt,
    source: { format: 'fhir', sender: context.sender, messageType, messageId: context.messageId },
    patient,
  };
}

/** Notification timestamp, else meta.lastUpdated, else Bundle.timestamp, else receivedAt. */
function occurredAtOf(res: FhirResource, context: NormalizeContext): string {
  const lastUpdated = isObject(res.meta) ? optionalString(res.meta.lastUpdated) : undefined;
  return context.occurredAt ?? lastUpdated ?? context.bundleTimestamp ?? context.receivedAt;
}

function addSensitivity(trigger: Trigger, codes: string[]): void {
  const unique = dedupe(codes);
  if (unique.length > 0) trigger.sensitivity = unique;
}

/** meta.security codes as given (R, V, PSY, HIV…). */
function securityCodes(res: FhirResource | undefined): string[] {
  const security = res && isObject(res.meta) ? res.meta.security : undefined;
  if (!Array.isArray(security)) return [];
  return security.filter(isObject).map((c) => c.code).filter((c): c is string => typeof c === 'string' && c !== '');
}

function checkPrevious(
  previous: SubjectState | undefined,
  kind: SubjectState['kind'],
  id: string,
  label: string,
): SubjectState | undefined {
  if (!previous) return undefined;
  if (previous.kind !== kind || previous.id !== id) {
    throw new FhirNormalizeError(label, `context.previous is the state of ${previous.kind} ${previous.id}, not of this ${kind}`);
  }
  return previous;
}

function requireId(res: FhirResource): string {
  if (typeof res.id !== 'string' || res.id === '') {
    throw new FhirNormalizeError(res.resourceType, 'no id (a trigger needs the resource id)');
  }
  return res.id;
}

function requireCode(value: unknown, label: string, element: string): string {
  if (typeof value !== 'string' || value === '') throw new FhirNormalizeError(label, `${element} missing`);
  return value;
}

function referenceType(ref: Reference): string | undefined {
  if (typeof ref.type === 'string' && ref.type !== '') return ref.type;
  return typeof ref.reference === 'string' ? referenceParts(ref.reference)?.type : undefined;
}

/** The id part of a reference (`Location/12` → `12`), else a contained `#id`, else identifier.value. */
function referenceId(ref: Reference): string | undefined {
  if (typeof ref.reference === 'string') {
    const parts = referenceParts(ref.reference);
    if (parts) return parts.id;
    if (ref.reference.startsWith('#') && ref.reference.length > 1) return ref.reference.slice(1);
  }
  const value = isObject(ref.identifier) ? ref.identifier.value : undefined;
  return typeof value === 'string' && value !== '' ? value : undefined;
}

/** The codings of a CodeableConcept that have a code. */
function codingsIn(concept: unknown): FhirCoding[] {
  if (!isObject(concept) || !Array.isArray(concept.coding)) return [];
  return (concept.coding as unknown[]).filter(
    (c): c is FhirCoding => isObject(c) && typeof c.code === 'string' && c.code !== '',
  );
}

function sameInstant(a: string, b: string): boolean {
  const x = Date.parse(a);
  const y = Date.parse(b);
  return Number.isFinite(x) && Number.isFinite(y) ? x === y : a === b;
}

function optionalString(value: unknown): string | undefined {
  return typeof value === 'string' && value !== '' ? value : undefined;
}

function dedupe(values: string[]): string[] {
  return [...new Set(values)];
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
