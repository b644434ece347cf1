// The `hl7v2-srm` output: writes a patient's answer back to a scheduling system that takes HL7
// v2.5 scheduling requests (chapter 10, "Scheduling"), over MLLP through CareRelay's own client
// (src/hl7v2/mllp-client.ts: one message in flight, the answer matched on MSA-2 = MSH-10).
//
//   confirm  SRM^S03^SRM_S01 "request appointment modification": ARQ-6 (request event reason)
//            says what changed — the patient confirmed (reasons.confirm, configurable)
//   cancel   SRM^S04^SRM_S01 "request appointment cancellation": ARQ-6 the cancellation reason
//            (a patient's cancel: reasons.cancel, default pat-crs "Patient: Canceled via
//            automated reminder system"; the later appointment given up for a waitlist slot:
//            pat-swl "Patient: Scheduled from Wait List", as the operation says)
//   book     SRM^S01^SRM_S01 "request new appointment booking" (§10.3.1), a freed waitlist slot
//            for a patient (docs/waitlist.md): ARQ-1 a placer appointment id CareRelay derives
//            from the request id (`<id>^<sendingApplication>`, the same on every attempt), ARQ-2
//            empty (the filler assigns it), ARQ-6 reasons.book, ARQ-9/10 the duration in minutes,
//            ARQ-11 the requested start range (the slot: start^end), ARQ-15/19 as above; PID; then
//            the resources group RGS|1|A with AIS (AIS-3 the service, required; AIS-4 start,
//            AIS-7/8 duration), AIP (AIP-3 the practitioner) and AIL (AIL-3 the location), each
//            with segment action code A, when the slot names them. The SRR^S01 says: MSA-1 AA
//            booked — the appointment made is SCH-2 (filler appointment id) when the SRR carries
//            an SCH, else unnamed —, AE denied (`hl7_ae`: the slot is taken), AR refused
//            (`hl7_ar`). A slot without a service is denied `no_service` without sending.
//            A resend carries the same MSH-10 and ARQ-1, so a filler that dedupes on either
//            books once.
//
// The message: MSH (MSH-10 derived from the operation's request id, so every attempt carries
// the same control id and a receiver dedupes a resend; original acknowledgment mode), ARQ
// (ARQ-1 placer appointment id = appointment.placerId, ARQ-2 filler appointment id =
// appointment.id, ARQ-15 placer contact person and ARQ-19 entered-by person — required in v2.5 —
// as configured), PID (PID-3 the patient id with its assigning authority), RGS|1 (the required
// resource group). An appointment without a placer id is sent with ARQ-1 empty unless
// `requirePlacerId` says the filler needs it (then: denied `no_placer_id`).
//
// The answer is the SRR (a plain ACK is accepted too): MSA-1 AA → applied; AE (the filler
// denied the request) → denied `hl7_ae`; AR (refused as sent) → denied `hl7_ar`; the MSA-3 text
// is not kept (it may name the patient). No answer in time or a connection lost after the
// message left → AmbiguousError (retried: same MSH-10); no connection → TransientError.
import { createHash } from 'node:crypto';
import type { InstanceCheckIssue } from '../../config/load.ts';
import { secretRefSchema, type JsonSchema, type SecretRef } from '../../config/yaml.ts';
import { AmbiguousError, PermanentError } from '../../errors.ts';
import { MllpClient } from '../../hl7v2/mllp-client.ts';
import { escapeHl7 } from '../../hl7v2/escape.ts';
import { DEFAULT_DELIMITERS, parseHl7 } from '../../hl7v2/parse.ts';
import { outputNameSchema } from '../common.ts';
import type { OutboundAdapter, OutputDeps, OutputSpec } from '../spec.ts';
import { CANCELLED_BY_REMINDER, WRITE_BACK_ONLY, WriteBackKind, WriteBackOutcome, writeBackOnlyAdapter, type WriteBackContext, type WriteBackOperation, type WriteBackResult } from '../write-back.ts';

