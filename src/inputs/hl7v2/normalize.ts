// HL7v2 SIU / ADT → normalized triggers (docs/trigger.md is the contract; docs/hl7-fhir.md gives the
// field positions). Pure: no I/O, no clock, no logging. What a message does not say (the
// start before an S14, the appointments of an arriving patient) comes from stored state
// that the caller fetches and passes to applyStoredState.
//
// Values are read once per field with the parser's decoded accessors; times with an
// explicit offset are formatted without luxon (hl7-time.ts), so a typical message
// normalizes in a few microseconds.
import { hash } from 'node:crypto';
import { unescapeHl7 } from '../../hl7v2/escape.ts';
import type { Hl7Delimiters, Hl7Message, Hl7Segment } from '../../hl7v2/parse.ts';
import { phoneValue, withoutControlCharacters } from '../../normalized-values.ts';
import type { SubjectState } from '../../store/store.ts';
import {
  TriggerType,
  type CodedValue,
  type ContactPoint,
  type HumanName,
  type Identifier,
  type LocationRef,
  type PractitionerRef,
  type Trigger,
  type TriggerAppointment,
  type TriggerEncounter,
  type TriggerPatient,
  type TriggerSlot,
  type TriggerSource,
  type VideoJoin,
} from '../../types.ts';
import {
  AppointmentStatus,
  codingSystem,
  encounterClass,
  fillerStatusToFhir,
  gender,
  language,
  telecomUse,
} from './codes.ts';
import {
  ARRIVAL_ONLY,
  SIU_SLOT_EVENTS,
  adtEncounterStatus,
  adtTriggerType,
  siuAppointmentStatus,
  siuTriggerType,
} from './event-type.ts';
import { addMinutes, hl7Date, hl7Instant, instantMs, minutesBetween } from './hl7-time.ts';
import { virtualVisitOf, type VirtualVisitSetting } from './virtual-visit.ts';

export interface Hl7NormalizeContext {
  /** ISO-8601 instant with offset: when CareRelay received the message. */
  receivedAt: string;
  /** IANA zone of the sender, for times without an offset (connector setting / --timezone). */
  timezone: string;
  /** Where this sender puts a video visit's join URL (the input's `virtualVisit`); default: not read. */
  virtualVisit?: VirtualVisitSetting;
}

/**
 * What an ADT^A04/A10 says about a patient arriving, for the stateful check-in
 * (applyStoredState): the server looks up the patient's stored appointments.
 */
export interface Hl7Arrival {
  patientId: string;
  /** Arrival time: the message's occurredAt. */
  at: string;
  /** The fields every trigger of this message shares (source, patient, times, sensitivity). */
  base: Omit<Trigger, 'id' | 'type'>;
}

export type Hl7Normalized =
  /**
   * Zero or more triggers, and the appointment/encounter states to store; `joins`: video-visit
   * join information read at the input's `virtualVisit` place, apart from the triggers (the
   * caller seals and stores it: docs/video.md).
   */
  | { kind: 'triggers'; triggers: Trigger[]; states: SubjectState[]; message: Hl7MessageKey; arrival?: Hl7Arrival; joins?: VideoJoin[] }
  /** Not a trigger source (ACK, query, slot block without patient…). A reason starting with "unsupported" means an unknown message type. */
  | { kind: 'ignored'; reason: string }
  /** A trigger source without what a trigger needs; `field` names the missing HL7 field. */
  | { kind: 'rejected'; reason: string; field?: string };

/** Stored state the server passes to applyStoredState (fetched before the call). */
export interface Hl7StateLookup {
  appointment(id: string): SubjectState | undefined;
  /** Appointments of a patient (by patient.id), for the A04/A10 check-in; optional. */
  appointmentsOfPatient?(patientId: string): SubjectState[];
  /** An encounter's stored state, for sensitivity that sticks to it; optional. */
  encounter?(id: string): SubjectState | undefined;
}

/** A patient arriving within this long of an appointment's start checks in to it. */
export const ARRIVAL_WINDOW_MINUTES = 120;

/**
 * Deterministic trigger id (idempotency key): sha256 of the message's identity (sender,
 * MSH-10, MSH-7, MSH-9 and a content fingerprint), the trigger type and its subject. The
 * same message always gives the same id. MSH-9 and the fingerprint are in the key because
 * senders reuse MSH-10 across different messages (the GHH samples all use MSG00001; the two
 * SIU^S12 samples share MSG00012): such a conflicting resend is quarantined by the store, and
 * its triggers must still not take the ids of the original's.
 */
export function hl7TriggerId(message: Hl7MessageKey, type: TriggerType, subject: string): string {
  // crypto.hash (Node >= 20.12): one-shot, half the cost of createHash().update().digest().
  return hash('sha256', JSON.stringify(['hl7v2', message.sender, message.messageId, message.sentAt, message.messageType, message.fingerprint, type, subject]), 'hex');
}

/** What identifies one HL7v2 message in trigger ids (see hl7TriggerId). */
export interface Hl7MessageKey {
  sender: string;
  /** MSH-10 */
  messageId: string;
  /** MSH-7 as sent */
  sentAt: string;
  /** "SIU^S12" */
  messageType: string;
  /**
   * Total length of the segments without their terminators: a content fingerprint that
   * does not depend on CR/LF framing and costs nothing (a full-content sha256 would take
   * a quarter of the per-message time budget).
   */
  fingerprint: number;
}

