// Stand-ins for the two FHIR styles of writing answers back to an EHR's Appointment, on
// 127.0.0.1 with an ephemeral port (test/helpers/http-standin.ts). Both hold appointments,
// version them (meta.versionId, ETag W/"n") and serve read and search; each enforces its own
// write as documented, written here independently of src/outputs:
//
// Generic FHIR R4 (https://hl7.org/fhir/R4/http.html#update, §3.1.0.5 "Managing resource
// contention"): PUT /fhir/Appointment/:id, Content-Type application/fhir+json, the body an
// Appointment with the same id and valid codes (Appointment.status, participant.status,
// cancelationReason as a CodeableConcept); this server requires If-Match (412 without it, as R4
// allows) and answers a stale one 412 (or 409 when told to); 200 with the new version and ETag.
//
// Oracle Health Millennium R4 ("Patch an appointment", PATCH /Appointment/:id): Content-Type
// application/json-patch+json; If-Match required (412 without it), a stale version 409; 423 when
// told the appointment is locked; only the documented operations: replace /status (arrived,
// checked-in, cancelled, booked, fulfilled, along Millennium's status sequences), add
// /cancelationReason (with replace /status cancelled, exactly one coding), replace
// /patient-status (value accepted only, on a booked appointment whose Patient participant is
// tentative) — anything else 422; 200 with an empty body and the new ETag.
//
// Generic FHIR R4 also serves the Argonaut Scheduling `Appointment/$book` operation
// (http://fhir.org/guides/argonaut/scheduling/OperationDefinition-appointment-book.html): POST
// /fhir/Appointment/$book, application/fhir+json, a Parameters body with exactly one
// `appt-resource` (an Appointment without id, status `proposed`, a start and participants with
// valid statuses), `patient-id` (0..*, `Patient/<id>` uris) and `comment` (0..1) — any other
// parameter 400; the answer is a searchset Bundle holding the Appointment, `booked` with its
// participants accepted (stored, identifiers kept) or `cancelled` when told to reject it. Like
// the definition says, it is not idempotent: the same request twice books twice.
//
// Oracle Health Millennium also books ("Search for Slots", GET /Slot: service-type required
// (system|code), start required with both a ge and an lt prefix, schedule.actor optional; the
// Slots it holds answered as a searchset) and creates ("Create an appointment", POST /Appointment,
// application/fhir+json): status `booked` with `slot` exactly one reference to a Slot, which must
// be free (else 409), `participant` exactly one, a Patient reference with status `accepted` and
// no `type` — anything else 422; 201 with an empty body, Location and ETag W/"0"; the Slot becomes
// busy. Its Appointment search by `patient` requires `date` (ge/lt).
//
// Both: a bearer token when configured (401), and faults (429 + Retry-After, 503, hang, reset);
// `interfere(n)` changes the appointment behind the client's back before each of the next n
// writes, so the client's If-Match is stale.
import { header, startHttpStandIn, type Answer, type HttpStandIn, type RecordedRequest } from './http-standin.ts';

export interface StandInAppointment {
  resourceType: 'Appointment';
  id: string;
  meta: { versionId: string; lastUpdated?: string };
  status: string;
  participant: Array<{ actor: { reference?: string; type?: string; identifier?: { system?: string; value: string } }; status: string }>;
  cancelationReason?: { coding?: Array<{ system?: string; code?: string; display?: string }>; text?: string };
  identifier?: Array<{ system?: string; value: string }>;
  [key: string]: unknown;
}

export interface AppointmentStandIn {
  readonly http: HttpStandIn;
  /** The FHIR base URL. */
  readonly baseUrl: string;
  readonly token: string;
  appointments: Map<string, StandInAppointment>;
  /** Adds a booked appointment of patient `patientId` (Patient participant tentative) and returns it. */
  book(id: string, patientId: string, identifier?: { system?: string; value: string }): StandInAppointment;
  /** Changes the appointment before each of the next `n` writes (another writer): If-Match goes stale. */
  interfere(n: number): void;
  /** Writes (PUT / PATCH) received so far. */
  writes(): RecordedRequest[];
  /** Creates (POST, a waitlist booking) received so far. */
  creates(): RecordedRequest[];
  /** Answers the next `n` creates (and $book calls) with `status` (409: the slot is taken; 422; 503). */
  failCreates(n: number, status: number): void;
  /** `$book` calls received so far. */
  bookings(): RecordedRequest[];
  /** The next `n` $book calls are rejected: the Appointment is answered `cancelled`, nothing booked. */
  rejectBookings(n: number): void;
  /** The next `n` $book calls book the appointment, then answer 500 (the client cannot tell it was booked). */
  lostBookingAnswers(n: number): void;
  /** What the appointment says now: its patient confirmed (participant accepted), cancelled and why. */
  state(id: string): { confirmed: boolean; cancelled: boolean; cancelReason?: string };
  close(): Promise<void>;
}

