import { describe, expect, it } from 'vitest';
import { AckCondition, AckMode, ackModeOf, buildAck, ERR_TEXT_MAX, escapeAndTruncate, MSA_TEXT_MAX, shouldSendAcceptAck } from './ack.ts';
import { unescapeHl7 } from './escape.ts';
import { encodeFrame } from './mllp.ts';
import { DEFAULT_DELIMITERS, parseHl7 } from './parse.ts';

const NOW = new Date('2024-03-05T06:07:08.900Z');

function adt(opts: { controlId?: string; msh15?: string; msh16?: string; msh18?: string; header?: string } = {}): string {
  const header = opts.header ?? 'MSH|^~\\&';
  const f = header.charAt(3);
  const fields = [
    'EPIC', // MSH-3
    'NORTH^1.2.3^ISO', // MSH-4 (an HD with components)
    'CARERELAY', // MSH-5
    'CRFAC', // MSH-6
    '20240305060000+0100', // MSH-7
    '',
    'ADT^A01^ADT_A01',
    opts.controlId ?? 'CTRL-42',
    'T',
    '2.5',
    '', // MSH-13
    '', // MSH-14
    opts.msh15 ?? '',
    opts.msh16 ?? '',
    '',
    opts.msh18 ?? '',
  ];
  return `${header}${f}${fields.join(f)}\rPID|1||MRN1^^^H^MR\r`;
}

