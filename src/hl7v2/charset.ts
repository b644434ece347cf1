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
