import { describe, expect, it } from 'vitest';
import { DEFAULT_DELIMITERS, Hl7ParseError, Hl7ParseErrorCode, parseHl7, parseHl7Batch } from './parse.ts';

// Messages are built from segment lines so each test shows exactly which terminator it uses.
const CR = '\r';

function expectParseError(run: () => unknown, code: Hl7ParseErrorCode): Hl7ParseError {
  try {
    run();
  } catch (err) {
    expect(err).toBeInstanceOf(Hl7ParseError);
    expect((err as Hl7ParseError).code).toBe(code);
    return err as Hl7ParseError;
  }
  throw new Error(`expected an Hl7ParseError with code ${code}, but parsing succeeded`);
}

const ADT = [
  'MSH|^~\\&|SENDAPP|SENDFAC|RECVAPP|RECVFAC|20240102030405+0100||ADT^A01^ADT_A01|CTRL-1|P|2.5.1',
  'EVN|A01|20240102030000',
  'PID|1||MRN1^^^HOSP^MR~SSN9^^^SSA^SS||DOE^JANE^Q~ALIAS^JJ||19800101|F|||1 MAIN ST&Apt 2^^TOWN||^PRN^PH^^1^555^1234567~^NET^Internet^jane@example.org',
  'PV1|1|I|WARD^101^A^HOSP',
];

describe('delimiters from MSH-1 / MSH-2', () => {
  it('reads the standard delimiters', () => {
    const msg = parseHl7(ADT.join(CR));
    expect(msg.delimiters).toEqual({ ...DEFAULT_DELIMITERS });
    expect(msg.get('MSH-1')).toBe('|');
    expect(msg.get('MSH-2')).toBe('^~\\&');
    expect(msg.get('MSH-3')).toBe('SENDAPP');
    expect(msg.get('MSH-10')).toBe('CTRL-1');
    expect(msg.messageType).toBe('ADT^A01');
    expect(msg.controlId).toBe('CTRL-1');
  });

  it('honours custom delimiters, including "#" as the field separator', () => {
    // field #, component $, repetition %, escape @, sub-component !
    const text = ['MSH#$%@!#APP#FAC#####ADT$A04#C9#P#2.5', 'PID#1##A$$$AUTH%B$x!y$$AUTH2##DOE$JOHN@F@X'].join(CR);
    const msg = parseHl7(text);
    expect(msg.delimiters).toEqual({ field: '#', component: '$', repetition: '%', escape: '@', subcomponent: '!' });
    expect(msg.get('MSH-1')).toBe('#');
    expect(msg.get('MSH-2')).toBe('$%@!');
    expect(msg.get('MSH-3')).toBe('APP');
    expect(msg.messageType).toBe('ADT^A04');
    expect(msg.get('PID-3')).toBe('A');
    expect(msg.get('PID-3.4')).toBe('AUTH');
    expect(msg.get('PID-3[2]')).toBe('B');
    expect(msg.get('PID-3[2].2')).toBe('x');
    expect(msg.get('PID-3[2].2.2')).toBe('y');
    // "|" and "^" are ordinary text under these delimiters; @F@ is the escaped field separator.
    expect(msg.get('PID-5.2')).toBe('JOHN#X');
  });

  it('treats "|", "^", "~" as plain text when other delimiters are declared', () => {
    const msg = parseHl7('MSH#$%@!#A|B^C~D#FAC');
    expect(msg.get('MSH-3')).toBe('A|B^C~D');
  });

  it('accepts a 5-character MSH-2 (v2.7 truncation character)', () => {
    const msg = parseHl7(['MSH|^~\\&#|APP|FAC|||20240101||ADT^A01|C1|P|2.7', 'PID|1||AB\\P\\CD#'].join(CR));
    expect(msg.delimiters.truncation).toBe('#');
    expect(msg.delimiters.subcomponent).toBe('&');
    expect(msg.get('MSH-2')).toBe('^~\\&#');
    expect(msg.get('MSH-3')).toBe('APP');
    // \P\ is the escaped truncation character; a bare "#" is data for the parser.
    expect(msg.get('PID-3')).toBe('AB#CD#');
  });

  it('reads MSH-2 up to the segment end when MSH has no further field', () => {
    const msg = parseHl7(['MSH|^~\\&', 'PID|1||X1'].join(CR));
    expect(msg.get('MSH-2')).toBe('^~\\&');
    expect(msg.get('PID-3')).toBe('X1');
  });

  it.each([
    ['a letter as field separator', 'MSHA^~\\&|APP'],
    ['a space as field separator', 'MSH ^~\\&|APP'],
    ['nothing after MSH', 'MSH'],
    ['3 encoding characters', 'MSH|^~\\|APP'],
    ['6 encoding characters', 'MSH|^~\\&#!|APP'],
    ['a repeated delimiter', 'MSH|^^\\&|APP'],
    ['the escape character reused as sub-component', 'MSH|^~\\\\|APP'],
    ['a digit in MSH-2', 'MSH|^~\\1|APP'],
  ])('rejects %s with bad_delimiters', (_label, text) => {
    const err = expectParseError(() => parseHl7(text), Hl7ParseErrorCode.BadDelimiters);
    expect(err.message).toMatch(/MSH-[12]/);
  });
});