function messageKey(msg: Hl7Message, sender: string, messageId: string): Hl7MessageKey {
  let fingerprint = 0;
  for (const seg of msg.segments) fingerprint += seg.raw.length;
  return { sender, messageId, sentAt: msg.segments[0]!.get(7), messageType: msg.messageType, fingerprint };
}

// --- small readers ------------------------------------------------------------------------

/** Trimmed value; HL7's explicit null `""` reads as empty (a trigger has no "erase"). */
function clean(value: string): string {
  if (value === '') return value;
  const t = value.trim();
  return t === '""' ? '' : t;
}

function field(seg: Hl7Segment | undefined, n: number, component = 1, sub = 1): string {
  return seg === undefined ? '' : clean(seg.get(n, component, sub));
}

// Repeating composite fields (CX, XTN, XPN, PL, XCN) are read many components at a time:
// each repetition is split into components once, instead of one scan per component.

/** Raw components of one repetition. */
type Rep = string[];

/** Every repetition of field n, split into its first `upTo` raw components. */
function reps(seg: Hl7Segment, n: number, d: Hl7Delimiters, upTo: number): Rep[] {
  const raw = seg.rawField(n);
  if (raw === '') return [];
  if (raw.indexOf(d.repetition) === -1) return [raw.split(d.component, upTo)];
  const out: Rep[] = [];
  for (const r of raw.split(d.repetition)) out.push(r.split(d.component, upTo));
  return out;
}

/** The first repetition of field n, split into its first `upTo` raw components. */
function firstRep(seg: Hl7Segment | undefined, n: number, d: Hl7Delimiters, upTo: number): Rep | undefined {
  const raw = seg === undefined ? '' : seg.rawField(n);
  if (raw === '') return undefined;
  const end = raw.indexOf(d.repetition);
  return (end === -1 ? raw : raw.slice(0, end)).split(d.component, upTo);
}

/** Decoded, cleaned sub-component `sub` of component `c` (both 1-based). */
function comp(rep: Rep, c: number, d: Hl7Delimiters, sub = 1): string {
  let v = rep[c - 1];
  if (v === undefined || v === '') return '';
  if (sub !== 1 || v.indexOf(d.subcomponent) !== -1) v = v.split(d.subcomponent)[sub - 1] ?? '';
  if (v.indexOf(d.escape) !== -1) v = unescapeHl7(v, d);
  return clean(v);
}

/** The segments a normalizer reads, found in one pass. */
interface Segments {
  d: Hl7Delimiters;
  msh: Hl7Segment;
  evn?: Hl7Segment;
  pid?: Hl7Segment;
  pd1?: Hl7Segment;
  pv1?: Hl7Segment;
  pv2?: Hl7Segment;
  sch?: Hl7Segment;
  tq1?: Hl7Segment;
  ais: Hl7Segment[];
  ail: Hl7Segment[];
  aip: Hl7Segment[];
  /** PID → MRG pairs, for merge events (one merge per PATIENT group). */
  merges: Array<{ pid: Hl7Segment; mrg?: Hl7Segment }>;
}

function index(msg: Hl7Message): Segments {
  const s: Segments = { d: msg.delimiters, msh: msg.segments[0]!, ais: [], ail: [], aip: [], merges: [] };
  for (const seg of msg.segments) {
    switch (seg.name) {
      case 'EVN':
        s.evn ??= seg;
        break;
      case 'PID':
        s.pid ??= seg;
        s.merges.push({ pid: seg });
        break;
      case 'MRG': {
        const last = s.merges[s.merges.length - 1];
        if (last !== undefined && last.mrg === undefined) last.mrg = seg;
        break;
      }
      case 'PD1':
        s.pd1 ??= seg;
        break;
      case 'PV1':
        s.pv1 ??= seg;
        break;
      case 'PV2':
        s.pv2 ??= seg;
        break;
      case 'SCH':
        s.sch ??= seg;
        break;
      case 'TQ1':
        s.tq1 ??= seg;
        break;
      case 'AIS':
        s.ais.push(seg);
        break;
      case 'AIL':
        s.ail.push(seg);
        break;
      case 'AIP':
        s.aip.push(seg);
        break;
      default:
        break;
    }
  }
  return s;
}

/** The first non-empty value of field n (component c) over a list of segments. */
function firstOf(segs: Hl7Segment[], n: number, component = 1, sub = 1): string {
  for (const seg of segs) {
    const v = field(seg, n, component, sub);
    if (v !== '') return v;
  }
  return '';
}

// --- patient ------------------------------------------------------------------------------

/** CX → { value, system (CX.4 namespace, else its universal id), type (CX.5) }. */
function identifier(rep: Rep, d: Hl7Delimiters): Identifier | undefined {
  const value = comp(rep, 1, d);
  if (value === '') return undefined;
  const id: Identifier = { value };
  const system = comp(rep, 4, d, 1) || comp(rep, 4, d, 2);
  if (system !== '') id.system = system;
  const type = comp(rep, 5, d);
  if (type !== '') id.type = type;
  return id;
}