export const HL7V2_SRM = 'hl7v2-srm';

interface Coded {
  readonly code: string;
  readonly text: string;
  readonly system?: string;
}

export interface Hl7v2SrmConfig {
  readonly name: string;
  readonly type: typeof HL7V2_SRM;
  readonly host: string;
  readonly port: number;
  readonly tls?: { readonly ca?: SecretRef; readonly cert?: SecretRef; readonly key?: SecretRef; readonly servername?: string };
  readonly sendingApplication: string;
  readonly sendingFacility: string;
  readonly receivingApplication: string;
  readonly receivingFacility: string;
  readonly version: string;
  readonly patientAssigningAuthority?: string;
  readonly enteredBy: { readonly id: string; readonly name: string };
  readonly reasons: { readonly confirm: Coded; readonly cancel?: Coded; readonly book?: Coded };
  readonly requirePlacerId: boolean;
  readonly ackTimeoutSeconds: number;
  readonly connectTimeoutSeconds: number;
}

/** Failure and denial codes of this output (safe to log). */
export const SrmCode = {
  Denied: 'hl7_ae',
  Refused: 'hl7_ar',
  NoPlacerId: 'no_placer_id',
  /** A slot to book without a service (AIS-3 is required). */
  NoService: 'no_service',
  BadAnswer: 'hl7_bad_answer',
  Aborted: 'hl7_aborted',
} as const;

/** ARQ-6 of an S01 by default. */
const BOOK_REASON = { code: 'WAITLIST', text: 'Freed slot taken from the wait list' } as const;

const coded = (description: string, code: string, text: string): JsonSchema => ({
  type: 'object',
  description,
  additionalProperties: false,
  required: ['code', 'text'],
  default: { code, text },
  properties: {
    code: { type: 'string', minLength: 1, maxLength: 20, description: 'CE.1 identifier.' },
    text: { type: 'string', minLength: 1, maxLength: 199, description: 'CE.2 text.' },
    system: { type: 'string', minLength: 1, maxLength: 20, description: 'CE.3 name of coding system (e.g. a local table, L).' },
  },
});

const hd = (description: string, fallback?: string): JsonSchema => ({ type: 'string', minLength: 1, maxLength: 180, pattern: '^[^|^~\\\\&]+$', description, ...(fallback ? { default: fallback } : {}) });