describe('message structure', () => {
  it('rejects input that does not start with MSH (no_msh) and empty input (empty)', () => {
    const err = expectParseError(() => parseHl7('PID|1||X'), Hl7ParseErrorCode.NoMsh);
    expect(err.message).toContain('"PID"');
    expectParseError(() => parseHl7(Buffer.from('EVN|A01')), Hl7ParseErrorCode.NoMsh);
    expectParseError(() => parseHl7(''), Hl7ParseErrorCode.Empty);
    expectParseError(() => parseHl7(' \r\n '), Hl7ParseErrorCode.Empty);
  });

  it('tolerates a BOM and blank lines before MSH', () => {
    const msg = parseHl7(`\uFEFF\r\n  ${ADT.join(CR)}`);
    expect(msg.controlId).toBe('CTRL-1');
    expect(msg.segments.map((s) => s.name)).toEqual(['MSH', 'EVN', 'PID', 'PV1']);
  });

  it('reads indented segments (spaces or tabs before the segment id) and skips whitespace-only lines', () => {
    const msg = parseHl7([ADT[0], `  ${ADT[1]}`, '\t ', `\t${ADT[2]}`, ` ${ADT[3]}`].join('\r\n'));
    expect(msg.segments.map((s) => s.name)).toEqual(['MSH', 'EVN', 'PID', 'PV1']);
    expect(msg.get('PID-3.1')).toBe('MRN1');
    // The same message without the indentation: the same segments, byte for byte.
    expect(msg.segments.map((s) => s.raw)).toEqual(parseHl7(ADT.join(CR)).segments.map((s) => s.raw));
  });

  it('splits repetitions, components and sub-components', () => {
    const msg = parseHl7(ADT.join(CR));
    const pid = msg.segment('PID')!;
    expect(pid.repetitionCount(3)).toBe(2);
    expect(pid.get(3, 1, 1, 1)).toBe('MRN1');
    expect(pid.get(3, 4, 1, 2)).toBe('SSA');
    expect(pid.get(3, 5, 1, 2)).toBe('SS');
    const reps = pid.repetitions(3);
    expect(reps.map((r) => r.get(1))).toEqual(['MRN1', 'SSN9']);
    expect(reps[0]!.rawComponent(4)).toBe('HOSP');
    expect(pid.get(5, 1)).toBe('DOE');
    expect(pid.get(5, 2, 1, 2)).toBe('JJ');
    expect(pid.get(11, 1, 1)).toBe('1 MAIN ST');
    expect(pid.get(11, 1, 2)).toBe('Apt 2');
    expect(pid.get(11, 1, 3)).toBe('');
    expect(pid.get(11, 3)).toBe('TOWN');
    // XTN: PID-13 repetition 2 is an e-mail address in XTN.4.
    expect(msg.get('PID-13[2].4')).toBe('jane@example.org');
    expect(msg.get('PID-13.7')).toBe('1234567');
    // Absent pieces read as ''.
    expect(pid.get(3, 9)).toBe('');
    expect(pid.get(3, 1, 1, 3)).toBe('');
    expect(pid.get(99)).toBe('');
    expect(pid.repetitions(99)).toEqual([]);
    expect(pid.repetitionCount(2)).toBe(0);
    expect(pid.rawField(5)).toBe('DOE^JANE^Q~ALIAS^JJ');
    expect(pid.fieldCount).toBe(13);
  });

  it('numbers MSH fields so that MSH-1 is the field separator', () => {
    const msh = parseHl7(ADT.join(CR)).segments[0]!;
    expect(msh.rawField(1)).toBe('|');
    expect(msh.rawField(2)).toBe('^~\\&');
    expect(msh.rawField(9)).toBe('ADT^A01^ADT_A01');
    // MSH-2 is never split on its own characters.
    expect(msh.get(2, 2)).toBe('');
    expect(msh.repetitions(2).map((r) => r.raw)).toEqual(['^~\\&']);
  });

  it('keeps the HL7 null "" as a value distinct from empty', () => {
    const msg = parseHl7(['MSH|^~\\&|A|F|||20240101||ADT^A08|C1|P|2.5', 'PID|1||M1||""|||""', 'PV1|1|""'].join(CR));
    const pid = msg.segment('PID')!;
    expect(msg.get('PID-5')).toBe('""');
    expect(pid.has(5)).toBe(true);
    expect(pid.repetitions(5)[0]!.isEmpty).toBe(true);
    expect(pid.has(6)).toBe(false);
    expect(msg.get('PID-8')).toBe('""');
    expect(msg.get('PV1-2')).toBe('""');
  });

  it('decodes escapes in field values, and \\X0D\\ is a CR inside a value, not a segment break', () => {
    const msg = parseHl7(['MSH|^~\\&|A|F|||20240101||ADT^A01|C1|P|2.5', 'NTE|1||line1\\X0D\\line2\\F\\x', 'PID|1||M1'].join(CR));
    expect(msg.segments.map((s) => s.name)).toEqual(['MSH', 'NTE', 'PID']);
    expect(msg.get('NTE-3')).toBe('line1\rline2|x');
    expect(msg.segment('NTE')!.rawField(3)).toBe('line1\\X0D\\line2\\F\\x');
    expect(msg.get('PID-3')).toBe('M1');
  });

  it.each([
    ['CR', '\r'],
    ['LF', '\n'],
    ['CRLF', '\r\n'],
  ])('accepts %s segment terminators', (_label, eol) => {
    const msg = parseHl7(ADT.join(eol) + eol);
    expect(msg.segments.map((s) => s.name)).toEqual(['MSH', 'EVN', 'PID', 'PV1']);
    expect(msg.get('PV1-3.4')).toBe('HOSP');
    expect(msg.segment('PID')!.raw.endsWith('jane@example.org')).toBe(true);
  });

  it('accepts mixed terminators in one message', () => {
    const text = `${ADT[0]}\r\n${ADT[1]}\n${ADT[2]}\r${ADT[3]}\n\n`;
    const msg = parseHl7(text);
    expect(msg.segments.map((s) => s.name)).toEqual(['MSH', 'EVN', 'PID', 'PV1']);
    expect(msg.get('EVN-2')).toBe('20240102030000');
    expect(msg.get('PV1-2')).toBe('I');
  });

  it('finds segment occurrences', () => {
    const msg = parseHl7(
      ['MSH|^~\\&|A|F|||20240101||SIU^S12|C1|P|2.5', 'SCH|P1|F1', 'AIS|1||SVC1|20240105', 'AIS|2||SVC2|20240106'].join(CR),
    );
    expect(msg.segment('AIS', 2)!.get(3)).toBe('SVC2');
    expect(msg.segment('AIS', 3)).toBeUndefined();
    expect(msg.all('AIS')).toHaveLength(2);
    expect(msg.segment('ZZZ')).toBeUndefined();
  });
});