function identifiers(seg: Hl7Segment, n: number, out: Identifier[], d: Hl7Delimiters): void {
  for (const rep of reps(seg, n, d, 5)) {
    const id = identifier(rep, d);
    if (id !== undefined) out.push(id);
  }
}

/**
 * XTN repetitions → contact points (docs/trigger.md "Phones"). Email: XTN.3 Internet/X.400 or an
 * XTN.4 with '@'; its value is XTN.4 (else XTN.1) and must contain '@', else it is not an
 * address anyone can write to and is left out. Phone: XTN.12, else XTN.1, else
 * +XTN.5 XTN.6 XTN.7. Use: CP → mobile; else XTN.2; else the field's default.
 */
function telecoms(seg: Hl7Segment, n: number, defaultUse: ContactPoint['use'], out: ContactPoint[], d: Hl7Delimiters): void {
  for (const rep of reps(seg, n, d, 12)) {
    const equipment = comp(rep, 3, d).toUpperCase();
    const email = comp(rep, 4, d);
    const use = telecomUse(comp(rep, 2, d));
    if (equipment === 'INTERNET' || equipment === 'X.400' || email.includes('@')) {
      const value = email || comp(rep, 1, d);
      if (value.includes('@')) out.push({ system: 'email', use: use ?? defaultUse, value });
      continue;
    }
    let raw = comp(rep, 12, d) || comp(rep, 1, d);
    if (raw === '') {
      const country = comp(rep, 5, d);
      raw = (country === '' ? '' : `+${country}`) + comp(rep, 6, d) + comp(rep, 7, d);
    }
    const value = phoneValue(raw);
    if (value === '') continue;
    out.push({ system: 'phone', use: equipment === 'CP' ? 'mobile' : (use ?? defaultUse), value });
  }
}

function humanName(seg: Hl7Segment, d: Hl7Delimiters): HumanName | undefined {
  const rep = firstRep(seg, 5, d, 3);
  if (rep === undefined) return undefined;
  const family = comp(rep, 1, d, 1);
  const given: string[] = [];
  const first = comp(rep, 2, d);
  if (first !== '') given.push(first);
  // XPN.3: second and further given names or initials (v2-to-fhir: given[1..]).
  const middle = comp(rep, 3, d);
  if (middle !== '') given.push(middle);
  if (family === '' && given.length === 0) return undefined;
  return family === '' ? { given } : { family, given };
}

/**
 * The patient id a message names (docs/trigger.md patient.id: the MR-typed PID-3 repetition,
 * else the first), also for a message that gives no trigger: a refused message is searched by it.
 */
export function hl7PatientId(msg: Hl7Message): string | undefined {
  const pid = msg.segments.find((seg) => seg.name === 'PID');
  return pid === undefined ? undefined : readPatient(pid, msg.delimiters)?.id;
}

/** PID → patient.*; undefined when PID-3 holds no identifier. */
function readPatient(pid: Hl7Segment, d: Hl7Delimiters): TriggerPatient | undefined {
  const all: Identifier[] = [];
  identifiers(pid, 2, all, d);
  const before = all.length;
  identifiers(pid, 3, all, d);
  const pid3 = all.slice(before);
  if (pid3.length === 0) return undefined;
  identifiers(pid, 4, all, d);
  // The MR-typed PID-3 repetition, else the first (docs/trigger.md patient.id).
  const primary = pid3.find((i) => i.type?.toUpperCase() === 'MR') ?? pid3[0]!;

  const patient: TriggerPatient = {
    id: primary.value,
    identifiers: all,
    gender: gender(field(pid, 8)),
    deceased: field(pid, 30).toUpperCase() === 'Y' || field(pid, 29) !== '',
    telecom: [],
  };
  const name = humanName(pid, d);
  if (name !== undefined) patient.name = name;
  const birthDate = hl7Date(field(pid, 7));
  if (birthDate !== undefined) patient.birthDate = birthDate;
  // PID-15 is CWE: the code in .1, some senders put it in the alternate code (.4) only.
  const lang = language(field(pid, 15)) ?? language(field(pid, 15, 4));
  if (lang !== undefined) patient.language = lang;
  telecoms(pid, 13, 'home', patient.telecom, d);
  telecoms(pid, 14, 'work', patient.telecom, d);
  // v2.7+ moved telecoms to PID-40; read it only when the deprecated fields are empty.
  if (patient.telecom.length === 0) telecoms(pid, 40, 'home', patient.telecom, d);
  return patient;
}

/** "restricted" when PV2-22 (visit protection) or PD1-12 (patient protection) is Y. */
function sensitivityOf(s: Segments): string[] | undefined {
  if (field(s.pv2, 22).toUpperCase() === 'Y' || field(s.pd1, 12).toUpperCase() === 'Y') return ['restricted'];
  return undefined;
}

// --- shared fields ------------------------------------------------------------------------