describe('buildAck', () => {
  it('writes MSH with swapped sender/receiver, MSA echoing MSH-10, CR-terminated segments', () => {
    const original = parseHl7(adt());
    const text = buildAck(original, { code: 'AA', controlId: 'ACK-1', now: NOW });
    expect(text).toBe(
      'MSH|^~\\&|CARERELAY|CRFAC|EPIC|NORTH^1.2.3^ISO|20240305060708+0000||ACK^A01^ACK|ACK-1|T|2.5\r' + 'MSA|AA|CTRL-42\r',
    );
    const ack = parseHl7(text);
    expect(ack.get('MSH-3')).toBe(original.get('MSH-5'));
    expect(ack.get('MSH-4')).toBe(original.get('MSH-6'));
    expect(ack.get('MSH-5')).toBe(original.get('MSH-3'));
    expect(ack.get('MSH-6.2')).toBe('1.2.3');
    expect(ack.messageType).toBe('ACK^A01');
    expect(ack.get('MSH-9.3')).toBe('ACK');
    expect(ack.controlId).toBe('ACK-1');
    expect(ack.segment('ERR')).toBeUndefined();
  });

  it('defaults MSH-11/12 to P and 2.5.1 and echoes MSH-18 when set', () => {
    const original = parseHl7('MSH|^~\\&|A|F|B|G|20240101||SIU^S12|C1\rSCH|1|2');
    const ack = parseHl7(buildAck(original, { code: 'AA', controlId: 'X', now: NOW }));
    expect(ack.get('MSH-11')).toBe('P');
    expect(ack.get('MSH-12')).toBe('2.5.1');
    expect(ack.get('MSH-18')).toBe('');
    expect(ack.messageType).toBe('ACK^S12');

    const latin = parseHl7(adt({ msh18: '8859/1' }));
    const withCharset = parseHl7(buildAck(latin, { code: 'AA', controlId: 'X', now: NOW }));
    expect(withCharset.get('MSH-18')).toBe('8859/1');
    expect(withCharset.segments[0]!.fieldCount).toBe(18);
  });

  it.each([
    ['plain', 'CTRL-42'],
    ['escaped delimiters', 'A\\F\\B\\S\\C\\E\\'],
    ['raw component and sub-component characters', 'ID^7&x'],
    ['spaces and punctuation', ' 2024-01-01 #1 (retry) '],
    ['non-ASCII', 'Zoë-東京'],
    ['a trailing backslash', 'C\\'],
  ])('MSA-2 is the original MSH-10 byte-exact (%s)', (_label, controlId) => {
    const original = parseHl7(adt({ controlId }));
    const ackText = buildAck(original, { code: 'AA', controlId: 'ACK-2', now: NOW });
    const ack = parseHl7(ackText);
    expect(ack.segment('MSA')!.rawField(2)).toBe(original.segments[0]!.rawField(10));
    expect(ack.segment('MSA')!.rawField(2)).toBe(controlId);
    expect(ack.get('MSA-2')).toBe(original.get('MSH-10'));
    // And byte-exact on the wire, through UTF-8.
    expect(Buffer.from(ackText).includes(Buffer.from(`MSA|AA|${controlId}\r`))).toBe(true);
  });

  it('uses the original delimiters, so custom-delimited MSH-10 and text round-trip', () => {
    const original = parseHl7(adt({ header: 'MSH#$%@!', controlId: 'ID@F@1' }));
    const text = buildAck(original, { code: 'AE', text: 'bad # and $ and @', controlId: 'A1', now: NOW });
    expect(text.startsWith('MSH#$%@!#CARERELAY#')).toBe(true);
    const ack = parseHl7(text);
    expect(ack.delimiters).toEqual(original.delimiters);
    expect(ack.get('MSA-2')).toBe('ID#1');
    expect(ack.get('MSA-3')).toBe('bad # and $ and @');
    expect(ack.get('ERR-3.2')).toBe('bad # and $ and @');
  });

  it('escapes delimiters, CR and LF in the text', () => {
    const original = parseHl7(adt());
    const message = 'PID-3 missing | got ^ & ~ \\ here\r\nsecond line';
    const text = buildAck(original, { code: 'AR', text: message, errorCode: '101', controlId: 'A2', now: NOW });
    expect(text.split('\r').filter((s) => s !== '').map((s) => s.slice(0, 3))).toEqual(['MSH', 'MSA', 'ERR']);
    const ack = parseHl7(text);
    expect(ack.segment('MSA')!.fieldCount).toBe(3);
    expect(ack.get('MSA-3')).toBe(message.slice(0, ack.get('MSA-3').length));
    expect(ack.get('MSA-3').startsWith('PID-3 missing | got ^ & ~ \\ here\r\n')).toBe(true);
    expect(ack.get('ERR-3')).toBe('101');
    expect(ack.get('ERR-3.2')).toBe(message);
    expect(ack.get('ERR-3.3')).toBe('HL70357');
    expect(ack.get('ERR-4')).toBe('E');
  });

  it(`truncates MSA-3 to ${MSA_TEXT_MAX} wire characters without cutting an escape sequence`, () => {
    const original = parseHl7(adt());
    const long = 'x'.repeat(200);
    const ack1 = parseHl7(buildAck(original, { code: 'AE', text: long, controlId: 'A3', now: NOW }));
    expect(ack1.segment('MSA')!.rawField(3)).toBe('x'.repeat(MSA_TEXT_MAX));
    expect(ack1.get('ERR-3.2')).toBe('x'.repeat(ERR_TEXT_MAX));

    // 78 x then "|": "\F\" (3 wire characters) would end at 81, so it is dropped whole.
    const ack2 = parseHl7(buildAck(original, { code: 'AE', text: `${'x'.repeat(78)}|tail`, controlId: 'A3', now: NOW }));
    expect(ack2.segment('MSA')!.rawField(3)).toBe('x'.repeat(78));
    // 77 x then "|": fits exactly.
    const ack3 = parseHl7(buildAck(original, { code: 'AE', text: `${'x'.repeat(77)}|tail`, controlId: 'A3', now: NOW }));
    expect(ack3.segment('MSA')!.rawField(3)).toBe(`${'x'.repeat(77)}\\F\\`);
    expect(ack3.get('MSA-3')).toBe(`${'x'.repeat(77)}|`);
  });

  it('escapeAndTruncate never leaves a partial escape or surrogate pair', () => {
    const d = { ...DEFAULT_DELIMITERS };
    for (let max = 0; max <= 30; max++) {
      const out = escapeAndTruncate('ab|c^d\r\ne😀f~g&h\\i', d, max);
      expect([...out].length).toBeLessThanOrEqual(max);
      expect(out.split('\\').length % 2, `max=${max}: ${out}`).toBe(1); // escape characters come in pairs
      expect(out).not.toMatch(/[\uD800-\uDBFF]$/);
      expect('ab|c^d\r\ne😀f~g&h\\i'.startsWith(unescapeHl7(out, d))).toBe(true);
    }
  });

  it.each([
    ['AA', false],
    ['CA', false],
    ['AE', true],
    ['AR', true],
    ['CE', true],
    ['CR', true],
  ] as const)('%s has an ERR segment: %s', (code, hasErr) => {
    const ack = parseHl7(buildAck(parseHl7(adt({ msh15: 'AL' })), { code, text: 'why', controlId: 'A4', now: NOW }));
    expect(ack.get('MSA-1')).toBe(code);
    expect(ack.segment('ERR') !== undefined).toBe(hasErr);
    if (hasErr) {
      expect(ack.segment('ERR')!.raw).toBe('ERR|||207^why^HL70357|E');
    }
  });

  it('writes the error location and table 0357 code given', () => {
    const ack = parseHl7(
      buildAck(parseHl7(adt()), { code: 'AR', text: 'unsupported', errorCode: '200', errorLocation: 'MSH^1^9', controlId: 'A5', now: NOW }),
    );
    expect(ack.segment('ERR')!.raw).toBe('ERR||MSH^1^9|200^unsupported^HL70357|E');
    expect(ack.get('ERR-2.3')).toBe('9');
  });

  it('builds a minimal ACK when the input could not be parsed', () => {
    const text = buildAck(undefined, { code: 'AR', text: 'the message does not start with an MSH segment', errorCode: '100', controlId: 'A6', now: NOW });
    expect(text).toBe(
      'MSH|^~\\&|||||20240305060708+0000||ACK|A6|P|2.5.1\r' +
        'MSA|AR||the message does not start with an MSH segment\r' +
        'ERR|||100^the message does not start with an MSH segment^HL70357|E\r',
    );
    const ack = parseHl7(text);
    expect(ack.get('MSA-2')).toBe('');
    expect(ack.delimiters).toEqual({ ...DEFAULT_DELIMITERS });
  });

  it('keeps a 5-character MSH-2 and escapes the truncation character', () => {
    const original = parseHl7(adt({ header: 'MSH|^~\\&#' }));
    const text = buildAck(original, { code: 'AE', text: 'a#b', controlId: 'A7', now: NOW });
    expect(text.startsWith('MSH|^~\\&#|')).toBe(true);
    expect(parseHl7(text).segment('MSA')!.rawField(3)).toBe('a\\P\\b');
    expect(parseHl7(text).get('MSA-3')).toBe('a#b');
  });

  it('escapes its own control id', () => {
    const ack = parseHl7(buildAck(parseHl7(adt()), { code: 'AA', controlId: 'A|B', now: NOW }));
    expect(ack.controlId).toBe('A|B');
  });
});