export const hl7v2SrmConfigSchema = {
  type: 'object',
  description: "Writes patients' answers back as HL7 v2.5 SRM^S03 (confirm) / SRM^S04 (cancel), and books waitlist slots with SRM^S01, over MLLP, waiting for the SRR.",
  additionalProperties: false,
  required: ['name', 'type', 'host', 'port', 'receivingApplication', 'receivingFacility'],
  properties: {
    name: outputNameSchema,
    type: { const: HL7V2_SRM, description: 'Output type: hl7v2-srm.' },
    host: { type: 'string', minLength: 1, description: "The scheduling system's MLLP listener." },
    port: { type: 'integer', minimum: 1, maximum: 65535, description: 'The MLLP listener port.' },
    tls: {
      type: 'object',
      description: 'MLLP over TLS (absent: plain TCP, for a private network or a local interface engine).',
      additionalProperties: false,
      properties: {
        ca: { ...secretRefSchema, description: 'PEM CA certificate(s) the server is verified against (default: the system roots).' },
        cert: { ...secretRefSchema, description: 'PEM client certificate for mutual TLS (with key).' },
        key: { ...secretRefSchema, description: 'PEM private key of the client certificate.' },
        servername: { type: 'string', minLength: 1, description: 'Name checked in the server certificate (default: host).' },
      },
    },
    sendingApplication: hd('MSH-3 sending application.', 'CARERELAY'),
    sendingFacility: hd('MSH-4 sending facility.', 'CARERELAY'),
    receivingApplication: hd('MSH-5: the scheduling application.'),
    receivingFacility: hd('MSH-6: the receiving facility.'),
    version: { enum: ['2.5', '2.5.1', '2.6'], default: '2.5', description: 'MSH-12 version id.' },
    patientAssigningAuthority: hd('PID-3.4 of the patient id (the MRN\'s assigning authority); absent: none.'),
    enteredBy: {
      type: 'object',
      description: 'ARQ-15 placer contact person and ARQ-19 entered by person (required in v2.5): who made the request.',
      additionalProperties: false,
      required: ['id', 'name'],
      default: { id: 'CARERELAY', name: 'Automated reminder' },
      properties: { id: { type: 'string', minLength: 1, maxLength: 20, description: 'XCN.1 id number.' }, name: { type: 'string', minLength: 1, maxLength: 50, description: 'XCN.2 family name.' } },
    },
    reasons: {
      type: 'object',
      description: 'ARQ-6 request event reason of each request.',
      additionalProperties: false,
      default: {},
      properties: {
        confirm: coded('Why an S03 is sent: the patient confirmed.', 'CONFIRMED', 'Confirmed by the patient via automated reminder'),
        cancel: coded("Why an S04 is sent for a patient's cancellation (default: pat-crs); a waitlist booking cancels the later appointment with pat-swl.", CANCELLED_BY_REMINDER.code, CANCELLED_BY_REMINDER.display),
        book: coded('Why an S01 is sent: a waitlist patient took a freed slot.', BOOK_REASON.code, BOOK_REASON.text),
      },
    },
    requirePlacerId: { type: 'boolean', default: false, description: 'Deny (staff task) instead of sending when the appointment has no placer id (ARQ-1 is required by the standard; some fillers match on ARQ-2 alone).' },
    ackTimeoutSeconds: { type: 'integer', minimum: 1, maximum: 300, default: 30, description: 'Seconds to wait for the SRR.' },
    connectTimeoutSeconds: { type: 'integer', minimum: 1, maximum: 120, default: 10, description: 'Seconds to open the connection.' },
  },
} as const satisfies JsonSchema;

function check(config: Hl7v2SrmConfig): InstanceCheckIssue[] {
  if (config.tls && (config.tls.cert === undefined) !== (config.tls.key === undefined)) return [{ path: ['tls'], atKey: true, message: 'tls: give cert and key together (mutual TLS) or neither' }];
  return [];
}

export const hl7v2SrmSpec: OutputSpec<Hl7v2SrmConfig, OutputDeps> = {
  type: HL7V2_SRM,
  summary: "Writes patients' answers as HL7 v2.5 SRM^S03 / SRM^S04, books waitlist slots with SRM^S01, over MLLP; MSA AA applied, AE/AR denied.",
  configSchema: hl7v2SrmConfigSchema,
  check,
  info: () => ({ ...WRITE_BACK_ONLY, writeBackKinds: SRM_KINDS }),
  create: (config, deps) => createHl7v2Srm(config, deps),
};

/** Confirm (S03), cancel (S04) and booking a waitlist slot (S01). */
const SRM_KINDS = [...WRITE_BACK_ONLY.writeBackKinds, WriteBackKind.Book] as const;

/** MSH-10 (ST, 20 characters in v2.5): the same for every attempt of one operation. */
export function controlIdOf(requestId: string): string {
  return `CR${createHash('sha256').update(requestId).digest('base64url').replace(/[-_]/g, '').slice(0, 18)}`;
}

/** HL7 timestamp of an instant, in UTC with its offset (YYYYMMDDHHMMSS+0000). */
function hl7Time(date: Date): string {
  return `${date.toISOString().replace(/[-:T]/g, '').slice(0, 14)}+0000`;
}

/** A segment from its valued fields by number (the rest, and undefined ones, empty). */
function segment(name: string, fields: Record<number, string | undefined>): string {
  const last = Math.max(...Object.keys(fields).filter((k) => fields[Number(k)] !== undefined).map(Number));
  return [name, ...Array.from({ length: last }, (_, i) => fields[i + 1] ?? '')].join('|');
}

