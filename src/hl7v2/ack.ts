// HL7v2 acknowledgments (v2.x chapter 2, "Acknowledgment messages"; docs/hl7-fhir.md "ACKs").
//
// - The ACK is written with the ORIGINAL message's delimiters (MSH-1/MSH-2 echoed), so
//   wire text copied from the original (MSH-3..6, MSH-10 into MSA-2, MSH-11/12/18) stays
//   byte-exact, and our own text is escaped with the same characters.
// - Original mode (MSH-15 and MSH-16 both empty): one ACK, AA/AE/AR.
// - Enhanced mode: commit ACK CA/CE/CR, sent or not per MSH-15 (table 0155).
// - An ACK can always be framed: the MLLP block characters 0x0B/0x1C never reach it. Echoed
//   wire text has them replaced by their \X0B\ / \X1C\ escapes (MSA-2 then carries the same
//   MSH-10 value, escaped: a sender that compares decoded values still matches it, and one
//   whose MSH-10 held a raw 0x1C could not have been answered with it at all), our own text
//   is escaped, and a message whose delimiters are block characters is answered with the
//   default delimiters and decoded, re-escaped values. Such messages are refused anyway
//   (workers/ingest.ts); this is what makes the refusal deliverable.
import type { AckCode } from '../types.ts';
import { isWritableCharset } from './charset.ts';
import { escapeHl7, hasBlockCharacter, withoutBlockCharacters } from './escape.ts';
import { DEFAULT_DELIMITERS, type Hl7BatchHeader, type Hl7Delimiters, type Hl7Message } from './parse.ts';

/** MSA-3 (text message) is 80 characters long (v2.5.1 §2.15.8.3). */
export const MSA_TEXT_MAX = 80;
/** ERR-3.2 (CWE text) is an ST of 199 characters (v2.5.1 CWE). */
export const ERR_TEXT_MAX = 199;

const DEFAULT_PROCESSING_ID = 'P';
const DEFAULT_VERSION = '2.5.1';

/** HL7 table 0357, message error condition codes (ERR-3.1). */
export const ErrorCondition = {
  SegmentSequenceError: '100',
  RequiredFieldMissing: '101',
  DataTypeError: '102',
  TableValueNotFound: '103',
  UnsupportedMessageType: '200',
  UnsupportedEventCode: '201',
  UnsupportedProcessingId: '202',
  UnsupportedVersionId: '203',
  UnknownKeyIdentifier: '204',
  DuplicateKeyIdentifier: '205',
  ApplicationRecordLocked: '206',
  ApplicationInternalError: '207',
} as const;
export type ErrorCondition = (typeof ErrorCondition)[keyof typeof ErrorCondition];

export interface AckOptions {
  code: AckCode;
  /** Free text for MSA-3 and ERR-3.2; escaped and truncated here. */
  text?: string;
  /** HL7 table 0357 code for ERR-3.1 (default 207, application internal error). */
  errorCode?: ErrorCondition | string;
  /** ERR-2 error location (ERL wire text in the original's delimiters, e.g. "PID^1^3"). */
  errorLocation?: string;
  /** The ACK's own MSH-10. */
  controlId: string;
  /** MSH-7 of the ACK. */
  now: Date;
  /**
   * MSH-18 of the ACK when it must not echo the original's: '' for none. Default: the
   * original's MSH-18 when it names a set the ACK can be written in, else none.
   */
  charset?: string;
}

function pad(n: number, width: number): string {
  return String(n).padStart(width, '0');
}

/** YYYYMMDDHHMMSS+0000 (UTC), the DTM form CareRelay writes. */
function hl7Timestamp(d: Date): string {
  return (
    pad(d.getUTCFullYear(), 4) +
    pad(d.getUTCMonth() + 1, 2) +
    pad(d.getUTCDate(), 2) +
    pad(d.getUTCHours(), 2) +
    pad(d.getUTCMinutes(), 2) +
    pad(d.getUTCSeconds(), 2) +
    '+0000'
  );
}

/**
 * Escapes `text` and keeps at most `max` characters of the escaped (wire) text, never
 * cutting an escape sequence or a surrogate pair in half.
 */
export function escapeAndTruncate(text: string, d: Hl7Delimiters, max: number): string {
  const escaped = escapeHl7(text, d);
  let out = '';
  let length = 0;
  let i = 0;
  while (i < escaped.length) {
    let token: string;
    if (escaped[i] === d.escape) {
      // escapeHl7 only emits complete sequences: take through the closing escape character.
      const end = escaped.indexOf(d.escape, i + 1);
      token = escaped.slice(i, end + 1);
    } else {
      const cp = escaped.codePointAt(i)!;
      token = String.fromCodePoint(cp);
    }
    const tokenLength = [...token].length;
    if (length + tokenLength > max) break;
    out += token;
    length += tokenLength;
    i += token.length;
  }
  return out;
}

function isErrorCode(code: AckCode): boolean {
  return code !== 'AA' && code !== 'CA';
}