describe('ackModeOf / shouldSendAcceptAck (MSH-15/16, HL7 table 0155)', () => {
  it('original mode when MSH-15 and MSH-16 are both empty: always answered', () => {
    const msg = parseHl7(adt());
    expect(ackModeOf(msg)).toEqual({ mode: AckMode.Original, accept: AckCondition.Always, application: AckCondition.Always });
    expect(shouldSendAcceptAck(msg, true)).toBe(true);
    expect(shouldSendAcceptAck(msg, false)).toBe(true);
  });

  it.each([
    // [MSH-15, MSH-16, accept condition, sent when accepted, sent when not accepted]
    ['AL', 'NE', AckCondition.Always, true, true],
    ['NE', 'AL', AckCondition.Never, false, false],
    ['ER', 'AL', AckCondition.ErrorOnly, false, true],
    ['SU', 'NE', AckCondition.SuccessOnly, true, false],
    ['', 'AL', AckCondition.Always, true, true], // empty MSH-15 in enhanced mode means AL
    ['ne', '', AckCondition.Never, false, false],
  ] as const)('MSH-15=%j MSH-16=%j → enhanced, accept %s', (msh15, msh16, accept, whenAccepted, whenRejected) => {
    const msg = parseHl7(adt({ msh15, msh16 }));
    const mode = ackModeOf(msg);
    expect(mode.mode).toBe(AckMode.Enhanced);
    expect(mode.accept).toBe(accept);
    expect(shouldSendAcceptAck(msg, true)).toBe(whenAccepted);
    expect(shouldSendAcceptAck(msg, false)).toBe(whenRejected);
  });

  it('reads MSH-16 as the application condition', () => {
    expect(ackModeOf(parseHl7(adt({ msh15: 'AL', msh16: 'ER' }))).application).toBe(AckCondition.ErrorOnly);
    expect(ackModeOf(parseHl7(adt({ msh15: 'AL' }))).application).toBe(AckCondition.Always);
  });

  it('the commit ACK of an enhanced-mode message carries CA/CE/CR', () => {
    const msg = parseHl7(adt({ msh15: 'AL', msh16: 'NE' }));
    for (const code of ['CA', 'CE', 'CR'] as const) {
      const ack = parseHl7(buildAck(msg, { code, controlId: `K-${code}`, now: NOW }));
      expect(ack.get('MSA-1')).toBe(code);
      expect(ack.get('MSA-2')).toBe('CTRL-42');
    }
  });
});

