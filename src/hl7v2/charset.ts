// MSH-18 character sets (HL7 table 0211). The declaration is inside the bytes, so MSH is
// read as ASCII first, then the whole message is decoded with the declared set.
//
// - empty or "ASCII": ASCII — but bytes that are valid UTF-8 are decoded as UTF-8, because
//   real feeds send UTF-8 without declaring it; invalid UTF-8 falls back to Latin-1 so no
//   byte is lost.
// - "8859/1" … "8859/15": ISO-8859-n.
// - "UNICODE UTF-8" (v2.5+) / "UNICODE" / "UTF-8": UTF-8; bytes that are not valid UTF-8
//   are refused (bad_encoding) rather than decoded with replacement characters, which would
//   silently corrupt names.
// - anything else: Hl7ParseError unknown_charset (the ingest answers AR).
import { isAscii, isUtf8 } from 'node:buffer';
import { Hl7ParseError, Hl7ParseErrorCode } from './parse-error.ts';

/** Reads MSH-18 (first repetition) from raw bytes without decoding the whole message. */
export function declaredCharset(bytes: Buffer): string {
  // Find the MSH (the first one of a batch), tolerating leading noise/whitespace.
  const start = bytes.indexOf('MSH');
  if (start === -1) return '';
  const cr = bytes.indexOf(0x0d, start);
  const lf = bytes.indexOf(0x0a, start);
  let end = cr === -1 ? lf : lf === -1 ? cr : Math.min(cr, lf);
  if (end === -1) end = bytes.length;
  const header = bytes.toString('latin1', start, end);
  const fieldSep = header.charAt(3);
  if (fieldSep === '') return '';
  // MSH-1 is the separator at offset 3; the k-th separator opens MSH-(k+1), so MSH-18 starts
  // after the 17th. indexOf scans rather than split(): this runs on every message.
  let at = 3;
  for (let k = 1; k < 17 && at !== -1; k++) at = header.indexOf(fieldSep, at + 1);
  if (at === -1) return '';
  const stop = header.indexOf(fieldSep, at + 1);
  const msh18 = header.slice(at + 1, stop === -1 ? header.length : stop);
  const repetition = header.charAt(5);
  const repAt = repetition === '' ? -1 : msh18.indexOf(repetition);
  return (repAt === -1 ? msh18 : msh18.slice(0, repAt)).trim();
}

const ISO_8859 = /^8859\/(\d{1,2})$/;

export function decodeHl7Bytes(bytes: Buffer): { text: string; charset: string } {
  const declared = declaredCharset(bytes).toUpperCase();
  if (declared === '' || declared === 'ASCII') {
    // Native checks: a byte loop in JavaScript cost more than the rest of the parse.
    if (isAscii(bytes)) return { text: bytes.toString('latin1'), charset: 'ASCII' };
    if (isUtf8(bytes)) return { text: bytes.toString('utf8'), charset: 'UTF-8' };
    return { text: bytes.toString('latin1'), charset: '8859/1' };
  }
  if (declared === 'UNICODE UTF-8' || declared === 'UTF-8' || declared === 'UNICODE') {
    if (!isUtf8(bytes)) {
      throw new Hl7ParseError(
        Hl7ParseErrorCode.BadEncoding,
        `MSH-18 declares ${declared} but the bytes are not valid UTF-8; fix the encoding or declare the set actually used (e.g. 8859/1)`,
      );
    }
    return { text: bytes.toString('utf8'), charset: 'UNICODE UTF-8' };
  }
  const iso = ISO_8859.exec(declared);
  if (iso) {
    if (iso[1] === '1') return { text: bytes.toString('latin1'), charset: '8859/1' };
    try {
      return { text: new TextDecoder(`iso-8859-${iso[1]}`).decode(bytes), charset: declared };
    } catch {
      // fall through to unknown
    }
  }
  throw new Hl7ParseError(
    Hl7ParseErrorCode.UnknownCharset,
    `MSH-18 character set ${JSON.stringify(declared)} is not supported (use empty/ASCII, 8859/1…8859/15 or UNICODE UTF-8)`,
  );
}