const e = (text: string) => escapeHl7(text, DEFAULT_DELIMITERS);
const ceOf = (c: { code: string; text?: string; system?: string }) => `${e(c.code)}^${e(c.text ?? '')}${c.system !== undefined ? `^${e(c.system)}` : ''}`;

/** The placer appointment id (ARQ-1) of a booking: CareRelay places it, the same on every attempt. */
export function placerIdOf(op: { requestId: string }): string {
  return controlIdOf(op.requestId);
}

/** ARQ-10 / AIS-8 …: minutes (ISO+ "min"). */
const MINUTES = 'min^minutes^ISO+';

/** The ARQ and resource segments of an S01 (§10.3.1: ARQ, PID, RGS { AIS, AIL, AIP }). */
function bookingSegments(op: Extract<WriteBackOperation, { kind: 'book' }>, config: Hl7v2SrmConfig, reason: string, person: string, pid: string): string[] {
  const { slot } = op;
  const start = hl7Time(new Date(slot.start));
  const minutes = slot.durationMinutes ?? (slot.end !== undefined ? Math.round((Date.parse(slot.end) - Date.parse(slot.start)) / 60_000) : undefined);
  const end = slot.end ?? (minutes !== undefined ? new Date(Date.parse(slot.start) + minutes * 60_000).toISOString() : undefined);
  const count = minutes !== undefined ? String(minutes) : undefined;
  const units = minutes !== undefined ? MINUTES : undefined;
  const timing = { 6: start, 9: count, 10: units };
  const service = slot.serviceType!;
  return [
    segment('ARQ', {
      1: `${e(placerIdOf(op))}^${e(config.sendingApplication)}`,
      6: reason,
      9: count,
      10: units,
      11: `${start}${end !== undefined ? `^${hl7Time(new Date(end))}` : ''}`,
      15: person,
      19: person,
    }),
    pid,
    'RGS|1|A',
    segment('AIS', { 1: '1', 2: 'A', 3: ceOf({ code: service.code, text: service.display ?? '', ...(service.system !== undefined ? { system: service.system } : {}) }), 4: start, 7: count, 8: units }),
    ...(slot.location !== undefined ? [segment('AIL', { 1: '1', 2: 'A', 3: e(slot.location.id), ...timing })] : []),
    ...(slot.practitioner !== undefined ? [segment('AIP', { 1: '1', 2: 'A', 3: `${e(slot.practitioner.id)}${slot.practitioner.name !== undefined ? `^${e(slot.practitioner.name)}` : ''}`, ...timing })] : []),
  ];
}

/** The SRM of an operation (segments separated by CR). */
export function srmFor(op: WriteBackOperation, config: Hl7v2SrmConfig, now: Date): string {
  const event = op.kind === WriteBackKind.Confirm ? 'S03' : op.kind === WriteBackKind.Cancel ? 'S04' : 'S01';
  const reason =
    op.kind === WriteBackKind.Confirm
      ? config.reasons.confirm
      : op.kind === WriteBackKind.Cancel
        ? // reasons.cancel stands for the patient's own cancellation (pat-crs); another reason (a
          // waitlist booking's pat-swl) is sent as the operation gives it.
          op.reason.code === CANCELLED_BY_REMINDER.code
          ? (config.reasons.cancel ?? { code: op.reason.code, text: op.reason.display })
          : { code: op.reason.code, text: op.reason.display }
        : (config.reasons.book ?? BOOK_REASON);
  const ce = ceOf(reason);
  const person = `${e(config.enteredBy.id)}^${e(config.enteredBy.name)}`;
  const authority = config.patientAssigningAuthority !== undefined ? `^^^${e(config.patientAssigningAuthority)}^MR` : '';
  const pid = `PID|1||${e(op.patient.id)}${authority}`;
  return [
    `MSH|^~\\&|${e(config.sendingApplication)}|${e(config.sendingFacility)}|${e(config.receivingApplication)}|${e(config.receivingFacility)}|${hl7Time(now)}||SRM^${event}^SRM_S01|${controlIdOf(op.requestId)}|P|${config.version}`,
    ...(op.kind === WriteBackKind.Book
      ? bookingSegments(op, config, ce, person, pid)
      : [segment('ARQ', { 1: e(op.appointment.placerId ?? ''), 2: e(op.appointment.id), 6: ce, 15: person, 19: person }), pid, 'RGS|1']),
  ].join('\r');
}