/** PL → { id = PL.1, facility = PL.4, name }. name: PL.9 (description), else room/bed (PL.2, PL.3). */
function location(seg: Hl7Segment | undefined, n: number, d: Hl7Delimiters): LocationRef | undefined {
  const rep = firstRep(seg, n, d, 9);
  if (rep === undefined) return undefined;
  const id = comp(rep, 1, d, 1);
  if (id === '') return undefined;
  const loc: LocationRef = { id };
  const description = comp(rep, 9, d);
  const room = comp(rep, 2, d);
  const bed = comp(rep, 3, d);
  const name = description !== '' ? description : room !== '' && bed !== '' ? `${room} ${bed}` : room || bed;
  if (name !== '') loc.name = name;
  const facility = comp(rep, 4, d, 1);
  if (facility !== '') loc.facility = facility;
  return loc;
}

/** XCN → { id = XCN.1, name = given middle family }. */
function practitioner(seg: Hl7Segment | undefined, n: number, d: Hl7Delimiters): PractitionerRef | undefined {
  const rep = firstRep(seg, n, d, 4);
  if (rep === undefined) return undefined;
  const id = comp(rep, 1, d);
  if (id === '') return undefined;
  const ref: PractitionerRef = { id };
  const name = [comp(rep, 3, d), comp(rep, 4, d), comp(rep, 2, d, 1)].filter((p) => p !== '').join(' ');
  if (name !== '') ref.name = name;
  return ref;
}

/** CWE → { code, display?, system? } (system names mapped to FHIR URIs where known). */
function coded(seg: Hl7Segment | undefined, n: number): CodedValue | undefined {
  if (seg === undefined) return undefined;
  const code = field(seg, n, 1);
  if (code === '') return undefined;
  const out: CodedValue = { code };
  const display = field(seg, n, 2);
  if (display !== '') out.display = display;
  const system = field(seg, n, 3);
  if (system !== '') out.system = codingSystem(system);
  return out;
}

/** EVN-6, else EVN-2, else MSH-7 (the first valid one); receivedAt when none is. */
function occurredAt(s: Segments, ctx: Hl7NormalizeContext): string {
  return (
    hl7Instant(field(s.evn, 6), ctx.timezone) ??
    hl7Instant(field(s.evn, 2), ctx.timezone) ??
    hl7Instant(field(s.msh, 7), ctx.timezone) ??
    ctx.receivedAt
  );
}

function base(s: Segments, msg: Hl7Message, ctx: Hl7NormalizeContext, patient: TriggerPatient | undefined, sensitivity: string[] | undefined): Omit<Trigger, 'id' | 'type'> {
  const source: TriggerSource = {
    format: 'hl7v2',
    // First components only: "EPIC^GHH", "EPIC^" when MSH-4 is empty (docs/trigger.md).
    sender: `${field(s.msh, 3)}^${field(s.msh, 4)}`,
    messageType: msg.messageType,
    messageId: field(s.msh, 10),
  };
  const out: Omit<Trigger, 'id' | 'type'> = {
    occurredAt: occurredAt(s, ctx),
    receivedAt: ctx.receivedAt,
    source,
  };
  if (patient !== undefined) out.patient = patient;
  if (sensitivity !== undefined) out.sensitivity = sensitivity;
  return out;
}

function makeTrigger(type: TriggerType, b: Omit<Trigger, 'id' | 'type'>, key: Hl7MessageKey, subject: string): Trigger {
  return { id: hl7TriggerId(key, type, subject), type, ...b };
}

// --- entry point --------------------------------------------------------------------------

const QUERY_TYPES = new Set(['QRY', 'QBP', 'QSB', 'QCN', 'QVR', 'VXQ', 'SQM', 'SQR', 'RSP', 'RTB', 'RDY', 'RQA', 'ERP']);
const ACK_TYPES = new Set(['ACK', 'MCF']);

/**
 * One HL7v2 message → triggers (stateless: what the message alone says). No string of the
 * result holds a control character (a decoded \X0D0A\ included): see withoutControlCharacters.
 */
export function normalizeHl7(msg: Hl7Message, ctx: Hl7NormalizeContext): Hl7Normalized {
  const result = normalizeMessage(msg, ctx);
  return result.kind === 'triggers' ? withoutControlCharacters(result) : result;
}

function normalizeMessage(msg: Hl7Message, ctx: Hl7NormalizeContext): Hl7Normalized {
  const msh = msg.segments[0]!;
  const code = field(msh, 9, 1).toUpperCase();
  const event = field(msh, 9, 2).toUpperCase();
  if (ACK_TYPES.has(code)) return { kind: 'ignored', reason: `acknowledgment (${msg.messageType}) gives no trigger` };
  if (QUERY_TYPES.has(code)) return { kind: 'ignored', reason: `query or response (${msg.messageType}) gives no trigger` };
  if (code === 'SIU') return normalizeSiu(msg, event, ctx);
  if (code === 'ADT') return normalizeAdt(msg, event, ctx);
  return { kind: 'ignored', reason: `unsupported message type ${msg.messageType || '(MSH-9 empty)'}` };
}

/** "…: the segments seem to be separated by spaces, not CR" when MSH swallowed the message. */
function framingHint(s: Segments): string {
  const raw = s.msh.raw;
  return raw.includes(' PID|') || raw.includes(' EVN|') || raw.includes(' SCH|')
    ? '; the segments seem to be separated by spaces instead of CR (\\r): fix the sender\'s segment terminator'
    : '';
}