const APPOINTMENT_STATUS = new Set(['proposed', 'pending', 'booked', 'arrived', 'fulfilled', 'cancelled', 'noshow', 'entered-in-error', 'checked-in', 'waitlist']);
const PARTICIPANT_STATUS = new Set(['accepted', 'declined', 'tentative', 'needs-action']);

function outcome(status: number, code: string, text: string): Answer {
  return { status, headers: { 'content-type': 'application/fhir+json' }, body: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics: text }] } };
}

function bump(a: StandInAppointment): void {
  a.meta = { versionId: String(Number(a.meta.versionId) + 1), lastUpdated: new Date().toISOString() };
}

function withEtag(a: StandInAppointment, body = true): Answer {
  return { status: 200, headers: { etag: `W/"${a.meta.versionId}"`, ...(body ? { 'content-type': 'application/fhir+json' } : {}) }, ...(body ? { body: a } : {}) };
}

/** Shared: auth, read, search, versioning. `write` handles the style's own write and returns the stored result. */
async function startAppointmentServer(options: {
  token?: string;
  write: (request: RecordedRequest, current: StandInAppointment) => Answer | StandInAppointment;
  create?: (request: RecordedRequest) => Answer;
  /** `POST /fhir/Appointment/$book`. */
  book?: (request: RecordedRequest) => Answer;
  /** `GET /fhir/Slot`. */
  slots?: (request: RecordedRequest) => Answer;
  appointments?: Map<string, StandInAppointment>;
  failing?: { n: number; status: number };
  booking?: { reject: number; lose: number };
}): Promise<AppointmentStandIn> {
  const booking = options.booking ?? { reject: 0, lose: 0 };
  const token = options.token ?? 'standin-token';
  const appointments = options.appointments ?? new Map<string, StandInAppointment>();
  const failing = options.failing ?? { n: 0, status: 503 };
  let interfering = 0;
  const http = await startHttpStandIn((request) => {
    if (header(request, 'authorization') !== `Bearer ${token}`) return outcome(401, 'login', 'a valid bearer token is required');
    if (request.path === '/fhir/Appointment/$book') {
      if (request.method !== 'POST') return outcome(405, 'not-supported', '$book is invoked by POST');
      return options.book ? options.book(request) : outcome(404, 'not-supported', 'this server does not define $book');
    }
    if (request.path === '/fhir/Slot' && request.method === 'GET' && options.slots) return options.slots(request);
    const m = /^\/fhir\/Appointment(?:\/([A-Za-z0-9\-.]{1,64}))?$/.exec(request.path);
    if (!m) return outcome(404, 'not-found', 'unknown path');
    if (request.method === 'POST' && m[1] === undefined) return options.create ? options.create(request) : outcome(405, 'not-supported', 'this server does not create appointments');
    if (request.method === 'GET' && m[1] === undefined && request.query.has('patient')) {
      // Millennium: date is required with patient (ge/lt prefixes).
      const range = dateRange(request.query.getAll('date'));
      if (range === undefined) return outcome(400, 'required', 'date (ge and lt) is required when searching by patient');
      const patient = `Patient/${request.query.get('patient')}`;
      const found = [...appointments.values()].filter((a) => a.participant.some((p) => p.actor.reference === patient) && typeof a.start === 'string' && Date.parse(a.start) >= range[0] && Date.parse(a.start) < range[1]);
      return { status: 200, headers: { 'content-type': 'application/fhir+json' }, body: { resourceType: 'Bundle', type: 'searchset', total: found.length, entry: found.map((a) => ({ resource: a, search: { mode: 'match' } })) } };
    }
    if (request.method === 'GET' && m[1] === undefined) {
      const [system, value] = (request.query.get('identifier') ?? '').includes('|') ? request.query.get('identifier')!.split('|') : [undefined, request.query.get('identifier')];
      const found = [...appointments.values()].filter((a) => a.identifier?.some((i) => i.value === value && (system === undefined || i.system === system)));
      return { status: 200, headers: { 'content-type': 'application/fhir+json' }, body: { resourceType: 'Bundle', type: 'searchset', total: found.length, entry: found.map((a) => ({ resource: a, search: { mode: 'match' } })) } };
    }
    const current = m[1] === undefined ? undefined : appointments.get(m[1]);
    if (!current) return outcome(404, 'not-found', `Appointment/${m[1]} is not known`);
    if (request.method === 'GET') return withEtag(current);
    if (request.method !== 'PUT' && request.method !== 'PATCH') return outcome(405, 'not-supported', 'method not allowed');
    if (interfering > 0) {
      interfering--;
      bump(current);
    }
    const written = options.write(request, current);
    if (!('resourceType' in written)) return written;
    bump(written);
    appointments.set(current.id, written);
    // Millennium answers a PATCH with an empty body and the new version in ETag.
    return withEtag(written, request.method === 'PUT');
  });
  return {
    http,
    baseUrl: `${http.baseUrl}/fhir`,
    token,
    appointments,
    book(id, patientId, identifier) {
      const a: StandInAppointment = {
        resourceType: 'Appointment',
        id,
        meta: { versionId: '1' },
        status: 'booked',
        participant: [
          { actor: { reference: 'Practitioner/PR1' }, status: 'accepted' },
          { actor: { reference: `Patient/${patientId}` }, status: 'tentative' },
        ],
        ...(identifier ? { identifier: [identifier] } : {}),
        start: '2030-03-16T13:30:00Z',
      };
      appointments.set(id, a);
      return a;
    },
    interfere(n) {
      interfering = n;
    },
    writes: () => http.requests.filter((r) => r.method === 'PUT' || r.method === 'PATCH'),
    creates: () => http.requests.filter((r) => r.method === 'POST' && r.path === '/fhir/Appointment'),
    failCreates(n, status) {
      failing.n = n;
      failing.status = status;
    },
    bookings: () => http.requests.filter((r) => r.method === 'POST' && r.path === '/fhir/Appointment/$book'),
    rejectBookings(n) {
      booking.reject = n;
    },
    lostBookingAnswers(n) {
      booking.lose = n;
    },
    state(id) {
      const a = appointments.get(id)!;
      const reason = a.cancelationReason?.coding?.[0]?.code;
      return {
        confirmed: a.participant.find((p) => p.actor.reference?.startsWith('Patient/') || p.actor.type === 'Patient')?.status === 'accepted',
        cancelled: a.status === 'cancelled',
        ...(reason !== undefined ? { cancelReason: reason } : {}),
      };
    },
    close: () => http.close(),
  };
}