describe('Hl7Message.get path syntax', () => {
  const msg = parseHl7(
    [
      'MSH|^~\\&|A|F|||20240101||SIU^S12|C1|P|2.5',
      'PID|1||ID1^^^AUTH1&1.2.3&ISO^MR~ID2^^^AUTH2&2.16.840&ISO^PI',
      'AIS|1||SVC1|20240105',
      'AIS|2||SVC2^Second|20240106',
    ].join(CR),
  );

  it.each([
    ['PID-3', 'ID1'],
    ['PID-3.1', 'ID1'],
    ['PID-3[1].4', 'AUTH1'],
    ['PID-3[2].4.1', 'AUTH2'],
    ['PID-3[2].4.2', '2.16.840'],
    ['PID-3[2].5', 'PI'],
    ['PID-3[3]', ''],
    ['AIS-4', '20240105'],
    ['AIS[2]-4', '20240106'],
    ['AIS[2]-3.2', 'Second'],
    ['AIS[3]-4', ''],
    ['PV1-2', ''],
    ['MSH-9.2', 'S12'],
  ])('%s → %j', (path, expected) => {
    expect(msg.get(path)).toBe(expected);
  });

  it.each(['PID.3', 'pid-3', 'PID-', 'PID-3.', 'PID-3[a]', 'PID-3.1.1.1', 'PI-3', 'PID-0', 'PID-3[0]', 'AIS[0]-4', 'PID-3.0', ''])(
    'rejects the invalid path %j',
    (path) => {
      expect(() => msg.get(path)).toThrow(/invalid HL7 path/);
    },
  );
});