function normalizeSiu(msg: Hl7Message, event: string, ctx: Hl7NormalizeContext): Hl7Normalized {
  const s = index(msg);
  const messageType = msg.messageType;
  if (SIU_SLOT_EVENTS.has(event) && s.pid === undefined) {
    // S24, "notification of opened ('unblocked') schedule time slot(s)" (v2.5 §10.3): time that
    // became free with no appointment to cancel — slot.freed. S23 (blocked) takes time away: nothing.
    if (event === 'S24') return normalizeSlotOpened(msg, s, ctx);
    return { kind: 'ignored', reason: `slot block/unblock (${messageType}) without a patient gives no trigger` };
  }
  const fillerCode =
    field(s.sch, 25) || field(s.sch, 25, 2) || firstOf(s.ais, 10) || firstOf(s.ail, 12) || firstOf(s.aip, 12);
  const filler = fillerStatusToFhir(fillerCode);
  const type = siuTriggerType(event, filler);
  if (type === undefined) return { kind: 'ignored', reason: `unsupported message type ${messageType}` };
  if (s.pid === undefined) {
    return { kind: 'rejected', reason: `${messageType} without a PID segment: the patient is required${framingHint(s)}`, field: 'PID' };
  }
  const appointmentId = field(s.sch, 2) || field(s.sch, 1);
  if (appointmentId === '') {
    return {
      kind: 'rejected',
      reason: `${messageType} without an appointment id (SCH-2.1 and SCH-1.1 empty)${s.sch === undefined ? ': no SCH segment' : ''}`,
      field: 'SCH-2',
    };
  }
  const patient = readPatient(s.pid, s.d);
  if (patient === undefined) {
    return { kind: 'rejected', reason: `${messageType} without a patient id (PID-3 empty)`, field: 'PID-3' };
  }

  const zone = ctx.timezone;
  const appointment: TriggerAppointment = { id: appointmentId };
  const placerId = field(s.sch, 1);
  if (placerId !== '') appointment.placerId = placerId;
  const status = siuAppointmentStatus(event, filler);
  if (status !== undefined) appointment.status = status;

  const { start, end, minutes } = siuTiming(s, zone);
  if (start !== undefined) appointment.start = start;
  if (end !== undefined) appointment.end = end;
  if (minutes !== undefined) appointment.durationMinutes = minutes;
  // On a waitlist (filler status Waitlist, table 0278): SIU has no requested-period field (SRM's
  // ARQ-11 is not sent in SIU), so the timing the sender gave — TQ1-7…TQ1-8, else SCH-11.4…11.5,
  // as given, not start + duration — is the window the patient can come (docs/waitlist.md "Sources").
  if (status === AppointmentStatus.Waitlist) {
    const from = hl7Instant(field(s.tq1, 7), zone) ?? hl7Instant(field(s.sch, 11, 4), zone);
    const until = hl7Instant(field(s.tq1, 8), zone) ?? hl7Instant(field(s.sch, 11, 5), zone);
    if (from !== undefined || until !== undefined) appointment.requestedPeriod = [{ ...(from !== undefined ? { start: from } : {}), ...(until !== undefined ? { end: until } : {}) }];
  }

  const { service, loc, who } = siuResources(s);
  if (service !== undefined) appointment.serviceType = service;
  if (loc !== undefined) appointment.location = loc;
  if (who !== undefined) appointment.practitioner = who;
  const video = ctx.virtualVisit === undefined ? undefined : virtualVisitOf(msg, ctx.virtualVisit);
  if (video !== undefined) appointment.virtual = video.virtual;

  const b = base(s, msg, ctx, patient, sensitivityOf(s));
  const key = messageKey(msg, b.source.sender, b.source.messageId);
  const trigger = makeTrigger(type, b, key, `appointment/${appointmentId}`);
  trigger.appointment = appointment;

  const state: SubjectState = {
    kind: 'appointment',
    id: appointmentId,
    patientId: patient.id,
    asOf: b.occurredAt,
    // Same keys as the FHIR input stores, so either input can compare with the other's state.
    data: {
      serviceType: service === undefined ? null : `${service.system ?? ''}|${service.code}`,
      locationId: loc?.id ?? null,
      practitionerId: who?.id ?? null,
    },
  };
  if (status !== undefined) state.status = status;
  if (start !== undefined) state.start = start;
  if (end !== undefined) state.end = end;
  // A message without the configured place says nothing about the join (SIU messages often
  // leave it out of a cancel): the stored one stays. With it, its URL replaces the stored one
  // (none: cleared); a closed appointment clears it.
  const closed = status !== undefined && CLOSED_STATUSES.has(status);
  const url = closed ? undefined : video?.url;
  const joins: VideoJoin[] = video !== undefined || closed ? [{ appointmentId, patientId: patient.id, asOf: b.occurredAt, ...(url !== undefined ? { url } : {}) }] : [];
  return { kind: 'triggers', triggers: [trigger], states: [state], message: key, ...(joins.length > 0 ? { joins } : {}) };
}