/** A generic FHIR R4 server: version-aware PUT. `conflictStatus`: what a stale If-Match gets (412, or 409). */
export function startFhirAppointmentStandIn(options: { conflictStatus?: 409 | 412 } = {}): Promise<AppointmentStandIn> {
  const appointments = new Map<string, StandInAppointment>();
  const failing = { n: 0, status: 503 };
  const booking = { reject: 0, lose: 0 };
  let made = 0;
  const fhirJson = { 'content-type': 'application/fhir+json' };
  return startAppointmentServer({
    appointments,
    failing,
    booking,
    book(request) {
      if (!(header(request, 'content-type') ?? '').startsWith('application/fhir+json')) return outcome(415, 'not-supported', 'Content-Type must be application/fhir+json');
      let body: { resourceType?: string; parameter?: Array<{ name?: string; resource?: StandInAppointment; valueUri?: string; valueString?: string }> } | undefined;
      try {
        body = JSON.parse(request.text) as typeof body;
      } catch {
        return outcome(400, 'structure', 'the body is not JSON');
      }
      if (body?.resourceType !== 'Parameters' || !Array.isArray(body.parameter)) return outcome(400, 'structure', '$book takes a Parameters resource');
      const unknown = body.parameter.find((p) => !['appt-resource', 'appt-id', 'patient-id', 'comment', 'cancelled-appt-id'].includes(String(p.name)));
      if (unknown !== undefined) return outcome(400, 'invalid', `unknown parameter ${String(unknown.name)}`);
      const resources = body.parameter.filter((p) => p.name === 'appt-resource');
      if (resources.length !== 1 || resources[0]!.resource?.resourceType !== 'Appointment') return outcome(400, 'required', 'this server books an appt-resource: exactly one Appointment');
      if (body.parameter.some((p) => p.name === 'patient-id' && !/^Patient\/[A-Za-z0-9\-.]{1,64}$/.test(p.valueUri ?? ''))) return outcome(400, 'value', 'patient-id is a uri Patient/<id>');
      const appt = resources[0]!.resource!;
      if (appt.id !== undefined) return outcome(400, 'invalid', 'appt-resource is a new Appointment (no id)');
      if (appt.status !== 'proposed') return outcome(422, 'business-rule', 'the Appointment to book must be proposed');
      if (typeof appt.start !== 'string' || !Array.isArray(appt.participant) || appt.participant.length === 0 || appt.participant.some((p) => !PARTICIPANT_STATUS.has(p.status))) {
        return outcome(422, 'required', 'the Appointment needs start and participants with a valid status');
      }
      if (failing.n > 0) {
        failing.n--;
        return outcome(failing.status, failing.status === 409 ? 'conflict' : 'processing', 'the server refused the booking');
      }
      const bundle = (a: StandInAppointment) => ({ status: 200, headers: fhirJson, body: { resourceType: 'Bundle', type: 'searchset', total: 1, entry: [{ fullUrl: `${request.path}/${a.id}`, resource: a }] } });
      if (booking.reject > 0) {
        booking.reject--;
        return bundle({ ...appt, id: `rejected-${++made}`, meta: { versionId: '1' }, status: 'cancelled' });
      }
      const id = `booked-${++made}`;
      const stored: StandInAppointment = { ...appt, id, meta: { versionId: '1' }, status: 'booked', participant: appt.participant.map((p) => ({ ...p, status: 'accepted' })) };
      appointments.set(id, stored);
      if (booking.lose > 0) {
        booking.lose--;
        return outcome(500, 'exception', 'the answer was lost');
      }
      return bundle(stored);
    },
    // Create (https://hl7.org/fhir/R4/http.html#create): POST [base]/Appointment, application/fhir+json, no id
    // (the server assigns it), 201 with Location and the resource. Conditional create (§3.1.0.8.1):
    // If-None-Exist `identifier=system|value` — one match: 200 with it and nothing made.
    create(request) {
      if (!(header(request, 'content-type') ?? '').startsWith('application/fhir+json')) return outcome(415, 'not-supported', 'Content-Type must be application/fhir+json');
      let body: StandInAppointment;
      try {
        body = JSON.parse(request.text) as StandInAppointment;
      } catch {
        return outcome(400, 'structure', 'the body is not JSON');
      }
      if (body.resourceType !== 'Appointment' || body.id !== undefined) return outcome(400, 'invalid', 'create takes an Appointment without an id');
      if (!APPOINTMENT_STATUS.has(body.status)) return outcome(422, 'code-invalid', `Appointment.status ${String(body.status)} is not in the value set`);
      if (typeof body.start !== 'string' || !Array.isArray(body.participant) || body.participant.length === 0 || body.participant.some((p) => !PARTICIPANT_STATUS.has(p.status))) {
        return outcome(422, 'required', 'a booked Appointment needs start and participants with a valid status');
      }
      const condition = header(request, 'if-none-exist');
      if (condition !== undefined) {
        const q = new URLSearchParams(condition).get('identifier') ?? '';
        const [system, value] = q.includes('|') ? q.split('|') : [undefined, q];
        const found = [...appointments.values()].filter((a) => a.identifier?.some((i) => i.value === value && (system === undefined || i.system === system)));
        if (found.length > 1) return outcome(412, 'duplicate', 'the If-None-Exist criteria match several resources');
        if (found.length === 1) return withEtag(found[0]!);
      }
      if (failing.n > 0) {
        failing.n--;
        return outcome(failing.status, failing.status === 409 ? 'conflict' : 'processing', 'the server refused the booking');
      }
      const id = `made-${++made}`;
      const stored: StandInAppointment = { ...body, id, meta: { versionId: '1' } };
      appointments.set(id, stored);
      const answer = withEtag(stored);
      return { ...answer, status: 201, headers: { ...answer.headers, location: `/fhir/Appointment/${id}/_history/1` } };
    },
    write(request, current) {
      if (request.method !== 'PUT') return outcome(405, 'not-supported', 'use PUT (update)');
      if (!(header(request, 'content-type') ?? '').startsWith('application/fhir+json')) return outcome(415, 'not-supported', 'Content-Type must be application/fhir+json');
      const ifMatch = header(request, 'if-match');
      if (ifMatch === undefined) return outcome(412, 'conflict', 'this server requires If-Match on update');
      if (ifMatch !== `W/"${current.meta.versionId}"` && ifMatch !== `"${current.meta.versionId}"`) return outcome(options.conflictStatus ?? 412, 'conflict', `version ${ifMatch} is not the current one`);
      let body: StandInAppointment;
      try {
        body = JSON.parse(request.text) as StandInAppointment;
      } catch {
        return outcome(400, 'structure', 'the body is not JSON');
      }
      if (body.resourceType !== 'Appointment' || body.id !== current.id) return outcome(400, 'invalid', 'the body must be the Appointment with the id of the URL');
      if (!APPOINTMENT_STATUS.has(body.status)) return outcome(422, 'code-invalid', `Appointment.status ${String(body.status)} is not in the value set`);
      if (!Array.isArray(body.participant) || body.participant.length === 0 || body.participant.some((p) => !PARTICIPANT_STATUS.has(p.status))) {
        return outcome(422, 'code-invalid', 'Appointment.participant.status must be accepted, declined, tentative or needs-action');
      }
      if (body.cancelationReason !== undefined && !Array.isArray(body.cancelationReason.coding)) return outcome(422, 'structure', 'cancelationReason is a CodeableConcept');
      return { ...body, meta: { ...current.meta } };
    },
  });
}