/**
 * Builds the ACK for `original` (undefined when the input could not be parsed at all: then a
 * minimal ACK with default delimiters and an empty MSA-2). Segments end with CR.
 */
export function buildAck(original: Hl7Message | undefined, options: AckOptions): string {
  const theirs = original?.delimiters;
  // Delimiters that are block characters cannot be written: answer in the default ones.
  const usable = theirs !== undefined && !hasBlockCharacter(Object.values(theirs).join(''));
  const d = usable ? theirs : DEFAULT_DELIMITERS;
  const f = d.field;
  const msh = original?.segments[0];
  // Wire text of MSH-n, echoed: byte for byte (block characters escaped), or, when their
  // delimiters are not usable, the decoded first component re-escaped in ours.
  const raw = (n: number): string => {
    if (msh === undefined) return '';
    return usable ? withoutBlockCharacters(msh.rawField(n), d) : escapeHl7(msh.get(n), d);
  };
  const encoding = msh && usable ? msh.rawField(2) : `${d.component}${d.repetition}${d.escape}${d.subcomponent}`;

  const trigger = usable ? withoutBlockCharacters(msh?.repetitions(9)[0]?.rawComponent(2) ?? '', d) : escapeHl7(msh?.get(9, 2) ?? '', d);
  const messageType = trigger === '' ? 'ACK' : `ACK${d.component}${trigger}${d.component}ACK`;

  // MSH-1 is the separator itself, so the array below starts at MSH-2.
  const mshFields = [
    encoding,
    raw(5), // MSH-3 sending application ← original receiving application
    raw(6), // MSH-4 sending facility ← original receiving facility
    raw(3), // MSH-5 receiving application ← original sending application
    raw(4), // MSH-6 receiving facility ← original sending facility
    hl7Timestamp(options.now), // MSH-7
    '', // MSH-8 security
    messageType, // MSH-9
    escapeHl7(options.controlId, d), // MSH-10
    raw(11) || DEFAULT_PROCESSING_ID, // MSH-11
    raw(12) || DEFAULT_VERSION, // MSH-12
  ];
  // MSH-18 says what the ACK is written in: echoed only when it names a set one can write
  // (an ACK to "KLINGON" or to a block character there declares nothing, and stays readable).
  const declared = msh?.repetitions(18)[0]?.raw ?? '';
  const charset = options.charset ?? (usable && isWritableCharset(declared) ? raw(18) : '');
  if (charset !== '') {
    mshFields.push('', '', '', '', '', charset); // MSH-13..17 empty, MSH-18 echoed
  }

  const segments = [`MSH${f}${mshFields.join(f)}`];
  const text = options.text ?? '';
  // MSA-2 echoes the original MSH-10 wire text exactly (same delimiters, nothing re-escaped
  // but block characters).
  const msa = ['MSA', options.code, raw(10)];
  if (text !== '') msa.push(escapeAndTruncate(text, d, MSA_TEXT_MAX));
  segments.push(msa.join(f));

  if (isErrorCode(options.code)) {
    const code = options.errorCode ?? ErrorCondition.ApplicationInternalError;
    const condition = [escapeHl7(code, d), escapeAndTruncate(text, d, ERR_TEXT_MAX), 'HL70357'].join(d.component);
    // v2.5 ERR: ERR-1 (v2.4 error code and location) empty, ERR-2 location, ERR-3 condition, ERR-4 severity.
    segments.push(['ERR', '', withoutBlockCharacters(options.errorLocation ?? '', d), condition, 'E'].join(f));
  }
  return segments.map((s) => `${s}\r`).join('');
}

/** Acknowledgment mode of a message (v2.x §2.9). */
export const AckMode = {
  /** MSH-15 and MSH-16 both empty: one application ACK (AA/AE/AR). */
  Original: 'original',
  /** MSH-15 or MSH-16 valued: commit ACK (CA/CE/CR) per MSH-15, application ACK per MSH-16. */
  Enhanced: 'enhanced',
} as const;
export type AckMode = (typeof AckMode)[keyof typeof AckMode];

/** HL7 table 0155, accept/application acknowledgment conditions (MSH-15, MSH-16). */
export const AckCondition = {
  Always: 'AL',
  Never: 'NE',
  ErrorOnly: 'ER',
  SuccessOnly: 'SU',
} as const;
export type AckCondition = (typeof AckCondition)[keyof typeof AckCondition];

export interface AckModeInfo {
  mode: AckMode;
  /** MSH-15; AL in original mode (the one ACK is always sent). */
  accept: AckCondition;
  /** MSH-16; AL in original mode. */
  application: AckCondition;
}

function conditionOf(value: string): AckCondition {
  switch (value.trim().toUpperCase()) {
    case 'NE':
      return AckCondition.Never;
    case 'ER':
      return AckCondition.ErrorOnly;
    case 'SU':
      return AckCondition.SuccessOnly;
    default:
      // Empty in enhanced mode means AL; an unknown value also gets an ACK, because
      // answering is safer than leaving the sender waiting for one.
      return AckCondition.Always;
  }
}