/** Start (TQ1-7, else SCH-11.4 (v2.3 TQ), else the first AIS-4 / AIL-6 / AIP-6), end (TQ1-8, else SCH-11.5, else start + SCH-9) and minutes of an SIU. */
function siuTiming(s: Segments, zone: string): { start?: string; end?: string; minutes?: number } {
  const start =
    hl7Instant(field(s.tq1, 7), zone) ??
    hl7Instant(field(s.sch, 11, 4), zone) ??
    hl7Instant(firstOf(s.ais, 4), zone) ??
    hl7Instant(firstOf(s.ail, 6), zone) ??
    hl7Instant(firstOf(s.aip, 6), zone);
  const duration = scheduledMinutes(field(s.sch, 9), field(s.sch, 10));
  let end = hl7Instant(field(s.tq1, 8), zone) ?? hl7Instant(field(s.sch, 11, 5), zone);
  if (end === undefined && start !== undefined && duration !== undefined) end = addMinutes(start, duration);
  const minutes = duration ?? (start !== undefined && end !== undefined ? minutesBetween(start, end) : undefined);
  return { ...(start !== undefined ? { start } : {}), ...(end !== undefined ? { end } : {}), ...(minutes !== undefined ? { minutes } : {}) };
}

/** Service (AIS-3, else SCH-7 / SCH-8), location (AIL-3, else PV1-3) and practitioner (AIP-3, else SCH-16 / PV1-7) of an SIU. */
function siuResources(s: Segments): { service?: CodedValue; loc?: LocationRef; who?: PractitionerRef } {
  const service = coded(s.ais.find((a) => field(a, 3) !== ''), 3) ?? coded(s.sch, 7) ?? coded(s.sch, 8);
  const loc = location(s.ail.find((a) => field(a, 3) !== ''), 3, s.d) ?? location(s.pv1, 3, s.d);
  const who = practitioner(s.aip.find((a) => field(a, 3) !== ''), 3, s.d) ?? practitioner(s.sch, 16, s.d) ?? practitioner(s.pv1, 7, s.d);
  return { ...(service !== undefined ? { service } : {}), ...(loc !== undefined ? { loc } : {}), ...(who !== undefined ? { who } : {}) };
}

/**
 * SIU^S24 without a patient: time opened on a schedule (slot.freed, docs/trigger.md "Slots"). Its
 * id is the slot's (SCH-2, else SCH-1), else the resource's whose time it is (AIP-3, else AIL-3):
 * with the start, that names the slot.
 */
function normalizeSlotOpened(msg: Hl7Message, s: Segments, ctx: Hl7NormalizeContext): Hl7Normalized {
  const messageType = msg.messageType;
  const { start, end, minutes } = siuTiming(s, ctx.timezone);
  if (start === undefined) return { kind: 'rejected', reason: `${messageType} (opened schedule time) without a start (TQ1-7, SCH-11.4, AIS-4, AIL-6 and AIP-6 empty)`, field: 'TQ1-7' };
  const { service, loc, who } = siuResources(s);
  const id = field(s.sch, 2) || field(s.sch, 1) || who?.id || loc?.id || '';
  if (id === '') return { kind: 'rejected', reason: `${messageType} (opened schedule time) without a slot id or a resource (SCH-2, SCH-1, AIP-3 and AIL-3 empty)`, field: 'SCH-2' };
  const slot: TriggerSlot = {
    id,
    status: 'free',
    start,
    ...(end !== undefined ? { end } : {}),
    ...(minutes !== undefined ? { durationMinutes: minutes } : {}),
    ...(service !== undefined ? { serviceType: service } : {}),
    ...(loc !== undefined ? { location: loc } : {}),
    ...(who !== undefined ? { practitioner: who } : {}),
  };
  const b = base(s, msg, ctx, undefined, undefined);
  const key = messageKey(msg, b.source.sender, b.source.messageId);
  const trigger: Trigger = { ...makeTrigger(TriggerType.SlotFreed, b, key, `slot/${id}`), slot };
  return { kind: 'triggers', triggers: [trigger], states: [], message: key };
}

/** Statuses after which a video visit's join URL is no longer kept (docs/video.md). */
const CLOSED_STATUSES = new Set<string>([AppointmentStatus.Fulfilled, AppointmentStatus.Cancelled, AppointmentStatus.EnteredInError, AppointmentStatus.Noshow]);

/**
 * SCH-9 duration with SCH-10 units → whole minutes (nearest). Units, case-insensitive:
 * MIN/M/MINUTE(S) (and empty: minutes is the usual default), S/SEC/SECOND(S), H/HR/HOUR(S),
 * D/DAY(S). Unknown units or a non-numeric SCH-9 → undefined (end − start is used).
 */
export function scheduledMinutes(value: string, unit: string): number | undefined {
  if (value === '') return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) return undefined;
  let factor: number;
  switch (unit.toUpperCase()) {
    case '':
    case 'M':
    case 'MIN':
    case 'MINS':
    case 'MINUTE':
    case 'MINUTES':
      factor = 1;
      break;
    case 'S':
    case 'SEC':
    case 'SECOND':
    case 'SECONDS':
      factor = 1 / 60;
      break;
    case 'H':
    case 'HR':
    case 'HRS':
    case 'HOUR':
    case 'HOURS':
      factor = 60;
      break;
    case 'D':
    case 'DAY':
    case 'DAYS':
      factor = 1440;
      break;
    default:
      return undefined;
  }
  return Math.round(n * factor);
}

