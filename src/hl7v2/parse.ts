// HL7v2 message parser. Protocol code only: no business rules.
//
// - Delimiters come from MSH-1 / MSH-2 (never hard-coded); v2.7+ may add a truncation
//   character as the fifth encoding character.
// - Segments end with CR; real feeds also send LF or CRLF: all three are accepted.
// - Parsing is lazy: a segment is split into fields on first access and values are
//   extracted with indexOf scans, so a normalizer reading ~50 values stays within a few µs.
// - Values returned by `get` are unescaped (escape.ts); `raw` accessors return wire text.
import { decodeHl7Bytes } from './charset.ts';
import { unescapeHl7 } from './escape.ts';
import { Hl7ParseError, Hl7ParseErrorCode } from './parse-error.ts';

export { Hl7ParseError, Hl7ParseErrorCode } from './parse-error.ts';

export interface Hl7Delimiters {
  field: string;
  component: string;
  repetition: string;
  escape: string;
  subcomponent: string;
  /** v2.7+ truncation character, when MSH-2 declares one. */
  truncation?: string;
}

export const DEFAULT_DELIMITERS: Readonly<Hl7Delimiters> = Object.freeze({
  field: '|',
  component: '^',
  repetition: '~',
  escape: '\\',
  subcomponent: '&',
});

/** Returns the n-th (0-based) piece of `text` split on `sep`, without allocating the others. */
function nthPiece(text: string, sep: string, n: number): string {
  let start = 0;
  for (let i = 0; i < n; i++) {
    const next = text.indexOf(sep, start);
    if (next === -1) return '';
    start = next + 1;
  }
  const end = text.indexOf(sep, start);
  return end === -1 ? text.slice(start) : text.slice(start, end);
}

function countPieces(text: string, sep: string): number {
  let count = 1;
  let at = text.indexOf(sep);
  while (at !== -1) {
    count++;
    at = text.indexOf(sep, at + 1);
  }
  return count;
}

/** One repetition of a field: components and sub-components. */
export class Hl7Repetition {
  constructor(
    readonly raw: string,
    private readonly d: Hl7Delimiters,
  ) {}

  /** Decoded value of component `component` (1-based), sub-component `sub` (1-based). */
  get(component = 1, sub = 1): string {
    const comp = nthPiece(this.raw, this.d.component, component - 1);
    const value = nthPiece(comp, this.d.subcomponent, sub - 1);
    return value.indexOf(this.d.escape) === -1 ? value : unescapeHl7(value, this.d);
  }

  /** Raw text of one component (sub-components not split, not unescaped). */
  rawComponent(component: number): string {
    return nthPiece(this.raw, this.d.component, component - 1);
  }

  get isEmpty(): boolean {
    return this.raw === '' || this.raw === '""';
  }
}

export class Hl7Segment {
  /** Three-letter segment id (MSH, PID, Z01…). */
  readonly name: string;
  /** The segment's wire text, without the terminator. */
  readonly raw: string;
  private fields: string[] | undefined;

  constructor(
    raw: string,
    private readonly d: Hl7Delimiters,
  ) {
    this.raw = raw;
    const sep = raw.indexOf(d.field);
    this.name = sep === -1 ? raw : raw.slice(0, sep);
  }

  /**
   * Fields indexed by HL7 field number. For MSH (and the batch headers FHS/BHS), field 1 is
   * the field separator itself and field 2 the encoding characters, so numbering matches
   * the standard ("MSH-10" is fields[10]).
   */
  private split(): string[] {
    if (this.fields === undefined) {
      const parts = this.raw.split(this.d.field);
      if (this.name === 'MSH' || this.name === 'FHS' || this.name === 'BHS') {
        parts.splice(1, 0, this.d.field);
      }
      this.fields = parts;
    }
    return this.fields;
  }

  /** Highest field number present. */
  get fieldCount(): number {
    return this.split().length - 1;
  }

  /** Raw wire text of field `n` (all repetitions), '' when absent. */
  rawField(n: number): string {
    return this.split()[n] ?? '';
  }

  /** True when field `n` has a non-empty value (HL7's `""` null counts as valued: it erases). */
  has(n: number): boolean {
    return this.rawField(n) !== '';
  }