export function createHl7v2Srm(config: Hl7v2SrmConfig, deps: OutputDeps): OutboundAdapter {
  const tls = config.tls === undefined ? undefined : {
    ...(config.tls.ca ? { ca: deps.secret(config.tls.ca) } : {}),
    ...(config.tls.cert ? { cert: deps.secret(config.tls.cert) } : {}),
    ...(config.tls.key ? { key: deps.secret(config.tls.key) } : {}),
    ...(config.tls.servername ? { servername: config.tls.servername } : {}),
  };
  const client = new MllpClient({
    host: config.host,
    port: config.port,
    ...(tls ? { tls } : {}),
    ackTimeoutMs: config.ackTimeoutSeconds * 1000,
    connectTimeoutMs: config.connectTimeoutSeconds * 1000,
  });

  let closing: Promise<unknown> | undefined;
  const writeBack = async (op: WriteBackOperation, context: WriteBackContext): Promise<WriteBackResult> => {
    if (op.kind === WriteBackKind.Book) {
      if (op.slot.serviceType === undefined) return { outcome: WriteBackOutcome.Denied, code: SrmCode.NoService };
    } else if (config.requirePlacerId && (op.appointment.placerId === undefined || op.appointment.placerId === '')) return { outcome: WriteBackOutcome.Denied, code: SrmCode.NoPlacerId };
    const { signal } = context;
    // A connection dropped by an abort is closed before the next attempt connects again.
    await closing;
    const aborted = () => new AmbiguousError(SrmCode.Aborted, `SRM to ${config.host}:${config.port}: aborted while waiting for the SRR (it may have been received)`);
    if (signal.aborted) throw aborted();
    // The caller's signal (shutdown, a lost lease) ends the wait: the connection is dropped so a
    // late SRR can never be taken for the next request's.
    const srr = await new Promise<Buffer>((resolve, reject) => {
      const onAbort = () => {
        closing = client.close().catch(() => undefined);
        reject(aborted());
      };
      signal.addEventListener('abort', onAbort, { once: true });
      // Connection failures are TransientError from the client: nothing was sent.
      client
        .connect()
        .then(() => (signal.aborted ? Promise.reject(aborted()) : client.send(srmFor(op, config, deps.now()))))
        .then(resolve, reject)
        .finally(() => signal.removeEventListener('abort', onAbort));
    });
    let code: string;
    let filler = '';
    try {
      const answer = parseHl7(srr);
      code = answer.get('MSA-1');
      // An SRR^S01 may return the appointment as booked: SCH-2 the filler appointment id (EI.1).
      filler = answer.get('SCH-2');
    } catch {
      code = '';
    }
    if (code === 'AA' || code === 'CA') {
      if (op.kind !== WriteBackKind.Book) return { outcome: WriteBackOutcome.Applied, appointmentId: op.appointment.id };
      return { outcome: WriteBackOutcome.Applied, ...(filler !== '' ? { appointmentId: filler } : {}) };
    }
    if (code === 'AE' || code === 'CE') return { outcome: WriteBackOutcome.Denied, code: SrmCode.Denied };
    if (code === 'AR' || code === 'CR') return { outcome: WriteBackOutcome.Denied, code: SrmCode.Refused };
    throw new PermanentError(SrmCode.BadAnswer, `SRM to ${config.host}:${config.port}: the answer has no MSA-1 acknowledgment code`);
  };
  return { ...writeBackOnlyAdapter(config.name, writeBack, undefined, () => client.close()), writeBackKinds: SRM_KINDS };
}