function normalizeAdt(msg: Hl7Message, event: string, ctx: Hl7NormalizeContext): Hl7Normalized {
  const s = index(msg);
  const messageType = msg.messageType;
  const patientClass = field(s.pv1, 2);
  const type = adtTriggerType(event, patientClass);
  if (type === undefined) return { kind: 'ignored', reason: `unsupported message type ${messageType}` };
  if (s.pid === undefined) {
    return { kind: 'rejected', reason: `${messageType} without a patient id (no PID segment)${framingHint(s)}`, field: 'PID-3' };
  }

  if (type === TriggerType.PatientMerged) return normalizeMerge(msg, s, ctx);

  const patient = readPatient(s.pid, s.d);
  if (patient === undefined) {
    return { kind: 'rejected', reason: `${messageType} without a patient id (PID-3 empty)`, field: 'PID-3' };
  }
  const sensitivity = sensitivityOf(s);
  const b = base(s, msg, ctx, patient, sensitivity);
  const key = messageKey(msg, b.source.sender, b.source.messageId);

  if (type === ARRIVAL_ONLY) {
    return { kind: 'triggers', triggers: [], states: [], message: key, arrival: { patientId: patient.id, at: b.occurredAt, base: b } };
  }

  const zone = ctx.timezone;
  let encounter: TriggerEncounter | undefined;
  if (s.pv1 !== undefined || type !== TriggerType.PatientUpdated) {
    encounter = {};
    const id = field(s.pv1, 19);
    if (id !== '') encounter.id = id;
    const end = hl7Instant(field(s.pv1, 45), zone);
    const status = adtEncounterStatus(event, type, field(s.pv1, 45) !== '');
    if (status !== undefined) encounter.status = status;
    if (patientClass !== '') encounter.class = encounterClass(patientClass);
    const start = hl7Instant(field(s.pv1, 44), zone);
    if (start !== undefined) encounter.start = start;
    if (end !== undefined) encounter.end = end;
    const loc = location(s.pv1, 3, s.d);
    if (loc !== undefined) encounter.location = loc;
    const disposition = field(s.pv1, 36);
    if (disposition !== '') encounter.dischargeDisposition = disposition;
    if (Object.keys(encounter).length === 0) encounter = undefined;
  }

  const subject = encounter?.id !== undefined ? `encounter/${encounter.id}` : `patient/${patient.id}`;
  const trigger = makeTrigger(type, b, key, subject);
  if (encounter !== undefined) trigger.encounter = encounter;

  const states: SubjectState[] = [];
  if (encounter?.id !== undefined && encounter.status !== undefined) {
    const data: Record<string, unknown> = { locationId: encounter.location?.id ?? null };
    if (sensitivity !== undefined) data.sensitivity = sensitivity;
    const state: SubjectState = { kind: 'encounter', id: encounter.id, patientId: patient.id, status: encounter.status, asOf: b.occurredAt, data };
    if (encounter.start !== undefined) state.start = encounter.start;
    if (encounter.end !== undefined) state.end = encounter.end;
    states.push(state);
  }
  // A04 registers an arriving patient (not a pre-registration, PV1-2 = P).
  if (event === 'A04' && type === TriggerType.EncounterStarted) {
    return { kind: 'triggers', triggers: [trigger], states, message: key, arrival: { patientId: patient.id, at: b.occurredAt, base: b } };
  }
  return { kind: 'triggers', triggers: [trigger], states, message: key };
}

/** A40 (A34–A36, A39): one patient.merged per PID/MRG pair; MRG-1 → mergedFrom. */
function normalizeMerge(msg: Hl7Message, s: Segments, ctx: Hl7NormalizeContext): Hl7Normalized {
  const messageType = msg.messageType;
  const triggers: Trigger[] = [];
  let key: Hl7MessageKey | undefined;
  for (const group of s.merges) {
    const patient = readPatient(group.pid, s.d);
    if (patient === undefined) {
      return { kind: 'rejected', reason: `${messageType} without a patient id (PID-3 empty)`, field: 'PID-3' };
    }
    const mergedFrom: Identifier[] = [];
    if (group.mrg !== undefined) identifiers(group.mrg, 1, mergedFrom, s.d);
    if (mergedFrom.length === 0) {
      return { kind: 'rejected', reason: `${messageType} without the prior patient id (MRG-1 empty or no MRG segment)`, field: 'MRG-1' };
    }
    patient.mergedFrom = mergedFrom;
    const b = base(s, msg, ctx, patient, sensitivityOf(s));
    key ??= messageKey(msg, b.source.sender, b.source.messageId);
    triggers.push(makeTrigger(TriggerType.PatientMerged, b, key, `patient/${patient.id}`));
  }
  return { kind: 'triggers', triggers, states: [], message: key! };
}

// --- stored state (server only) -----------------------------------------------------------

/** True when the stored state reflects an event later than `occurredAt` (a late message). */
function storedIsNewer(stored: SubjectState, occurred: string): boolean {
  const a = instantMs(stored.asOf);
  const b = instantMs(occurred);
  return a !== undefined && b !== undefined && a > b;
}