  /** Decoded value of field-n, repetition `rep`, component, sub-component (all 1-based). */
  get(n: number, component = 1, sub = 1, rep = 1): string {
    let text = this.rawField(n);
    if (text === '') return '';
    // MSH-1 and MSH-2 are the delimiters themselves: never split or unescape them.
    if (n <= 2 && (this.name === 'MSH' || this.name === 'FHS' || this.name === 'BHS')) {
      return component === 1 && sub === 1 && rep === 1 ? text : '';
    }
    if (rep !== 1 || text.indexOf(this.d.repetition) !== -1) {
      text = nthPiece(text, this.d.repetition, rep - 1);
    }
    const comp = nthPiece(text, this.d.component, component - 1);
    const value = sub === 1 && comp.indexOf(this.d.subcomponent) === -1 ? comp : nthPiece(comp, this.d.subcomponent, sub - 1);
    return value.indexOf(this.d.escape) === -1 ? value : unescapeHl7(value, this.d);
  }

  /** Every repetition of field `n` (none when the field is empty). */
  repetitions(n: number): Hl7Repetition[] {
    const text = this.rawField(n);
    if (text === '') return [];
    if (n <= 2 && (this.name === 'MSH' || this.name === 'FHS' || this.name === 'BHS')) {
      return [new Hl7Repetition(text, this.d)];
    }
    return text.split(this.d.repetition).map((r) => new Hl7Repetition(r, this.d));
  }

  repetitionCount(n: number): number {
    const text = this.rawField(n);
    return text === '' ? 0 : countPieces(text, this.d.repetition);
  }
}

// "PID-3", "PID-3.1", "PID-3[2].4.1", "AIS[2]-4" — segment occurrence and field repetition
// are 1-based and optional. Every number is 1-based: a 0 is rejected rather than silently
// read as the first piece.
const PATH_RE =
  /^([A-Z][A-Z0-9]{2})(?:\[([1-9]\d*)\])?-([1-9]\d*)(?:\[([1-9]\d*)\])?(?:\.([1-9]\d*))?(?:\.([1-9]\d*))?$/;

interface ParsedPath {
  segment: string;
  occurrence: number;
  field: number;
  rep: number;
  component: number;
  sub: number;
}

const pathCache = new Map<string, ParsedPath>();

function parsePath(path: string): ParsedPath {
  let parsed = pathCache.get(path);
  if (parsed === undefined) {
    const m = PATH_RE.exec(path);
    if (m === null) throw new Error(`invalid HL7 path "${path}" (expected e.g. PID-3[1].4.1)`);
    parsed = {
      segment: m[1]!,
      occurrence: m[2] ? Number(m[2]) : 1,
      field: Number(m[3]),
      rep: m[4] ? Number(m[4]) : 1,
      component: m[5] ? Number(m[5]) : 1,
      sub: m[6] ? Number(m[6]) : 1,
    };
    pathCache.set(path, parsed);
  }
  return parsed;
}

export class Hl7Message {
  constructor(
    readonly segments: readonly Hl7Segment[],
    readonly delimiters: Hl7Delimiters,
    /** Character set the bytes were decoded with ("ASCII", "UTF-8", "8859/1"…). */
    readonly charset: string,
    /** The decoded message text. */
    readonly text: string,
  ) {}

  /** First segment named `name` (or its n-th occurrence, 1-based). */
  segment(name: string, occurrence = 1): Hl7Segment | undefined {
    let seen = 0;
    for (const s of this.segments) {
      if (s.name === name && ++seen === occurrence) return s;
    }
    return undefined;
  }

  all(name: string): Hl7Segment[] {
    return this.segments.filter((s) => s.name === name);
  }

  /** Decoded value at a path such as "MSH-10", "PID-3[2].5", "AIS[2]-4.1"; '' when absent. */
  get(path: string): string {
    const p = parsePath(path);
    const seg = this.segment(p.segment, p.occurrence);
    return seg === undefined ? '' : seg.get(p.field, p.component, p.sub, p.rep);
  }

  /** MSH-9.1^MSH-9.2, e.g. "SIU^S12". */
  get messageType(): string {
    const msh = this.segments[0]!;
    const code = msh.get(9, 1);
    const event = msh.get(9, 2);
    return event ? `${code}^${event}` : code;
  }

  get controlId(): string {
    return this.segments[0]!.get(10);
  }
}

