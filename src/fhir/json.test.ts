import { describe, expect, it } from 'vitest';
import { decodeFhirJson, FhirEncodingError, parseFhirJson } from './json.ts';

describe('parseFhirJson', () => {
  it('keeps ordinary documents intact', () => {
    expect(parseFhirJson('{"resourceType":"Patient","name":[{"given":["A"]}]}')).toEqual({ resourceType: 'Patient', name: [{ given: ['A'] }] });
  });

  it('refuses prototype keys, even escaped', () => {
    expect(() => parseFhirJson('{"__proto__":{"x":1}}')).toThrow(/"__proto__" is not allowed/);
    expect(() => parseFhirJson('{"a":{"\\u0063onstructor":{}}}')).toThrow(/"constructor" is not allowed/);
  });
});

describe('decodeFhirJson', () => {
  it('decodes UTF-8 and drops a byte order mark', () => {
    expect(decodeFhirJson(Buffer.from('\uFEFF{"a":"Zoë"}'))).toBe('{"a":"Zoë"}');
  });

  it.each([
    ['a Latin-1 byte', [0x41, 0xe9, 0x42], 1],
    ['a truncated sequence at the end', [0x41, 0x42, 0xe2, 0x82], 2],
    ['an overlong encoding of "/"', [0x41, 0xc0, 0xaf], 1],
    ['an encoded surrogate', [0x41, 0x41, 0xed, 0xa0, 0x80], 2],
    ['a code point past U+10FFFF', [0xf4, 0x90, 0x80, 0x80], 0],
  ])('refuses %s, naming the first bad byte', (_name, bytes, offset) => {
    expect(() => decodeFhirJson(Buffer.from(bytes))).toThrow(FhirEncodingError);
    expect(() => decodeFhirJson(Buffer.from(bytes))).toThrow(`(byte ${offset})`);
  });
});