/** Character → byte of each ISO-8859-n (n ≠ 1) set, built on first use from its decoder. */
const isoEncoders = new Map<string, Map<string, number>>();

function isoEncoder(part: string): Map<string, number> | undefined {
  let table = isoEncoders.get(part);
  if (table === undefined) {
    let decoded: string;
    try {
      decoded = new TextDecoder(`iso-8859-${part}`).decode(Uint8Array.from({ length: 256 }, (_, i) => i));
    } catch {
      return undefined;
    }
    table = new Map();
    for (let byte = 0; byte < 256; byte++) {
      const ch = decoded[byte]!;
      if (ch !== '\uFFFD' && !table.has(ch)) table.set(ch, byte);
    }
    isoEncoders.set(part, table);
  }
  return table;
}

/**
 * Encodes `text` (an ACK) in the character set a message was decoded with (Hl7Message.charset,
 * or a declared MSH-18), so an ACK that declares 8859/1 is 8859/1 on the wire and the
 * fields it echoes are the sender's own bytes. UTF-8 for UTF-8, ASCII and anything this module
 * cannot encode; a character the set cannot represent becomes "?".
 */
export function encodeHl7Text(text: string, charset: string): Buffer {
  const iso = ISO_8859.exec(charset.trim().toUpperCase());
  if (iso === null) return Buffer.from(text, 'utf8');
  if (iso[1] === '1') {
    // Buffer's latin1 keeps only the low byte of a wider character: replace those first.
    return Buffer.from(/[^\u0000-\u00ff]/.test(text) ? text.replace(/[^\u0000-\u00ff]/gu, '?') : text, 'latin1');
  }
  const table = isoEncoder(iso[1]!);
  if (table === undefined) return Buffer.from(text, 'utf8');
  const out = Buffer.allocUnsafe(text.length);
  let n = 0;
  for (const ch of text) out[n++] = table.get(ch) ?? 0x3f;
  return out.subarray(0, n);
}

/** The IANA charset name (HTTP Content-Type) of an HL7 character set, as encodeHl7Text writes it. */
export function ianaCharset(charset: string): string {
  const iso = ISO_8859.exec(charset.trim().toUpperCase());
  if (iso === null || (iso[1] !== '1' && isoEncoder(iso[1]!) === undefined)) return 'utf-8';
  return `iso-8859-${iso[1]}`;
}

/**
 * `text` as it reads once encoded in `charset` (encodeHl7Text): characters the set cannot
 * represent become "?". A stored ACK is kept in this form, so it is the one that was sent.
 */
export function encodableText(text: string, charset: string): string {
  const iso = ISO_8859.exec(charset.trim().toUpperCase());
  if (iso === null) return text;
  if (iso[1] === '1') return /[^\u0000-\u00ff]/.test(text) ? text.replace(/[^\u0000-\u00ff]/gu, '?') : text;
  const table = isoEncoder(iso[1]!);
  if (table === undefined) return text;
  let out = '';
  for (const ch of text) out += table.has(ch) ? ch : '?';
  return out;
}

/**
 * True when `declaration` (MSH-18 wire text, first repetition) names a set an ACK can be
 * written in: empty/ASCII, the UTF-8 names, 8859/1 to 8859/16 (those this runtime decodes).
 * Escapes and control characters make it unknown: an ACK then declares nothing.
 */
export function isWritableCharset(declaration: string): boolean {
  const name = declaration.toUpperCase();
  if (name === '' || name === 'ASCII' || name === 'UNICODE UTF-8' || name === 'UTF-8' || name === 'UNICODE') return true;
  const iso = ISO_8859.exec(name);
  return iso !== null && (iso[1] === '1' || isoEncoder(iso[1]!) !== undefined);
}