describe('buildAck never writes what MLLP cannot frame', () => {
  const blockFree = (ack: string): boolean => !/[\x0b\x1c]/.test(ack);

  it('escapes 0x1C / 0x0B in echoed fields; MSA-2 then decodes to the same MSH-10', () => {
    const original = parseHl7(adt({ controlId: 'ID\x1c' }).replace('|EPIC|', '|EP\x0bIC|'));
    const ack = buildAck(original, { code: 'AR', text: 'refused', controlId: 'A1', now: NOW });
    expect(blockFree(ack)).toBe(true);
    expect(ack).toContain('MSA|AR|ID\\X1C\\|refused');
    expect(ack).toContain('|EP\\X0B\\IC|'); // MSH-5 of the ACK echoes MSH-3
    expect(parseHl7(ack).get('MSA-2')).toBe('ID\x1c');
    expect(() => encodeFrame(ack)).not.toThrow();
  });

  it('answers in the default delimiters when the original uses block characters as delimiters', () => {
    const original = parseHl7(adt({ header: 'MSH\x1c^~\\&', controlId: 'C|9' }));
    const ack = buildAck(original, { code: 'AR', text: 'refused', controlId: 'A1', now: NOW });
    expect(blockFree(ack)).toBe(true);
    expect(ack.startsWith('MSH|^~\\&|')).toBe(true);
    // Decoded values, re-escaped in the default delimiters.
    expect(parseHl7(ack).get('MSA-2')).toBe('C|9');
  });

  it('holds for any control character anywhere in the header and in our text', () => {
    for (let code = 0; code < 0x20; code++) {
      if (code === 0x0d || code === 0x0a) continue; // segment ends: never inside a parsed field
      const c = String.fromCharCode(code);
      const original = parseHl7(adt({ controlId: `X${c}`, msh18: `8859/1${c}` }).replace('CARERELAY', `CR${c}`));
      const ack = buildAck(original, { code: 'AE', text: `text${c}\x1c\r`, controlId: 'A1', now: NOW });
      expect(blockFree(ack), `0x${code.toString(16)}`).toBe(true);
      expect(() => encodeFrame(ack)).not.toThrow();
      // And it reads back: its MSH-18 declares nothing it could not be written in.
      expect(parseHl7(Buffer.from(ack, 'latin1')).get('MSA-2'), `0x${code.toString(16)}`).toBe(`X${c}`);
    }
  });

  it('leaves MSH-18 out when told to (a declared set the ACK is not written in)', () => {
    const ack = buildAck(parseHl7(adt({ msh18: 'KLINGON' })), { code: 'AR', controlId: 'A1', now: NOW, charset: '' });
    expect(parseHl7(ack).get('MSH-18')).toBe('');
  });
});
