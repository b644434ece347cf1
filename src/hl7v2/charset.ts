// MSH-18 character sets (HL7 table 0211). The declaration is inside the bytes, so MSH is
// read as ASCII first, then the whole message is decoded with the declared set.
//
// - empty or "ASCII": ASCII — but bytes that are valid UTF-8 are decoded as UTF-8, because
//   real feeds send UTF-8 without declaring it; invalid UTF-8 falls back to Latin-1 so no
//   byte is lost.
// - "8859/1" … "8859/15": ISO-8859-n.
// - "UNICODE UTF-8" (v2.5+) / "UNICODE" / "UTF-8": UTF-8.
// - anything else: Hl7ParseError unknown_charset (the ingest answers AR).
import { Hl7ParseError, Hl7ParseErrorCode } from './parse-error.ts';

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

function isAscii(bytes: Buffer): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i]! > 0x7f) return false;
  return true;
}

/** Reads MSH-18 (first repetition) from raw bytes without decoding the whole message. */
export function declaredCharset(bytes: Buffer): string {
  // Find the MSH (or FHS/BHS batch header) segment, tolerating leading noise/whitespace.
  const start = bytes.indexOf('MSH');
  if (start === -1) return '';
  let end = start;
  while (end < bytes.length && bytes[end] !== 0x0d && bytes[end] !== 0x0a) end++;
  const header = bytes.toString('latin1', start, end);
  const fieldSep = header.charAt(3);
  if (fieldSep === '') return '';
  // Split so that parts[n - 1] is MSH-n (MSH-1 is the separator itself).
  const parts = header.split(fieldSep);
  const msh18 = parts[17] ?? '';
  const repetition = header.charAt(5);
  const first = repetition ? msh18.split(repetition)[0]! : msh18;
  return first.trim();
}

const ISO_8859 = /^8859\/(\d{1,2})$/;

export function decodeHl7Bytes(bytes: Buffer): { text: string; charset: string } {
  const declared = declaredCharset(bytes).toUpperCase();
  if (declared === '' || declared === 'ASCII') {
    if (isAscii(bytes)) return { text: bytes.toString('latin1'), charset: 'ASCII' };
    try {
      return { text: strictUtf8.decode(bytes), charset: 'UTF-8' };
    } catch {
      return { text: bytes.toString('latin1'), charset: '8859/1' };
    }
  }
  if (declared === 'UNICODE UTF-8' || declared === 'UTF-8' || declared === 'UNICODE') {
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