/** A `ge…`/`lt…` pair of search values as [from, to) in ms; undefined unless both are there. */
function dateRange(values: string[]): [number, number] | undefined {
  const ge = values.find((v) => v.startsWith('ge'));
  const lt = values.find((v) => v.startsWith('lt'));
  if (ge === undefined || lt === undefined || Number.isNaN(Date.parse(ge.slice(2))) || Number.isNaN(Date.parse(lt.slice(2)))) return undefined;
  return [Date.parse(ge.slice(2)), Date.parse(lt.slice(2))];
}

/** A Millennium Slot the stand-in offers. */
export interface StandInSlot {
  resourceType: 'Slot';
  id: string;
  status: 'free' | 'busy';
  start: string;
  end: string;
  serviceType: Array<{ coding: Array<{ system: string; code: string }> }>;
  schedule: { reference: string };
  /** The practitioner of its schedule (schedule.actor). */
  actor: string;
}

/** Millennium's status sequences ("From Proposed to Booked or Cancelled…"). */
const ORACLE_TRANSITIONS: Record<string, string[]> = {
  proposed: ['booked', 'cancelled'],
  booked: ['arrived', 'checked-in', 'cancelled'],
  arrived: ['checked-in', 'cancelled'],
  'checked-in': ['fulfilled', 'cancelled'],
};