describe('parseHl7Batch', () => {
  it('splits an FHS/BHS batch into its messages and drops the envelope', () => {
    const text = [
      'FHS|^~\\&|BATCHAPP|BATCHFAC|||20240101',
      'BHS|^~\\&|BATCHAPP|BATCHFAC|||20240101',
      'MSH|^~\\&|A|F|||20240101||ADT^A01|M1|P|2.5',
      'PID|1||P1',
      'MSH|^~\\&|A|F|||20240101||ADT^A08|M2|P|2.5',
      'PID|1||P2',
      'PV1|1|O',
      // The third message declares its own delimiters.
      'MSH#$%@!#A#F#####ADT$A03#M3#P#2.5',
      'PID#1##P3$$$AUTH',
      'BTS|3',
      'FTS|1',
    ].join(CR);
    const messages = parseHl7Batch(text);
    expect(messages.map((m) => m.controlId)).toEqual(['M1', 'M2', 'M3']);
    expect(messages.map((m) => m.messageType)).toEqual(['ADT^A01', 'ADT^A08', 'ADT^A03']);
    expect(messages.map((m) => m.segments.map((s) => s.name).join(','))).toEqual(['MSH,PID', 'MSH,PID,PV1', 'MSH,PID']);
    expect(messages[2]!.get('PID-3.4')).toBe('AUTH');
    for (const m of messages) {
      expect(m.segments.some((s) => ['FHS', 'BHS', 'BTS', 'FTS'].includes(s.name))).toBe(false);
    }
  });

  it('accepts bare batch headers and bytes with a declared charset', () => {
    const bytes = Buffer.concat([
      Buffer.from('BHS|^~\\&\nMSH|^~\\&|A|F|||20240101||ADT^A01|M1|P|2.5||||||8859/1\nPID|1||P1||', 'latin1'),
      Buffer.from([0x4a, 0xe9, 0x72, 0xf4, 0x6d, 0x65]), // "Jérôme" in Latin-1
      Buffer.from('\nBTS|1\n', 'latin1'),
    ]);
    const [msg, ...rest] = parseHl7Batch(bytes);
    expect(rest).toHaveLength(0);
    expect(msg!.charset).toBe('8859/1');
    expect(msg!.get('PID-5')).toBe('Jérôme');
  });

  it('returns a plain message as a batch of one', () => {
    const messages = parseHl7Batch(ADT.join(CR));
    expect(messages).toHaveLength(1);
    expect(messages[0]!.controlId).toBe('CTRL-1');
  });

  it('rejects a batch whose header has bad delimiters', () => {
    expectParseError(() => parseHl7Batch('FHS|^~\r\nMSH|^~\\&|A'), Hl7ParseErrorCode.BadDelimiters);
  });
});
