// HL7v2 escape sequences (v2.x chapter 2, "Use of escape sequences in text fields").
//
// Decoded on read: \F\ \S\ \T\ \R\ \E\ are the delimiters; \Xhh…\ are hex bytes (a decoded
// \X0D\ is a CR inside a value, never a segment break); \.br\ is a line break; \H\ and \N\
// (highlight on/off) and other formatting commands are dropped. Re-escaped on write (ACK
// text, outbound HL7).
import type { Hl7Delimiters } from './parse.ts';

export function unescapeHl7(value: string, d: Hl7Delimiters): string {
  const esc = d.escape;
  let out = '';
  let i = 0;
  while (i < value.length) {
    const start = value.indexOf(esc, i);
    if (start === -1) {
      out += value.slice(i);
      break;
    }
    out += value.slice(i, start);
    const end = value.indexOf(esc, start + 1);
    if (end === -1) {
      // An escape character with no closing one is literal text (lenient, as real feeds are).
      out += value.slice(start);
      break;
    }
    out += decodeSequence(value.slice(start + 1, end), d, value.slice(start, end + 1));
    i = end + 1;
  }
  return out;
}

function decodeSequence(seq: string, d: Hl7Delimiters, original: string): string {
  switch (seq) {
    case 'F':
      return d.field;
    case 'S':
      return d.component;
    case 'T':
      return d.subcomponent;
    case 'R':
      return d.repetition;
    case 'E':
      return d.escape;
    case 'P':
      return d.truncation ?? '#';
    case 'H':
    case 'N':
      return '';
    case '.br':
      return '\n';
    default:
      break;
  }
  const kind = seq.charAt(0);
  if (kind === 'X' && /^X(?:[0-9A-Fa-f]{2})+$/.test(seq)) {
    // Hex bytes: single-byte values are the usual case (\X0D\, \X0A\); multi-byte runs are
    // read as UTF-8 when valid, else Latin-1.
    const bytes = Buffer.from(seq.slice(1), 'hex');
    const utf8 = bytes.toString('utf8');
    return utf8.includes('\uFFFD') ? bytes.toString('latin1') : utf8;
  }
  // Formatting commands (.sp, .in, .ti, .sk, .ce, .fi, .nf), character-set switches
  // (\Cxxyy\, \Mxxyyzz\) and locally defined \Z…\ sequences carry no text.
  if (kind === '.' || kind === 'C' || kind === 'M' || kind === 'Z') return '';
  return original;
}

/** `\Xhh\` for one character below U+0100, in the delimiters' escape character. */
function hexEscape(code: number, d: Hl7Delimiters): string {
  return `${d.escape}X${code.toString(16).toUpperCase().padStart(2, '0')}${d.escape}`;
}

/**
 * Escapes delimiter characters, CR/LF and the other C0 control characters (tab excepted) in
 * free text put into a field. Control characters become `\Xhh\`: the MLLP block characters
 * 0x0B and 0x1C in particular must never reach the wire inside a message, where 0x1C 0x0D
 * would end the frame (mllp.ts).
 */
export function escapeHl7(text: string, d: Hl7Delimiters): string {
  let out = '';
  for (const ch of text) {
    switch (ch) {
      case d.escape:
        out += `${d.escape}E${d.escape}`;
        break;
      case d.field:
        out += `${d.escape}F${d.escape}`;
        break;
      case d.component:
        out += `${d.escape}S${d.escape}`;
        break;
      case d.subcomponent:
        out += `${d.escape}T${d.escape}`;
        break;
      case d.repetition:
        out += `${d.escape}R${d.escape}`;
        break;
      case '\r':
        out += `${d.escape}X0D${d.escape}`;
        break;
      case '\n':
        out += `${d.escape}.br${d.escape}`;
        break;
      default:
        if (ch === d.truncation) out += `${d.escape}P${d.escape}`;
        else if (ch < ' ' && ch !== '\t') out += hexEscape(ch.charCodeAt(0), d);
        else out += ch;
    }
  }
  return out;
}

/** The MLLP block characters (mllp.ts): start block 0x0B, end block 0x1C. */
const BLOCK_CHARACTER = /[\x0b\x1c]/;
const BLOCK_CHARACTERS = /[\x0b\x1c]/g;

/**
 * Wire text copied from a message (an echoed field) with the MLLP block characters 0x0B and
 * 0x1C replaced by their `\Xhh\` escapes: the same value once decoded, and text that can be
 * framed. Everything else is left byte for byte.
 */
export function withoutBlockCharacters(wire: string, d: Hl7Delimiters): string {
  return BLOCK_CHARACTER.test(wire) ? wire.replace(BLOCK_CHARACTERS, (c) => hexEscape(c.charCodeAt(0), d)) : wire;
}

/** True when `text` holds 0x0B or 0x1C, which MLLP reserves and HL7 text may not contain. */
export function hasBlockCharacter(text: string): boolean {
  return BLOCK_CHARACTER.test(text);
}
