import { describe, expect, it } from 'vitest';
import { declaredCharset, decodeHl7Bytes, encodableText, encodeHl7Text, ianaCharset } from './charset.ts';
import { Hl7ParseError, Hl7ParseErrorCode, parseHl7 } from './parse.ts';

/** An ADT whose MSH-18 is `charset` and whose PID-5.1 is `name` (raw bytes). */
function message(charset: string, name: Buffer, eol = '\r'): Buffer {
  return Buffer.concat([
    Buffer.from(`MSH|^~\\&|APP|FAC|||20240101||ADT^A01|C1|P|2.5||||||${charset}${eol}PID|1||M1||`, 'latin1'),
    name,
    Buffer.from(`^ANNE${eol}PV1|1|O${eol}`, 'latin1'),
  ]);
}

const utf8 = (s: string): Buffer => Buffer.from(s, 'utf8');

describe('declaredCharset', () => {
  it('reads MSH-18 (first repetition) from the bytes', () => {
    expect(declaredCharset(message('8859/1', utf8('X')))).toBe('8859/1');
    expect(declaredCharset(message('UNICODE UTF-8~8859/1', utf8('X')))).toBe('UNICODE UTF-8');
    expect(declaredCharset(message('', utf8('X')))).toBe('');
    expect(declaredCharset(Buffer.from('MSH|^~\\&|A\rPID|1'))).toBe('');
    expect(declaredCharset(Buffer.from('PID|1'))).toBe('');
  });

  it('reads MSH-18 with custom delimiters and LF terminators', () => {
    expect(declaredCharset(Buffer.from('MSH#$%@!#A#F#####ADT$A01#C1#P#2.5######8859/1%UNICODE UTF-8\nPID#1'))).toBe('8859/1');
  });
});

describe('decodeHl7Bytes / parseHl7 on bytes (MSH-18, HL7 table 0211)', () => {
  it('empty MSH-18 and pure ASCII bytes → ASCII', () => {
    const msg = parseHl7(message('', utf8('DOE')));
    expect(msg.charset).toBe('ASCII');
    expect(msg.get('PID-5')).toBe('DOE');
  });

  it('empty MSH-18 with valid UTF-8 bytes → decoded as UTF-8', () => {
    const msg = parseHl7(message('', utf8('Müller-Łukasz 山田')));
    expect(msg.charset).toBe('UTF-8');
    expect(msg.get('PID-5')).toBe('Müller-Łukasz 山田');
    expect(msg.get('PID-5.2')).toBe('ANNE');
  });

  it('empty MSH-18 with invalid UTF-8 → Latin-1, no byte lost', () => {
    // 0xE9 alone is "é" in Latin-1 and an invalid UTF-8 sequence.
    const msg = parseHl7(message('', Buffer.from([0x52, 0xe9, 0x6d, 0x79])));
    expect(msg.charset).toBe('8859/1');
    expect(msg.get('PID-5')).toBe('Rémy');
  });

  it('"ASCII" declared behaves like empty', () => {
    expect(parseHl7(message('ASCII', utf8('DOE'))).charset).toBe('ASCII');
    expect(parseHl7(message('ASCII', utf8('Zoë'))).get('PID-5')).toBe('Zoë');
  });

  it('8859/1 decodes the byte 0xE9 as é', () => {
    const msg = parseHl7(message('8859/1', Buffer.from([0x52, 0xe9, 0x6d, 0x79])));
    expect(msg.charset).toBe('8859/1');
    expect(msg.get('PID-5')).toBe('Rémy');
  });

  it('8859/1 wins over bytes that would also be valid UTF-8', () => {
    // C3 A9 is "é" in UTF-8 but "Ã©" in Latin-1: the declaration decides.
    const msg = parseHl7(message('8859/1', Buffer.from([0xc3, 0xa9])));
    expect(msg.get('PID-5')).toBe('Ã©');
  });

  it('8859/2 decodes Central European letters', () => {
    // ISO-8859-2: 0xA9 = Š, 0xB9 = š, 0xE8 = č
    const msg = parseHl7(message('8859/2', Buffer.from([0xa9, 0xb9, 0xe8])));
    expect(msg.charset).toBe('8859/2');
    expect(msg.get('PID-5')).toBe('Ššč');
  });

  it('UNICODE UTF-8 decodes UTF-8, case-insensitively, with LF terminators', () => {
    for (const declared of ['UNICODE UTF-8', 'unicode utf-8']) {
      const msg = parseHl7(message(declared, utf8('Ærøskøbing ✓'), '\n'));
      expect(msg.charset).toBe('UNICODE UTF-8');
      expect(msg.get('PID-5')).toBe('Ærøskøbing ✓');
      expect(msg.segments.map((s) => s.name)).toEqual(['MSH', 'PID', 'PV1']);
    }
  });

  it('UNICODE UTF-8 with bytes that are not UTF-8 → bad_encoding, never replacement characters', () => {
    let caught: unknown;
    try {
      parseHl7(message('UNICODE UTF-8', Buffer.from([0x5a, 0x6f, 0xeb]))); // "Zoë" in Latin-1
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(Hl7ParseError);
    expect((caught as Hl7ParseError).code).toBe('bad_encoding');
    expect((caught as Hl7ParseError).message).toContain('not valid UTF-8');
  });

  it('a UTF-8 BOM before MSH is dropped', () => {
    const msg = parseHl7(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), message('', utf8('Zoë'))]));
    expect(msg.get('MSH-3')).toBe('APP');
    expect(msg.get('PID-5')).toBe('Zoë');
  });

  it.each(['KOI8-R', 'ISO IR87', '8859/12', 'EBCDIC'])('an unknown set (%s) → unknown_charset naming it', (declared) => {
    let caught: unknown;
    try {
      parseHl7(message(declared, utf8('X')));
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(Hl7ParseError);
    expect((caught as Hl7ParseError).code).toBe(Hl7ParseErrorCode.UnknownCharset);
    expect((caught as Hl7ParseError).message).toContain(declared);
    expect(() => decodeHl7Bytes(message(declared, utf8('X')))).toThrow(Hl7ParseError);
  });

  it('a string input is taken as already decoded', () => {
    const msg = parseHl7('MSH|^~\\&|A|F|||20240101||ADT^A01|C1|P|2.5||||||8859/1\rPID|1||M1||Rémy');
    expect(msg.get('PID-5')).toBe('Rémy');
  });
});

