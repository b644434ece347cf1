// Reading FHIR JSON from bytes CareRelay did not write (a POSTed notification, a file).
//
// FHIR's JSON format is UTF-8 (FHIR R4 §2.6.2 "JSON Representation": "the JSON format is
// UTF-8 encoded"; RFC 8259 §8.1 for JSON exchanged between systems). Bytes that are not
// UTF-8 are refused rather than decoded with U+FFFD, which would silently corrupt names and
// identifiers (the HL7 path refuses a message that declares UTF-8 and is not, the same way).
import { isUtf8 } from 'node:buffer';

const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/** The bytes are not UTF-8 (`offset`: the first byte that is not). */
export class FhirEncodingError extends Error {
  readonly code = 'invalid_utf8';

  constructor(readonly offset: number) {
    super(`the bytes are not valid UTF-8 (byte ${offset}); FHIR JSON is UTF-8: send the body in UTF-8`);
  }
}

/**
 * The text of FHIR JSON bytes: strict UTF-8, a leading byte order mark dropped (RFC 8259
 * §8.1 lets a parser ignore it). Throws FhirEncodingError on bytes that are not UTF-8.
 */
export function decodeFhirJson(bytes: Uint8Array): string {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (!isUtf8(buffer)) throw new FhirEncodingError(firstInvalidUtf8(buffer));
  return buffer.toString('utf8').replace(/^\uFEFF/, '');
}

/**
 * JSON.parse that refuses prototype keys anywhere (docs/reliability.md "Security defaults"): a
 * `__proto__` or `constructor` member, even written with escapes, is an error, not data.
 */
export function parseFhirJson(text: string): unknown {
  return JSON.parse(text, function (key, value: unknown) {
    if (FORBIDDEN_KEYS.has(key)) throw new SyntaxError(`member "${key}" is not allowed in FHIR JSON`);
    return value;
  });
}

/** Offset of the first byte that breaks UTF-8 (RFC 3629 §4: no overlongs, surrogates or > U+10FFFF). */
function firstInvalidUtf8(bytes: Buffer): number {
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i]!;
    if (b < 0x80) {
      i += 1;
      continue;
    }
    // [length, lowest allowed second byte, highest allowed second byte]
    const shape: [number, number, number] | undefined =
      b >= 0xc2 && b <= 0xdf ? [2, 0x80, 0xbf]
      : b === 0xe0 ? [3, 0xa0, 0xbf]
      : b === 0xed ? [3, 0x80, 0x9f]
      : b >= 0xe1 && b <= 0xef ? [3, 0x80, 0xbf]
      : b === 0xf0 ? [4, 0x90, 0xbf]
      : b === 0xf4 ? [4, 0x80, 0x8f]
      : b >= 0xf1 && b <= 0xf3 ? [4, 0x80, 0xbf]
      : undefined;
    if (shape === undefined) return i;
    const [length, low, high] = shape;
    for (let k = 1; k < length; k++) {
      const c = bytes[i + k];
      const [min, max] = k === 1 ? [low, high] : [0x80, 0xbf];
      if (c === undefined || c < min || c > max) return i;
    }
    i += length;
  }
  return bytes.length;
}
