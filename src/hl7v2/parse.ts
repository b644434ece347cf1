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
  /** MSH and the batch headers FHS/BHS: field 1 is the separator itself. */
  private readonly isHeader: boolean;
  /** Offsets of every field separator in `raw`, found on first access. */
  private separators: number[] | undefined;

  constructor(
    raw: string,
    private readonly d: Hl7Delimiters,
  ) {
    this.raw = raw;
    const sep = raw.indexOf(d.field);
    this.name = sep === -1 ? raw : raw.slice(0, sep);
    this.isHeader = this.name === 'MSH' || this.name === 'FHS' || this.name === 'BHS';
  }

  // Offsets instead of raw.split(): a normalizer reads a handful of fields per segment, and
  // allocating every field string of every touched segment was most of the parse cost.
  private fieldSeparators(): number[] {
    let seps = this.separators;
    if (seps === undefined) {
      seps = [];
      const { raw } = this;
      const f = this.d.field;
      for (let at = raw.indexOf(f); at !== -1; at = raw.indexOf(f, at + 1)) seps.push(at);
      this.separators = seps;
    }
    return seps;
  }

  /** Highest field number present. */
  get fieldCount(): number {
    // For MSH/FHS/BHS, numbering matches the standard: "MSH-10" is the 9th piece after the name.
    return this.fieldSeparators().length + (this.isHeader ? 1 : 0);
  }

  /**
   * Raw wire text of field `n` (all repetitions), '' when absent. For MSH (and the batch
   * headers FHS/BHS), field 1 is the field separator itself and field 2 the encoding
   * characters, so numbering matches the standard.
   */
  rawField(n: number): string {
    let piece = n;
    if (this.isHeader && n >= 1) {
      if (n === 1) return this.d.field;
      piece = n - 1;
    }
    const seps = this.fieldSeparators();
    if (!(piece >= 0 && piece <= seps.length)) return '';
    const start = piece === 0 ? 0 : seps[piece - 1]! + 1;
    const end = piece < seps.length ? seps[piece]! : this.raw.length;
    return this.raw.slice(start, end);
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
    if (n <= 2 && this.isHeader) {
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
    if (n <= 2 && this.isHeader) {
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
  /** Segments by name, built on first lookup (a normalizer looks up ~60 values). */
  private byName: Map<string, Hl7Segment[]> | undefined;

  constructor(
    readonly segments: readonly Hl7Segment[],
    readonly delimiters: Hl7Delimiters,
    /** Character set the bytes were decoded with ("ASCII", "UTF-8", "8859/1"…). */
    readonly charset: string,
    /** The decoded message text. */
    readonly text: string,
  ) {}

  private occurrences(name: string): Hl7Segment[] | undefined {
    let index = this.byName;
    if (index === undefined) {
      index = new Map();
      for (const s of this.segments) {
        const list = index.get(s.name);
        if (list === undefined) index.set(s.name, [s]);
        else list.push(s);
      }
      this.byName = index;
    }
    return index.get(name);
  }

  /** First segment named `name` (or its n-th occurrence, 1-based). */
  segment(name: string, occurrence = 1): Hl7Segment | undefined {
    return occurrence >= 1 ? this.occurrences(name)?.[occurrence - 1] : undefined;
  }

  all(name: string): Hl7Segment[] {
    const list = this.occurrences(name);
    return list === undefined ? [] : list.slice();
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

/** Splits on CR, LF or CRLF (indexOf scans: about 3× faster than a regular-expression split). */
function splitSegments(text: string): string[] {
  const out: string[] = [];
  const n = text.length;
  let nextCr = text.indexOf('\r');
  let nextLf = text.indexOf('\n');
  let start = 0;
  while (start < n) {
    if (nextCr !== -1 && nextCr < start) nextCr = text.indexOf('\r', start);
    if (nextLf !== -1 && nextLf < start) nextLf = text.indexOf('\n', start);
    let end = nextCr === -1 ? nextLf : nextLf === -1 ? nextCr : Math.min(nextCr, nextLf);
    if (end === -1) end = n;
    let line = text.slice(start, end);
    // Whitespace-only lines are not segments, and indentation before a segment id (messages
    // pasted from documents or e-mails) is not part of it: " PID|…" is the PID segment.
    if (line.length > 0 && line.charCodeAt(0) <= 0x20) line = line.trimStart();
    if (line.length > 0) out.push(line);
    start = end === nextCr && text.charCodeAt(end + 1) === 0x0a ? end + 2 : end + 1;
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
  if (!isBatch(text)) return [parseHl7(input)];
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

function isBatch(text: string): boolean {
  return text.startsWith('FHS') || text.startsWith('BHS');
}

/** The header segment of an FHS/BHS batch and the delimiters it declares. */
export interface Hl7BatchHeader {
  segment: Hl7Segment;
  delimiters: Hl7Delimiters;
}

/**
 * The header of an FHS/BHS batch, to answer it with a batch (the BHS, else the FHS: both
 * carry sender, receiver and a control id at the same positions up to field 11);
 * undefined for a plain message. Throws Hl7ParseError as parseHl7Batch does.
 */
export function batchHeaderOf(input: Buffer | string): Hl7BatchHeader | undefined {
  const text = stripLeadingNoise(typeof input === 'string' ? input : decodeHl7Bytes(input).text);
  if (!isBatch(text)) return undefined;
  const headers = splitSegments(text).filter((seg) => seg.startsWith('BHS') || seg.startsWith('FHS'));
  const header = headers.find((seg) => seg.startsWith('BHS')) ?? headers[0]!;
  const delimiters = readDelimiters(header);
  return { segment: new Hl7Segment(header, delimiters), delimiters };
}