/** An Oracle Health Millennium R4 server: JSON Patch on the documented paths, If-Match required, 423 while `lock()`ed; Slots and booking creates. */
export async function startOracleAppointmentStandIn(): Promise<AppointmentStandIn & { lock(n: number): void; slots: Map<string, StandInSlot> }> {
  let locked = 0;
  let made = 0;
  const slots = new Map<string, StandInSlot>();
  const appointments = new Map<string, StandInAppointment>();
  const json = { 'content-type': 'application/fhir+json' };
  const server = await startAppointmentServer({
    appointments,
    slots(request) {
      const service = request.query.get('service-type');
      const range = dateRange(request.query.getAll('start'));
      if (service === null && !request.query.has('_id')) return outcome(400, 'required', 'service-type or _id is required');
      if (range === undefined) return outcome(400, 'required', 'start is required with a ge and an lt prefix');
      const [system, code] = service!.includes('|') ? service!.split('|') : [undefined, service!];
      const actor = request.query.get('schedule.actor');
      const found = [...slots.values()].filter(
        (slot) =>
          slot.serviceType.some((t) => t.coding.some((c) => c.code === code && (system === undefined || c.system === system))) &&
          Date.parse(slot.start) >= range[0] &&
          Date.parse(slot.start) < range[1] &&
          (actor === null || slot.actor === actor),
      );
      return { status: 200, headers: json, body: { resourceType: 'Bundle', type: 'searchset', entry: found.map((slot) => ({ resource: slot, search: { mode: 'match' } })) } };
    },
    create(request) {
      if (!(header(request, 'content-type') ?? '').startsWith('application/fhir+json')) return outcome(415, 'not-supported', 'Content-Type must be application/fhir+json');
      let body: { resourceType?: string; status?: string; slot?: Array<{ reference?: string }>; participant?: Array<{ actor?: { reference?: string }; status?: string; type?: unknown }> };
      try {
        body = JSON.parse(request.text) as typeof body;
      } catch {
        return outcome(400, 'structure', 'the body is not JSON');
      }
      if (body.resourceType !== 'Appointment') return outcome(400, 'invalid', 'the body must be an Appointment');
      if (body.status !== 'booked') return outcome(422, 'business-rule', 'this server books: status must be booked');
      if (!Array.isArray(body.slot) || body.slot.length !== 1) return outcome(422, 'business-rule', 'slot must be a list containing exactly one reference');
      const participant = body.participant;
      if (!Array.isArray(participant) || participant.length !== 1 || !/^Patient\/[A-Za-z0-9\-.]{1,64}$/.test(participant[0]!.actor?.reference ?? '')) {
        return outcome(422, 'business-rule', 'participant must be a list containing exactly one patient participant');
      }
      if (participant[0]!.status !== 'accepted' || participant[0]!.type !== undefined) return outcome(422, 'business-rule', 'the participant status must be accepted, and type must not be set');
      const slot = slots.get((body.slot[0]!.reference ?? '').replace(/^Slot\//, ''));
      if (slot === undefined) return outcome(422, 'business-rule', 'the Slot is not known');
      if (slot.status !== 'free') return outcome(409, 'conflict', 'the Slot is no longer available');
      slot.status = 'busy';
      const id = `${9100000 + ++made}`;
      appointments.set(id, {
        resourceType: 'Appointment',
        id,
        meta: { versionId: '0' },
        status: 'booked',
        slot: [{ reference: `Slot/${slot.id}` }],
        start: slot.start,
        end: slot.end,
        participant: [
          { actor: { reference: participant[0]!.actor!.reference! }, status: 'accepted' },
          { actor: { reference: slot.actor }, status: 'accepted' },
        ],
      });
      return { status: 201, headers: { location: `${request.path}/${id}`, etag: 'W/"0"' } };
    },
    write(request, current) {
      if (request.method !== 'PATCH') return outcome(405, 'not-supported', 'use PATCH');
      if (!(header(request, 'content-type') ?? '').startsWith('application/json-patch+json')) return outcome(415, 'not-supported', 'Content-Type must be application/json-patch+json');
      const ifMatch = header(request, 'if-match');
      if (ifMatch === undefined) return outcome(412, 'conflict', 'If-Match is required');
      if (ifMatch !== `W/"${current.meta.versionId}"`) return outcome(409, 'conflict', 'incorrect version');
      if (locked > 0) {
        locked--;
        return outcome(423, 'lock-error', 'the appointment is being modified');
      }
      let ops: Array<{ op?: string; path?: string; value?: unknown }>;
      try {
        ops = JSON.parse(request.text) as typeof ops;
      } catch {
        return outcome(400, 'structure', 'the body is not JSON');
      }
      if (!Array.isArray(ops) || ops.length === 0) return outcome(422, 'structure', 'a JSON Patch is a non-empty array');
      const next = structuredClone(current);
      const status = ops.find((o) => o.path === '/status');
      for (const o of ops) {
        if (o.op === 'replace' && o.path === '/status') {
          if (!(ORACLE_TRANSITIONS[current.status] ?? []).includes(String(o.value))) return outcome(422, 'business-rule', `status ${current.status} cannot become ${String(o.value)}`);
          next.status = String(o.value);
        } else if (o.op === 'add' && o.path === '/cancelationReason') {
          const coding = (o.value as { coding?: unknown[] } | undefined)?.coding;
          if (status?.value !== 'cancelled') return outcome(422, 'business-rule', 'add /cancelationReason must come with replace /status cancelled');
          if (!Array.isArray(coding) || coding.length !== 1) return outcome(422, 'business-rule', 'only one coding may be provided');
          next.cancelationReason = o.value as StandInAppointment['cancelationReason'];
        } else if (o.op === 'replace' && o.path === '/patient-status') {
          if (o.value !== 'accepted') return outcome(422, 'business-rule', 'a participant status other than accepted');
          const patient = next.participant.find((p) => p.actor.reference?.startsWith('Patient/'));
          if (current.status !== 'booked' || patient?.status !== 'tentative') return outcome(422, 'business-rule', 'only for a booked appointment whose Patient participant is tentative');
          patient.status = 'accepted';
        } else return outcome(422, 'not-supported', `${String(o.op)} ${String(o.path)} is not a supported patch operation`);
      }
      return next;
    },
  });
  return Object.assign(server, {
    slots,
    lock(n: number) {
      locked = n;
    },
  });
}