function readDelimiters(header: string): Hl7Delimiters {
  // header starts with "MSH", "FHS" or "BHS"; byte 3 is the field separator, then the
  // encoding characters up to the next field separator (MSH-2).
  const field = header.charAt(3);
  if (field === '' || /[A-Za-z0-9\r\n ]/.test(field)) {
    throw new Hl7ParseError(
      Hl7ParseErrorCode.BadDelimiters,
      `${header.slice(0, 3)}-1 field separator is missing or invalid (got ${JSON.stringify(field)}); expected a character such as "|" right after "${header.slice(0, 3)}"`,
    );
  }
  // MSH-2 ends at the next field separator or at the end of the header segment: a batch
  // header is often just "FHS|^~\\&" followed by a segment break.
  let end = 4;
  while (end < header.length) {
    const c = header.charAt(end);
    if (c === field || c === '\r' || c === '\n') break;
    end++;
  }
  const enc = header.slice(4, end);
  if (enc.length < 4 || enc.length > 5) {
    throw new Hl7ParseError(
      Hl7ParseErrorCode.BadDelimiters,
      `MSH-2 encoding characters must be 4 (or 5 with truncation) characters such as "^~\\&", got ${JSON.stringify(enc)}`,
    );
  }
  const chars = [field, ...enc];
  if (new Set(chars).size !== chars.length || /[A-Za-z0-9\r\n ]/.test(enc)) {
    throw new Hl7ParseError(
      Hl7ParseErrorCode.BadDelimiters,
      `MSH-1/MSH-2 delimiters must be distinct non-alphanumeric characters, got ${JSON.stringify(field + enc)}`,
    );
  }
  return {
    field,
    component: enc[0]!,
    repetition: enc[1]!,
    escape: enc[2]!,
    subcomponent: enc[3]!,
    ...(enc.length === 5 ? { truncation: enc[4]! } : {}),
  };
}

const SEGMENT_BREAK = /\r\n|\r|\n/;

function splitSegments(text: string): string[] {
  const lines = text.split(SEGMENT_BREAK);
  const out: string[] = [];
  for (const line of lines) {
    // Trailing whitespace-only lines and stray padding are not segments.
    if (line.trim() !== '') out.push(line);
  }
  return out;
}

function stripLeadingNoise(text: string): string {
  // A UTF-8 BOM or whitespace before MSH is tolerated; anything else is a missing MSH.
  let start = 0;
  while (start < text.length) {
    const c = text.charCodeAt(start);
    if (c === 0xfeff || c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) start++;
    else break;
  }
  return start === 0 ? text : text.slice(start);
}

function buildMessage(segmentTexts: string[], delimiters: Hl7Delimiters, charset: string, text: string): Hl7Message {
  return new Hl7Message(
    segmentTexts.map((s) => new Hl7Segment(s, delimiters)),
    delimiters,
    charset,
    text,
  );
}

/**
 * Parses one HL7v2 message from bytes (charset per MSH-18) or an already-decoded string.
 * Throws Hl7ParseError when there is no MSH, the delimiters are invalid, or MSH-18 names a
 * character set CareRelay cannot decode.
 */
export function parseHl7(input: Buffer | string): Hl7Message {
  const { text: decoded, charset } = typeof input === 'string' ? { text: input, charset: 'UTF-16' } : decodeHl7Bytes(input);
  const text = stripLeadingNoise(decoded);
  if (text.trim() === '') throw new Hl7ParseError(Hl7ParseErrorCode.Empty, 'the message is empty');
  if (!text.startsWith('MSH')) {
    throw new Hl7ParseError(
      Hl7ParseErrorCode.NoMsh,
      `the message does not start with an MSH segment (starts with ${JSON.stringify(text.slice(0, 3))})`,
    );
  }
  const delimiters = readDelimiters(text);
  return buildMessage(splitSegments(text), delimiters, charset, text);
}

/**
 * Parses a message or an FHS/BHS batch into its messages. Batch envelope segments
 * (FHS, BHS, BTS, FTS) are dropped; every MSH starts a new message.
 */
export function parseHl7Batch(input: Buffer | string): Hl7Message[] {
  const { text: decoded, charset } = typeof input === 'string' ? { text: input, charset: 'UTF-16' } : decodeHl7Bytes(input);
  const text = stripLeadingNoise(decoded);
  if (!text.startsWith('FHS') && !text.startsWith('BHS')) return [parseHl7(input)];
  readDelimiters(text); // the batch header must itself be well-formed
  const messages: Hl7Message[] = [];
  let current: string[] = [];
  const flush = (): void => {
    if (current.length > 0) {
      // Each inner message declares its own delimiters in its MSH.
      const msgDelimiters = readDelimiters(current[0]!);
      messages.push(buildMessage(current, msgDelimiters, charset, current.join('\r')));
      current = [];
    }
  };
  for (const seg of splitSegments(text)) {
    const name = seg.slice(0, 3);
    if (name === 'FHS' || name === 'BHS' || name === 'BTS' || name === 'FTS') {
      flush();
    } else if (name === 'MSH') {
      flush();
      current.push(seg);
    } else if (current.length > 0) {
      current.push(seg);
    }
  }
  flush();
  return messages;
}