export function ackModeOf(msg: Hl7Message): AckModeInfo {
  const accept = msg.get('MSH-15');
  const application = msg.get('MSH-16');
  if (accept === '' && application === '') {
    return { mode: AckMode.Original, accept: AckCondition.Always, application: AckCondition.Always };
  }
  return { mode: AckMode.Enhanced, accept: conditionOf(accept), application: conditionOf(application) };
}

/**
 * Whether the (commit) ACK should be sent at all. Original mode: always. Enhanced mode, per
 * MSH-15: AL always, NE never, ER only when not accepted, SU only when accepted.
 */
export function shouldSendAcceptAck(msg: Hl7Message, accepted: boolean): boolean {
  const { mode, accept } = ackModeOf(msg);
  if (mode === AckMode.Original) return true;
  switch (accept) {
    case AckCondition.Always:
      return true;
    case AckCondition.Never:
      return false;
    case AckCondition.ErrorOnly:
      return !accepted;
    case AckCondition.SuccessOnly:
      return accepted;
    default:
      accept satisfies never;
      return true;
  }
}

/** BHS-10 and BTS-2 (batch comments) are ST of 80 characters (v2.5.1 chapter 2, BHS and BTS). */
export const BATCH_COMMENT_MAX = 80;

/** A message of a batch that gets no ACK of its own, and why (e.g. "MSH-15 NE"). */
export interface NotAcknowledged {
  /** Its MSH-10. */
  controlId: string;
  why: string;
}

export interface BatchAckOptions {
  /** The ACK messages due, in batch order (each ends with CR). */
  acks: readonly string[];
  /** The messages that get none (their MSH-15 said so). */
  notAcknowledged: readonly NotAcknowledged[];
  /** Number of messages in the batch answered. */
  messageCount: number;
  /** The reply batch's own BHS-11. */
  controlId: string;
  /** BHS-7. */
  now: Date;
}

/**
 * Answers an FHS/BHS batch with a batch (v2.x chapter 2, "HL7 batch protocol"): BHS, the ACKs due,
 * BTS. The header is written with the batch's delimiters, sender and receiver swapped, and
 * BHS-12 (reference batch control id) echoing the batch's BHS-11 so the sender can match
 * the reply. Messages whose MSH-15 asks for no ACK get none; the reply still names them:
 * BHS-10 counts them, BTS-2 lists their MSH-10 and why, as far as its 80 characters allow.
 * BTS-1 is the number of ACK messages in the reply.
 */
export function buildBatchAck(batch: Hl7BatchHeader, options: BatchAckOptions): string {
  // Framed like every ACK: block characters escaped, or default delimiters (see buildAck).
  const usable = !hasBlockCharacter(Object.values(batch.delimiters).join(''));
  const d = usable ? batch.delimiters : DEFAULT_DELIMITERS;
  const f = d.field;
  const raw = (n: number): string =>
    n === 2 && !usable
      ? `${d.component}${d.repetition}${d.escape}${d.subcomponent}`
      : usable
        ? withoutBlockCharacters(batch.segment.rawField(n), d)
        : escapeHl7(batch.segment.get(n), d);
  const missing = options.notAcknowledged;
  const summary =
    missing.length === 0 ? '' : `${missing.length} of ${options.messageCount} message(s) not acknowledged, as their MSH-15 asked`;
  const bhs = [
    'BHS',
    raw(2),
    raw(5), // BHS-3 sending application ← the batch's receiving application
    raw(6),
    raw(3), // BHS-5 receiving application ← the batch's sending application
    raw(4),
    hl7Timestamp(options.now), // BHS-7
    '', // BHS-8 security
    '', // BHS-9 name/id/type
    escapeAndTruncate(summary, d, BATCH_COMMENT_MAX), // BHS-10 comment
    escapeHl7(options.controlId, d), // BHS-11
    raw(11), // BHS-12 reference batch control id ← the batch's BHS-11, wire text as sent
  ];
  while (bhs.length > 3 && bhs[bhs.length - 1] === '') bhs.pop();
  const bts = ['BTS', String(options.acks.length), notAcknowledgedList(missing, d)];
  while (bts.length > 2 && bts[bts.length - 1] === '') bts.pop();
  return `${bhs.join(f)}\r${options.acks.join('')}${bts.join(f)}\r`;
}

/** "M2 (MSH-15 NE), M4 (MSH-15 ER, accepted)", escaped, cut at a whole entry with "+N more". */
function notAcknowledgedList(missing: readonly NotAcknowledged[], d: Hl7Delimiters): string {
  const entries = missing.map((m) => escapeHl7(`${m.controlId} (${m.why})`, d));
  for (let shown = entries.length; shown >= 0; shown--) {
    const rest = entries.length - shown;
    const text = [...entries.slice(0, shown), ...(rest > 0 ? [`+${rest} more`] : [])].join(', ');
    if ([...text].length <= BATCH_COMMENT_MAX) return text;
  }
  return escapeAndTruncate(`${missing.length} not acknowledged`, d, BATCH_COMMENT_MAX);
}
