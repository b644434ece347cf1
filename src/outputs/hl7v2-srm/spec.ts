// The `hl7v2-srm` output: writes a patient's answer back to a scheduling system that takes HL7
// v2.5 scheduling requests (chapter 10, "Scheduling"), over MLLP through CareRelay's own client
// (src/hl7v2/mllp-client.ts: one message in flight, the answer matched on MSA-2 = MSH-10).
//
//   confirm  SRM^S03^SRM_S01 "request appointment modification": ARQ-6 (request event reason)
//            says what changed — the patient confirmed (reasons.confirm, configurable)
//   cancel   SRM^S04^SRM_S01 "request appointment cancellation": ARQ-6 the cancellation reason
//            (default pat-crs, "Patient: Canceled via automated reminder system")
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
  readonly reasons: { readonly confirm: Coded; readonly cancel?: Coded };
  readonly requirePlacerId: boolean;
  readonly ackTimeoutSeconds: number;
  readonly connectTimeoutSeconds: number;
}

/** Failure and denial codes of this output (safe to log). */
export const SrmCode = {
  Denied: 'hl7_ae',
  Refused: 'hl7_ar',
  NoPlacerId: 'no_placer_id',
  BadAnswer: 'hl7_bad_answer',
  Aborted: 'hl7_aborted',
} as const;

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
  description: "Writes patients' answers back as HL7 v2.5 SRM^S03 (confirm) / SRM^S04 (cancel) over MLLP, waiting for the SRR.",
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
        cancel: coded('Why an S04 is sent (default: pat-crs).', CANCELLED_BY_REMINDER.code, CANCELLED_BY_REMINDER.display),
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
  summary: "Writes patients' answers as HL7 v2.5 SRM^S03 / SRM^S04 over MLLP; MSA AA applied, AE/AR denied.",
  configSchema: hl7v2SrmConfigSchema,
  check,
  info: () => WRITE_BACK_ONLY,
  create: (config, deps) => createHl7v2Srm(config, deps),
};

/** MSH-10 (ST, 20 characters in v2.5): the same for every attempt of one operation. */
export function controlIdOf(requestId: string): string {
  return `CR${createHash('sha256').update(requestId).digest('base64url').replace(/[-_]/g, '').slice(0, 18)}`;
}

/** HL7 timestamp of an instant, in UTC with its offset (YYYYMMDDHHMMSS+0000). */
function hl7Time(date: Date): string {
  return `${date.toISOString().replace(/[-:T]/g, '').slice(0, 14)}+0000`;
}

/** A segment from its valued fields by number (the rest empty). */
function segment(name: string, fields: Record<number, string>): string {
  const last = Math.max(...Object.keys(fields).map(Number));
  return [name, ...Array.from({ length: last }, (_, i) => fields[i + 1] ?? '')].join('|');
}

/** The SRM of an operation (segments separated by CR). */
export function srmFor(op: WriteBackOperation, config: Hl7v2SrmConfig, now: Date): string {
  const e = (text: string) => escapeHl7(text, DEFAULT_DELIMITERS);
  if (op.kind === WriteBackKind.Book) throw new PermanentError('book_not_supported', 'this output does not book slots (SRM^S01 is not implemented yet)');
  const event = op.kind === WriteBackKind.Confirm ? 'S03' : 'S04';
  const reason = op.kind === WriteBackKind.Confirm ? config.reasons.confirm : (config.reasons.cancel ?? { code: op.reason.code, text: op.reason.display });
  const ce = `${e(reason.code)}^${e(reason.text)}${reason.system !== undefined ? `^${e(reason.system)}` : ''}`;
  const person = `${e(config.enteredBy.id)}^${e(config.enteredBy.name)}`;
  const authority = config.patientAssigningAuthority !== undefined ? `^^^${e(config.patientAssigningAuthority)}^MR` : '';
  return [
    `MSH|^~\\&|${e(config.sendingApplication)}|${e(config.sendingFacility)}|${e(config.receivingApplication)}|${e(config.receivingFacility)}|${hl7Time(now)}||SRM^${event}^SRM_S01|${controlIdOf(op.requestId)}|P|${config.version}`,
    segment('ARQ', { 1: e(op.appointment.placerId ?? ''), 2: e(op.appointment.id), 6: ce, 15: person, 19: person }),
    `PID|1||${e(op.patient.id)}${authority}`,
    'RGS|1',
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

  const writeBack = async (op: WriteBackOperation, context: WriteBackContext): Promise<WriteBackResult> => {
    if (config.requirePlacerId && (op.appointment.placerId === undefined || op.appointment.placerId === '')) return { outcome: WriteBackOutcome.Denied, code: SrmCode.NoPlacerId };
    const { signal } = context;
    const aborted = () => new AmbiguousError(SrmCode.Aborted, `SRM to ${config.host}:${config.port}: aborted while waiting for the SRR (it may have been received)`);
    if (signal.aborted) throw aborted();
    // The caller's signal (shutdown, a lost lease) ends the wait: the connection is dropped so a
    // late SRR can never be taken for the next request's.
    const srr = await new Promise<Buffer>((resolve, reject) => {
      const onAbort = () => {
        void client.close().catch(() => undefined);
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
    try {
      code = parseHl7(srr).get('MSA-1');
    } catch {
      code = '';
    }
    if (code === 'AA' || code === 'CA') return { outcome: WriteBackOutcome.Applied, appointmentId: op.appointment.id };
    if (code === 'AE' || code === 'CE') return { outcome: WriteBackOutcome.Denied, code: SrmCode.Denied };
    if (code === 'AR' || code === 'CR') return { outcome: WriteBackOutcome.Denied, code: SrmCode.Refused };
    throw new PermanentError(SrmCode.BadAnswer, `SRM to ${config.host}:${config.port}: the answer has no MSA-1 acknowledgment code`);
  };
  return writeBackOnlyAdapter(config.name, writeBack, undefined, () => client.close());
}