function sameStart(a: string, b: string): boolean {
  const x = instantMs(a);
  const y = instantMs(b);
  return x !== undefined && y !== undefined ? x === y : a === b;
}

const CLOSED_OR_ARRIVED = new Set<string>([
  AppointmentStatus.Arrived,
  AppointmentStatus.CheckedIn,
  AppointmentStatus.Fulfilled,
  AppointmentStatus.Cancelled,
  AppointmentStatus.EnteredInError,
  AppointmentStatus.Noshow,
]);

/**
 * Applies stored state (the running server only; `carerelay normalize` is stateless):
 * - an S14/S18–S24 without a status change (`modified`) whose start differs from the stored
 *   start becomes `rescheduled` with previousStart; an S13 gets previousStart the same way;
 * - an appointment whose message gives no status keeps the stored status;
 * - an A04/A10 adds `appointment.checked_in` for the patient's stored appointment starting
 *   within ARRIVAL_WINDOW_MINUTES of the arrival (the closest one, if several);
 * - sensitivity stored on an encounter sticks to later triggers about it.
 * A stored state newer than the message (asOf after its occurredAt: a late, out-of-order
 * message) is not compared with: the message cannot "move" what a later event set.
 */
export function applyStoredState(result: Hl7Normalized, lookup: Hl7StateLookup): Hl7Normalized {
  if (result.kind !== 'triggers') return result;
  const triggers: Trigger[] = [];
  const states = result.states.map((st) => ({ ...st }));
  for (const original of result.triggers) {
    let trigger = original;
    const appt = original.appointment;
    if (appt !== undefined) {
      const stored = lookup.appointment(appt.id);
      if (stored !== undefined && !storedIsNewer(stored, original.occurredAt)) {
        const state = states.find((x) => x.kind === 'appointment' && x.id === appt.id);
        const moved = stored.start !== undefined && appt.start !== undefined && !sameStart(stored.start, appt.start);
        const unchangedStatus = original.type === TriggerType.AppointmentModified || original.type === TriggerType.AppointmentRescheduled;
        if (unchangedStatus && stored.status === AppointmentStatus.Waitlist && (appt.status === AppointmentStatus.Booked || appt.status === AppointmentStatus.Pending)) {
          // Taken off the EHR's waitlist (S14 Booked after Waitlist): booked now, as a FHIR
          // Appointment whose status goes to booked/pending is (docs/trigger.md "Types").
          const type = TriggerType.AppointmentBooked;
          trigger = { ...original, id: hl7TriggerId(result.message, type, `appointment/${appt.id}`), type };
        } else if (moved && unchangedStatus) {
          const type = TriggerType.AppointmentRescheduled;
          trigger = {
            ...original,
            id: hl7TriggerId(result.message, type, `appointment/${appt.id}`),
            type,
            appointment: { ...appt, previousStart: stored.start! },
          };
        }
        if (appt.status === undefined && stored.status !== undefined) {
          trigger = { ...trigger, appointment: { ...trigger.appointment!, status: stored.status } };
          if (state !== undefined) state.status = stored.status;
        }
      }
    }
    const enc = original.encounter;
    if (enc?.id !== undefined && lookup.encounter !== undefined) {
      const stuck = lookup.encounter(enc.id)?.data?.sensitivity;
      if (Array.isArray(stuck) && stuck.length > 0) {
        const merged = [...new Set([...(trigger.sensitivity ?? []), ...stuck.filter((x): x is string => typeof x === 'string')])];
        trigger = { ...trigger, sensitivity: merged };
        const state = states.find((x) => x.kind === 'encounter' && x.id === enc.id);
        if (state !== undefined) state.data = { ...state.data, sensitivity: merged };
      }
    }
    triggers.push(trigger);
  }

  const arrival = result.arrival;
  if (arrival !== undefined && lookup.appointmentsOfPatient !== undefined) {
    const at = instantMs(arrival.at);
    let best: { state: SubjectState; distance: number } | undefined;
    for (const candidate of at === undefined ? [] : lookup.appointmentsOfPatient(arrival.patientId)) {
      if (candidate.kind !== 'appointment' || candidate.patientId !== arrival.patientId || candidate.start === undefined) continue;
      if (candidate.status !== undefined && CLOSED_OR_ARRIVED.has(candidate.status)) continue;
      if (storedIsNewer(candidate, arrival.at)) continue;
      const start = instantMs(candidate.start);
      if (start === undefined) continue;
      const distance = Math.abs(start - at!);
      if (distance <= ARRIVAL_WINDOW_MINUTES * 60_000 && (best === undefined || distance < best.distance)) {
        best = { state: candidate, distance };
      }
    }
    if (best !== undefined) {
      const stored = best.state;
      const appointment: TriggerAppointment = { id: stored.id, status: AppointmentStatus.Arrived };
      if (stored.start !== undefined) appointment.start = stored.start;
      if (stored.end !== undefined) appointment.end = stored.end;
      const checkIn = makeTrigger(TriggerType.AppointmentCheckedIn, arrival.base, result.message, `appointment/${stored.id}`);
      checkIn.appointment = appointment;
      triggers.push(checkIn);
      states.push({ ...stored, status: AppointmentStatus.Arrived, asOf: arrival.at });
    }
  }
  return { ...result, triggers, states };
}