describe('encodeHl7Text / encodableText / ianaCharset (ACKs in the message\'s set)', () => {
  it('writes 8859/1 as Latin-1 and 8859/15 with its own table; UTF-8 otherwise', () => {
    expect([...encodeHl7Text('HÔPITAL', '8859/1')]).toEqual([0x48, 0xd4, 0x50, 0x49, 0x54, 0x41, 0x4c]);
    expect([...encodeHl7Text('€', '8859/15')]).toEqual([0xa4]);
    expect(encodeHl7Text('Zoë', 'UNICODE UTF-8').equals(Buffer.from('Zoë', 'utf8'))).toBe(true);
    expect(encodeHl7Text('Zoë', 'ASCII').equals(Buffer.from('Zoë', 'utf8'))).toBe(true);
  });

  it('replaces what the set cannot carry with "?", and says so in encodableText', () => {
    expect(encodeHl7Text('a…b€', '8859/1').toString('latin1')).toBe('a?b?');
    expect(encodableText('a…b€', '8859/1')).toBe('a?b?');
    expect(encodableText('a…b€', '8859/15')).toBe('a?b€');
    expect(encodableText('a…b', 'UNICODE UTF-8')).toBe('a…b');
    // Round trip: what is stored is what is sent.
    const text = 'MSH|^~\\&|É|…';
    expect(decodeHl7Bytes(Buffer.concat([encodeHl7Text(text, '8859/1')])).text).toBe(encodableText(text, '8859/1'));
  });

  it('names the set for an HTTP Content-Type', () => {
    expect(ianaCharset('8859/1')).toBe('iso-8859-1');
    expect(ianaCharset('8859/15')).toBe('iso-8859-15');
    expect(ianaCharset('UNICODE UTF-8')).toBe('utf-8');
    expect(ianaCharset('ASCII')).toBe('utf-8');
    expect(ianaCharset('8859/99')).toBe('utf-8');
  });
});
