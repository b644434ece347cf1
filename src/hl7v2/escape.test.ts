import { describe, expect, it } from 'vitest';
import { escapeHl7, hasBlockCharacter, unescapeHl7, withoutBlockCharacters } from './escape.ts';
import { DEFAULT_DELIMITERS, parseHl7, type Hl7Delimiters } from './parse.ts';

const D: Hl7Delimiters = { ...DEFAULT_DELIMITERS };
// field #, component $, repetition %, escape @, sub-component !
const CUSTOM: Hl7Delimiters = { field: '#', component: '$', repetition: '%', escape: '@', subcomponent: '!' };

describe('unescapeHl7 (v2.x chapter 2, escape sequences in text fields)', () => {
  it.each([
    ['\\F\\', '|'],
    ['\\S\\', '^'],
    ['\\T\\', '&'],
    ['\\R\\', '~'],
    ['\\E\\', '\\'],
    ['A\\T\\E', 'A&E'],
    ['\\X0D\\', '\r'],
    ['\\X0A\\', '\n'],
    ['\\X0d0a\\', '\r\n'],
    ['\\XE9\\', 'é'], // one byte that is not UTF-8 on its own: Latin-1
    ['\\XC3A9\\', 'é'], // a valid UTF-8 run
    ['a\\.br\\b', 'a\nb'],
    ['\\H\\bold\\N\\ text', 'bold text'],
    ['x\\.sp2\\y\\.in+4\\z', 'xyz'], // other formatting commands carry no text
    ['\\C2842\\abc\\C2D42\\', 'abc'], // character-set switches carry no text
    ['\\Zlocal\\', ''],
    ['keep \\Q\\ as is', 'keep \\Q\\ as is'], // unknown sequence: kept literally
    ['\\X0\\', '\\X0\\'], // malformed hex: kept literally
    ['no closing \\F', 'no closing \\F'], // unterminated: literal
    ['plain', 'plain'],
    ['', ''],
    ['\\F\\\\S\\\\E\\', '|^\\'],
  ])('%j → %j', (input, expected) => {
    expect(unescapeHl7(input, D)).toBe(expected);
  });

  it('decodes \\P\\ to the declared truncation character', () => {
    expect(unescapeHl7('a\\P\\b', { ...D, truncation: '#' })).toBe('a#b');
  });

  it('uses the message escape character, not a hard-coded backslash', () => {
    expect(unescapeHl7('a@F@b@S@c@T@d@R@e@E@f', CUSTOM)).toBe('a#b$c!d%e@f');
    expect(unescapeHl7('\\F\\', CUSTOM)).toBe('\\F\\');
  });
});

describe('escapeHl7', () => {
  it('escapes every delimiter, the escape character itself, CR and LF', () => {
    expect(escapeHl7('a|b^c&d~e\\f', D)).toBe('a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f');
    expect(escapeHl7('l1\rl2\nl3', D)).toBe('l1\\X0D\\l2\\.br\\l3');
    expect(escapeHl7('a#b', { ...D, truncation: '#' })).toBe('a\\P\\b');
    expect(escapeHl7('a#b', D)).toBe('a#b');
    expect(escapeHl7('a#b$c@d', CUSTOM)).toBe('a@F@b@S@c@E@d');
  });

  it.each([
    ['plain text'],
    ['|^~\\&'],
    ['Ünïcödé & co ~ 100%'],
    ['multi\rline\r\ntext\n'],
    ['\\F\\ already looks escaped'],
  ])('round-trips %j through escape then unescape', (text) => {
    expect(unescapeHl7(escapeHl7(text, D), D)).toBe(text);
    expect(unescapeHl7(escapeHl7(text, CUSTOM), CUSTOM)).toBe(text);
  });

  it('produces text that parses back as one field value', () => {
    const value = 'Smith|Jones^Jr~&\\ \r end';
    const msg = parseHl7(`MSH|^~\\&|A|F|||20240101||ADT^A01|C1|P|2.5\rNTE|1||${escapeHl7(value, D)}|next`);
    expect(msg.segments).toHaveLength(2);
    expect(msg.get('NTE-3')).toBe(value);
    expect(msg.get('NTE-4')).toBe('next');
  });
});

describe('control characters and MLLP block characters', () => {
  it('escapeHl7 writes C0 controls (tab excepted) as \\Xhh\\, which unescape back', () => {
    expect(escapeHl7('a\x1cb\x0bc\x00d\te', D)).toBe('a\\X1C\\b\\X0B\\c\\X00\\d\te');
    expect(unescapeHl7(escapeHl7('a\x1cb\x0b', D), D)).toBe('a\x1cb\x0b');
  });

  it('withoutBlockCharacters escapes only 0x0B and 0x1C, leaving wire text otherwise byte for byte', () => {
    expect(withoutBlockCharacters('ID\x1c^X\\F\\', D)).toBe('ID\\X1C\\^X\\F\\');
    expect(withoutBlockCharacters('plain', D)).toBe('plain');
    expect(hasBlockCharacter('a\x0b')).toBe(true);
    expect(hasBlockCharacter('a\\X1C\\')).toBe(false);
  });
});
